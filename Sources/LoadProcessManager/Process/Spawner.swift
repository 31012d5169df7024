import Glibc
import LPMReactor
import LPMWire
import Synchronization

/// Starts worker processes (`Sys.spawnWorker`: `clone(CLONE_VM | CLONE_VFORK)` then `execve`):
/// the channel end as descriptor 3 (named in `LPM_CHANNEL_FD`), every other descriptor closed,
/// an empty signal mask and default signal dispositions, `PR_SET_PDEATHSIG` set to `SIGKILL`
/// (a worker in any language dies with the supervisor), in a process group of its own: a Ctrl-C
/// at the terminal (SIGINT to the foreground group) reaches the supervisor, which decides,
/// instead of killing every worker behind its back.
///
/// The pool spawns from its reactor thread, which lives as long as the pool: the death signal
/// follows the spawning *thread*, so spawning from a short-lived thread would kill the worker
/// when that thread ends.
struct Spawner {
    /// The per-worker variable set at each spawn; every other entry is built once.
    static let slotEnvironmentKey = "LPM_WORKER_SLOT"

    /// Distinguishes spawners: a reload with a new executable makes a new one, and a template
    /// started by an older one is replaced.
    let generation: Int
    private static let generations = Atomic<Int>(0)

    private let path: String
    private var argv: [UnsafeMutablePointer<CChar>?]
    private var envp: [UnsafeMutablePointer<CChar>?]

    init(_ configuration: SupervisorConfiguration) {
        generation = Spawner.generations.add(1, ordering: .relaxed).newValue
        let executable = configuration.executable
        path = executable.path
        argv = ([executable.path] + executable.arguments).map { strdup($0) } + [nil]
        var env: [String: String] = [:]
        let allowed: Set<String>? = switch executable.inheritEnvironment {
        case .all: nil
        case .none: []
        case .only(let names): Set(names)
        }
        var p = Glibc.environ
        while allowed != [], let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") {
                let name = String(s[..<eq])
                if allowed?.contains(name) ?? true { env[name] = String(s[s.index(after: eq)...]) }
            }
            p += 1
        }
        for (k, v) in executable.environment { env[k] = v }
        env[Wire.channelEnvironmentKey] = "3"
        env[Wire.maxPayloadEnvironmentKey] = String(configuration.maxPayload)
        env["LPM_PARENT_PID"] = String(getpid())
        // Set per spawn, never inherited (a supervisor that is itself a worker has one).
        env[Spawner.slotEnvironmentKey] = nil
        env[TemplateMessage.environmentKey] = nil
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
    /// - Parameters:
    ///   - cpu: the CPU to pin the worker to, best effort; `nil`: no pinning.
    ///   - slot: the worker's slot, set as `LPM_WORKER_SLOT`; `nil`: the variable is not set.
    func spawn(cpu: Int?, slot: Int? = nil) throws(SyscallError) -> (pid: pid_t, channel: CInt) {
        try spawn(cpu: cpu, entry: slot.map { "\(Spawner.slotEnvironmentKey)=\($0)" })
    }

    /// Spawns the executable as a worker template (`LPM_TEMPLATE=1`, no slot); returns its pid
    /// and the supervisor's end of its channel (non-blocking).
    func spawnTemplate() throws(SyscallError) -> (pid: pid_t, channel: CInt) {
        try spawn(cpu: nil, entry: "\(TemplateMessage.environmentKey)=1")
    }

    /// Spawns with one more environment entry (`NAME=value`), if given.
    private func spawn(cpu: Int?, entry: String?) throws(SyscallError) -> (pid: pid_t, channel: CInt) {
        // Non-blocking at birth (both ends; the worker's runtime wants its end non-blocking too).
        let pair = try Sys.socketpair(flags: CInt(SOCK_NONBLOCK.rawValue))
        let parentEnd = pair.first, childEnd = pair.second
        var args = argv
        var env = envp
        // The one per-spawn entry: one small string, inserted before the terminating nil.
        let slotEntry: UnsafeMutablePointer<CChar>? = entry.flatMap { strdup($0) }
        defer { Glibc.free(slotEntry) }
        if let slotEntry { env.insert(slotEntry, at: env.count - 1) }
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
