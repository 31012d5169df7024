import Glibc
import LPMReactor
import Logging

/// The pool's bounds and what it needs to apply its ``ScalingPolicy``: confined to the reactor
/// thread, with the pool.
struct PoolScaling {
    /// The policy, made from the configuration at start (or at a resize before it).
    var policy: ScalingPolicy?
    /// The timer that checks the policy (adaptive pools only).
    var timer: Reactor.Timer?
    /// How many workers the pool may still add (its maximum less its size) while it is
    /// adaptive, else 0: dispatch asks for a check when work waits and this is not 0.
    var room = 0
    /// When the last check ran (monotonic nanoseconds): checks asked by dispatch are spaced.
    var lastCheck: Int64 = 0
    /// Retired workers draining, by pid: when their drain began (monotonic nanoseconds).
    /// Killed once ``SupervisorConfiguration/softKillTimeout`` has passed.
    var draining: [pid_t: Int64] = [:]
    /// The reason growth is held back, as last logged.
    var loggedHold: ScalingPolicy.Hold?
    /// Growths in a row whose every spawn failed, and when growth may be tried again (1 s after
    /// the first, doubling up to 60 s): a worker that cannot be spawned is not retried at
    /// every check.
    var failedGrowths = 0
    var growthRetryAt: Int64 = 0
}

extension Pool {
    /// Named for the idle shrink it began as: how many workers the pool may add when work waits
    /// (``PoolScaling/room``). Dispatch calls ``growBackForLoad()`` while it is not 0.
    var idleRetired: Int { scaling.room }

    // MARK: Set-up

    /// The policy's settings, from the configuration: ``SupervisorConfiguration/scaling``, else
    /// ``SupervisorConfiguration/idleShrink``, else a fixed size. Out-of-range values are
    /// clamped here; ``prepareScaling()`` reports them first.
    func scalingSettings() -> (settings: ScalingPolicy.Settings, interval: Duration) {
        let count = max(0, config.count)
        let capacity = max(1, config.maxConcurrentRequestsPerWorker)
        func ns(_ d: Duration) -> Int64 { max(0, Reactor.nanoseconds(d)) }
        let s = config.scaling
        if s.minimum != nil || s.maximum != nil {
            let minimum = max(1, s.minimum ?? count)
            let maximum = max(minimum, s.maximum ?? count)
            let settings = ScalingPolicy.Settings(
                minimum: minimum, maximum: maximum,
                growAfterQueueWait: s.growAfterQueueWait.map(ns), growAfterSaturation: s.growAfterSaturation.map(ns),
                saturatedAt: max(1, s.saturatedAt ?? capacity), growStep: max(1, s.growStep),
                growCooldown: ns(s.growCooldown), idleTimeout: ns(s.idleTimeout))
            return (settings, s.checkInterval)
        }
        if let (after, minimum) = config.idleShrink, count > 1, minimum < count {
            // Growth as soon as work waits, one worker at a time (the next once it is ready).
            let settings = ScalingPolicy.Settings(
                minimum: max(1, minimum), maximum: count, growAfterQueueWait: 0, growAfterSaturation: nil,
                saturatedAt: capacity, growStep: 1, growCooldown: 0, idleTimeout: ns(after))
            return (settings, config.healthInterval)
        }
        return (.fixed(count), config.healthInterval)
    }

    /// The policy, made from the configuration the first time it is needed.
    func scalingPolicy() -> ScalingPolicy {
        if let p = scaling.policy { return p }
        let p = ScalingPolicy(scalingSettings().settings)
        scaling.policy = p
        return p
    }

