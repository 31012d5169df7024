import CLoop

/// An error number reported by the kernel or the C library.
///
/// The Swift name of each well-known value reads as a word; the C spelling is in its doc comment.
package struct Errno: RawRepresentable, Error, Hashable, Sendable, CustomStringConvertible {
    /// The raw C `errno` value.
    package var rawValue: CInt

    /// Creates an error number from its raw C value.
    package init(rawValue: CInt) { self.rawValue = rawValue }

    /// `EINTR`: the call was interrupted by a signal.
    package static var interrupted: Errno { Errno(rawValue: EINTR) }
    /// `EAGAIN` / `EWOULDBLOCK`: the operation would block.
    package static var wouldBlock: Errno { Errno(rawValue: EAGAIN) }
    /// `EBADF`: not an open file descriptor.
    package static var badFileDescriptor: Errno { Errno(rawValue: EBADF) }
    /// `EINVAL`: an argument is invalid.
    package static var invalidArgument: Errno { Errno(rawValue: EINVAL) }
    /// `ECHILD`: no such child process of the caller.
    package static var noChildProcess: Errno { Errno(rawValue: ECHILD) }
    /// `ESRCH`: no such process.
    package static var noSuchProcess: Errno { Errno(rawValue: ESRCH) }
    /// `ENOENT`: no such file or directory (or registration).
    package static var noSuchFileOrDirectory: Errno { Errno(rawValue: ENOENT) }
    /// `EEXIST`: already exists (or already registered).
    package static var fileExists: Errno { Errno(rawValue: EEXIST) }
    /// `EPERM`: operation not permitted.
    package static var notPermitted: Errno { Errno(rawValue: EPERM) }
    /// `ENOSYS`: the kernel does not implement the call.
    package static var noFunction: Errno { Errno(rawValue: ENOSYS) }
    /// `EPIPE`: the peer closed its end.
    package static var brokenPipe: Errno { Errno(rawValue: EPIPE) }
    /// `ECONNRESET`: the peer reset the connection.
    package static var connectionReset: Errno { Errno(rawValue: ECONNRESET) }
    /// `ECANCELED`: the operation was cancelled.
    package static var canceled: Errno { Errno(rawValue: ECANCELED) }
    /// `ETIME`: a timer expired (io_uring timeouts).
    package static var timerExpired: Errno { Errno(rawValue: ETIME) }

    /// The text `strerror(3)` gives for this value.
    package var description: String {
        guard let text = strerror(rawValue) else { return "errno \(rawValue)" }
        return String(cString: text)
    }

    /// The calling thread's current `errno`.
    @inline(never)
    package static var current: Errno { Errno(rawValue: cloop_errno()) }
}

/// A failed system call: which call, and the error number it reported.
///
/// `description` reads `"<call>: <strerror> (errno: N)"`.
///
/// Public because public API of this package carries it (``ReactorError/underlying``, and
/// LPMWire's channel and stream errors). The error number is public only as a plain `CInt`,
/// ``errnoCode``: the `Errno` type is `package`, so that importing LPMReactor beside
/// swift-system (`SystemPackage.Errno`) or Foundation never makes a name ambiguous.
public struct SyscallError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The C function that failed, e.g. `"epoll_ctl"`.
    public var call: String
    /// The error number it reported.
    package var errno: Errno

    /// The C `errno` value it reported (`EPERM`, `ECHILD`...).
    public var errnoCode: CInt { errno.rawValue }

    /// Creates an error for a failed call.
    package init(_ call: String, _ errno: Errno) {
        self.call = call
        self.errno = errno
    }

    public var description: String { "\(call): \(errno) (errno: \(errno.rawValue))" }
}

/// The result of a non-blocking operation: done, or it would have blocked (`EAGAIN`).
package enum IOResult<Value> {
    /// The call completed with this value.
    case processed(Value)
    /// The call would have blocked (`EAGAIN`/`EWOULDBLOCK`); try again once ready.
    case wouldBlock
}

extension IOResult: Sendable where Value: Sendable {}

/// Runs a C call that returns -1 and sets errno on failure: retries `EINTR`, reports `EAGAIN`
/// as ``IOResult/wouldBlock``, throws everything else with the call's name.
///
/// errno is read at once, in a function that is never inlined, so no retain or release can run
/// between the failing call and the read.
@inline(never)
package func syscall<T: FixedWidthInteger>(
    _ call: StaticString,
    _ body: () -> T
) throws(SyscallError) -> IOResult<T> {
    while true {
        let result = body()
        if result != -1 { return .processed(result) }
        let code = cloop_errno()
        if code == EINTR { continue }
        if code == EAGAIN || code == EWOULDBLOCK { return .wouldBlock }
        precondition(code != EFAULT, "\(call): EFAULT is a bug in this library")
        throw SyscallError("\(call)", Errno(rawValue: code))
    }
}

/// Like ``syscall(_:_:)`` for calls that cannot report `EAGAIN` (or where it is an error).
@inline(never)
package func syscallValue<T: FixedWidthInteger>(
    _ call: StaticString,
    _ body: () -> T
) throws(SyscallError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = cloop_errno()
        if code == EINTR { continue }
        precondition(code != EFAULT, "\(call): EFAULT is a bug in this library")
        throw SyscallError("\(call)", Errno(rawValue: code))
    }
}
