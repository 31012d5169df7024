import Glibc
import HTTPWork
import Hummingbird
import LoadProcessManager
import PoolHTTP
import Testing

/// An executable built next to the test binary.
func sibling(_ name: String) -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    let me = String(decoding: buffer[..<max(0, n)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return String(me[..<(me.lastIndex(of: "/") ?? me.startIndex)]) + "/" + name
}

/// The server's pool configuration, with the example's worker.
func poolConfig(count: Int) -> SupervisorConfiguration {
    var c = SupervisorConfiguration(workerPath: sibling("lpm-http-worker"), count: count)
    c.maxConcurrentRequestsPerWorker = 1
    c.shutdownSignals = []
    return c
}

func started(_ config: SupervisorConfiguration) async throws -> Supervisor {
    let s = try Supervisor(config)
    try await s.start()
    try await waitUntilOnline(s)
    return s
}

/// The error a request ends with, or `nil` if it succeeded.
func failure(_ body: () async throws(SupervisorError) -> WorkerResponse) async -> SupervisorError? {
    do { _ = try await body(); return nil } catch { return error }
}

@Suite("The example's worker under a real supervisor", .timeLimit(.minutes(2)))
struct WorkerTests {
    @Test("a work job answers the digest the server would compute inline")
    func workJob() async throws {
        let s = try await started(poolConfig(count: 2))
        let status = await s.status()
        #expect(status.ready == 2)
        for n: UInt64 in [0, 1, 12_345] {
            let r = try await s.enqueue(Job.work(rounds: n).payload)
            #expect(r.text == hex(work(rounds: n)))
        }
        await s.softKill()
    }

    @Test("a stream job streams its lines, in order, and ends")
    func streamJob() async throws {
        let s = try await started(poolConfig(count: 1))
        // 20 000 lines of 25 bytes: more than the worker buffers before waiting for the reader.
        for (chunks, delay) in [(0, 0), (3, 5), (20_000, 0)] {
            let r = try await s.enqueue(Job.stream(chunks: chunks, rounds: 100, delayMilliseconds: delay).payload)
            let body = try #require(r.stream)
            let text = String(decoding: try await body.collect(), as: UTF8.self)
            #expect(text == (0..<chunks).map { streamLine(index: $0, rounds: 100) }.joined())
        }
        await s.softKill()
    }

    @Test("a payload that is no job fails the request: 502")
    func notAJob() async throws {
        let s = try await started(poolConfig(count: 1))
        let e = await failure { () throws(SupervisorError) in try await s.enqueue(Array("work x".utf8)) }
        #expect(e?.code == .workerError)
        #expect(e.map { httpError($0).status } == .badGateway)
        await s.softKill()
    }

    @Test("a job longer than the request timeout: 504")
    func timeout() async throws {
        let s = try await started(poolConfig(count: 1))
        let options = RequestOptions(timeout: .milliseconds(20))
        let e = await failure { () throws(SupervisorError) in try await s.enqueue(Job.work(rounds: 1 << 30).payload, options: options) }
        #expect(e?.code == .timedOut)
        #expect(e.map { httpError($0).status } == .gatewayTimeout)
        await s.hardKill()  // the worker is still computing: do not wait for it
    }

    @Test("a full queue: 503 with Retry-After")
    func queueFull() async throws {
        var config = poolConfig(count: 1)
        config.maxQueueLength = 1
        let s = try await started(config)
        // One job in flight, one queued: the next one finds the queue full.
        for _ in 0..<2 { s.enqueue(Job.work(rounds: 1 << 30).payload) { _ in } }
        let deadline = ContinuousClock.now + .seconds(20)
        while await s.status().queued < 1 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        let e = await failure { () throws(SupervisorError) in try await s.enqueue(Job.work(rounds: 1).payload) }
        #expect(e?.code == .queueFull)
        let error = try #require(e.map(httpError))
        #expect(error.status == .serviceUnavailable)
        #expect(error.headers[.retryAfter] == "1")
        await s.hardKill()
    }

    @Test("waiting for a pool that stops before it is online throws")
    func neverOnline() async throws {
        let s = try Supervisor(poolConfig(count: 1))
        await s.hardKill()
        await #expect(throws: PoolNotOnline.self) { try await waitUntilOnline(s) }
    }
}
