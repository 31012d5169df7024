import CLoop
import Glibc
import LPMReactor
import Synchronization
import Testing

/// A counter that lives on a reactor thread.
actor ReactorCounter {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    let handle: Reactor.Handle
    var value = 0

    init(_ handle: Reactor.Handle) {
        self.handle = handle
        unownedExecutor = handle.executor.asUnownedSerialExecutor()
    }

    /// Increments and reports whether it ran on the reactor thread.
    func bump() -> Bool {
        value += 1
        return handle.isOnReactorThread
    }
}

@Suite("Reactor: signals, executor, backend fallback", .serialized)
struct ProcessWideTests {
    @Test("a real SIGINT sent to the process while other threads run reaches the reactor", arguments: availableBackends)
    func sigintWithOtherThreads(_ backend: Reactor.Backend) async {
        await #expect(processExitsWith: .exitCode(0)) { [backend] in
            // Threads that do NOT block SIGINT, created before the reactor watches it: the
            // kernel may deliver the signal to any of them.
            for _ in 0..<4 {
                var tid = pthread_t()
                pthread_create(&tid, nil, { _ in
                    while true { usleep(1000) }
                }, nil)
            }
            let reactor = try Reactor(backend: .only(backend))
            var got = 0
            try reactor.watchSignal(SIGINT) { signal in got = Int(signal) }
            for _ in 0..<20 {
                kill(getpid(), SIGINT)
                let deadline = ContinuousClock.now + .seconds(5)
                let before = got
                got = 0
                while got == 0 && ContinuousClock.now < deadline { try reactor.runOnce(timeout: .milliseconds(10)) }
                if got != Int(SIGINT) { exit(1) }
                got = before
            }
            exit(0)
        }
    }

    @Test("an actor runs on the reactor executor; assumeIsolated works from a reactor callback")
    func actorOnReactor() async throws {
        let thread = try ReactorThread()
        let counter = ReactorCounter(thread.handle)
        for _ in 0..<1000 {
            let onThread = await counter.bump()
            #expect(onThread)
        }
        #expect(await counter.value == 1000)
        final class Sem: @unchecked Sendable { var s = sem_t(); init() { sem_init(&s, 0, 0) } }
        let sem = Sem()
        let seen = Atomic<Int>(0)
        thread.handle.execute { _ in
            counter.assumeIsolated { c in seen.store(c.value, ordering: .relaxed) }
            sem_post(&sem.s)
        }
        while sem_wait(&sem.s) != 0 {}
        #expect(seen.load(ordering: .relaxed) == 1000)
        thread.stop()
    }

    @Test("io_uring refused by the kernel: automatic choice falls back to epoll")
    func fallbackToEpoll() async {
        // The kernel refuses io_uring_setup(2) with EPERM, as with `kernel.io_uring_disabled = 2` or a
        // container's seccomp profile. A seccomp filter does it for one child process only: the
        // sysctl is machine-wide and would fail io_uring tests running at the same time.
        let result = await #expect(processExitsWith: .success, observing: [\.standardOutputContent]) {
            guard refuseIOURingSetup() else {
                print("note: cannot install a seccomp filter here: fallback test skipped")
                return
            }
            do {
                _ = try Reactor(backend: .only(.uring))
                Issue.record("io_uring was not refused")
            } catch let error as ReactorError {
                #expect(error.code == .backendUnavailable)
                #expect(error.underlying?.errno == .notPermitted)
            }
            let r = try Reactor()
            #expect(r.backendKind == .epoll)
            r.close()
        }
        // The child's notes (a skip and its reason), shown here.
        if let out = result?.standardOutputContent, !out.isEmpty { print(String(decoding: out, as: UTF8.self), terminator: "") }
    }
}

/// Makes io_uring_setup(2) fail with EPERM in this process from now on (a seccomp filter; it cannot
/// be removed, so call it only in an exit test's child). False when the filter was not installed.
func refuseIOURingSetup() -> Bool {
    // The same number on every architecture (the unified table, Linux 5.1).
    refuseSystemCall(425, with: EPERM)
}

/// Makes system call `number` fail with `errno` in the calling thread, and the threads it creates
/// afterwards, from now on (a seccomp filter; it cannot be removed, so call it only in an exit
/// test's child). False when the filter was not installed.
func refuseSystemCall(_ number: UInt32, with errno: CInt) -> Bool {
    struct SockFilter { var code: UInt16; var jt: UInt8; var jf: UInt8; var k: UInt32 }  // struct sock_filter
    struct SockFprog { var len: UInt16; var filter: UnsafeMutablePointer<SockFilter> }  // struct sock_fprog
    var program = [
        SockFilter(code: 0x20, jt: 0, jf: 0, k: 0),                 // BPF_LD | BPF_W | BPF_ABS: seccomp_data.nr
        SockFilter(code: 0x15, jt: 0, jf: 1, k: number),            // BPF_JMP | BPF_JEQ | BPF_K
        SockFilter(code: 0x06, jt: 0, jf: 0, k: 0x0005_0000 | UInt32(errno)),  // SECCOMP_RET_ERRNO | errno
        SockFilter(code: 0x06, jt: 0, jf: 0, k: 0x7fff_0000),       // SECCOMP_RET_ALLOW
    ]
    guard cloop_prctl1(PR_SET_NO_NEW_PRIVS, 1) == 0 else { return false }
    // prctl(2) is variadic: called through its address with the two arguments PR_SET_SECCOMP takes.
    typealias Prctl = @convention(c) (CInt, UInt, UnsafeMutableRawPointer?) -> CInt
    guard let symbol = dlsym(nil, "prctl") else { return false }
    let prctl3 = unsafeBitCast(symbol, to: Prctl.self)
    return program.withUnsafeMutableBufferPointer { buffer in
        var fprog = SockFprog(len: UInt16(buffer.count), filter: buffer.baseAddress!)
        return prctl3(PR_SET_SECCOMP, 2 /* SECCOMP_MODE_FILTER */, &fprog) == 0
    }
}
