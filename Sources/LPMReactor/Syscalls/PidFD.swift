import CLoop
import Synchronization

extension Sys {
    /// Set once, for the life of the process, when `pidfd_open(2)` fails with `ENOSYS`: from then
    /// on ``pidfdOpen(_:)`` returns stand-ins. Relaxed ordering is enough: a thread that has not
    /// seen it yet gets `ENOSYS` once more and sets it again.
    static let pidfdRefusal = Atomic<Bool>(false)

    /// Whether `pidfd_open(2)` has been refused with `ENOSYS` in this process, so that every
    /// descriptor ``pidfdOpen(_:)`` returns is a stand-in, not a pidfd.
    package static var pidfdRefused: Bool { pidfdRefusal.load(ordering: .relaxed) }

    /// `waitid(P_PIDFD, pidfd, WEXITED | WNOHANG | WNOWAIT)`: throws (`ECHILD`) unless the
    /// process is a child of this one; reaps nothing.
    static func checkIsChild(pidfd: CInt) throws(SyscallError) {
        _ = try waitidPidfd(pidfd, options: WNOHANG | WNOWAIT)
    }

    /// `waitid(P_PIDFD, pidfd, WEXITED | WNOHANG)`: reaps the child and returns how it ended, or
    /// `nil` when it has not exited yet.
    static func reap(pidfd: CInt) throws(SyscallError) -> Reactor.ExitStatus? {
        var info = try waitidPidfd(pidfd, options: WNOHANG)
        return exitStatus(&info)
    }

    /// `waitid(P_PID, pid, WEXITED | WNOHANG | WNOWAIT)`: throws (`ECHILD`) unless `pid` is a
    /// child of this process; reaps nothing. For stand-ins (``pidfdRefused``).
    static func checkIsChild(pid: pid_t) throws(SyscallError) {
        _ = try waitidPid(pid, options: WNOHANG | WNOWAIT)
    }

    /// `waitid(P_PID, pid, WEXITED | WNOHANG)`: reaps child `pid` and returns how it ended, or
    /// `nil` when it has not exited yet. For stand-ins (``pidfdRefused``): the pid cannot name
    /// another process before it is reaped, here.
    static func reap(pid: pid_t) throws(SyscallError) -> Reactor.ExitStatus? {
        var info = try waitidPid(pid, options: WNOHANG)
        return exitStatus(&info)
    }

    /// `kill(2)`. For stand-ins (``pidfdRefused``), in place of `pidfd_send_signal(2)`: as long
    /// as the child is not reaped, its pid cannot be reused.
    static func sendSignal(_ pid: pid_t, _ signal: CInt) throws(SyscallError) {
        _ = try syscallValue("kill") { CLoop.kill(pid, signal) }
    }

    /// `waitid(P_PID, pid, &info, WEXITED | options)`, retrying `EINTR`.
    private static func waitidPid(_ pid: pid_t, options: CInt) throws(SyscallError) -> siginfo_t {
        var info = siginfo_t()
        _ = try syscallValue("waitid") { CLoop.waitid(P_PID, id_t(pid), &info, WEXITED | options) }
        return info
    }

    /// How a child ended, from the siginfo `waitid` filled; `nil` when it had not (`si_pid` 0).
    private static func exitStatus(_ info: inout siginfo_t) -> Reactor.ExitStatus? {
        if cloop_siginfo_si_pid(&info) == 0 { return nil }
        let code = cloop_siginfo_si_code(&info)
        let status = cloop_siginfo_si_status(&info)
        return code == CLD_EXITED ? .exited(status) : .signaled(status)
    }
}
