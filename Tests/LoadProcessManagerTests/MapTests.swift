import Glibc
import LoadProcessManager
import Synchronization
import Testing

private func inputs(_ n: Int) -> [[UInt8]] { (0..<n).map { Array("item \($0)".utf8) } }

@Suite("Ordered map", .timeLimit(.minutes(2)))
struct MapTests {
    @Test("answers in the inputs' order, one request per input or chunked", arguments: [1, 7, 100])
    func inOrder(chunkSize: Int) async throws {
        let (s, _) = try await startOnline(testConfig("echo", count: 2))
        var k = 0
        for await result in s.map(inputs(1000), options: MapOptions(chunkSize: chunkSize, maxChunksInFlight: 8)) {
            #expect((try? result.get().text) == "item \(k)", "\(result)")
            k += 1
        }
        #expect(k == 1000, "every input answered once")
        #expect(await s.status().pending == 0)
        await s.softKill()
    }

    @Test("a chunked result is a slice of the chunk's answer: bytes, data and text agree")
    func responseSlices() async throws {
        let (s, _) = try await startOnline(testConfig("echo", count: 1))
        var k = 0
        for await result in s.map(inputs(50), options: MapOptions(chunkSize: 10)) {
            let r = try result.get()
            let expected = Array("item \(k)".utf8)
            #expect(Array(r.bytes) == expected && r.data == expected && r.text == "item \(k)")
            #expect(r.bytes.count == expected.count && r.attempts == 1 && r.workerPID > 0)
            k += 1
        }
        #expect(k == 50)
        await s.softKill()
    }

    @Test("a chunk's items answered later and out of order by an async handler come back in order")
    func asyncItemsOutOfOrder() async throws {
        let (s, _) = try await startOnline(testConfig("async-sleep", count: 1))
        // Each input is the handler's sleep in milliseconds: the later items finish first.
        let delays = [40, 30, 0, 20, 10, 0, 35, 5]
        let items = delays.map { Array(String($0).utf8) }
        var got: [String] = []
        for await r in s.map(items, options: MapOptions(chunkSize: delays.count)) {
            got.append((try? r.get().text) ?? "error: \(r)")
        }
        // "<delay>:<completion order>:<thread>": each answer is its own input's, in input order,
        // and they completed in another order.
        #expect(got.map { $0.split(separator: ":").first.map(String.init) } == delays.map { String($0) }, "\(got)")
        let order = got.compactMap { $0.split(separator: ":").dropFirst().first.flatMap { Int($0) } }
        #expect(Set(order) == Set(1...delays.count) && order != Array(1...delays.count), "\(got)")
        await s.softKill()
    }

    @Test("the completion form: all results, in order, once")
    func completionForm() async throws {
        let (s, _) = try await startOnline(testConfig("echo", count: 3))
        let results = await withUnsafeContinuation { c in
            s.map(inputs(500), options: MapOptions(chunkSize: 16)) { c.resume(returning: $0) }
        }
        #expect(results.count == 500)
        #expect(results.enumerated().allSatisfy { (try? $1.get().text) == "item \($0)" })
        let empty = await withUnsafeContinuation { c in s.map([], completion: { c.resume(returning: $0) }) }
        #expect(empty.isEmpty)
        await s.softKill()
    }

    @Test("invalid options give one invalidArgument result; a stopped pool answers every input")
    func errors() async throws {
        let (s, _) = try await startOnline(testConfig("echo", count: 1))
        var got: [Result<MapResponse, SupervisorError>] = []
        for await r in s.map(inputs(3), options: MapOptions(chunkSize: 0)) { got.append(r) }
        #expect(got.count == 1 && got.first?.error?.code == .invalidArgument)
        got = []
        for await r in s.map(inputs(3), options: MapOptions(maxChunksInFlight: 0)) { got.append(r) }
        #expect(got.count == 1 && got.first?.error?.code == .invalidArgument)
        await s.hardKill()
        got = []
        for await r in s.map(inputs(5), options: MapOptions(chunkSize: 2)) { got.append(r) }
        #expect(got.count == 5 && got.allSatisfy { $0.error?.code == .shutDown }, "a stopped pool answers every input")
    }

