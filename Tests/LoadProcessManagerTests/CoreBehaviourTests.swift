import Glibc
import LoadProcessManager
import LPMTestSupport
import Synchronization
import Testing

/// Re-enqueues a refused request from its own completion, `remaining` more times, then resumes.
private func refuseInARow(_ s: Supervisor, _ n: Int, options: RequestOptions,
                          done: @escaping @Sendable (Int, SupervisorError.Code?) -> Void) {
    let refused = Atomic<Int>(0)
    @Sendable func again() {
        s.enqueue([1], options: options) { result in
            guard case .failure(let e) = result else { return done(refused.load(ordering: .relaxed), nil) }
            let k = refused.add(1, ordering: .relaxed).newValue
            if k < n { again() } else { done(k, e.code) }
        }
    }
    again()
}

@Suite("Supervisor core: refusals, resize, errors", .serialized, .timeLimit(.minutes(3)))
struct CoreBehaviourTests {
    @Test("a completion that re-enqueues a refused request 1,000,000 times in a row: no stack growth (pool running)")
    func millionRefusalsRunning() async throws {
        let (s, _) = try await startOnline(testConfig(count: 1))
        let n = 1_000_000
        // A negative timeout is refused at once, on the reactor thread, from the completion.
        let (count, code) = await withCheckedContinuation { c in
            refuseInARow(s, n, options: RequestOptions(timeout: .milliseconds(-1))) { c.resume(returning: ($0, $1)) }
        }
        #expect(count == n)
        #expect(code == .invalidArgument)
        let answer = try await s.enqueue("still serving")
        #expect(answer.text == "still serving")
        await s.softKill()
    }

    @Test("the same after the pool was killed (answers on the caller's thread)")
    func millionRefusalsStopped() async throws {
        let (s, _) = try await startOnline(testConfig(count: 1))
        await s.softKill()
        let (count, code) = await withCheckedContinuation { c in
            refuseInARow(s, 1_000_000, options: RequestOptions()) { c.resume(returning: ($0, $1)) }
        }
        #expect(count == 1_000_000)
        #expect(code == .shutDown)
    }

    @Test("a negative timeout or retry count is invalidArgument at enqueue")
    func invalidOptions() async throws {
        let (s, _) = try await startOnline(testConfig(count: 1))
        for options in [RequestOptions(timeout: .seconds(-1)), RequestOptions(retries: -1)] {
            do { _ = try await s.enqueue("x", options: options); Issue.record("accepted \(options)") } catch {
                #expect(error.code == .invalidArgument, "\(error)")
            }
        }
        await s.softKill()
    }

