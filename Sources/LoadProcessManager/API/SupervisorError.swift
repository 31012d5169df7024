import Glibc
import LPMReactor
import LPMWire

/// Why a request or an operation failed.
public struct SupervisorError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The kind of failure; a growable set.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let raw: UInt8
        /// The code's name, as written in Swift.
        public let description: String

        // Where the request stands in the pool.

        /// The request timed out (counted from dispatch).
        public static let timedOut = Code(1, "timedOut")
        /// The queue is at ``SupervisorConfiguration/maxQueueLength``.
        public static let queueFull = Code(4, "queueFull")
        /// The pool is shut down (soft or hard kill).
        public static let shutDown = Code(5, "shutDown")
        /// No worker is left (the restart budget is spent everywhere).
        public static let noWorkers = Code(6, "noWorkers")
        /// The payload is larger than ``SupervisorConfiguration/maxPayload``.
        public static let payloadTooLarge = Code(7, "payloadTooLarge")

        init(_ raw: UInt8, _ name: String) {
            self.raw = raw
            description = name
        }

        // What the worker running it did.

        /// The worker running the request died and no attempt was left.
        public static let workerExited = Code(2, "workerExited")
        /// The worker broke the protocol and was killed; no attempt was left.
        public static let protocolViolation = Code(3, "protocolViolation")
        /// The worker failed the request (`Worker.Request.fail(_:)` on the worker side).
        public static let workerError = Code(8, "workerError")
        /// The worker running the request stopped answering pings and was killed; no attempt was
        /// left (``SupervisorConfiguration/unresponsiveTimeout``).
        public static let workerUnresponsive = Code(14, "workerUnresponsive")
        /// The request was in flight on ``SupervisorConfiguration/poisonThreshold`` workers that
        /// died: it is not tried again.
        public static let poisonRequest = Code(15, "poisonRequest")

        public static func == (a: Code, b: Code) -> Bool { a.raw == b.raw }
        public func hash(into hasher: inout Hasher) { hasher.combine(raw) }

        // Operations on the pool and on streams.

        /// A worker could not be spawned.
        public static let spawnFailed = Code(9, "spawnFailed")
        /// A response stream broke: its worker died, or the worker failed to produce it.
        public static let streamFailed = Code(11, "streamFailed")
        /// An argument is out of range (a negative count...).
        public static let invalidArgument = Code(12, "invalidArgument")
        /// The caller cancelled: its task, a ``RequestHandle``, or a response stream.
        public static let cancelled = Code(13, "cancelled")
    }

    /// The fields, behind one reference: an error is a word wide, so a `Result` of a response
    /// or an error stays as small as the response (results are copied in bulk by `map`).
    private final class Storage: Sendable {
        let code: Code
        let message: String
        let requestID: RequestID?
        let workerPID: pid_t?
        let exitStatus: WorkerExitStatus?
        let attempts: Int
        let underlying: SystemCallFailure?

        init(_ code: Code, _ message: String, _ requestID: RequestID?, _ workerPID: pid_t?,
             _ exitStatus: WorkerExitStatus?, _ attempts: Int, _ underlying: SystemCallFailure?) {
            self.code = code
            self.message = message
            self.requestID = requestID
            self.workerPID = workerPID
            self.exitStatus = exitStatus
            self.attempts = attempts
            self.underlying = underlying
        }
    }

    private let storage: Storage

    /// The kind of failure.
    public var code: Code { storage.code }
    /// What happened, in words.
    public var message: String { storage.message }
    /// The request concerned, if any.
    public var requestID: RequestID? { storage.requestID }
    /// The worker concerned, if any.
    public var workerPID: pid_t? { storage.workerPID }
    /// How the worker ended, for `workerExited`.
    public var exitStatus: WorkerExitStatus? { storage.exitStatus }
    /// Attempts made.
    public var attempts: Int { storage.attempts }
    /// The system call that failed, with its errno, when one is the cause (a spawn that failed
    /// with `EMFILE`, say).
    public var underlying: SystemCallFailure? { storage.underlying }

    /// A system call that failed: its name and errno.
    public struct SystemCallFailure: Error, Sendable, Hashable, CustomStringConvertible {
        /// The call, as in `execve(/path/to/worker)` or `pidfd_open`.
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
        storage = Storage(code, message, requestID, workerPID, exitStatus, attempts, underlying)
    }

    public var description: String { "\(code): \(message)" }

    public static func == (a: SupervisorError, b: SupervisorError) -> Bool {
        a.storage === b.storage
            || (a.code == b.code && a.message == b.message && a.requestID == b.requestID && a.workerPID == b.workerPID
                && a.exitStatus == b.exitStatus && a.attempts == b.attempts && a.underlying == b.underlying)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(code)
        hasher.combine(message)
        hasher.combine(requestID)
        hasher.combine(workerPID)
        hasher.combine(exitStatus)
        hasher.combine(attempts)
        hasher.combine(underlying)
    }
}
