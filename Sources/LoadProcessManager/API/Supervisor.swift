import Glibc
import LPMReactor
import LPMWire
import Synchronization

/// Runs a pool of worker processes and hands them requests.
///
/// ```swift
/// let supervisor = try Supervisor(SupervisorConfiguration(workerPath: "/usr/local/bin/my-worker", count: 2))
/// supervisor.onEvent { event in if case .online = event { print("All workers are online") } }
/// try await supervisor.start()
/// let response = try await supervisor.enqueue(Array("hello".utf8))
/// ```
///
/// All of the pool's work runs on one reactor thread: a thread the supervisor starts (with
/// ``init(_:)``), or a reactor you run yourself (``init(_:reactor:)``). No other thread is
/// created: no thread per worker, none for waiting on children, none for timers. Every method
/// here may be called from any thread; they hop onto the reactor thread. Handlers you register
/// run on the reactor thread and must not block it.
///
/// Every request is answered exactly once: with a ``WorkerResponse``, or a ``SupervisorError``
/// (timed out, worker exited, protocol violation, queue full, shut down, no workers...).
public final class Supervisor: Sendable {
    /// The reactor the pool runs on.
    public let reactor: Reactor.Handle
    let box: PoolBox
    private let ownThread: ReactorThread?

    /// Creates a supervisor on a reactor thread of its own (started now, ended when the pool
    /// is killed).
    /// - Throws: ``/LPMReactor/ReactorError`` if the thread's reactor cannot be created.
    public init(_ configuration: SupervisorConfiguration) throws(ReactorError) {
        let thread = try ReactorThread(backend: configuration.backend)
        ownThread = thread
        reactor = thread.handle
        let box = PoolBox(reactor: thread.handle)
        self.box = box
        thread.handle.execute { reactor in
            if let poll = configuration.busyPoll { reactor.busyPoll = poll }
            let pool = Pool(reactor: reactor, config: configuration)
            pool.onStopped = { thread.handle.stop() }
            box.pool = pool
        }
    }

    /// Creates a supervisor on `reactor`, which you run (``/LPMReactor/Reactor/run()``). Call on its thread.
    public init(_ configuration: SupervisorConfiguration, reactor: Reactor) {
        precondition(reactor.isOnReactorThread, "Supervisor(_:reactor:) must be called on the reactor's thread")
        ownThread = nil
        self.reactor = reactor.handle
        box = PoolBox(reactor: reactor.handle)
        box.pool = Pool(reactor: reactor, config: configuration)
    }

    /// A supervisor dropped while its pool runs hard-kills it: its workers never outlive it.
    deinit {
        let box = self.box
        // The kill's completion holds the box, so the pool lives until every worker is reaped:
        // its reactor callbacks (exits, timers) refer to it unowned.
        reactor.execute { _ in box.pool?.hardKill { _ = box } }
    }

    /// The task executor of the supervisor's reactor thread.
    ///
    /// A task that prefers it runs on the reactor thread between suspensions: its requests are
    /// admitted with no hop to another thread, and their answers resume it on the reactor thread
    /// with no wake-up of another thread, the cheapest round trip the async API has:
    ///
    /// ```swift
    /// let answer = try await withTaskExecutorPreference(supervisor.executor) {
    ///     try await supervisor.enqueue(payload)
    /// }
    /// ```
    ///
    /// Code running there shares the thread with the pool: it must not block (no blocking
    /// system calls, no long computations); move heavy work to other tasks. Once the pool has
    /// stopped and its reactor thread ended, such a task runs on the global executor instead.
    public var executor: ReactorTaskExecutor { reactor.taskExecutor }

    /// Runs `body` with the pool on the reactor thread; `false` when the reactor is gone.
    @discardableResult
    func onLoop(_ body: sending @escaping (Pool) -> Void) -> Bool {
        let box = self.box
        return reactor.execute { _ in
            if let pool = box.pool { body(pool) }
        }
    }

    // MARK: Lifecycle

