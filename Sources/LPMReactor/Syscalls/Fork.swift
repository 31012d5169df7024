import CLoop

extension Sys {
    /// `clone(CLONE_PARENT | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD)` through the raw
    /// system call (`cloop_clone_parent`): a fork whose child is the caller's *sibling*: its parent
    /// is the caller's parent, which can open a pidfd on it, reap it with `waitid` and read its
    /// exit status as for a child it spawned itself. The parent-death signal is reset in the child
    /// (kernel rule for every fork) and follows the new parent once set again.
    ///
    /// As glibc's `fork`, the kernel writes the child's thread id at `threadID` in the child
    /// (``threadDescriptorTID()``), so that glibc's thread descriptor names the child's thread
    /// rather than the caller's; the child then registers its robust list again
    /// (``setRobustList(_:)``).
    ///
    /// - Important: call it only from a single-threaded process: the child has one thread, and
    ///   no atfork handler runs, so a lock another thread held would stay held for good.
    /// - Returns: the child's pid in the caller; 0 in the child.
    /// - Throws: ``SyscallError`` (`EINVAL` when the caller is the init process of its pid
    ///   namespace, which has no parent to share; `EAGAIN`, `ENOMEM` under limits).
    @inline(never)
    package static func forkSibling(threadID: UnsafeMutablePointer<pid_t>) throws(SyscallError) -> pid_t {
        try syscallValue("clone(CLONE_PARENT)") { cloop_clone_parent(threadID) }
    }

    /// The `tid` field of glibc's descriptor of the calling thread (`struct pthread`, at
    /// `pthread_self()`), where glibc keeps the thread's id for `pthread_kill`,
    /// `pthread_setschedparam`, `pthread_getcpuclockid` and the owner of error-checking,
    /// recursive and robust mutexes. Its place is read from glibc's interface for debuggers,
    /// `_thread_db_pthread_tid` (GLIBC_PRIVATE: the field's size in bits, its element count and
    /// its offset in the descriptor), and checked: the field must hold the caller's `gettid()`.
    /// `nil` when the symbol is missing (not glibc, or a static one) or the check fails: then
    /// nothing may be written there.
    package static func threadDescriptorTID() -> UnsafeMutablePointer<pid_t>? {
        guard let offset = threadDescriptorTIDOffset else { return nil }
        guard let me = UnsafeMutableRawPointer(bitPattern: UInt(pthread_self())) else { return nil }
        let field = (me + offset).assumingMemoryBound(to: pid_t.self)
        return field.pointee == cloop_gettid() ? field : nil
    }

    /// The calling thread's id as the kernel knows it (`gettid`) and as glibc's descriptor of
    /// it holds it (the field of ``threadDescriptorTID()``, read without its check; `nil` when
    /// glibc does not describe it). For tests.
    package static func threadIDs() -> (kernel: pid_t, glibc: pid_t?) {
        guard let offset = threadDescriptorTIDOffset, let me = UnsafeRawPointer(bitPattern: UInt(pthread_self())) else {
            return (cloop_gettid(), nil)
        }
        return (cloop_gettid(), me.load(fromByteOffset: offset, as: pid_t.self))
    }

    /// The offset of `tid` in glibc's `struct pthread`, once: `nil` when glibc does not describe
    /// it, or describes something other than one 32-bit integer.
    private static let threadDescriptorTIDOffset: Int? = {
        guard let symbol = dlsym(nil, "_thread_db_pthread_tid") else { return nil }
        let layout = symbol.assumingMemoryBound(to: UInt32.self)
        guard layout[0] == UInt32(MemoryLayout<pid_t>.size * 8), layout[1] <= 1,
              layout[2] % UInt32(MemoryLayout<pid_t>.alignment) == 0, layout[2] < 4096 else { return nil }
        return Int(layout[2])
    }()

