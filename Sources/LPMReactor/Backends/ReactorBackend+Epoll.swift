import CLoop
import Synchronization

/// The epoll backend: `epoll_ctl` per change, `epoll_pwait2` (nanosecond timeout, kernel 5.11+)
/// to wait. The token is stored in `epoll_event.data.u64`.
///
/// Where `epoll_pwait2` is refused with `ENOSYS` (a kernel before 5.11, or valgrind, which
/// answers the system calls it does not know that way), the process switches once, for good, to
/// `epoll_wait(2)` with the timeout rounded up to whole milliseconds.
final class EpollBackend: ReactorBackend {
    let kind = Reactor.Backend.epoll
    private let epfd: CInt
    private var buffer: UnsafeMutablePointer<epoll_event>
    private var capacity: Int

    /// Whether this backend waits with `epoll_wait(2)` and a millisecond timeout instead of
    /// `epoll_pwait2(2)`. Starts as the process-wide choice; tests set it to run the fallback
    /// where `epoll_pwait2` works.
    var waitsInMilliseconds: Bool

    /// Set once, for the life of the process, when `epoll_pwait2` fails with `ENOSYS`: every
    /// epoll backend made afterwards starts on `epoll_wait`. Relaxed ordering is enough: a
    /// backend that has not seen the flag yet gets `ENOSYS` once more and sets it again.
    private static let pwait2Refused = Atomic<Bool>(false)

    init() throws(SyscallError) {
        epfd = try syscallValue("epoll_create1") { epoll_create1(CInt(EPOLL_CLOEXEC)) }
        capacity = 64
        buffer = .allocate(capacity: capacity)
        waitsInMilliseconds = Self.pwait2Refused.load(ordering: .relaxed)
    }

    /// Whether `epoll_pwait2` has been refused with `ENOSYS` in this process.
    static var nanosecondWaitRefused: Bool { pwait2Refused.load(ordering: .relaxed) }

    /// The `epoll_wait(2)` timeout for a wait of `nanoseconds` (`nil`: no limit), rounded *up* to
    /// whole milliseconds so that the wait never ends before the deadline the reactor asked for:
    /// `nil` is -1 (block), 0 stays 0 (poll), anything from 1 ns to 1 ms is 1, and waits beyond
    /// `Int32.max` milliseconds (24.8 days) are capped there (the reactor then waits again).
    static func milliseconds(fromNanoseconds nanoseconds: Int64?) -> CInt {
        guard let ns = nanoseconds else { return -1 }
        guard ns > 0 else { return 0 }
        let ms = ns / 1_000_000 + (ns % 1_000_000 == 0 ? 0 : 1)
        return CInt(min(ms, Int64(CInt.max)))
    }

    private static func mask(_ interest: Reactor.Interest, edge: Bool) -> UInt32 {
        var m: UInt32 = EPOLLRDHUP.rawValue
        if interest.contains(.readable) { m |= EPOLLIN.rawValue }
        if interest.contains(.writable) { m |= EPOLLOUT.rawValue }
        if edge { m |= EPOLLET.rawValue }
        return m
    }

    private func ctl(_ op: CInt, _ fd: CInt, _ token: UInt64, _ mask: UInt32) throws(SyscallError) {
        var ev = epoll_event()
        ev.events = mask
        ev.data.u64 = token
        _ = try syscallValue("epoll_ctl") { epoll_ctl(epfd, op, fd, &ev) }
    }

    func register(fd: CInt, token: UInt64, interest: Reactor.Interest, edge: Bool) throws(SyscallError) {
        do {
            try ctl(EPOLL_CTL_ADD, fd, token, Self.mask(interest, edge: edge))
        } catch where error.errno == .fileExists {
            // EEXIST: this very descriptor (same number, same open file) is still in the set,
            // registered again without a deregister: take the entry over. (A number closed and
            // reused for another file gets a new entry: epoll keys entries by number and file. If
            // the old file is still open elsewhere, its old entry lingers until that file closes,
            // reporting under the old token, which the reactor drops; epoll(7), "Questions and
            // answers". Deregister before close.)
            try ctl(EPOLL_CTL_MOD, fd, token, Self.mask(interest, edge: edge))
        }
    }

    func modify(fd: CInt, oldToken: UInt64, newToken: UInt64, interest: Reactor.Interest, edge: Bool) throws(SyscallError) {
        try ctl(EPOLL_CTL_MOD, fd, newToken, Self.mask(interest, edge: edge))
    }

    func deregister(fd: CInt, token: UInt64) throws(SyscallError) {
        do {
            try ctl(EPOLL_CTL_DEL, fd, 0, 0)
        } catch where error.errno == .noSuchFileOrDirectory || error.errno == .badFileDescriptor {
            // Closing the last reference to a file removes it from the epoll set (epoll(7)):
            // a descriptor closed before it was deregistered is already gone.
        }
    }

    func wait(timeoutNanoseconds: Int64?, into events: inout [BackendEvent]) throws(SyscallError) {
        var n: CInt = 0
        if !waitsInMilliseconds {
            var ts = timespec()
            if let t = timeoutNanoseconds {
                ts.tv_sec = Int(t / 1_000_000_000)
                ts.tv_nsec = Int(t % 1_000_000_000)
                n = epoll_pwait2(epfd, buffer, CInt(capacity), &ts, nil)
            } else {
                n = epoll_pwait2(epfd, buffer, CInt(capacity), nil, nil)
            }
            if n < 0 {
                let e = Errno.current
                if e == .interrupted { return }
                guard e == .noFunction else { throw SyscallError("epoll_pwait2", e) }
                // ENOSYS: no such call here. It waited for nothing, so wait now the other way.
                Self.pwait2Refused.store(true, ordering: .relaxed)
                waitsInMilliseconds = true
            }
        }
        if waitsInMilliseconds {
            n = epoll_wait(epfd, buffer, CInt(capacity), Self.milliseconds(fromNanoseconds: timeoutNanoseconds))
            if n < 0 {
                let e = Errno.current
                if e == .interrupted { return }
                throw SyscallError("epoll_wait", e)
            }
        }
        for i in 0..<Int(n) {
            let ev = buffer[i]
            var r: Reactor.Readiness = []
            if ev.events & (EPOLLIN.rawValue | EPOLLPRI.rawValue) != 0 { r.insert(.readable) }
            if ev.events & EPOLLOUT.rawValue != 0 { r.insert(.writable) }
            if ev.events & (EPOLLHUP.rawValue | EPOLLRDHUP.rawValue) != 0 { r.insert(.hangup) }
            if ev.events & EPOLLERR.rawValue != 0 { r.insert(.error) }
            events.append(BackendEvent(token: ev.data.u64, readiness: r))
        }
        if Int(n) == capacity && capacity < 4096 {
            // A full buffer means more may be ready: grow for the next wait.
            buffer.deallocate()
            capacity *= 2
            buffer = .allocate(capacity: capacity)
        }
    }

    func close() {
        FileDescriptor.closeRaw(epfd)
        buffer.deallocate()
    }
}
