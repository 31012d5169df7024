@_exported import LPMReactor
import CLoop
@_exported import LPMWire

/// Runs a pool of worker processes and hands them requests.
///
/// ```swift
/// let supervisor = try Supervisor(SupervisorConfiguration(workerPath: "/usr/local/bin/my-worker", count: 2))
/// supervisor.onEvent { event in if case .online = event { print("All workers are online") } }
/// supervisor.start()
/// let response = try await supervisor.enqueue(Array("hello".utf8))
/// ```
///
/// All of the pool's work runs on one reactor thread: a thread the supervisor starts (with
/// ``init(_:)``), or a reactor you run yourself (``init(_:reactor:)``). No other thread is
/// created: no thread per worker, none for waiting on children, none for timers. Every method
/// here may be called from any thread; they hop onto the reactor thread. Handlers you register
/// run on the reactor thread and must not block it.
///
/// Every request is answered exactly once: with a ``Response``, or a ``SupervisorError``
/// (timed out, worker exited, protocol violation, queue full, shut down, no workers...).
public final class Supervisor: Sendable {
    /// The reactor the pool runs on.
    public let reactor: Reactor.Handle
    private let box: CoreBox
    private let ownThread: ReactorThread?

    /// Holds the core; `@unchecked Sendable` because `core` is read and written only on the
    /// reactor thread.
    final class CoreBox: @unchecked Sendable {
        var core: Core?
    }

    /// Creates a supervisor on a reactor thread of its own (started now, ended when the pool
    /// is killed).
    /// - Throws: ``ReactorError`` if the thread's reactor cannot be created.
    public init(_ configuration: SupervisorConfiguration) throws(ReactorError) {
        let thread = try ReactorThread(backend: configuration.backend)
        ownThread = thread
        reactor = thread.handle
        let box = CoreBox()
        self.box = box
        thread.handle.execute { reactor in
            if let poll = configuration.busyPoll { reactor.busyPoll = poll }
            let core = Core(reactor: reactor, config: configuration)
            core.onStopped = { thread.handle.stop() }
            box.core = core
        }
    }

    /// Creates a supervisor on `reactor`, which you run (``Reactor/run()``). Call on its thread.
    public init(_ configuration: SupervisorConfiguration, reactor: Reactor) {
        precondition(reactor.isOnReactorThread, "Supervisor(_:reactor:) must be called on the reactor's thread")
        ownThread = nil
        self.reactor = reactor.handle
        box = CoreBox()
        box.core = Core(reactor: reactor, config: configuration)
    }

    /// A supervisor dropped while its pool runs hard-kills it: its workers never outlive it.
    deinit {
        let box = self.box
        reactor.execute { _ in box.core?.hardKill {} }
    }

    /// Runs `body` with the core on the reactor thread; `false` when the reactor is gone.
    @discardableResult
    private func onLoop(_ body: sending @escaping (Core) -> Void) -> Bool {
        let box = self.box
        return reactor.execute { _ in
            if let core = box.core { body(core) }
        }
    }

    // MARK: Lifecycle

    /// Spawns the workers. Requests enqueued before are queued until workers are ready.
    /// Errors (no worker could be spawned) arrive through `completion`, on the reactor thread.
    public func start(_ completion: (@Sendable (SupervisorError?) -> Void)? = nil) {
        let ok = onLoop { core in
            do throws(SupervisorError) { try core.start(); completion?(nil) } catch { completion?(error) }
        }
        if !ok { completion?(SupervisorError(.shutDown, "the supervisor's reactor is stopped")) }
    }

    /// Spawns the workers and returns once they are spawned (not yet ready: see
    /// ``SupervisorEvent/online``).
    /// - Throws: ``SupervisorError`` `.spawnFailed` when no worker could be started.
    public func start() async throws(SupervisorError) {
        let error: SupervisorError? = await withUnsafeContinuation { c in
            start { c.resume(returning: $0) }
        }
        if let error { throw error }
    }

    /// Sets the handler for pool events (online, exits, restarts...). Runs on the reactor thread.
    public func onEvent(_ handler: @escaping @Sendable (SupervisorEvent) -> Void) {
        onLoop { $0.eventHandler = handler }
    }

    /// Sets the handler for custom events named `name` emitted by workers.
    public func on(_ name: String, _ handler: @escaping @Sendable (WorkerEvent) -> Void) {
        onLoop { $0.workerEventHandlers[name] = handler }
    }

    /// Sets a handler for every custom event that has no handler of its own.
    public func onAnyWorkerEvent(_ handler: @escaping @Sendable (WorkerEvent) -> Void) {
        onLoop { $0.anyWorkerEventHandler = handler }
    }

    /// Replaces the default SIGINT behaviour (hard kill, then exit 130) with `handler`.
    /// Needs ``SupervisorConfiguration/handleSIGINT`` (the default).
    public func onSIGINT(_ handler: @escaping @Sendable () -> Void) {
        onLoop { $0.sigintHandler = handler }
    }

