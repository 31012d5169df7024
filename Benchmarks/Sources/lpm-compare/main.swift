// lpm-compare: runs one benchmark job of our stack and prints `name=<..> value=<..> unit=<..>`
// lines, the format of the C baselines (Baselines/baselines.c) and the peers (Peers/), so that
// compare.sh can put them side by side. Simpler and faster than the package-benchmark suite.
//
//   lpm-compare JOB [N] [--backend epoll|uring]
//
// Jobs (N is the number of operations; defaults in parentheses):
//   timer-churn N            reactor: schedule + cancel a timer, 1000 others pending (1e6)
//   execute-hop N            reactor: Handle.execute to a reactor thread and back (1e5)
//   execute-burst N          reactor: N Handle.execute jobs at once (1e6)
//   reactor-pingpong N       reactor: 64 B round trip with a bench-worker --reactor-echo (1e5)
//   reactor-pingpong-thread N  the same with the echo peer on a reactor thread (1e5)
//   reactor-echo N           reactor: pipelined echo, 2 children x 256 in flight, batched (1e7)
//   rt-async N               Supervisor + 1 no-op worker: sequential round trips, async API (1e5)
//   rt-handler N             the same, completion-handler API, caller blocks between (1e5)
//   rt-chained N             the same, each completion enqueues the next (reactor thread) (1e5)
//   rt-executor N            the async API from a task on the supervisor's executor (1e5)
//   rt-actor N               the async API from an actor on the reactor's serial executor (1e5)
//   rt-*-rings, burst*-rings  the same jobs with the shared-memory transport (names end in _rings)
//   burst N                  Supervisor + 2 workers, 256 in flight each: N at once, handler API (1e6)
//   burst-async N            the same from 512 tasks through the async API (1e6)
//   burst-batched N          the same handed over in one enqueue(contentsOf:) call (1e6)
//   burst-executor N         the async burst from 512 tasks on the supervisor's executor (1e6)
//   map N [--chunk K]        Supervisor.map of N 8-byte inputs, K to a frame (1000), 2 workers (1e6)
//   allocs N                 heap allocations per request, both sides (needs LD_PRELOAD of
//                            Tools/malloc_count.so) (2e4)
//   info                     the backends chosen by default here
//   crash N                  SIGKILL the worker, time the replacement; N times (20)
//   queued N                 N requests queued before start: time, RSS per request (1e6)
//   many-workers N           N workers start + one request each (256)
//   adaptive-step[-fixed1|-fixed4] N  step load 5% -> 100% of 4 workers (10 ms service) and back,
//                            on an adaptive pool (1...4) or a fixed pool of 1 or 4; N is the
//                            step's length in ms (4000); the worker is LPM_STEP_WORKER (the
//                            package's lpm-test-worker); LPM_STEP_GROW_STEP, LPM_STEP_COOLDOWN_MS,
//                            LPM_STEP_QUEUE_WAIT_MS change the adaptive pool's settings
//   crash-template N         crash, with workers forked from a template (20)
//   many-workers-template N  many-workers, forked from a template (256)
//   resize[-template] N      one worker, then resize(N): ms until N are ready, exec'd or
//                            forked from a template (256)
//   recycle-burst[-template] N  burst of N on 2 workers recycled every 100 requests, exec'd
//                            or forked from a template: req/s (2e5)
//   template-pss N           mean PSS of N workers whose preload maps and writes 64 MiB, exec'd
//                            vs forked from a template (16); the worker is LPM_PSS_WORKER, by
//                            default the test worker of the main package's debug build
#if canImport(Glibc)
import Glibc
#endif
import LPMBenchJobs
import LoadProcessManager
import LPMReactor
import Synchronization

func usage() -> Never {
    fputs("usage: lpm-compare JOB [N] [--backend epoll|uring]\n(see the comment at the top of main.swift for the jobs)\n", stderr)
    exit(2)
}