    /// The thread ids a fork's child must correct, checked in the calling thread before each
    /// fork: glibc's (``threadDescriptorTID()``, which the kernel writes at the fork) and
    /// libdispatch's. `nil` when glibc's cannot be found, or libdispatch holds something else
    /// than the caller's id where its id should be: a fork is not safe then.
    ///
    /// libdispatch (loaded by every Swift program on Linux, for the Swift concurrency runtime)
    /// caches each thread's id in its thread-local `__dispatch_tsd` (the first field; the whole
    /// of its TLS block), and binds the main queue to the main thread's id at load time. Both
    /// stay the template's in a forked worker unless corrected (``ThreadIDs/correctInChild()``):
    /// its unfair locks (priority-inheritance futexes, whose owner is that id) then fail when
    /// the main thread holds one that another thread waits for.
    package static func threadIDsToCorrect() -> ThreadIDs? {
        guard let glibc = threadDescriptorTID() else { return nil }
        guard let d = dispatchTSD, let tid = UnsafeMutablePointer<pid_t>(bitPattern: d.tid),
              let atforkChild = UnsafeRawPointer(bitPattern: d.atforkChild) else {
            return ThreadIDs(glibc: glibc, dispatch: nil, dispatchAtforkChild: nil)
        }
        switch tid.pointee {
        case 0: return ThreadIDs(glibc: glibc, dispatch: nil, dispatchAtforkChild: nil)  // none cached yet
        case cloop_gettid():
            return ThreadIDs(glibc: glibc, dispatch: tid,
                             dispatchAtforkChild: unsafeBitCast(atforkChild, to: (@convention(c) () -> Void).self))
        default: return nil
        }
    }

    /// What ``threadIDsToCorrect()`` found.
    package struct ThreadIDs {
        package let glibc: UnsafeMutablePointer<pid_t>
        let dispatch: UnsafeMutablePointer<pid_t>?
        let dispatchAtforkChild: (@convention(c) () -> Void)?

        /// In the child, first thing: libdispatch's cached id becomes this thread's, and its
        /// `dispatch_atfork_child` (which glibc's fork would have run) binds the main queue to
        /// it. glibc's needs nothing: the kernel wrote it.
        package func correctInChild() {
            guard let dispatch, let dispatchAtforkChild else { return }
            dispatch.pointee = cloop_gettid()
            dispatchAtforkChild()
        }
    }

    /// libdispatch's TLS block for the thread that first asks (the template's only thread) and
    /// its `dispatch_atfork_child`, as addresses; `nil` when libdispatch is not loaded.
    private static let dispatchTSD: (tid: UInt, atforkChild: UInt)? = {
        guard let handle = dlopen("libdispatch.so", RTLD_NOLOAD | RTLD_LAZY) else { return nil }
        defer { dlclose(handle) }  // loaded at start: it stays
        var block: UnsafeMutableRawPointer?
        guard dlinfo(handle, 10 /* RTLD_DI_TLS_DATA */, &block) == 0, let block,
              let atforkChild = dlsym(handle, "dispatch_atfork_child") else { return nil }
        return (UInt(bitPattern: block), UInt(bitPattern: atforkChild))
    }()

    /// The calling thread's id as libdispatch caches it (the first field of its TLS block);
    /// `nil` when libdispatch is not loaded. For tests.
    package static func dispatchThreadID() -> pid_t? {
        guard let handle = dlopen("libdispatch.so", RTLD_NOLOAD | RTLD_LAZY) else { return nil }
        defer { dlclose(handle) }
        var block: UnsafeMutableRawPointer?
        guard dlinfo(handle, 10 /* RTLD_DI_TLS_DATA */, &block) == 0, let block else { return nil }
        return block.load(as: pid_t.self)
    }

    /// The calling thread's robust futex list as registered with the kernel (`get_robust_list`
    /// of itself): glibc registers each thread's at its start. A fork's child starts with none.
    package static func robustList() -> (head: UnsafeMutableRawPointer?, length: Int) {
        var head: UnsafeMutableRawPointer?
        var length = 0
        if cloop_get_robust_list(&head, &length) != 0 { return (nil, 0) }
        return (head, length)
    }

    /// `set_robust_list(list)`: the calling thread's robust futex list, as ``robustList()``
    /// read it before a fork (glibc's fork does the same in its child).
    package static func setRobustList(_ list: (head: UnsafeMutableRawPointer?, length: Int)) {
        if list.head != nil { _ = cloop_set_robust_list(list.head, list.length) }
    }

