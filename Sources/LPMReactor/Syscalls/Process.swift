import CLoop

extension Sys {
    /// `posix_spawn(3)` of `path` with `channel` as descriptor 3 in the child and every other
    /// descriptor from 4 up closed (`posix_spawn_file_actions_addclosefrom_np`, glibc 2.34+), an
    /// empty signal mask and default dispositions for every signal (`POSIX_SPAWN_SETSIGMASK`,
    /// `POSIX_SPAWN_SETSIGDEF`: a supervisor blocks the signals it reads through a signalfd, and
    /// a child must not inherit that), in a process group of its own (`POSIX_SPAWN_SETPGROUP`).
    ///
    /// `argv` and `envp` are NULL-terminated arrays of C strings the caller owns.
    /// - Returns: the child's pid.
    /// - Throws: ``SyscallError`` with posix_spawn's error number (it returns it, not errno).
    package static func spawnWorker(
        _ path: String, argv: inout [UnsafeMutablePointer<CChar>?], envp: inout [UnsafeMutablePointer<CChar>?],
        channel: CInt
    ) throws(SyscallError) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // dup2 onto 3 clears CLOEXEC on the copy (glibc 2.29+ also when the numbers are equal).
        posix_spawn_file_actions_adddup2(&actions, channel, 3)
        posix_spawn_file_actions_addclosefrom_np(&actions, 4)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        var all = sigset_t()
        sigfillset(&all)
        sigdelset(&all, SIGKILL)
        sigdelset(&all, SIGSTOP)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setpgroup(&attr, 0)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, &attr, &argv, &envp)
        guard rc == 0 else { throw SyscallError("posix_spawn(\(path))", Errno(rawValue: rc)) }
        return pid
    }

    /// `sched_setaffinity(2)`: runs `pid` on `cpu` only.
    package static func pin(_ pid: pid_t, toCPU cpu: Int) throws(SyscallError) {
        var set = cpu_set_t()
        cloop_CPU_ZERO(&set)
        cloop_CPU_SET(CInt(cpu), &set)
        _ = try syscallValue("sched_setaffinity") { sched_setaffinity(pid, MemoryLayout<cpu_set_t>.size, &set) }
    }

    /// `kill(pid, SIGKILL)`, then `waitpid(pid)` until it is reaped (retrying `EINTR`): for a
    /// child that cannot be watched through a pidfd.
    package static func killAndReap(_ pid: pid_t) {
        _ = kill(pid, SIGKILL)
        var status: CInt = 0
        while waitpid(pid, &status, 0) == -1 && cloop_errno() == EINTR {}
    }

    /// `prctl(PR_SET_PDEATHSIG, signal)`: the kernel sends `signal` to this process when the
    /// thread that spawned it exits.
    package static func setParentDeathSignal(_ signal: CInt) throws(SyscallError) {
        _ = try syscallValue("prctl(PR_SET_PDEATHSIG)") { cloop_prctl1(PR_SET_PDEATHSIG, UInt(signal)) }
    }

    /// `write(2)` of `text` to standard error, once, ignoring failures: for last words before
    /// an exit, where nothing else can be done about a failed write.
    package static func writeToStandardError(_ text: String) {
        _ = text.withCString { CLoop.write(2, $0, strlen($0)) }
    }

    /// `mallinfo2(3)`: bytes the allocator holds (`arena + hblkhd`) and bytes in use
    /// (`uordblks + hblkhd`).
    package static func heapFigures() -> (total: Int, used: Int) {
        let m = mallinfo2()
        return (m.arena + m.hblkhd, m.uordblks + m.hblkhd)
    }
}
