import Glibc
import LoadProcessManager
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
        var got: [Result<WorkerResponse, SupervisorError>] = []
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

    @Test("cancelling the consumer cancels the chunks outstanding; each still gets one result")
    func cancellation() async throws {
        let (s, _) = try await startOnline(testConfig("never", count: 1))
        let task = Task {
            var results: [Result<WorkerResponse, SupervisorError>] = []
            for await r in s.map(inputs(1000), options: MapOptions(chunkSize: 1, maxChunksInFlight: 4)) { results.append(r) }
            return results
        }
        let deadline = ContinuousClock.now + .seconds(60)
        while await s.status().pending < 4 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        task.cancel()
        let results = await task.value
        #expect(results.count == 4, "the chunks outstanding, and no more: \(results.count)")
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
        var got: [Result<WorkerResponse, SupervisorError>] = []
        for await r in s.map(inputs(3), options: MapOptions(chunkSize: 3)) { got.append(r) }
        #expect(got.count == 3 && got.allSatisfy { $0.error != nil }, "\(got)")
        #expect(await log.wait(isViolation))
        await s.hardKill()
    }
}
