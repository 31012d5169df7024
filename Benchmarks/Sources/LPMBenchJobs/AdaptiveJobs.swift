// The adaptive pool under a step load: from 5% to 100% of what the maximum pool can serve, and
// back, against pools of fixed size. Workers serve one request at a time with a fixed service
// time (the test worker's `slow` mode: a timer, not CPU, so that four "busy" workers fit on a
// shared 2-vCPU machine).
#if canImport(Glibc)
import Glibc
#endif
import LoadProcessManager
import Synchronization

/// Which pool a step-load run uses.
public enum StepPoolKind: String, Sendable {
    /// `minimum` 1, `maximum` ``StepLoadPlan/maxWorkers``, starting at 1.
    case adaptive
    /// A fixed pool of 1 worker.
    case fixed1
    /// A fixed pool of ``StepLoadPlan/maxWorkers`` workers.
    case fixedMax
}

/// The load curve and the adaptive pool's settings.
public struct StepLoadPlan: Sendable {
    /// The worker's service time (milliseconds; `LPM_TEST_DELAY_MS`).
    public var serviceMs = 10
    /// The adaptive pool's maximum, and the size of the large fixed pool; 100% load is what
    /// this many workers serve.
    public var maxWorkers = 4
    /// The load before and after the step, as a fraction of 100%.
    public var lowFraction = 0.05
    public var lowSeconds = 3.0
    public var stepSeconds = 4.0
    /// The adaptive pool's idle timeout; the low load after the step lasts this long plus 1.5 s.
    public var idleTimeout = 2.0
    /// The adaptive pool's queue-wait threshold, growth step and cool-down, and its check interval.
    public var growAfterQueueWaitMs = 100
    public var growStep = 1
    public var growCooldownMs = 250
    public var checkIntervalMs = 50

    public init() {}

    var tailSeconds: Double { idleTimeout + 1.5 }
}

/// What a step-load run measured.
public struct StepLoadFigures: Sendable {
    /// The effective service time (median latency of lone requests, before the run; ms) and
    /// the request rate taken as 100% (`maxWorkers` over it; requests per second).
    public var serviceMs = 0.0
    public var fullRate = 0.0
    /// Queue wait (latency less the effective service time) of the requests sent during the
    /// step: median and 99th percentile (ms); and the 99th percentile before the step.
    public var stepWaitP50Ms = 0.0
    public var stepWaitP99Ms = 0.0
    public var lowWaitP99Ms = 0.0
    /// Adaptive: from the step's start to the first growth decision, and to every worker of
    /// the maximum pool ready (ms).
    public var firstGrowthMs: Double?
    public var timeToMaxMs: Double?
    /// Adaptive: from the end of the step to the pool back at 1 worker (ms).
    public var returnToMinMs: Double?
    /// The sum of the workers' RSS (every live worker process, draining ones included),
    /// sampled every 100 ms over the planned run: mean and peak (bytes); and the mean number of
    /// workers in the pool.
    public var rssMeanBytes = 0.0
    public var rssPeakBytes = 0.0
    public var workersMean = 0.0
    public var requests = 0
    public var failures = 0
}

/// Latencies, written by completions (all on the supervisor's reactor thread) and read once
/// every completion has run.
private final class LatencyBook: @unchecked Sendable {
    // @unchecked: `latency` and `failures` are written only on the reactor thread (every
    // completion runs there) and read by the caller after `done` counted every answer, which
    // orders the reads after the writes (the counter is atomic, sequentially consistent).
    var latency: [UInt64]
    var failures = 0
    let done = Atomic<Int>(0)

    init(capacity: Int) { latency = [UInt64](repeating: 0, count: capacity) }
}

/// The pool's events that matter here, with the time each arrived.
private final class StepEvents: Sendable {
    let scaled = Mutex<[(at: UInt64, to: Int)]>([])
    let online = Mutex<[UInt64]>([])

    func handle(_ e: SupervisorEvent) {
        let now = monotonicNanoseconds()
        switch e {
        case .poolScaled(_, let to, _): scaled.withLock { $0.append((now, to)) }
        case .online: online.withLock { $0.append(now) }
        default: break
        }
    }
}

