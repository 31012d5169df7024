import LPMTestSupport
import CLoop
import Glibc
@testable import LPMReactor
import Synchronization
import Testing

// Tests that count the process's descriptors, threads or children run their body in an exit test
// (`#expect(processExitsWith:)`, a child process of its own), so that tests running in parallel
// cannot disturb the counts; issues recorded there are reported here.
@Suite("Reactor", .serialized)
struct ReactorTests {
    @Test("the descriptor counter sees a descriptor just opened")
    func counterWorks() async {
        await #expect(processExitsWith: .success) {
            await settleChildProcess()
            let before = openFDCount()
            let (a, b) = makePipe()
            #expect(openFDCount() == before + 2, "\(before) descriptors before, now: \(fdList())")
            close(a); close(b)
            #expect(openFDCount() == before, "\(before) descriptors before, now: \(fdList())")
        }
    }

    @Test("automatic choice and the environment override", arguments: availableBackends)
    func backendChoice(_ backend: Reactor.Backend) async throws {
        await #expect(processExitsWith: .success) { [backend] in
            await settleChildProcess()
            let r = try Reactor(backend: .only(backend))
            #expect(r.backendKind == backend)
            r.close()
            setenv("LPM_REACTOR_BACKEND", backend.rawValue, 1)
            defer { unsetenv("LPM_REACTOR_BACKEND") }
            let auto = try Reactor()
            #expect(auto.backendKind == backend)
            auto.close()
        }
    }

    @Test("readiness on a pipe", arguments: availableBackends)
    func pipeReadable(_ backend: Reactor.Backend) async throws {
        await #expect(processExitsWith: .success) { [backend] in
            await settleChildProcess()
            let fds = openFDCount()
            let r = try Reactor(backend: .only(backend))
            let (rd, wr) = makePipe()
            var reads = 0
            let reg = try r.register(rd, interest: .readable) { ready in
                #expect(ready.contains(.readable))
                reads += drain(rd)
            }
            try r.runOnce(timeout: .zero)
            #expect(reads == 0)
            writeByte(wr); writeByte(wr)
            try run(r) { reads == 2 }
            #expect(reads == 2)
            try r.deregister(reg)
            close(rd); close(wr)
            finish(r, fdsBefore: fds)
        }
    }

    @Test("readiness on a socketpair: writable, then readable after modify, hangup", arguments: availableBackends)
    func socketpairModify(_ backend: Reactor.Backend) async throws {
        await #expect(processExitsWith: .success) { [backend] in
            await settleChildProcess()
            let fds = openFDCount()
            let r = try Reactor(backend: .only(backend))
            let (a, b) = makeSocketPair()
            var seen: [Reactor.Readiness] = []
            let reg = try r.register(a, interest: .writable) { ready in seen.append(ready) }
            try run(r) { !seen.isEmpty }
            #expect(seen.first?.contains(.writable) == true)
            #expect(seen.allSatisfy { !$0.contains(.readable) })
            try r.modify(reg, interest: .readable)
            seen.removeAll()
            try r.runOnce(timeout: .milliseconds(20))
            #expect(seen.isEmpty, "a socket with nothing to read is not readable")
            writeByte(b)
            try run(r) { seen.contains { $0.contains(.readable) } }
            #expect(seen.contains { $0.contains(.readable) })
            #expect(seen.allSatisfy { !$0.contains(.writable) })
            drain(a)
            seen.removeAll()
            close(b)
            try run(r) { seen.contains { $0.contains(.hangup) } }
            #expect(seen.contains { $0.contains(.hangup) })
            try r.deregister(reg)
            close(a)
            finish(r, fdsBefore: fds)
        }
    }

    @Test("edge-triggered registrations report a new edge once", arguments: availableBackends)
    func edgeTriggered(_ backend: Reactor.Backend) async throws {
        await #expect(processExitsWith: .success) { [backend] in
            await settleChildProcess()
            let fds = openFDCount()
            let r = try Reactor(backend: .only(backend))
            let (rd, wr) = makePipe()
            var calls = 0
            let reg = try r.register(rd, interest: .readable, trigger: .edge) { _ in calls += 1 }
            writeByte(wr)
            try run(r) { calls >= 1 }
            // Not drained: level would report again, edge must not.
            for _ in 0..<5 { try r.runOnce(timeout: .milliseconds(5)) }
            #expect(calls == 1)
            writeByte(wr)
            try run(r) { calls >= 2 }
            #expect(calls == 2)
            try r.deregister(reg)
            close(rd); close(wr)
            finish(r, fdsBefore: fds)
        }
    }

    @Test("deregister inside a callback stops events, also for events already collected", arguments: availableBackends)
    func deregisterInsideCallback(_ backend: Reactor.Backend) async throws {
        await #expect(processExitsWith: .success) { [backend] in
            await settleChildProcess()
            let fds = openFDCount()
            let r = try Reactor(backend: .only(backend))
            let (rd1, wr1) = makePipe()
            let (rd2, wr2) = makePipe()
            var calls1 = 0, calls2 = 0
            var reg1: Reactor.Registration?
            var reg2: Reactor.Registration?
            // Whichever fires first deregisters both: the other must not run in this iteration.
            reg1 = try r.register(rd1, interest: .readable) { _ in
                calls1 += 1
                try? r.deregister(reg1!)
                if let x = reg2 { try? r.deregister(x); reg2 = nil }
            }
            reg2 = try r.register(rd2, interest: .readable) { _ in
                calls2 += 1
                try? r.deregister(reg2!)
                if let x = reg1 { try? r.deregister(x); reg1 = nil }
            }
            let first = reg1!, second = reg2!
            writeByte(wr1); writeByte(wr2)
            try run(r) { calls1 + calls2 >= 1 }
            for _ in 0..<3 { try r.runOnce(timeout: .milliseconds(5)) }
            #expect(calls1 + calls2 == 1)
            #expect(throws: ReactorError.self) { try r.deregister(first) }
            #expect(throws: ReactorError.self) { try r.deregister(second) }
            close(rd1); close(wr1); close(rd2); close(wr2)
            finish(r, fdsBefore: fds)
        }
    }

    @Test("a descriptor closed while registered and its number reused gets no stale event", arguments: availableBackends)
    func fdReuse(_ backend: Reactor.Backend) async throws {
        await #expect(processExitsWith: .success) { [backend] in
            await settleChildProcess()
            let fds = openFDCount()
            let r = try Reactor(backend: .only(backend))
            let (rd, wr) = makePipe()
            var oldCalls = 0
            let oldReg = try r.register(rd, interest: .readable) { _ in oldCalls += 1 }
            writeByte(wr)
            close(rd)  // closed without deregistering: a user bug the reactor must contain
            close(wr)
            let (rd2, wr2) = makePipe()
            #expect(rd2 == rd, "the kernel reuses the lowest free number")
            var newCalls = 0
            let newReg = try r.register(rd2, interest: .readable) { _ in newCalls += 1; drain(rd2) }
            for _ in 0..<3 { try r.runOnce(timeout: .milliseconds(5)) }
            #expect(oldCalls == 0)
            #expect(newCalls == 0, "nothing was written to the new pipe")
            writeByte(wr2)
            try run(r) { newCalls >= 1 }
            #expect(newCalls >= 1)
            #expect(oldCalls == 0)
            // The old registration is dead: deregistering it is an error and must not touch the new one.
            #expect(throws: ReactorError.self) { try r.deregister(oldReg) }
            writeByte(wr2)
            let before = newCalls
            try run(r) { newCalls > before }
            #expect(newCalls > before)
            try r.deregister(newReg)
            close(rd2); close(wr2)
            finish(r, fdsBefore: fds)
        }
    }

    @Test("timers fire in deadline order; equal deadlines in scheduling order", arguments: availableBackends)
    func timerOrder(_ backend: Reactor.Backend) async throws {
        await #expect(processExitsWith: .success) { [backend] in
            await settleChildProcess()
            let fds = openFDCount()
            let r = try Reactor(backend: .only(backend))
            var order: [Int] = []
            let delays = [30, 10, 20, 0, 10, 5]
            // Deadlines from one base time: `schedule(after:)` reads the clock at each call, and a
            // thread preempted between two calls would shift the later deadlines past the order
            // this test expects (and the two 10 ms timers would not be due at the same instant).
            let base = Sys.monotonicNanoseconds()
            for (i, d) in delays.enumerated() {
                _ = r.timers.schedule(deadline: base &+ Int64(d) * 1_000_000) { order.append(i) }
            }
            try run(r) { order.count == delays.count }
            #expect(order == [3, 5, 1, 4, 2, 0])
            finish(r, fdsBefore: fds)
        }
    }

    @Test("a timer cancelled from inside another timer's callback never fires", arguments: availableBackends)
    func cancelFromTimer(_ backend: Reactor.Backend) async throws {
        await #expect(processExitsWith: .success) { [backend] in
            await settleChildProcess()
            let fds = openFDCount()
            let r = try Reactor(backend: .only(backend))
            var fired: [String] = []
            var victim: Reactor.Timer?
            try r.schedule(after: .milliseconds(5)) {
                fired.append("first")
                #expect(r.cancel(victim!))
            }
            // Due at the same time as the canceller's iteration, so both are collected together.
            victim = try r.schedule(after: .milliseconds(5)) { fired.append("victim") }
            try r.schedule(after: .milliseconds(30)) { fired.append("last") }
            try run(r) { fired.contains("last") }
            #expect(fired == ["first", "last"])
            #expect(!r.cancel(victim!), "a cancelled timer cannot be cancelled twice")
            finish(r, fdsBefore: fds)
        }
    }

    @Test("repeating timers repeat until cancelled; many timers need no kernel object each", arguments: availableBackends)
    func repeatingAndMany(_ backend: Reactor.Backend) async throws {
        await #expect(processExitsWith: .success) { [backend] in
            await settleChildProcess()
            let fds = openFDCount()
            let r = try Reactor(backend: .only(backend))
            var ticks = 0
            var t: Reactor.Timer?
            t = try r.schedule(after: .milliseconds(1), repeating: .milliseconds(1)) {
                ticks += 1
                if ticks == 5 { r.cancel(t!) }
            }
            let withReactor = openFDCount()
            var fired = 0
            var handles: [Reactor.Timer] = []
            for i in 0..<20_000 {
                handles.append(try r.schedule(after: .milliseconds(1 + i % 20)) { fired += 1 })
            }
            #expect(openFDCount() == withReactor, "timers open no descriptors")
            for (i, h) in handles.enumerated() where i % 2 == 0 { #expect(r.cancel(h)) }
            try run(r) { r.registrationCount == 0 }
            #expect(ticks == 5)
            #expect(fired == 10_000)
            finish(r, fdsBefore: fds)
        }
    }

    @Test("bad input gets typed errors and the reactor keeps running", arguments: availableBackends)
    func badInput(_ backend: Reactor.Backend) async throws {
        await #expect(processExitsWith: .success) { [backend] in
            await settleChildProcess()
            let fds = openFDCount()
            let r = try Reactor(backend: .only(backend))
            let (rd, wr) = makePipe()
            close(rd); close(wr)
            do { try r.register(rd, interest: .readable) { _ in }; Issue.record("registered a closed fd") } catch let error as ReactorError {
                #expect(error.code == .invalidDescriptor)
            }
            do { try r.register(-1, interest: .readable) { _ in }; Issue.record("registered -1") } catch let error as ReactorError {
                #expect(error.code == .invalidDescriptor)
            }
            do { try r.schedule(after: .milliseconds(-1)) {}; Issue.record("negative delay accepted") } catch let error as ReactorError {
                #expect(error.code == .invalidArgument)
            }
            do { try r.schedule(after: .zero, repeating: .zero) {}; Issue.record("zero interval accepted") } catch let error as ReactorError {
                #expect(error.code == .invalidArgument)
            }
            do { try r.watchChild(1) { _ in }; Issue.record("pid 1 is not our child") } catch let error as ReactorError {
                #expect(error.code == .notAChild)
            }
            do { try r.watchChild(-5) { _ in }; Issue.record("pid -5 accepted") } catch let error as ReactorError {
                #expect(error.code == .notAChild)
            }
            do { try r.watchSignal(SIGKILL) { _ in }; Issue.record("SIGKILL watched") } catch let error as ReactorError {
                #expect(error.code == .invalidArgument)
            }
            // Still works.
            var ran = false
            try r.schedule(after: .zero) { ran = true }
            try run(r) { ran }
            #expect(ran)
            finish(r, fdsBefore: fds)
        }
    }

    @Test("a child exiting with 42 and one killed by SIGKILL are reported right", arguments: availableBackends)
    func children(_ backend: Reactor.Backend) async throws {
        await #expect(processExitsWith: .success) { [backend] in
            await settleChildProcess()
            let fds = openFDCount()
            let r = try Reactor(backend: .only(backend))
            let a = spawnShell("exit 42")
            let b = spawnShell("exec sleep 30")
            var statusA: Reactor.ExitStatus?
            var statusB: Reactor.ExitStatus?
            try r.watchChild(a) { statusA = $0 }
            let wb = try r.watchChild(b) { statusB = $0 }
            try r.signalChild(wb, SIGKILL)
            try run(r) { statusA != nil && statusB != nil }
            #expect(statusA == .exited(42))
            #expect(statusB == .signaled(SIGKILL))
            // Both reaped: the pids are gone.
            var info = siginfo_t()
            #expect(waitid(P_PID, id_t(a), &info, WEXITED | WNOHANG) == -1)
            #expect(waitid(P_PID, id_t(b), &info, WEXITED | WNOHANG) == -1)
            finish(r, fdsBefore: fds)
        }
    }

    @Test("execute from 8 threads x 10,000 jobs: each runs once, on the reactor thread", arguments: availableBackends)
    func executeFromThreads(_ backend: Reactor.Backend) async throws {
        await #expect(processExitsWith: .success) { [backend] in
            await settleChildProcess()
            let fds = openFDCount()
            let r = try Reactor(backend: .only(backend))
            let handle = r.handle
            var counts = [Int](repeating: 0, count: 8 * 10_000)
            var offThread = 0
            let reactorThread = pthread_self()
            final class Box: @unchecked Sendable { var counts: UnsafeMutablePointer<Int>; var off: UnsafeMutablePointer<Int>
                init(_ c: UnsafeMutablePointer<Int>, _ o: UnsafeMutablePointer<Int>) { counts = c; off = o } }
            try counts.withUnsafeMutableBufferPointer { buf in
                try withUnsafeMutablePointer(to: &offThread) { off in
                    // @unchecked: the pointers are only dereferenced on the reactor thread.
                    let box = Box(buf.baseAddress!, off)
                    let done = Atomic<Int>(0)
                    var threads: [pthread_t] = []
                    final class Arg: @unchecked Sendable { let t: Int; let h: Reactor.Handle; let box: Box; let rt: pthread_t
                        init(_ t: Int, _ h: Reactor.Handle, _ b: Box, _ rt: pthread_t) { self.t = t; self.h = h; box = b; self.rt = rt } }
                    for t in 0..<8 {
                        var tid = pthread_t()
                        let arg = Unmanaged.passRetained(Arg(t, handle, box, reactorThread)).toOpaque()
                        pthread_create(&tid, nil, { raw in
                            let arg = Unmanaged<Arg>.fromOpaque(raw!).takeRetainedValue()
                            for j in 0..<10_000 {
                                let k = arg.t * 10_000 + j
                                let box = arg.box, rt = arg.rt
                                arg.h.execute { _ in
                                    box.counts[k] += 1
                                    if pthread_equal(pthread_self(), rt) == 0 { box.off.pointee += 1 }
                                }
                            }
                            return nil
                        }, arg)
                        threads.append(tid)
                    }
                    var finished = 0
                    handle.execute { _ in }  // at least one
                    let deadline = ContinuousClock.now + .seconds(30)
                    while finished < 8 && ContinuousClock.now < deadline {
                        try r.runOnce(timeout: .milliseconds(10))
                        finished = 0
                        for k in stride(from: 9_999, to: 80_000, by: 10_000) where box.counts[k] > 0 { finished += 1 }
                    }
                    for t in threads { pthread_join(t, nil) }
                    try r.runOnce(timeout: .zero)
                    try r.runOnce(timeout: .zero)
                    _ = done
                }
            }
            #expect(counts.allSatisfy { $0 == 1 })
            #expect(offThread == 0)
            finish(r, fdsBefore: fds)
        }
    }

    @Test("busy polling still delivers readiness, timers and jobs", arguments: availableBackends)
    func busyPoll(_ backend: Reactor.Backend) async throws {
        await #expect(processExitsWith: .success) { [backend] in
            await settleChildProcess()
            let fds = openFDCount()
            let r = try Reactor(backend: .only(backend))
            r.busyPoll = .microseconds(200)
            #expect(r.busyPoll == .microseconds(200))
            let (rd, wr) = makePipe()
            var reads = 0, fired = false, jobRan = false
            let reg = try r.register(rd, interest: .readable) { _ in reads += drain(rd) }
            try r.schedule(after: .milliseconds(5)) { fired = true }
            r.execute { _ in jobRan = true }
            writeByte(wr)
            try run(r) { reads == 1 && fired && jobRan }
            #expect(reads == 1 && fired && jobRan)
            r.busyPoll = nil
            #expect(r.busyPoll == nil)
            try r.deregister(reg)
            close(rd); close(wr)
            finish(r, fdsBefore: fds)
        }
    }

    @Test("stop from another thread ends run()", arguments: availableBackends)
    func stopFromThread(_ backend: Reactor.Backend) async throws {
        await #expect(processExitsWith: .success) { [backend] in
            await settleChildProcess()
            let fds = openFDCount()
            let thread = try ReactorThread(backend: .only(backend))
            #expect(thread.backend == backend)
            let hits = Atomic<Int>(0)
            final class Sem: @unchecked Sendable { var s = sem_t(); init() { sem_init(&s, 0, 0) } }
            let sem = Sem()
            thread.handle.execute { reactor in
                #expect(reactor.isOnReactorThread)
                hits.add(1, ordering: .relaxed)
                sem_post(&sem.s)
            }
            sem_wait(&sem.s)
            thread.stop()
            #expect(hits.load(ordering: .relaxed) == 1)
            #expect(thread.handle.execute { _ in } == false, "a stopped reactor refuses jobs")
            #expect(openFDCount() == fds)
        }
    }
}

