// The package-benchmark suite of LoadProcessManager. Run from Benchmarks/:
//
//   BENCHMARK_DISABLE_JEMALLOC=true swift package benchmark
//   BENCHMARK_DISABLE_JEMALLOC=true swift package benchmark thresholds check   # the allocation thresholds
//
// Benchmark names have no spaces: package-benchmark 1.38.1 writes threshold files with spaces
// turned into underscores but reads them by the raw name, so a name with a space never finds its
// thresholds.
//
// What each one measures:
//   Reactor.timer_schedule_cancel    schedule + cancel a one-shot timer, 1000 others pending
//   Reactor.execute_hop              Handle.execute to a reactor thread, wait until it ran
//   Reactor.execute_burst            Handle.execute many jobs at once (wake-ups coalesce)
//   Reactor.pingpong_64B_threads     64 B round trip between two reactors, two threads
//   Reactor.pingpong_64B_processes   the same with a bench-worker --reactor-echo process
//   Reactor.pipelined_echo_2x256     2 echo processes, 256 x 64 B frames in flight each, batched
//   Supervisor.roundtrip_async       one request at a time, async API          (thresholds)
//   Supervisor.roundtrip_handler     one request at a time, completion handler (thresholds)
//   Supervisor.roundtrip_executor    one request at a time, async API on the supervisor's executor (thresholds)
//   Supervisor.roundtrip_chained     each completion enqueues the next, on the reactor thread
//   Supervisor.burst_100k_handler    100,000 requests at once to 2 workers, completion handler
//   Supervisor.burst_100k_async      the same from 512 tasks through the async API
//   Supervisor.crash_to_replacement  SIGKILL the worker; time to restarted, ready, first answer
//   Supervisor.queued_1M_before_start  1,000,000 requests queued, then start: cost, RSS, drain
//   Supervisor.workers_256           256 workers start, one request each, soft kill
//
// Figures are per scaled iteration where the scaling factor is K (one operation each), else per
// iteration (one burst, one crash, one queue of requests...). Malloc counts are this process's
// (the supervisor side, every thread); the workers' own allocations are measured by compare.sh.
// package-benchmark's syscall and context-switch metrics print nothing on this Linux: compare.sh
// counts syscalls with strace, and the lpm-compare runner reports context switches (getrusage).
import Benchmark
import LPMBenchJobs
import LoadProcessManager
import LPMReactor
#if canImport(Glibc)
import Glibc
#endif

/// The pool shared by the iterations of one benchmark (set up by its `setup`, ended by its
/// `teardown`; benchmarks run one at a time).
nonisolated(unsafe) var pool: Pool?

func workerPath() throws -> String { try benchWorkerPath() }

/// Tolerance for the checked-in allocation thresholds (Thresholds/, mallocs per iteration of 1000
/// round trips): 500 mallocs, so one more allocation per request (1000 more) fails the check,
/// while the few allocations of the iteration itself do not. Absolute, not relative: the
/// handler path makes none per request (4 per iteration), where any percentage is noise.
let allocationTolerance = BenchmarkThresholds(absolute: [.p90: 500])

let perRequest: [BenchmarkMetric] = [.wallClock, .mallocCountTotal, .throughput]

let requestsPerSecond = BenchmarkMetric.custom("requests/s", polarity: .prefersLarger, useScalingFactor: false)
let toRestartedUs = BenchmarkMetric.custom("kill→restarted (µs)", polarity: .prefersSmaller, useScalingFactor: false)
let toOnlineUs = BenchmarkMetric.custom("kill→ready (µs)", polarity: .prefersSmaller, useScalingFactor: false)
let toAnswerUs = BenchmarkMetric.custom("kill→first answer (µs)", polarity: .prefersSmaller, useScalingFactor: false)
let enqueueNs = BenchmarkMetric.custom("enqueue (ns/request)", polarity: .prefersSmaller, useScalingFactor: false)
let rssPerRequest = BenchmarkMetric.custom("RSS growth (B/request)", polarity: .prefersSmaller, useScalingFactor: false)
let drainMs = BenchmarkMetric.custom("start→all answered (ms)", polarity: .prefersSmaller, useScalingFactor: false)
let onlineMs = BenchmarkMetric.custom("start→online (ms)", polarity: .prefersSmaller, useScalingFactor: false)
let requestsMs = BenchmarkMetric.custom("one request each (ms)", polarity: .prefersSmaller, useScalingFactor: false)
let distinctWorkers = BenchmarkMetric.custom("distinct workers answering", polarity: .prefersLarger, useScalingFactor: false)
let softKillMs = BenchmarkMetric.custom("soft kill (ms)", polarity: .prefersSmaller, useScalingFactor: false)

