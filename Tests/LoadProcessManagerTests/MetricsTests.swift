import CoreMetrics
import Glibc
@testable import LoadProcessManager
import MetricsTestKit
import Synchronization
import Testing

private let pool = [("pool", "test")]

/// A test pool whose metrics go to `metrics` (no process-wide bootstrap: each test has its own).
private func metered(_ mode: String = "echo", count: Int = 2, _ metrics: TestMetrics) -> SupervisorConfiguration {
    var c = testConfig(mode, count: count)
    c.metricsFactory = metrics
    c.metricsDimensions = pool
    return c
}

private extension TestMetrics {
    /// A counter's total; -1 when it was never made.
    func total(_ name: String, _ extra: [(String, String)] = []) -> Int64 {
        (try? expectCounter("lpm_" + name, pool + extra))?.totalValue ?? -1
    }

    func completed(_ outcome: String) -> Int64 { total("requests_completed_total", [("outcome", outcome)]) }

    /// Every value a gauge was set to, in order.
    func gauge(_ name: String, _ extra: [(String, String)] = []) -> [Double] {
        (try? expectGauge("lpm_" + name, pool + extra))?.values ?? []
    }

    /// Every duration a timer recorded, in nanoseconds.
    func timer(_ name: String, _ extra: [(String, String)] = []) -> [Int64] {
        (try? expectTimer("lpm_" + name, pool + extra))?.values ?? []
    }

    /// The request gauges are back to 0 once nothing is pending.
    func requestGaugesAtZero() -> Bool {
        gauge("requests_queued").last == 0 && gauge("requests_in_flight").last == 0
    }
}

/// The request's answer, or its error.
private func answer(_ body: () async throws -> WorkerResponse) async -> Result<WorkerResponse, SupervisorError> {
    do { return .success(try await body()) } catch {
        return .failure(error as? SupervisorError ?? SupervisorError(.invalidArgument, "not a SupervisorError: \(error)"))
    }
}


