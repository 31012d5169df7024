import Glibc
import LPMReactor
import LPMWire

/// Starts worker processes (`Sys.spawnWorker`, over `posix_spawn(3)`): the channel end as
/// descriptor 3 (named in `LPM_CHANNEL_FD`), every other descriptor closed, an empty signal mask
/// and default signal dispositions, in a process group of its own: a Ctrl-C at the terminal
/// (SIGINT to the foreground group) reaches the supervisor, which decides, instead of killing
/// every worker behind its back.
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

    /// Spawns a worker; returns its pid and the supervisor's end of the channel (non-blocking).
    func spawn(cpu: Int?) throws(SyscallError) -> (pid: pid_t, channel: CInt) {
        // Non-blocking at birth (both ends; the worker's runtime wants its end non-blocking too).
        let pair = try Sys.socketpair(flags: CInt(SOCK_NONBLOCK.rawValue))
        let parentEnd = pair.first, childEnd = pair.second
        var args = argv
        var env = envp
        let pid: pid_t
        do {
            pid = try Sys.spawnWorker(path, argv: &args, envp: &env, channel: childEnd.rawValue)
        } catch {
            childEnd.close()
            parentEnd.close()
            throw error
        }
        childEnd.close()
        if let cpu {
            // Best effort, as documented: a CPU that does not exist leaves the worker unpinned.
            try? Sys.pin(pid, toCPU: cpu)
        }
        return (pid, parentEnd.release())
    }
}
