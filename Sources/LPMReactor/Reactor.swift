import CLoop
import Synchronization

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
public final class Reactor {
    /// A kernel event interface the reactor can run on.
    public enum Backend: String, Sendable, Hashable, CaseIterable, Codable {
        /// `epoll(7)`: one `epoll_ctl` per change, `epoll_pwait2` to wait.
        case epoll
        /// `io_uring(7)` through liburing: poll requests, batched submission.
        case uring
    }

    /// How to choose the backend.
    public enum BackendChoice: Sendable, Hashable {
        /// io_uring where the kernel allows it, else epoll. The environment variable
        /// `LPM_REACTOR_BACKEND` (`epoll` or `uring`) overrides this choice.
        case automatic
        /// This backend where the kernel allows it: `.preferring(.uring)` falls back to epoll when
        /// io_uring is refused; `.preferring(.epoll)` is epoll (always there). `LPM_REACTOR_BACKEND`
        /// overrides it. (`.automatic` is `.preferring(.uring)`.)
        case preferring(Backend)
        /// This backend, and fail if the kernel refuses it. The environment is not consulted.
        case only(Backend)
    }

    /// What a registration waits for. Never empty.
    public struct Interest: OptionSet, Sendable, Hashable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// Data can be read (or the peer hung up).
        public static let readable = Interest(rawValue: 1)
        /// Data can be written.
        public static let writable = Interest(rawValue: 2)
    }

    /// What the kernel reported ready.
    public struct Readiness: OptionSet, Sendable, Hashable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// Readable (`EPOLLIN` / `POLLIN`).
        public static let readable = Readiness(rawValue: 1)
        /// Writable (`EPOLLOUT` / `POLLOUT`).
        public static let writable = Readiness(rawValue: 2)
        /// The peer hung up (`EPOLLHUP`, `EPOLLRDHUP`).
        public static let hangup = Readiness(rawValue: 4)
        /// An error is pending on the descriptor (`EPOLLERR`).
        public static let error = Readiness(rawValue: 8)
    }

    /// Level-triggered (reported while ready) or edge-triggered (reported when it becomes ready).
    public enum Trigger: Sendable, Hashable {
        case level
        case edge
    }

    /// A file-descriptor registration. Stale after ``deregister(_:)``.
    public struct Registration: Hashable, Sendable {
        let index: UInt32
        let generation: UInt32
    }

    /// A scheduled timer. Stale after it fires (one-shot) or is cancelled.
    public struct Timer: Hashable, Sendable {
        let index: UInt32
        let generation: UInt32
    }

    /// A watched signal.
    public struct SignalWatch: Hashable, Sendable {
        /// The signal number.
        public let signal: CInt
        let generation: UInt32
    }

    /// A watched child process.
    public struct ChildWatch: Hashable, Sendable {
        /// The child's process id.
        public let pid: pid_t
        let registration: Registration
    }

    /// How a child process ended.
    public enum ExitStatus: Sendable, Hashable, CustomStringConvertible {
        /// It called `exit` with this code.
        case exited(CInt)
        /// A signal ended it (`CLD_KILLED` or `CLD_DUMPED`).
        case signaled(CInt)

        public var description: String {
            switch self {
            case .exited(let code): return "exited with code \(code)"
            case .signaled(let signal): return "killed by signal \(signal)\(Reactor.signalName(signal).map { " (\($0))" } ?? "")"
            }
        }
    }

    // MARK: State (all of it confined to the reactor thread)

    private struct FDSlot {
        var fd: CInt = -1
        var generation: UInt32 = 0
        var arm: UInt32 = 0
        var interest: Interest = []
        var trigger: Trigger = .level
        var handler: ((Readiness) -> Void)?
        var isInternal = false
    }

    private struct TimerSlot {
        var deadline: Int64 = 0
        var interval: Int64 = 0
        var sequence: UInt64 = 0
        var generation: UInt32 = 0
        var heapIndex: Int = -1
        var handler: (() -> Void)?
    }

    private struct ChildState {
        var pid: pid_t
        var pidfd: CInt
        var handler: (ExitStatus) -> Void
    }

    private let backend: any ReactorBackend
    private let shared: ReactorShared
    /// The executor that runs Swift concurrency jobs on this reactor's thread.
    public let executor: ReactorExecutor

    @exclusivity(unchecked) private var slots: [FDSlot] = []
    @exclusivity(unchecked) private var freeSlots: [UInt32] = []
    @exclusivity(unchecked) private var slotByFD: [UInt32] = []  // fd number -> slot index + 1 (0: none)
    @exclusivity(unchecked) private var nextArm: UInt32 = 0
    @exclusivity(unchecked) private var userRegistrations = 0

    @exclusivity(unchecked) private var timers: [TimerSlot] = []
    @exclusivity(unchecked) private var freeTimers: [UInt32] = []
    @exclusivity(unchecked) private var heap: [UInt32] = []
    @exclusivity(unchecked) private var timerSequence: UInt64 = 0

    private var children: [UInt32: ChildState] = [:]  // by slot index of the pidfd

    private var signalFD: CInt = -1
    private var signalRegistration: Registration?
    private var signalHandlers: [CInt: (generation: UInt32, handler: (CInt) -> Void, previous: sigaction)] = [:]
    private var signalGeneration: UInt32 = 0
    /// The kernel thread id of the owner thread (for the signal forwarder).
    private let ownerTID = cloop_gettid()

    @exclusivity(unchecked) private var events: [BackendEvent] = []
    @exclusivity(unchecked) private var jobs: [ReactorShared.Job] = []
    @exclusivity(unchecked) private var stopRequested = false
    private var isClosed = false
    private var wakeRegistration: Registration?

    /// How long each iteration polls without blocking before it sleeps in the kernel; `nil` or
    /// zero (the default): never. Polling trades CPU (the thread spins for up to this long
    /// whenever it is idle) for lower wake-up latency when the peer runs on another CPU. Do not
    /// use it when the peer shares this thread's CPU: the spin then only delays it.
    /// `LPM_BUSY_POLL_US` sets it at creation.
    public var busyPoll: Duration? {
        get { busyPollNanoseconds > 0 ? .nanoseconds(busyPollNanoseconds) : nil }
        set { busyPollNanoseconds = newValue.map { max(0, Reactor.nanoseconds($0)) } ?? 0 }
    }
    private var busyPollNanoseconds: Int64 = getenv("LPM_BUSY_POLL_US").flatMap { Int64(String(cString: $0)) }.map { $0 * 1000 } ?? 0

    /// The backend this reactor runs on.
    public var backendKind: Backend { backend.kind }

    /// A `Sendable` handle for other threads: ``Handle/execute(_:)``, ``Handle/stop()``.
    public var handle: Handle { Handle(shared: shared, executor: executor) }

    /// Creates a reactor owned by the calling thread.
    ///
    /// - Parameter choice: which kernel interface to use; see ``BackendChoice``.
    /// - Throws: ``ReactorError`` when no backend can be created, or `.only(b)` names one the
    ///   kernel refuses.
    public init(backend choice: BackendChoice = .automatic) throws(ReactorError) {
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
        var made: (any ReactorBackend)?
        if wanted == .uring || (wanted == nil && preferred == .uring) {
            do {
                made = try URingBackend()
            } catch {
                if wanted == .uring {
                    throw ReactorError(.backendUnavailable, "io_uring refused by the kernel", underlying: error)
                }
            }
        }
        if made == nil {
            do { made = try EpollBackend() } catch { throw ReactorError(.systemCall, "epoll_create1 failed", underlying: error) }
        }
        backend = made!
        let wake: FileDescriptor
        do { wake = try Sys.eventfd() } catch {
            backend.close()
            throw ReactorError(.systemCall, "eventfd failed", underlying: error)
        }
        shared = ReactorShared(wakeFD: wake.release())
        executor = ReactorExecutor(shared: shared)
        events.reserveCapacity(64)
        do {
            wakeRegistration = try registerInternal(shared.wakeFD, interest: .readable) { [unowned self] _ in
                self.drainWakeFD()
            }
        } catch {
            backend.close()
            FileDescriptor.closeRaw(shared.wakeFD)
            throw error
        }
    }

    deinit {
        if !isClosed { closeResources() }
    }

    /// The backend named by `LPM_REACTOR_BACKEND`, if any.
    static var environmentBackend: Backend? {
        guard let raw = getenv("LPM_REACTOR_BACKEND") else { return nil }
        return Backend(rawValue: String(cString: raw))
    }

    /// Whether the calling thread is this reactor's thread.
    public var isOnReactorThread: Bool { shared.isOwnerThread }

    @inline(__always)
    private func checkThread(_ function: StaticString = #function) {
        precondition(shared.isOwnerThread, "Reactor.\(function) called off the reactor thread")
    }

    // MARK: File descriptors

    /// Watches `fd` and calls `handler` on this thread whenever it is ready for `interest`.
    ///
    /// The descriptor stays the caller's: deregister it before closing it.
    /// - Parameters:
    ///   - fd: an open descriptor (socket, pipe, eventfd, pidfd...). Regular files are refused
    ///     by epoll (`EPERM`).
    ///   - interest: what to wait for; must not be empty.
    ///   - trigger: level (default) or edge.
    ///   - handler: called with what is ready; only what `interest` asks for, plus hangup and error.
    /// - Returns: the registration, for ``modify(_:interest:)`` and ``deregister(_:)``.
    /// - Throws: ``ReactorError`` `.invalidDescriptor` for a closed or invalid fd,
    ///   `.invalidArgument` for an empty interest, `.systemCall` when the backend refuses.
    @discardableResult
    public func register(
        _ fd: CInt,
        interest: Interest,
        trigger: Trigger = .level,
        handler: @escaping (Readiness) -> Void
    ) throws(ReactorError) -> Registration {
        checkThread()
        let r = try registerInternal(fd, interest: interest, trigger: trigger, handler: handler)
        slots[Int(r.index)].isInternal = false
        userRegistrations += 1
        return r
    }

    private func registerInternal(
        _ fd: CInt,
        interest: Interest,
        trigger: Trigger = .level,
        handler: @escaping (Readiness) -> Void
    ) throws(ReactorError) -> Registration {
        guard !isClosed else { throw ReactorError(.closed, "the reactor is closed") }
        guard !interest.isEmpty else { throw ReactorError(.invalidArgument, "register(\(fd)): the interest is empty") }
        guard Sys.isValid(fd) else {
            throw ReactorError(.invalidDescriptor, "register(\(fd)): not an open file descriptor",
                               underlying: SyscallError("fcntl", .badFileDescriptor))
        }
        // A number registered before and closed without deregistering: the old registration is dead.
        if Int(fd) < slotByFD.count, slotByFD[Int(fd)] != 0 {
            let old = slotByFD[Int(fd)] - 1
            if !slots[Int(old)].isInternal { userRegistrations -= 1 }
            releaseSlot(old)
        }
        let index: UInt32
        if let free = freeSlots.popLast() {
            index = free
        } else {
            index = UInt32(slots.count)
            slots.append(FDSlot())
        }
        nextArm &+= 1
        let arm = nextArm
        let token = UInt64(index) << 32 | UInt64(arm)
        do {
            try backend.register(fd: fd, token: token, interest: interest, edge: trigger == .edge)
        } catch {
            freeSlots.append(index)
            throw ReactorError(error.errno == .badFileDescriptor ? .invalidDescriptor : .systemCall,
                               "register(\(fd)) refused by \(backend.kind)", underlying: error)
        }
        var slot = slots[Int(index)]
        slot.fd = fd
        slot.generation &+= 1
        slot.arm = arm
        slot.interest = interest
        slot.trigger = trigger
        slot.handler = handler
        slot.isInternal = true
        slots[Int(index)] = slot
        if Int(fd) >= slotByFD.count {
            slotByFD.append(contentsOf: repeatElement(0, count: Int(fd) + 1 - slotByFD.count))
        }
        slotByFD[Int(fd)] = index + 1
        return Registration(index: index, generation: slot.generation)
    }

    private func liveSlot(_ r: Registration) -> Int? {
        let i = Int(r.index)
        guard i < slots.count, slots[i].handler != nil, slots[i].generation == r.generation else { return nil }
        return i
    }

    /// Changes what a registration waits for.
    /// - Throws: ``ReactorError`` `.unknownRegistration` for a stale registration,
    ///   `.invalidArgument` for an empty interest.
    public func modify(_ registration: Registration, interest: Interest) throws(ReactorError) {
        checkThread()
        guard let i = liveSlot(registration) else { throw ReactorError(.unknownRegistration, "modify: unknown or stale registration") }
        guard !interest.isEmpty else { throw ReactorError(.invalidArgument, "modify: the interest is empty") }
        if slots[i].interest == interest { return }
        nextArm &+= 1
        let old = UInt64(i) << 32 | UInt64(slots[i].arm)
        let new = UInt64(i) << 32 | UInt64(nextArm)
        do {
            try backend.modify(fd: slots[i].fd, oldToken: old, newToken: new, interest: interest, edge: slots[i].trigger == .edge)
        } catch {
            throw ReactorError(error.errno == .badFileDescriptor || error.errno == .noSuchFileOrDirectory ? .invalidDescriptor : .systemCall,
                               "modify(\(slots[i].fd)) refused by \(backend.kind)", underlying: error)
        }
        slots[i].arm = nextArm
        slots[i].interest = interest
    }

    /// Stops watching a descriptor. Its handler is not called again, even for events already
    /// collected in this iteration. Safe to call from inside any callback, including its own.
    ///
    /// - Warning: On the io_uring backend the kernel keeps a reference to the file until the
    ///   removal is submitted, with the next wait: a descriptor deregistered and closed is
    ///   released (its peer sees end of file) only when the loop next runs. Do not deregister,
    ///   close, and then block this thread waiting for the peer to notice.
    /// - Throws: ``ReactorError`` `.unknownRegistration` for a stale registration.
    public func deregister(_ registration: Registration) throws(ReactorError) {
        checkThread()
        guard let i = liveSlot(registration) else { throw ReactorError(.unknownRegistration, "deregister: unknown or stale registration") }
        if !slots[i].isInternal { userRegistrations -= 1 }
        let fd = slots[i].fd
        try? backend.deregister(fd: fd, token: UInt64(i) << 32 | UInt64(slots[i].arm))
        releaseSlot(UInt32(i))
    }

    private func releaseSlot(_ index: UInt32) {
        let i = Int(index)
        let fd = slots[i].fd
        if Int(fd) < slotByFD.count, slotByFD[Int(fd)] == index + 1 { slotByFD[Int(fd)] = 0 }
        slots[i].handler = nil
        slots[i].fd = -1
        slots[i].arm = 0
        freeSlots.append(index)
    }

    /// How many user registrations (descriptors, timers, signals, children) are active.
    /// Zero means nothing the caller made is left.
    public var registrationCount: Int {
        userRegistrations + (timers.count - freeTimers.count) + signalHandlers.count
    }

    // MARK: Timers

    /// Calls `handler` once after `delay`, or every `interval` after that when `repeating` is given.
    ///
    /// Timers live in a heap in user space: thousands cost no kernel object each; the wait's
    /// timeout is the earliest deadline. Timers due at the same instant fire in the order they
    /// were scheduled.
    /// - Throws: ``ReactorError`` `.invalidArgument` for a negative delay or a non-positive interval.
    @discardableResult
    public func schedule(after delay: Duration, repeating interval: Duration? = nil, _ handler: @escaping () -> Void) throws(ReactorError) -> Timer {
        checkThread()
        guard !isClosed else { throw ReactorError(.closed, "the reactor is closed") }
        let d = Reactor.nanoseconds(delay)
        guard d >= 0 else { throw ReactorError(.invalidArgument, "schedule: negative delay \(delay)") }
        var every: Int64 = 0
        if let interval {
            every = Reactor.nanoseconds(interval)
            guard every > 0 else { throw ReactorError(.invalidArgument, "schedule: the repeat interval must be positive, got \(interval)") }
        }
        let index: UInt32
        if let free = freeTimers.popLast() {
            index = free
        } else {
            index = UInt32(timers.count)
            timers.append(TimerSlot())
        }
        timerSequence &+= 1
        timers[Int(index)].deadline = Sys.monotonicNanoseconds() &+ d
        timers[Int(index)].interval = every
        timers[Int(index)].sequence = timerSequence
        timers[Int(index)].generation &+= 1
        timers[Int(index)].handler = handler
        heapPush(index)
        return Timer(index: index, generation: timers[Int(index)].generation)
    }

    /// Cancels a timer. Returns `false` when it already fired (one-shot) or was cancelled.
    /// Safe from inside any callback, including another timer's.
    @discardableResult
    public func cancel(_ timer: Timer) -> Bool {
        checkThread()
        let i = Int(timer.index)
        guard i < timers.count, timers[i].generation == timer.generation, timers[i].handler != nil else { return false }
        if timers[i].heapIndex >= 0 { heapRemove(at: timers[i].heapIndex) }
        timers[i].handler = nil
        freeTimers.append(timer.index)
        return true
    }

    static func nanoseconds(_ d: Duration) -> Int64 {
        let (s, atto) = d.components
        let ns = atto / 1_000_000_000
        let (m, o1) = s.multipliedReportingOverflow(by: 1_000_000_000)
        if o1 { return s < 0 ? Int64.min : Int64.max }
        let (r, o2) = m.addingReportingOverflow(ns)
        if o2 { return s < 0 ? Int64.min : Int64.max }
        // Round up a sub-nanosecond remainder so a timeout never becomes zero.
        return r + (atto % 1_000_000_000 > 0 ? 1 : 0)
    }

    private func less(_ a: UInt32, _ b: UInt32) -> Bool {
        let x = timers[Int(a)], y = timers[Int(b)]
        return x.deadline != y.deadline ? x.deadline < y.deadline : x.sequence < y.sequence
    }

    private func heapSet(_ pos: Int, _ index: UInt32) {
        heap[pos] = index
        timers[Int(index)].heapIndex = pos
    }

    private func heapPush(_ index: UInt32) {
        heap.append(index)
        timers[Int(index)].heapIndex = heap.count - 1
        siftUp(heap.count - 1)
    }

    private func siftUp(_ start: Int) {
        var pos = start
        let item = heap[pos]
        while pos > 0 {
            let parent = (pos - 1) / 2
            if !less(item, heap[parent]) { break }
            heapSet(pos, heap[parent])
            pos = parent
        }
        heapSet(pos, item)
    }

    private func siftDown(_ start: Int) {
        var pos = start
        let item = heap[pos]
        let n = heap.count
        while true {
            var child = 2 * pos + 1
            if child >= n { break }
            if child + 1 < n && less(heap[child + 1], heap[child]) { child += 1 }
            if !less(heap[child], item) { break }
            heapSet(pos, heap[child])
            pos = child
        }
        heapSet(pos, item)
    }

    private func heapRemove(at pos: Int) {
        let removed = heap[pos]
        let last = heap.removeLast()
        timers[Int(removed)].heapIndex = -1
        if pos < heap.count {
            heapSet(pos, last)
            siftDown(pos)
            siftUp(timers[Int(last)].heapIndex)
        }
    }

    private func runExpiredTimers() -> Int {
        guard !heap.isEmpty else { return 0 }
        let now = Sys.monotonicNanoseconds()
        var ran = 0
        while let top = heap.first, timers[Int(top)].deadline <= now {
            let t = Int(top)
            guard let handler = timers[t].handler else { heapRemove(at: 0); continue }
            if timers[t].interval > 0 {
                var next = timers[t].deadline &+ timers[t].interval
                if next <= now { next = now &+ timers[t].interval }  // skip missed ticks
                timers[t].deadline = next
                timerSequence &+= 1
                timers[t].sequence = timerSequence
                siftDown(0)
            } else {
                heapRemove(at: 0)
                timers[t].handler = nil
                freeTimers.append(top)
            }
            handler()
            ran += 1
        }
        return ran
    }

    // MARK: Signals

    /// Delivers `signal` to `handler` on this thread through a `signalfd(2)`.
    ///
    /// The reactor blocks the signal in its own thread and reads it from a signalfd. A signal
    /// sent to the process is delivered to *any* thread that does not block it, and there it would
    /// run the default action (for SIGINT: end the process). So that it cannot, the reactor also
    /// installs a small handler for the signal that forwards it to the reactor thread with
    /// `tgkill(2)`: a SIGINT landing on a thread of the Swift runtime, of Dispatch, or of your
    /// own, still reaches `handler`. To avoid that extra hop, block the signal in the main thread
    /// before any other thread exists (``Reactor/blockSignals(_:)``); threads inherit the mask.
    ///
    /// - Important: One reactor per process should watch a given signal; the forwarder targets the
    ///   reactor thread that most recently started watching a signal. Child processes spawned by
    ///   this package reset both the mask and the disposition.
    /// - Throws: ``ReactorError`` `.invalidArgument` for a signal that cannot be caught (SIGKILL,
    ///   SIGSTOP) or a bad number; `.alreadyWatched` when the signal is already watched.
    @discardableResult
    public func watchSignal(_ signal: CInt, handler: @escaping (CInt) -> Void) throws(ReactorError) -> SignalWatch {
        checkThread()
        guard !isClosed else { throw ReactorError(.closed, "the reactor is closed") }
        guard signal > 0, signal < 65, signal != SIGKILL, signal != SIGSTOP else {
            throw ReactorError(.invalidArgument, "watchSignal: signal \(signal) cannot be caught")
        }
        guard signalHandlers[signal] == nil else { throw ReactorError(.alreadyWatched, "watchSignal: signal \(signal) is already watched") }
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, signal)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        // Forward the signal from threads that do not block it (see the doc comment).
        forwardTarget.store(ownerTID, ordering: .releasing)
        var action = sigaction()
        action.__sigaction_handler.sa_handler = signalForwarder
        action.sa_flags = SA_RESTART
        sigemptyset(&action.sa_mask)
        var previous = sigaction()
        sigaction(signal, &action, &previous)

        var all = sigset_t()
        sigemptyset(&all)
        for s in signalHandlers.keys { sigaddset(&all, s) }
        sigaddset(&all, signal)
        let fd = signalfd(signalFD, &all, CInt(SFD_CLOEXEC) | CInt(SFD_NONBLOCK))
        if fd < 0 {
            let e = Errno.current
            sigaction(signal, &previous, nil)
            pthread_sigmask(SIG_UNBLOCK, &set, nil)
            throw ReactorError(.systemCall, "signalfd failed", underlying: SyscallError("signalfd", e))
        }
        if signalFD < 0 {
            signalFD = fd
            do {
                signalRegistration = try registerInternal(fd, interest: .readable) { [unowned self] _ in self.readSignals() }
            } catch {
                FileDescriptor.closeRaw(fd)
                signalFD = -1
                sigaction(signal, &previous, nil)
                pthread_sigmask(SIG_UNBLOCK, &set, nil)
                throw error
            }
        }
        signalGeneration &+= 1
        signalHandlers[signal] = (signalGeneration, handler, previous)
        return SignalWatch(signal: signal, generation: signalGeneration)
    }

    /// Stops watching a signal: restores the previous disposition and unblocks it in this thread
    /// (a pending instance is then delivered the ordinary way).
    /// - Throws: ``ReactorError`` `.unknownRegistration` for a stale watch.
    public func unwatchSignal(_ watch: SignalWatch) throws(ReactorError) {
        checkThread()
        guard let entry = signalHandlers[watch.signal], entry.generation == watch.generation else {
            throw ReactorError(.unknownRegistration, "unwatchSignal: signal \(watch.signal) is not watched by this watch")
        }
        signalHandlers[watch.signal] = nil
        var all = sigset_t()
        sigemptyset(&all)
        for s in signalHandlers.keys { sigaddset(&all, s) }
        if signalHandlers.isEmpty {
            if let r = signalRegistration { try? deregister(r) }
            signalRegistration = nil
            FileDescriptor.closeRaw(signalFD)
            signalFD = -1
        } else {
            _ = signalfd(signalFD, &all, CInt(SFD_CLOEXEC) | CInt(SFD_NONBLOCK))
        }
        var previous = entry.previous
        sigaction(watch.signal, &previous, nil)
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, watch.signal)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    /// Blocks `signals` in the calling thread. Call it first thing in `main`, before any other
    /// thread exists, so that every thread inherits the mask and a watched signal goes straight
    /// to the signalfd. The corresponding C function is `pthread_sigmask(2)`.
    public static func blockSignals(_ signals: [CInt]) {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    private func readSignals() {
        var info = signalfd_siginfo()
        let size = MemoryLayout<signalfd_siginfo>.size
        while signalFD >= 0 {
            let n = withUnsafeMutableBytes(of: &info) { CLoop.read(signalFD, $0.baseAddress, size) }
            if n != size { return }
            let signo = CInt(info.ssi_signo)
            signalHandlers[signo]?.handler(signo)
        }
    }

    /// The usual name of a signal ("SIGINT"), if it has one.
    public static func signalName(_ signal: CInt) -> String? {
        switch signal {
        case SIGHUP: return "SIGHUP"
        case SIGINT: return "SIGINT"
        case SIGQUIT: return "SIGQUIT"
        case SIGILL: return "SIGILL"
        case SIGTRAP: return "SIGTRAP"
        case SIGABRT: return "SIGABRT"
        case SIGBUS: return "SIGBUS"
        case SIGFPE: return "SIGFPE"
        case SIGKILL: return "SIGKILL"
        case SIGUSR1: return "SIGUSR1"
        case SIGSEGV: return "SIGSEGV"
        case SIGUSR2: return "SIGUSR2"
        case SIGPIPE: return "SIGPIPE"
        case SIGALRM: return "SIGALRM"
        case SIGTERM: return "SIGTERM"
        default: return nil
        }
    }

    // MARK: Child processes

    /// Calls `handler` once, on this thread, with the exit status of child `pid`, and reaps it.
    ///
    /// Uses a pidfd (`pidfd_open(2)` with `PIDFD_NONBLOCK`, kernel 5.10+) and `waitid(P_PIDFD)`
    /// (kernel 5.4+), never
    /// `waitpid(-1)`: other children of the process are left alone. The pid cannot be recycled
    /// before it is reaped here, provided nothing else reaps it (no `SIGCHLD` set to `SIG_IGN`,
    /// no `waitpid(-1)` elsewhere in the process).
    /// - Throws: ``ReactorError`` `.notAChild` when `pid` is not a live or unreaped child of this
    ///   process.
    @discardableResult
    public func watchChild(_ pid: pid_t, handler: @escaping (ExitStatus) -> Void) throws(ReactorError) -> ChildWatch {
        checkThread()
        guard pid > 0 else { throw ReactorError(.notAChild, "watchChild: \(pid) is not a process id") }
        let pidfd: CInt
        do { pidfd = try Sys.pidfdOpen(pid).release() } catch {
            throw ReactorError(.notAChild, "watchChild: no process \(pid)", underlying: error)
        }
        // Is it ours? waitid on a pidfd of another process's child reports ECHILD.
        do {
            _ = try Sys.waitidPidfd(pidfd, options: WNOHANG | WNOWAIT)
        } catch {
            FileDescriptor.closeRaw(pidfd)
            throw ReactorError(.notAChild, "watchChild: \(pid) is not a child of this process", underlying: error)
        }
        return try watchPidfd(pidfd, pid: pid, handler: handler, user: true)
    }

    /// Like ``watchChild(_:handler:)`` for a pidfd the caller already has (the reactor takes it
    /// over and closes it after reaping).
    package func watchPidfd(_ pidfd: CInt, pid: pid_t, handler: @escaping (ExitStatus) -> Void, user: Bool = false) throws(ReactorError) -> ChildWatch {
        let r: Registration
        do {
            r = try registerInternal(pidfd, interest: .readable) { [unowned self] _ in self.childReady(pidfd) }
        } catch {
            FileDescriptor.closeRaw(pidfd)
            throw error
        }
        if user { userRegistrations += 1; slots[Int(r.index)].isInternal = false }
        children[r.index] = ChildState(pid: pid, pidfd: pidfd, handler: handler)
        return ChildWatch(pid: pid, registration: r)
    }

    private func childReady(_ pidfd: CInt) {
        guard Int(pidfd) < slotByFD.count, slotByFD[Int(pidfd)] != 0 else { return }
        let index = slotByFD[Int(pidfd)] - 1
        guard let child = children[index] else { return }
        var info: siginfo_t
        do { info = try Sys.waitidPidfd(pidfd, options: WNOHANG) } catch {
            // ECHILD: reaped by someone else. Report it as unknown (-1) rather than hang.
            finishChild(index, child, .exited(-1))
            return
        }
        // A readable pidfd means the process exited; if waitid has nothing yet, wait again.
        if cloop_siginfo_si_pid(&info) == 0 { return }
        let code = cloop_siginfo_si_code(&info)
        let status = cloop_siginfo_si_status(&info)
        let exit: ExitStatus = code == CLD_EXITED ? .exited(status) : .signaled(status)
        finishChild(index, child, exit)
    }

    private func finishChild(_ index: UInt32, _ child: ChildState, _ status: ExitStatus) {
        children[index] = nil
        let r = Registration(index: index, generation: slots[Int(index)].generation)
        if !slots[Int(index)].isInternal { userRegistrations -= 1 }
        slots[Int(index)].isInternal = true
        try? deregister(r)
        FileDescriptor.closeRaw(child.pidfd)
        child.handler(status)
    }

    /// Sends `signal` to a watched child through its pidfd, race-free against pid reuse.
    /// The corresponding C function is `pidfd_send_signal(2)`.
    /// - Throws: ``ReactorError`` `.unknownRegistration` when the child was already reaped.
    public func signalChild(_ watch: ChildWatch, _ signal: CInt) throws(ReactorError) {
        checkThread()
        guard let child = children[watch.registration.index], child.pid == watch.pid else {
            throw ReactorError(.unknownRegistration, "signalChild: \(watch.pid) is no longer watched")
        }
        do { try Sys.pidfdSendSignal(child.pidfd, signal) } catch {
            throw ReactorError(.systemCall, "signalChild(\(watch.pid), \(signal))", underlying: error)
        }
    }

    /// Stops watching a child without reaping it; its handler is not called.
    public func unwatchChild(_ watch: ChildWatch) throws(ReactorError) {
        checkThread()
        guard let child = children[watch.registration.index], child.pid == watch.pid else {
            throw ReactorError(.unknownRegistration, "unwatchChild: \(watch.pid) is not watched")
        }
        children[watch.registration.index] = nil
        let i = Int(watch.registration.index)
        if !slots[i].isInternal { userRegistrations -= 1 }
        slots[i].isInternal = true
        try? deregister(watch.registration)
        FileDescriptor.closeRaw(child.pidfd)
    }

    // MARK: Running

    /// Runs until ``stop()`` (or ``Handle/stop()``) is called.
    /// - Throws: ``ReactorError`` `.systemCall` if waiting fails.
    public func run() throws(ReactorError) {
        checkThread()
        stopRequested = false
        while !stopRequested {
            try runOnce(timeout: nil)
        }
        stopRequested = false
    }

    /// Runs one iteration: waits up to `timeout` (`nil`: until something happens; `.zero`: do
    /// not block), then runs the ready callbacks, the due timers and the submitted jobs.
    /// For embedding in another loop.
    /// - Returns: how many callbacks, timers and jobs ran.
    @discardableResult
    public func runOnce(timeout: Duration?) throws(ReactorError) -> Int {
        checkThread()
        guard !isClosed else { throw ReactorError(.closed, "the reactor is closed") }
        var wait: Int64? = timeout.map { max(0, Reactor.nanoseconds($0)) }
        if stopRequested || shared.hasLocalJobs { wait = 0 }
        if let top = heap.first {
            let untilTimer = max(0, timers[Int(top)].deadline &- Sys.monotonicNanoseconds())
            wait = min(wait ?? Int64.max, untilTimer)
        }
        events.removeAll(keepingCapacity: true)
        do {
            if busyPollNanoseconds > 0 && wait != 0 {
                // Poll without blocking for a while before sleeping: trades CPU for the wake-up
                // latency of a blocking wait (large when the peer runs on another CPU).
                let start = Sys.monotonicNanoseconds()
                let limit = min(busyPollNanoseconds, wait ?? Int64.max)
                repeat {
                    try backend.wait(timeoutNanoseconds: 0, into: &events)
                } while events.isEmpty && Sys.monotonicNanoseconds() &- start < limit
                // (Jobs from other threads wake the eventfd, which is one of the polled descriptors.)
                if events.isEmpty {
                    let left = wait.map { max(0, $0 &- (Sys.monotonicNanoseconds() &- start)) }
                    try backend.wait(timeoutNanoseconds: left, into: &events)
                }
            } else {
                try backend.wait(timeoutNanoseconds: wait, into: &events)
            }
        } catch {
            throw ReactorError(.systemCall, "waiting for events failed", underlying: error)
        }
        var ran = 0
        for e in events {
            let i = Int(truncatingIfNeeded: e.token >> 32)
            let arm = UInt32(truncatingIfNeeded: e.token)
            guard i < slots.count, slots[i].arm == arm, let handler = slots[i].handler else { continue }
            var ready = e.readiness
            var allowed: Readiness = [.hangup, .error]
            if slots[i].interest.contains(.readable) { allowed.insert(.readable) }
            if slots[i].interest.contains(.writable) { allowed.insert(.writable) }
            ready.formIntersection(allowed)
            if ready.isEmpty { continue }
            handler(ready)
            ran += 1
        }
        ran += runExpiredTimers()
        ran += runJobs()
        return ran
    }

    /// The time until the earliest timer, or `nil` when none is scheduled. For embedding.
    public var nextTimeout: Duration? {
        checkThread()
        guard let top = heap.first else { return nil }
        return .nanoseconds(max(0, timers[Int(top)].deadline &- Sys.monotonicNanoseconds()))
    }

    /// Runs `job` on this thread at the end of the current iteration, after the ready callbacks
    /// and due timers (from inside a job: in the same iteration, within a few rounds of jobs).
    /// Reactor thread only;
    /// costs no system call. Other threads use ``Handle/execute(_:)``.
    public func execute(_ job: @escaping (Reactor) -> Void) {
        checkThread()
        // The job never leaves this thread (it goes to the owner-thread queue), so it need not be
        // sent; passing it on as it is keeps a stored closure from being wrapped anew.
        _ = shared.submitLocal(.closure(job))
    }

    /// Makes ``run()`` return after the current iteration. Reactor thread only; other threads
    /// use ``Handle/stop()``.
    public func stop() {
        checkThread()
        stopRequested = true
    }

    private func drainWakeFD() {
        var value: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &value) { CLoop.read(shared.wakeFD, $0.baseAddress, 8) }
    }

    private func runJobs() -> Int {
        var ran = 0
        // Jobs submitted by jobs run in the same iteration, up to a few rounds, so that a job
        // re-submitting itself cannot starve the descriptors.
        for _ in 0..<4 {
            shared.takeJobs(into: &jobs)
            if jobs.isEmpty { break }
            for job in jobs {
                switch job {
                case .closure(let body): body(self)
                case .executorJob(let job): job.runSynchronously(on: executor.asUnownedSerialExecutor())
                case .stop: stopRequested = true
                }
            }
            ran += jobs.count
            jobs.removeAll(keepingCapacity: true)
        }
        return ran
    }

    /// Releases the kernel objects. Callbacks are dropped; jobs already submitted run once more
    /// here, and later submissions are refused (``Handle/execute(_:)`` returns `false`). Child processes still watched
    /// are not reaped here: kill and reap them before closing.
    public func close() {
        checkThread()
        guard !isClosed else { return }
        closeResources()
    }

    private func closeResources() {
        isClosed = true
        // Jobs already accepted still run once, so that nothing submitted is silently lost
        // (they find the reactor closed: registering anything now throws `.closed`).
        for job in shared.close() {
            switch job {
            case .closure(let body): body(self)
            case .executorJob(let job): job.runSynchronously(on: executor.asUnownedSerialExecutor())
            case .stop: break
            }
        }
        for (signal, entry) in signalHandlers {
            var previous = entry.previous
            sigaction(signal, &previous, nil)
            // Unblock it again in this thread, as unwatchSignal does (when closing on it).
            if shared.isOwnerThread {
                var set = sigset_t()
                sigemptyset(&set)
                sigaddset(&set, signal)
                pthread_sigmask(SIG_UNBLOCK, &set, nil)
            }
        }
        if !signalHandlers.isEmpty {
            // Stop forwarding to this thread: it may end, and its id be reused.
            _ = forwardTarget.compareExchange(expected: ownerTID, desired: 0, ordering: .acquiringAndReleasing)
        }
        signalHandlers.removeAll()
        if signalFD >= 0 { FileDescriptor.closeRaw(signalFD); signalFD = -1 }
        for (_, child) in children { FileDescriptor.closeRaw(child.pidfd) }
        children.removeAll()
        backend.close()
        FileDescriptor.closeRaw(shared.wakeFD)
        slots.removeAll()
        timers.removeAll()
        heap.removeAll()
    }
}

@available(*, unavailable, message: "A Reactor belongs to its thread; use Reactor.Handle from other threads")
extension Reactor: Sendable {}

/// The thread the signal forwarder sends to (see ``Reactor/watchSignal(_:handler:)``).
private let forwardTarget = Atomic<pid_t>(0)

/// Runs in whichever thread received a watched signal without blocking it: forwards it to the
/// reactor thread, where it is blocked and so lands on the signalfd. Async-signal-safe: one
/// atomic load and raw `getpid`/`tgkill` system calls; errno is saved and restored.
private let signalForwarder: @convention(c) (CInt) -> Void = { signal in
    let saved = cloop_errno()
    let target = forwardTarget.load(ordering: .acquiring)
    if target != 0 { _ = cloop_tgkill(getpid(), target, signal) }
    cloop_set_errno(saved)
}
