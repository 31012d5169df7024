import CLoop

/// Thin wrappers over the C calls the reactor and the process manager use.
///
/// Each names its C function, retries `EINTR` (never for `close`), returns `EAGAIN` as a value
/// where the call can block, and throws ``SyscallError`` for anything else.
package enum Sys {
    /// `read(2)`, retrying `EINTR`.
    @inlinable
    package static func read(_ fd: CInt, _ buffer: UnsafeMutableRawBufferPointer) throws(SyscallError) -> IOResult<Int> {
        try syscall("read") { CLoop.read(fd, buffer.baseAddress, buffer.count) }
    }

    /// `write(2)`, retrying `EINTR`.
    @inlinable
    package static func write(_ fd: CInt, _ buffer: UnsafeRawBufferPointer) throws(SyscallError) -> IOResult<Int> {
        try syscall("write") { CLoop.write(fd, buffer.baseAddress, buffer.count) }
    }

    /// `send(2)` with `MSG_NOSIGNAL` (a closed peer gives `EPIPE`, never `SIGPIPE`), retrying `EINTR`.
    @inlinable
    package static func send(_ fd: CInt, _ buffer: UnsafeRawBufferPointer) throws(SyscallError) -> IOResult<Int> {
        try syscall("send") { CLoop.send(fd, buffer.baseAddress, buffer.count, CInt(MSG_NOSIGNAL)) }
    }

    /// `sendmsg(2)` of `buffer` with one descriptor attached (SCM_RIGHTS), `MSG_NOSIGNAL`,
    /// retrying `EINTR`. When any byte is sent, the descriptor went with it.
    package static func sendmsg(_ fd: CInt, _ buffer: UnsafeRawBufferPointer, passing descriptor: CInt) throws(SyscallError) -> IOResult<Int> {
        let space = cloop_CMSG_SPACE(MemoryLayout<CInt>.size)
        let control = UnsafeMutableRawPointer.allocate(byteCount: space, alignment: 8)
        defer { control.deallocate() }
        control.initializeMemory(as: UInt8.self, repeating: 0, count: space)
        var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: buffer.baseAddress), iov_len: buffer.count)
        return try withUnsafeMutablePointer(to: &iov) { (iovp) throws(SyscallError) -> IOResult<Int> in
            var msg = msghdr()
            msg.msg_iov = iovp
            msg.msg_iovlen = 1
            msg.msg_control = control
            msg.msg_controllen = space
            let cmsg = cloop_CMSG_FIRSTHDR(&msg)!
            cmsg.pointee.cmsg_level = SOL_SOCKET
            cmsg.pointee.cmsg_type = CInt(SCM_RIGHTS)
            cmsg.pointee.cmsg_len = cloop_CMSG_LEN(MemoryLayout<CInt>.size)
            UnsafeMutableRawPointer(cloop_CMSG_DATA(cmsg)).storeBytes(of: descriptor, as: CInt.self)
            return try syscall("sendmsg") { CLoop.sendmsg(fd, &msg, CInt(MSG_NOSIGNAL)) }
        }
    }

    /// `fcntl(fd, F_DUPFD_CLOEXEC, 3)`: a CLOEXEC copy of a descriptor.
    package static func duplicate(_ fd: CInt) throws(SyscallError) -> FileDescriptor {
        FileDescriptor(owning: try syscallValue("fcntl") { cloop_fcntl_int(fd, F_DUPFD_CLOEXEC, 3) })
    }

    /// `pipe2(2)` with `O_CLOEXEC` plus `flags`.
    package static func pipe(flags: CInt = 0) throws(SyscallError) -> DescriptorPair {
        var fds: (CInt, CInt) = (-1, -1)
        _ = try withUnsafeMutablePointer(to: &fds) { (p) throws(SyscallError) in
            try p.withMemoryRebound(to: CInt.self, capacity: 2) { (q) throws(SyscallError) in
                try syscallValue("pipe2") { pipe2(q, O_CLOEXEC | flags) }
            }
        }
        return DescriptorPair(first: FileDescriptor(owning: fds.0), second: FileDescriptor(owning: fds.1))
    }

    /// `socketpair(2)`: AF_UNIX, SOCK_STREAM, CLOEXEC at birth, plus `flags` (e.g. SOCK_NONBLOCK).
    package static func socketpair(type: CInt = CInt(SOCK_STREAM.rawValue), flags: CInt = 0) throws(SyscallError) -> DescriptorPair {
        var fds: (CInt, CInt) = (-1, -1)
        _ = try withUnsafeMutablePointer(to: &fds) { (p) throws(SyscallError) in
            try p.withMemoryRebound(to: CInt.self, capacity: 2) { (q) throws(SyscallError) in
                try syscallValue("socketpair") {
                    CLoop.socketpair(AF_UNIX, type | CInt(SOCK_CLOEXEC.rawValue) | flags, 0, q)
                }
            }
        }
        return DescriptorPair(first: FileDescriptor(owning: fds.0), second: FileDescriptor(owning: fds.1))
    }

    /// `eventfd(2)` with `EFD_CLOEXEC | EFD_NONBLOCK`.
    package static func eventfd() throws(SyscallError) -> FileDescriptor {
        let fd = try syscallValue("eventfd") { CLoop.eventfd(0, CInt(EFD_CLOEXEC) | CInt(EFD_NONBLOCK)) }
        return FileDescriptor(owning: fd)
    }

    /// `fcntl(fd, F_GETFD)`: does the descriptor exist?
    package static func isValid(_ fd: CInt) -> Bool {
        fd >= 0 && cloop_fcntl_int(fd, F_GETFD, 0) != -1
    }

    /// `fcntl(fd, F_SETFL, flags | O_NONBLOCK)`.
    package static func setNonBlocking(_ fd: CInt) throws(SyscallError) {
        let flags = try syscallValue("fcntl") { cloop_fcntl_int(fd, F_GETFL, 0) }
        _ = try syscallValue("fcntl") { cloop_fcntl_int(fd, F_SETFL, flags | O_NONBLOCK) }
    }

    /// `fcntl(fd, F_SETFD, flags | FD_CLOEXEC)`: for a descriptor inherited across `execve`,
    /// which could not be created CLOEXEC (a worker's channel, descriptor 3).
    package static func setCloseOnExec(_ fd: CInt) throws(SyscallError) {
        let flags = try syscallValue("fcntl") { cloop_fcntl_int(fd, F_GETFD, 0) }
        _ = try syscallValue("fcntl") { cloop_fcntl_int(fd, F_SETFD, flags | FD_CLOEXEC) }
    }

    /// `pidfd_open(2)` with `PIDFD_NONBLOCK` (kernel 5.10+); pidfds are always CLOEXEC.
    ///
    /// Where `pidfd_open` fails with `ENOSYS` (a kernel before 5.3, or valgrind, which answers
    /// the system calls it does not know that way), the process switches once, for good, to
    /// stand-ins (``pidfdRefused``): `kill(pid, 0)` checks that the process exists (`ESRCH`
    /// otherwise) and the descriptor returned is an eventfd that never becomes readable. The
    /// reactor then learns of the exit through `SIGCHLD` (see `Reactor.watchPidfd`).
    package static func pidfdOpen(_ pid: pid_t) throws(SyscallError) -> FileDescriptor {
        if !pidfdRefused {
            do {
                return FileDescriptor(owning: try syscallValue("pidfd_open") { cloop_pidfd_open(pid, UInt32(PIDFD_NONBLOCK)) })
            } catch where error.errno == .noFunction {
                pidfdRefusal.store(true, ordering: .relaxed)
            }
        }
        _ = try syscallValue("kill") { CLoop.kill(pid, 0) }
        return try eventfd()
    }

    /// `pidfd_send_signal(2)`.
    package static func pidfdSendSignal(_ pidfd: CInt, _ signal: CInt) throws(SyscallError) {
        _ = try syscallValue("pidfd_send_signal") { cloop_pidfd_send_signal(pidfd, signal) }
    }

    /// `waitid(P_PIDFD, pidfd, &info, WEXITED | extra)`. Returns the siginfo, whose `si_pid` is 0
    /// when the child has not exited yet (with `WNOHANG`).
    package static func waitidPidfd(_ pidfd: CInt, options: CInt) throws(SyscallError) -> siginfo_t {
        var info = siginfo_t()
        _ = try syscallValue("waitid") { CLoop.waitid(idtype_t(rawValue: UInt32(P_PIDFD)), id_t(pidfd), &info, WEXITED | options) }
        return info
    }

    /// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds.
    @inlinable
    package static func monotonicNanoseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) &* 1_000_000_000 &+ Int64(ts.tv_nsec)
    }
}

/// Two owned descriptors made together (a pipe's read and write ends, a socketpair's ends).
@frozen
package struct DescriptorPair: ~Copyable {
    /// The read end of a pipe, or a socketpair's first end.
    package var first: FileDescriptor
    /// The write end of a pipe, or a socketpair's second end.
    package var second: FileDescriptor
}