var args = Array(CommandLine.arguments.dropFirst())
var backend: Reactor.Backend?
if let i = args.firstIndex(of: "--backend") {
    guard i + 1 < args.count, let b = Reactor.Backend(rawValue: args[i + 1]) else { usage() }
    backend = b
    args.removeSubrange(i...(i + 1))
    // The supervisor's reactor, the workers' and the echo children's all read this.
    setenv("LPM_REACTOR_BACKEND", b.rawValue, 1)
}
var mapChunk = 1000
if let i = args.firstIndex(of: "--chunk") {
    guard i + 1 < args.count, let k = Int(args[i + 1]), k > 0 else { usage() }
    mapChunk = k
    args.removeSubrange(i...(i + 1))
}
guard let jobArgument = args.first else { usage() }
/// `rt-*-rings` and `burst*-rings`: the same job with the shared-memory transport (the names end in `_rings`).
let withRings = jobArgument.hasSuffix("-rings")
let job = withRings ? String(jobArgument.dropLast(6)) : jobArgument
/// LPM_BENCH_RING_BYTES: each ring's size (default: the transport's).
let transport: Transport = !withRings ? .socket
    : getenv("LPM_BENCH_RING_BYTES").flatMap { Int(String(cString: $0)) }.map { .sharedMemory(ringBytes: $0) } ?? .sharedMemory()
let ringTag = withRings ? "_rings" : ""
let countArg = args.count > 1 ? Int(args[1]) : nil
if args.count > 1 && countArg == nil { usage() }

func emit(_ name: String, _ value: Double, _ unit: String) {
    print(Figure(name, value, unit).line)
    fflush(stdout)
}

/// Which backend a reactor made with `choice` gets here.
func backendOf(_ choice: Reactor.BackendChoice) throws -> String {
    let r = try Reactor(backend: choice)
    defer { r.close() }
    return r.backendKind.rawValue
}

/// The supervisor's backend: `--backend`, else the configuration's default.
func supervisorTag() throws -> String {
    if let backend { return backend.rawValue }
    return try backendOf(SupervisorConfiguration(workerPath: "/bin/true").backend)
}

@Sendable func warmCount(_ n: Int) -> Int { min(max(n / 10, 1000), 10_000) }

func timed(_ body: () throws -> Void) rethrows -> UInt64 {
    let t0 = monotonicNanoseconds()
    try body()
    return monotonicNanoseconds() - t0
}

/// Runs an async body from this (main) thread and waits for it.
func blocking(_ body: @escaping @Sendable () async throws -> Void) throws {
    let done = Semaphore()
    let failure = ErrorBox()
    Task.detached {
        do { try await body() } catch { failure.set("\(error)") }
        done.signal()
    }
    done.wait()
    if let e = failure.get() { throw BenchError(e) }
}

final class ErrorBox: @unchecked Sendable {
    // @unchecked: written once by the task before it signals, read after the wait.
    private var value: String?
    func set(_ v: String) { value = v }
    func get() -> String? { value }
}

