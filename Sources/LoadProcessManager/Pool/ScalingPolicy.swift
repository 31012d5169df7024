import LPMReactor

/// When an adaptive pool grows or shrinks: a pure value (`ScalingPolicyTests`). The pool hands
/// it a ``Snapshot`` of its recent state at each check (``SupervisorConfiguration/Scaling/checkInterval``,
/// and when a request finds no worker to take it); it answers grow by k, retire these slots, or
/// nothing, and keeps what it needs to remember between checks (since when the pool has been
/// saturated, since when k workers have been idle, when it last grew).
///
/// - Grows when the oldest queued request has waited ``Settings/growAfterQueueWait``, or when
///   every worker has been saturated at every check for ``Settings/growAfterSaturation``; by at
///   most ``Settings/growStep`` workers, at most once per ``Settings/growCooldown``, never above
///   the maximum. Growth waits while a worker of the pool is starting (the capacity it brings is
///   not visible yet), while a worker restarted after a crash has not answered a request yet,
///   while a slot is down after its restarts were refused, and while more than half of the
///   restart budget is spent: a crash-looping pool is not a pool short of workers, and growing
///   it would only start more processes to crash.
/// - Shrinks when k workers have had nothing in flight at every check for
///   ``Settings/idleTimeout`` (with an empty queue): k of them retire at once (k - 1 when
///   saturation grows the pool: one spare stays), never below the minimum. A pool whose dispatch spreads work over every worker is idle as a whole, not
///   worker by worker, so idleness is counted for the pool: the most workers idle together.
/// - No flapping: growth needs work waiting (or every worker saturated), shrinking needs idle
///   workers for a whole idle timeout, and a growth restarts the idle count; load that comes
///   back within the idle timeout finds the workers still there.
struct ScalingPolicy: Sendable {
    /// The bounds and thresholds, in nanoseconds.
    struct Settings: Equatable, Sendable {
        var minimum: Int
        var maximum: Int
        /// Grow when the oldest queued request has waited this long (`nil`: never for that).
        var growAfterQueueWait: Int64?
        /// Grow when every worker has been saturated this long (`nil`: never for that).
        var growAfterSaturation: Int64?
        /// Requests in flight at which a worker counts as saturated.
        var saturatedAt: Int
        var growStep: Int
        var growCooldown: Int64
        var idleTimeout: Int64

        /// A fixed size: `n` workers, no growth, no shrink.
        static func fixed(_ n: Int) -> Settings {
            Settings(minimum: n, maximum: n, growAfterQueueWait: nil, growAfterSaturation: nil, saturatedAt: 1,
                     growStep: 1, growCooldown: 0, idleTimeout: .max)
        }

        /// Whether the pool may change size by itself.
        var isAdaptive: Bool { minimum < maximum }
    }

    /// One worker of the pool (an active slot), as the policy needs to see it.
    struct Worker: Equatable, Sendable {
        enum Phase: Equatable, Sendable {
            /// Spawned (or being restarted), not ready yet.
            case starting
            /// Takes requests.
            case ready
            /// Said `busy()`: takes nothing, counts as saturated.
            case busy
        }

        var slot: Int
        var phase: Phase
        /// Requests in flight plus response streams flowing.
        var load: Int
        /// Since when it has had nothing in flight (monotonic nanoseconds; `nil`: it has work).
        /// The longest idle retire first.
        var idleSince: Int64?
        /// It was started by a restart after a crash and has not answered a request yet: the
        /// pool may be crash-looping.
        var unprovenRestart = false

        init(slot: Int, phase: Phase = .ready, load: Int = 0, idleSince: Int64? = nil, unprovenRestart: Bool = false) {
            self.slot = slot
            self.phase = phase
            self.load = load
            self.idleSince = idleSince
            self.unprovenRestart = unprovenRestart
        }
    }

    /// The pool's state at a check.
    struct Snapshot: Sendable {
        /// Monotonic nanoseconds.
        var now: Int64
        /// Requests waiting for a worker.
        var queued: Int = 0
        /// When the oldest queued request was admitted (monotonic nanoseconds), if one waits.
        var oldestQueuedAt: Int64?
        /// The workers of the pool (active slots).
        var workers: [Worker] = []
        /// Slots down: their restarts were refused by the budget, or their worker could not start.
        var slotsDown = 0
        /// Restarts counted in the budget's window now, and the budget's limit.
        var restartsInWindow = 0
        var restartLimit = 0
    }

    /// What the pool should do.
    enum Decision: Equatable, Sendable {
        case none
        /// Start `by` more workers.
        case grow(by: Int, ScalingReason)
        /// Retire the workers in these slots (they drain and exit).
        case shrink([Int], ScalingReason)
    }

