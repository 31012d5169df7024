import CLoop

extension Sys {
    /// Starts `path` as a worker (`cloop_spawn_worker` in CLoop: `clone(2)` with `CLONE_VM |
    /// CLONE_VFORK`, then `execve(2)`), a `posix_spawn(3)` that also ties the child's life to
    /// ours. In the child, before `execve`: default dispositions for every signal and an empty
    /// signal mask (a supervisor blocks the signals it reads through a signalfd, and a child must
    /// not inherit that); `prctl(PR_SET_PDEATHSIG, SIGKILL)`, so the kernel kills the child when
    /// the spawning thread exits, whatever the child runs (a worker in another language, or one
    /// that never speaks the protocol); a process group of its own (`setpgid(0, 0)`); `channel`
    /// as descriptor 3 and every descriptor from 4 up closed (`close_range(2)`, kernel 5.9+).
    ///
    /// `argv` and `envp` are NULL-terminated arrays of C strings the caller owns.
    /// - Important: `PR_SET_PDEATHSIG` fires when the *thread* that spawned the child exits, not
    ///   the process: call this from a thread that lives as long as the child should (the
    ///   supervisor spawns from its reactor thread, which lives as long as the pool).
    /// - Returns: the child's pid.
    /// - Throws: ``SyscallError`` naming the step that failed (`execve` for a missing
    ///   executable, `ENOENT`) with its error number. A child that failed is already reaped.
    package static func spawnWorker(
        _ path: String, argv: inout [UnsafeMutablePointer<CChar>?], envp: inout [UnsafeMutablePointer<CChar>?],
        channel: CInt
    ) throws(SyscallError) -> pid_t {
        precondition(argv.last == .some(nil) && envp.last == .some(nil), "argv and envp must end with nil")
        var failed: UnsafePointer<CChar>? = nil
        let pid = cloop_spawn_worker(path, argv, envp, channel, &failed)
        guard pid > 0 else {
            let step = failed.map { String(cString: $0) } ?? "spawn"
            throw SyscallError("\(step)(\(path))", Errno(rawValue: -pid))
        }
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
