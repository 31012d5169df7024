import LPMTestSupport
import Glibc
import LoadProcessManager
import LPMReactor
import LPMWire
import Synchronization
import Testing

// Tests that count the process's descriptors, threads or children run their body in an exit test
// (`#expect(processExitsWith:)`, a child process of its own), so that tests running in parallel
// cannot disturb the counts; issues recorded there are reported here.
@Suite("Supervisor and Worker", .serialized, .timeLimit(.minutes(2)))
struct SupervisorTests {
    @Test("two echo workers answer requests; ids are UUIDs; nothing is left behind")
    func echo() async throws {
        await #expect(processExitsWith: .success) {
            await settleChildProcess()
            // Task.sleep opens the concurrency runtime's timerfd on first use: do that first.
            try await Task.sleep(for: .milliseconds(1))
            let fds = openFDCount()
            let (s, log) = try await startOnline(testConfig())
            var ids = Set<RequestID>()
            for i in 0..<10 {
                let r = try await s.enqueue("hello \(i)")
                #expect(r.text == "hello \(i)")
                #expect(!r.hasStream)
                #expect(r.attempts == 1)
                ids.insert(r.id)
            }
            #expect(ids.count == 10)
            let health = await s.health()
            #expect(health.count == 2)
            #expect(health.allSatisfy { $0.pid > 0 && $0.state == .ready })
            #expect(health.map(\.completed).reduce(0, +) == 10)
            await s.softKill()
            #expect(log.count(isExit) == 2)
            #expect(hasNoChildren())
            try await Task.sleep(for: .milliseconds(50))  // the reactor thread closes its descriptors as it ends
            #expect(openFDCount() == fds, "\(fdList())")
        }
    }

    @Test("a burst of 10,000 requests spreads across both workers")
    func burstSpreads() async throws {
        await #expect(processExitsWith: .success) {
            var c = testConfig("pid")
            c.maxConcurrentRequestsPerWorker = 64
            let (s, _) = try await startOnline(c)
            let counts = Mutex<[String: Int]>([:])
            let done = Atomic<Int>(0)
            for _ in 0..<10_000 {
                s.enqueue([1]) { result in
                    if case .success(let r) = result { counts.withLock { $0[r.text, default: 0] += 1 } }
                    done.add(1, ordering: .relaxed)
                }
            }
            let deadline = ContinuousClock.now + .seconds(60)
            while done.load(ordering: .relaxed) < 10_000 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
            let final = counts.withLock { $0 }
            #expect(final.values.reduce(0, +) == 10_000)
            #expect(final.count == 2)
            // Each worker took at least its first full batch (a starved one may take little more:
            // the split is not a fair share).
            #expect(final.values.allSatisfy { $0 >= c.maxConcurrentRequestsPerWorker }, "each worker took a share: \(final)")
            await s.hardKill()
            #expect(hasNoChildren())
        }
    }

    @Test("a worker SIGKILLed with requests in flight: retried when attempts are left")
    func killedRetried() async throws {
        var c = testConfig("slow", env: ["LPM_TEST_DELAY_MS": "1000"])
        c.retries = 2
        let (s, log) = try await startOnline(c)
        let victim = await s.health()[0].pid
        let results = Mutex<[Result<WorkerResponse, SupervisorError>]>([])
        for i in 0..<8 { s.enqueue([UInt8(i)]) { r in results.withLock { $0.append(r) } } }
        // Kill it once it holds requests (however slow the machine is).
        let held = ContinuousClock.now + .seconds(20)
        while await s.health().first(where: { $0.pid == victim })?.inFlight ?? 0 == 0 && ContinuousClock.now < held {
            try await Task.sleep(for: .milliseconds(2))
        }
        kill(victim, SIGKILL)
        let deadline = ContinuousClock.now + .seconds(20)
        while results.withLock({ $0.count }) < 8 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        let all = results.withLock { $0 }
        #expect(all.count == 8)
        #expect(all.allSatisfy { if case .success = $0 { return true }; return false })
        #expect(all.contains { (try? $0.get().attempts) == 2 }, "some were retried")
        #expect(await log.wait(isRestart))
        #expect(await log.wait(for: 2, isOnline), "online again after the full recovery")
        await s.hardKill()
    }

    @Test("a worker SIGKILLed with requests in flight and no retries: failed, naming pid and signal")
    func killedFailed() async throws {
        let (s, _) = try await startOnline(testConfig("never", count: 1))
        let victim = await s.health()[0].pid
        async let answer = s.enqueue("x")
        #expect(await eventually { await s.health()[0].inFlight == 1 })
        kill(victim, SIGKILL)
        do {
            _ = try await answer
            Issue.record("no error")
        } catch let error as SupervisorError {
            #expect(error.code == .workerExited)
            #expect(error.workerPID == victim)
            #expect(error.exitStatus == .signaled(SIGKILL))
            #expect(error.attempts == 1)
            #expect(error.message.contains("\(victim)"))
            #expect(error.message.contains("SIGKILL"))
        }
        await s.hardKill()
    }

    @Test("a crash loop stops after exactly the restart budget; requests then fail at once")
    func crashLoop() async throws {
        await #expect(processExitsWith: .success) {
            var c = testConfig("crash-on-start", count: 1)
            c.restarts = 3
            // The slot stays down: with the default backoff it would come back after 1 s and crash
            // again, which a slow run would count below.
            c.afterBudgetSpent = .stop
            let s = try Supervisor(c)
            let log = EventLog(s)
            async let queued = s.enqueue("queued before the budget ran out")
            try await s.start()
            #expect(await log.wait { if case .noWorkersLeft = $0 { return true }; return false })
            #expect(log.count(isRestart) == 3)
            #expect(log.count(isExhausted) == 1)
            #expect(log.count(isExit) == 4)
            do { _ = try await queued; Issue.record("answered") } catch let error as SupervisorError { #expect(error.code == .noWorkers) }
            do { _ = try await s.enqueue("late"); Issue.record("answered") } catch let error as SupervisorError { #expect(error.code == .noWorkers) }
            await s.hardKill()
            #expect(hasNoChildren())
        }
    }

    @Test("busy workers get nothing; the queue limit is enforced")
    func busyGetsNothing() async throws {
        var c = testConfig("busy")
        c.maxQueueLength = 3
        let s = try Supervisor(c)
        try await s.start()
        // Wait until both workers have said ready then busy (generous, for a loaded machine).
        let deadline = ContinuousClock.now + .seconds(20)
        while await !s.health().allSatisfy({ $0.state == .busy }) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        let results = Mutex<[Result<WorkerResponse, SupervisorError>]>([])
        for _ in 0..<4 { s.enqueue([1]) { r in results.withLock { $0.append(r) } } }
        try await Task.sleep(for: .milliseconds(300))
        let health = await s.health()
        #expect(health.allSatisfy { $0.state == .busy && $0.inFlight == 0 && $0.completed == 0 })
        let status = await s.status()
        #expect(status.queued == 3 && status.pending == 3 && status.workers == 2 && status.ready == 0 && !status.isShutDown)
        let early = results.withLock { $0 }
        #expect(early.count == 1 && early.first?.error?.code == .queueFull)
        await s.hardKill()
        let all = results.withLock { $0 }
        #expect(all.count == 4)
        #expect(all.filter { $0.error?.code == .shutDown }.count == 3)
    }

    @Test("maxQueueLength 0: a request a worker takes at once is served, one that would wait is refused")
    func queueLimitZero() async throws {
        var c = testConfig("never", count: 1)
        c.maxConcurrentRequestsPerWorker = 1
        c.maxQueueLength = 0
        let (s, _) = try await startOnline(c)
        let first = Task { await outcome(s, "taken at once") }
        #expect(await eventually { await s.status().pending == 1 }, "the first request went to the free worker")
        let second = await outcome(s, "would wait")
        #expect(second.error?.code == .queueFull, "\(second)")
        first.cancel()
        #expect((await first.value).error?.code == .cancelled)
        await s.hardKill()
    }

    @Test("with busy polling on both sides, requests are answered")
    func busyPollPool() async throws {
        await #expect(processExitsWith: .success) {
            var c = testConfig()
            c.busyPoll = .microseconds(50)
            let (s, _) = try await startOnline(c)
            for i in 0..<200 { #expect(try await s.enqueue("p\(i)").text == "p\(i)") }
            await s.softKill()
            #expect(hasNoChildren())
        }
    }

    @Test("ready() twice is harmless")
    func readyTwice() async throws {
        let (s, log) = try await startOnline(testConfig("ready-twice"))
        #expect(try await s.enqueue("a").text == "a")
        try await Task.sleep(for: .milliseconds(100))
        #expect(log.count(isOnline) == 1)
        await s.softKill()
    }

    @Test("a timeout fires once; the worker is told to cancel; a late answer is dropped")
    func timeouts() async throws {
        // The worker holds each request with its thread blocked until the release file exists,
        // then answers it: the timeout fires first whatever the scheduling, and the answer
        // written after it (before the worker reads the cancel) arrives late.
        let release = "/tmp/lpm-release-\(getpid())-\(UInt64.random(in: 1...UInt64.max))"
        defer { unlink(release) }
        var c = testConfig("answer-on-release", count: 1, env: ["LPM_TEST_HOLD": "1", "LPM_TEST_RELEASE": release])
        c.requestTimeout = .milliseconds(100)
        let (s, log) = try await startOnline(c)
        let calls = Atomic<Int>(0)
        let first = Mutex<SupervisorError?>(nil)
        s.enqueue([1]) { r in calls.add(1, ordering: .relaxed); first.withLock { $0 = r.error } }
        #expect(await eventually { calls.load(ordering: .relaxed) == 1 })
        #expect(first.withLock { $0?.code } == .timedOut)
        close(creat(release, 0o600))
        // The late answer did not hurt the worker: it still serves, within a longer timeout. It
        // answers in order on one channel, so the late answer has been read (and dropped) by now.
        let r = try await s.enqueue([2], options: RequestOptions(timeout: .seconds(60)))
        #expect(r.data.first == 2 && r.data.count == 4096)
        #expect(calls.load(ordering: .relaxed) == 1)
        #expect(log.count(isViolation) == 0)
        #expect(log.count(isExit) == 0)
        await s.hardKill()
    }

    @Test("garbage on a worker's channel kills only that worker", arguments: ["garbage", "lie"])
    func garbage(_ mode: String) async throws {
        await #expect(processExitsWith: .success) { [mode] in
            var c = testConfig(mode, count: 1)
            c.restarts = 5
            let (s, log) = try await startOnline(c)
            let pid = await s.health()[0].pid
            do {
                _ = try await s.enqueue("x", options: RequestOptions(timeout: .seconds(5)))
                if mode == "garbage" { Issue.record("answered") }
            } catch let error as SupervisorError {
                #expect(error.code == .protocolViolation)
            }
            #expect(await log.wait(isViolation))
            #expect(await log.wait(isRestart))
            let after = await s.health()
            #expect(after[0].pid != pid && after[0].pid > 0)
            #expect(after[0].restarts == 1)
            await s.hardKill()
            #expect(hasNoChildren())
        }
    }

    @Test("softKill with requests in flight answers every one, then refuses new ones")
    func softKillDrains() async throws {
        await #expect(processExitsWith: .success) {
            let (s, _) = try await startOnline(testConfig("slow", env: ["LPM_TEST_DELAY_MS": "200"]))
            let results = Mutex<[Result<WorkerResponse, SupervisorError>]>([])
            for i in 0..<200 { s.enqueue([UInt8(i)]) { r in results.withLock { $0.append(r) } } }
            await s.softKill()
            let all = results.withLock { $0 }
            #expect(all.count == 200)
            #expect(all.allSatisfy { if case .success = $0 { return true }; return false })
            do { _ = try await s.enqueue("after"); Issue.record("accepted") } catch let error as SupervisorError { #expect(error.code == .shutDown) }
            #expect(hasNoChildren())
        }
    }

    @Test("soft-kill handlers run and the pool completes")
    func softKillHandler() async throws {
        await #expect(processExitsWith: .success) {
            let (s, log) = try await startOnline(testConfig("softkill-handler"))
            _ = try await s.enqueue("x")
            await s.softKill()
            #expect(log.all.allSatisfy { if case .workerExited(_, _, let status, let expected) = $0 { return status == .exited(0) && expected }; return true })
            #expect(hasNoChildren())
        }
    }

    @Test("hardKill fails every pending request with shutDown")
    func hardKillFails() async throws {
        await #expect(processExitsWith: .success) {
            let (s, _) = try await startOnline(testConfig("never"))
            let results = Mutex<[SupervisorError?]>([])
            for _ in 0..<50 { s.enqueue([1]) { r in results.withLock { $0.append(r.error) } } }
            try await Task.sleep(for: .milliseconds(100))
            await s.hardKill()
            let all = results.withLock { $0 }
            #expect(all.count == 50)
            #expect(all.allSatisfy { $0?.code == .shutDown })
            #expect(hasNoChildren())
        }
    }

    @Test("custom events both ways, with replies; broadcasts reach every worker")
    func events() async throws {
        let (s, _) = try await startOnline(testConfig("events"))
        s.on("hello") { e in e.reply(Array("reply to ".utf8) + e.data) }
        let recorded = Mutex<[pid_t]>([])
        s.on("recorded") { e in recorded.withLock { $0.append(e.pid) } }
        let r = try await s.enqueue("you")
        #expect(r.text == "reply to you")
        s.broadcast("record", Array("b".utf8))
        let deadline = ContinuousClock.now + .seconds(10)
        while recorded.withLock({ $0.count }) < 2 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(Set(recorded.withLock { $0 }).count == 2)
        await s.softKill()
    }

    @Test("handlers that capture their supervisor, or keep the events they get, do not keep it alive once it stopped")
    func handlersLetGoAtStop() async throws {
        final class Kept: Sendable {
            let events = Mutex<[WorkerEvent]>([])
        }
        final class Watch: @unchecked Sendable {
            weak var supervisor: Supervisor?  // written once below, then only read
        }
        let kept = Kept(), watch = Watch()
        try await {
            let (s, _) = try await startOnline(testConfig("events"))
            // Both close a cycle through the pool: the handler holds the supervisor; the kept
            // events hold their reply, which reaches the pool.
            s.on("hello") { e in
                kept.events.withLock { $0.append(e) }
                e.reply(Array("to \(s.executor)".utf8).prefix(2) + e.data)
            }
            s.onEvent { _ in _ = s }
            #expect(try await s.enqueue("you").text == "toyou")
            await s.softKill()
            watch.supervisor = s
        }()
        #expect(await eventually(seconds: 20) { watch.supervisor == nil }, "the stopped supervisor was freed")
        #expect(kept.events.withLock { $0.count } == 1)
        kept.events.withLock { $0[0].reply([1]) }  // after the end: a no-op, not a crash
    }

    @Test("health reports pid, RSS and heap per worker")
    func health() async throws {
        var c = testConfig()
        c.healthInterval = .milliseconds(50)
        let (s, _) = try await startOnline(c)
        // Under a sanitizer (scripts/sanitizers.sh sets TSAN_OPTIONS or ASAN_OPTIONS) its
        // allocator stands in for malloc, and mallinfo2 reports nothing.
        let heapReported = getenv("TSAN_OPTIONS") == nil && getenv("ASAN_OPTIONS") == nil
        // Until every worker's figures have come in (the heap figures come from the worker).
        _ = await eventually { await s.health().allSatisfy { $0.rss > 0 && (!heapReported || $0.heapTotal > 0) } }
        let h = await s.health()
        #expect(h.count == 2)
        for w in h {
            #expect(w.pid > 0)
            #expect(kill(w.pid, 0) == 0)
            #expect(w.rss > 100_000)
            if heapReported {
                #expect(w.heapTotal > 0 && w.heapUsed > 0 && w.heapUsed <= w.heapTotal)
            }
        }
        await s.softKill()
    }

    @Test("oversized payloads: refused at enqueue; the worker runtime refuses to send one")
    func oversized() async throws {
        var c = testConfig("big", count: 1, env: ["LPM_TEST_SIZE": "5000"])
        c.maxPayload = 4096
        let (s, log) = try await startOnline(c)
        do { _ = try await s.enqueue([UInt8](repeating: 1, count: 5000)); Issue.record("accepted") } catch {
            #expect(error.code == .payloadTooLarge)
        }
        do { _ = try await s.enqueue("small"); Issue.record("answered") } catch {
            #expect(error.code == .workerError)
            #expect(error.message.contains("5000 bytes"))
        }
        #expect(log.count(isViolation) == 0)
        await s.hardKill()
    }

    @Test("a frame header announcing more than the limit is a violation; the worker is replaced")
    func oversizedHeader() async throws {
        var c = testConfig("oversize-header", count: 1)
        c.maxPayload = 4096
        let (s, log) = try await startOnline(c)
        do { _ = try await s.enqueue("x"); Issue.record("answered") } catch {
            #expect(error.code == .protocolViolation)
            #expect(error.message.contains("exceeds the limit"))
        }
        #expect(log.count(isViolation) == 1)
        #expect(await log.wait(isRestart))
        await s.hardKill()
    }

    @Test("a handler failure reaches the caller as workerError")
    func workerError() async throws {
        let (s, _) = try await startOnline(testConfig("fail", count: 1))
        do { _ = try await s.enqueue("x"); Issue.record("answered") } catch {
            #expect(error.code == .workerError)
            #expect(error.message == "handler failed on purpose")
        }
        await s.softKill()
    }

    @Test("a missing worker executable is a spawnFailed error")
    func missingExecutable() async throws {
        let s = try Supervisor(SupervisorConfiguration(workerPath: "/nonexistent/worker"))
        do { try await s.start(); Issue.record("started") } catch {
            #expect(error.code == .spawnFailed)
        }
        do { _ = try await s.enqueue("x"); Issue.record("answered") } catch {
            #expect(error.code == .noWorkers)
        }
        await s.hardKill()
    }

    @Test("1,000,000 requests queued before start are all answered")
    func millionQueued() async throws {
        var c = testConfig()
        c.maxConcurrentRequestsPerWorker = 256
        let s = try Supervisor(c)
        let n = 1_000_000
        let ok = Atomic<Int>(0)
        let failed = Atomic<Int>(0)
        let payload: [UInt8] = [1, 2, 3, 4]
        for _ in 0..<n {
            s.enqueue(payload) { r in
                if case .success = r { ok.add(1, ordering: .relaxed) } else { failed.add(1, ordering: .relaxed) }
            }
        }
        try await s.start()
        let deadline = ContinuousClock.now + .seconds(90)
        while ok.load(ordering: .relaxed) + failed.load(ordering: .relaxed) < n && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(ok.load(ordering: .relaxed) == n)
        #expect(failed.load(ordering: .relaxed) == 0)
        await s.hardKill()
    }
}

