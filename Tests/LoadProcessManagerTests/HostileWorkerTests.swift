import Glibc
import LoadProcessManager
import LPMTestSupport
import Synchronization
import Testing

@Suite("Hostile workers", .serialized, .timeLimit(.minutes(2)))
struct HostileWorkerTests {
    @Test("a worker that floods pings and never reads, floods descriptors or floods events, is killed while the other keeps serving; the supervisor's memory and descriptors stay flat",
          arguments: ["flood-pings", "fd-flood", "flood-events"])
    func floods(_ mode: String) async {
        await #expect(processExitsWith: .success) { [mode] in
            await settleChildProcess()
            try await Task.sleep(for: .milliseconds(1))
            let fds = openFDCount()
            let rss = residentBytes()
            // Slot 0 turns hostile on its first request; slot 1 echoes and must keep serving.
            var c = testConfig(mode, count: 2, env: ["LPM_TEST_ONLY_SLOT": "0"])
            c.afterBudgetSpent = .stop
            c.restarts = 0  // the hostile worker is not replaced
            c.maxEventsPerSecondPerWorker = 1000
            // Small bounds, so that the flood reaches them in a fraction of a second even on a
            // loaded machine (the queue limit is raised to one frame of maxPayload when lower).
            c.maxPayload = 64 << 10
            c.maxQueuedBytesPerWorker = 256 << 10
            let (s, log) = try await startOnline(c)
            let health = await s.health()
            let hostile = try #require(health.first { $0.slot == 0 }?.pid)
            // Many at once, in one hand-over: dispatch by load spreads them over both workers,
            // which sets slot 0 off. (One at a time, every request could go to the worker with
            // the lower RSS, and slot 0 would never turn hostile.)
            await withCompletions(s, (0..<16).map { "first \($0)" })
            var ids: [Int] = []
            for i in 0..<200 {
                // Until the hostile worker is stopped, requests to the other one keep completing.
                let r = await outcome(s, "r\(i)")
                if case .success(let w) = r {
                    #expect(w.text == "r\(i)")
                    if w.workerPID != hostile { ids.append(i) }
                } else {
                    #expect(r.error?.workerPID == hostile, "only requests on the hostile worker may fail: \(r)")
                }
            }
            #expect(ids.count >= 100, "the other worker kept serving: \(ids.count) answers")
            #expect(await log.wait(isViolation), "the hostile worker was stopped as a violation: \(log.all)")
            let reasons = log.all.compactMap { e -> String? in if case .protocolViolation(_, _, let r) = e { return r }; return nil }
            #expect(!reasons.isEmpty, "\(reasons)")
            await s.hardKill()
            #expect(hasNoChildren())
            try await Task.sleep(for: .milliseconds(50))
            #expect(openFDCount() == fds, "\(fdList())")
            let grown = residentBytes() - rss
            #expect(grown < 64 << 20, "the supervisor grew by \(grown) bytes")
        }
    }
}

@Suite("Fault injection", .serialized, .timeLimit(.minutes(3)))
struct FaultInjectionTests {
    @Test("a burst while workers are SIGKILLed at random every few milliseconds: every request answered once, nothing left behind")
    func randomKills() async {
        await #expect(processExitsWith: .success) {
            await settleChildProcess()
            try await Task.sleep(for: .milliseconds(1))
            let fds = openFDCount(), threads = threadCount()
            var c = testConfig("echo", count: 3)
            c.retries = 10_000  // the last requests of the burst can meet many kills in a row
            c.restarts = 10_000
            c.poisonThreshold = nil  // the kills are not the requests' fault
            let (s, log) = try await startOnline(c)
            let n = 20_000
            let answers = Mutex<[Int]>(Array(repeating: 0, count: n))
            let failures = Mutex<[String]>([])
            let done = Atomic<Int>(0)
            for i in 0..<n {
                let payload = Array("r\(i)".utf8)
                s.enqueue(payload) { r in
                    answers.withLock { $0[i] += 1 }
                    switch r {
                    case .success(let w): if w.data != payload { failures.withLock { $0.append("request \(i): a wrong answer") } }
                    case .failure(let e): failures.withLock { $0.append("request \(i): \(e)") }
                    }
                    done.add(1, ordering: .relaxed)
                }
            }
            var kills = 0
            while done.load(ordering: .relaxed) < n {
                try await Task.sleep(for: .milliseconds(Int.random(in: 2...6)))
                if let victim = await s.health().filter({ $0.pid > 0 && $0.state == .ready }).randomElement() {
                    kill(victim.pid, SIGKILL)
                    kills += 1
                }
            }
            #expect(kills > 10, "\(kills) kills")
            #expect(answers.withLock { $0.allSatisfy { $0 == 1 } }, "every request answered exactly once")
            #expect(failures.withLock { $0.isEmpty }, "\(failures.withLock { $0.prefix(3) })")
            #expect(log.count(isRestart) > 0)
            await s.hardKill()
            #expect(hasNoChildren())
            try await Task.sleep(for: .milliseconds(100))
            #expect(openFDCount() == fds, "\(fdList())")
            // The supervisor's own reactor thread has ended; the concurrency runtime may have
            // started its cooperative threads (one per CPU) meanwhile, and keeps them.
            let cooperative = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
            #expect(threadCount() <= threads + cooperative, "threads: \(threadCount()) after, \(threads) before")
        }
    }
}

/// Enqueues every payload in one `enqueue(contentsOf:)` hand-over and waits for every answer.
private func withCompletions(_ s: Supervisor, _ payloads: [String]) async {
    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
        let left = Mutex(payloads.count)
        s.enqueue(contentsOf: payloads.map { Array($0.utf8) }) { _, _ in
            if left.withLock({ $0 -= 1; return $0 }) == 0 { done.resume() }
        }
    }
}
