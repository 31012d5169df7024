// Workers forked from a template (SupervisorConfiguration.template) against workers started
// with exec, in the same run: crash recovery, many workers at once, and memory shared.
#if canImport(Glibc)
import Glibc
#endif
import LoadProcessManager
import Synchronization

extension Pool {
    /// The configuration of ``configuration(workerPath:count:maxInFlight:)`` with a template.
    public static func templateConfiguration(workerPath: String, count: Int, maxInFlight: Int = 64) -> SupervisorConfiguration {
        var config = configuration(workerPath: workerPath, count: count, maxInFlight: maxInFlight)
        config.template = WorkerTemplate()
        return config
    }
}

/// The proportional set size of `pid` in bytes (`Pss:` of `/proc/PID/smaps_rollup`, kernel 4.14+).
public func proportionalSetSize(_ pid: pid_t) -> Int? {
    guard let f = fopen("/proc/\(pid)/smaps_rollup", "r") else { return nil }
    defer { fclose(f) }
    var line = [CChar](repeating: 0, count: 256)
    while fgets(&line, 256, f) != nil {
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if text.hasPrefix("Pss:") {
            return Int(text.dropFirst(4).filter { $0.isNumber }).map { $0 * 1024 }
        }
    }
    return nil
}

/// Starts `count` workers of `workerPath` (whose preload maps `LPM_TEST_PRELOAD_MB`), forked
/// from a template or started with exec; returns the mean PSS per worker in bytes.
public func meanWorkerPSS(workerPath: String, count: Int, template: Bool, environment: [String: String]) throws -> Double {
    var config = template ? Pool.templateConfiguration(workerPath: workerPath, count: count)
                          : Pool.configuration(workerPath: workerPath, count: count)
    for (k, v) in environment { config.executable.environment[k] = v }
    let pool = try Pool(config)
    try pool.startAndWait(seconds: 120)
    let done = Semaphore()
    let counter = Counter(count * 8)
    let pids = Mutex<Set<pid_t>>([])
    // Enough requests that every worker answers some: their own pages are then touched.
    for _ in 0..<count * 8 {
        pool.supervisor.enqueue(pool.payload) { result in
            if case .success(let r) = result { pids.withLock { _ = $0.insert(r.workerPID) } }
            if counter.decrement() { done.signal() }
        }
    }
    _ = done.wait(seconds: 60)
    let sizes = pids.withLock { $0 }.compactMap(proportionalSetSize)
    pool.stop()
    guard !sizes.isEmpty else { throw BenchError("no PSS could be read") }
    return Double(sizes.reduce(0, +)) / Double(sizes.count)
}

/// Starts one worker (forked from a template, or with exec), then times `resize(count)` until
/// `count` workers are ready (polling ``Supervisor/status()``); returns milliseconds.
public func resizeToOnline(workerPath: String, count: Int, template: Bool) async throws -> Double {
    let config = template ? Pool.templateConfiguration(workerPath: workerPath, count: 1)
                          : Pool.configuration(workerPath: workerPath, count: 1)
    let pool = try Pool(config)
    try pool.startAndWait(seconds: 120)
    let t0 = monotonicNanoseconds()
    try await pool.supervisor.resize(count)
    let deadline = t0 + 120_000_000_000
    while await pool.supervisor.status().ready < count {
        guard monotonicNanoseconds() < deadline else { pool.stop(); throw BenchError("resize(\(count)) not online within 120 s") }
        try await Task.sleep(for: .microseconds(200))
    }
    let t1 = monotonicNanoseconds()
    pool.stop()
    return Double(t1 - t0) / 1e6
}

/// A burst of `n` requests (handler API) on 2 workers recycled every `every` requests, forked
/// from a template or started with exec; returns requests per second.
public func recyclingBurst(workerPath: String, n: Int, every: Int, template: Bool) throws -> Double {
    var config = template ? Pool.templateConfiguration(workerPath: workerPath, count: 2, maxInFlight: 256)
                          : Pool.configuration(workerPath: workerPath, count: 2, maxInFlight: 256)
    config.recycleAfterRequests = every
    let pool = try Pool(config)
    try pool.startAndWait(seconds: 120)
    let t0 = monotonicNanoseconds()
    try pool.burstHandler(n)
    let t1 = monotonicNanoseconds()
    pool.stop()
    return Double(n) / (Double(t1 - t0) / 1e9)
}