@Suite("Supervisor threads", .serialized)
struct SupervisorThreadTests {
    @Test("the whole pool runs on the caller's reactor thread: no thread is created")
    func noThreads() async throws {
        await #expect(processExitsWith: .success) {
            await settleChildProcess()
            // Synchronous, as on a reactor thread: the non-async overloads of start, enqueue and softKill.
            func pool() throws {
                let reactor = try Reactor()
                let before = threadCount()
                var c = testConfig()
                c.healthInterval = .milliseconds(20)
                let s = Supervisor(c, reactor: reactor)
                final class Box: @unchecked Sendable { var answered = 0; var stopped = false }  // reactor thread only
                let box = Box()
                s.start(completion: { _ in })
                for i in 0..<1000 { s.enqueue([UInt8(i & 0xFF)]) { r in if case .success = r { box.answered += 1 } } }
                let deadline = ContinuousClock.now + .seconds(30)
                while box.answered < 1000 && ContinuousClock.now < deadline { try reactor.runOnce(timeout: .milliseconds(10)) }
                #expect(box.answered == 1000)
                #expect(threadCount() <= before, "no thread was created (threads of earlier tests may still be ending)")
                s.softKill { box.stopped = true }
                while !box.stopped && ContinuousClock.now < deadline { try reactor.runOnce(timeout: .milliseconds(10)) }
                #expect(box.stopped)
                #expect(threadCount() <= before, "no thread was created (threads of earlier tests may still be ending)")
                reactor.close()
            }
            try pool()
        }
    }
}

