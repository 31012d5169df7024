import CoreMetrics
import Glibc
import LPMReactor
import Logging
import LPMWire

/// How a ``Supervisor`` runs its pool. The defaults are those of load-process-manager: no
/// request timeout, no retries, one worker, at most 5 restarts within 120 seconds.
public struct SupervisorConfiguration: Sendable {
    /// The worker executable and how to start it.
    public struct Executable: Sendable {
        /// Which of the supervisor's environment variables a worker inherits.
        public enum InheritedEnvironment: Sendable, Hashable {
            /// All of them (the default).
            case all
            /// None: the worker sees only the `LPM_*` variables and ``Executable/environment``.
            case none
            /// Only these names (those the supervisor has set), e.g. `.only(["PATH", "HOME"])`.
            case only([String])
        }

        /// Path of the executable.
        public var path: String
        /// Arguments after `argv[0]`.
        public var arguments: [String]
        /// Extra environment variables, added to the inherited ones (replacing any of the same
        /// name); always set, whatever ``inheritEnvironment`` says.
        public var environment: [String: String]
        /// Which of the supervisor's own environment variables the worker inherits. Default
        /// `.all`. The protocol's variables (`LPM_CHANNEL_FD`, `LPM_MAX_FRAME`, `LPM_PARENT_PID`,
        /// `LPM_WORKER_SLOT`...) and ``environment`` are always set.
        public var inheritEnvironment: InheritedEnvironment

        /// The executable at `path`, run with `arguments`, with `environment` added to the
        /// supervisor's environment (all of it, or what `inheritEnvironment` lets through).
        public init(path: String, arguments: [String] = [], environment: [String: String] = [:],
                    inheritEnvironment: InheritedEnvironment = .all) {
            self.path = path
            self.arguments = arguments
            self.environment = environment
            self.inheritEnvironment = inheritEnvironment
        }
    }

    /// The worker executable.
    public var executable: Executable
    /// How many workers to keep (`worker.count`). Default 1.
    public var count: Int = 1
    /// What happens to a slot once the restart budget refused to restart it (or its replacement
    /// could not be spawned).
    public enum AfterBudgetSpent: Sendable, Hashable {
        /// It comes back by itself after `initial`, then twice as long after each new refusal,
        /// up to `maximum`; requests fail fast with `noWorkers` while no worker is left.
        case backoff(initial: Duration, maximum: Duration)
        /// It stays down until ``Supervisor/resize(_:)`` brings it back (the
        /// load-process-manager behaviour).
        case stop
    }

    /// How many restarts are allowed within ``maxRestartsInInterval`` (`worker.restarts`).
    /// Default 5. Past it, a crashed worker's slot stays down.
    public var restarts: Int = 5
    /// The sliding window for ``restarts`` (`worker.maxRestartsInInterval`). Default 120 s.
    public var maxRestartsInInterval: Duration = .seconds(120)
    /// What happens to a slot the budget refused. Default: back after 1 s, doubling up to 60 s,
    /// so that a long-running server does not stay down for good because of one bad minute.
    public var afterBudgetSpent: AfterBudgetSpent = .backoff(initial: .seconds(1), maximum: .seconds(60))
    /// A request in flight on this many workers that died (crashed, broke the protocol, or
    /// stopped answering) is failed as poison (`poisonRequest`), whatever its retries, instead of
    /// taking the pool down with it. Default 3. `nil`: no limit.
    public var poisonThreshold: Int? = 3
    /// Default request timeout (`request.timeout`), counted from dispatch. `nil`: none.
    public var requestTimeout: Duration? = nil
    /// Default retries (`request.retries`): extra attempts after a worker dies or a timeout.
    public var retries: Int = 0
    /// How many requests one worker holds at once. Default 64.
    public var maxConcurrentRequestsPerWorker: Int = 64
    /// The most requests waiting for a worker; past it `enqueue` fails with `queueFull` (a
    /// request a worker takes at once never waits: with 0, requests are served while a worker
    /// is free and refused otherwise). `nil`: unbounded.
    public var maxQueueLength: Int? = nil
    /// The largest frame payload, both directions; larger payloads fail with
    /// `payloadTooLarge`, and a worker sending one is a protocol violation. Default 16 MiB.
    /// At most 1 GiB.
    public var maxPayload: Int = Wire.defaultMaxPayload
    /// The most bytes queued for one worker that has not read them yet; past it (the worker
    /// does not read its channel), the worker is a protocol violation: killed and replaced, not
    /// buffered for ever. Raised to one frame of ``maxPayload`` when lower. Default 4 MiB.
    public var maxQueuedBytesPerWorker: Int = 4 << 20
    /// The most custom events (and event replies) one worker may send in a second; past it, the
    /// worker is a protocol violation: killed and replaced, so that a worker flooding events
    /// cannot take the reactor thread (and the event handlers) from the other workers' requests.
    /// Counted in one-second windows. `nil`: no limit. Default 100,000.
    public var maxEventsPerSecondPerWorker: Int? = 100_000
    /// How often RSS (from `/proc/PID/statm`) and heap figures are sampled. Default 1 s.
    public var healthInterval: Duration = .seconds(1)
    /// Recycle a worker once it has answered this many requests (plus up to a tenth more, drawn
    /// per worker, so that workers do not all recycle at once): a fresh one starts in its slot,
    /// then the old one drains and exits. Not charged to the restart budget. `nil` (default): never.
    public var recycleAfterRequests: Int? = nil
    /// Recycle a worker whose resident memory exceeds this many bytes (checked at each health
    /// sample). `nil` (default): never.
    public var recycleAboveRSS: Int? = nil
    /// Recycle a worker when one of its requests times out (it may be stuck). Default `false`.
    public var recycleAfterTimeout: Bool = false
    /// Retire workers idle this long (nothing in flight, checked at each health sample), down
    /// to `minimum` workers (at least 1); when a request then finds no worker to take it, the
    /// pool grows back at once, up to its size (``count``, or the last ``Supervisor/resize(_:)``).
    /// `nil` (default): the pool keeps its size.
    ///
    /// A shorthand for an adaptive pool (``scaling``) with `minimum` as its minimum, ``count``
    /// as its maximum, `after` as its idle timeout, and growth as soon as work waits; ignored
    /// when ``scaling`` sets a bound.
    public var idleShrink: (after: Duration, minimum: Int)? = nil

