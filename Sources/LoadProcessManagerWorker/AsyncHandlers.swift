import LPMReactor

extension Worker {
    /// Sets an `async` handler for requests: it can `await` (a timer, another process, a
    /// database) without blocking the worker's loop, so the worker keeps reading frames, answers
    /// pings and cancellations, and runs other requests' handlers meanwhile.
    ///
    /// ```swift
    /// worker.onRequest { request in
    ///     let rows = try await database.query(String(decoding: request.data, as: UTF8.self))
    ///     request.respond(rows.encoded())
    /// }
    /// ```
    ///
    /// Each request gets a task, started at once on the worker's thread: the handler runs there
    /// until its first suspension, and everything it does between suspensions runs there too,
    /// one piece at a time between the loop's events, never in parallel with the loop. A handler
    /// isolated to the main actor (a closure written in `main.swift`'s top-level code is) runs on
    /// the main actor, which this worker's loop serves when it runs on the main thread; a
    /// nonisolated one (written in a nonisolated function) runs on ``taskExecutor``, and so do
    /// the nonisolated `async` functions it calls and its child tasks. A main-actor handler's
    /// calls to nonisolated `async` functions run on the shared thread pool, as anywhere in
    /// Swift 6, and each such await costs two thread hops: a few microseconds.
    ///
    /// Answer as with a synchronous handler, once: ``Worker/Request/respond(_:)-([UInt8])``,
    /// ``Worker/Request/ack()``, ``Worker/Request/fail(_:)`` or a streamed answer. When the handler
    /// throws before answering, the request fails with the error's description; when it returns
    /// without answering (and without starting a streamed answer), it fails with "the request
    /// handler returned without answering". When the supervisor cancels the request, the task is
    /// cancelled too (`Task.sleep` throws, `Task.isCancelled` is `true`) after
    /// ``Worker/Request/onCancel``.
    ///
    /// CPU-heavy work in the handler holds the worker's thread like a synchronous handler does;
    /// to keep the loop free, run it on another thread and await it:
    /// `let digest = await Task.detached { sha256(data) }.value` (see the module's documentation).
    ///
    /// - Precondition: a handler isolated to the main actor needs a worker on the main thread
    ///   (a worker created in `main.swift`'s top-level code before any top-level `await`).
    public func onRequest(_ handler: @escaping @isolated(any) (Request) async throws -> Void) {
        precondition(handler.isolation !== MainActor.shared || servesMainActor, """
            a main-actor request handler needs a Worker created on the main thread, with no \
            top-level await before it (an async main.swift gives the main actor to dispatch_main, \
            whose thread Worker.run() then blocks); make the handler nonisolated
            """)
        requestHandler = { [unowned self] request in self.startTask(for: request, handler) }
    }

    /// The executor of the tasks that run async request handlers: the worker's own thread.
    /// Start a task of your own there with `Task(executorPreference: worker.taskExecutor) { ... }`;
    /// its nonisolated code then runs between the loop's events, where it may answer requests.
    public var taskExecutor: any TaskExecutor { executor }

    private func startTask(for request: Request, _ handler: @escaping @isolated(any) (Request) async throws -> Void) {
        // `nonisolated(unsafe)`: the request and the handler stay on this worker's thread. The
        // task starts here, on it; its nonisolated code runs on `executor`, this thread; and the
        // handler's own isolation is none, the main actor (which this thread serves, as
        // `onRequest` checked), or an actor the user put on this thread (answering from any other
        // thread traps, see `Worker.finish`).
        nonisolated(unsafe) let request = request
        nonisolated(unsafe) let handler = handler
        let task: Task<Void, Never>
        if handler.isolation === MainActor.shared {
            // This is the main thread: the task runs at once, with no hop through the main queue.
            // No executor preference here: code on the main actor runs with no task executor, so
            // in a task that prefers one every switch to the main actor, even from it, hops
            // through the main queue (measured: 0.8 us per request without, 1.9 us with).
            task = Task.immediate { @MainActor in await Worker.serve(request, with: handler) }
        } else if handler.isolation == nil {
            task = Task.immediate(executorPreference: executor) { await Worker.serve(request, with: handler) }
        } else {
            task = Task(executorPreference: executor) { await Worker.serve(request, with: handler) }
        }
        // Kept for cancellation while the request is in flight (a task that already answered
        // has nothing to cancel).
        if request.isInFlight { request.task = task }
    }

    /// Runs `handler` for `request` in the caller's isolation, and fails the request if the
    /// handler throws or returns without answering.
    private nonisolated(nonsending) static func serve(
        _ request: Request, with handler: @isolated(any) (Request) async throws -> Void
    ) async {
        // `nonisolated(unsafe)`: see `startTask(for:_:)`; the handler runs on this thread.
        nonisolated(unsafe) let request = request
        do {
            try await handler(request)
            if !request.answered { request.fail("the request handler returned without answering") }
        } catch {
            request.fail(String(describing: error))
        }
    }
}

/// Runs Swift concurrency jobs on a worker's reactor thread, between the loop's events: the task
/// executor of the tasks that run async request handlers (``Worker/taskExecutor``).
///
/// `@unchecked Sendable`: `handle` is `Sendable`; `queued`, `running` and `scheduled` are read
/// and written on the reactor thread only (`enqueue` checks the thread before touching them, and
/// `run(on:)` is a reactor job).
final class WorkerExecutor: TaskExecutor, ReactorJob, @unchecked Sendable {
    private let handle: Reactor.Handle
    private var queued: [UnownedJob] = []
    private var running: [UnownedJob] = []
    private var scheduled = false

    init(handle: Reactor.Handle) { self.handle = handle }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        if handle.isOnReactorThread {
            // No lock, no system call, no allocation: one reactor job runs every job queued
            // in this iteration.
            queued.append(job)
            if !scheduled {
                scheduled = true
                handle.execute(job: self)
            }
        } else {
            // A task resumed from another thread (a continuation resumed there, a detached
            // task's result): hop with the reactor's queue, which wakes the loop.
            let executor = asUnownedTaskExecutor()
            // `false` only once the reactor is closed, when the process is exiting.
            _ = handle.execute { _ in job.runSynchronously(on: executor) }
        }
    }

    func run(on reactor: Reactor) {
        scheduled = false
        swap(&queued, &running)
        let executor = asUnownedTaskExecutor()
        // Jobs these jobs enqueue go to `queued`, and run in the next reactor job.
        for job in running { job.runSynchronously(on: executor) }
        running.removeAll(keepingCapacity: true)
    }

    func dropped() {}
}