do {
    switch job {
    case "info":
        // The backends chosen by default here (no LPM_REACTOR_BACKEND, no --backend).
        print("reactor_automatic=\(try backendOf(.automatic)) supervisor_default=\(try backendOf(SupervisorConfiguration(workerPath: "/bin/true").backend))")

    case "timer-churn":
        let n = countArg ?? 1_000_000
        let churn = try TimerChurn(live: 1000)
        try churn.run(warmCount(n))
        let ns = try timed { try churn.run(n) }
        churn.close()
        emit("reactor_timer_schedule_cancel_\(churn.backend.rawValue)", Double(ns) / Double(n), "ns/op")

    case "execute-hop":
        let n = countArg ?? 100_000
        let hop = try ExecuteHop()
        hop.roundTrips(warmCount(n))
        let ns = timed { hop.roundTrips(n) }
        hop.close()
        emit("reactor_execute_hop_rt_\(hop.backend.rawValue)", Double(ns) / Double(n), "ns/rt")

    case "execute-burst":
        let n = countArg ?? 1_000_000
        let hop = try ExecuteHop()
        hop.burst(warmCount(n))
        let ns = timed { hop.burst(n) }
        hop.close()
        emit("reactor_execute_burst_\(hop.backend.rawValue)", Double(n) / (Double(ns) / 1e9), "jobs/s")

    case "reactor-pingpong", "reactor-pingpong-thread":
        let n = countArg ?? 100_000
        let thread = job == "reactor-pingpong-thread"
        let driver = try RawDriver(peers: 1, inFlight: 1, kind: thread ? .thread : .processes(workerPath: try benchWorkerPath()), backend: backend)
        try driver.run(warmCount(n))
        let ns = try timed { try driver.run(n) }
        driver.close()
        emit("reactor_pingpong_\(thread ? "threads" : "processes")_64B_\(driver.backend.rawValue)", Double(ns) / Double(n), "ns/rt")

    case "reactor-echo":
        let n = countArg ?? 10_000_000
        let driver = try RawDriver(peers: 2, inFlight: 256, kind: .processes(workerPath: try benchWorkerPath()), backend: backend)
        try driver.run(min(n, 100_000))
        let ns = try timed { try driver.run(n) }
        driver.close()
        emit("reactor_echo_batched_2x256x64B_\(driver.backend.rawValue)", Double(n) / (Double(ns) / 1e9), "msg/s")

    case "rt-async", "rt-handler", "rt-chained", "rt-executor", "rt-actor":
        let tag = try supervisorTag()
        let n = countArg ?? 100_000
        let pool = try Pool(workerPath: try benchWorkerPath(), count: 1, transport: transport)
        let self0 = ProcessFigures.usage()
        var ns: UInt64 = 0
        switch job {
        case "rt-async":
            try blocking { try await pool.roundTripsAsync(warmCount(n)) }
            let t0 = monotonicNanoseconds()
            try blocking { try await pool.roundTripsAsync(n) }
            ns = monotonicNanoseconds() - t0
        case "rt-executor":
            try blocking { try await pool.roundTripsAsyncOnExecutor(warmCount(n)) }
            let t0 = monotonicNanoseconds()
            try blocking { try await pool.roundTripsAsyncOnExecutor(n) }
            ns = monotonicNanoseconds() - t0
        case "rt-actor":
            try blocking { try await pool.roundTripsOnActor(warmCount(n)) }
            let t0 = monotonicNanoseconds()
            try blocking { try await pool.roundTripsOnActor(n) }
            ns = monotonicNanoseconds() - t0
        case "rt-handler":
            try pool.roundTripsHandler(warmCount(n))
            ns = try timed { try pool.roundTripsHandler(n) }
        default:
            try pool.roundTripsChained(warmCount(n))
            ns = try timed { try pool.roundTripsChained(n) }
        }
        let self1 = ProcessFigures.usage()
        pool.stop()
        let api = job.dropFirst(3)
        emit("lpm_rt_\(api)\(ringTag)_64B_\(tag)", Double(ns) / Double(n), "ns/rt")
        let total = Double(n + warmCount(n))
        emit("lpm_rt_\(api)\(ringTag)_supervisor_cpu_\(tag)", Double((self1 - self0).cpuNs) / total, "ns/rt")
        emit("lpm_rt_\(api)\(ringTag)_supervisor_csw_\(tag)", Double((self1 - self0).voluntarySwitches + (self1 - self0).involuntarySwitches) / total, "switches/rt")

    case "burst", "burst-async", "burst-batched", "burst-executor":
        let tag = try supervisorTag()
        let n = countArg ?? 1_000_000
        let pool = try Pool(workerPath: try benchWorkerPath(), count: 2, maxInFlight: 256, transport: transport)
        let warm = min(n, 20_000)
        func once(_ k: Int) throws {
            switch job {
            case "burst-async": try blocking { try await pool.burstAsync(k) }
            case "burst-executor": try blocking { try await pool.burstAsync(k, onExecutor: true) }
            case "burst-batched": try pool.burstBatched(k)
            default: try pool.burstHandler(k)
            }
        }
        try once(warm)
        let self0 = ProcessFigures.usage()
        let children0 = ProcessFigures.usage(children: true)
        let t0 = monotonicNanoseconds()
        try once(n)
        let ns = monotonicNanoseconds() - t0
        let self1 = ProcessFigures.usage()
        pool.stop()
        // The workers are reaped now: their CPU time shows in RUSAGE_CHILDREN (warm-up included).
        let children1 = ProcessFigures.usage(children: true)
        let name = ["burst-async": "lpm_burst_async_2w", "burst-batched": "lpm_burst_batched_2w",
                    "burst-executor": "lpm_burst_executor_2w"][job].map { $0 + ringTag } ?? "lpm_burst_2w\(ringTag)"
        emit("\(name)_\(tag)", Double(n) / (Double(ns) / 1e9), "req/s")
        emit("\(name)_supervisor_cpu_\(tag)", Double((self1 - self0).cpuNs) / Double(n), "ns/req")
        emit("\(name)_workers_cpu_\(tag)", Double((children1 - children0).cpuNs) / Double(n + warm), "ns/req")

    case "map":
        let tag = try supervisorTag()
        let n = countArg ?? 1_000_000
        let pool = try Pool(workerPath: try benchWorkerPath(), count: 2, maxInFlight: 256)
        try blocking { try await pool.map(min(n, 20_000), chunkSize: mapChunk) }
        let self0 = ProcessFigures.usage()
        let t0 = monotonicNanoseconds()
        try blocking { try await pool.map(n, chunkSize: mapChunk) }
        let ns = monotonicNanoseconds() - t0
        let self1 = ProcessFigures.usage()
        pool.stop()
        emit("lpm_map_chunk\(mapChunk)_2w_\(tag)", Double(n) / (Double(ns) / 1e9), "req/s")
        emit("lpm_map_chunk\(mapChunk)_2w_supervisor_cpu_\(tag)", Double((self1 - self0).cpuNs) / Double(n), "ns/req")

    case "allocs":
        // Heap allocations per request on both sides, with Tools/malloc_count.so preloaded.
        let n = countArg ?? 20_000
        guard MallocCounter.function != nil else { throw BenchError("allocs needs LD_PRELOAD=malloc_count.so (Tools/malloc_count.c)") }
        setenv("LPM_COUNT_MALLOCS", "1", 1)
        let pool = try Pool(workerPath: try benchWorkerPath(), count: 1)
        let warm = min(n, 2000)
        try pool.roundTripsChained(warm)
        try pool.roundTripsHandler(warm)
        try blocking { try await pool.roundTripsAsync(warm) }
        try blocking { try await pool.roundTripsAsyncOnExecutor(warm) }
        // What one query costs the worker (its count is read before its own answer is sent).
        let w0 = try pool.workerMallocCount()
        let w1 = try pool.workerMallocCount()
        let query = w1 - w0
        func supervisorSide(_ body: () throws -> Void) rethrows -> Double {
            let a = MallocCounter.count()
            try body()
            return Double(MallocCounter.count() - a) / Double(n)
        }
        let wBefore = try pool.workerMallocCount()
        let chained = try supervisorSide { try pool.roundTripsChained(n) }
        let handler = try supervisorSide { try pool.roundTripsHandler(n) }
        let async = try supervisorSide { try blocking { try await pool.roundTripsAsync(n) } }
        let onExecutor = try supervisorSide { try blocking { try await pool.roundTripsAsyncOnExecutor(n) } }
        let wAfter = try pool.workerMallocCount()
        pool.stop()
        emit("lpm_allocs_supervisor_rt_chained", chained, "allocs/req")
        emit("lpm_allocs_supervisor_rt_handler", handler, "allocs/req")
        emit("lpm_allocs_supervisor_rt_async", async, "allocs/req")
        emit("lpm_allocs_supervisor_rt_executor", onExecutor, "allocs/req")
        emit("lpm_allocs_worker_rt", Double(wAfter - wBefore - query) / Double(4 * n), "allocs/req")

    case "crash", "crash-template":
        let tag = try supervisorTag()
        let n = countArg ?? 20
        let template = job == "crash-template"
        let config = template ? Pool.templateConfiguration(workerPath: try benchWorkerPath(), count: 1)
                              : Pool.configuration(workerPath: try benchWorkerPath(), count: 1)
        let pool = try Pool(config)
        try pool.startAndWait()
        _ = try pool.crashAndReplace()  // warm-up
        var restarted: [UInt64] = [], online: [UInt64] = [], answered: [UInt64] = []
        for _ in 0..<n {
            let t = try pool.crashAndReplace()
            restarted.append(t.restartedNs)
            online.append(t.onlineNs)
            answered.append(t.answeredNs)
        }
        pool.stop()
        func mean(_ v: [UInt64]) -> Double { Double(v.reduce(0, +)) / Double(v.count) / 1000 }
        func median(_ v: [UInt64]) -> Double { let s = v.sorted(); return Double(s[s.count / 2]) / 1000 }
        let prefix = template ? "lpm_template_crash" : "lpm_crash"
        emit("\(prefix)_to_restarted_\(tag)", mean(restarted), "us")
        emit("\(prefix)_to_online_\(tag)", mean(online), "us")
        emit("\(prefix)_to_online_median_\(tag)", median(online), "us")
        emit("\(prefix)_to_first_answer_\(tag)", mean(answered), "us")
        emit("\(prefix)_to_first_answer_median_\(tag)", median(answered), "us")

    case "queued":
        let tag = try supervisorTag()
        let n = countArg ?? 1_000_000
        let f = try queuedBeforeStart(workerPath: try benchWorkerPath(), n: n)
        emit("lpm_queued_enqueue_\(tag)", f.enqueueNsPerRequest, "ns/req")
        emit("lpm_queued_rss_\(tag)", f.rssBytesPerRequest, "B/req")
        emit("lpm_queued_drain_\(tag)", f.drainSeconds, "s")
        emit("lpm_queued_drain_rate_\(tag)", f.drainRate, "req/s")

    case "many-workers":
        let tag = try supervisorTag()
        let n = countArg ?? 256
        let f = try manyWorkers(workerPath: try benchWorkerPath(), count: n)
        emit("lpm_\(n)_workers_online_\(tag)", f.onlineMs, "ms")
        emit("lpm_\(n)_workers_one_request_each_\(tag)", f.requestsMs, "ms")
        emit("lpm_\(n)_workers_distinct_answering", Double(f.distinctWorkers), "workers")
        emit("lpm_\(n)_workers_softkill_\(tag)", f.stopMs, "ms")

    case "adaptive-step", "adaptive-step-fixed1", "adaptive-step-fixed4":
        guard let worker = getenv("LPM_STEP_WORKER").map({ String(cString: $0) }) else {
            throw BenchError("set LPM_STEP_WORKER to the lpm-test-worker executable (swift build --product lpm-test-worker in the package root)")
        }
        let kind: StepPoolKind = job == "adaptive-step" ? .adaptive : job == "adaptive-step-fixed1" ? .fixed1 : .fixedMax
        var plan = StepLoadPlan()
        if let ms = countArg {
            // Shorter steps shorten the rest of the curve with them (a smoke run).
            plan.stepSeconds = Double(ms) / 1000
            plan.lowSeconds = min(plan.lowSeconds, plan.stepSeconds * 0.75)
            plan.idleTimeout = min(plan.idleTimeout, max(0.5, plan.stepSeconds / 2))
        }
        // For exploring the adaptive pool's settings (compare.sh uses the defaults of StepLoadPlan).
        if let v = getenv("LPM_STEP_GROW_STEP").flatMap({ Int(String(cString: $0)) }) { plan.growStep = v }
        if let v = getenv("LPM_STEP_COOLDOWN_MS").flatMap({ Int(String(cString: $0)) }) { plan.growCooldownMs = v }
        if let v = getenv("LPM_STEP_QUEUE_WAIT_MS").flatMap({ Int(String(cString: $0)) }) { plan.growAfterQueueWaitMs = v }
        let f = try stepLoad(workerPath: worker, kind: kind, plan: plan)
        let name = "lpm_step_\(kind == .adaptive ? "adaptive" : kind == .fixed1 ? "fixed1" : "fixed\(plan.maxWorkers)")"
        emit("\(name)_service", f.serviceMs, "ms")
        emit("\(name)_full_rate", f.fullRate, "req/s")
        emit("\(name)_wait_p50", f.stepWaitP50Ms, "ms")
        emit("\(name)_wait_p99", f.stepWaitP99Ms, "ms")
        emit("\(name)_low_wait_p99", f.lowWaitP99Ms, "ms")
        emit("\(name)_rss_mean", f.rssMeanBytes / 1_048_576, "MiB")
        emit("\(name)_rss_peak", f.rssPeakBytes / 1_048_576, "MiB")
        emit("\(name)_workers_mean", f.workersMean, "workers")
        emit("\(name)_failures", Double(f.failures), "requests")
        if let v = f.firstGrowthMs { emit("\(name)_first_growth", v, "ms") }
        if let v = f.timeToMaxMs { emit("\(name)_time_to_max", v, "ms") }
        if let v = f.returnToMinMs { emit("\(name)_return_to_min", v, "ms") }
        if kind == .adaptive { emit("\(name)_idle_timeout", plan.idleTimeout * 1000, "ms") }
    case "many-workers-template":
        let tag = try supervisorTag()
        let n = countArg ?? 256
        let f = try manyWorkers(workerPath: try benchWorkerPath(), count: n, template: true)
        emit("lpm_template_\(n)_workers_online_\(tag)", f.onlineMs, "ms")
        emit("lpm_template_\(n)_workers_one_request_each_\(tag)", f.requestsMs, "ms")
        emit("lpm_template_\(n)_workers_distinct_answering", Double(f.distinctWorkers), "workers")
        emit("lpm_template_\(n)_workers_softkill_\(tag)", f.stopMs, "ms")

    case "resize", "resize-template":
        let tag = try supervisorTag()
        let n = countArg ?? 256
        let template = job == "resize-template"
        let path = try benchWorkerPath()
        let ms = Mutex<Double>(0)
        try blocking { let v = try await resizeToOnline(workerPath: path, count: n, template: template); ms.withLock { $0 = v } }
        emit("lpm_\(template ? "template_" : "")resize_1_to_\(n)_online_\(tag)", ms.withLock { $0 }, "ms")

    case "recycle-burst", "recycle-burst-template":
        let tag = try supervisorTag()
        let n = countArg ?? 200_000
        let template = job == "recycle-burst-template"
        let rate = try recyclingBurst(workerPath: try benchWorkerPath(), n: n, every: 100, template: template)
        emit("lpm_\(template ? "template_" : "")recycle_every_100_burst_\(tag)", rate, "req/s")

    case "template-pss":
        let n = countArg ?? 16
        let path = getenv("LPM_PSS_WORKER").map { String(cString: $0) } ?? "../.build/debug/lpm-test-worker"
        let env = ["LPM_TEST_PRELOAD_MB": "64", "LPM_TEST_MODE": "echo"]
        let exec = try meanWorkerPSS(workerPath: path, count: n, template: false, environment: env)
        let forked = try meanWorkerPSS(workerPath: path, count: n, template: true, environment: env)
        emit("lpm_pss_per_worker_exec_64mib_preload", exec / 1_048_576, "MiB")
        emit("lpm_pss_per_worker_forked_64mib_preload", forked / 1_048_576, "MiB")
        emit("lpm_pss_forked_over_exec", forked / exec * 100, "%")

    default:
        usage()
    }
    // Under Tools/malloc_count.so (except in `allocs`, which reports its own figures): this
    // process's allocations in all, for differences between two sizes of a job.
    if MallocCounter.function != nil && job != "allocs" {
        emit("process_mallocs", Double(MallocCounter.count()), "allocs")
    }
} catch {
    fputs("lpm-compare \(job): \(error)\n", stderr)
    exit(1)
}