    /// An adaptive pool: its size between a minimum and a maximum, and when it changes.
    ///
    /// The pool starts with ``SupervisorConfiguration/count`` workers (brought within the
    /// bounds). It grows when the oldest queued request has waited ``growAfterQueueWait``, or
    /// when every worker has been saturated for ``growAfterSaturation``: by at most
    /// ``growStep`` workers, at most once per ``growCooldown``. It shrinks when workers have
    /// been idle together for ``idleTimeout``: they retire, drain (their requests finish, their
    /// soft-kill handler runs, within ``SupervisorConfiguration/softKillTimeout``) and exit.
    /// Growth waits while a worker is starting, while a slot is down after refused restarts and
    /// while more than half of the restart budget is spent: a crash-looping pool does not grow.
    /// Every change is a ``SupervisorEvent/poolScaled(from:to:reason:)`` event and an `info`
    /// log line with its reason; ``Supervisor/status()`` reports the bounds.
    ///
    /// ``Supervisor/resize(_:)`` moves the bounds: `n` becomes the maximum (the minimum comes
    /// down to `n` if it was above), and the pool goes to `n` workers now.
    public struct Scaling: Sendable, Hashable {
        /// The fewest workers (at least 1). `nil` (default): ``SupervisorConfiguration/count``.
        public var minimum: Int?
        /// The most workers. `nil` (default): ``SupervisorConfiguration/count``. With both bounds
        /// `nil`, the pool keeps its size.
        public var maximum: Int?
        /// Grow once the oldest queued request has waited this long for a worker. Default
        /// 200 ms. `nil`: queue wait alone never grows the pool.
        public var growAfterQueueWait: Duration? = .milliseconds(200)
        /// Grow once every worker has been saturated (``saturatedAt`` requests in flight, or
        /// said `busy()`) at every check for this long, even with nothing queued. Default 1 s.
        /// `nil`: saturation alone never grows the pool.
        public var growAfterSaturation: Duration? = .seconds(1)
        /// Requests in flight at which a worker counts as saturated. `nil` (default):
        /// ``SupervisorConfiguration/maxConcurrentRequestsPerWorker`` (a full worker).
        /// A worker that serves one request at a time is saturated at 1.
        public var saturatedAt: Int? = nil
        /// The most workers one growth adds. Default 1.
        public var growStep: Int = 1
        /// The least time between two growths (the workers just added get that long to take
        /// the queue). Default 500 ms.
        public var growCooldown: Duration = .milliseconds(500)
        /// How long workers may stay idle (nothing in flight, at every check, with nothing
        /// queued) before they retire, down to the minimum. Counted for the pool, since dispatch
        /// spreads work over every worker: when k workers have been idle together for this long,
        /// k of them retire (k - 1 with ``growAfterSaturation`` set: one spare stays, or the
        /// pool would be saturated and grow again). Default 30 s.
        public var idleTimeout: Duration = .seconds(30)
        /// How often the pool is checked. Default 100 ms. A request that finds no worker to
        /// take it also triggers a check once its wait is over ``growAfterQueueWait``.
        public var checkInterval: Duration = .milliseconds(100)

