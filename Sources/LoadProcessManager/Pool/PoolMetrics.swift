import CoreMetrics
import LPMReactor

/// The pool's swift-metrics instruments, made once per supervisor, and the hooks the pool calls
/// where requests and workers change.
///
/// It exists only when metrics are wanted (``SupervisorConfiguration/metricsEnabled``) and a
/// backend is there (``SupervisorConfiguration/metricsFactory``, or a factory bootstrapped with
/// `MetricsSystem.bootstrap`): otherwise ``make(_:)`` returns `nil`, and each hook in the pool,
/// written `metrics?.hook(...)`, costs one test of a `nil` optional: its arguments are not even
/// evaluated, nothing is allocated, no clock is read.
///
/// Every instrument is made here, up front (per-slot RSS gauges when a slot first appears, a
/// round-trip timer when an outcome first occurs), never per request; a hook finds its
/// instrument by index, not by label. Confined to the reactor thread, like the pool.
///
/// The request table keeps, per request, when it was created; the time the current attempt was
/// dispatched (or the request queued again for a retry) is kept here, in ``since``, a column
/// beside the table indexed by the table's entry index.
final class PoolMetrics {
    typealias Finished = RequestTable<Completion>.Finished

    private let factory: any MetricsFactory
    private let prefix: String
    private let dimensions: [(String, String)]

    /// Requests received: admitted or refused (`<prefix>_requests_total`).
    let requests: Counter
    /// Requests answered, by outcome (`<prefix>_requests_completed_total{outcome}`), indexed by
    /// ``slot(_:)``: 0 is success, then `SupervisorError.Code`s.
    private var completed: [Counter?]
    /// Round trip, enqueue to answer, of admitted requests, by outcome
    /// (`<prefix>_request_duration_seconds{outcome}`); indexed like ``completed``.
    private var durations: [CoreMetrics.Timer?]
    /// Attempts queued again after a failed one (`<prefix>_request_retries_total`).
    let retries: Counter
    /// Attempts that timed out, retried or not (`<prefix>_request_timeouts_total`).
    let timeouts: Counter
    /// Workers restarted after an unexpected exit (`<prefix>_worker_restarts_total`).
    let restarts: Counter
    /// Workers killed for breaking the protocol, or for not answering pings
    /// (`<prefix>_worker_violations_total{kind="protocol"|"unresponsive"}`).
    let protocolViolations: Counter
    let unresponsive: Counter
    /// Scaling decisions of an adaptive pool (`<prefix>_pool_scaling_total{direction="grow"|"shrink"}`),
    /// and the size the pool last decided on (`<prefix>_pool_target_workers`).
    let scaledUp: Counter
    let scaledDown: Counter
    let targetWorkers: Gauge
    /// `<prefix>_requests_queued`, `<prefix>_requests_in_flight`, `<prefix>_workers_ready`.
    let queued: Gauge
    let inFlight: Gauge
    let readyWorkers: Gauge
    /// Resident memory of the process in each slot (`<prefix>_worker_resident_memory_bytes{slot}`),
    /// 0 while the slot has none; by slot index.
    private var residentMemory: [Gauge] = []
    /// Enqueue (or re-queue, for a retry) to dispatch, per attempt (`<prefix>_request_queue_wait_seconds`).
    let queueWait: CoreMetrics.Timer
    /// Dispatch to the worker's answer (response or error) (`<prefix>_request_service_seconds`).
    let service: CoreMetrics.Timer

    /// By request table entry: when the current attempt was dispatched, or, while a retry waits in
    /// the queue, when it was queued again (monotonic nanoseconds). Grows with the table; given
    /// back when the pool is idle. `@exclusivity(unchecked)`: the reactor thread alone touches
    /// it, and no access overlaps another (as the pool's own state).
    @exclusivity(unchecked) private var since: [Int64] = []
    private static let keptWhenIdle = 4096

    /// The outcomes a request can be answered with, created (at 0) up front so that their
    /// series exist before the first one occurs.
    static let requestOutcomes: [SupervisorError.Code] = [
        .workerError, .timedOut, .workerExited, .protocolViolation, .workerUnresponsive, .poisonRequest,
        .cancelled, .shutDown, .noWorkers, .queueFull, .payloadTooLarge, .invalidArgument,
    ]