    /// The number of threads of this process: field 20 (`num_threads`) of `/proc/self/stat`,
    /// read into a stack buffer with `open`, `read` and `close`. `nil` when it cannot be read.
    package static func threadCount() -> Int? {
        let fd = cloop_open("/proc/self/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { _ = CLoop.close(fd) }
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 1024) { buffer -> Int? in
            var n = 0
            while n < buffer.count {
                let r = CLoop.read(fd, buffer.baseAddress! + n, buffer.count - n)
                if r == -1 && cloop_errno() == EINTR { continue }
                if r <= 0 { break }
                n += r
            }
            // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
            guard let close = buffer[..<n].lastIndex(of: UInt8(ascii: ")")) else { return nil }
            var field = 2, value = 0, i = close + 1
            while i < n {
                let c = buffer[i]
                if c == UInt8(ascii: " ") {
                    if field == 20 { return value }
                    field += 1
                    value = 0
                } else if field == 20, c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") {
                    value = value * 10 + Int(c - UInt8(ascii: "0"))
                }
                i += 1
            }
            return nil
        }
    }

    /// The disposition of every signal (`sigaction(2)` with no new action), by number; entry 0
    /// unused. For ``restoreSignalDispositions(_:signals:)``.
    package static func signalDispositions() -> [sigaction] {
        var all = Array<sigaction>(repeating: sigaction(), count: Int(NSIG))
        for signal in 1..<CInt(NSIG) {
            // Fails (EINVAL) only for the signals glibc reserves: they keep their empty entry.
            _ = sigaction(signal, nil, &all[Int(signal)])
        }
        return all
    }

    /// The signals whose disposition differs now from `saved` (from ``signalDispositions()``):
    /// the ones ``restoreSignalDispositions(_:signals:)`` must set back. SIGKILL, SIGSTOP and
    /// the signals glibc reserves are never listed.
    package static func signalsChanged(since saved: [sigaction]) -> [CInt] {
        let now = signalDispositions()
        return (1..<CInt(NSIG)).filter { signal in
            guard signal != SIGKILL, signal != SIGSTOP else { return false }
            return !sameDisposition(now[Int(signal)], saved[Int(signal)])
        }
    }

    /// Field by field, and of the mask only the kernel's part (one bit per signal, `NSIG - 1`):
    /// glibc's `sigset_t` is larger, and `sigaction` leaves the rest as it finds it.
    private static func sameDisposition(_ a: sigaction, _ b: sigaction) -> Bool {
        let maskBytes = (Int(NSIG) - 1 + 7) / 8
        return unsafeBitCast(a.__sigaction_handler, to: UInt.self) == unsafeBitCast(b.__sigaction_handler, to: UInt.self)
            && a.sa_flags == b.sa_flags
            && unsafeBitCast(a.sa_restorer, to: UInt.self) == unsafeBitCast(b.sa_restorer, to: UInt.self)
            && withUnsafeBytes(of: a.sa_mask) { x in withUnsafeBytes(of: b.sa_mask) { y in x.prefix(maskBytes).elementsEqual(y.prefix(maskBytes)) } }
    }

    /// Sets the disposition of each of `signals` back to `saved` (from ``signalDispositions()``)
    /// and empties the signal mask (`sigprocmask(SIG_SETMASK)`), as a freshly started process had
    /// them. SIGKILL and SIGSTOP, and the signals glibc reserves, are skipped (their calls fail).
    package static func restoreSignalDispositions(_ saved: [sigaction], signals: [CInt]) {
        for signal in signals where signal != SIGKILL && signal != SIGSTOP {
            var action = saved[Int(signal)]
            _ = sigaction(signal, &action, nil)
        }
        var none = sigset_t()
        sigemptyset(&none)
        sigprocmask(SIG_SETMASK, &none, nil)
    }

    /// `setpgid(0, 0)`: this process leads a process group of its own.
    package static func leadOwnProcessGroup() throws(SyscallError) {
        _ = try syscallValue("setpgid") { setpgid(0, 0) }
    }

    /// `dup3(fd, target, 0)`: `fd` copied onto `target`, without CLOEXEC on the copy.
    package static func duplicate(_ fd: CInt, onto target: CInt) throws(SyscallError) {
        _ = try syscallValue("dup3") { dup3(fd, target, 0) }
    }

    /// `close_range(first, ~0, 0)` (kernel 5.9+, glibc 2.34+): closes every descriptor from
    /// `first` up.
    package static func closeDescriptors(from first: CInt) throws(SyscallError) {
        _ = try syscallValue("close_range") { close_range(UInt32(first), ~0, 0) }
    }

    /// `fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)`.
    package static func setBlocking(_ fd: CInt) throws(SyscallError) {
        let flags = try syscallValue("fcntl") { cloop_fcntl_int(fd, F_GETFL, 0) }
        _ = try syscallValue("fcntl") { cloop_fcntl_int(fd, F_SETFL, flags & ~O_NONBLOCK) }
    }

    /// Whether `pid` is a child of this process (live or not yet reaped): `waitid(P_PID, pid,
    /// WEXITED | WNOHANG | WNOWAIT)`, which fails with `ECHILD` for any other process and
    /// reaps nothing.
    package static func isChild(_ pid: pid_t) -> Bool {
        guard pid > 0 else { return false }
        var info = siginfo_t()
        while true {
            if waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 { return true }
            if cloop_errno() != EINTR { return false }
        }
    }

    /// `poll(2)` of one descriptor for `POLLIN`, retrying `EINTR` with the time left.
    /// - Returns: whether it became readable (or hung up) before `milliseconds` passed.
    package static func waitReadable(_ fd: CInt, milliseconds: Int) -> Bool {
        let deadline = monotonicNanoseconds() + Int64(milliseconds) * 1_000_000
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let left = max(0, (deadline - monotonicNanoseconds() + 999_999) / 1_000_000)
            let r = poll(&p, 1, CInt(left))
            if r > 0 { return true }
            if r == 0 || cloop_errno() != EINTR { return false }
        }
    }
}

