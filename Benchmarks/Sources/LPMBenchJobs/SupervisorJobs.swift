// Supervisor + Worker (the no-op bench-worker): round trips, bursts, crash recovery, a queue
// filled before start, and a pool of 256.
#if canImport(Glibc)
import Glibc
#endif
import LoadProcessManager
import Synchronization

/// Receives the supervisor's events (on its reactor thread) and lets a benchmark wait for them.
public final class EventTap: Sendable {
    struct State {
        var onlineCount = 0
        var restarted: [(slot: Int, pid: pid_t, at: UInt64)] = []
        var onRestarted: (@Sendable (Int, pid_t) -> Void)?
        var onOnline: (@Sendable () -> Void)?
    }
    let state = Mutex(State())
    let online = Semaphore()

    func handle(_ event: SupervisorEvent) {
        switch event {
        case .online:
            let hook = state.withLock { s -> (@Sendable () -> Void)? in
                s.onlineCount += 1
                return s.onOnline
            }
            hook?()
            online.signal()
        case .workerRestarted(let slot, let pid):
            let now = monotonicNanoseconds()
            let hook = state.withLock { s -> (@Sendable (Int, pid_t) -> Void)? in
                s.restarted.append((slot, pid, now))
                return s.onRestarted
            }
            hook?(slot, pid)
        default:
            break
        }
    }

    /// Waits for the next `.online` event.
    public func waitOnline(seconds: Double = 60) throws {
        guard online.wait(seconds: seconds) else { throw BenchError("the pool did not come online within \(seconds) s") }
    }
}

/// A running pool of `bench-worker` processes.
public final class Pool: Sendable {
    public let supervisor: Supervisor
    public let events = EventTap()
    public let payload: [UInt8]
    public let workers: Int

    /// The configuration every job uses: the no-op worker, `count` workers, `maxInFlight`
    /// requests per worker, a restart budget that never runs out.
    public static func configuration(workerPath: String, count: Int, maxInFlight: Int = 64,
                                     transport: Transport = .socket) -> SupervisorConfiguration {
        var config = SupervisorConfiguration(workerPath: workerPath, count: count)
        config.transport = transport
        config.maxConcurrentRequestsPerWorker = maxInFlight
        config.restarts = Int.max / 2
        config.maxRestartsInInterval = .seconds(1)
        config.shutdownSignals = []
        return config
    }

    /// Creates the supervisor; does not start it.
    public init(_ config: SupervisorConfiguration, payloadSize: Int = 64) throws {
        supervisor = try Supervisor(config)
        payload = (0..<payloadSize).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
        workers = config.count
        let events = self.events
        supervisor.onEvent { events.handle($0) }
    }

    /// Creates, starts, and waits until every worker is ready.
    public convenience init(workerPath: String, count: Int, maxInFlight: Int = 64, payloadSize: Int = 64,
                            transport: Transport = .socket) throws {
        try self.init(Pool.configuration(workerPath: workerPath, count: count, maxInFlight: maxInFlight, transport: transport),
                      payloadSize: payloadSize)
        try startAndWait()
    }

    /// Starts the workers and waits for `.online`.
    public func startAndWait(seconds: Double = 60) throws {
        let started = Semaphore()
        let failure = Mutex<SupervisorError?>(nil)
        supervisor.start { error in
            failure.withLock { $0 = error }
            started.signal()
        }
        started.wait()
        if let e = failure.withLock({ $0 }) { throw BenchError("start failed: \(e)") }
        try events.waitOnline(seconds: seconds)
    }

    // MARK: Round trips

    /// `n` sequential requests through the async API.
    public func roundTripsAsync(_ n: Int) async throws {
        for _ in 0..<n {
            let r = try await supervisor.enqueue(payload)
            if r.bytes.count != payload.count { throw BenchError("wrong answer: \(r.bytes.count) bytes") }
        }
    }