    /// Spawns the workers. Requests enqueued before are queued until workers are ready.
    /// `completion` gets `nil`, or the error (no worker could be spawned, SIGINT cannot be
    /// watched), on the reactor thread. In async code, use ``start()``.
    public func start(completion: @escaping @Sendable (SupervisorError?) -> Void) {
        let ok = onLoop { pool in
            do throws(SupervisorError) { try pool.start(); completion(nil) } catch { completion(error) }
        }
        if !ok { CallerTrampoline.run { completion(SupervisorError(.shutDown, "the supervisor's reactor is stopped")) } }
    }

    /// Spawns the workers and returns once they are spawned (not yet ready: see
    /// ``SupervisorEvent/online``).
    /// - Throws: ``SupervisorError``: `.spawnFailed` when no worker could be started,
    ///   `.invalidArgument` when SIGINT cannot be watched or the health interval is invalid.
    public func start() async throws(SupervisorError) {
        let error: SupervisorError? = await withUnsafeContinuation { c in
            start(completion: { c.resume(returning: $0) })
        }
        if let error { throw error }
    }

    /// Adds a handler for pool events (online, exits, restarts...). Any number may be added;
    /// each runs, in the order added, on the reactor thread, and must not block it.
    public func onEvent(_ handler: @escaping @Sendable (SupervisorEvent) -> Void) {
        onLoop { $0.eventHandlers.append(handler) }
    }

    /// The pool's events as an `AsyncSequence`, from now on. Any number of subscribers, each
    /// with its own buffer (by default, unbounded: a subscriber that does not keep up holds
    /// events in memory; pass `.bufferingNewest(n)` to keep only the latest). The sequence ends
    /// when the pool has stopped; stopping iterating (or dropping it) unsubscribes.
    public func events(bufferingPolicy: AsyncStream<SupervisorEvent>.Continuation.BufferingPolicy = .unbounded)
        -> AsyncStream<SupervisorEvent> {
        let (stream, continuation) = AsyncStream<SupervisorEvent>.makeStream(bufferingPolicy: bufferingPolicy)
        let box = self.box
        let subscribed = onLoop { pool in
            guard !pool.isStopped else { return continuation.finish() }
            pool.nextSubscriber &+= 1
            let key = pool.nextSubscriber
            pool.eventSubscribers[key] = continuation
            continuation.onTermination = { _ in
                box.reactor.execute { _ in box.pool?.eventSubscribers[key] = nil }
            }
        }
        if !subscribed { continuation.finish() }
        return stream
    }

    /// Sets the handler for custom events named `name` emitted by workers.
    public func on(_ name: String, _ handler: @escaping @Sendable (WorkerEvent) -> Void) {
        onLoop { $0.workerEventHandlers[name] = handler }
    }

    /// Sets a handler for every custom event that has no handler of its own.
    public func onAnyWorkerEvent(_ handler: @escaping @Sendable (WorkerEvent) -> Void) {
        onLoop { $0.anyWorkerEventHandler = handler }
    }

    /// Replaces the default behaviour for every shutdown signal (the first drains, a second
    /// hard-kills) with `handler`, which gets the signal's number on the reactor thread. Only the
    /// signals in ``SupervisorConfiguration/shutdownSignals`` are watched.
    public func onSignal(_ handler: @escaping @Sendable (CInt) -> Void) {
        onLoop { $0.anySignalHandler = handler }
    }

    /// Replaces the default behaviour for SIGINT alone with `handler`, which runs on the reactor
    /// thread. Needs SIGINT in ``SupervisorConfiguration/shutdownSignals`` (the default).
    public func onSIGINT(_ handler: @escaping @Sendable () -> Void) {
        onLoop { $0.signalHandlers[SIGINT] = { _ in handler() } }
    }

    // MARK: Requests