@Suite("Metrics (swift-metrics)", .serialized, .timeLimit(.minutes(2)))
struct MetricsTests {
    @Test("answered requests: counted, outcome success, three timers per request, gauges back to 0")
    func successes() async throws {
        let m = TestMetrics()
        var c = metered(count: 1, m)
        c.maxConcurrentRequestsPerWorker = 2
        let (s, _) = try await startOnline(c)
        #expect(m.gauge("workers_ready").last == 1)
        for i in 0..<10 { _ = try await s.enqueue("r\(i)") }
        // Twenty admitted in one hop: two go to the worker, eighteen wait.
        let answered = Mutex(0)
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            s.enqueue(contentsOf: (0..<20).map { Array("burst\($0)".utf8) }) { _, r in
                if answered.withLock({ $0 += r.error == nil ? 1 : 1000; return $0 }) == 20 { done.resume() }
            }
        }
        #expect(m.total("requests_total") == 30)
        #expect(m.completed("success") == 30)
        #expect(m.completed("timed_out") == 0, "the outcomes requests can have exist from the start, at 0")
        #expect(m.total("request_retries_total") == 0 && m.total("request_timeouts_total") == 0)
        let durations = m.timer("request_duration_seconds", [("outcome", "success")])
        let service = m.timer("request_service_seconds"), waits = m.timer("request_queue_wait_seconds")
        #expect(durations.count == 30 && service.count == 30 && waits.count == 30)
        #expect(durations.allSatisfy { $0 > 0 })
        #expect(service.allSatisfy { $0 > 0 })
        #expect(waits.allSatisfy { $0 >= 0 })
        // Every round trip holds its queue wait and its service time.
        let parts: Int64 = service.reduce(0, +) + waits.reduce(0, +), whole: Int64 = durations.reduce(0, +)
        #expect(parts <= whole)
        #expect(m.gauge("requests_queued").max() == 18, "the burst waited in the queue")
        #expect(m.gauge("requests_in_flight").max() == 2, "at most maxConcurrentRequestsPerWorker in flight")
        #expect(m.requestGaugesAtZero())
        await s.softKill()
        #expect(m.gauge("workers_ready").last == 0)
    }

    @Test("an adaptive pool counts its scaling decisions and records the size it decided on")
    func scaling() async throws {
        let m = TestMetrics()
        var c = metered("slow", count: 1, m)
        c.executable.environment["LPM_TEST_DELAY_MS"] = "30"
        c.maxConcurrentRequestsPerWorker = 1
        c.scaling = .init(minimum: 1, maximum: 2)
        c.scaling.growAfterQueueWait = .milliseconds(20)
        c.scaling.growAfterSaturation = nil
        c.scaling.growCooldown = .milliseconds(50)
        c.scaling.idleTimeout = .milliseconds(200)
        c.scaling.checkInterval = .milliseconds(10)
        let (s, _) = try await startOnline(c)
        #expect(m.total("pool_scaling_total", [("direction", "grow")]) == 0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<40 { group.addTask { _ = try await s.enqueue("r\(i)") } }
            try await group.waitForAll()
        }
        #expect(m.total("pool_scaling_total", [("direction", "grow")]) >= 1, "a queue of 40 slow requests grew the pool")
        #expect(m.gauge("pool_target_workers").contains(2))
        // Idle: back down to the minimum.
        #expect(await eventually { m.total("pool_scaling_total", [("direction", "shrink")]) >= 1 })
        // The gauge is set on the reactor thread, maybe after the counter and step by step.
        #expect(await eventually { m.gauge("pool_target_workers").last == 1 }, "\(m.gauge("pool_target_workers"))")
        await s.softKill()
    }

    @Test("a request that times out twice: two timeouts, one retry, outcome timed_out, no service time")
    func timeoutAndRetry() async throws {
        let m = TestMetrics()
        var c = metered("never", count: 1, m)
        c.requestTimeout = .milliseconds(100)
        c.retries = 1
        let (s, _) = try await startOnline(c)
        let result = await answer { try await s.enqueue("x") }
        #expect(result.error?.code == .timedOut)
        #expect(m.total("request_timeouts_total") == 2)
        #expect(m.total("request_retries_total") == 1)
        #expect(m.completed("timed_out") == 1)
        #expect(m.completed("success") == 0)
        let duration = m.timer("request_duration_seconds", [("outcome", "timed_out")])
        #expect(duration.count == 1 && duration[0] >= 200_000_000, "two attempts of 100 ms: \(duration)")
        #expect(m.timer("request_queue_wait_seconds").count == 2, "one wait per dispatch")
        #expect(m.timer("request_service_seconds").isEmpty, "no answer from a worker")
        #expect(m.requestGaugesAtZero())
        await s.hardKill()
    }

    @Test("workers that die with the request: retried, then worker_exited; restarts counted")
    func workerExit() async throws {
        let m = TestMetrics()
        var c = metered("exit-on-request", count: 1, m)
        c.retries = 1
        let (s, log) = try await startOnline(c)
        let result = await answer { try await s.enqueue("die") }
        #expect(result.error?.code == .workerExited)
        #expect(m.total("request_retries_total") == 1)
        #expect(m.completed("worker_exited") == 1)
        #expect(m.timer("request_duration_seconds", [("outcome", "worker_exited")]).count == 1)
        #expect(await log.wait(for: 2, isRestart))
        #expect(m.total("worker_restarts_total") == 2)
        #expect(m.requestGaugesAtZero())
        #expect(await eventually { m.gauge("workers_ready").last == 1 }, "the replacement is ready")
        await s.softKill()
    }

    @Test("a protocol violation, a worker error and refusals are counted by outcome")
    func violationsAndRefusals() async throws {
        let m = TestMetrics()
        var c = metered("garbage", count: 1, m)
        c.maxPayload = 4096
        let (s, log) = try await startOnline(c)
        let violated = await answer { try await s.enqueue("x") }
        #expect(violated.error?.code == .protocolViolation)
        #expect(m.total("worker_violations_total", [("kind", "protocol")]) == 1)
        #expect(m.total("worker_violations_total", [("kind", "unresponsive")]) == 0)
        #expect(m.completed("protocol_violation") == 1)
        #expect(await log.wait(isRestart))
        let tooLarge = await answer { try await s.enqueue([UInt8](repeating: 1, count: 5000)) }
        #expect(tooLarge.error?.code == .payloadTooLarge)
        let negative = await answer {
            try await s.enqueue("x", options: RequestOptions(timeout: .seconds(-1)))
        }
        #expect(negative.error?.code == .invalidArgument)
        #expect(m.completed("payload_too_large") == 1 && m.completed("invalid_argument") == 1)
        #expect(m.total("requests_total") == 3)
        #expect(m.timer("request_duration_seconds", [("outcome", "payload_too_large")]).isEmpty,
                "a refused request has no round trip")
        await s.hardKill()

        let errors = TestMetrics()
        let (f, _) = try await startOnline(metered("fail", count: 1, errors))
        _ = try? await f.enqueue("x")
        #expect(errors.completed("worker_error") == 1)
        #expect(errors.timer("request_service_seconds").count == 1, "an error answer is a worker's answer")
        await f.softKill()
    }

    @Test("a cancelled request counts as cancelled; the gauges come back to 0")
    func cancelled() async throws {
        let m = TestMetrics()
        let (s, _) = try await startOnline(metered("never", count: 1, m))
        let answered = Mutex<SupervisorError.Code?>(nil)
        let handle = s.enqueue(Array("x".utf8)) { r in answered.withLock { $0 = r.error?.code } }
        #expect(await eventually { m.gauge("requests_in_flight").last == 1 })
        handle.cancel()
        #expect(await eventually { answered.withLock { $0 } == .cancelled })
        #expect(m.completed("cancelled") == 1)
        #expect(m.requestGaugesAtZero())
        await s.hardKill()
    }

    @Test("a worker that says busy is not counted ready")
    func busyWorker() async throws {
        let m = TestMetrics()
        var c = metered("busy", count: 1, m)
        c.healthInterval = .seconds(3600)  // no health sample to set the gauge: the busy frame must
        let (s, _) = try await startOnline(c)
        #expect(await eventually { m.gauge("workers_ready").last == 0 }, "\(m.gauge("workers_ready"))")
        #expect(m.gauge("workers_ready").max() == 1, "it was ready (and the pool online) before it said busy")
        await s.hardKill()
    }

    @Test("the health sample sets each slot's RSS; an exited worker's slot goes back to 0")
    func residentMemory() async throws {
        let m = TestMetrics()
        var c = metered(count: 2, m)
        c.healthInterval = .milliseconds(50)
        let (s, _) = try await startOnline(c)
        for slot in ["0", "1"] {
            #expect(await eventually { (m.gauge("worker_resident_memory_bytes", [("slot", slot)]).last ?? 0) > 100_000 },
                    "slot \(slot): \(m.gauge("worker_resident_memory_bytes", [("slot", slot)]).suffix(2))")
        }
        await s.softKill()
        for slot in ["0", "1"] {
            #expect(m.gauge("worker_resident_memory_bytes", [("slot", slot)]).last == 0)
        }
    }

    @Test("label prefix and dimensions come from the configuration")
    func labels() async throws {
        for prefix in ["images", ""] {
            let m = TestMetrics()
            var c = testConfig(count: 1)
            c.metricsFactory = m
            c.metricsLabelPrefix = prefix
            c.metricsDimensions = [("pool", "images"), ("region", "eu")]
            let (s, _) = try await startOnline(c)
            _ = try await s.enqueue("x")
            let name = prefix.isEmpty ? "requests_total" : "\(prefix)_requests_total"
            #expect((try? m.expectCounter(name, [("pool", "images"), ("region", "eu")]))?.totalValue == 1, "\(m)")
            #expect(m.counters.allSatisfy { $0.label.hasPrefix(prefix) && $0.dimensions.first.map { $0 == ("pool", "images") } == true })
            await s.softKill()
        }
    }

    @Test("off, or no backend: nothing is made")
    func off() async throws {
        let m = TestMetrics()
        var c = metered(count: 1, m)
        c.metricsEnabled = false
        #expect(PoolMetrics.make(c) == nil)
        let (s, _) = try await startOnline(c)
        _ = try await s.enqueue("x")
        await s.softKill()
        #expect(m.counters.isEmpty && m.timers.isEmpty && m.recorders.isEmpty && m.meters.isEmpty)

        var noop = testConfig(count: 1)
        noop.metricsFactory = NOOPMetricsHandler.instance
        #expect(PoolMetrics.make(noop) == nil)
        // This process bootstraps no backend: the default is the no-op one.
        #expect(PoolMetrics.make(testConfig(count: 1)) == nil)
        c.metricsEnabled = true
        #expect(PoolMetrics.make(c) != nil)
    }

    @Test("outcome labels: success, then the error code in snake case", arguments: [
        (nil, "success"), (.timedOut, "timed_out"), (.workerExited, "worker_exited"), (.workerUnresponsive, "worker_unresponsive"),
        (.payloadTooLarge, "payload_too_large"), (.cancelled, "cancelled"), (.poisonRequest, "poison_request"),
    ] as [(SupervisorError.Code?, String)])
    func outcomeLabels(_ code: SupervisorError.Code?, _ label: String) {
        #expect(PoolMetrics.outcome(code) == label)
    }
}