    /// `n` sequential requests through the async API from a task that prefers the supervisor's
    /// executor: the task runs on the reactor thread, with no hop either way.
    public func roundTripsAsyncOnExecutor(_ n: Int) async throws {
        let supervisor = self.supervisor, payload = self.payload
        try await withTaskExecutorPreference(supervisor.executor) {
            for _ in 0..<n {
                let r = try await supervisor.enqueue(payload)
                if r.bytes.count != payload.count { throw BenchError("wrong answer: \(r.bytes.count) bytes") }
            }
        }
    }

    /// `n` sequential requests through the async API from an actor that lives on the reactor
    /// thread (its executor is the reactor's serial executor): no hop either way, like
    /// ``roundTripsAsyncOnExecutor(_:)``, and no task executor preference to look up.
    public func roundTripsOnActor(_ n: Int) async throws {
        try await ReactorCaller(supervisor).roundTrips(n, payload)
    }

    /// `n` sequential requests through the completion-handler API; this thread blocks on a
    /// semaphore between them (the completion runs on the reactor thread).
    public func roundTripsHandler(_ n: Int) throws {
        let done = Semaphore()
        let failures = Tally()
        let completion: @Sendable (Result<WorkerResponse, SupervisorError>) -> Void = { result in
            if case .failure = result { failures.add() }
            done.signal()
        }
        for _ in 0..<n {
            supervisor.enqueue(payload, completion: completion)
            done.wait()
        }
        if failures.value > 0 { throw BenchError("\(failures.value) requests failed") }
    }

    /// `n` sequential requests, each enqueued by the previous one's completion handler on the
    /// reactor thread: the supervisor's own floor, with no caller thread in the loop.
    public func roundTripsChained(_ n: Int) throws {
        let chain = Chain(left: n, supervisor: supervisor, payload: payload)
        chain.begin()
        guard chain.done.wait(seconds: 600) else { throw BenchError("chained round trips timed out") }
        if chain.failures > 0 { throw BenchError("\(chain.failures) requests failed") }
    }

    /// Asks a counting bench-worker (see MallocCounter) for its allocation count; the request
    /// goes to the worker with the fewest in flight, so use a pool of one worker.
    public func workerMallocCount() throws -> Int {
        let box = Mutex<Int?>(nil)
        let got = Semaphore()
        supervisor.enqueue(MallocCounter.query) { result in
            if case .success(let r) = result { box.withLock { $0 = Int(r.text) } }
            got.signal()
        }
        got.wait()
        guard let n = box.withLock({ $0 }) else { throw BenchError("the worker does not count its allocations (LD_PRELOAD of malloc_count.so and LPM_COUNT_MALLOCS=1)") }
        return n
    }

    /// `n` requests handed over in one `enqueue(contentsOf:)` call (one hop); returns when all are
    /// answered.
    public func burstBatched(_ n: Int) throws {
        let answers = Answers(n)
        let payloads = [[UInt8]](repeating: payload, count: n)
        supervisor.enqueue(contentsOf: payloads) { _, result in answers.record(result) }
        try answers.wait(seconds: 600, what: "batched burst")
    }

    // MARK: Bursts

    /// `n` requests enqueued at once from this thread (completion-handler API); returns when all
    /// are answered.
    public func burstHandler(_ n: Int) throws {
        let answers = Answers(n)
        let completion = answers.completion
        for _ in 0..<n { supervisor.enqueue(payload, completion: completion) }
        try answers.wait(seconds: 600, what: "burst")
    }

    /// `n` tiny inputs through the ordered `map`, `chunkSize` to a frame, consumed in order by
    /// one task; checks every answer.
    public func map(_ n: Int, chunkSize: Int) async throws {
        // The inputs exist before the map (one 8-byte array, repeated), as Python's range does.
        let inputs = repeatElement([UInt8](repeating: 7, count: 8), count: n)
        var k = 0
        var failures = 0
        for await r in supervisor.map(inputs, options: MapOptions(chunkSize: chunkSize, maxChunksInFlight: 64)) {
            if case .success(let w) = r, w.bytes.count == 8 {} else { failures += 1 }
            k += 1
        }
        if k != n || failures > 0 { throw BenchError("map: \(k) of \(n) answered, \(failures) failed") }
    }