/// The burst size in this suite (compare.sh runs the full 1,000,000).
let burstSize = 100_000
/// Requests queued before start (the same as compare.sh: it takes a few seconds).
let queuedSize = 1_000_000

func startPool(count: Int, maxInFlight: Int = 64) -> () async throws -> Void {
    {
        let path = try workerPath()
        pool = try Pool(workerPath: path, count: count, maxInFlight: maxInFlight)
    }
}

let stopPool: () async throws -> Void = {
    pool?.stop()
    pool = nil
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: perRequest,
        warmupIterations: 1,
        scalingFactor: .kilo,
        maxDuration: .seconds(3),
        maxIterations: 1000
    )

    // MARK: The reactor alone

    Benchmark("Reactor.timer_schedule_cancel") { benchmark in
        do {
            let churn = try TimerChurn(live: 1000)
            defer { churn.close() }
            try churn.run(1000)
            benchmark.startMeasurement()
            try churn.run(benchmark.scaledIterations.count)
            benchmark.stopMeasurement()
        } catch { benchmark.error("\(error)") }
    }

    Benchmark("Reactor.execute_hop") { benchmark in
        do {
            let hop = try ExecuteHop()
            defer { hop.close() }
            hop.roundTrips(100)
            benchmark.startMeasurement()
            hop.roundTrips(benchmark.scaledIterations.count)
            benchmark.stopMeasurement()
        } catch { benchmark.error("\(error)") }
    }

    Benchmark("Reactor.execute_burst") { benchmark in
        do {
            let hop = try ExecuteHop()
            defer { hop.close() }
            hop.burst(1000)
            benchmark.startMeasurement()
            hop.burst(benchmark.scaledIterations.count)
            benchmark.stopMeasurement()
        } catch { benchmark.error("\(error)") }
    }

    Benchmark("Reactor.pingpong_64B_threads") { benchmark in
        do {
            let driver = try RawDriver(peers: 1, inFlight: 1, kind: .thread)
            defer { driver.close() }
            try driver.run(200)
            benchmark.startMeasurement()
            try driver.run(benchmark.scaledIterations.count)
            benchmark.stopMeasurement()
        } catch { benchmark.error("\(error)") }
    }

    Benchmark("Reactor.pingpong_64B_processes") { benchmark in
        do {
            let driver = try RawDriver(peers: 1, inFlight: 1, kind: .processes(workerPath: try workerPath()))
            defer { driver.close() }
            try driver.run(200)
            benchmark.startMeasurement()
            try driver.run(benchmark.scaledIterations.count)
            benchmark.stopMeasurement()
        } catch { benchmark.error("\(error)") }
    }

    Benchmark("Reactor.pipelined_echo_2x256",
              configuration: .init(metrics: perRequest, scalingFactor: .mega, maxDuration: .seconds(3), maxIterations: 20)) { benchmark in
        do {
            let driver = try RawDriver(peers: 2, inFlight: 256, kind: .processes(workerPath: try workerPath()))
            defer { driver.close() }
            try driver.run(10_000)
            benchmark.startMeasurement()
            try driver.run(benchmark.scaledIterations.count)
            benchmark.stopMeasurement()
        } catch { benchmark.error("\(error)") }
    }

    // MARK: Supervisor + Worker (no-op worker)

    // The hot path: one request at a time. Its allocations are checked against Thresholds/.
    Benchmark("Supervisor.roundtrip_async",
              configuration: .init(metrics: perRequest, scalingFactor: .kilo, maxDuration: .seconds(3),
                                   thresholds: [.mallocCountTotal: allocationTolerance],
                                   setup: startPool(count: 1), teardown: stopPool)) { benchmark in
        guard let pool else { return benchmark.error("no pool") }
        for _ in benchmark.scaledIterations {
            do { blackHole(try await pool.supervisor.enqueue(pool.payload)) } catch { return benchmark.error("\(error)") }
        }
    }

    // The async API from a task on the supervisor's executor: no hop either way.
    Benchmark("Supervisor.roundtrip_executor",
              configuration: .init(metrics: perRequest, scalingFactor: .kilo, maxDuration: .seconds(3),
                                   thresholds: [.mallocCountTotal: allocationTolerance],
                                   setup: startPool(count: 1), teardown: stopPool)) { benchmark in
        guard let pool else { return benchmark.error("no pool") }
        do { try await pool.roundTripsAsyncOnExecutor(benchmark.scaledIterations.count) } catch { benchmark.error("\(error)") }
    }

    Benchmark("Supervisor.roundtrip_handler",
              configuration: .init(metrics: perRequest, scalingFactor: .kilo, maxDuration: .seconds(3),
                                   thresholds: [.mallocCountTotal: allocationTolerance],
                                   setup: startPool(count: 1), teardown: stopPool)) { benchmark in
        guard let pool else { return benchmark.error("no pool") }
        do { try pool.roundTripsHandler(benchmark.scaledIterations.count) } catch { benchmark.error("\(error)") }
    }

    Benchmark("Supervisor.roundtrip_chained",
              configuration: .init(metrics: perRequest, scalingFactor: .kilo, maxDuration: .seconds(3),
                                   setup: startPool(count: 1), teardown: stopPool)) { benchmark in
        guard let pool else { return benchmark.error("no pool") }
        do { try pool.roundTripsChained(benchmark.scaledIterations.count) } catch { benchmark.error("\(error)") }
    }

    Benchmark("Supervisor.burst_100k_handler",
              configuration: .init(metrics: [.wallClock, .mallocCountTotal, requestsPerSecond], scalingFactor: .one,
                                   maxDuration: .seconds(5), maxIterations: 10,
                                   setup: startPool(count: 2, maxInFlight: 256), teardown: stopPool)) { benchmark in
        guard let pool else { return benchmark.error("no pool") }
        do {
            let t0 = monotonicNanoseconds()
            try pool.burstHandler(burstSize)
            let ns = monotonicNanoseconds() - t0
            benchmark.measurement(requestsPerSecond, Int(Double(burstSize) / (Double(ns) / 1e9)))
        } catch { benchmark.error("\(error)") }
    }

    Benchmark("Supervisor.burst_100k_async",
              configuration: .init(metrics: [.wallClock, .mallocCountTotal, requestsPerSecond], scalingFactor: .one,
                                   maxDuration: .seconds(5), maxIterations: 10,
                                   setup: startPool(count: 2, maxInFlight: 256), teardown: stopPool)) { benchmark in
        guard let pool else { return benchmark.error("no pool") }
        do {
            let t0 = monotonicNanoseconds()
            try await pool.burstAsync(burstSize)
            let ns = monotonicNanoseconds() - t0
            benchmark.measurement(requestsPerSecond, Int(Double(burstSize) / (Double(ns) / 1e9)))
        } catch { benchmark.error("\(error)") }
    }

    Benchmark("Supervisor.crash_to_replacement",
              configuration: .init(metrics: [.wallClock, toRestartedUs, toOnlineUs, toAnswerUs], scalingFactor: .one,
                                   maxDuration: .seconds(3), maxIterations: 30,
                                   setup: startPool(count: 1), teardown: stopPool)) { benchmark in
        guard let pool else { return benchmark.error("no pool") }
        do {
            let t = try pool.crashAndReplace()
            benchmark.measurement(toRestartedUs, Int(t.restartedNs / 1000))
            benchmark.measurement(toOnlineUs, Int(t.onlineNs / 1000))
            benchmark.measurement(toAnswerUs, Int(t.answeredNs / 1000))
        } catch { benchmark.error("\(error)") }
    }

    Benchmark("Supervisor.queued_1M_before_start",
              configuration: .init(metrics: [.wallClock, .mallocCountTotal, enqueueNs, rssPerRequest, drainMs, requestsPerSecond],
                                   scalingFactor: .one, maxDuration: .seconds(10), maxIterations: 2)) { benchmark in
        do {
            let f = try queuedBeforeStart(workerPath: try workerPath(), n: queuedSize)
            benchmark.measurement(enqueueNs, Int(f.enqueueNsPerRequest))
            benchmark.measurement(rssPerRequest, Int(f.rssBytesPerRequest))
            benchmark.measurement(drainMs, Int(f.drainSeconds * 1000))
            benchmark.measurement(requestsPerSecond, Int(f.drainRate))
        } catch { benchmark.error("\(error)") }
    }

    Benchmark("Supervisor.workers_256",
              configuration: .init(metrics: [.wallClock, onlineMs, requestsMs, distinctWorkers, softKillMs],
                                   scalingFactor: .one, maxDuration: .seconds(10), maxIterations: 2)) { benchmark in
        do {
            let f = try manyWorkers(workerPath: try workerPath(), count: 256)
            benchmark.measurement(onlineMs, Int(f.onlineMs))
            benchmark.measurement(requestsMs, Int(f.requestsMs))
            benchmark.measurement(distinctWorkers, f.distinctWorkers)
            benchmark.measurement(softKillMs, Int(f.stopMs))
        } catch { benchmark.error("\(error)") }
    }
}
