import Glibc
import LoadProcessManager
import Logging
import Synchronization
import Testing

@Suite("Logging and events", .serialized, .timeLimit(.minutes(2)))
struct ObservabilityTests {
    @Test("worker exits and restarts are logged with slot, pid and status; nothing per request above debug")
    func logging() async throws {
        let records = LogRecords()
        var c = testConfig("echo", count: 2)
        c.logger = records.logger
        let (s, log) = try await startOnline(c)
        let before = records.snapshot.count
        for i in 0..<100 { _ = try await s.enqueue("r\(i)") }
        #expect(records.snapshot.count == before, "no record per request: \(records.snapshot.suffix(3).map(\.message))")
        let victim = try #require(await s.health().first?.pid)
        kill(victim, SIGKILL)
        #expect(await log.wait(isRestart))
        let exited = records.snapshot.first { $0.message == "worker exited unexpectedly" }
        #expect(exited?.level == .warning)
        #expect(exited?.metadata["pid"] == "\(victim)")
        #expect(exited?.metadata["status"]?.contains("SIGKILL") == true, "\(String(describing: exited?.metadata))")
        #expect(records.snapshot.contains { $0.message == "worker restarted" && $0.level == .notice })
        await s.softKill()
        let messages = records.snapshot.map(\.message)
        #expect(messages.contains("soft kill: draining") && messages.contains("pool stopped"), "\(messages)")
    }

    @Test("events as an AsyncSequence: every subscriber sees them, the sequences end when the pool stops; onEvent handlers add up")
    func eventStreams() async throws {
        let s = try Supervisor(testConfig("echo", count: 1))
        let first = s.events(), second = s.events(bufferingPolicy: .bufferingNewest(100))
        let handled = Mutex<[Int]>([])
        s.onEvent { e in if case .online = e { handled.withLock { $0.append(1) } } }
        s.onEvent { e in if case .online = e { handled.withLock { $0.append(2) } } }
        try await s.start()
        func collect(_ events: AsyncStream<SupervisorEvent>) async -> [String] {
            var names: [String] = []
            for await e in events {
                switch e {
                case .online: names.append("online")
                case .workerStarted: names.append("started")
                case .workerExited: names.append("exited")
                default: break
                }
            }
            return names
        }
        async let a = collect(first)
        async let b = collect(second)
        try await Task.sleep(for: .milliseconds(200))
        _ = try await s.enqueue("x")
        await s.softKill()
        let (x, y) = await (a, b)
        #expect(x == ["started", "online", "exited"], "\(x)")
        #expect(y == x)
        #expect(handled.withLock { $0 } == [1, 2])
        var after: [SupervisorEvent] = []
        for await e in s.events() { after.append(e) }
        #expect(after.isEmpty, "a subscription after the pool stopped ends at once")
    }
}