/// The messages between the supervisor and a worker template (see `Pool+Template.swift` and
/// the worker runtime's `Template.swift`): 16 bytes each, four 32-bit little-endian fields
/// `magic, kind, a, b`, on the template's channel (descriptor 3 of the template, a stream
/// socketpair). A fork order carries the new worker's end of its channel with SCM_RIGHTS.
package struct TemplateMessage: Equatable, Sendable {
    /// "LPMT".
    package static let magic: UInt32 = 0x544D_504C
    package static let size = 16
    /// Set (to "1") in a template's environment.
    package static let environmentKey = "LPM_TEMPLATE"

    package enum Kind: UInt32, Sendable {
        /// Template to supervisor, once its preload ran: `a` its pid, `b` its thread count.
        case hello = 1
        /// Supervisor to template: fork a worker for slot `a`; its channel end is attached.
        case fork = 2
        /// Forked worker to supervisor, on the worker's own channel before anything else: `a`
        /// its pid. The supervisor learns every forked worker's pid from the worker itself, so
        /// that it can watch and reap it even when the template dies (or stalls) right after
        /// the fork; the template sends nothing when a fork succeeds.
        case forked = 3
        /// Template to supervisor: refused, `a` threads run in the template (it forks only
        /// when it has one), `b` the order's slot. The order's channel is closed first.
        case refusedThreads = 4
        /// Template to supervisor: the fork failed, `a` the error number, `b` the order's slot.
        /// The order's channel is closed first.
        case failed = 5
        /// Template to supervisor, instead of its hello or in answer to an order (`b` its slot,
        /// its channel closed first): it cannot fork safely in this process, because glibc's
        /// thread descriptor cannot be found, or libdispatch's thread id is not where it should
        /// be (``Sys/threadIDsToCorrect()``): a forked worker would keep the template's id.
        case unsupported = 6
    }

    package var kind: Kind
    package var a: Int32
    package var b: Int32

    package init(_ kind: Kind, _ a: Int32, _ b: Int32 = 0) {
        self.kind = kind
        self.a = a
        self.b = b
    }

    package func encoded() -> (UInt32, UInt32, Int32, Int32) {
        (Self.magic.littleEndian, kind.rawValue.littleEndian, a.littleEndian, b.littleEndian)
    }

    /// Decodes 16 bytes; `nil` for a wrong size, magic or kind.
    package static func decode(_ bytes: UnsafeRawBufferPointer) -> TemplateMessage? {
        guard bytes.count == size,
              UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self)) == magic,
              let kind = Kind(rawValue: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
        else { return nil }
        return TemplateMessage(kind, Int32(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: Int32.self)),
                               Int32(littleEndian: bytes.loadUnaligned(fromByteOffset: 12, as: Int32.self)))
    }

    /// Sends this message on `fd` (blocking or not; 16 bytes go in one call on a stream
    /// socket with room), with `descriptor` attached if given.
    /// - Returns: whether all 16 bytes were sent.
    package func send(on fd: CInt, passing descriptor: CInt? = nil) -> Bool {
        var tuple = encoded()
        return withUnsafeBytes(of: &tuple) { bytes in
            let result: IOResult<Int>?
            if let descriptor { result = try? Sys.sendmsg(fd, bytes, passing: descriptor) } else { result = try? Sys.send(fd, bytes) }
            if case .processed(let n) = result { return n == Self.size }
            return false
        }
    }
}
