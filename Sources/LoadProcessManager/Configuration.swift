import LPMReactor
import CLoop
import LPMWire

/// How a ``Supervisor`` runs its pool. The defaults are those of load-process-manager: no
/// request timeout, no retries, one worker, at most 5 restarts within 120 seconds.
public struct SupervisorConfiguration: Sendable {
    /// The worker executable and how to start it.
    public struct Executable: Sendable {
        /// Path of the executable.
        public var path: String
        /// Arguments after `argv[0]`.
        public var arguments: [String]
        /// Extra environment variables, added to the supervisor's own environment.
        public var environment: [String: String]

        /// The executable at `path`, run with `arguments`, with `environment` added.
        public init(path: String, arguments: [String] = [], environment: [String: String] = [:]) {
            self.path = path
            self.arguments = arguments
            self.environment = environment
        }
    }

    /// The worker executable.
    public var executable: Executable
    /// How many workers to keep (`worker.count`). Default 1.
    public var count: Int = 1
    /// How many restarts are allowed within ``maxRestartsInInterval`` (`worker.restarts`).
    /// Default 5. Past it, a crashed worker's slot stays down.
    public var restarts: Int = 5
    /// The sliding window for ``restarts`` (`worker.maxRestartsInInterval`). Default 120 s.
    public var maxRestartsInInterval: Duration = .seconds(120)
    /// Default request timeout (`request.timeout`), counted from dispatch. `nil`: none.
    public var requestTimeout: Duration? = nil
    /// Default retries (`request.retries`): extra attempts after a worker dies or a timeout.
    public var retries: Int = 0
    /// How many requests one worker holds at once. Default 64.
    public var maxConcurrentRequestsPerWorker: Int = 64
    /// The most requests waiting for a worker; past it `enqueue`
    /// fails with `queueFull`. `nil`: unbounded.
    public var maxQueueLength: Int? = nil
    /// The largest frame payload, both directions; larger payloads fail with
    /// `payloadTooLarge`, and a worker sending one is a protocol violation. Default 16 MiB.
    public var maxPayload: Int = Wire.defaultMaxPayload
    /// How often RSS (from `/proc/PID/statm`) and heap figures are sampled. Default 1 s.
    public var healthInterval: Duration = .seconds(1)
    /// After ``Supervisor/softKill()``, how long to wait before killing workers that have not
    /// exited. `nil`: wait for ever (the load-process-manager behaviour).
    public var softKillTimeout: Duration? = nil
    /// Exit the process with this status once a soft or hard kill has completed (every worker
    /// reaped, every request answered), as load-process-manager does. `nil` (the default): the
    /// process lives on.
    public var exitStatusAfterKill: CInt? = nil
    /// Watch SIGINT. Without a handler set with ``Supervisor/onSIGINT(_:)`` the default is: hard
    /// kill, then exit the process with status 130.
    public var handleSIGINT: Bool = true
    /// CPUs to pin workers to, assigned round robin by slot. The supervisor calls
    /// `sched_setaffinity` on each worker right after spawning it (best effort: an error is
    /// ignored). Empty: no pinning.
    public var cpuAffinity: [Int] = []
    /// Busy-poll before sleeping, on the supervisor's own reactor thread and in the workers
    /// (passed as `LPM_BUSY_POLL_US`): lower round-trip latency when supervisor and workers run on
    /// different CPUs, for CPU spent spinning while idle. `nil` (the default): off. See
    /// `Reactor.busyPoll`.
    public var busyPoll: Duration? = nil
    /// Reactor backend for the supervisor's own thread (when it creates one). Default: epoll
    /// first, which measured faster than io_uring here for lone round trips (about 22 vs 26 µs)
    /// and equal for bursts; `LPM_REACTOR_BACKEND` overrides it.
    public var backend: Reactor.BackendChoice = .preferring(.epoll)

    /// A configuration with the default values and `executable`.
    public init(executable: Executable) {
        self.executable = executable
    }

    /// A configuration with the default values, running the executable at `path`.
    public init(workerPath path: String, count: Int = 1) {
        self.executable = Executable(path: path)
        self.count = count
    }
}

/// Per-request options (`enqueue(payload, options)`); `nil` fields take the configuration's.
public struct RequestOptions: Sendable {
    /// Timeout counted from dispatch to a worker.
    public var timeout: Duration?
    /// Extra attempts after a worker dies or a timeout.
    public var retries: Int?

    /// Options; `nil` takes the configuration's value.
    public init(timeout: Duration? = nil, retries: Int? = nil) {
        self.timeout = timeout
        self.retries = retries
    }
}

/// The answer to a request.
public struct Response: Sendable {
    /// The data the worker responded with (empty after `ack()`).
    public let data: [UInt8]
    /// The request's id, a version 4 UUID.
    public let id: RequestID
    /// When the request was enqueued: nanoseconds on `CLOCK_MONOTONIC`.
    public let createdAt: UInt64
    /// The stream the worker sent with its answer, if any.
    public let stream: ResponseStream?
    /// Whether a stream accompanies the response.
    public var hasStream: Bool { stream != nil }
    /// The worker that answered.
    public let workerPID: pid_t
    /// How many attempts it took (1 unless retried).
    public let attempts: Int

    /// The data as UTF-8 text.
    public var text: String { String(decoding: data, as: UTF8.self) }
}

