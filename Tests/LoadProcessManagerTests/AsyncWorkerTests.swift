import Glibc
import LoadProcessManager
import LPMTestSupport
import Synchronization
import Testing


/// Async request handlers in the worker runtime, against real worker processes
/// (`lpm-test-worker`'s `async-*` and `task-trap` modes).
@Suite("Async workers", .serialized, .timeLimit(.minutes(2)))
struct AsyncWorkerTests {
    /// Sends `long` then, once it is pending, `short`, to one worker: an async handler that
    /// awaits lets the second finish first. `long` ("hold") waits until another request has
    /// completed, so it can only finish if `short` ran while it was suspended (no timing: with
    /// a 3 s sleep as the long one, a worker starved of CPU for seconds, as at the start of the
    /// parallel suite, fired both timers together, the long one first).
    private func interleave(_ mode: String) async throws {
        let (s, log) = try await startOnline(testConfig(mode, count: 1))
        let long = Task { try await s.enqueue("hold").text }
        #expect(await eventually { await s.status().pending == 1 })
        let short = try await s.enqueue("20").text
        #expect(short == "20:1:main", "the short request finished first, on the worker's (main) thread")
        #expect(try await long.value == "hold:2:main")
        // Many at once on one worker: every one answered, each once.
        let answers = try await withThrowingTaskGroup(of: String.self) { group in
            for i in 0..<40 { group.addTask { try await s.enqueue(String(i % 5 * 10)).text } }
            return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        let ranks = answers.compactMap { $0.split(separator: ":").dropFirst().first.flatMap { Int($0) } }
        #expect(ranks.sorted() == Array(3...42), "\(answers)")
        #expect(answers.allSatisfy { $0.hasSuffix(":main") })
        #expect(log.count(isRestart) == 0)
        await s.softKill()
    }

    @Test("an async handler (main-actor, as in main.swift) awaits Task.sleep; requests interleave")
    func mainActorHandler() async throws {
        try await interleave("async-sleep")
    }

    @Test("a nonisolated async handler runs on the worker's thread too; requests interleave")
    func nonisolatedHandler() async throws {
        try await interleave("async-nonisolated")
    }

    @Test("Task {} from a synchronous handler in main-actor code runs, and its answer arrives")
    func taskFromSyncHandler() async throws {
        let (s, _) = try await startOnline(testConfig("task-trap", count: 1, env: ["LPM_TEST_DELAY_MS": "10"]))
        #expect(try await s.enqueue("from a task").text == "from a task")
        let answers = try await withThrowingTaskGroup(of: String.self) { group in
            for i in 0..<50 { group.addTask { try await s.enqueue("t\(i)").text } }
            return try await group.reduce(into: Set<String>()) { $0.insert($1) }
        }
        #expect(answers == Set((0..<50).map { "t\($0)" }))
        await s.softKill()
    }

    @Test("cancelling a request cancels the task of its awaiting handler")
    func cancelReachesAwaitingHandler() async throws {
        let (s, _) = try await startOnline(testConfig("async-cancel", count: 1))
        let seen = Mutex<[String]>([])
        s.on("async-cancelled") { event in seen.withLock { $0.append(String(decoding: event.data, as: UTF8.self)) } }
        let task = Task { await outcome(s, "sleeper") }
        #expect(await eventually { await s.status().pending == 1 })
        task.cancel()
        #expect((await task.value).error?.code == .cancelled)
        #expect(await eventually { seen.withLock { $0 } == ["sleeper+cancelled"] }, "\(seen.withLock { $0 })")
        let health = await s.health()
        #expect(health.first?.inFlight == 0, "the worker's slot is freed")
        // A supervisor-side timeout reaches the handler the same way.
        do {
            _ = try await s.enqueue("late", options: RequestOptions(timeout: .milliseconds(100)))
            Issue.record("answered")
        } catch {
            #expect(error.code == .timedOut)
        }
        #expect(await eventually { seen.withLock { $0 }.contains("late+cancelled") }, "\(seen.withLock { $0 })")
        await s.hardKill()
    }

    @Test("an async handler that throws fails the request with the error's description")
    func throwingHandler() async throws {
        let (s, _) = try await startOnline(testConfig("async-throw", count: 1))
        do { _ = try await s.enqueue("x"); Issue.record("answered") } catch {
            #expect(error.code == .workerError)
            #expect(error.message == "async handler failed on purpose")
        }
        await s.softKill()
    }

    @Test("an async handler that returns without answering fails the request (it is answered once)")
    func silentHandler() async throws {
        let (s, log) = try await startOnline(testConfig("async-silent", count: 1))
        for _ in 0..<3 {
            do { _ = try await s.enqueue("x"); Issue.record("answered") } catch {
                #expect(error.code == .workerError)
                #expect(error.message == "the request handler returned without answering")
            }
        }
        #expect(log.count(isViolation) == 0)
        await s.softKill()
    }

    @Test("CPU-heavy work in a detached task leaves the worker's loop free for other requests")
    func detachedWork() async throws {
        let (s, _) = try await startOnline(testConfig("async-detached", count: 1))
        // The spin lasts until the worker's loop has answered "quick" (at most a minute): "spun"
        // says the loop answered it while the CPU-heavy task ran, whatever the scheduling.
        let heavy = Task { try await s.enqueue("spin:60000").text }
        #expect(await eventually { await s.status().pending == 1 })
        #expect(try await s.enqueue("quick").text == "quick")
        #expect(try await heavy.value == "spun")
        await s.softKill()
    }

    @Test("busy() and ready() from an async handler: every request answered, the worker kept")
    func busyAndReady() async throws {
        let (s, log) = try await startOnline(testConfig("async-busy", count: 1, env: ["LPM_TEST_DELAY_MS": "30"]))
        let answers = try await withThrowingTaskGroup(of: String.self) { group in
            for i in 0..<6 { group.addTask { try await s.enqueue("b\(i)").text } }
            return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        #expect(answers.count == 6)
        #expect(Set(answers.map { $0.split(separator: ":")[1] }).count == 6, "\(answers)")
        #expect(log.count(isRestart) == 0 && log.count(isViolation) == 0)
        await s.softKill()
        #expect(await s.status().isShutDown)
    }

    @Test("a streamed answer written from an async handler, with awaits between chunks")
    func streamedAnswer() async throws {
        let (s, _) = try await startOnline(testConfig("async-stream", count: 1))
        let n = 300_000
        let response = try await s.enqueue(Array("\(n):5".utf8))
        #expect(response.text == "streaming")
        let stream = try #require(response.stream)
        var received: [UInt8] = []
        for try await chunk in stream { received += chunk }
        #expect(received == patternBytes(from: 0, count: n, seed: 5))
        await s.softKill()
    }

    @Test("a soft kill waits for an awaiting handler's answer")
    func softKillWaits() async throws {
        var c = testConfig("async-sleep", count: 1)
        c.softKillTimeout = nil  // however slow the machine, the kill waits
        let (s, _) = try await startOnline(c)
        let sleeper = Task { try await s.enqueue("300").text }
        #expect(await eventually { await s.status().pending == 1 })
        await s.softKill()
        #expect(try await sleeper.value == "300:1:main")
        #expect(await s.status().isShutDown)
    }

    @Test("reused requests: one kept by its handler, or whose payload is kept, is never overwritten")
    func reuseKeepsWhatIsKept() async throws {
        let (s, _) = try await startOnline(testConfig("reuse-check", count: 1))
        let payloads = (0..<300).map { i in
            i % 7 == 0 ? "later:\(i)" : i % 5 == 0 ? "keep:\(i)" : i % 3 == 0 ? "hold:\(i)" : "echo \(i) " + String(repeating: "x", count: i)
        }
        let answers = try await withThrowingTaskGroup(of: (String, String).self) { group in
            for p in payloads { group.addTask { (p, try await s.enqueue(p).text) } }
            return try await group.reduce(into: [(String, String)]()) { $0.append($1) }
        }
        for (sent, got) in answers {
            #expect(got == (sent.hasPrefix("keep:") || sent.hasPrefix("hold:") ? "ok" : sent), "sent \(sent)")
        }
        let kept = try await s.enqueue("dump").text.split(separator: ",").map(String.init)
        #expect(Set(kept) == Set(payloads.filter { $0.hasPrefix("keep:") }))
        let held = try await s.enqueue("dump-held").text.split(separator: ",").map(String.init)
        #expect(Set(held) == Set(payloads.filter { $0.hasPrefix("hold:") }))
        await s.softKill()
    }

    @Test("answering off the worker's thread stops the worker rather than racing its loop")
    func offThreadAnswerStopsTheWorker() async throws {
        var c = testConfig("off-thread", count: 1)
        c.retries = 0
        let (s, log) = try await startOnline(c)
        do { _ = try await s.enqueue("x"); Issue.record("answered") } catch {
            #expect(error.code == .workerExited, "\(error)")
        }
        #expect(await log.wait(isExit))
        await s.hardKill()
    }
}