    @Test("after the restart budget is spent, resize to the original count brings the pool back")
    func resizeAfterBudget() async throws {
        await #expect(processExitsWith: .success) {
            try await leavesNothingBehind {
                var c = testConfig("exit-on-request", count: 2)
                c.restarts = 1
                c.afterBudgetSpent = .stop
                let (s, log) = try await startOnline(c)
                // Each request kills its worker: 1 restart is allowed, then both slots go down.
                for _ in 0..<3 { _ = try? await s.enqueue("die") }
                #expect(await log.wait(isExhausted))
                #expect(await log.wait { if case .noWorkersLeft = $0 { return true }; return false })
                var status = await s.status()
                #expect(status.workers == 0, "down slots are not part of the pool")
                let startedBefore = log.count { if case .workerStarted = $0 { return true }; return false }
                try await s.resize(2)
                status = await s.status()
                #expect(status.workers == 2)
                // Spawned by the resize, or (with a template) forked once their orders are answered.
                let isStarted: (SupervisorEvent) -> Bool = { if case .workerStarted = $0 { return true }; return false }
                #expect(await log.wait(for: startedBefore + 2, isStarted), "two workers spawned by the resize")
                #expect(log.count(isStarted) == startedBefore + 2, "two workers spawned by the resize")
                #expect(await log.wait(for: 2, isOnline), "online again")
                await s.hardKill()
            }
        }
    }

    @Test("spawn failures keep their errno, are reported one by one, and a grow that adds nothing fails")
    func spawnErrors() async throws {
        await #expect(processExitsWith: .success) {
            try await leavesNothingBehind {
                var c = SupervisorConfiguration(workerPath: "/nonexistent/worker", count: 2)
                c.shutdownSignals = []
                let s = try Supervisor(c)
                let log = EventLog(s)
                do { try await s.start(); Issue.record("started") } catch let error as SupervisorError {
                    #expect(error.code == .spawnFailed)
                    #expect(error.underlying?.errno == ENOENT, "\(error)")
                }
                let failed: (SupervisorEvent) -> Bool = { if case .workerSpawnFailed = $0 { return true }; return false }
                #expect(await log.wait(for: 2, failed), "one event per slot")
                do { try await s.resize(3); Issue.record("grew") } catch let error as SupervisorError {
                    #expect(error.code == .spawnFailed)
                }
                #expect(await log.wait(for: 5, failed), "three more")
                await s.hardKill()
            }
        }
    }

    @Test("a handler may re-enter the API: hard kill from a completion, resize from an event")
    func reentrantHandlers() async throws {
        await #expect(processExitsWith: .success) {
            try await leavesNothingBehind {
                let (s, _) = try await startOnline(testConfig(count: 2))
                let answers = Mutex<[SupervisorError.Code?]>([])
                let exits = Atomic<Int>(0)
                s.onEvent { e in  // replaces the log's handler
                    guard case .workerExited = e else { return }
                    exits.add(1, ordering: .relaxed)
                    s.resize(2, completion: { _ in })  // refused (shut down): no harm
                }
                await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                    s.enqueue(Array("a".utf8)) { r in
                        answers.withLock { $0.append(r.error?.code) }
                        s.hardKill(completion: { c.resume() })
                        s.enqueue([2]) { r in answers.withLock { $0.append(r.error?.code) } }
                    }
                }
                #expect(answers.withLock { $0 } == [nil, .shutDown])
                #expect(exits.load(ordering: .relaxed) == 2)
            }
        }
    }
}

@Suite("Liveness", .serialized, .timeLimit(.minutes(2)))
struct LivenessTests {
    @Test("a worker that blocks its thread is unresponsive: killed and replaced, its request fails with workerUnresponsive")
    func hungWorker() async throws {
        await #expect(processExitsWith: .success) {
            try await leavesNothingBehind {
                // The worker blocks its thread on its first request: no answer, no pong.
                var c = testConfig("hang", count: 1)
                c.pingInterval = .milliseconds(20)
                c.unresponsiveTimeout = .milliseconds(300)
                c.retries = 0
                let (s, log) = try await startOnline(c)
                let r = await outcome(s, "stuck")
                #expect(r.error?.code == .workerUnresponsive, "\(r)")
                #expect(await log.wait { if case .workerUnresponsive = $0 { return true }; return false })
                #expect(await log.wait(isRestart), "replaced")
                await s.hardKill()
            }
        }
    }

    @Test("a worker that sends half a frame and stops is unresponsive too")
    func halfFrame() async throws {
        var c = testConfig("half-frame", count: 1)
        c.pingInterval = .milliseconds(20)
        c.unresponsiveTimeout = .milliseconds(300)
        let (s, log) = try await startOnline(c)
        let r = await outcome(s, "half")
        #expect(r.error?.code == .workerUnresponsive, "\(r)")
        #expect(await log.wait { if case .workerUnresponsive = $0 { return true }; return false })
        await s.hardKill()
    }

    @Test("a supervisor stalled while its worker answered: the pong behind the answers is read before the worker is judged, and it is kept")
    func stalledSupervisor() async throws {
        await #expect(processExitsWith: .success) {
            try await leavesNothingBehind { try await stalledWhileAnswered(thenHang: false) }
        }
    }

    @Test("answers a worker wrote before it was killed as unresponsive are delivered, not failed or run again")
    func answersBeforeUnresponsiveKill() async throws {
        await #expect(processExitsWith: .success) {
            try await leavesNothingBehind { try await stalledWhileAnswered(thenHang: true) }
        }
    }

    @Test("idle and busy workers that answer pings are left alone")
    func healthyWorkers() async throws {
        var c = testConfig("slow", count: 2, env: ["LPM_TEST_DELAY_MS": "50"])
        c.pingInterval = .milliseconds(10)
        // Generous: a worker starved of CPU for seconds on a loaded machine is not unresponsive.
        c.unresponsiveTimeout = .seconds(60)
        let (s, log) = try await startOnline(c)
        for i in 0..<40 {
            let r = try await s.enqueue("r\(i)")
            #expect(r.text == "r\(i)")
        }
        try await Task.sleep(for: .milliseconds(300))
        #expect(log.count { if case .workerUnresponsive = $0 { return true }; return false } == 0)
        #expect(log.count(isExit) == 0)
        await s.softKill()
    }
}

