import Glibc
import CLoop
import LoadProcessManager
import LPMReactor
import LPMWire
import LPMTestSupport
import Synchronization
import Testing

func pattern(from: Int, count: Int, seed: UInt8) -> [UInt8] { patternBytes(from: from, count: count, seed: seed) }

/// Chunks of the test pattern, `total` bytes in all, as an async sequence.
struct PatternChunks: AsyncSequence, Sendable {
    typealias Element = [UInt8]
    let total: Int
    let seed: UInt8
    struct AsyncIterator: AsyncIteratorProtocol {
        let total: Int, seed: UInt8
        var sent = 0
        mutating func next() async -> [UInt8]? {
            guard sent < total else { return nil }
            let n = Swift.min(256 * 1024, total - sent)
            defer { sent += n }
            return pattern(from: sent, count: n, seed: seed)
        }
    }
    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(total: total, seed: seed) }
}

func expectedDigest(_ total: Int, seed: UInt8) -> String {
    var d = StreamDigest()
    var at = 0
    while at < total {
        let n = min(1 << 20, total - at)
        d.update(pattern(from: at, count: n, seed: seed))
        at += n
    }
    return d.description
}

// Tests that count the process's descriptors, threads or children run their body in an exit test
// (`#expect(processExitsWith:)`, a child process of its own), so that tests running in parallel
// cannot disturb the counts; issues recorded there are reported here.
@Suite("Streams, sockets and resize", .serialized, .timeLimit(.minutes(3)))
struct StreamSocketResizeTests {
    @Test("parent → child streams of 0, 1 and 64 MiB arrive intact", arguments: [0, 1, 64 << 20])
    func parentToChild(_ size: Int) async throws {
        let (s, _) = try await startOnline(testConfig("stream-digest", count: 1))
        let r = try await s.enqueue(Array("digest".utf8), stream: PatternChunks(total: size, seed: 5))
        #expect(r.text == expectedDigest(size, seed: 5))
        await s.softKill()
    }

    @Test("parent → child stream from a descriptor the caller owns")
    func parentToChildFD() async throws {
        let (s, _) = try await startOnline(testConfig("stream-digest", count: 1))
        var fds: [CInt] = [-1, -1]
        pipe2(&fds, O_CLOEXEC)
        let bytes = pattern(from: 0, count: 10_000, seed: 9)
        _ = bytes.withUnsafeBytes { write(fds[1], $0.baseAddress, $0.count) }
        close(fds[1])
        let r = try await s.enqueue([], stream: fds[0])
        #expect(r.text == expectedDigest(10_000, seed: 9))
        #expect(fcntl(fds[0], F_GETFD) != -1, "the caller's descriptor stays the caller's")
        close(fds[0])
        await s.softKill()
    }

    @Test("child → parent streams of 0, 1 and 64 MiB arrive intact", arguments: [0, 1, 64 << 20])
    func childToParent(_ size: Int) async throws {
        let (s, _) = try await startOnline(testConfig("stream-out", count: 1))
        let r = try await s.enqueue("\(size):3")
        #expect(r.hasStream)
        #expect(r.text == "streaming")
        var d = StreamDigest()
        for try await chunk in r.stream! { d.update(chunk) }
        #expect(d.description == expectedDigest(size, seed: 3))
        await s.softKill()
    }

    @Test("two streams at once to one worker do not interleave")
    func twoStreams() async throws {
        let (s, _) = try await startOnline(testConfig("stream-digest", count: 1))
        async let a = s.enqueue([], stream: PatternChunks(total: 3 << 20, seed: 1))
        async let b = s.enqueue([], stream: PatternChunks(total: 5 << 20, seed: 2))
        let (ra, rb) = try await (a, b)
        #expect(ra.text == expectedDigest(3 << 20, seed: 1))
        #expect(rb.text == expectedDigest(5 << 20, seed: 2))
        await s.softKill()
    }

    @Test("a worker that dies mid-stream fails the stream, naming the worker")
    func diesMidStream() async throws {
        var c = testConfig("stream-die", count: 1)
        c.restarts = 0
        let (s, _) = try await startOnline(c)
        let pid = await s.health()[0].pid
        let r = try await s.enqueue("x")
        do {
            var total = 0
            for try await chunk in r.stream! { total += chunk.count }
            Issue.record("the stream ended as if complete after \(total) bytes")
        } catch {
            #expect(error.code == .streamFailed)
            #expect(error.workerPID == pid)
            #expect(error.message.contains("\(pid)"))
        }
        await s.hardKill()
    }