    /// Why growth is held back although the pool is short of workers.
    enum Hold: Equatable, Sendable, CustomStringConvertible {
        case starting(Int)
        case unprovenRestart(Int)
        case slotsDown(Int)
        case restartBudget(used: Int, limit: Int)

        var description: String {
            switch self {
            case .starting(let n): "\(n) worker\(n == 1 ? " is" : "s are") still starting"
            case .unprovenRestart(let n): "\(n) worker\(n == 1 ? "" : "s") restarted after a crash \(n == 1 ? "has" : "have") not answered yet"
            case .slotsDown(let n): "\(n) slot\(n == 1 ? " is" : "s are") down after refused restarts"
            case .restartBudget(let used, let limit): "the restart budget is more than half spent (\(used) of \(limit))"
            }
        }
    }

    private(set) var settings: Settings
    /// Whether the pool was made adaptive (bounds apart): a resize moves its bounds; a pool of
    /// fixed size stays fixed, at the new size.
    let isAdaptive: Bool
    /// When the pool last grew (its cool-down runs from there).
    private var lastGrowth: Int64?
    /// Since when every worker has been saturated, at every check.
    private var saturatedSince: Int64?
    /// `idleSince[k]`: since when at least `k + 1` workers have been idle at every check.
    private var idleSince: [Int64] = []
    /// Set when the last check wanted to grow but could not; for the pool to log the change.
    private(set) var held: Hold?

    init(_ settings: Settings) {
        self.settings = settings
        isAdaptive = settings.isAdaptive
    }

    /// The bounds after ``Supervisor/resize(_:)`` to `n`. An adaptive pool's bounds move: `n`
    /// becomes the maximum, and the minimum comes down to `n` if it was above (it stays at
    /// least 1 while `n` is). A pool of fixed size is fixed at `n`. The idle and saturation
    /// counts start over, and the cool-down runs from `now`.
    mutating func resized(to n: Int, at now: Int64) {
        let n = max(0, n)
        settings.maximum = n
        settings.minimum = !isAdaptive || n == 0 ? n : max(1, min(settings.minimum, n))
        restart(at: now)
    }

    /// Forgets the idle and saturation counts; the cool-down runs from `now`.
    mutating func restart(at now: Int64) {
        lastGrowth = now
        saturatedSince = nil
        idleSince = []
    }

    /// Whether the oldest queued request has waited long enough for a growth that the cool-down
    /// allows: the cheap test a request that finds no worker makes before a full check.
    func queueWaitDue(oldestQueuedAt: Int64, now: Int64) -> Bool {
        guard let limit = settings.growAfterQueueWait else { return false }
        if let last = lastGrowth, now - last < settings.growCooldown { return false }
        return now - oldestQueuedAt >= limit
    }

    /// Looks at the pool; returns what to do, and remembers what it saw.
    mutating func decide(_ s: Snapshot) -> Decision {
        let n = s.workers.count
        let starting = s.workers.reduce(0) { $0 + ($1.phase == .starting ? 1 : 0) }
        let unproven = s.workers.reduce(0) { $0 + ($1.unprovenRestart ? 1 : 0) }
        let hold: Hold? = if s.slotsDown > 0 {
            .slotsDown(s.slotsDown)
        } else if s.restartLimit > 0 && s.restartsInWindow * 2 > s.restartLimit {
            .restartBudget(used: s.restartsInWindow, limit: s.restartLimit)
        } else if unproven > 0 {
            .unprovenRestart(unproven)
        } else if starting > 0 {
            .starting(starting)
        } else {
            nil
        }

        // The bounds first (after a resize, or a start outside them).
        if n > settings.maximum {
            let order = retirementOrder(s.workers, idleOnly: false)
            idleSince = []
            return .shrink(Array(order.prefix(n - settings.maximum)), .aboveMaximum(settings.maximum))
        }
        if n < settings.minimum {
            // Not held by a starting worker: the minimum is owed whatever the load.
            if let hold, hold != .starting(starting) {
                held = hold
                return .none
            }
            held = nil
            lastGrowth = s.now
            return .grow(by: settings.minimum - n, .belowMinimum(settings.minimum))
        }

        // What this check sees.
        let idle = s.queued > 0 ? 0 : s.workers.reduce(0) { $0 + ($1.phase == .ready && $1.load == 0 ? 1 : 0) }
        if idle < idleSince.count { idleSince.removeLast(idleSince.count - idle) }
        while idleSince.count < idle { idleSince.append(s.now) }
        let saturated = n > 0 && starting == 0
            && s.workers.allSatisfy { $0.phase == .busy || $0.load >= settings.saturatedAt }
        saturatedSince = saturated ? (saturatedSince ?? s.now) : nil

        // Grow: work waits, or every worker has been saturated for long enough.
        if n < settings.maximum {
            var reason: ScalingReason?
            if let limit = settings.growAfterQueueWait, s.queued > 0, let oldest = s.oldestQueuedAt, s.now - oldest >= limit {
                reason = .queueWait(wait: .nanoseconds(s.now - oldest), limit: .nanoseconds(limit), queued: s.queued)
            } else if let limit = settings.growAfterSaturation, let since = saturatedSince, s.now - since >= limit {
                reason = .saturated(duration: .nanoseconds(s.now - since), limit: .nanoseconds(limit), workers: n)
            }
            if let reason {
                if let hold {
                    held = hold
                    return .none
                }
                held = nil
                if let last = lastGrowth, s.now - last < settings.growCooldown { return .none }
                // As many as the work in sight needs, at most a step.
                let inFlight = s.workers.reduce(0) { $0 + $1.load }
                let needed = (inFlight + s.queued + settings.saturatedAt - 1) / max(1, settings.saturatedAt) - n
                let k = min(settings.growStep, settings.maximum - n, max(1, needed))
                restart(at: s.now)
                return .grow(by: k, reason)
            }
        }
        held = nil

        // Shrink: k workers idle together for the idle timeout.
        if n > settings.minimum, s.queued == 0 {
            var k = 0
            while k < idleSince.count && s.now - idleSince[k] >= settings.idleTimeout { k += 1 }
            // With growth on saturation, one idle worker stays: retiring it would leave every
            // worker saturated, and the pool would grow again (flapping under steady load).
            k = min(settings.growAfterSaturation == nil ? k : k - 1, n - settings.minimum)
            if k > 0 {
                let since = idleSince[k - 1]
                idleSince = []
                let chosen = Array(retirementOrder(s.workers, idleOnly: true).prefix(k))
                return .shrink(chosen, .idle(workers: chosen.count, duration: .nanoseconds(s.now - since),
                                             limit: .nanoseconds(settings.idleTimeout)))
            }
        }
        return .none
    }

