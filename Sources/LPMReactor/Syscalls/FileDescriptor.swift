import CLoop
import Synchronization

/// An owned file descriptor: exactly one owner, closed exactly once.
///
/// Created CLOEXEC (and NONBLOCK where it matters) by the calls that make it. Close it with
/// ``close()``; a descriptor dropped while open is closed by `deinit` and counted in
/// ``FileDescriptor/leakCount`` so that tests can prove none leaked.
package struct FileDescriptor: ~Copyable {
    /// The descriptor number. Valid until ``close()``; do not close it yourself.
    package let rawValue: CInt

    /// Takes ownership of `rawValue`.
    package init(owning rawValue: CInt) {
        precondition(rawValue >= 0, "FileDescriptor(owning:) needs a descriptor, got \(rawValue)")
        self.rawValue = rawValue
    }

    /// Closes the descriptor. Never retried on `EINTR` (on Linux the descriptor is released
    /// even when close reports EINTR). The corresponding C function is `close(2)`.
    package consuming func close() {
        let fd = rawValue
        discard self
        FileDescriptor.closeRaw(fd)
    }

    /// Gives up ownership without closing; the caller now owns the number.
    package consuming func release() -> CInt {
        let fd = rawValue
        discard self
        return fd
    }

    deinit {
        FileDescriptor.leaks.add(1, ordering: .relaxed)
        FileDescriptor.closeRaw(rawValue)
    }

    /// Closes a raw descriptor. `EBADF` is a bug (a double close), anything else is ignored:
    /// the descriptor is gone either way.
    package static func closeRaw(_ fd: CInt) {
        if CLoop.close(fd) == -1 {
            let code = cloop_errno()
            precondition(code != EBADF, "close(\(fd)): EBADF, a double close is a bug")
        }
    }

    private static let leaks = Atomic<Int>(0)

    /// How many owned descriptors were dropped without ``close()`` in this process.
    package static var leakCount: Int { leaks.load(ordering: .relaxed) }
}