/// A worker's figures, as ``Supervisor/health()`` reports them.
public struct WorkerHealth: Sendable, Hashable {
    /// The slot (0..<count).
    public let slot: Int
    /// Its process id (0 when the slot is down).
    public let pid: pid_t
    /// Resident memory in bytes, from `/proc/PID/statm`.
    public let rss: Int
    /// Heap reserved by malloc, in bytes, as the worker reports it.
    public let heapTotal: Int
    /// Heap in use, in bytes, as the worker reports it.
    public let heapUsed: Int
    /// Requests on the worker now.
    public let inFlight: Int
    /// Requests it answered.
    public let completed: Int
    /// How many times this slot was restarted.
    public let restarts: Int
    /// How the slot's previous process ended, if one did.
    public let lastExit: Reactor.ExitStatus?
    /// The slot's state.
    public let state: WorkerState
}

/// The pool as a whole, from ``Supervisor/status()``.
public struct PoolStatus: Sendable, Hashable {
    /// Requests waiting for a worker (not yet dispatched: their timeout has not started).
    public let queued: Int
    /// Requests accepted and not yet answered (queued plus in flight).
    public let pending: Int
    /// Workers in the pool (slots not retired by a resize).
    public let workers: Int
    /// Workers ready to take requests now.
    public let ready: Int
    /// Whether the pool has been soft- or hard-killed (or is being).
    public let isShutDown: Bool
}

/// A worker slot's state.
public enum WorkerState: String, Sendable, Hashable {
    /// Spawned, not ready yet.
    case starting
    /// Takes requests.
    case ready
    /// Said `busy()`: gets nothing.
    case busy
    /// Being stopped (soft kill, resize): gets nothing.
    case stopping
    /// No process: the restart budget is spent, or the pool is stopped.
    case down
}

/// What happens in the pool, delivered to ``Supervisor/onEvent(_:)`` on the reactor thread.
public enum SupervisorEvent: Sendable {
    /// Every worker is ready (again after a full recovery).
    case online
    /// A worker process started in `slot`.
    case workerStarted(slot: Int, pid: pid_t)
    /// A worker process ended.
    case workerExited(slot: Int, pid: pid_t, status: Reactor.ExitStatus, expected: Bool)
    /// A replacement was spawned for a worker that ended.
    case workerRestarted(slot: Int, pid: pid_t)
    /// The restart budget is spent: `slot` stays down.
    case restartBudgetExhausted(slot: Int)
    /// A replacement for `slot` could not be spawned: the slot stays down.
    case workerSpawnFailed(slot: Int, reason: String)
    /// A worker was killed for breaking the protocol.
    case protocolViolation(slot: Int, pid: pid_t, reason: String)
    /// Every slot is down and no request can be served.
    case noWorkersLeft
}

/// A custom event emitted by a worker.
public struct WorkerEvent: Sendable {
    /// The event's name.
    public let name: String
    /// Its payload.
    public let data: [UInt8]
    /// The worker that emitted it.
    public let pid: pid_t
    /// Whether the worker waits for a reply.
    public let wantsReply: Bool
    let replyBody: @Sendable ([UInt8]) -> Void

    /// Replies to the worker (ignored unless it asked for a reply).
    public func reply(_ data: [UInt8]) { replyBody(data) }
}

/// Why a request or an operation failed.
public struct SupervisorError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The kind of failure; a growable set.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let raw: UInt8
        /// The request timed out (counted from dispatch).
        public static let timedOut = Code(raw: 1)
        /// The worker running the request died and no attempt was left.
        public static let workerExited = Code(raw: 2)
        /// The worker broke the protocol and was killed; no attempt was left.
        public static let protocolViolation = Code(raw: 3)
        /// The queue is at ``SupervisorConfiguration/maxQueueLength``.
        public static let queueFull = Code(raw: 4)
        /// The pool is shut down (soft or hard kill).
        public static let shutDown = Code(raw: 5)
        /// No worker is left (the restart budget is spent everywhere).
        public static let noWorkers = Code(raw: 6)
        /// The payload is larger than ``SupervisorConfiguration/maxPayload``.
        public static let payloadTooLarge = Code(raw: 7)
        /// The worker failed the request (`Request.fail(_:)` on the worker side).
        public static let workerError = Code(raw: 8)
        /// A worker could not be spawned.
        public static let spawnFailed = Code(raw: 9)
        /// A response stream broke: its worker died, or the worker failed to produce it.
        public static let streamFailed = Code(raw: 11)
        /// An argument is out of range (a negative count...).
        public static let invalidArgument = Code(raw: 12)
        /// The caller cancelled (a response stream was cancelled).
        public static let cancelled = Code(raw: 13)

        public var description: String {
            ["", "timedOut", "workerExited", "protocolViolation", "queueFull", "shutDown", "noWorkers",
             "payloadTooLarge", "workerError", "spawnFailed", "", "streamFailed", "invalidArgument",
             "cancelled"][Int(raw)]
        }
    }

    /// The kind of failure.
    public let code: Code
    /// What happened, in words.
    public let message: String
    /// The request concerned, if any.
    public let requestID: RequestID?
    /// The worker concerned, if any.
    public let workerPID: pid_t?
    /// How the worker ended, for `workerExited`.
    public let exitStatus: Reactor.ExitStatus?
    /// Attempts made.
    public let attempts: Int

    init(_ code: Code, _ message: String, requestID: RequestID? = nil, workerPID: pid_t? = nil,
         exitStatus: Reactor.ExitStatus? = nil, attempts: Int = 0) {
        self.code = code
        self.message = message
        self.requestID = requestID
        self.workerPID = workerPID
        self.exitStatus = exitStatus
        self.attempts = attempts
    }

    public var description: String { "\(code): \(message)" }
}
