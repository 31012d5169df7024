import Synchronization
/// The part of a reactor other threads may touch: the job queue and the wake-up eventfd.
///
/// `@unchecked Sendable`: `wakeFD` and `owner` are set once in `init`; `state` is read and
/// written only with `lock` held; `hasLocalJobs`, `localJobs` and `localClosed` only on the
/// owner thread. (See ``ThreadLock`` for why the lock is a pthread mutex.)
final class ReactorShared: @unchecked Sendable {
    enum Job {
        case closure((Reactor) -> Void)
        case object(any ReactorJob)
        /// A job of an actor isolated to ``ReactorExecutor``: run isolated to it.
        case executorJob(UnownedJob)
        /// A job of nonisolated code in a task that prefers ``ReactorTaskExecutor``: run with
        /// no isolation (run isolated to the serial executor instead, every nonisolated async
        /// call after it would have to hop again, one more job each).
        case taskExecutorJob(UnownedJob)
        case stop
    }

    struct State {
        var jobs: [Job] = []
        /// An eventfd write is already on its way: further submissions need not write again.
        var wakePending = false
        var closed = false
    }

    let wakeFD: CInt
    let owner: ThreadIdentity
    private let lock = ThreadLock()
    /// Guarded by `lock`.
    @exclusivity(unchecked) private var state = State()  // under `lock`
    /// Whether `state.jobs` holds jobs: set with the first one under the lock, cleared when the
    /// owner takes them. The owner reads it without the lock, so that a round of jobs with none
    /// from other threads costs no lock (a task switching executors makes a round per switch).
    private let remoteQueued = Atomic<Bool>(false)
    /// Reads and writes: owner thread only. Set when a job is submitted from the owner thread
    /// itself, which needs no eventfd write: the loop checks this before it blocks.
    @exclusivity(unchecked) var hasLocalJobs = false

    init(wakeFD: CInt) {
        self.wakeFD = wakeFD
        self.owner = .current
    }

    @inline(__always)
    private func withLock<R>(_ body: (inout State) -> R) -> R {
        lock.withLock { body(&state) }
    }

    var isOwnerThread: Bool { owner.isCurrent }

    /// Jobs submitted on the owner thread itself: no lock, no eventfd write. Owner thread only.
    @exclusivity(unchecked) private var localJobs: [Job] = []

    /// Queues a job; returns `false` when the reactor is closed.
    func submit(_ job: sending Job) -> Bool {
        if isOwnerThread {
            guard !localClosed else { return false }
            localJobs.append(job)
            hasLocalJobs = true
            return true
        }
        let (accepted, mustWake) = withLock { (s: inout State) -> (Bool, Bool) in
            if s.closed { return (false, false) }
            s.jobs.append(job)
            // Released before the lock is, and before any eventfd write: the owner woken by it,
            // or taking jobs for any other reason after this, reads `true`.
            remoteQueued.store(true, ordering: .releasing)
            if s.wakePending { return (true, false) }
            s.wakePending = true
            return (true, true)
        }
        if mustWake { Sys.signalEventFD(wakeFD) }
        return accepted
    }

    /// Queues a job from the owner thread (the job never leaves it, so it need not be sent).
    func submitLocal(_ job: Job) -> Bool {
        guard !localClosed else { return false }
        localJobs.append(job)
        hasLocalJobs = true
        return true
    }

    /// Owner thread only: set by `close()`.
    @exclusivity(unchecked) private var localClosed = false

    /// Moves every queued job into `jobs` (which the caller has emptied): those submitted on the
    /// owner thread first, then the others. Each thread's jobs keep their order. Owner thread only.
    func takeJobs(into jobs: inout [Job]) {
        if hasLocalJobs {
            hasLocalJobs = false
            swap(&jobs, &localJobs)
        }
        // `false`: no job from another thread is queued, and none has asked for a wake-up
        // (`wakePending` is set only with a job, and cleared with the jobs below).
        guard remoteQueued.load(ordering: .acquiring) else { return }
        withLock { (s: inout State) in
            remoteQueued.store(false, ordering: .relaxed)
            if jobs.isEmpty {
                swap(&jobs, &s.jobs)
            } else if !s.jobs.isEmpty {
                jobs.append(contentsOf: s.jobs)
                s.jobs.removeAll(keepingCapacity: true)
            }
            s.wakePending = false
        }
    }

    /// Refuses further jobs and returns those still queued.
    func close() -> [Job] {
        /// `@unchecked Sendable`: the jobs move from the lock to the owner thread, the only
        /// thread that runs them.
        struct Batch: @unchecked Sendable { var jobs: [Job] }
        localClosed = true
        var left = localJobs
        localJobs = []
        hasLocalJobs = false
        left += withLock { (s: inout State) -> Batch in
            s.closed = true
            var remote: [Job] = []
            swap(&remote, &s.jobs)
            return Batch(jobs: remote)
        }.jobs
        return left
    }
}

