import Glibc
import LoadProcessManager
import LPMReactor
import Synchronization
import Testing


@Suite("Cancellation", .serialized, .timeLimit(.minutes(2)))
struct CancellationTests {
    @Test("cancelling the task of an in-flight request: cancelled at once, the worker's onCancel runs, its slot is freed")
    func inFlight() async throws {
        let (s, _) = try await startOnline(testConfig("never", count: 1))
        let cancelled = Mutex<[String]>([])
        s.on("cancelled") { event in cancelled.withLock { $0.append(String(decoding: event.data, as: UTF8.self)) } }
        let task = Task { await outcome(s, "in flight") }
        #expect(await eventually { let st = await s.status(); return st.pending == 1 && st.queued == 0 })
        task.cancel()
        let result = await task.value
        #expect(result.error?.code == .cancelled, "\(result)")
        #expect(await eventually { cancelled.withLock { $0 } == ["in flight"] }, "the worker saw the cancellation")
        #expect(await s.status().pending == 0)
        let health = await s.health()
        #expect(health.first?.inFlight == 0, "the worker's slot is freed")
        await s.hardKill()
    }

    @Test("cancelling a queued request: it leaves the queue at once, the one in flight stays")
    func queued() async throws {
        var c = testConfig("never", count: 1)
        c.maxConcurrentRequestsPerWorker = 1
        let (s, _) = try await startOnline(c)
        let first = Task { await outcome(s, "first") }
        #expect(await eventually { await s.status().pending == 1 })
        let second = Task { await outcome(s, "second") }
        #expect(await eventually { await s.status().queued == 1 })
        second.cancel()
        #expect((await second.value).error?.code == .cancelled)
        let status = await s.status()
        #expect(status.queued == 0 && status.pending == 1, "\(status)")
        first.cancel()
        #expect((await first.value).error?.code == .cancelled)
        await s.hardKill()
    }

    @Test("a task cancelled before it enqueues gets cancelled, and nothing is queued")
    func alreadyCancelled() async throws {
        let (s, _) = try await startOnline(testConfig("never", count: 1))
        let task = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return await outcome(s, "never sent")
        }
        #expect((await task.value).error?.code == .cancelled)
        #expect(await s.status().pending == 0)
        await s.hardKill()
    }

    @Test("the completion-handler API: RequestHandle.cancel answers once with cancelled, from any thread")
    func handle() async throws {
        let (s, _) = try await startOnline(testConfig("never", count: 1))
        let answers = Mutex<[SupervisorError.Code?]>([])
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let handle = s.enqueue([1]) { r in
                answers.withLock { $0.append(r.error?.code) }
                c.resume()
            }
            handle.cancel()
            handle.cancel()  // harmless
        }
        try await Task.sleep(for: .milliseconds(50))
        #expect(answers.withLock { $0 } == [.cancelled])
        await s.hardKill()
    }

    @Test("request(event:) honours cancellation; a response stream's iteration too")
    func eventsAndStreams() async throws {
        let (s, _) = try await startOnline(testConfig("never", count: 1))
        // The test worker never replies to "silent": the wait ends only by cancellation.
        let wait = Task { () -> SupervisorError.Code? in
            do { _ = try await s.request(event: "silent"); return nil } catch let error as SupervisorError { return error.code } catch { return nil }
        }
        try await Task.sleep(for: .milliseconds(50))
        wait.cancel()
        #expect(await wait.value == .cancelled)
        await s.hardKill()

        let (t, _) = try await startOnline(testConfig("stream-out", count: 1))
        // A stream far larger than anything buffered: the reader stops by cancellation.
        let response = try await t.enqueue(Array("1000000000:1".utf8))
        let stream = try #require(response.stream)
        let reader = Task { () -> SupervisorError.Code? in
            do {
                for try await _ in stream { try? await Task.sleep(for: .milliseconds(1)) }
                return nil
            } catch let error as SupervisorError { return error.code } catch { return nil }
        }
        try await Task.sleep(for: .milliseconds(50))
        reader.cancel()
        #expect(await reader.value == .cancelled)
        await t.hardKill()
    }

    @Test("handles cancel the right requests in a burst from another thread (the inbox's batch spans several chunks)")
    func handleCancelsAcrossInboxChunks() async throws {
        // Each worker blocks its thread on its first request until the release file exists, so
        // nothing is answered before every cancellation is submitted: each one must win (a slow
        // worker instead let a starved test thread find every request answered already).
        let release = "/tmp/lpm-release-\(getpid())-\(UInt64.random(in: 1...UInt64.max))"
        defer { unlink(release) }
        var c = testConfig("answer-on-release", count: 2, env: ["LPM_TEST_HOLD": "1", "LPM_TEST_RELEASE": release])
        c.maxConcurrentRequestsPerWorker = 4
        let (s, _) = try await startOnline(c)
        let n = 5_000
        // A pthread mutex (`ThreadLock`), which ThreadSanitizer sees, unlike `Mutex`'s futex.
        final class Answers: @unchecked Sendable {
            private let lock = ThreadLock()
            private var all: [Int: [Result<WorkerResponse, SupervisorError>]] = [:]
            func withLock<R>(_ body: (inout [Int: [Result<WorkerResponse, SupervisorError>]]) -> R) -> R {
                lock.withLock { body(&all) }
            }
        }
        let answers = Answers()
        // From a thread of the default pool (not the reactor's), as fast as it can: the reactor
        // drains the inbox in batches of thousands, so submission numbers cross its chunks of 1,024.
        await Task.detached {
            var handles: [RequestHandle] = []
            handles.reserveCapacity(n)
            for i in 0..<n {
                handles.append(s.enqueue(Array("r\(i)".utf8)) { r in answers.withLock { $0[i, default: []].append(r) } })
            }
            for i in stride(from: 0, to: n, by: 7) { handles[i].cancel() }
        }.value
        // A status call is a reactor job queued after the inbox's: once it answers, every
        // cancellation has reached the pool. Then the workers may answer.
        _ = await s.status()
        close(creat(release, 0o600))
        #expect(await eventually(seconds: 60) { answers.withLock { $0.count } == n }, "every request answered")
        let all = answers.withLock { $0 }
        var cancelled = 0
        for i in 0..<n {
            let got = all[i] ?? []
            #expect(got.count == 1, "request \(i) answered \(got.count) times")
            switch got.first {
            case .success(let w)?:
                #expect(i % 7 != 0, "request \(i) was answered, but its handle was cancelled first")
                #expect(w.text.hasPrefix("r\(i)."), "request \(i) got another's answer")
            case .failure(let e)? where e.code == .cancelled:
                #expect(i % 7 == 0, "request \(i) was cancelled, but its handle never was")
                cancelled += 1
            case .failure(let e)?: Issue.record("request \(i): \(e)")
            case nil: break
            }
        }
        #expect(cancelled == (n + 6) / 7, "every cancellation reached its request, queued or in flight")
        let status = await s.status()
        #expect(status.pending == 0 && status.queued == 0, "\(status)")
        await s.softKill()
    }

    @Test("exactly once under races: 2,000 requests cancelled at random moments each get one answer")
    func races() async throws {
        var c = testConfig("slow", count: 2, env: ["LPM_TEST_DELAY_MS": "1"])
        c.maxConcurrentRequestsPerWorker = 8
        let (s, _) = try await startOnline(c)
        let results = await withTaskGroup(of: (Int, Result<WorkerResponse, SupervisorError>).self) { group in
            for i in 0..<2_000 {
                group.addTask {
                    let task = Task { await outcome(s, "r\(i)") }
                    if i % 3 == 0 {
                        try? await Task.sleep(for: .microseconds(Int.random(in: 0...2000)))
                        task.cancel()
                    }
                    return (i, await task.value)
                }
            }
            var all: [(Int, Result<WorkerResponse, SupervisorError>)] = []
            for await r in group { all.append(r) }
            return all
        }
        #expect(results.count == 2_000)
        var cancelled = 0
        for (i, r) in results {
            switch r {
            case .success(let w): #expect(w.text == "r\(i)")
            case .failure(let e) where e.code == .cancelled: cancelled += 1
            case .failure(let e): Issue.record("request \(i): \(e)")
            }
        }
        #expect(cancelled > 0)
        let status = await s.status()
        #expect(status.pending == 0 && status.queued == 0, "\(status)")
        let health = await s.health()
        #expect(health.allSatisfy { $0.inFlight == 0 }, "\(health)")
        await s.softKill()
    }
}