    /// Queues a request; `completion` is called exactly once, on the reactor thread.
    ///
    /// On the reactor thread (from a handler or a completion) the request is taken at once,
    /// with no hop.
    /// - Returns: a handle that cancels the request (``RequestHandle/cancel()``).
    @discardableResult
    public func enqueue(_ payload: [UInt8], options: RequestOptions = RequestOptions(),
                        completion: @escaping @Sendable (Result<WorkerResponse, SupervisorError>) -> Void) -> RequestHandle {
        if reactor.isOnReactorThread, let pool = box.pool {
            // The pool is only ever touched on this thread, and its enqueue is re-entrant: user
            // code runs only from its outbox, once its state is consistent, never nested.
            let admitted = pool.enqueue(payload, options, .handler(completion))
            return RequestHandle(index: admitted.index, id: admitted.id, box: box)
        }
        // Through the inbox: no allocation of its own, one wake-up per batch. Its submission
        // number is what a cancellation finds it by.
        guard let submission = box.submit(.request(payload, options, .handler(completion))) else {
            CallerTrampoline.run { completion(.failure(SupervisorError(.shutDown, "the pool is stopped"))) }
            return RequestHandle(submission: 0, box: box)
        }
        return RequestHandle(submission: submission, box: box)
    }

    /// Queues many requests with one hop to the reactor thread; `completion` is called once per
    /// request, with its index in `payloads`, on the reactor thread.
    public func enqueue(contentsOf payloads: [[UInt8]], options: RequestOptions = RequestOptions(),
                        completion: @escaping @Sendable (Int, Result<WorkerResponse, SupervisorError>) -> Void) {
        let ok = onLoop { pool in
            for (i, p) in payloads.enumerated() { pool.enqueue(p, options, .handler { completion(i, $0) }) }
        }
        if !ok {
            CallerTrampoline.run { for i in payloads.indices { completion(i, .failure(SupervisorError(.shutDown, "the pool is stopped"))) } }
        }
    }

    /// Queues a request and waits for its answer.
    ///
    /// Cancelling the calling task answers the request with `cancelled` at once: a queued
    /// request leaves the queue; one in flight is cancelled on its worker too (its `onCancel`
    /// handler runs) and the worker's late answer is dropped.
    ///
    /// It runs on the caller's executor (`nonisolated(nonsending)`): handing the request over
    /// takes no hop of its own, from an actor or from a task on ``executor``. The answer resumes
    /// a task on ``executor`` on the reactor thread, with no hop; a caller on an actor (the main
    /// actor, say) is resumed on the global executor first, then on its actor (Swift resumes a
    /// continuation so when the code awaiting it is not statically isolated).
    /// - Throws: ``SupervisorError``: `.timedOut`, `.workerExited`, `.protocolViolation`,
    ///   `.queueFull`, `.shutDown`, `.noWorkers`, `.payloadTooLarge`, `.workerError`,
    ///   `.cancelled`, `.invalidArgument` (a negative timeout or retry count).
    public nonisolated(nonsending) func enqueue(_ payload: [UInt8], options: RequestOptions = RequestOptions()) async throws(SupervisorError) -> WorkerResponse {
        // The operation closure of `withTaskCancellationHandler` keeps an actor's isolation only
        // when it captures an `isolated` parameter: in a `nonisolated(nonsending)` function it
        // runs on the generic executor (Swift 6.3), a hop off the caller's actor and back per
        // request. So a caller on an actor waits in `answer(_:_:on:)`. With no actor to keep
        // (a task on ``executor``, or on the default pool), the wait is here: that form's hops
        // to a `nil` isolation would be no-ops, but each reads the task's executor preference,
        // under a lock in a task that has one, and the extra call costs the default pool too.
        let isolation = #isolation
        if let isolation { return try await answer(payload, options, on: isolation) }
        let box = self.box
        if box.reactor.isOnReactorThread {
            let ticket = RequestTicket(payload, options)
            let result: Result<WorkerResponse, SupervisorError> = await withTaskCancellationHandler {
                await withUnsafeContinuation { c in box.admit(ticket, c) }
            } onCancel: {
                box.cancel(ticket)
            }
            return try result.get()
        }
        let submitted = Atomic<UInt64>(0)
        let result: Result<WorkerResponse, SupervisorError> = await withTaskCancellationHandler {
            await withUnsafeContinuation { c in box.submit(payload, options, c, submitted) }
        } onCancel: {
            box.cancel(submitted)
        }
        return try result.get()
    }