    /// `n` requests through the async API from `tasks` concurrent tasks (each awaits its answers
    /// in turn).
    public func burstAsync(_ n: Int, tasks: Int = 512, onExecutor: Bool = false) async throws {
        let supervisor = self.supervisor, payload = self.payload
        let failures = Tally()
        @Sendable func run(_ count: Int) async {
            for _ in 0..<count {
                do { _ = try await supervisor.enqueue(payload) } catch { failures.add() }
            }
        }
        await withTaskGroup(of: Void.self) { group in
            for t in 0..<tasks {
                let count = n / tasks + (t < n % tasks ? 1 : 0)
                // Not `addTask(executorPreference: nil)`: that still gives each task a preference
                // record, and the runtime then reads it under the task's lock at every hop.
                if onExecutor {
                    group.addTask(executorPreference: supervisor.executor) { await run(count) }
                } else {
                    group.addTask { await run(count) }
                }
            }
        }
        if failures.value > 0 { throw BenchError("\(failures.value) requests failed") }
    }

    // MARK: Crash and replacement

    public struct CrashTiming: Sendable {
        /// SIGKILL to `.workerRestarted` (the replacement is spawned).
        public var restartedNs: UInt64
        /// SIGKILL to `.online` (the replacement said ready).
        public var onlineNs: UInt64
        /// SIGKILL to the answer of a request enqueued at `.workerRestarted`.
        public var answeredNs: UInt64
    }

    /// Kills the worker that answers a request (SIGKILL), then times the replacement: its spawn
    /// (`.workerRestarted`), its readiness (`.online`), and its first answer to a request enqueued
    /// the moment the restart is announced. Use a pool of one worker.
    public func crashAndReplace() throws -> CrashTiming {
        // Which process to kill: the one answering now.
        let first = Mutex<Result<WorkerResponse, SupervisorError>?>(nil)
        let got = Semaphore()
        supervisor.enqueue(payload) { r in first.withLock { $0 = r }; got.signal() }
        got.wait()
        guard case .success(let r)? = first.withLock({ $0 }) else { throw BenchError("probe failed before the crash") }
        let victim = r.workerPID

        let answered = Semaphore()
        let onlineAt = Stamp()
        let answeredAt = Stamp()
        let answerPID = Tally()
        let supervisor = self.supervisor, payload = self.payload
        events.state.withLock { s in
            s.restarted.removeAll()
            s.onOnline = { onlineAt.setOnce(monotonicNanoseconds()) }
            s.onRestarted = { _, _ in
                // On the reactor thread: the request waits in the queue for the replacement.
                supervisor.enqueue(payload) { result in
                    answeredAt.setOnce(monotonicNanoseconds())
                    if case .success(let r) = result { answerPID.set(Int(r.workerPID)) }
                    answered.signal()
                }
            }
        }
        defer { events.state.withLock { s in s.onRestarted = nil; s.onOnline = nil } }
        let t0 = monotonicNanoseconds()
        guard Glibc.kill(victim, SIGKILL) == 0 else { throw BenchError("kill(\(victim)): errno \(errno)") }
        guard answered.wait(seconds: 30) else { throw BenchError("no answer from a replacement within 30 s") }
        guard answerPID.value != 0, answerPID.value != Int(victim) else {
            throw BenchError("the request after the crash failed or was answered by the dead worker")
        }
        let restartedAt = events.state.withLock { $0.restarted.first?.at } ?? 0
        // `.online` may trail the answer by a hair (both come from the same reactor iteration).
        let deadline = monotonicNanoseconds() + 5_000_000_000
        while onlineAt.value == 0 && monotonicNanoseconds() < deadline {
            _ = events.online.wait(seconds: 0.01)
        }
        let online = onlineAt.value
        return CrashTiming(restartedNs: restartedAt &- t0, onlineNs: online &- t0, answeredNs: answeredAt.value &- t0)
    }