    @Test("100 TCP connections passed to 2 workers are all served and spread; no descriptor leaks")
    func tcpConnections() async throws {
        await #expect(processExitsWith: .success) {
            await settleChildProcess()
            try await Task.sleep(for: .milliseconds(1))
            let fds = openFDCount()
            var c = testConfig("socket-echo")
            // No RSS sample: ties then go round robin. Once sampled, sequential requests all go
            // to the worker with the lower RSS, and a slow run would get one sample in.
            c.healthInterval = .seconds(3600)
            let (s, _) = try await startOnline(c)
            let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            addr.sin_port = 0
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, len) } }
            listen(listener, 128)
            _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &len) } }
            var served: [String: Int] = [:]
            for i in 0..<100 {
                let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, len) } }
                #expect(rc == 0)
                let accepted = accept4(listener, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
                let line = Array("hello \(i)\n".utf8)
                _ = line.withUnsafeBytes { write(client, $0.baseAddress, $0.count) }
                let r = try await s.enqueue([], socket: accepted)
                served[r.text, default: 0] += 1
                var echo = [UInt8](repeating: 0, count: 64)
                let n = read(client, &echo, echo.count)
                #expect(n == line.count && Array(echo[..<max(0, n)]) == line)
                close(client)
            }
            close(listener)
            #expect(served.values.reduce(0, +) == 100)
            #expect(served.count == 2)
            #expect(served.values.allSatisfy { $0 >= 20 }, "spread: \(served)")
            await s.softKill()
            try await Task.sleep(for: .milliseconds(50))
            #expect(openFDCount() == fds, "\(fdList())")
        }
    }

    @Test("broadcast carries a listening socket to every worker")
    func broadcastSocket() async throws {
        let (s, _) = try await startOnline(testConfig("echo"))
        let recorded = Mutex<[pid_t]>([])
        s.on("recorded") { e in if e.data == Array("with fd+fd".utf8) { recorded.withLock { $0.append(e.pid) } } }
        var fds: [CInt] = [-1, -1]
        pipe2(&fds, O_CLOEXEC)
        s.broadcast("record", Array("with fd".utf8), socket: fds[0])
        close(fds[1])
        let deadline = ContinuousClock.now + .seconds(10)
        while recorded.withLock({ $0.count }) < 2 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(Set(recorded.withLock { $0 }).count == 2)
        await s.softKill()
    }

    @Test("resize up and down under load loses no request")
    func resizeUnderLoad() async throws {
        await #expect(processExitsWith: .success) {
            var c = testConfig("slow", env: ["LPM_TEST_DELAY_MS": "5"])
            c.maxConcurrentRequestsPerWorker = 4
            let (s, log) = try await startOnline(c)
            let ok = Atomic<Int>(0), failed = Atomic<Int>(0)
            let n = 2000
            for i in 0..<n {
                s.enqueue([UInt8(i & 0xFF)]) { r in
                    if case .success = r { ok.add(1, ordering: .relaxed) } else { failed.add(1, ordering: .relaxed) }
                }
            }
            try await s.resize(4)
            try await Task.sleep(for: .milliseconds(200))
            #expect(await s.health().count >= 4)
            try await s.resize(1)
            try await Task.sleep(for: .milliseconds(200))
            try await s.resize(3)
            let deadline = ContinuousClock.now + .seconds(60)
            while ok.load(ordering: .relaxed) + failed.load(ordering: .relaxed) < n && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(ok.load(ordering: .relaxed) == n)
            #expect(failed.load(ordering: .relaxed) == 0)
            let h = await s.health()
            #expect(h.filter { $0.state != .stopping && $0.state != .down }.count == 3)
            #expect(log.count(isExhausted) == 0, "retiring workers does not charge the restart budget")
            await s.softKill()
            #expect(hasNoChildren())
        }
    }

    @Test("resize to 0 fails requests at once; growing again serves; resize after a kill fails")
    func resizeToZero() async throws {
        await #expect(processExitsWith: .success) {
            let (s, _) = try await startOnline(testConfig())
            try await s.resize(0)
            do { _ = try await s.enqueue("x"); Issue.record("answered") } catch let error as SupervisorError { #expect(error.code == .noWorkers) }
            try await s.resize(2)
            #expect(try await s.enqueue(Array("back".utf8), options: RequestOptions(timeout: .seconds(10))).text == "back")
            do { try await s.resize(-1); Issue.record("accepted") } catch let error as SupervisorError { #expect(error.code == .invalidArgument) }
            await s.softKill()
            do { try await s.resize(3); Issue.record("accepted") } catch let error as SupervisorError { #expect(error.code == .shutDown) }
            #expect(hasNoChildren())
        }
    }
}
