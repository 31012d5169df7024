import Glibc
import LoadProcessManager
import LPMReactor
import LPMTestSupport
import Logging
import Synchronization
import Testing

/// An executable built next to the test binary.
func sibling(_ name: String) -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    let me = String(decoding: buffer[..<max(0, n)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return String(me[..<(me.lastIndex(of: "/") ?? me.startIndex)]) + "/" + name
}

func testConfig(_ mode: String = "echo", count: Int = 2, env: [String: String] = [:]) -> SupervisorConfiguration {
    var environment = env
    environment["LPM_TEST_MODE"] = mode
    var c = SupervisorConfiguration(executable: .init(path: sibling("lpm-test-worker"), environment: environment))
    c.count = count
    c.shutdownSignals = []
    if runsWithTemplate { c.template = WorkerTemplate() }
    if runsWithRings { c.transport = .sharedMemory() }
    return c
}

/// Whether the suites run with the shared-memory transport (`LPM_TEST_RINGS=1` in the test
/// process's environment): every pool of ``testConfig(_:count:env:)`` then offers rings.
let runsWithRings = getenv("LPM_TEST_RINGS").map { String(cString: $0) == "1" } ?? false

/// Whether the suites run with a worker template (`LPM_TEST_TEMPLATE=1` in the test process's
/// environment): every pool of ``testConfig(_:count:env:)`` then forks its workers from one.
let runsWithTemplate = getenv("LPM_TEST_TEMPLATE").map { String(cString: $0) == "1" } ?? false

/// True when this process has no child at all, live or zombie.
func hasNoChildren() -> Bool {
    var info = siginfo_t()
    return waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == -1 && errno == ECHILD
}

/// Records a supervisor's events and lets a test wait for one.
final class EventLog: Sendable {
    private let events = Mutex<[SupervisorEvent]>([])

    init(_ s: Supervisor) {
        s.onEvent { [self] e in events.withLock { $0.append($0.isEmpty ? e : e) } }
    }

    var all: [SupervisorEvent] { events.withLock { $0 } }

    func count(_ match: (SupervisorEvent) -> Bool) -> Int { all.filter(match).count }

    /// Waits (polling, with a generous hang guard) until `match` has been seen `n` times.
    func wait(for n: Int = 1, seconds: Double = 20, _ match: (SupervisorEvent) -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < deadline {
            if count(match) >= n { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return false
    }
}

func isOnline(_ e: SupervisorEvent) -> Bool { if case .online = e { return true }; return false }
func isRestart(_ e: SupervisorEvent) -> Bool { if case .workerRestarted = e { return true }; return false }
func isExhausted(_ e: SupervisorEvent) -> Bool { if case .restartBudgetExhausted = e { return true }; return false }
func isViolation(_ e: SupervisorEvent) -> Bool { if case .protocolViolation = e { return true }; return false }
func isExit(_ e: SupervisorEvent) -> Bool { if case .workerExited = e { return true }; return false }

/// Starts a supervisor and waits until it is online.
func startOnline(_ config: SupervisorConfiguration) async throws -> (Supervisor, EventLog) {
    let s = try Supervisor(config)
    let log = EventLog(s)
    try await s.start()
    #expect(await log.wait(isOnline), "the pool came online")
    return (s, log)
}

extension Result {
    var error: Failure? { if case .failure(let e) = self { return e }; return nil }
}

/// Runs `body`, then checks that this process has no child left and its descriptors came back.
/// For exit tests (`#expect(processExitsWith:)`), where the process and its counts are the
/// test's own.
func leavesNothingBehind(_ body: () async throws -> Void) async throws {
    await settleChildProcess()
    try await Task.sleep(for: .milliseconds(1))  // the concurrency runtime's timerfd, first
    let fds = openFDCount()
    try await body()
    #expect(hasNoChildren())
    try await Task.sleep(for: .milliseconds(50))  // the reactor thread closes its descriptors as it ends
    #expect(openFDCount() == fds, "\(fdList())")
}

/// Polls `condition` every 5 ms until it holds; `seconds` is only a guard against hanging.
/// Returns its last value.
func eventually(seconds: Double = 60, _ condition: () async -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return await condition()
}

/// Requests the workers have taken, in flight or answered. Unlike `status().pending`, which a
/// quick answer brings back to 0 before a slow poll sees it, it never goes down (while no worker
/// is replaced): a test waits on it to know a request was admitted.
func dispatched(_ s: Supervisor) async -> Int {
    await s.health().reduce(0) { $0 + $1.inFlight + $1.completed }
}

/// Keeps every record logged through its ``logger``.
final class LogRecords: Sendable {
    struct Record: Sendable { let level: Logger.Level; let message: String; let metadata: [String: String] }
    let all = Mutex<[Record]>([])
    var snapshot: [Record] { all.withLock { $0 } }

    struct Handler: LogHandler {
        let records: LogRecords
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            let fields = (event.metadata ?? [:]).mapValues { "\($0)" }
            records.all.withLock { $0.append(Record(level: event.level, message: "\(event.message)", metadata: fields)) }
        }
    }

    var logger: Logger { Logger(label: "test-pool", factory: { _ in Handler(records: self) }) }
}