    /// At start, before any worker is spawned: checks the bounds, brings the pool within them,
    /// and arms the check timer of an adaptive pool.
    func prepareScaling() throws(SupervisorError) {
        let s = config.scaling
        if s.minimum != nil || s.maximum != nil {
            let count = max(0, config.count)
            let minimum = s.minimum ?? count, maximum = s.maximum ?? count
            guard minimum >= 1 else {
                throw SupervisorError(.invalidArgument, "scaling.minimum is \(minimum): an adaptive pool keeps at least 1 worker")
            }
            guard maximum >= minimum else {
                throw SupervisorError(.invalidArgument, "scaling.maximum (\(maximum)) is below scaling.minimum (\(minimum))")
            }
            guard s.growStep >= 1 else { throw SupervisorError(.invalidArgument, "scaling.growStep must be at least 1, got \(s.growStep)") }
            if let n = s.saturatedAt, n < 1 {
                throw SupervisorError(.invalidArgument, "scaling.saturatedAt must be at least 1, got \(n)")
            }
            guard s.checkInterval > .zero else {
                throw SupervisorError(.invalidArgument, "scaling.checkInterval must be positive, got \(s.checkInterval)")
            }
            for (name, d) in [("growAfterQueueWait", s.growAfterQueueWait), ("growAfterSaturation", s.growAfterSaturation),
                              ("growCooldown", s.growCooldown), ("idleTimeout", s.idleTimeout)] {
                if let d, d < .zero { throw SupervisorError(.invalidArgument, "scaling.\(name) must not be negative, got \(d)") }
            }
        }
        let policy = scalingPolicy()
        // Within the bounds before the first spawn: slots added, or set aside.
        let active = activeCount
        if active < policy.settings.minimum {
            slots.append(contentsOf: repeatElement(WorkerSlot(), count: policy.settings.minimum - active))
        } else if active > policy.settings.maximum {
            var extra = active - policy.settings.maximum
            for i in slots.indices.reversed() where extra > 0 && slots[i].membership == .active && slots[i].process == nil {
                slots[i].membership = .retired
                extra -= 1
            }
        }
        updateRoom()
        guard policy.isAdaptive, scaling.timer == nil else { return }
        let interval = scalingSettings().interval
        do {
            // `weak`: the timer is cancelled by its own tick once the pool has stopped, which
            // may come after the pool is gone (a reactor that outlives its supervisor).
            scaling.timer = try reactor.schedule(after: interval, repeating: interval) { [weak self] in
                guard let self else { return }
                self.scalingTick()
                self.deliver()
            }
        } catch {
            let name = config.scaling.minimum != nil || config.scaling.maximum != nil ? "scaling.checkInterval" : "healthInterval"
            throw SupervisorError(.invalidArgument, "\(name) \(interval): \(error)")
        }
    }

    // MARK: Checks

    /// The timer's tick: a check while the pool runs; the timer ends once it has stopped.
    func scalingTick() {
        switch phase {
        case .running:
            let now = Sys.monotonicNanoseconds()
            enforceDrainDeadlines(now: now)
            checkScaling(now: now)
        case .idle:
            break
        case .softKilling, .hardKilling, .stopped:
            if let t = scaling.timer { reactor.cancel(t); scaling.timer = nil }
        }
    }

    /// Work waits and no worker can take it: a check, once the oldest request has waited long
    /// enough for the policy to grow the pool (at most one such check per millisecond).
    func growBackForLoad() {
        guard phase == .running, let policy = scaling.policy, let first = table.firstQueued else { return }
        let now = reactor.iterationNanoseconds
        guard now - scaling.lastCheck >= 1_000_000,
              policy.queueWaitDue(oldestQueuedAt: Int64(truncatingIfNeeded: table[first].createdAt), now: now) else { return }
        checkScaling(now: now)
    }

    /// Hands the policy the pool's state and applies its decision.
    func checkScaling(now: Int64) {
        guard phase == .running, var policy = scaling.policy else { return }
        scaling.lastCheck = now
        let decision = policy.decide(scalingSnapshot(now: now))
        scaling.policy = policy
        if policy.held != scaling.loggedHold {
            scaling.loggedHold = policy.held
            if let hold = policy.held {
                // A worker still starting is the ordinary pause after a growth: not worth an info line.
                var starting = false
                if case .starting = hold { starting = true }
                config.logger.log(level: starting ? .debug : .info, "pool growth held", metadata: [
                    "reason": "\(hold)", "workers": "\(activeCount)", "queued": "\(table.queuedCount)"])
            }
        }
        switch decision {
        case .none:
            return
        case .grow(let k, let reason):
            guard now >= scaling.growthRetryAt else { return }  // the last growth could not spawn anything
            let before = activeCount
            // (The event also counts the decision in the metrics: PoolMetrics.event.)
            emit(.poolScaled(from: before, to: before + k, reason: reason))
            growForScaling(by: k, now: now)
        case .shrink(let chosen, let reason):
            let before = activeCount
            emit(.poolScaled(from: before, to: before - chosen.count, reason: reason))
            var idle = false
            if case .idle = reason { idle = true }
            retire(chosen, forIdleness: idle)
        }
        updateRoom()
        pump()
    }

    /// The pool's state for the policy; notes since when each worker has been idle.
    func scalingSnapshot(now: Int64) -> ScalingPolicy.Snapshot {
        var s = ScalingPolicy.Snapshot(now: now)
        s.queued = table.queuedCount
        if s.queued > 0, let first = table.firstQueued { s.oldestQueuedAt = Int64(truncatingIfNeeded: table[first].createdAt) }
        s.restartsInWindow = budget.used(at: now)
        s.restartLimit = budget.limit
        s.workers.reserveCapacity(slots.count)
        for i in slots.indices {
            switch slots[i].membership {
            case .retired:
                continue
            case .down:
                s.slotsDown += 1
            case .active:
                guard let w = slots[i].process else {
                    s.workers.append(.init(slot: i, phase: .starting, unprovenRestart: slots[i].restarts > 0))
                    continue
                }
                let phase: ScalingPolicy.Worker.Phase
                switch w.lifecycle {
                case .ready: phase = .ready
                case .busy: phase = .busy
                // Starting, or on its way out to be restarted in place.
                case .starting, .draining, .stopping, .exited: phase = .starting
                }
                if w.load == 0 { w.idleSince = w.idleSince ?? now } else { w.idleSince = nil }
                s.workers.append(.init(slot: i, phase: phase, load: w.load, idleSince: w.idleSince,
                                       unprovenRestart: slots[i].restarts > 0 && w.completed == 0))
            }
        }
        return s
    }