extension Reactor {
    /// The reactor's door for other threads. `Sendable`; cheap to copy.
    public struct Handle: Sendable {
        let shared: ReactorShared
        /// The executor that runs Swift concurrency jobs on the reactor thread.
        public let executor: ReactorExecutor
        /// The task executor of the reactor thread (see ``ReactorTaskExecutor``).
        public let taskExecutor: ReactorTaskExecutor

        /// Runs `job` on the reactor thread, in submission order, during the reactor's next
        /// iteration. Callable from any thread, including the reactor's own.
        ///
        /// Wake-ups coalesce: however many jobs are submitted before the reactor runs them, the
        /// eventfd is written once. From the reactor thread no eventfd write is needed at all.
        /// - Returns: `false` when the reactor is closed and the job was dropped.
        @discardableResult
        public func execute(_ job: sending @escaping (Reactor) -> Void) -> Bool {
            shared.submit(.closure(job))
        }

        /// Runs `job` on the reactor thread, like ``execute(_:)``: for an object that is its own
        /// job, so that submitting it allocates nothing more (no closure context).
        /// - Returns: `false` when the reactor is closed and the job was dropped (neither
        ///   `run` nor `dropped` is called then).
        @discardableResult
        package func execute(job: sending any ReactorJob) -> Bool {
            shared.submit(.object(job))
        }

        /// Makes ``Reactor/run()`` return after its current iteration. Any thread.
        public func stop() {
            _ = shared.submit(.stop)
        }

        /// Whether the calling thread is the reactor's.
        public var isOnReactorThread: Bool { shared.isOwnerThread }
    }
}

/// Runs Swift concurrency jobs on a reactor's thread, so that an `actor` can live there:
///
/// ```swift
/// actor Counter {
///     nonisolated let unownedExecutor: UnownedSerialExecutor
///     init(reactor: Reactor.Handle) { unownedExecutor = reactor.executor.asUnownedSerialExecutor() }
/// }
/// ```
public final class ReactorExecutor: SerialExecutor {
    let shared: ReactorShared

    init(shared: ReactorShared) { self.shared = shared }

    /// Queues a job for the reactor thread. The job is stored as an `UnownedJob`, with no closure
    /// allocated for it.
    public func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        precondition(shared.submit(.executorJob(unowned)), "a job was enqueued on a closed reactor's executor")
    }

    /// This executor as an unowned reference, for `unownedExecutor` of an actor.
    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }


    /// Traps unless called on the reactor thread.
    public func checkIsolated() {
        precondition(shared.isOwnerThread, "not on the reactor thread")
    }
}

/// Runs tasks on a reactor's thread: a task that prefers it (`withTaskExecutorPreference`,
/// `Task(executorPreference:)`) runs its nonisolated code there between suspensions, and can
/// use objects of the reactor's thread with no hop:
///
/// ```swift
/// await withTaskExecutorPreference(reactor.taskExecutor) {
///     // on the reactor thread between suspensions
/// }
/// ```
///
/// Once the reactor is closed, its jobs go to the global concurrent executor instead: a task
/// that prefers a closed reactor keeps running, on another thread.
public final class ReactorTaskExecutor: TaskExecutor {
    let shared: ReactorShared

    init(shared: ReactorShared) { self.shared = shared }

    /// Queues a job for the reactor thread (or, once it is closed, the global concurrent executor).
    public func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        if !shared.submit(.taskExecutorJob(unowned)) { globalConcurrentExecutor.enqueue(ExecutorJob(unowned)) }
    }

    /// This executor as an unowned task executor.
    public func asUnownedTaskExecutor() -> UnownedTaskExecutor {
        UnownedTaskExecutor(ordinary: self)
    }
}

/// A value that belongs to a reactor's thread, passed through `Sendable` plumbing.
///
/// `@unchecked Sendable`: every access checks, with a `precondition`, that it happens on the
/// reactor thread.
public struct LoopBound<Value>: @unchecked Sendable {
    private let _value: Value
    private let shared: ReactorShared

    /// Wraps `value`; call on the reactor thread.
    public init(_ value: Value, reactor: Reactor) {
        precondition(reactor.isOnReactorThread, "LoopBound created off the reactor thread")
        _value = value
        shared = reactor.handle.shared
    }

    /// The value; traps off the reactor thread.
    public var value: Value {
        precondition(shared.isOwnerThread, "LoopBound used off the reactor thread")
        return _value
    }
}

/// A job object for ``Reactor/Handle/execute(job:)``.
package protocol ReactorJob: AnyObject {
    /// Runs on the reactor thread.
    func run(on reactor: Reactor)
    /// The reactor was dropped with the job still queued: it will not run (no reactor is handed
    /// out from `deinit`). Called on the thread that drops the reactor.
    func dropped()
}