    // MARK: Requests

    /// Queues a request; `completion` is called exactly once, on the reactor thread.
    ///
    /// On the reactor thread (from a handler or a completion) the request is taken at once,
    /// with no hop.
    public func enqueue(_ payload: [UInt8], options: RequestOptions = RequestOptions(),
                        completion: @escaping @Sendable (Result<Response, SupervisorError>) -> Void) {
        if reactor.isOnReactorThread, let core = box.core {
            // The core is only ever touched on this thread, and its enqueue is re-entrant: it
            // runs no user code before its state is consistent.
            return core.enqueue(payload, options, .handler(completion))
        }
        // One closure for the hop (not one wrapped in another, as `onLoop` would): one allocation.
        let box = self.box
        let ok = reactor.execute { _ in box.core?.enqueue(payload, options, .handler(completion)) }
        if !ok { completion(.failure(SupervisorError(.shutDown, "the pool is stopped"))) }
    }

    /// Queues many requests with one hop to the reactor thread; `completion` is called once per
    /// request, with its index in `payloads`, on the reactor thread.
    public func enqueue(contentsOf payloads: [[UInt8]], options: RequestOptions = RequestOptions(),
                        completion: @escaping @Sendable (Int, Result<Response, SupervisorError>) -> Void) {
        let ok = onLoop { core in
            for (i, p) in payloads.enumerated() { core.enqueue(p, options, .handler { completion(i, $0) }) }
        }
        if !ok { for i in payloads.indices { completion(i, .failure(SupervisorError(.shutDown, "the pool is stopped"))) } }
    }

    /// Queues a request and waits for its answer.
    /// - Throws: ``SupervisorError``: `.timedOut`, `.workerExited`, `.protocolViolation`,
    ///   `.queueFull`, `.shutDown`, `.noWorkers`, `.payloadTooLarge`, `.workerError`.
    public func enqueue(_ payload: [UInt8], options: RequestOptions = RequestOptions()) async throws(SupervisorError) -> Response {
        let result: Result<Response, SupervisorError> = await withUnsafeContinuation { c in
            let box = self.box
            let ok = reactor.execute { _ in box.core?.enqueue(payload, options, .continuation(c)) }
            if !ok { c.resume(returning: .failure(SupervisorError(.shutDown, "the pool is stopped"))) }
        }
        return try result.get()
    }

