import CLoop

/// The control-message buffer of a channel's `recvmsg(2)`: made once per decoder, so receiving
/// allocates nothing, and large enough for a few descriptors. A conforming peer sends one
/// descriptor per `sendmsg`, and the kernel ends a stream `recvmsg` after the first message that
/// carries descriptors (`unix_stream_read_generic`), so one call sees at most one; more than fit
/// here are cut off by the kernel (`MSG_CTRUNC`), which the channel treats as a violation.
package struct ControlBuffer: ~Copyable {
    /// How many descriptors one receive can take before the kernel truncates.
    package static let descriptorRoom = 8
    package let base: UnsafeMutableRawPointer
    package let count: Int

    package init() {
        count = cloop_CMSG_SPACE(Self.descriptorRoom * MemoryLayout<CInt>.size)
        base = .allocate(byteCount: count, alignment: 8)
    }

    deinit { base.deallocate() }

    /// `recvmsg(2)` into `buffer` with `MSG_CMSG_CLOEXEC`; every descriptor passed with
    /// SCM_RIGHTS is appended to `descriptors`. Retries `EINTR`.
    /// - Returns: the byte count (0 at end of file) and whether the kernel cut the control data
    ///   short (`MSG_CTRUNC`: descriptors were lost, closed by the kernel).
    package func receive(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer,
                 descriptors: inout [CInt]) throws(SyscallError) -> IOResult<(count: Int, truncated: Bool)> {
        var iov = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        var msg = msghdr()
        msg.msg_control = base
        msg.msg_controllen = count
        let result = try withUnsafeMutablePointer(to: &iov) { (iovp) throws(SyscallError) -> IOResult<Int> in
            msg.msg_iov = iovp
            msg.msg_iovlen = 1
            return try syscall("recvmsg") { CLoop.recvmsg(fd, &msg, CInt(MSG_CMSG_CLOEXEC)) }
        }
        guard case .processed(let n) = result else { return .wouldBlock }
        if msg.msg_controllen > 0 { Self.collect(&msg, into: &descriptors) }
        return .processed((n, msg.msg_flags & CInt(MSG_CTRUNC) != 0))
    }

    /// Appends the descriptors of every SCM_RIGHTS message in `msg`'s control data.
    private static func collect(_ msg: inout msghdr, into descriptors: inout [CInt]) {
        let width = MemoryLayout<CInt>.size
        var next = cloop_CMSG_FIRSTHDR(&msg)
        while let header = next {
            if header.pointee.cmsg_level == SOL_SOCKET, header.pointee.cmsg_type == CInt(SCM_RIGHTS) {
                let data = UnsafeRawPointer(cloop_CMSG_DATA(header))
                for k in 0..<(Int(header.pointee.cmsg_len) - Int(cloop_CMSG_LEN(0))) / width {
                    descriptors.append(data.loadUnaligned(fromByteOffset: k * width, as: CInt.self))
                }
            }
            next = cloop_CMSG_NXTHDR(&msg, header)
        }
    }
}
