import CLoop
import Glibc
import LPMReactor
import LPMWire

/// Starts worker processes with `posix_spawn(3)`: the channel end as descriptor 3 (named in
/// `LPM_CHANNEL_FD`), every other descriptor closed, an empty signal mask and default signal
/// dispositions (the supervisor blocks signals it reads through a signalfd; a child must not
/// inherit that), in a process group of its own.
struct Spawner {
    private let path: String
    private var argv: [UnsafeMutablePointer<CChar>?]
    private var envp: [UnsafeMutablePointer<CChar>?]

    init(_ configuration: SupervisorConfiguration) {
        path = configuration.executable.path
        argv = ([configuration.executable.path] + configuration.executable.arguments).map { strdup($0) } + [nil]
        var env: [String: String] = [:]
        var p = Glibc.environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            p += 1
        }
        for (k, v) in configuration.executable.environment { env[k] = v }
        env[Wire.channelEnvironmentKey] = "3"
        env[Wire.maxPayloadEnvironmentKey] = String(configuration.maxPayload)
        env["LPM_PARENT_PID"] = String(getpid())
        if let poll = configuration.busyPoll {
            let (seconds, attoseconds) = poll.components
            env["LPM_BUSY_POLL_US"] = String(seconds * 1_000_000 + attoseconds / 1_000_000_000_000)
        }
        envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
    }

    func free() {
        argv.forEach { Glibc.free($0) }
        envp.forEach { Glibc.free($0) }
    }

    /// Kills `pid` (SIGKILL) and reaps it, waiting: for a child that could not be watched.
    func killAndReap(_ pid: pid_t) {
        _ = kill(pid, SIGKILL)
        var status: CInt = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
    }

    /// Spawns a worker; returns its pid and the supervisor's end of the channel (non-blocking).
    func spawn(cpu: Int?) throws(SyscallError) -> (pid: pid_t, channel: CInt) {
        // Non-blocking at birth (both ends; the worker's runtime wants its end non-blocking too).
        let pair = try Sys.socketpair(flags: CInt(SOCK_NONBLOCK.rawValue))
        let parentEnd = pair.first, childEnd = pair.second
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // dup2 onto 3 clears CLOEXEC on the copy (glibc 2.29+ also when the numbers are equal).
        posix_spawn_file_actions_adddup2(&actions, childEnd.rawValue, 3)
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
        // A process group of its own: a Ctrl-C at the terminal (SIGINT to the foreground group)
        // reaches the supervisor, which decides (soft kill by default in the demo), instead of
        // killing every worker behind its back.
        posix_spawnattr_setpgroup(&attr, 0)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))
        var pid: pid_t = 0
        var args = argv
        var env = envp
        let rc = posix_spawn(&pid, path, &actions, &attr, &args, &env)
        childEnd.close()
        guard rc == 0 else {
            parentEnd.close()
            throw SyscallError("posix_spawn(\(path))", Errno(rawValue: rc))
        }
        if let cpu {
            var set = cpu_set_t()
            cloop_CPU_ZERO(&set)
            cloop_CPU_SET(CInt(cpu), &set)
            _ = sched_setaffinity(pid, MemoryLayout<cpu_set_t>.size, &set)
        }
        return (pid, parentEnd.release())
    }
}