    /// Queues a UTF-8 string payload and waits for the answer.
    public func enqueue(_ text: String, options: RequestOptions = RequestOptions()) async throws(SupervisorError) -> Response {
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
            reply?(.failure(SupervisorError(.shutDown, "the pool is stopped")))
        }
    }

    /// Sends a custom event to one worker and waits for its reply.
    public func request(event name: String, _ payload: [UInt8] = [], to pid: pid_t? = nil) async throws(SupervisorError) -> [UInt8] {
        let result: Result<[UInt8], SupervisorError> = await withUnsafeContinuation { c in
            emit(name, payload, to: pid) { c.resume(returning: $0) }
        }
        return try result.get()
    }

    // MARK: Sockets and streams

    /// Queues a request that hands `socket` (an accepted connection, or any descriptor) to a
    /// worker: the one handling the fewest sockets, then the least loaded. The supervisor takes
    /// ownership of `socket` and closes its copy once sent (or when the request fails before).
    /// A socket request is not retried once sent: the socket is the worker's.
    public func enqueue(_ payload: [UInt8], socket: CInt, options: RequestOptions = RequestOptions(),
                        completion: @escaping @Sendable (Result<Response, SupervisorError>) -> Void) {
        let ok = onLoop { core in core.enqueue(payload, options, .handler(completion), descriptor: socket) }
        if !ok {
            FileDescriptor.closeRaw(socket)
            completion(.failure(SupervisorError(.shutDown, "the pool is stopped")))
        }
    }

    /// ``enqueue(_:socket:options:completion:)``, waiting for the answer.
    public func enqueue(_ payload: [UInt8], socket: CInt, options: RequestOptions = RequestOptions()) async throws(SupervisorError) -> Response {
        let result: Result<Response, SupervisorError> = await withUnsafeContinuation { c in
            enqueue(payload, socket: socket, options: options) { c.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Queues a request with a stream read from `fd` (a pipe, a file, a socket). The worker gets
    /// its own copy of the descriptor (`Request.stream` on the worker side) and reads it to end
    /// of file; the bytes never pass through the supervisor or the control channel. `fd` stays
    /// yours (the supervisor sends a duplicate). Not retried once sent.
    ///
    /// - Note: the duplicate shares `fd`'s open file description, so its file offset and status
    ///   flags are shared too: the worker's runtime makes it non-blocking (`O_NONBLOCK`), which
    ///   your `fd` then is as well. Pass a descriptor you do not read from yourself.
    public func enqueue(_ payload: [UInt8], stream fd: CInt, options: RequestOptions = RequestOptions(),
                        completion: @escaping @Sendable (Result<Response, SupervisorError>) -> Void) {
        let copy: CInt
        do { copy = try Sys.duplicate(fd).release() } catch {
            return completion(.failure(SupervisorError(.invalidArgument, "enqueue(stream:): \(error)")))
        }
        enqueueStream(payload, readEnd: copy, options: options, completion: completion)
    }

    private func enqueueStream(_ payload: [UInt8], readEnd: CInt, options: RequestOptions,
                               completion: @escaping @Sendable (Result<Response, SupervisorError>) -> Void) {
        let ok = onLoop { core in core.enqueue(payload, options, .handler(completion), descriptor: readEnd, isStream: true) }
        if !ok {
            FileDescriptor.closeRaw(readEnd)
            completion(.failure(SupervisorError(.shutDown, "the pool is stopped")))
        }
    }

    /// ``enqueue(_:stream:options:completion:)``, waiting for the answer.
    public func enqueue(_ payload: [UInt8], stream fd: CInt, options: RequestOptions = RequestOptions()) async throws(SupervisorError) -> Response {
        let result: Result<Response, SupervisorError> = await withUnsafeContinuation { c in
            enqueue(payload, stream: fd, options: options) { c.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Queues a request with a stream made of `chunks`: they are written to a pipe whose read
    /// end the worker gets, as fast as the worker reads them (back-pressure), and the pipe is
    /// closed at the end of the sequence (the worker sees end of file). If the sequence throws,
    /// the stream is cut short and the error is rethrown after the request is answered.
    public func enqueue<Chunks: AsyncSequence>(_ payload: [UInt8], stream chunks: Chunks, options: RequestOptions = RequestOptions()) async throws -> Response
    where Chunks.Element == [UInt8] {
        let pair: DescriptorPair
        do { pair = try Sys.pipe(flags: O_NONBLOCK) } catch { throw SupervisorError(.invalidArgument, "enqueue(stream:): \(error)") }
        let readEnd = pair.first.release(), writeEnd = pair.second.release()
        let pump = StreamPump(writeEnd: writeEnd, reactor: reactor)
        async let answer: Result<Response, SupervisorError> = withUnsafeContinuation { c in
            enqueueStream(payload, readEnd: readEnd, options: options) { c.resume(returning: $0) }
        }
        var failure: (any Error)?
        do {
            for try await chunk in chunks {
                guard await pump.write(chunk) else { break }  // the worker went away
            }
        } catch {
            failure = error
        }
        await pump.finish()
        let result = await answer
        if let failure { throw failure }
        return try result.get()
    }

    // MARK: Resize

    /// Grows or shrinks the pool to `count` workers. Growing spawns workers now. Shrinking
    /// picks the least-loaded workers, sends them nothing new, lets their requests finish (and
    /// their soft-kill handlers run), then lets them exit; the restart budget is not charged.
    /// Calls may overlap: the last one wins. `resize(0)` keeps the supervisor alive with no
    /// worker: queued and new requests fail at once with `noWorkers` until it grows again.
    /// During or after a soft or hard kill it fails with `shutDown`.
    public func resize(_ count: Int, completion: (@Sendable (SupervisorError?) -> Void)? = nil) {
        let ok = onLoop { core in
            do throws(SupervisorError) { try core.resize(count); completion?(nil) } catch { completion?(error) }
        }
        if !ok { completion?(SupervisorError(.shutDown, "the pool is stopped")) }
    }

    /// ``resize(_:completion:)``, returning once the change is under way.
    public func resize(_ count: Int) async throws(SupervisorError) {
        let error: SupervisorError? = await withUnsafeContinuation { c in resize(count) { c.resume(returning: $0) } }
        if let error { throw error }
    }

    // MARK: Health

    /// Per-worker figures; `completion` runs on the reactor thread.
    public func health(_ completion: @escaping @Sendable ([WorkerHealth]) -> Void) {
        if !onLoop({ completion($0.health()) }) { completion([]) }
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
    /// reactor thread). Does not exit the process.
    public func softKill(_ completion: @escaping @Sendable () -> Void = {}) {
        if !onLoop({ $0.softKill(completion) }) { completion() }
    }

    /// ``softKill(_:)``, waiting until it is done.
    public func softKill() async {
        await withUnsafeContinuation { (c: UnsafeContinuation<Void, Never>) in softKill { c.resume() } }
    }

    /// Kills every worker now (SIGKILL); every pending request fails with `shutDown`.
    /// `completion` runs once every worker is reaped. Does not exit the process.
    public func hardKill(_ completion: @escaping @Sendable () -> Void = {}) {
        if !onLoop({ $0.hardKill(completion) }) { completion() }
    }

    /// ``hardKill(_:)``, waiting until every worker is reaped.
    public func hardKill() async {
        await withUnsafeContinuation { (c: UnsafeContinuation<Void, Never>) in hardKill { c.resume() } }
    }
}