    /// ``enqueue(_:options:)`` for a caller isolated to an actor: it stays there until the
    /// answer comes (the same steps, in closures that capture the isolation).
    private func answer(_ payload: [UInt8], _ options: RequestOptions, on caller: isolated any Actor) async throws(SupervisorError) -> WorkerResponse {
        let box = self.box
        if box.reactor.isOnReactorThread {
            let ticket = RequestTicket(payload, options)
            let result: Result<WorkerResponse, SupervisorError> = await withTaskCancellationHandler {
                _ = caller  // isolated to it (see `enqueue`)
                return await withUnsafeContinuation { c in box.admit(ticket, c) }
            } onCancel: {
                box.cancel(ticket)
            }
            return try result.get()
        }
        let submitted = Atomic<UInt64>(0)
        let result: Result<WorkerResponse, SupervisorError> = await withTaskCancellationHandler {
            _ = caller  // isolated to it (see `enqueue`)
            return await withUnsafeContinuation { c in box.submit(payload, options, c, submitted) }
        } onCancel: {
            box.cancel(submitted)
        }
        return try result.get()
    }

    /// Queues a UTF-8 string payload and waits for the answer.
    public nonisolated(nonsending) func enqueue(_ text: String, options: RequestOptions = RequestOptions()) async throws(SupervisorError) -> WorkerResponse {
        try await enqueue(Array(text.utf8), options: options)
    }

    /// Sends a custom event to every worker.
    public func broadcast(_ name: String, _ payload: [UInt8] = []) {
        onLoop { $0.broadcast(name, payload) }
    }

    /// Sends a custom event with a descriptor (a listening socket, say) to every worker. Each
    /// worker gets its own copy (`Event.socket` on the worker side); the supervisor takes
    /// ownership of `socket` and closes it once sent.
    public func broadcast(_ name: String, _ payload: [UInt8] = [], socket: CInt) {
        if !onLoop({ $0.broadcast(name, payload, descriptor: socket) }) { FileDescriptor.closeRaw(socket) }
    }

    /// Sends a custom event to one worker: the one with process id `pid`, or the least-loaded
    /// ready worker when `pid` is `nil`. With `reply`, the worker's reply (`Event.reply(_:)` on
    /// the worker side) is delivered to it on the reactor thread, or an error if the worker
    /// exits or the pool stops first.
    public func emit(_ name: String, _ payload: [UInt8] = [], to pid: pid_t? = nil,
                     reply: (@Sendable (Result<[UInt8], SupervisorError>) -> Void)? = nil) {
        if !onLoop({ $0.emit(name, payload, to: pid, reply: reply) }) {
            if let reply { CallerTrampoline.run { reply(.failure(SupervisorError(.shutDown, "the pool is stopped"))) } }
        }
    }

    /// Sends a custom event to one worker and waits for its reply. Cancelling the calling task
    /// stops the wait at once with `cancelled` (a late reply is dropped).
    public func request(event name: String, _ payload: [UInt8] = [], to pid: pid_t? = nil) async throws(SupervisorError) -> [UInt8] {
        let ticket = ReplyTicket()
        let reactor = self.reactor, box = self.box
        let result: Result<[UInt8], SupervisorError> = await withTaskCancellationHandler {
            await withUnsafeContinuation { c in
                let ok = onLoop { pool in pool.emit(name, payload, to: pid, reply: { c.resume(returning: $0) }, ticket: ticket) }
                if !ok { c.resume(returning: .failure(SupervisorError(.shutDown, "the pool is stopped"))) }
            }
        } onCancel: {
            reactor.execute { _ in box.pool?.cancel(ticket) }
        }
        return try result.get()
    }

    // MARK: Resize

