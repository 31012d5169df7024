import CLoop
import Glibc
@testable import LPMReactor
import Testing

/// The epoll backend's fallback from `epoll_pwait2` (nanoseconds) to `epoll_wait` (milliseconds),
/// taken where `epoll_pwait2` is refused with ENOSYS: kernels before 5.11, and valgrind.
@Suite("epoll backend: the epoll_wait fallback")
struct EpollFallbackTests {
    @Test("timeouts become whole milliseconds, rounded up, so a wait never ends before its deadline",
          arguments: [
              (nil, -1), (0, 0), (-5, 0), (1, 1), (999_999, 1), (1_000_000, 1), (1_000_001, 2),
              (1_500_000, 2), (2_000_000, 2), (999_999_999, 1000), (1_000_000_000, 1000),
              (Int64(CInt.max) * 1_000_000, CInt.max), (Int64.max, CInt.max),
          ] as [(Int64?, CInt)])
    func rounding(_ nanoseconds: Int64?, _ milliseconds: CInt) {
        #expect(EpollBackend.milliseconds(fromNanoseconds: nanoseconds) == milliseconds)
    }

    @Test("forced onto epoll_wait, timers fire on the first wait and never early; descriptors fire")
    func forced() throws {
        let reactor = try Reactor(backend: .only(.epoll))
        defer { reactor.close() }
        let epoll = try #require(reactor.backend as? EpollBackend)
        epoll.waitsInMilliseconds = true
        try exerciseMillisecondWaits(reactor)
        #expect(epoll.waitsInMilliseconds)
    }

    @Test("where the kernel refuses epoll_pwait2 with ENOSYS, the process switches to epoll_wait for good")
    func refused() async {
        let result = await #expect(processExitsWith: .success, observing: [\.standardOutputContent]) {
            // epoll_pwait2 is 441 on every architecture (the unified table, Linux 5.11).
            guard refuseSystemCall(441, with: ENOSYS) else {
                print("note: cannot install a seccomp filter here: epoll_pwait2 fallback test skipped")
                return
            }
            #expect(!EpollBackend.nanosecondWaitRefused)
            let first = try Reactor(backend: .only(.epoll))
            let epoll = try #require(first.backend as? EpollBackend)
            #expect(!epoll.waitsInMilliseconds)
            // The first wait meets ENOSYS and waits with epoll_wait instead, at once.
            try exerciseMillisecondWaits(first)
            #expect(epoll.waitsInMilliseconds)
            #expect(EpollBackend.nanosecondWaitRefused)
            first.close()
            // Reactors made afterwards start on epoll_wait without trying epoll_pwait2 again.
            let second = try Reactor(backend: .only(.epoll))
            #expect((second.backend as? EpollBackend)?.waitsInMilliseconds == true)
            try exerciseMillisecondWaits(second)
            second.close()
        }
        if let out = result?.standardOutputContent, !out.isEmpty { print(String(decoding: out, as: UTF8.self), terminator: "") }
    }

    @Test("under valgrind (its preload in LD_PRELOAD) the automatic choice is epoll; LPM_REACTOR_BACKEND still wins")
    func valgrindPicksEpoll() async {
        await #expect(processExitsWith: .success) {
            unsetenv("LPM_REACTOR_BACKEND")
            #expect(!Sys.runningUnderValgrind)
            // What valgrind puts there for the programs it runs (and the children it traces).
            setenv("LD_PRELOAD", "/usr/libexec/valgrind/vgpreload_core-amd64-linux.so", 1)
            #expect(Sys.runningUnderValgrind)
            for choice in [Reactor.BackendChoice.automatic, .preferring(.uring), .preferring(.epoll)] {
                let r = try Reactor(backend: choice)
                #expect(r.backendKind == .epoll, "\(choice)")
                r.close()
            }
            // An explicit choice is kept (io_uring's waits then never return under valgrind).
            setenv("LPM_REACTOR_BACKEND", "uring", 1)
            if let r = try? Reactor(backend: .automatic) {
                #expect(r.backendKind == .uring)
                r.close()
            }
            unsetenv("LD_PRELOAD")
        }
    }
}

/// Timers of delays around the millisecond, each given one wait with no timeout of its own: the
/// wait must last until the timer is due (a timeout rounded down would end it early, and the
/// iteration would run nothing), and the timer must not fire before its deadline. Then a
/// descriptor wakes a wait that has no timeout at all.
func exerciseMillisecondWaits(_ reactor: Reactor) throws {
    for delay in [1, 300, 999, 1000, 1001, 1500, 4000] {
        var fired: Int64?
        let start = Sys.monotonicNanoseconds()
        try reactor.schedule(after: .microseconds(delay)) { fired = Sys.monotonicNanoseconds() }
        let ran = try reactor.runOnce(timeout: nil)
        #expect(ran == 1, "a \(delay) us timer: the wait ended before it was due")
        let at = try #require(fired, "a \(delay) us timer did not fire on the first wait")
        #expect(at - start >= Int64(delay) * 1000, "a \(delay) us timer fired after \(at - start) ns")
    }
    let (r, w) = makePipe()
    defer { close(r); close(w) }
    var got: Reactor.Readiness = []
    let registration = try reactor.register(r, interest: .readable) { got = $0 }
    writeByte(w)
    try reactor.runOnce(timeout: nil)
    #expect(got.contains(.readable))
    // A zero timeout polls: nothing ready, nothing runs, no wait.
    #expect(drain(r) == 1)
    #expect(try reactor.runOnce(timeout: .zero) == 0)
    try reactor.deregister(registration)
    #expect(reactor.registrationCount == 0)
}
