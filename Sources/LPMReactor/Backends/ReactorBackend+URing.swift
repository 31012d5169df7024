import CLoop

/// The io_uring backend (liburing): readiness through poll requests, submitted in batches.
///
/// - Level-triggered registrations are one-shot `IORING_OP_POLL_ADD` requests
///   (`io_uring_prep_poll_add`, kernel 5.1+). After each completion the registration goes on a
///   re-arm list and is armed again at the start of the next ``wait(timeoutNanoseconds:into:)``:
///   a one-shot poll completes at once when the descriptor is still ready, which gives level
///   semantics.
/// - Edge-triggered registrations are multishot polls (`io_uring_prep_poll_multishot`,
///   `IORING_POLL_ADD_MULTI`, kernel 5.13+). A completion without `IORING_CQE_F_MORE` means the
///   kernel ended the request; it is re-armed like a one-shot one.
/// - ``register(fd:token:interest:edge:)``, ``modify(fd:oldToken:newToken:interest:edge:)`` and
///   ``deregister(fd:token:)`` only queue SQEs. Everything is submitted with the wait, in one
///   `io_uring_enter(2)` (`io_uring_submit_and_wait_timeout`, which passes the timeout with
///   `IORING_ENTER_EXT_ARG`, kernel 5.11+).
/// - The token is the request's `user_data`. Removing a registration forgets its token at once
///   and queues `IORING_OP_POLL_REMOVE` (`io_uring_prep_poll_remove`); completions that still
///   arrive for a forgotten token (the poll's `-ECANCELED`, or an event that raced the removal)
///   are dropped.
///
/// - Important: a poll request holds a reference to its file. Until the queued removal is
///   submitted (the next wait), closing the descriptor does not release the file, so a peer
///   sees the close one loop iteration later. A descriptor closed *without* deregistering keeps
///   its file open for as long as the request lives: deregister before closing.
/// - Important: used only on the reactor thread.
final class URingBackend: ReactorBackend {
    let kind = Reactor.Backend.uring

    /// The ring, heap-allocated: liburing keeps pointers into it, so its address must not move.
    private let ring: UnsafeMutablePointer<io_uring>
    /// Room for one batch of completions from `io_uring_peek_batch_cqe`.
    private let cqes: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>
    private static let cqeBatch: UInt32 = 256
    /// `user_data` of poll-remove requests, whose completions are ignored. The reactor's tokens
    /// (slot index << 32 | arm) never reach it.
    private static let removeTag = UInt64.max

    /// A live registration.
    fileprivate struct Entry {
        static let empty = Entry(fd: -1, mask: 0, edge: false, armed: false)
        var fd: CInt
        /// `POLLIN`/`POLLOUT`, always with `POLLRDHUP`.
        var mask: UInt32
        /// Multishot (edge) or one-shot re-armed (level).
        var edge: Bool
        /// A poll request for this token is queued or in the kernel.
        var armed: Bool
    }

    /// Live registrations by token. A completion whose token is missing is stale.
    private var registrations = TokenTable()
    /// The token registered for each descriptor, to take over a number that was closed without
    /// being deregistered and then reused.
    private var tokenByFD = FDTable()
    /// Tokens whose request completed and that are armed again before the next wait (if they
    /// are still registered by then, and still not armed).
    private var rearm: [UInt64] = []

    /// Sets up a ring with `entries` submission slots (and twice as many completion slots).
    ///
    /// The corresponding C function is `io_uring_queue_init(3)` (`io_uring_setup(2)`, kernel
    /// 5.1+), with no setup flags (no SQPOLL).
    ///
    /// - Throws: ``SyscallError`` with the kernel's errno when the ring cannot be created:
    ///   `ENOSYS` (no io_uring, or a kernel older than 5.13, which lacks multishot poll), `EPERM`
    ///   (`kernel.io_uring_disabled` sysctl, 6.6+, or seccomp), `ENOMEM` (locked-memory limit).
    ///   The reactor then falls back to epoll.
    init(entries: UInt32 = 256) throws(SyscallError) {
        ring = .allocate(capacity: 1)
        ring.initialize(to: io_uring())
        let rc = cloop_io_uring_queue_init(entries, ring, 0)
        if rc < 0 {
            ring.deallocate()
            throw SyscallError("io_uring_queue_init", Errno(rawValue: -rc))
        }
        // No feature bit names multishot poll: IORING_FEAT_RSRC_TAGS came with it, in 5.13.
        // IORING_FEAT_EXT_ARG (5.11) lets submit_and_wait_timeout pass the timeout directly.
        let needed = UInt32(IORING_FEAT_EXT_ARG) | UInt32(IORING_FEAT_RSRC_TAGS)
        if ring.pointee.features & needed != needed {
            io_uring_queue_exit(ring)
            ring.deallocate()
            throw SyscallError("io_uring_queue_init", .noFunction)
        }
        cqes = .allocate(capacity: Int(Self.cqeBatch))
    }

