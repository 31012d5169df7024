/// A one-thread event loop over the kernel: file-descriptor readiness, timers, signals, child
/// processes, and jobs submitted from other threads.
///
/// A reactor belongs to the thread that created it. Every method except those of ``Handle`` must
/// be called on that thread; the public ones check it with a `precondition`. Callbacks run on that
/// thread, one at a time, never re-entrantly.
///
/// ```swift
/// let reactor = try Reactor()
/// let timer = try reactor.schedule(after: .milliseconds(10)) { print("tick") }
/// try reactor.runOnce(timeout: .seconds(1))
/// ```
///
/// - Important: Readiness can be spurious: a readable callback must read until `EAGAIN` (for
///   edge-triggered registrations) and cope with reading nothing. Deregister a descriptor before
///   closing it; a number closed without deregistering and then reused is taken over by the new
///   registration, and no event meant for the old one reaches the new one.
///
/// The class is a facade over parts that each keep their own state: `RegistrationTable`
/// (descriptors, `Reactor+Descriptors.swift`), `TimerHeap` (`Reactor+Timers.swift`),
/// `SignalWatchers` (`Reactor+Signals.swift`), `ChildWatchers` (`Reactor+Children.swift`),
/// and the loop with its jobs (`Reactor+Loop.swift`), over a `ReactorBackend`.
public final class Reactor {
    let backend: any ReactorBackend
    let shared: ReactorShared
    /// The executor that runs Swift concurrency jobs on this reactor's thread.
    public let executor: ReactorExecutor
    /// The task executor of this reactor's thread (see ``ReactorTaskExecutor``).
    public let taskExecutor: ReactorTaskExecutor

    // State, all of it confined to the reactor thread. The properties touched by every event,
    // timer or job are `@exclusivity(unchecked)`: no access to them overlaps another (the
    // values' methods call nothing outside themselves; handlers run after the value's method
    // returns). On a plain thread the checks cost little (measured when this was split: timer
    // 322 / 317 ns checked against 325 / 318 unchecked, epoll / io_uring), but on a thread that
    // also runs Swift tasks (the reactor's executors) each check reaches the task's access set
    // through `__tls_get_addr`: about 80 instructions a check, 790 per async round trip through
    // the supervisor (callgrind, `lpm-compare rt-async`), before this attribute.
    @exclusivity(unchecked) var registrations = RegistrationTable()
    @exclusivity(unchecked) var timers = TimerHeap<() -> Void>()
    var signals = SignalWatchers()
    var children = ChildWatchers()
    @exclusivity(unchecked) var loop = LoopState()
    @exclusivity(unchecked) var isClosed = false
    var wakeRegistration: Registration?

    /// How long each iteration polls without blocking before it sleeps in the kernel; `nil` or
    /// zero (the default): never. Polling trades CPU (the thread spins for up to this long
    /// whenever it is idle) for lower wake-up latency when the peer runs on another CPU. Do not
    /// use it when the peer shares this thread's CPU: the spin then only delays it.
    /// `LPM_BUSY_POLL_US` sets it at creation.
    public var busyPoll: Duration? {
        get { loop.busyPollNanoseconds > 0 ? .nanoseconds(loop.busyPollNanoseconds) : nil }
        set { loop.busyPollNanoseconds = newValue.map { max(0, Reactor.nanoseconds($0)) } ?? 0 }
    }

    /// The backend this reactor runs on.
    public var backendKind: Backend { backend.kind }

    /// A `Sendable` handle for other threads: ``Handle/execute(_:)``, ``Handle/stop()``.
    public var handle: Handle { Handle(shared: shared, executor: executor, taskExecutor: taskExecutor) }

    /// Creates a reactor owned by the calling thread.
    ///
    /// - Parameter choice: which kernel interface to use; see ``BackendChoice``.
    /// - Throws: ``ReactorError`` when no backend can be created, or `.only(b)` names one the
    ///   kernel refuses.
    public init(backend choice: BackendChoice = .automatic) throws(ReactorError) {
        backend = try Reactor.makeBackend(choice)
        let wake: FileDescriptor
        do { wake = try Sys.eventfd() } catch {
            backend.close()
            throw ReactorError(.systemCall, "eventfd failed", underlying: error)
        }
        shared = ReactorShared(wakeFD: wake.release())
        executor = ReactorExecutor(shared: shared)
        taskExecutor = ReactorTaskExecutor(shared: shared)
        do {
            wakeRegistration = try registerInternal(shared.wakeFD, interest: .readable) { [unowned self] _ in
                Sys.drainEventFD(self.shared.wakeFD)
            }
        } catch {
            backend.close()
            FileDescriptor.closeRaw(shared.wakeFD)
            throw error
        }
    }