    /// Grows or shrinks the pool to `count` workers. Growing starts workers now: `completion`
    /// runs once each worker added exists as a process, with exec or with a worker template
    /// alike (a forked worker once it has announced itself, or started with exec instead when
    /// no child came of its order); they then start up and say ready as any worker. Shrinking
    /// picks the least-loaded workers, sends them nothing new, lets their requests finish (and
    /// their soft-kill handlers run), then lets them exit; the restart budget is not charged.
    /// Calls may overlap: the last one wins. `resize(0)` keeps the supervisor alive with no
    /// worker: queued and new requests fail at once with `noWorkers` until it grows again.
    /// During or after a soft or hard kill it fails with `shutDown`.
    /// Growing reports each worker that could not be spawned (``SupervisorEvent/workerSpawnFailed(slot:reason:)``)
    /// and fails only when none could be added. Slots down after a spent restart budget are not
    /// part of the pool: `resize` to the original count brings them back.
    public func resize(_ count: Int, completion: @escaping @Sendable (SupervisorError?) -> Void) {
        let ok = onLoop { pool in
            pool.resize(count) { completion($0) }
        }
        if !ok { CallerTrampoline.run { completion(SupervisorError(.shutDown, "the pool is stopped")) } }
    }

    /// ``resize(_:completion:)``, returning once the change is under way: every worker added
    /// exists as a process.
    public func resize(_ count: Int) async throws(SupervisorError) {
        let error: SupervisorError? = await withUnsafeContinuation { c in resize(count, completion: { c.resume(returning: $0) }) }
        if let error { throw error }
    }

    // MARK: Recycling and reload

    /// Replaces the worker `pid`: a fresh worker starts in its slot first, then the old one gets
    /// nothing new, finishes its requests (its soft-kill handler runs) and exits. Not charged to
    /// the restart budget. `completion` gets `nil` once the replacement exists (spawned, or
    /// forked from the worker template and announced: until then the old worker still takes
    /// requests), or the error (no running worker has that pid, the replacement could not be
    /// started, the pool is shut down). In async code, use ``restart(pid:)``.
    public func restart(pid: pid_t, completion: @escaping @Sendable (SupervisorError?) -> Void) {
        let ok = onLoop { pool in pool.restart(pid: pid) { completion($0) } }
        if !ok { CallerTrampoline.run { completion(SupervisorError(.shutDown, "the pool is stopped")) } }
    }

    /// ``restart(pid:completion:)``, returning once the replacement exists.
    public func restart(pid: pid_t) async throws(SupervisorError) {
        let error: SupervisorError? = await withUnsafeContinuation { c in restart(pid: pid, completion: { c.resume(returning: $0) }) }
        if let error { throw error }
    }

    /// Replaces every worker, one at a time, with `executable` if given (a new build, new
    /// arguments or environment), else the same one: each replacement starts before the old
    /// worker drains, and the next worker is replaced once the replacement is ready, so capacity
    /// never drops below N-1 and no request is lost. Not charged to the restart budget.
    /// `completion` runs when every slot runs a ready replacement (or with the error that
    /// stopped the reload: a replacement that could not be spawned, the pool shut down). A
    /// reload during a reload starts over with the newest executable. In async code, use
    /// ``reload(_:)``.
    public func reload(_ executable: SupervisorConfiguration.Executable? = nil,
                       completion: @escaping @Sendable (SupervisorError?) -> Void) {
        let ok = onLoop { pool in pool.reload(executable, completion) }
        if !ok { CallerTrampoline.run { completion(SupervisorError(.shutDown, "the pool is stopped")) } }
    }

    /// ``reload(_:completion:)``, returning once every worker has been replaced.
    public func reload(_ executable: SupervisorConfiguration.Executable? = nil) async throws(SupervisorError) {
        let error: SupervisorError? = await withUnsafeContinuation { c in reload(executable, completion: { c.resume(returning: $0) }) }
        if let error { throw error }
    }

    // MARK: Health

    /// Per-worker figures; `completion` runs on the reactor thread.
    public func health(_ completion: @escaping @Sendable ([WorkerHealth]) -> Void) {
        if !onLoop({ completion($0.health()) }) { CallerTrampoline.run { completion([]) } }
    }

    /// Per-worker figures: pid, RSS, heap, requests, restarts, state.
    public func health() async -> [WorkerHealth] {
        await withUnsafeContinuation { c in health { c.resume(returning: $0) } }
    }