    /// A free submission slot. When the submission queue is full, submits it first
    /// (`io_uring_submit`), which consumes at least one entry.
    private func sqe() throws(SyscallError) -> UnsafeMutablePointer<io_uring_sqe> {
        while true {
            if let s = io_uring_get_sqe(ring) { return s }
            let rc = io_uring_submit(ring)
            if rc < 0 && rc != -EINTR { throw SyscallError("io_uring_submit", Errno(rawValue: -rc)) }
        }
    }

    private static func mask(_ interest: Reactor.Interest) -> UInt32 {
        var m = UInt32(POLLRDHUP)
        if interest.contains(.readable) { m |= UInt32(POLLIN) }
        if interest.contains(.writable) { m |= UInt32(POLLOUT) }
        return m
    }

    /// Queues the poll request for a registered token and marks it armed.
    private func arm(_ token: UInt64, _ e: Entry) throws(SyscallError) {
        let s = try sqe()
        if e.edge {
            io_uring_prep_poll_multishot(s, e.fd, e.mask)
        } else {
            io_uring_prep_poll_add(s, e.fd, e.mask)
        }
        io_uring_sqe_set_data64(s, token)
        registrations.setArmed(token, true)
    }

    /// Forgets `token`; queues a poll-remove if its request is queued or in the kernel.
    private func remove(_ token: UInt64) throws(SyscallError) {
        guard let e = registrations[token] else { return }
        if e.armed {
            // Take the slot before forgetting, so a failure leaves the registration as it was.
            let s = try sqe()
            io_uring_prep_poll_remove(s, token)
            io_uring_sqe_set_data64(s, Self.removeTag)
        }
        registrations[token] = nil
        if tokenByFD[e.fd] == token { tokenByFD[e.fd] = nil }
    }

    func register(fd: CInt, token: UInt64, interest: Reactor.Interest, edge: Bool) throws(SyscallError) {
        if let old = tokenByFD[fd], old != token {
            // The number was registered before, closed without deregistering and reused: the
            // old request still holds the old file. Cancel it.
            try remove(old)
        }
        let e = Entry(fd: fd, mask: Self.mask(interest), edge: edge, armed: false)
        registrations[token] = e
        tokenByFD[fd] = token
        do {
            try arm(token, e)
        } catch {
            registrations[token] = nil
            tokenByFD[fd] = nil
            throw error
        }
    }

    func modify(fd: CInt, oldToken: UInt64, newToken: UInt64, interest: Reactor.Interest, edge: Bool) throws(SyscallError) {
        try remove(oldToken)
        try register(fd: fd, token: newToken, interest: interest, edge: edge)
    }

    func deregister(fd: CInt, token: UInt64) throws(SyscallError) {
        try remove(token)
    }

    /// Re-arms completed requests, submits every queued SQE, waits, and harvests completions.
    ///
    /// The corresponding C functions are `io_uring_submit_and_wait(3)` (no limit),
    /// `io_uring_submit(3)` (`0`: does not block) and `io_uring_submit_and_wait_timeout(3)`
    /// (kernel 5.11+ for `IORING_ENTER_EXT_ARG`), then `io_uring_peek_batch_cqe(3)` and
    /// `io_uring_cq_advance(3)`. liburing returns `-errno`: `-EINTR` (a signal) and `-ETIME`
    /// (the timeout) are not errors; neither are `-EBUSY` (completion overflow not flushed) and
    /// `-EAGAIN` (out of resources), for which `io_uring_enter(2)` says to reap completions and
    /// try again. Completions already posted are harvested in every one of these cases.
    func wait(timeoutNanoseconds: Int64?, into events: inout [BackendEvent]) throws(SyscallError) {
        for token in rearm {
            if let e = registrations[token], !e.armed { try arm(token, e) }
        }
        rearm.removeAll(keepingCapacity: true)

        let rc: CInt
        let call: String
        switch timeoutNanoseconds {
        case nil:
            rc = io_uring_submit_and_wait(ring, 1)
            call = "io_uring_submit_and_wait"
        case let t? where t <= 0:
            rc = io_uring_submit(ring)
            call = "io_uring_submit"
        case let t?:
            var ts = __kernel_timespec(tv_sec: t / 1_000_000_000, tv_nsec: t % 1_000_000_000)
            var first: UnsafeMutablePointer<io_uring_cqe>?
            rc = io_uring_submit_and_wait_timeout(ring, &first, 1, &ts, nil)
            call = "io_uring_submit_and_wait_timeout"
        }
        if rc < 0 && rc != -EINTR && rc != -ETIME && rc != -EBUSY && rc != -EAGAIN {
            throw SyscallError(call, Errno(rawValue: -rc))
        }

        while true {
            let n = io_uring_peek_batch_cqe(ring, cqes, Self.cqeBatch)
            if n == 0 { break }
            for k in 0..<Int(n) {
                let c = cqes[k]!.pointee
                deliver(token: c.user_data, res: c.res, flags: c.flags, into: &events)
            }
            io_uring_cq_advance(ring, n)
            if n < Self.cqeBatch { break }
        }
    }