    private static func makeBackend(_ choice: BackendChoice) throws(ReactorError) -> any ReactorBackend {
        // `wanted`: a backend that must be used (or fail); `preferred`: the one to try first.
        let wanted: Backend?
        var preferred = Backend.uring
        switch choice {
        case .only(let b): wanted = b
        case .automatic: wanted = Reactor.environmentBackend
        case .preferring(let b):
            wanted = Reactor.environmentBackend
            preferred = b
        }
        if wanted == .uring || (wanted == nil && preferred == .uring) {
            do {
                return try URingBackend()
            } catch {
                // Refused (ENOSYS, EPERM under seccomp...): fall back to epoll unless required.
                if wanted == .uring {
                    throw ReactorError(.backendUnavailable, "io_uring refused by the kernel", underlying: error)
                }
            }
        }
        do { return try EpollBackend() } catch {
            throw ReactorError(.systemCall, "epoll_create1 failed", underlying: error)
        }
    }

    /// Closes what is left. Of the jobs still queued, Swift concurrency jobs run (they get the
    /// executor, never `self`), and closures are dropped unrun: each would get the reactor as
    /// its argument, and `self` must not escape `deinit`. (``close()`` runs both kinds; call it
    /// before dropping a reactor whose closures must run.)
    deinit {
        if !isClosed { closeResources(closures: false) }
    }

    /// The backend named by `LPM_REACTOR_BACKEND`, if any; else epoll under valgrind, whose
    /// io_uring support never completes a wait (it does not follow the shared rings).
    static var environmentBackend: Backend? {
        if let named = Sys.environment("LPM_REACTOR_BACKEND").flatMap(Backend.init(rawValue:)) { return named }
        return Sys.runningUnderValgrind ? .epoll : nil
    }

    /// Whether the calling thread is this reactor's thread.
    public var isOnReactorThread: Bool { shared.isOwnerThread }

    @inline(__always)
    func checkThread(_ function: StaticString = #function) {
        precondition(shared.isOwnerThread, "Reactor.\(function) called off the reactor thread")
    }

    /// How many user registrations (descriptors, timers, signals, children) are active.
    /// Zero means nothing the caller made is left.
    public var registrationCount: Int {
        // (Less the SIGCHLD watch that stands in for pidfds where they are refused.)
        registrations.userCount + timers.count + signals.count - (children.sigchldWatch == nil ? 0 : 1)
    }

    /// Releases the kernel objects. Callbacks are dropped; jobs already submitted run once more
    /// here, and later submissions are refused (``Handle/execute(_:)`` returns `false`). Child
    /// processes still watched are not reaped here: kill and reap them before closing.
    public func close() {
        checkThread()
        guard !isClosed else { return }
        closeResources(closures: true)
    }

    /// `closures`: run the leftover closure jobs (from ``close()``), or drop them (from
    /// `deinit`, where `self` must not be handed out).
    private func closeResources(closures: Bool) {
        isClosed = true
        // Jobs already accepted still run once, so that nothing submitted is silently lost
        // (they find the reactor closed: registering anything now throws `.closed`).
        for job in shared.close() {
            switch job {
            case .closure(let body): if closures { body(self) }
            case .object(let job): if closures { job.run(on: self) } else { job.dropped() }
            case .executorJob(let job):
                    job.runSynchronously(isolatedTo: executor.asUnownedSerialExecutor(), taskExecutor: taskExecutor.asUnownedTaskExecutor())
            case .taskExecutorJob(let job):
                    job.runSynchronously(on: taskExecutor.asUnownedTaskExecutor())
            case .stop: break
            }
        }
        signals.removeAll(onOwnerThread: shared.isOwnerThread)
        children.removeAll()
        backend.close()
        FileDescriptor.closeRaw(shared.wakeFD)
        registrations.removeAll()
        timers.removeAll()
    }

    /// Nanoseconds in `d`, saturating; a sub-nanosecond remainder rounds up, so that a timeout
    /// never becomes zero.
    package static func nanoseconds(_ d: Duration) -> Int64 {
        let (s, atto) = d.components
        let ns = atto / 1_000_000_000
        let (m, o1) = s.multipliedReportingOverflow(by: 1_000_000_000)
        if o1 { return s < 0 ? Int64.min : Int64.max }
        let (r, o2) = m.addingReportingOverflow(ns)
        if o2 { return s < 0 ? Int64.min : Int64.max }
        return r + (atto % 1_000_000_000 > 0 ? 1 : 0)
    }
}

@available(*, unavailable, message: "A Reactor belongs to its thread; use Reactor.Handle from other threads")
extension Reactor: Sendable {}
