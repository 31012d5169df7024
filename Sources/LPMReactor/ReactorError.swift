/// The error type of the reactor API.
public struct ReactorError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong, as a growable set of codes.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let raw: UInt8
        /// The descriptor is closed or invalid.
        public static let invalidDescriptor = Code(raw: 1)
        /// The pid is not a child of this process.
        public static let notAChild = Code(raw: 2)
        /// An argument is out of range (empty interest, negative delay...).
        public static let invalidArgument = Code(raw: 3)
        /// The registration, timer or watch is stale or unknown.
        public static let unknownRegistration = Code(raw: 4)
        /// A system call failed; see ``ReactorError/underlying``.
        public static let systemCall = Code(raw: 5)
        /// The reactor is closed.
        public static let closed = Code(raw: 6)
        /// The requested backend is refused by the kernel or by policy.
        public static let backendUnavailable = Code(raw: 7)
        /// The signal is already watched.
        public static let alreadyWatched = Code(raw: 8)

        public var description: String {
            ["", "invalidDescriptor", "notAChild", "invalidArgument", "unknownRegistration", "systemCall",
             "closed", "backendUnavailable", "alreadyWatched"][Int(raw)]
        }
    }

    /// The kind of failure.
    public var code: Code
    /// What was attempted, in words.
    public var message: String
    /// The failed system call, if one failed.
    public var underlying: SyscallError?

    /// The C `errno` value of the failed system call (`EPERM`, `ECHILD`...), if one failed.
    /// A plain `CInt`, so that no error-number type of this package meets swift-system's `Errno`
    /// in a file that imports both.
    public var errno: CInt? { underlying?.errnoCode }

    init(_ code: Code, _ message: String, underlying: SyscallError? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String {
        underlying.map { "\(message): \($0)" } ?? message
    }
}
