import Glibc
import LPMReactor
import LPMWire

/// Why a request or an operation failed.
public struct SupervisorError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The kind of failure; a growable set.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let raw: UInt8
        /// The request timed out (counted from dispatch).
        public static let timedOut = Code(raw: 1)
        /// The worker running the request died and no attempt was left.
        public static let workerExited = Code(raw: 2)
        /// The worker broke the protocol and was killed; no attempt was left.
        public static let protocolViolation = Code(raw: 3)
        /// The queue is at ``SupervisorConfiguration/maxQueueLength``.
        public static let queueFull = Code(raw: 4)
        /// The pool is shut down (soft or hard kill).
        public static let shutDown = Code(raw: 5)
        /// No worker is left (the restart budget is spent everywhere).
        public static let noWorkers = Code(raw: 6)
        /// The payload is larger than ``SupervisorConfiguration/maxPayload``.
        public static let payloadTooLarge = Code(raw: 7)
        /// The worker failed the request (`Request.fail(_:)` on the worker side).
        public static let workerError = Code(raw: 8)
        /// A worker could not be spawned.
        public static let spawnFailed = Code(raw: 9)
        /// A response stream broke: its worker died, or the worker failed to produce it.
        public static let streamFailed = Code(raw: 11)
        /// An argument is out of range (a negative count...).
        public static let invalidArgument = Code(raw: 12)
        /// The caller cancelled (a response stream was cancelled).
        public static let cancelled = Code(raw: 13)

        public var description: String {
            ["", "timedOut", "workerExited", "protocolViolation", "queueFull", "shutDown", "noWorkers",
             "payloadTooLarge", "workerError", "spawnFailed", "", "streamFailed", "invalidArgument",
             "cancelled"][Int(raw)]
        }
    }

    /// The kind of failure.
    public let code: Code
    /// What happened, in words.
    public let message: String
    /// The request concerned, if any.
    public let requestID: RequestID?
    /// The worker concerned, if any.
    public let workerPID: pid_t?
    /// How the worker ended, for `workerExited`.
    public let exitStatus: WorkerExitStatus?
    /// Attempts made.
    public let attempts: Int
    /// The system call that failed, with its errno, when one is the cause (a spawn that failed
    /// with `EMFILE`, say).
    public let underlying: SystemCallFailure?

    /// A system call that failed: its name and errno.
    public struct SystemCallFailure: Error, Sendable, Hashable, CustomStringConvertible {
        /// The call, as in `posix_spawn(/path/to/worker)` or `pidfd_open`.
        public let call: String
        /// The `errno` value (`EMFILE` is 24, say).
        public let errno: CInt
        /// The error text (`strerror`), then the number.
        public let description: String

        init(_ e: SyscallError) {
            call = e.call
            errno = e.errno.rawValue
            description = e.description
        }
    }

    init(_ code: Code, _ message: String, requestID: RequestID? = nil, workerPID: pid_t? = nil,
         exitStatus: WorkerExitStatus? = nil, attempts: Int = 0, underlying: SystemCallFailure? = nil) {
        self.code = code
        self.message = message
        self.requestID = requestID
        self.workerPID = workerPID
        self.exitStatus = exitStatus
        self.attempts = attempts
        self.underlying = underlying
    }

    public var description: String { "\(code): \(message)" }
}