    /// Counts for the whole pool: queued and pending requests, workers, ready workers.
    public func status() async -> PoolStatus {
        await withUnsafeContinuation { c in
            if !onLoop({ c.resume(returning: $0.status()) }) {
                c.resume(returning: PoolStatus(queued: 0, pending: 0, workers: 0, ready: 0, isShutDown: true))
            }
        }
    }

    // MARK: Kill

    /// Stops taking requests, lets every accepted request finish, lets each worker run its
    /// soft-kill handler (or exit when idle), reaps them all, then calls `completion` (on the
    /// reactor thread). Does not exit the process. In async code, use ``softKill()``.
    public func softKill(completion: @escaping @Sendable () -> Void) {
        if !onLoop({ $0.softKill(completion) }) { CallerTrampoline.run(completion) }
    }

    /// ``softKill(completion:)``, waiting until it is done.
    public func softKill() async {
        await withUnsafeContinuation { (c: UnsafeContinuation<Void, Never>) in softKill(completion: { c.resume() }) }
    }

    /// Kills every worker now (SIGKILL); every pending request fails with `shutDown`.
    /// `completion` runs once every worker is reaped. Does not exit the process. In async code,
    /// use ``hardKill()``.
    public func hardKill(completion: @escaping @Sendable () -> Void) {
        if !onLoop({ $0.hardKill(completion) }) { CallerTrampoline.run(completion) }
    }

    /// ``hardKill(completion:)``, waiting until every worker is reaped.
    public func hardKill() async {
        await withUnsafeContinuation { (c: UnsafeContinuation<Void, Never>) in hardKill(completion: { c.resume() }) }
    }
}

// The steps of `Supervisor.enqueue`, shared with `answer(_:_:on:)`.
extension Supervisor.PoolBox {
    /// From the reactor thread: admits the ticket's request now (no hop; the answer resumes the
    /// caller on this thread), or hands it over when the call has left the reactor thread.
    fileprivate func admit(_ ticket: RequestTicket, _ c: UnsafeContinuation<Result<WorkerResponse, SupervisorError>, Never>) {
        ticket.completion = .continuation(c)
        if reactor.isOnReactorThread, let pool {
            pool.enqueue(ticket)
        } else if submit(.ticket(ticket)) == nil {
            c.resume(returning: .failure(SupervisorError(.shutDown, "the pool is stopped")))
        }
    }

    /// A ticket's cancellation, from any thread: it finds the request wherever it is, or
    /// before it arrives.
    fileprivate func cancel(_ ticket: RequestTicket) {
        _ = submit(.cancelTicket(ticket))
    }

    /// From another thread: through the inbox, as a request with a handler is (no allocation
    /// of its own). Its submission number is what a cancellation finds it by, behind it in the
    /// inbox; `submitted` hands that number to the cancellation handler (0: not submitted yet;
    /// `.max`: cancelled first, and the submitter sends the cancellation itself).
    fileprivate func submit(_ payload: [UInt8], _ options: RequestOptions,
                            _ c: UnsafeContinuation<Result<WorkerResponse, SupervisorError>, Never>,
                            _ submitted: borrowing Atomic<UInt64>) {
        // Cancelled already (the handler runs first then): never sent, answered here.
        guard submitted.load(ordering: .acquiring) != .max else {
            return c.resume(returning: .failure(SupervisorError(.cancelled, "the request was cancelled before it was queued")))
        }
        guard let n = submit(.request(payload, options, .continuation(c))) else {
            return c.resume(returning: .failure(SupervisorError(.shutDown, "the pool is stopped")))
        }
        if !submitted.compareExchange(expected: 0, desired: n, ordering: .acquiringAndReleasing).exchanged {
            _ = submit(.cancel(n))
        }
    }

    /// A submitted request's cancellation, from any thread (see ``submit(_:_:_:_:)``).
    fileprivate func cancel(_ submitted: borrowing Atomic<UInt64>) {
        let n = submitted.exchange(.max, ordering: .acquiringAndReleasing)
        if n != 0 && n != .max { _ = submit(.cancel(n)) }
    }
}