    // MARK: Stop

    /// Soft-kills the pool and waits until every worker is reaped.
    public func stop() {
        let done = Semaphore()
        supervisor.softKill(completion: { done.signal() })
        done.wait()
    }

    /// Hard-kills the pool and waits until every worker is reaped.
    public func kill() {
        let done = Semaphore()
        supervisor.hardKill(completion: { done.signal() })
        done.wait()
    }
}

/// Chained round trips: each completion (on the reactor thread) enqueues the next request.
final class Chain: @unchecked Sendable {
    // @unchecked: `left` and `failures` are touched only by completions, which all run on the
    // supervisor's reactor thread, one after the other; `done` is read after it is signalled.
    var left: Int
    var failures = 0
    let done = Semaphore()
    let supervisor: Supervisor
    let payload: [UInt8]
    private var next: (@Sendable (Result<WorkerResponse, SupervisorError>) -> Void)?

    init(left: Int, supervisor: Supervisor, payload: [UInt8]) {
        self.left = left
        self.supervisor = supervisor
        self.payload = payload
    }

    func begin() {
        // `unowned(unsafe)`: the caller holds the chain until `done`; a checked `unowned` cost
        // four atomic retain-and-release pairs per round trip, counted as the supervisor's.
        next = { [unowned(unsafe) self] result in
            if case .failure = result { self.failures += 1 }
            self.left -= 1
            if self.left == 0 {
                self.next = nil
                self.done.signal()
            } else {
                self.supervisor.enqueue(self.payload, completion: self.next!)
            }
        }
        supervisor.enqueue(payload, completion: next!)
    }
}

// MARK: A queue filled before start

public struct QueuedFigures: Sendable {
    /// Enqueue calls, per request, until the reactor has taken every one (nanoseconds).
    public var enqueueNsPerRequest: Double
    /// Supervisor RSS growth per queued request (bytes).
    public var rssBytesPerRequest: Double
    /// From start() until every request is answered (seconds).
    public var drainSeconds: Double
    /// Requests per second while draining (including the workers' start).
    public var drainRate: Double
}

/// Queues `n` requests on a supervisor that is not started, then starts it and waits for every
/// answer. The payload buffer is shared by all requests (copy-on-write), so the RSS growth is
/// the supervisor's own cost per request.
public func queuedBeforeStart(workerPath: String, n: Int, workers: Int = 2, maxInFlight: Int = 256) throws -> QueuedFigures {
    let pool = try Pool(Pool.configuration(workerPath: workerPath, count: workers, maxInFlight: maxInFlight))
    let supervisor = pool.supervisor, payload = pool.payload
    // Let the reactor thread settle and take its first pages before measuring.
    let barrier = Semaphore()
    supervisor.health { _ in barrier.signal() }
    barrier.wait()
    let rss0 = ProcessFigures.residentBytes()

    let answers = Answers(n)
    let completion = answers.completion
    let t0 = monotonicNanoseconds()
    for _ in 0..<n { supervisor.enqueue(payload, completion: completion) }
    supervisor.health { _ in barrier.signal() }  // runs after every enqueue above
    barrier.wait()
    let t1 = monotonicNanoseconds()
    let rss1 = ProcessFigures.residentBytes()

    supervisor.start(completion: { _ in })
    do { try answers.wait(seconds: 1200, what: "queued requests") } catch { pool.stop(); throw error }
    let t2 = monotonicNanoseconds()
    pool.stop()
    let drain = Double(t2 - t1) / 1e9
    return QueuedFigures(enqueueNsPerRequest: Double(t1 - t0) / Double(n),
                         rssBytesPerRequest: Double(rss1 - rss0) / Double(n),
                         drainSeconds: drain, drainRate: Double(n) / drain)
}

