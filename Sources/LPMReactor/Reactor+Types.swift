import Glibc  // pid_t only: no C call is made here

extension Reactor {
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
}
