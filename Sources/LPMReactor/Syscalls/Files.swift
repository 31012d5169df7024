import CLoop

extension Sys {
    /// `open(2)` with `O_CLOEXEC` added to `flags`, retrying `EINTR`.
    package static func open(_ path: String, flags: CInt) throws(SyscallError) -> FileDescriptor {
        let fd = try syscallValue("open") { path.withCString { cloop_open($0, flags | O_CLOEXEC) } }
        return FileDescriptor(owning: fd)
    }

    /// `pread(2)` at `offset`, retrying `EINTR`; returns the bytes read (0 at end of file).
    package static func pread(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(SyscallError) -> Int {
        try syscallValue("pread") { CLoop.pread(fd, buffer.baseAddress, buffer.count, off_t(offset)) }
    }

    /// `sysconf(_SC_PAGESIZE)`.
    package static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
}