    /// Turns one completion into an event, and updates the token's armed state.
    private func deliver(token: UInt64, res: Int32, flags: UInt32, into events: inout [BackendEvent]) {
        // Poll-remove completions, and stale tokens (deregistered or modified since).
        guard token != Self.removeTag, var e = registrations[token] else { return }
        let ended = !e.edge || flags & cloop_IORING_CQE_F_MORE() == 0
        if ended {
            e.armed = false
            registrations[token] = e
        }
        if res == -ECANCELED {
            // Cancelled by the kernel, not by us (our removals forget the token first): arm again.
            if ended { rearm.append(token) }
            return
        }
        var r: Reactor.Readiness = []
        if res < 0 {
            // The poll itself failed: report it, and leave the registration unarmed.
            r.insert(.error)
        } else {
            let m = res
            if m & (Int32(POLLIN) | Int32(POLLPRI)) != 0 { r.insert(.readable) }
            if m & Int32(POLLOUT) != 0 { r.insert(.writable) }
            if m & (Int32(POLLHUP) | Int32(POLLRDHUP)) != 0 { r.insert(.hangup) }
            if m & Int32(POLLERR) != 0 { r.insert(.error) }
            if ended { rearm.append(token) }
        }
        events.append(BackendEvent(token: token, readiness: r))
    }

    /// Tears the ring down; the kernel cancels every request still in flight.
    ///
    /// The corresponding C function is `io_uring_queue_exit(3)`.
    func close() {
        io_uring_queue_exit(ring)
        ring.deallocate()
        cqes.deallocate()
        registrations = TokenTable()
        tokenByFD = FDTable()
        rearm.removeAll()
    }
}

/// Registrations by token, in an array indexed by the token's slot index (its high 32 bits, the
/// reactor's slot): no hashing and no allocation per lookup or update, unlike a dictionary
/// (whose modify accessor allocated on every re-arm).
private struct TokenTable {
    private var slots: [(token: UInt64, entry: URingBackend.Entry)] = []

    subscript(token: UInt64) -> URingBackend.Entry? {
        get {
            let i = Int(truncatingIfNeeded: token >> 32)
            guard i < slots.count, slots[i].token == token else { return nil }
            return slots[i].entry
        }
        set {
            let i = Int(truncatingIfNeeded: token >> 32)
            if let newValue {
                if i >= slots.count {
                    slots.append(contentsOf: repeatElement((token: UInt64.max, entry: URingBackend.Entry.empty), count: i + 1 - slots.count))
                }
                slots[i] = (token, newValue)
            } else if i < slots.count, slots[i].token == token {
                slots[i].token = .max
            }
        }
    }

    mutating func setArmed(_ token: UInt64, _ armed: Bool) {
        let i = Int(truncatingIfNeeded: token >> 32)
        if i < slots.count, slots[i].token == token { slots[i].entry.armed = armed }
    }
}

/// The token registered for each descriptor number, in an array indexed by the number.
private struct FDTable {
    private var tokens: [UInt64] = []

    subscript(fd: CInt) -> UInt64? {
        get {
            let i = Int(fd)
            guard i >= 0, i < tokens.count, tokens[i] != .max else { return nil }
            return tokens[i]
        }
        set {
            let i = Int(fd)
            guard i >= 0 else { return }
            if i >= tokens.count {
                guard newValue != nil else { return }
                tokens.append(contentsOf: repeatElement(UInt64.max, count: i + 1 - tokens.count))
            }
            tokens[i] = newValue ?? .max
        }
    }
}
