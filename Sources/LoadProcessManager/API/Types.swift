import Glibc
import LPMReactor
import LPMWire

/// How a worker process ended: its exit code, or the signal that killed it.
public typealias WorkerExitStatus = Reactor.ExitStatus

/// The answer to a request.
///
/// Its bytes are a view of the buffer the answer was read into (``bytes``: no copy, no
/// allocation); ``data`` copies them into an array of their own each time it is read.
public struct WorkerResponse: Sendable {
    /// The bytes the worker answered (none after `ack()`), where they were read: see
    /// ``ResponseBytes`` for what keeping them keeps.
    public let bytes: ResponseBytes
    /// The bytes as an array of their own: a copy, made at each read (read ``bytes`` where a
    /// view will do).
    public var data: [UInt8] { Array(bytes) }
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

    /// The bytes as UTF-8 text.
    public var text: String { bytes.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }
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
    public let lastExit: WorkerExitStatus?
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
    /// The fewest workers the pool keeps (``SupervisorConfiguration/Scaling/minimum``, moved by
    /// ``Supervisor/resize(_:)``); equal to ``maximumWorkers`` for a pool of fixed size.
    public internal(set) var minimumWorkers = 0
    /// The most workers the pool may grow to (``SupervisorConfiguration/Scaling/maximum``, or
    /// the last ``Supervisor/resize(_:)``).
    public internal(set) var maximumWorkers = 0
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
    case workerExited(slot: Int, pid: pid_t, status: WorkerExitStatus, expected: Bool)
    /// A replacement was spawned for a worker that ended.
    case workerRestarted(slot: Int, pid: pid_t)
    /// An idle worker was retired (``SupervisorConfiguration/idleShrink``,
    /// ``SupervisorConfiguration/Scaling/idleTimeout``): it drains and exits.
    case idleWorkerRetired(slot: Int, pid: pid_t)
    /// An adaptive pool (``SupervisorConfiguration/scaling``) changed size by itself, from
    /// `from` to `to` workers, for `reason`. Growth is followed by a ``workerStarted(slot:pid:)``
    /// per worker, a shrink for idleness by an ``idleWorkerRetired(slot:pid:)`` per worker.
    case poolScaled(from: Int, to: Int, reason: ScalingReason)
    /// A worker is being recycled: `newPID` started in its slot, `oldPID` drains and exits.
    /// `reason` says why (its request count, its RSS, a timeout, ``Supervisor/restart(pid:)``, a reload).
    case workerRecycled(slot: Int, oldPID: pid_t, newPID: pid_t, reason: String)
    /// The restart budget is spent: `slot` is down, out of the pool until it comes back (see
    /// ``SupervisorConfiguration/afterBudgetSpent``) or a resize brings it back.
    case restartBudgetExhausted(slot: Int)
    /// A down slot will be tried again after `delay` (``SupervisorConfiguration/afterBudgetSpent``).
    case workerRestartScheduled(slot: Int, delay: Duration)
    /// A worker for `slot` could not be spawned (at start, as a replacement, or when growing): the
    /// slot is down, out of the pool until a resize brings it back.
    case workerSpawnFailed(slot: Int, reason: String)
    /// A worker was killed for breaking the protocol.
    case protocolViolation(slot: Int, pid: pid_t, reason: String)
    /// A worker did not answer a ping in time (``SupervisorConfiguration/unresponsiveTimeout``)
    /// and was killed.
    case workerUnresponsive(slot: Int, pid: pid_t, reason: String)
    /// A broadcast could not reach the worker `pid` (its copy of the descriptor could not be made).
    case broadcastFailed(slot: Int, pid: pid_t, reason: String)
    /// Every slot is down and no request can be served.
    case noWorkersLeft
    /// A shutdown signal (``SupervisorConfiguration/shutdownSignals``) arrived; delivered before
    /// its handler or the default drain.
    case signalReceived(CInt)
    /// The worker template (``SupervisorConfiguration/template``) ran its preload and forks
    /// workers from now on.
    case templateReady(pid: pid_t)
    /// The worker template cannot fork workers (it died, timed out, refused because its
    /// preload started threads, or the executable is not a template): workers are started with
    /// exec until a template is ready again. `pid` is 0 when no template process ran.
    case templateUnavailable(pid: pid_t, reason: String)
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

/// A request's id: a version 4 UUID. The same type as the worker module's `RequestID`, so a file
/// importing both modules names it without ambiguity.
public typealias RequestID = LPMWire.RequestID