/// One worker holds 24 requests with its thread blocked (a ping it has not read is then
/// outstanding); the reactor thread stalls for longer than `unresponsiveTimeout`, and meanwhile the
/// worker answers all 24 (about 100 KB: more than one read of the supervisor's), then reads the
/// ping and answers it, or (`thenHang`) hangs before reading it. Every request must succeed: a
/// worker whose pong sits behind its answers is not unresponsive, and answers written before a
/// kill are delivered.
private func stalledWhileAnswered(thenHang: Bool) async throws {
    let release = "/tmp/lpm-release-\(getpid())-\(UInt64.random(in: 1...UInt64.max))"
    defer { unlink(release) }
    var env = ["LPM_TEST_HOLD": "24", "LPM_TEST_RELEASE": release]
    if thenHang { env["LPM_TEST_THEN_HANG"] = "1" }
    var c = testConfig("answer-on-release", count: 1, env: env)
    c.pingInterval = .milliseconds(20)
    c.unresponsiveTimeout = .seconds(2)
    c.retries = 0
    let (s, log) = try await startOnline(c)
    let pid = try #require(await s.health().first?.pid)
    let answers = Task {
        await withTaskGroup(of: (Int, Result<WorkerResponse, SupervisorError>).self) { group in
            for i in 0..<24 { group.addTask { (i, await outcome(s, "r\(i)")) } }
            return await group.reduce(into: [:]) { $0[$1.0] = $1.1 }
        }
    }
    #expect(await eventually { await s.status().pending == 24 })
    // The worker's thread is blocked now: a ping goes out within 20 ms and stays unanswered.
    try await Task.sleep(for: .milliseconds(200))
    // Stall the reactor thread for longer than unresponsiveTimeout; the worker answers meanwhile.
    let stalled = Atomic<Bool>(false)
    let stall = Task(executorPreference: s.executor) {
        stalled.store(true, ordering: .releasing)
        usleep(3_000_000)
    }
    while !stalled.load(ordering: .acquiring) { try await Task.sleep(for: .milliseconds(5)) }
    close(creat(release, 0o600))
    await stall.value
    let results = await answers.value
    #expect(results.count == 24)
    for (i, r) in results {
        guard case .success(let w) = r else { Issue.record("r\(i): \(r)"); continue }
        #expect(w.bytes.count == 4096 && w.text.hasPrefix("r\(i)."), "r\(i)")
    }
    if thenHang {
        #expect(await log.wait { if case .workerUnresponsive = $0 { return true }; return false })
        #expect(await log.wait(isRestart), "replaced")
    } else {
        try await Task.sleep(for: .milliseconds(300))
        #expect(log.count { if case .workerUnresponsive = $0 { return true }; return false } == 0)
        #expect(await s.health().first?.pid == pid, "the same worker serves")
    }
    await s.hardKill()
}