    /// Which workers retire first: idle ones, the longest idle first (then the highest slot);
    /// with `idleOnly: false`, then starting ones, then the least loaded.
    private func retirementOrder(_ workers: [Worker], idleOnly: Bool) -> [Int] {
        func rank(_ w: Worker) -> (Int, Int64, Int) {
            switch w.phase {
            case .ready where w.load == 0: (0, w.idleSince ?? .max, -w.slot)
            case .starting: (1, 0, -w.slot)
            case .ready, .busy: (2, Int64(w.load), -w.slot)
            }
        }
        let candidates = idleOnly ? workers.filter { $0.phase == .ready && $0.load == 0 } : workers
        return candidates.sorted { rank($0) < rank($1) }.map(\.slot)
    }
}

// MARK: Reasons

/// Why an adaptive pool changed size (``SupervisorEvent/poolScaled(from:to:reason:)``).
public enum ScalingReason: Sendable, Hashable, CustomStringConvertible {
    /// The oldest queued request had waited `wait`, over `limit`
    /// (``SupervisorConfiguration/Scaling/growAfterQueueWait``), with `queued` requests waiting.
    case queueWait(wait: Duration, limit: Duration, queued: Int)
    /// Every one of the `workers` workers had been saturated at every check for `duration`,
    /// over `limit` (``SupervisorConfiguration/Scaling/growAfterSaturation``).
    case saturated(duration: Duration, limit: Duration, workers: Int)
    /// `workers` workers had had nothing in flight at every check for `duration`, over the idle
    /// timeout `limit` (``SupervisorConfiguration/Scaling/idleTimeout``).
    case idle(workers: Int, duration: Duration, limit: Duration)
    /// The pool was below its minimum.
    case belowMinimum(Int)
    /// The pool was above its maximum.
    case aboveMaximum(Int)

    public var description: String {
        switch self {
        case .queueWait(let wait, let limit, let queued):
            "queue wait \(Self.format(wait)) over \(Self.format(limit)) (\(queued) queued)"
        case .saturated(let duration, let limit, let workers):
            "\(workers == 1 ? "the worker" : "all \(workers) workers") saturated for \(Self.format(duration)) over \(Self.format(limit))"
        case .idle(let workers, let duration, let limit):
            "\(workers) worker\(workers == 1 ? "" : "s") idle for \(Self.format(duration)) (idle timeout \(Self.format(limit)))"
        case .belowMinimum(let n):
            "below the minimum of \(n)"
        case .aboveMaximum(let n):
            "above the maximum of \(n)"
        }
    }

    /// A short reading of a duration: `350 ms`, `1.2 s`, `90 s`.
    static func format(_ d: Duration) -> String {
        let ms = Reactor.nanoseconds(d) / 1_000_000
        if ms < 1000 { return "\(ms) ms" }
        if ms < 10_000 && ms % 1000 >= 100 { return "\(ms / 1000).\(ms % 1000 / 100) s" }
        return "\(ms / 1000) s"
    }
}