    @Test("cancelling the consumer cancels the chunks outstanding; each input sent gets one result", arguments: [1, 10])
    func cancellation(chunkSize: Int) async throws {
        let (s, _) = try await startOnline(testConfig("never", count: 1))
        let task = Task {
            var results: [Result<MapResponse, SupervisorError>] = []
            for await r in s.map(inputs(1000), options: MapOptions(chunkSize: chunkSize, maxChunksInFlight: 4)) { results.append(r) }
            return results
        }
        #expect(await eventually { await s.status().pending == 4 })
        task.cancel()
        let results = await task.value
        #expect(results.count == 4 * chunkSize, "the chunks outstanding, and no more: \(results.count)")
        #expect(results.allSatisfy { $0.error?.code == .cancelled })
        #expect(await s.status().pending == 0)
        await s.hardKill()
    }

    @Test("a worker that announces batches and answers one malformed is a protocol violation; the inputs get an error")
    func malformedBatch() async throws {
        var c = testConfig("bad-batch", count: 1)
        c.restarts = 0
        c.afterBudgetSpent = .stop
        let (s, log) = try await startOnline(c)
        var got: [Result<MapResponse, SupervisorError>] = []
        for await r in s.map(inputs(3), options: MapOptions(chunkSize: 3)) { got.append(r) }
        #expect(got.count == 3 && got.allSatisfy { $0.error != nil }, "\(got)")
        #expect(await log.wait(isViolation))
        await s.hardKill()
    }

    @Test("chunks as batches to Swift workers: an item's failure is its own, the others are answered")
    func perItemFailures() async throws {
        let (s, _) = try await startOnline(testConfig("fail-x", count: 2))
        let items = (0..<100).map { Array(($0 % 3 == 0 ? "x\($0)" : "ok\($0)").utf8) }
        var k = 0
        for await r in s.map(items, options: MapOptions(chunkSize: 10)) {
            if k % 3 == 0 {
                #expect(r.error?.code == .workerError && r.error?.message.contains("no x: x\(k)") == true, "\(r)")
            } else {
                #expect((try? r.get().text) == "ok\(k)", "\(r)")
            }
            k += 1
        }
        #expect(k == 100)
        await s.softKill()
    }

    @Test("a chunk that times out: every item gets timedOut, and the worker cancels every item")
    func chunkTimeout() async throws {
        var c = testConfig("never", count: 1)
        c.requestTimeout = .milliseconds(200)
        let (s, _) = try await startOnline(c)
        let cancelled = CancelLog()
        s.on("cancelled") { e in cancelled.add(String(decoding: e.data, as: UTF8.self)) }
        var got: [Result<MapResponse, SupervisorError>] = []
        for await r in s.map(inputs(5), options: MapOptions(chunkSize: 5)) { got.append(r) }
        #expect(got.count == 5 && got.allSatisfy { $0.error?.code == .timedOut }, "\(got)")
        _ = await eventually { cancelled.count >= 5 }
        #expect(cancelled.sorted == inputs(5).map { String(decoding: $0, as: UTF8.self) }.sorted())
        await s.hardKill()
    }

    @Test("a worker that dies with a chunk: the chunk is retried whole on another, every item answered once")
    func chunkRetried() async throws {
        var c = testConfig("exit-on-request", count: 2, env: ["LPM_TEST_ONLY_SLOT": "0"])
        c.retries = 2
        let (s, _) = try await startOnline(c)
        var k = 0
        for await r in s.map(inputs(200), options: MapOptions(chunkSize: 20, maxChunksInFlight: 4)) {
            #expect((try? r.get().text) == "item \(k)", "\(r)")
            k += 1
        }
        #expect(k == 200)
        await s.hardKill()
    }
}

/// Names gathered from event handlers (on the reactor thread), read by the test.
private final class CancelLog: Sendable {
    private let names = Mutex<[String]>([])
    func add(_ n: String) { names.withLock { $0.append(n) } }
    var count: Int { names.withLock { $0.count } }
    var sorted: [String] { names.withLock { $0.sorted() } }
}
