import CLoop

/// The part of a reactor other threads may touch: the job queue and the wake-up eventfd.
///
/// `@unchecked Sendable`: `wakeFD` and `owner` are set once in `init`; `state` is read and
/// written only with `mutex` held; `hasLocalJobs` only on the owner thread.
///
/// The lock is a `pthread_mutex_t` rather than `Synchronization.Mutex`: ThreadSanitizer sees
/// the happens-before edges of pthread mutexes (it intercepts them), while `Mutex`'s futex
/// fast path lives in an uninstrumented library and made every hand-off look like a race.
final class ReactorShared: @unchecked Sendable {
    enum Job {
        case closure((Reactor) -> Void)
        case executorJob(UnownedJob)
        case stop
    }

    struct State {
        var jobs: [Job] = []
        /// An eventfd write is already on its way: further submissions need not write again.
        var wakePending = false
        var closed = false
    }

    let wakeFD: CInt
    let owner: pthread_t
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    /// Guarded by `mutex`.
    private var state = State()
    /// Reads and writes: owner thread only. Set when a job is submitted from the owner thread
    /// itself, which needs no eventfd write: the loop checks this before it blocks.
    var hasLocalJobs = false

    init(wakeFD: CInt) {
        self.wakeFD = wakeFD
        self.owner = pthread_self()
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inline(__always)
    private func withLock<R>(_ body: (inout State) -> R) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body(&state)
    }

    var isOwnerThread: Bool { pthread_equal(pthread_self(), owner) != 0 }

    /// Jobs submitted on the owner thread itself: no lock, no eventfd write. Owner thread only.
    private var localJobs: [Job] = []

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
            if s.wakePending { return (true, false) }
            s.wakePending = true
            return (true, true)
        }
        if mustWake {
            var one: UInt64 = 1
            // EAGAIN only if the counter is at its maximum: the reactor is woken either way.
            _ = withUnsafeBytes(of: &one) { CLoop.write(wakeFD, $0.baseAddress, 8) }
        }
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
    private var localClosed = false

    /// Moves every queued job into `jobs` (which the caller has emptied): those submitted on the
    /// owner thread first, then the others. Each thread's jobs keep their order. Owner thread only.
    func takeJobs(into jobs: inout [Job]) {
        if hasLocalJobs {
            hasLocalJobs = false
            swap(&jobs, &localJobs)
        }
        withLock { (s: inout State) in
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

/// The error type of the reactor API.
public struct ReactorError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong, as a growable set of codes.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let raw: UInt8
        /// The descriptor is closed or invalid.
        public static let invalidDescriptor = Code(raw: 1)
        /// The pid is not a child of this process.
        public static let notAChild = Code(raw: 2)
        /// An argument is out of range (empty interest, negative delay...).
        public static let invalidArgument = Code(raw: 3)
        /// The registration, timer or watch is stale or unknown.
        public static let unknownRegistration = Code(raw: 4)
        /// A system call failed; see ``ReactorError/underlying``.
        public static let systemCall = Code(raw: 5)
        /// The reactor is closed.
        public static let closed = Code(raw: 6)
        /// The requested backend is refused by the kernel or by policy.
        public static let backendUnavailable = Code(raw: 7)
        /// The signal is already watched.
        public static let alreadyWatched = Code(raw: 8)

        public var description: String {
            ["", "invalidDescriptor", "notAChild", "invalidArgument", "unknownRegistration", "systemCall",
             "closed", "backendUnavailable", "alreadyWatched"][Int(raw)]
        }
    }

    /// The kind of failure.
    public var code: Code
    /// What was attempted, in words.
    public var message: String
    /// The failed system call, if one failed.
    public var underlying: SyscallError?

    init(_ code: Code, _ message: String, underlying: SyscallError? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String {
        underlying.map { "\(message): \($0)" } ?? message
    }
}