@Suite("Streams and the pool's end", .serialized, .timeLimit(.minutes(2)))
struct StreamShutdownTests {
    @Test("a soft kill waits for a response stream its caller is still reading; the bytes all arrive")
    func softKillWaitsForStreams() async throws {
        var c = testConfig("stream-out", count: 1)
        c.softKillTimeout = nil  // however slow the reader (or the machine), the kill waits
        let (s, _) = try await startOnline(c)
        let n = 8 << 20
        let response = try await s.enqueue(Array("\(n):7".utf8))
        let stream = try #require(response.stream)
        let killed = Task { await s.softKill() }
        var count = 0
        for try await chunk in stream {
            count += chunk.count
            try? await Task.sleep(for: .microseconds(100))  // a slow reader
        }
        #expect(count == n)
        await killed.value
        #expect(await s.status().isShutDown)
    }

    @Test("a response stream never read: the soft kill's deadline ends it, and reading then throws shutDown")
    func unreadStreamDeadline() async throws {
        var c = testConfig("stream-out", count: 1)
        c.softKillTimeout = .milliseconds(300)
        let (s, _) = try await startOnline(c)
        let response = try await s.enqueue(Array("\(64 << 20):7".utf8))
        let stream = try #require(response.stream)
        await s.softKill()
        var failure: SupervisorError.Code?
        do { for try await _ in stream {} } catch { failure = error.code }
        #expect(failure == .shutDown || failure == .streamFailed, "\(String(describing: failure))")
    }

    @Test("cancelling a response stream the worker is still writing does not kill the worker (no SIGPIPE)")
    func cancelWhileWriting() async throws {
        let (s, log) = try await startOnline(testConfig("stream-out", count: 1))
        let response = try await s.enqueue(Array("\(256 << 20):7".utf8))
        let stream = try #require(response.stream)
        var it = stream.makeAsyncIterator()
        _ = try await it.next()
        stream.cancel()
        try await Task.sleep(for: .milliseconds(200))
        #expect(log.count(isExit) == 0, "\(log.all)")
        let again = try await s.enqueue(Array("10:1".utf8))
        #expect(again.workerPID == response.workerPID)
        await s.hardKill()
    }

    @Test("a supervisor dropped with its workers running: they are killed and reaped, and nothing crashes")
    func droppedSupervisor() async throws {
        await #expect(processExitsWith: .success) {
            do {
                let (s, _) = try await startOnline(testConfig("never", count: 3))
                for i in 0..<10 { s.enqueue([UInt8(i)]) { _ in } }
                _ = s
            }
            for _ in 0..<2000 {
                if hasNoChildren() { break }
                try await Task.sleep(for: .milliseconds(5))
            }
            #expect(hasNoChildren())
            try await Task.sleep(for: .milliseconds(300))  // late exits and timers must find nothing freed
        }
    }
}