        /// Bounds `minimum...maximum`; `nil` takes ``SupervisorConfiguration/count``.
        public init(minimum: Int? = nil, maximum: Int? = nil) {
            self.minimum = minimum
            self.maximum = maximum
        }
    }

    /// The pool's bounds and when it grows or shrinks. Default: both bounds `nil`, a pool of
    /// ``count`` workers that keeps its size. See ``Scaling``.
    public var scaling = Scaling()
    /// How often each worker is pinged (its runtime answers on its reactor thread). `nil`: never.
    /// Default 5 s.
    public var pingInterval: Duration? = .seconds(5)
    /// How long a ping may go unanswered before the worker is declared unresponsive: it is
    /// killed and replaced, and its requests are retried or fail with `workerUnresponsive`.
    /// Default 20 s: request handlers that hold the worker's thread for a few seconds are fine; a
    /// handler that blocks its thread for longer needs a longer deadline (or should not block).
    /// A worker that stops reading its channel, or sends half a frame and stops, is caught the
    /// same way. Start-up counts too: a worker must run its loop within the deadline.
    public var unresponsiveTimeout: Duration = .seconds(20)
    /// After ``Supervisor/softKill()`` (or a shutdown signal), how long the workers may take to
    /// finish before the pool is hard-killed: their remaining requests then fail with `shutDown`.
    /// Default 30 s. `nil`: wait for ever (the load-process-manager behaviour).
    public var softKillTimeout: Duration? = .seconds(30)
    /// Exit the process with this status once a soft or hard kill has completed (every worker
    /// reaped, every request answered), as load-process-manager does. `nil` (the default): the
    /// process lives on; the library never calls `exit` unless asked to here.
    public var exitStatusAfterKill: CInt? = nil
    /// Signals that shut the pool down, watched from ``Supervisor/start()`` until the pool stops.
    /// By default (no handler set with ``Supervisor/onSignal(_:)`` or ``Supervisor/onSIGINT(_:)``)
    /// the first one soft-kills (drains within ``softKillTimeout``), and another during the
    /// drain hard-kills. Default: SIGINT and SIGTERM. Empty: the supervisor leaves signals
    /// alone, for an owner that handles them (ServiceLifecycle, say). One supervisor per process
    /// should watch a given signal.
    ///
    /// load-process-manager watches SIGINT only, and hard-kills then exits the process.
    public var shutdownSignals: [CInt] = [SIGINT, SIGTERM]
    /// Whether SIGINT is among ``shutdownSignals``.
    public var handleSIGINT: Bool {
        get { shutdownSignals.contains(SIGINT) }
        set {
            shutdownSignals.removeAll { $0 == SIGINT }
            if newValue { shutdownSignals.append(SIGINT) }
        }
    }
    /// CPUs to pin workers to, assigned round robin by slot. The supervisor calls
    /// `sched_setaffinity` on each worker right after spawning it (best effort: an error is
    /// ignored). Empty: no pinning.
    public var cpuAffinity: [Int] = []
    /// Busy-poll before sleeping, on the supervisor's own reactor thread and in the workers
    /// (passed as `LPM_BUSY_POLL_US`): lower round-trip latency when supervisor and workers run on
    /// different CPUs, for CPU spent spinning while idle. `nil` (the default): off. See
    /// `Reactor.busyPoll`.
    public var busyPoll: Duration? = nil
    /// How requests and answers travel between the supervisor and each worker: ``Transport/socket``
    /// (the default), or ``Transport/sharedMemory(ringBytes:)``, rings in shared memory beside the
    /// socket for the workers that can use them. See ``Transport``.
    public var transport: Transport = .socket
    /// Where the supervisor logs what happens to its workers (start, exit, restart, budget,
    /// violations, spawn failures, recycling, kill phases), with structured metadata (`slot`,
    /// `pid`, `status`, `reason`...). Nothing is logged per request above `debug`. Default: a
    /// logger that drops everything; pass your own (`Logger(label: "my-pool")`) to see it.
    public var logger = Logger(label: "LoadProcessManager", factory: { _ in SwiftLogNoOpLogHandler() })
    /// Whether the supervisor reports metrics (swift-metrics): request counts and outcomes,
    /// retries, timeouts, restarts, violations, queue and in-flight gauges, ready workers, worker
    /// RSS, and queue-wait, service and round-trip timers. Default `true`; they go to
    /// ``metricsFactory``, or else to the backend bootstrapped with `MetricsSystem.bootstrap`.
    /// With no backend (the no-op default) or `false`, nothing is created and no request pays
    /// for them. The metric names are in the README ("Metrics").
    public var metricsEnabled: Bool = true
    /// The start of every metric's label, joined with `_`: `"lpm"` gives `lpm_requests_total`.
    /// Empty: no prefix. Default `"lpm"`.
    public var metricsLabelPrefix: String = "lpm"
    /// Dimensions added to every metric of this supervisor, e.g. `[("pool", "images")]`: give each
    /// supervisor of a process its own, or their metrics add up (counters) and overwrite each
    /// other (gauges). Default: none.
    public var metricsDimensions: [(String, String)] = []
    /// The metrics backend for this supervisor, overriding the one bootstrapped for the process
    /// (`MetricsSystem.factory`). `nil` (default): the bootstrapped one. Read once, when the
    /// supervisor is created, on its reactor thread: a factory bound to a task with
    /// `withMetricsFactory` is not seen there, pass it here instead.
    public var metricsFactory: (any MetricsFactory)? = nil
    /// Fork workers from a warm template instead of starting each with exec. `nil` (the
    /// default): every worker is started with exec. See ``WorkerTemplate``.
    public var template: WorkerTemplate? = nil
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

/// How requests and answers travel between the supervisor and its workers
/// (``SupervisorConfiguration/transport``).
///
/// - ``socket``: every frame crosses the worker's socketpair: a `send` and a `recv` per message
///   and side, and a wake-up of the peer. Works with every worker, in any language.
/// - ``sharedMemory(ringBytes:)``: each worker whose runtime announces it in its `ready` frame
///   (the Swift runtime does) also gets a request ring and a response ring in one shared memory
///   object (`memfd_create`), with an eventfd doorbell each way that is rung only when the
///   other side announced it sleeps. Requests and answers that fit in a ring record go there;
///   larger ones, descriptors, streams and control frames (pings, kills, events) stay on the
///   socket, and so does every worker that does not announce the rings. With
///   ``SupervisorConfiguration/busyPoll`` the reactors poll before sleeping, as on sockets.
///   Costs two rings of `ringBytes` of memory per worker, two eventfds and a mapping.
public struct Transport: Sendable, Hashable, CustomStringConvertible {
    /// Each ring's data area in bytes (a power of two); 0 for the socket transport.
    public let ringBytes: Int