    /// The pool's bounds now, for ``status()``.
    var scalingBounds: (minimum: Int, maximum: Int) {
        let s = scalingPolicy().settings
        return (s.minimum, s.maximum)
    }

    /// Recomputes how many workers the pool may still add.
    func updateRoom() {
        guard let policy = scaling.policy, policy.isAdaptive else { scaling.room = 0; return }
        scaling.room = max(0, policy.settings.maximum - activeCount)
    }

    // MARK: Applying a decision

    /// Starts `k` workers in free slots (retired ones whose process is gone, else new ones).
    /// A worker that cannot be spawned is reported (an event) and its slot stays free: a
    /// later check tries again, after a backoff if nothing could be spawned.
    private func growForScaling(by k: Int, now: Int64) {
        var free = slots.indices.filter { slots[$0].membership == .retired && slots[$0].process == nil }
        free.reverse()
        var failed = 0
        for _ in 0..<k {
            let i: Int
            if let reused = free.popLast() { i = reused } else {
                slots.append(WorkerSlot(membership: .retired))
                i = slots.count - 1
            }
            slots[i].membership = .active
            slots[i].refusals = 0
            if spawnOrMarkDown(slot: i) != nil {
                slots[i].membership = .retired
                failed += 1
            }
        }
        onlineAnnounced = false
        if failed == k {
            scaling.failedGrowths += 1
            scaling.growthRetryAt = now + min(60_000_000_000, 1_000_000_000 << min(scaling.failedGrowths - 1, 6))
        } else {
            scaling.failedGrowths = 0
        }
    }

    /// Retires the workers in `chosen`: out of the pool, nothing new, drained.
    func retire(_ chosen: [Int], forIdleness: Bool) {
        for i in chosen where slots[i].membership == .active {
            slots[i].membership = .retired
            guard let w = slots[i].process else { continue }
            if forIdleness { emit(.idleWorkerRetired(slot: i, pid: w.pid)) }
            drain(w)
        }
    }

    /// Tells a retired worker to finish: it gets nothing new, finishes its requests, runs its
    /// soft-kill handler and exits; past ``SupervisorConfiguration/softKillTimeout`` it is killed.
    func drain(_ w: WorkerProcess) {
        apply(w.lifecycle.handle(.drain), to: w)
        if config.softKillTimeout != nil, !w.lifecycle.isServing { scaling.draining[w.pid] = Sys.monotonicNanoseconds() }
    }

    /// Kills the retired workers still draining past ``SupervisorConfiguration/softKillTimeout``
    /// (their requests in flight are retried or fail with `workerExited`), and forgets the
    /// ones that are gone.
    func enforceDrainDeadlines(now: Int64) {
        guard phase == .running, !scaling.draining.isEmpty else { return }
        let limit = config.softKillTimeout.map { Reactor.nanoseconds($0) } ?? .max
        for (pid, since) in scaling.draining {
            guard let i = slots.indices.first(where: { slots[$0].process?.pid == pid }), let w = slots[i].process,
                  case .draining = w.lifecycle else {
                scaling.draining[pid] = nil
                continue
            }
            guard now - since >= limit else { continue }
            scaling.draining[pid] = nil
            config.logger.warning("retired worker still draining after softKillTimeout: killed", metadata: [
                "slot": "\(i)", "pid": "\(pid)", "inFlight": "\(w.inFlight)"])
            apply(w.lifecycle.handle(.kill), to: w)
        }
    }

    // MARK: Log

    /// Logs a change of size at `info`, with its reason and the bounds as metadata.
    func logScaling(from: Int, to: Int, _ reason: ScalingReason) {
        let bounds = scalingBounds
        var metadata: Logger.Metadata = ["from": "\(from)", "to": "\(to)", "reason": "\(reason)",
                                         "minimum": "\(bounds.minimum)", "maximum": "\(bounds.maximum)"]
        switch reason {
        case .queueWait(let wait, let limit, let queued):
            metadata["queueWaitMs"] = "\(Reactor.nanoseconds(wait) / 1_000_000)"
            metadata["limitMs"] = "\(Reactor.nanoseconds(limit) / 1_000_000)"
            metadata["queued"] = "\(queued)"
        case .saturated(let duration, let limit, _), .idle(_, let duration, let limit):
            metadata["forMs"] = "\(Reactor.nanoseconds(duration) / 1_000_000)"
            metadata["limitMs"] = "\(Reactor.nanoseconds(limit) / 1_000_000)"
        case .belowMinimum, .aboveMaximum:
            break
        }
        config.logger.info(to > from ? "pool grew" : "pool shrank", metadata: metadata)
    }
}
