import CLoop
import Synchronization

/// Thin wrappers over the signal calls the reactor uses: masks, dispositions, the signalfd, and
/// the forwarder that sends a signal caught on another thread on to the reactor thread.
enum SignalCalls {
    /// A set of signal numbers, as `sigset_t` (`sigemptyset(3)` + `sigaddset(3)`).
    static func set(_ signals: some Sequence<CInt>) -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals { sigaddset(&set, s) }
        return set
    }

    /// `pthread_sigmask(SIG_BLOCK)` for `signals` in the calling thread. Cannot fail with
    /// valid arguments (EINVAL only for a bad `how`).
    static func block(_ signals: some Sequence<CInt>) {
        var s = set(signals)
        pthread_sigmask(SIG_BLOCK, &s, nil)
    }

    /// `pthread_sigmask(SIG_UNBLOCK)` for `signals` in the calling thread.
    static func unblock(_ signals: some Sequence<CInt>) {
        var s = set(signals)
        pthread_sigmask(SIG_UNBLOCK, &s, nil)
    }

    /// Whether `signal` is a number a handler can be installed for (not SIGKILL or SIGSTOP).
    static func isCatchable(_ signal: CInt) -> Bool {
        signal > 0 && signal < 65 && signal != SIGKILL && signal != SIGSTOP
    }

    /// Installs the forwarder for `signal` (`sigaction(2)`, `SA_RESTART`) and returns the
    /// previous disposition. Cannot fail for a catchable signal (EINVAL is the only error).
    static func installForwarder(_ signal: CInt) -> sigaction {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = signalForwarder
        action.sa_flags = SA_RESTART
        sigemptyset(&action.sa_mask)
        var previous = sigaction()
        sigaction(signal, &action, &previous)
        return previous
    }

    /// Restores a disposition saved by ``installForwarder(_:)`` (`sigaction(2)`).
    static func restore(_ signal: CInt, _ previous: sigaction) {
        var previous = previous
        sigaction(signal, &previous, nil)
    }

    /// `signalfd(2)` with `SFD_CLOEXEC | SFD_NONBLOCK`: a new descriptor when `fd` is -1, else
    /// `fd` with its mask replaced by `signals`.
    static func signalfd(_ fd: CInt, _ signals: some Sequence<CInt>) throws(SyscallError) -> CInt {
        var s = set(signals)
        return try syscallValue("signalfd") { CLoop.signalfd(fd, &s, CInt(SFD_CLOEXEC) | CInt(SFD_NONBLOCK)) }
    }

    /// Reads one `signalfd_siginfo` from a non-blocking signalfd (`read(2)`); `nil` when none
    /// is pending (EAGAIN) or the read failed (the signalfd is then reported by the next wait).
    static func readSignal(_ fd: CInt) -> CInt? {
        var info = signalfd_siginfo()
        let size = MemoryLayout<signalfd_siginfo>.size
        let n = withUnsafeMutableBytes(of: &info) { CLoop.read(fd, $0.baseAddress, size) }
        return n == size ? CInt(info.ssi_signo) : nil
    }

    /// The kernel thread id of the calling thread (`gettid(2)`).
    static func currentThreadID() -> pid_t { cloop_gettid() }

    /// Makes the forwarder send to thread `tid` (0: nowhere).
    static func forward(to tid: pid_t) {
        forwardTarget.store(tid, ordering: .releasing)
    }

    /// Stops forwarding to `tid` if it is still the target.
    static func stopForwarding(to tid: pid_t) {
        _ = forwardTarget.compareExchange(expected: tid, desired: 0, ordering: .acquiringAndReleasing)
    }

    /// The usual name of a signal ("SIGINT"), if it has one.
    static func name(_ signal: CInt) -> String? {
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
}

/// A saved signal disposition (`struct sigaction`), opaque above this layer.
typealias SignalDisposition = sigaction

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