/// Runs the step load on one pool: `lowSeconds` at the low rate, `stepSeconds` at 100%, then
/// the low rate again for the idle timeout plus 1.5 s (longer for the adaptive pool if it is
/// not back to 1 worker by then, at most 10 s more); waits for every answer.
public func stepLoad(workerPath: String, kind: StepPoolKind, plan: StepLoadPlan) throws -> StepLoadFigures {
    var config = SupervisorConfiguration(executable: .init(
        path: workerPath, environment: ["LPM_TEST_MODE": "slow", "LPM_TEST_DELAY_MS": "\(plan.serviceMs)"]))
    config.count = kind == .fixedMax ? plan.maxWorkers : 1
    config.maxConcurrentRequestsPerWorker = 1
    config.shutdownSignals = []
    config.restarts = Int.max / 2
    config.maxRestartsInInterval = .seconds(1)
    if kind == .adaptive {
        config.scaling = .init(minimum: 1, maximum: plan.maxWorkers)
        config.scaling.growAfterQueueWait = .milliseconds(plan.growAfterQueueWaitMs)
        config.scaling.growAfterSaturation = nil
        config.scaling.growStep = plan.growStep
        config.scaling.growCooldown = .milliseconds(plan.growCooldownMs)
        config.scaling.idleTimeout = .milliseconds(Int(plan.idleTimeout * 1000))
        config.scaling.checkInterval = .milliseconds(plan.checkIntervalMs)
    }
    let supervisor = try Supervisor(config)
    let events = StepEvents()
    supervisor.onEvent { events.handle($0) }
    let started = Semaphore()
    let startError = Mutex<SupervisorError?>(nil)
    supervisor.start { e in startError.withLock { $0 = e }; started.signal() }
    started.wait()
    if let e = startError.withLock({ $0 }) { throw BenchError("start failed: \(e)") }
    defer {
        let done = Semaphore()
        supervisor.hardKill(completion: { done.signal() })
        done.wait()
    }
    let onlineBy = monotonicNanoseconds() + 30_000_000_000
    while events.online.withLock({ $0.isEmpty }) {
        guard monotonicNanoseconds() < onlineBy else { throw BenchError("the pool did not come online") }
        usleep(1000)
    }

    // The effective service time: lone requests, one after the other.
    let payload: [UInt8] = Array("step".utf8)
    var lone: [UInt64] = []
    for _ in 0..<15 {
        let got = Semaphore()
        let t0 = monotonicNanoseconds()
        let ok = Atomic<Bool>(false)
        supervisor.enqueue(payload) { r in if case .success = r { ok.store(true, ordering: .relaxed) }; got.signal() }
        got.wait()
        guard ok.load(ordering: .relaxed) else { throw BenchError("a calibration request failed") }
        lone.append(monotonicNanoseconds() - t0)
    }
    lone.sort()
    let service = lone[lone.count / 2]
    var figures = StepLoadFigures()
    figures.serviceMs = Double(service) / 1e6
    figures.fullRate = Double(plan.maxWorkers) * 1e9 / Double(service)
    let lowRate = figures.fullRate * plan.lowFraction

    let capacity = Int((plan.lowSeconds + plan.tailSeconds + 10) * lowRate + plan.stepSeconds * figures.fullRate) + 64
    let book = LatencyBook(capacity: capacity)
    var sent = 0
    var phaseOf: [UInt8] = []  // 0 low before, 1 step, 2 low after
    phaseOf.reserveCapacity(capacity)
    let rss = Mutex<[(sum: Int, workers: Int)]>([])

    func send(_ phase: UInt8) {
        guard sent < capacity else { return }
        let i = sent
        sent += 1
        phaseOf.append(phase)
        let t0 = monotonicNanoseconds()
        supervisor.enqueue(payload) { r in
            book.latency[i] = monotonicNanoseconds() - t0
            if case .failure = r { book.failures += 1 }
            book.done.add(1, ordering: .sequentiallyConsistent)
        }
    }
    func sample() {
        supervisor.health { hs in
            let live = hs.filter { $0.pid != 0 }
            let members = live.filter { $0.state != .stopping }.count
            rss.withLock { $0.append((live.reduce(0) { $0 + $1.rss }, members)) }
        }
    }
    let runStart = monotonicNanoseconds()
    let stepStart = runStart + UInt64(plan.lowSeconds * 1e9)
    let stepEnd = stepStart + UInt64(plan.stepSeconds * 1e9)
    let plannedEnd = stepEnd + UInt64(plan.tailSeconds * 1e9)
    let hardEnd = plannedEnd + (kind == .adaptive ? 10_000_000_000 : 0)
    var nextSend = runStart
    var nextSample = runStart
    func backAtMinimum() -> Bool { events.scaled.withLock { $0.contains { $0.at >= stepEnd && $0.to == 1 } } }
    while true {
        let now = monotonicNanoseconds()
        if now >= hardEnd || (now >= plannedEnd && (kind != .adaptive || backAtMinimum())) { break }
        if now >= nextSample && now < plannedEnd {
            sample()
            nextSample += 100_000_000
        }
        while nextSend <= now {
            let phase: UInt8 = nextSend < stepStart ? 0 : nextSend < stepEnd ? 1 : 2
            send(phase)
            let rate = phase == 1 ? figures.fullRate : lowRate
            var next = nextSend + UInt64(1e9 / rate)
            if nextSend < stepStart && next > stepStart { next = stepStart }
            if nextSend < stepEnd && next > stepEnd && phase == 1 { next = stepEnd }
            nextSend = next
        }
        let wake = min(nextSend, nextSample < plannedEnd ? nextSample : nextSend)
        var ts = timespec(tv_sec: Int(wake / 1_000_000_000), tv_nsec: Int(wake % 1_000_000_000))
        while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nil) == EINTR {}
    }
    let drainBy = monotonicNanoseconds() + 120_000_000_000
    while book.done.load(ordering: .sequentiallyConsistent) < sent {
        guard monotonicNanoseconds() < drainBy else { throw BenchError("\(sent - book.done.load(ordering: .relaxed)) requests unanswered after 120 s") }
        usleep(2000)
    }

    // Figures.
    func waits(_ phase: UInt8) -> [Double] {
        (0..<sent).filter { phaseOf[$0] == phase }.map { max(0, Double(book.latency[$0]) - Double(service)) / 1e6 }.sorted()
    }
    func percentile(_ v: [Double], _ p: Double) -> Double { v.isEmpty ? 0 : v[min(v.count - 1, Int(Double(v.count) * p))] }
    let step = waits(1)
    figures.stepWaitP50Ms = percentile(step, 0.5)
    figures.stepWaitP99Ms = percentile(step, 0.99)
    figures.lowWaitP99Ms = percentile(waits(0), 0.99)
    figures.requests = sent
    figures.failures = book.failures
    let samples = rss.withLock { $0 }
    if !samples.isEmpty {
        figures.rssMeanBytes = Double(samples.reduce(0) { $0 + $1.sum }) / Double(samples.count)
        figures.rssPeakBytes = Double(samples.map(\.sum).max() ?? 0)
        figures.workersMean = Double(samples.reduce(0) { $0 + $1.workers }) / Double(samples.count)
    }
    if kind == .adaptive {
        let scaled = events.scaled.withLock { $0 }
        if let first = scaled.first(where: { $0.at >= stepStart && $0.to > 1 }) {
            figures.firstGrowthMs = Double(first.at - stepStart) / 1e6
        }
        if let full = scaled.first(where: { $0.at >= stepStart && $0.to == plan.maxWorkers }),
           let ready = events.online.withLock({ $0.first { $0 >= full.at } }) {
            figures.timeToMaxMs = Double(ready - stepStart) / 1e6
        }
        if let back = scaled.first(where: { $0.at >= stepEnd && $0.to == 1 }) {
            figures.returnToMinMs = Double(back.at - stepEnd) / 1e6
        }
    }
    return figures
}
