import CLoop

extension Sys {
    /// `waitid(P_PIDFD, pidfd, WEXITED | WNOHANG | WNOWAIT)`: throws (`ECHILD`) unless the
    /// process is a child of this one; reaps nothing.
    static func checkIsChild(pidfd: CInt) throws(SyscallError) {
        _ = try waitidPidfd(pidfd, options: WNOHANG | WNOWAIT)
    }

    /// `waitid(P_PIDFD, pidfd, WEXITED | WNOHANG)`: reaps the child and returns how it ended, or
    /// `nil` when it has not exited yet.
    static func reap(pidfd: CInt) throws(SyscallError) -> Reactor.ExitStatus? {
        var info = try waitidPidfd(pidfd, options: WNOHANG)
        if cloop_siginfo_si_pid(&info) == 0 { return nil }
        let code = cloop_siginfo_si_code(&info)
        let status = cloop_siginfo_si_status(&info)
        return code == CLD_EXITED ? .exited(status) : .signaled(status)
    }
}
