import Glibc
import LoadProcessManager
import Synchronization
import Testing

/// `Examples/PythonWorker/lpm_worker.py`, found from this file's path.
private let pythonWorkerScript: String = {
    var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)  // Tests/LoadProcessManagerTests/PythonWorkerTests.swift
    return parts.joined(separator: "/") + "/Examples/PythonWorker/lpm_worker.py"
}()

/// True when `python3` is on the `PATH` (the workers are started as `/usr/bin/env python3`).
private let python3Available: Bool = {
    let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin"
    return access("/usr/bin/env", X_OK) == 0
        && path.split(separator: ":").contains { access("\($0)/python3", X_OK) == 0 }
}()

private func pythonConfig(count: Int = 2, delayMilliseconds: Int = 0) -> SupervisorConfiguration {
    var c = SupervisorConfiguration(executable: .init(path: "/usr/bin/env", arguments: ["python3", pythonWorkerScript],
                                                      environment: ["LPM_PY_DELAY_MS": String(delayMilliseconds)]))
    c.count = count
    c.shutdownSignals = []
    return c
}

/// Collects the custom events workers emit under one name.
private final class WorkerEvents: Sendable {
    private let events = Mutex<[WorkerEvent]>([])
    init(_ s: Supervisor, _ name: String) { s.on(name) { [self] e in events.withLock { $0.append(e) } } }
    var all: [WorkerEvent] { events.withLock { $0 } }

    func wait(for n: Int) async -> Bool {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if all.count >= n { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return false
    }
}

@Suite("The Python reference worker (Examples/PythonWorker) speaks the protocol",
       .enabled(if: python3Available, "python3 is not installed (not on PATH): the Python worker cannot run"),
       .serialized, .timeLimit(.minutes(1)))
struct PythonWorkerTests {
    @Test("requests: a few hundred, each answered with its own data, spread over both workers")
    func requests() async throws {
        let (s, _) = try await startOnline(pythonConfig())
        let results = try await withThrowingTaskGroup(of: (Int, WorkerResponse).self) { group in
            for i in 0..<300 {
                group.addTask { (i, try await s.enqueue("request \(i) " + String(repeating: "x", count: i))) }
            }
            return try await group.reduce(into: [(Int, WorkerResponse)]()) { $0.append($1) }
        }
        #expect(results.count == 300)
        for (i, r) in results {
            #expect(r.text == "request \(i) " + String(repeating: "x", count: i))
        }
        #expect(Set(results.map { $0.1.workerPID }).count == 2, "both workers answered")
        // An empty request, and one larger than the socket buffers (many recvmsg calls, a blocking send).
        #expect(try await s.enqueue([]).data.isEmpty)
        let big = (0..<1_000_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        #expect(try await s.enqueue(big).data == big)
        await s.softKill()
    }

    @Test("events both ways: the supervisor asks (request(event:)), the worker asks back (on(...)), replies reach both")
    func events() async throws {
        let (s, _) = try await startOnline(pythonConfig())
        s.on("question") { event in
            #expect(event.wantsReply)
            event.reply(Array("42 for \(String(decoding: event.data, as: UTF8.self))".utf8))
        }
        let echoed = try await s.request(event: "echo", Array("ping me".utf8))
        #expect(String(decoding: echoed, as: UTF8.self) == "ping me")
        let answer = try await s.request(event: "ask", Array("life".utf8))
        #expect(String(decoding: answer, as: UTF8.self) == "answer:42 for life")
        // Each worker by pid.
        for h in await s.health() {
            let reply = try await s.request(event: "echo", Array("to \(h.pid)".utf8), to: h.pid)
            #expect(String(decoding: reply, as: UTF8.self) == "to \(h.pid)")
        }
        await s.softKill()
    }

    @Test("broadcast with a descriptor (SCM_RIGHTS): every worker reads the file it was passed and says what it read")
    func broadcastDescriptor() async throws {
        let (s, _) = try await startOnline(pythonConfig())
        let reads = WorkerEvents(s, "fd-contents")
        var template = Array("/tmp/lpm-python-broadcast-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        try #require(fd >= 0)
        unlink(template)
        let text = "contents of a file passed to every worker"
        #expect(write(fd, text, text.utf8.count) == text.utf8.count)
        s.broadcast("read-fd", socket: fd)  // the supervisor owns and closes it
        #expect(await reads.wait(for: 2), "both workers reported")
        #expect(reads.all.allSatisfy { String(decoding: $0.data, as: UTF8.self) == text })
        #expect(Set(reads.all.map(\.pid)).count == 2)
        await s.softKill()
    }

    @Test("health: each worker's pid and resident size, and its health reports arrive")
    func health() async throws {
        var config = pythonConfig()
        config.healthInterval = .milliseconds(50)
        let (s, _) = try await startOnline(config)
        // The worker reports its peak resident size as heapTotal: non-zero once a report is in.
        let deadline = ContinuousClock.now + .seconds(10)
        var health = await s.health()
        while health.contains(where: { $0.heapTotal == 0 }) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
            health = await s.health()
        }
        #expect(health.count == 2)
        for h in health {
            #expect(h.pid > 0)
            #expect(h.rss > 0)
            #expect(h.heapTotal > 0, "a healthReport from \(h.pid) arrived")
            #expect(h.state == .ready)
        }
        await s.softKill()
    }

    @Test("soft kill: the requests in hand finish, then every worker exits 0")
    func softKill() async throws {
        let (s, log) = try await startOnline(pythonConfig(delayMilliseconds: 300))
        let responses = Task {
            try await withThrowingTaskGroup(of: String.self) { group in
                for i in 0..<20 { group.addTask { try await s.enqueue("slow \(i)").text } }
                return try await group.reduce(into: Set<String>()) { $0.insert($1) }
            }
        }
        // Every request dispatched (in hand on a worker, answered in 300 ms), then the kill.
        let deadline = ContinuousClock.now + .seconds(10)
        var inFlight = 0
        while inFlight < 20 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
            inFlight = await s.health().reduce(0) { $0 + $1.inFlight }
        }
        #expect(inFlight == 20, "every request was in hand on a worker when the soft kill came")
        await s.softKill()
        #expect(try await responses.value == Set((0..<20).map { "slow \($0)" }))
        let exits = log.all.compactMap { e -> (WorkerExitStatus, Bool)? in
            if case .workerExited(_, _, let status, let expected) = e { return (status, expected) }
            return nil
        }
        #expect(exits.count == 2)
        #expect(exits.allSatisfy { $0.0 == .exited(0) && $0.1 })
    }

    @Test("a worker that is killed (SIGKILL) is replaced, and the pool keeps answering")
    func killedWorkerReplaced() async throws {
        let (s, log) = try await startOnline(pythonConfig())
        let before = await s.health()
        let victim = before[0].pid
        #expect(kill(victim, SIGKILL) == 0)
        #expect(await log.wait(isRestart), "the slot was restarted")
        let deadline = ContinuousClock.now + .seconds(10)
        var after = await s.health()
        while !(after.allSatisfy { $0.state == .ready }) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
            after = await s.health()
        }
        #expect(after.count == 2)
        #expect(!after.map(\.pid).contains(victim))
        #expect(after[0].lastExit == .signaled(SIGKILL))
        for i in 0..<20 { #expect(try await s.enqueue("after \(i)").text == "after \(i)") }
        await s.softKill()
    }
}