@Suite("Supervisor on each backend", .serialized, .timeLimit(.minutes(2)))
struct SupervisorBackendTests {
    @Test("echo, a burst and a crash, with supervisor and workers on the same backend",
          arguments: [Reactor.Backend.epoll, .uring])
    func backends(_ backend: Reactor.Backend) async throws {
        let result = await #expect(processExitsWith: .success, observing: [\.standardOutputContent]) { [backend] in
            var c = testConfig("pid", env: ["LPM_REACTOR_BACKEND": backend.rawValue])
            c.backend = .only(backend)
            c.retries = 1
            let s: Supervisor
            do { s = try Supervisor(c) } catch let error as SupervisorError {
                print("note: \(backend) backend skipped: \(error)")
                return
            }
            let log = EventLog(s)
            try await s.start()
            #expect(await log.wait(isOnline))
            let done = Atomic<Int>(0)
            let pids = Mutex<Set<String>>([])
            for _ in 0..<5000 {
                s.enqueue([1]) { r in
                    if case .success(let resp) = r { pids.withLock { _ = $0.insert(resp.text) } }
                    done.add(1, ordering: .relaxed)
                }
            }
            let deadline = ContinuousClock.now + .seconds(30)
            while done.load(ordering: .relaxed) < 5000 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
            #expect(done.load(ordering: .relaxed) == 5000)
            #expect(pids.withLock { $0.count } == 2)
            kill(await s.health()[0].pid, SIGKILL)
            #expect(await log.wait(isRestart))
            #expect(try await s.enqueue("x").data.count > 0)
            await s.hardKill()
            #expect(hasNoChildren())
        }
        // The child's notes (a skip and its reason), shown here.
        if let out = result?.standardOutputContent, !out.isEmpty { print(String(decoding: out, as: UTF8.self), terminator: "") }
    }
}

