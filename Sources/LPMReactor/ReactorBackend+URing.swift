import CLoop

/// The io_uring backend (liburing): readiness through poll requests, submitted in batches.
///
/// - Level-triggered registrations are one-shot `IORING_OP_POLL_ADD` requests, re-armed before
///   the next wait while the registration lasts (a one-shot poll completes at once if the
///   descriptor is still ready, which gives level semantics).
/// - Edge-triggered registrations are multishot polls (`IORING_POLL_ADD_MULTI`, kernel 5.13+).
/// - Changes only queue SQEs; everything is submitted with the wait, in one `io_uring_enter`
///   (`io_uring_submit_and_wait_timeout`, which uses `IORING_ENTER_EXT_ARG`, kernel 5.11+).
final class URingBackend: ReactorBackend {
    let kind = Reactor.Backend.uring
    private let ring: UnsafeMutablePointer<io_uring>
    private struct Entry {
        var fd: CInt
        var mask: UInt32
        var edge: Bool
        var armed: Bool
    }
    private var entries: [UInt64: Entry] = [:]
    private var rearm: [UInt64] = []
    private var cqes: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>
    private let cqeBatch: UInt32 = 256
    /// user_data of poll-remove requests, whose completions are ignored.
    private static let removeTag = UInt64.max

    init(entries count: UInt32 = 256) throws(SyscallError) {
        // A process may have io_uring disabled by sysctl (kernel.io_uring_disabled, 6.6+),
        // by seccomp (EPERM/ENOSYS), or by an old kernel: the reactor then uses epoll.
        ring = .allocate(capacity: 1)
        ring.initialize(to: io_uring())
        let rc = cloop_io_uring_queue_init(count, ring, 0)
        if rc < 0 {
            ring.deallocate()
            throw SyscallError("io_uring_queue_init", Errno(rawValue: -rc))
        }
        cqes = .allocate(capacity: Int(cqeBatch))
    }

    private func sqe() -> UnsafeMutablePointer<io_uring_sqe> {
        while true {
            if let s = io_uring_get_sqe(ring) { return s }
            // The submission queue is full: hand it to the kernel and take a fresh one.
            _ = io_uring_submit(ring)
        }
    }

    private static func mask(_ interest: Reactor.Interest) -> UInt32 {
        var m = UInt32(POLLRDHUP)
        if interest.contains(.readable) { m |= UInt32(POLLIN) }
        if interest.contains(.writable) { m |= UInt32(POLLOUT) }
        return m
    }

    private func arm(_ token: UInt64, _ e: Entry) {
        let s = sqe()
        if e.edge {
            io_uring_prep_poll_multishot(s, e.fd, e.mask)
        } else {
            io_uring_prep_poll_add(s, e.fd, e.mask)
        }
        io_uring_sqe_set_data64(s, token)
        entries[token]?.armed = true
    }

    private func disarm(_ token: UInt64) {
        guard let e = entries.removeValue(forKey: token), e.armed else { return }
        let s = sqe()
        io_uring_prep_poll_remove(s, token)
        io_uring_sqe_set_data64(s, URingBackend.removeTag)
    }

    func register(fd: CInt, token: UInt64, interest: Reactor.Interest, edge: Bool) throws(SyscallError) {
        let e = Entry(fd: fd, mask: URingBackend.mask(interest), edge: edge, armed: false)
        entries[token] = e
        arm(token, e)
    }

    func modify(fd: CInt, oldToken: UInt64, newToken: UInt64, interest: Reactor.Interest, edge: Bool) throws(SyscallError) {
        disarm(oldToken)
        try register(fd: fd, token: newToken, interest: interest, edge: edge)
    }

    func deregister(fd: CInt, token: UInt64) throws(SyscallError) {
        disarm(token)
    }

    func wait(timeoutNanoseconds: Int64?, into events: inout [BackendEvent]) throws(SyscallError) {
        if !rearm.isEmpty {
            for token in rearm {
                if let e = entries[token], !e.armed { arm(token, e) }
            }
            rearm.removeAll(keepingCapacity: true)
        }
        var rc: CInt
        var cqe: UnsafeMutablePointer<io_uring_cqe>?
        if let t = timeoutNanoseconds {
            if t == 0 {
                rc = io_uring_submit(ring)
            } else {
                var ts = __kernel_timespec(tv_sec: t / 1_000_000_000, tv_nsec: t % 1_000_000_000)
                rc = io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, nil)
            }
        } else {
            rc = io_uring_submit_and_wait(ring, 1)
        }
        if rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY {
            throw SyscallError("io_uring_submit_and_wait", Errno(rawValue: -rc))
        }
        while true {
            let n = io_uring_peek_batch_cqe(ring, cqes, cqeBatch)
            if n == 0 { break }
            for k in 0..<Int(n) {
                let c = cqes[k]!.pointee
                let token = c.user_data
                if token == URingBackend.removeTag { continue }
                guard var e = entries[token] else { continue }  // stale: deregistered or modified
                let more = c.flags & cloop_IORING_CQE_F_MORE() != 0
                if !e.edge || !more {
                    e.armed = false
                    entries[token] = e
                }
                if c.res == -ECANCELED {
                    if !e.armed { rearm.append(token) }
                    continue
                }
                var r: Reactor.Readiness = []
                if c.res < 0 {
                    // The poll itself failed (the descriptor was closed under it, say): report
                    // an error and leave it disarmed.
                    r.insert(.error)
                } else {
                    let m = UInt32(c.res)
                    if m & UInt32(POLLIN | POLLPRI) != 0 { r.insert(.readable) }
                    if m & UInt32(POLLOUT) != 0 { r.insert(.writable) }
                    if m & UInt32(POLLHUP | POLLRDHUP) != 0 { r.insert(.hangup) }
                    if m & UInt32(POLLERR) != 0 { r.insert(.error) }
                    if !e.armed { rearm.append(token) }
                }
                events.append(BackendEvent(token: token, readiness: r))
            }
            io_uring_cq_advance(ring, n)
            if n < cqeBatch { break }
        }
    }

    func close() {
        io_uring_queue_exit(ring)
        ring.deallocate()
        cqes.deallocate()
    }
}
