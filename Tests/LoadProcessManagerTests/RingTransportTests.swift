import Glibc
import LoadProcessManager
import LPMReactor
import Synchronization
import Testing

/// The pool's configuration of these tests: the shared-memory transport, whatever the suite's switch.
private func ringConfig(_ mode: String = "echo", count: Int = 1, ringBytes: Int = 256 << 10,
                        env: [String: String] = [:]) -> SupervisorConfiguration {
    var c = testConfig(mode, count: count, env: env)
    c.transport = .sharedMemory(ringBytes: ringBytes)
    return c
}

/// The mappings of ring objects in process `pid` (`/proc/PID/maps` lines naming the memfd).
func ringMappings(_ pid: pid_t) -> Int {
    guard let f = fopen("/proc/\(pid)/maps", "r") else { return -1 }
    defer { fclose(f) }
    var n = 0
    var line = [CChar](repeating: 0, count: 4096)
    while fgets(&line, Int32(line.count), f) != nil {
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if text.contains("memfd:lpm-rings") { n += 1 }
    }
    return n
}

@Suite("Shared-memory transport", .serialized, .timeLimit(.minutes(2)))
struct RingTransportTests {
    @Test("the configuration rounds a ring size up to a power of two from 4 KiB to 1 GiB")
    func ringSizes() {
        #expect(Transport.socket.usesSharedMemory == false)
        #expect(Transport.sharedMemory().ringBytes == 256 << 10)
        #expect(Transport.sharedMemory(ringBytes: 1).ringBytes == 4096)
        #expect(Transport.sharedMemory(ringBytes: 5000).ringBytes == 8192)
        #expect(Transport.sharedMemory(ringBytes: 1 << 40).ringBytes == 1 << 30)
    }

    @Test("a Swift worker gets the rings and its requests come through them; with the socket transport, it does not")
    func negotiated() async throws {
        let (s, _) = try await startOnline(ringConfig("transport"))
        #expect(try await s.enqueue("x").text == "rings")
        let pid = await s.health()[0].pid
        #expect(ringMappings(pid) == 1)
        await s.softKill()

        var c = testConfig("transport", count: 1)
        c.transport = .socket
        let (t, _) = try await startOnline(c)
        #expect(try await t.enqueue("x").text == "socket")
        #expect(ringMappings(await t.health()[0].pid) == 0)
        await t.softKill()
    }