    /// The metrics for a pool run with `config`, or `nil` when they are off or no backend is set.
    static func make(_ config: SupervisorConfiguration) -> PoolMetrics? {
        guard config.metricsEnabled else { return nil }
        let factory = config.metricsFactory ?? MetricsSystem.factory
        if factory is NOOPMetricsHandler { return nil }
        return PoolMetrics(factory: factory, prefix: config.metricsLabelPrefix, dimensions: config.metricsDimensions)
    }

    init(factory: any MetricsFactory, prefix: String, dimensions: [(String, String)]) {
        self.factory = factory
        self.prefix = prefix
        self.dimensions = dimensions
        func label(_ name: String) -> String { Self.label(prefix, name) }
        requests = Counter(label: label("requests_total"), dimensions: dimensions, factory: factory)
        retries = Counter(label: label("request_retries_total"), dimensions: dimensions, factory: factory)
        timeouts = Counter(label: label("request_timeouts_total"), dimensions: dimensions, factory: factory)
        restarts = Counter(label: label("worker_restarts_total"), dimensions: dimensions, factory: factory)
        scaledUp = Counter(label: label("pool_scaling_total"), dimensions: dimensions + [("direction", "grow")], factory: factory)
        scaledDown = Counter(label: label("pool_scaling_total"), dimensions: dimensions + [("direction", "shrink")], factory: factory)
        targetWorkers = Gauge(label: label("pool_target_workers"), dimensions: dimensions, factory: factory)
        protocolViolations = Counter(label: label("worker_violations_total"), dimensions: dimensions + [("kind", "protocol")],
                                     factory: factory)
        unresponsive = Counter(label: label("worker_violations_total"), dimensions: dimensions + [("kind", "unresponsive")],
                               factory: factory)
        queued = Gauge(label: label("requests_queued"), dimensions: dimensions, factory: factory)
        inFlight = Gauge(label: label("requests_in_flight"), dimensions: dimensions, factory: factory)
        readyWorkers = Gauge(label: label("workers_ready"), dimensions: dimensions, factory: factory)
        queueWait = CoreMetrics.Timer(label: label("request_queue_wait_seconds"), dimensions: dimensions, factory: factory)
        service = CoreMetrics.Timer(label: label("request_service_seconds"), dimensions: dimensions, factory: factory)
        let slots = 1 + Int(Self.requestOutcomes.map(\.raw).max() ?? 0)
        completed = Array(repeating: nil, count: slots)
        durations = Array(repeating: nil, count: slots)
        _ = completedCounter(nil)
        for code in Self.requestOutcomes { _ = completedCounter(code) }
    }

    // MARK: Labels

    /// `name` after the configured prefix and `_` (no prefix: `name` alone).
    static func label(_ prefix: String, _ name: String) -> String { prefix.isEmpty ? name : prefix + "_" + name }

    private func label(_ name: String) -> String { Self.label(prefix, name) }

    /// The `outcome` dimension's value: `success`, or the error code in snake case
    /// (`timedOut` gives `timed_out`).
    static func outcome(_ code: SupervisorError.Code?) -> String {
        guard let code else { return "success" }
        var out = ""
        for c in code.description.unicodeScalars {
            if c.properties.isUppercase {
                if !out.isEmpty { out += "_" }
                out.unicodeScalars.append(contentsOf: c.properties.lowercaseMapping.unicodeScalars)
            } else {
                out.unicodeScalars.append(c)
            }
        }
        return out
    }

    /// Where an outcome's instruments sit in ``completed`` and ``durations``.
    private func slot(_ code: SupervisorError.Code?) -> Int {
        let i = code.map { Int($0.raw) } ?? 0
        if i >= completed.count {
            completed += Array(repeating: nil, count: i + 1 - completed.count)
            durations += Array(repeating: nil, count: i + 1 - durations.count)
        }
        return i
    }

    private func completedCounter(_ code: SupervisorError.Code?) -> Counter {
        let i = slot(code)
        if let c = completed[i] { return c }
        let c = Counter(label: label("requests_completed_total"), dimensions: dimensions + [("outcome", Self.outcome(code))],
                        factory: factory)
        completed[i] = c
        return c
    }

    private func durationTimer(_ code: SupervisorError.Code?) -> CoreMetrics.Timer {
        let i = slot(code)
        if let t = durations[i] { return t }
        let t = CoreMetrics.Timer(label: label("request_duration_seconds"), dimensions: dimensions + [("outcome", Self.outcome(code))],
                                  factory: factory)
        durations[i] = t
        return t
    }