// MARK: Many workers

public struct ManyWorkersFigures: Sendable {
    /// start() until `.online` (every worker ready), milliseconds.
    public var onlineMs: Double
    /// One request per worker, all at once, until every answer (milliseconds).
    public var requestsMs: Double
    /// How many distinct workers answered them.
    public var distinctWorkers: Int
    /// Soft kill until every worker is reaped (milliseconds).
    public var stopMs: Double
}

/// Starts `count` workers (exec'd, or forked from a template), sends one request per worker at
/// once, then soft-kills the pool.
public func manyWorkers(workerPath: String, count: Int, template: Bool = false) throws -> ManyWorkersFigures {
    let pool = try Pool(template ? Pool.templateConfiguration(workerPath: workerPath, count: count)
                                 : Pool.configuration(workerPath: workerPath, count: count, maxInFlight: 64))
    let t0 = monotonicNanoseconds()
    try pool.startAndWait(seconds: 120)
    let t1 = monotonicNanoseconds()
    let pids = Mutex<Set<pid_t>>([])
    let done = Semaphore()
    let counter = Counter(count)
    for _ in 0..<count {
        pool.supervisor.enqueue(pool.payload) { result in
            if case .success(let r) = result { pids.withLock { _ = $0.insert(r.workerPID) } }
            if counter.decrement() { done.signal() }
        }
    }
    guard done.wait(seconds: 120) else { throw BenchError("requests to \(count) workers not answered") }
    let t2 = monotonicNanoseconds()
    pool.stop()
    let t3 = monotonicNanoseconds()
    return ManyWorkersFigures(onlineMs: Double(t1 - t0) / 1e6, requestsMs: Double(t2 - t1) / 1e6,
                              distinctWorkers: pids.withLock { $0.count }, stopMs: Double(t3 - t2) / 1e6)
}

/// Counts `n` answers down: failures are tallied, and `wait` returns once all have arrived.
final class Answers: Sendable {
    private let done = Semaphore()
    private let left: Counter
    private let failures = Tally()
    /// The first failure, for the report.
    private let firstFailure = Mutex<SupervisorError?>(nil)

    init(_ n: Int) { left = Counter(n) }

    /// Records one answer (any thread).
    func record(_ result: Result<WorkerResponse, SupervisorError>) {
        if case .failure(let error) = result {
            failures.add()
            firstFailure.withLock { if $0 == nil { $0 = error } }
        }
        if left.decrement() { done.signal() }
    }

    /// A completion handler that records its answer.
    var completion: @Sendable (Result<WorkerResponse, SupervisorError>) -> Void { { self.record($0) } }

    /// Waits for every answer; throws if they do not all come in time, or if any failed.
    func wait(seconds: Double, what: String) throws {
        guard done.wait(seconds: seconds) else { throw BenchError("\(what) timed out with \(left.current) left") }
        if failures.value > 0 {
            throw BenchError("\(failures.value) of the \(what) failed; the first: \(firstFailure.withLock { $0 }.map { "\($0)" } ?? "?")")
        }
    }
}


/// An actor on a supervisor's reactor thread (``Pool/roundTripsOnActor(_:)``).
actor ReactorCaller {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    let supervisor: Supervisor

    init(_ supervisor: Supervisor) {
        self.supervisor = supervisor
        unownedExecutor = supervisor.reactor.executor.asUnownedSerialExecutor()
    }

    func roundTrips(_ n: Int, _ payload: [UInt8]) async throws {
        for _ in 0..<n {
            let r = try await supervisor.enqueue(payload)
            if r.bytes.count != payload.count { throw BenchError("wrong answer: \(r.bytes.count) bytes") }
        }
    }
}