    @Test("a worker that does not announce rings is served over its socket")
    func notAnnounced() async throws {
        let (s, log) = try await startOnline(ringConfig("raw-echo", count: 2))
        for i in 0..<50 {
            #expect(try await s.enqueue(Array("r\(i)".utf8)).text == "r\(i)")
        }
        for h in await s.health() { #expect(ringMappings(h.pid) == 0) }
        #expect(log.count(isViolation) == 0)
        await s.hardKill()  // (these workers do not handle a soft kill)
    }

    @Test("payloads of every size, some too large for a record and some beyond a full ring, all come back intact (busy polling: µs)",
          arguments: [0, 50])
    func sizes(_ busyPollMicroseconds: Int) async throws {
        // 4 KiB rings: a record takes at most 2032 bytes, and a burst fills the ring.
        var c = ringConfig(count: 2, ringBytes: 4096)
        if busyPollMicroseconds > 0 { c.busyPoll = .microseconds(busyPollMicroseconds) }
        let (s, log) = try await startOnline(c)
        let sizes = [0, 1, 7, 8, 100, 1000, 1991, 1992, 2008, 2032, 2033, 5000, 100_000, 1 << 20]
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for round in 0..<20 {
                for (k, n) in sizes.enumerated() {
                    group.addTask {
                        let payload = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ round &+ k) }
                        return try await s.enqueue(payload).data == payload
                    }
                }
            }
            var all = 0
            for try await ok in group { #expect(ok); all += 1 }
            #expect(all == 20 * sizes.count)
        }
        #expect(log.count(isViolation) == 0)
        await s.softKill()
    }

    @Test("a cancel never overtakes its request: requests cancelled at once leave nothing in flight in the worker (busy polling: µs)",
          arguments: [0, 50])
    func cancelAfterRequest(_ busyPollMicroseconds: Int) async throws {
        var c = ringConfig("never-count")
        if busyPollMicroseconds > 0 { c.busyPoll = .microseconds(busyPollMicroseconds) }
        let (s, _) = try await startOnline(c)
        let results = Mutex<[SupervisorError.Code?]>([])
        for i in 0..<500 {
            let handle = s.enqueue(Array("n\(i)".utf8)) { r in
                results.withLock { $0.append(r.error?.code) }
            }
            if i % 3 == 0 { try await Task.sleep(for: .microseconds(50)) }
            handle.cancel()
        }
        #expect(await eventually { results.withLock { $0.count } == 500 })
        #expect(results.withLock { $0.allSatisfy { $0 == .cancelled } })
        // Every request that reached the worker was cancelled there after it arrived. (The
        // question may overtake the last cancels, which travel on the socket: asked until the
        // worker has read them; a cancel that overtook its request would leave it there for good.)
        #expect(await eventually(seconds: 10) { (try? await s.enqueue("count").text) == "0" })
        await s.hardKill()
    }

    @Test("a cancel and its request both waiting for a busy worker: the cancel is acted on after the request (busy polling: µs)",
          arguments: [0, 50])
    func cancelWaitsBehindItsRequest(_ busyPollMicroseconds: Int) async throws {
        var c = ringConfig("never-count", ringBytes: 4096)
        if busyPollMicroseconds > 0 { c.busyPoll = .microseconds(busyPollMicroseconds) }
        c.maxConcurrentRequestsPerWorker = 16
        let (s, _) = try await startOnline(c)
        for round in 0..<3 {
            // The worker blocks in a request too large for the ring (read from its socket);
            // a request reaches its ring, then its cancel its socket.
            let blocked = Task { try await s.enqueue("block:150:" + String(repeating: "x", count: 3000)).text }
            try await Task.sleep(for: .milliseconds(40))
            let handle = s.enqueue(Array("r\(round)".utf8)) { _ in }
            try await Task.sleep(for: .milliseconds(10))
            handle.cancel()
            #expect(try await blocked.value == "blocked")
            // Once unblocked, the worker's epoll reports the socket (still on its ready list
            // from the blocking request) before the doorbell; the ring is read before any socket
            // frame is acted on, so the cancel finds its request. (Without that rule the
            // doorbell case leaves the request in flight for good.)
            #expect(await eventually(seconds: 5) { (try? await s.enqueue("count").text) == "0" }, "round \(round)")
        }
        await s.hardKill()
    }

    @Test("two supervisors with rings on one busy-polling reactor: both pools' answers arrive")
    func twoPoolsOneReactor() throws {
        let reactor = try Reactor()
        defer { reactor.close() }
        reactor.busyPoll = .microseconds(50)
        final class Box: @unchecked Sendable { var answered = [0, 0]; var stopped = 0 }  // reactor thread only
        let box = Box()
        var pools: [Supervisor] = []
        for k in 0..<2 {
            var c = ringConfig("transport")
            c.busyPoll = .microseconds(50)
            let s = Supervisor(c, reactor: reactor)
            s.start(completion: { _ in })
            for _ in 0..<200 {
                s.enqueue(Array("x".utf8)) { r in if case .success(let w) = r, w.text == "rings" { box.answered[k] += 1 } }
            }
            pools.append(s)
        }
        let deadline = ContinuousClock.now + .seconds(30)
        while box.answered != [200, 200] && ContinuousClock.now < deadline { try reactor.runOnce(timeout: .milliseconds(10)) }
        #expect(box.answered == [200, 200])
        for s in pools { s.softKill { box.stopped += 1 } }
        while box.stopped < 2 && ContinuousClock.now < deadline { try reactor.runOnce(timeout: .milliseconds(10)) }
        #expect(box.stopped == 2)
    }

    @Test("a worker that spoils its response ring is a protocol violation: killed, replaced, nothing leaked",
          arguments: ["ring-kind", "ring-length", "ring-tail", "ring-flags"])
    func spoiledRing(_ mode: String) async throws {
        await #expect(processExitsWith: .success) { [mode] in
            try await leavesNothingBehind {
                var c = ringConfig(mode)
                c.restarts = 5
                let (s, log) = try await startOnline(c)
                do {
                    _ = try await s.enqueue("x", options: RequestOptions(timeout: .seconds(10), retries: 0))
                    Issue.record("answered")
                } catch let error as SupervisorError {
                    #expect(error.code == .protocolViolation, "\(error)")
                }
                #expect(await log.wait(isViolation))
                #expect(await log.wait(isRestart))
                await s.hardKill()
                #expect(ringMappings(getpid()) == 0)
            }
        }
    }

    @Test("descriptors and mappings come back: rings of workers replaced, recycled and stopped")
    func nothingLeaks() async throws {
        await #expect(processExitsWith: .success) {
            try await leavesNothingBehind {
                var c = ringConfig("transport", count: 2)
                c.recycleAfterRequests = 20
                c.restarts = 10
                let (s, log) = try await startOnline(c)
                for _ in 0..<200 { #expect(try await s.enqueue("x").text == "rings") }
                #expect(await eventually { ringMappings(getpid()) == 2 })
                let pid = await s.health()[0].pid
                kill(pid, SIGKILL)
                #expect(await log.wait(isRestart))
                #expect(try await s.enqueue("x").text == "rings")
                #expect(await eventually { ringMappings(getpid()) == 2 })
                await s.softKill()
                #expect(ringMappings(getpid()) == 0)
            }
        }
    }
}