@Suite("Supervisor events to one worker", .serialized, .timeLimit(.minutes(1)))
struct SupervisorEmitTests {
    @Test("an event to one worker gets its reply; a dead worker's pending reply fails")
    func emitWithReply() async throws {
        let (s, _) = try await startOnline(testConfig("echo"))
        let pids = await s.health().map(\.pid)
        for pid in pids {
            let reply = try await s.request(event: "ping-event", Array("hi".utf8), to: pid)
            #expect(reply == Array("pong:hi".utf8))
        }
        do { _ = try await s.request(event: "ping-event", to: 999_999); Issue.record("answered") } catch {
            #expect(error.code == .noWorkers)
        }
        // No handler for this event on the worker: no reply ever comes; the worker's death fails it.
        let pending = Mutex<Result<[UInt8], SupervisorError>?>(nil)
        s.emit("unanswered", to: pids[0]) { r in pending.withLock { $0 = r } }
        // The event reached the worker before its death (one still on its way would find no such
        // worker): submitted after it, on the same channel, a reply to this one comes after it.
        #expect(try await s.request(event: "ping-event", Array("after".utf8), to: pids[0]) == Array("pong:after".utf8))
        kill(pids[0], SIGKILL)
        #expect(await eventually { pending.withLock { $0 != nil } })
        switch pending.withLock({ $0 }) {
        case .failure(let error):
            #expect(error.code == .workerExited)
            #expect(error.workerPID == pids[0])
        case let other: Issue.record("\(String(describing: other))")
        }
        await s.hardKill()
    }
}