@Suite("Restart budget: backoff and poison requests", .serialized, .timeLimit(.minutes(2)))
struct BackoffPoisonTests {
    @Test("after the budget is spent, the slot comes back by itself with a growing delay; requests fail fast in between")
    func backoff() async throws {
        var c = testConfig("exit-on-request", count: 1)
        c.restarts = 1
        c.maxRestartsInInterval = .seconds(60)
        // Long enough that the request in between does not miss the gap on a slow machine: 700 ms
        // and then 2 s were missed (the suite in parallel with rings on; the first run after a
        // build, with the page cache cold: this test took 16 s), the slot coming back first and
        // the request going to the new worker, which exits on any request.
        c.afterBudgetSpent = .backoff(initial: .seconds(10), maximum: .seconds(40))
        let (s, log) = try await startOnline(c)
        _ = try? await s.enqueue("die 1")  // crash, restart (charged)
        #expect(await log.wait(isRestart))
        #expect(await log.wait(for: 2, isOnline))
        _ = try? await s.enqueue("die 2")  // crash: the budget is spent
        #expect(await log.wait(isExhausted))
        let scheduled: (SupervisorEvent) -> Bool = { if case .workerRestartScheduled = $0 { return true }; return false }
        #expect(await log.wait(scheduled))
        // In between, no worker: a request fails at once.
        let between = await outcome(s, "between")
        #expect(between.error?.code == .noWorkers, "\(between)")
        // The slot comes back by itself.
        #expect(await log.wait(for: 2, seconds: 60, isRestart), "back without a resize")
        #expect(await log.wait(for: 3, isOnline))
        _ = try? await s.enqueue("die 3")  // crash again: refused again, the delay doubles
        #expect(await log.wait(for: 2, scheduled))
        let delays = log.all.compactMap { e -> Duration? in if case .workerRestartScheduled(_, let d) = e { return d }; return nil }
        #expect(delays.prefix(2) == [.seconds(10), .seconds(20)], "\(delays)")
        await s.hardKill()
        #expect(await s.status().isShutDown)
    }

    @Test("a request that kills every worker it lands on is failed as poison after poisonThreshold deaths, whatever its retries")
    func poison() async throws {
        var c = testConfig("exit-on-request", count: 2)
        c.retries = 10
        c.restarts = 20
        c.poisonThreshold = 2
        let (s, log) = try await startOnline(c)
        let r = await outcome(s, "poison")
        #expect(r.error?.code == .poisonRequest, "\(r)")
        #expect(r.error?.attempts == 2)
        #expect(log.count(isExhausted) == 0, "the pool survives")
        #expect(await log.wait(for: 2, isRestart))
        await s.hardKill()
    }
}

@Suite("A worker's last answers", .timeLimit(.minutes(1)))
struct LastAnswersTests {
    @Test("a worker that answers many requests at once and exits: every answer is delivered, none failed or retried")
    func answersBeforeExit() async throws {
        let n = 256
        var c = testConfig("answer-all-exit", count: 1, env: ["LPM_TEST_HOLD": "\(n)"])
        c.maxConcurrentRequestsPerWorker = n
        c.retries = 0
        let (s, log) = try await startOnline(c)
        let results = await withTaskGroup(of: (Int, Result<WorkerResponse, SupervisorError>).self) { group in
            for i in 0..<n { group.addTask { (i, await outcome(s, "a\(i)")) } }
            return await group.reduce(into: [(Int, Result<WorkerResponse, SupervisorError>)]()) { $0.append($1) }
        }
        #expect(results.count == n)
        // 128 KiB of answers, then the exit: the supervisor reads a socket once per readiness, so
        // the exit is usually seen with answers still unread. Each must come through.
        for (i, r) in results {
            switch r {
            case .success(let w): #expect(w.text.hasPrefix("a\(i).") && w.data.count == 512 && w.attempts == 1, "request \(i)")
            case .failure(let e): Issue.record("request \(i) failed: \(e)")
            }
        }
        #expect(await log.wait { if case .workerExited = $0 { return true }; return false }, "the worker exited")
        await s.softKill()
    }
}