    private init(ringBytes: Int) { self.ringBytes = ringBytes }

    /// The socketpair alone (the default).
    public static let socket = Transport(ringBytes: 0)

    /// Shared-memory rings beside the socket, for the workers that announce them.
    /// - Parameter ringBytes: each ring's size, rounded up to a power of two from 4 KiB to
    ///   1 GiB. A record takes up to half a ring: a request or answer larger than
    ///   `ringBytes / 2 - 16` bytes (40 less for a request: its head) goes over the socket.
    ///   Default 256 KiB.
    public static func sharedMemory(ringBytes: Int = 256 << 10) -> Transport {
        var n = 4096
        while n < min(ringBytes, 1 << 30) { n <<= 1 }
        return Transport(ringBytes: n)
    }

    /// Whether this is the shared-memory transport.
    public var usesSharedMemory: Bool { ringBytes > 0 }

    public var description: String { usesSharedMemory ? "sharedMemory(ringBytes: \(ringBytes))" : "socket" }
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

/// A worker template (``SupervisorConfiguration/template``): the worker executable started
/// once in a template mode (`LPM_TEMPLATE=1`), where it runs its preload (`Worker.preload`)
/// and then only forks workers on the supervisor's order. A forked worker shares the
/// template's loaded pages copy-on-write and is ready in well under a millisecond; from there
/// it is an ordinary worker, the supervisor's own child.
///
/// Spawns fall back to exec, with a `templateUnavailable` event and a log line, while the
/// template starts, after it died (it is restarted after ``restartDelay``), when it refuses to
/// fork because its preload started threads (it is then not restarted until a reload), and
/// when the executable does not speak the template protocol. A reload with a new executable
/// starts a new template.
public struct WorkerTemplate: Sendable, Hashable {
    /// How long the template may take to start and preload before it is killed (and spawns
    /// use exec). Default 60 seconds.
    public var startTimeout: Duration = .seconds(60)
    /// How long a fork order may take before the template is taken as stuck, killed and
    /// restarted (the spawn then uses exec). The supervisor's thread waits for the answer,
    /// as it waits for an exec. Default 1 second.
    public var forkTimeout: Duration = .seconds(1)
    /// The delay before a template that died is started again, doubled with each death in a
    /// row (one that became ready resets it), at most ``maxRestartDelay``. Default 1 second.
    public var restartDelay: Duration = .seconds(1)
    /// The longest delay between two starts of the template. Default 60 seconds.
    public var maxRestartDelay: Duration = .seconds(60)

    /// A template with the default timeouts and delays.
    public init() {}
}