    // MARK: Hooks: requests

    /// A request was admitted to the queue.
    func admitted(_ pool: Pool) {
        requests.increment()
        queued.record(pool.table.queuedCount)
    }

    /// A request was refused before it was queued, with `code`: received, and answered at once.
    func refused(_ code: SupervisorError.Code) {
        requests.increment()
        completedCounter(code).increment()
    }

    /// Request `index` was dispatched (its current attempt is now in flight).
    func dispatched(_ index: UInt32, _ pool: Pool) {
        let now = Sys.monotonicNanoseconds()
        let i = Int(index)
        if i >= since.count { since += Array(repeating: 0, count: max(i + 1 - since.count, since.count)) }
        let waitingSince = pool.table[index].attempts <= 1 ? Int64(truncatingIfNeeded: pool.table[index].createdAt) : since[i]
        queueWait.recordNanoseconds(max(0, now - waitingSince))
        since[i] = now
        recordRequestGauges(pool)
    }

    /// Request `index`'s attempt failed and it is queued again.
    func retried(_ index: UInt32, _ pool: Pool) {
        retries.increment()
        if Int(index) < since.count { since[Int(index)] = Sys.monotonicNanoseconds() }
        recordRequestGauges(pool)
    }

    /// An attempt timed out (it is then retried or failed: ``retried(_:_:)`` or ``finished(_:_:_:)``).
    func timedOut() {
        timeouts.increment()
    }

    /// Request `index` was answered by its worker: a response, or an error if `error`.
    func answered(_ index: UInt32, _ f: Finished, error: Bool, _ pool: Pool) {
        let now = Sys.monotonicNanoseconds()
        if Int(index) < since.count { service.recordNanoseconds(max(0, now - since[Int(index)])) }
        complete(f, error ? .workerError : nil, now, pool)
    }

    /// A request finished without an answer from its worker, with `code`.
    func finished(_ f: Finished, _ code: SupervisorError.Code, _ pool: Pool) {
        complete(f, code, Sys.monotonicNanoseconds(), pool)
    }

    private func complete(_ f: Finished, _ code: SupervisorError.Code?, _ now: Int64, _ pool: Pool) {
        completedCounter(code).increment()
        durationTimer(code).recordNanoseconds(max(0, now - Int64(truncatingIfNeeded: f.createdAt)))
        recordRequestGauges(pool)
        if pool.table.pendingCount == 0 && since.count > Self.keptWhenIdle { since = [] }
    }

    private func recordRequestGauges(_ pool: Pool) {
        let waiting = pool.table.queuedCount
        queued.record(waiting)
        inFlight.record(pool.table.pendingCount - waiting)
    }

    // MARK: Hooks: workers

    /// The pool emitted `e` (every event goes through ``Pool/emit(_:)``).
    func event(_ e: SupervisorEvent, _ pool: Pool) {
        switch e {
        case .workerRestarted: restarts.increment()
        case .protocolViolation: protocolViolations.increment()
        case .workerUnresponsive: unresponsive.increment()
        case .poolScaled(let from, let to, _):
            if to > from { scaledUp.increment() } else if to < from { scaledDown.increment() }
            targetWorkers.record(to)
        case .workerExited(let slot, _, _, _): if slot < residentMemory.count { residentMemory[slot].record(0) }
        default: break
        }
        workersChanged(pool)
    }

    /// A worker's lifecycle changed (ready, busy, draining, stopping, gone): counts the ready ones.
    func workersChanged(_ pool: Pool) {
        var ready = 0
        for s in pool.slots where s.process?.lifecycle.acceptsWork == true { ready += 1 }
        readyWorkers.record(ready)
    }

    /// On the health timer, once RSS has been sampled: every gauge, from the pool's state.
    func sampled(_ pool: Pool) {
        while residentMemory.count < pool.slots.count {
            residentMemory.append(Gauge(label: label("worker_resident_memory_bytes"),
                                        dimensions: dimensions + [("slot", "\(residentMemory.count)")], factory: factory))
        }
        for (i, s) in pool.slots.enumerated() { residentMemory[i].record(s.process?.rss ?? 0) }
        workersChanged(pool)
        recordRequestGauges(pool)
    }
}
