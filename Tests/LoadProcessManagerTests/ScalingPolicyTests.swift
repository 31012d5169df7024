@testable import LoadProcessManager
import Testing

// The adaptive pool's policy as plain logic: a model pool (workers that serve one request at a
// time, a queue) driven check by check with a load curve, and the decisions it gets.

private let ms: Int64 = 1_000_000
private let second: Int64 = 1_000 * ms

private func settings(min: Int = 1, max: Int = 4, queueWait: Int64? = 200 * ms, saturation: Int64? = nil,
                      step: Int = 2, cooldown: Int64 = 500 * ms, idle: Int64 = 10 * second) -> ScalingPolicy.Settings {
    .init(minimum: min, maximum: max, growAfterQueueWait: queueWait, growAfterSaturation: saturation,
          saturatedAt: 1, growStep: step, growCooldown: cooldown, idleTimeout: idle)
}

/// A model pool: `demand` requests in the system at each check; each ready worker holds one,
/// the rest wait in the queue. A worker the policy adds is starting for one check.
private struct ModelPool {
    var policy: ScalingPolicy
    var workers: [ScalingPolicy.Worker]
    var now: Int64 = 0
    var queueSince: Int64?
    var slotsDown = 0
    var restarts = (used: 0, limit: 5)
    var decisions: [(at: Int64, decision: ScalingPolicy.Decision)] = []
    /// The pool's size after each check.
    var sizes: [Int] = []

    init(_ s: ScalingPolicy.Settings, workers n: Int) {
        policy = ScalingPolicy(s)
        workers = (0..<n).map { .init(slot: $0, phase: .ready, idleSince: 0) }
    }

    var grows: [Int] { decisions.compactMap { if case .grow(let k, _) = $0.decision { return k }; return nil } }
    var shrinks: [[Int]] { decisions.compactMap { if case .shrink(let s, _) = $0.decision { return s }; return nil } }

    mutating func check(demand: Int, every interval: Int64 = 100 * ms) {
        now += interval
        var left = demand
        for i in workers.indices {
            if workers[i].phase == .starting { workers[i].phase = .ready }
            let load = min(left, 1)
            left -= load
            workers[i].load = load
            workers[i].idleSince = load == 0 ? (workers[i].idleSince ?? now) : nil
        }
        queueSince = left > 0 ? (queueSince ?? now - interval / 2) : nil
        let snapshot = ScalingPolicy.Snapshot(now: now, queued: left, oldestQueuedAt: queueSince, workers: workers,
                                              slotsDown: slotsDown, restartsInWindow: restarts.used, restartLimit: restarts.limit)
        let d = policy.decide(snapshot)
        switch d {
        case .none: break
        case .grow(let k, _):
            let next = (workers.map(\.slot).max() ?? -1) + 1
            workers += (0..<k).map { .init(slot: next + $0, phase: .starting) }
        case .shrink(let chosen, _):
            workers.removeAll { chosen.contains($0.slot) }
        }
        if d != .none { decisions.append((now, d)) }
        sizes.append(workers.count)
    }

    mutating func run(seconds: Double, demand: Int) {
        for _ in 0..<Int(seconds * 10) { check(demand: demand) }
    }
}

@Suite("Scaling policy")
struct ScalingPolicyTests {
    @Test("steady load: no decision at all when the pool fits it; with saturation growth, one worker of headroom and no flapping")
    func steady() {
        var fits = ModelPool(settings(), workers: 2)
        fits.run(seconds: 120, demand: 2)
        #expect(fits.decisions.isEmpty, "\(fits.decisions)")

        var headroom = ModelPool(settings(saturation: 1 * second), workers: 2)
        headroom.run(seconds: 120, demand: 2)
        #expect(headroom.grows == [1], "every worker saturated for 1 s: one more, as the load needs")
        #expect(headroom.shrinks.isEmpty, "the spare worker is kept: shrinking would saturate the pool again")
        #expect(headroom.workers.count == 3)

        var light = ModelPool(settings(saturation: 1 * second), workers: 4)
        light.run(seconds: 60, demand: 1)
        #expect(light.grows.isEmpty)
        #expect(light.shrinks.map(\.count) == [2], "down to the load plus one spare, in one decision")
        #expect(light.workers.count == 2)
    }

    @Test("a burst grows the pool step by step to the maximum; idleness after it shrinks it back to the minimum at once")
    func burst() throws {
        var p = ModelPool(settings(), workers: 1)
        p.run(seconds: 5, demand: 0)
        #expect(p.decisions.isEmpty, "idle at the minimum: nothing to do")
        let burstStart = p.now
        p.run(seconds: 5, demand: 20)
        #expect(p.grows.allSatisfy { $0 <= 2 }, "at most growStep at once: \(p.grows)")
        #expect(p.grows.reduce(0, +) == 3 && p.workers.count == 4, "to the maximum and no further")
        let times = p.decisions.map(\.at)
        #expect(zip(times, times.dropFirst()).allSatisfy { $1 - $0 >= 500 * ms }, "cool-down between growths")
        let first = try #require(times.first)
        #expect(first - burstStart >= 200 * ms && first - burstStart <= 400 * ms, "grows once the queue has waited 200 ms")
        #expect(try #require(times.last) - burstStart <= 1500 * ms, "at the maximum within a second and a half")
        let burstEnd = p.now
        p.run(seconds: 30, demand: 0)
        #expect(p.shrinks.count == 1 && p.shrinks[0].count == 3 && p.workers.count == 1)
        let shrinkAt = try #require(p.decisions.last?.at)
        #expect(shrinkAt - burstEnd >= 10 * second && shrinkAt - burstEnd <= 10 * second + 200 * ms, "after the idle timeout")
        guard case .shrink(_, .idle(let n, let duration, let limit))? = p.decisions.last?.decision else {
            Issue.record("not an idle shrink: \(String(describing: p.decisions.last))")
            return
        }
        #expect(n == 3 && duration >= limit && limit == .seconds(10))
    }

    @Test("oscillating load: grows to what the peaks need, no shrink while the load keeps coming back, no flapping")
    func oscillating() {
        // A second of burst, a second of nothing, for a minute: shorter than the idle timeout.
        var p = ModelPool(settings(), workers: 1)
        for _ in 0..<30 {
            p.run(seconds: 1, demand: 20)
            p.run(seconds: 1, demand: 0)
        }
        #expect(p.shrinks.isEmpty, "\(p.decisions)")
        #expect(p.workers.count == 4 && p.grows.reduce(0, +) == 3)

        // Busy and idle at alternate checks: the idle count starts over at every busy check.
        var q = ModelPool(settings(), workers: 4)
        for i in 0..<600 { q.check(demand: i % 2 == 0 ? 4 : 0) }
        #expect(q.decisions.isEmpty)

        // Slower than the idle timeout: one shrink per quiet period, one growth per burst, no more.
        var r = ModelPool(settings(step: 4), workers: 1)
        for _ in 0..<3 {
            r.run(seconds: 3, demand: 10)
            r.run(seconds: 15, demand: 0)
        }
        #expect(r.grows == [3, 3, 3] && r.shrinks.map(\.count) == [3, 3, 3], "\(r.decisions)")
    }

    @Test("a crash-looping pool does not grow: held while a slot is down, while half the restart budget is spent, while a restarted worker has not answered, while a worker starts")
    func crashLoop() {
        var policy = ScalingPolicy(settings())
        let waiting = ScalingPolicy.Snapshot(now: 10 * second, queued: 50, oldestQueuedAt: 1 * second,
                                             workers: [.init(slot: 0, load: 1)], slotsDown: 1, restartsInWindow: 0, restartLimit: 5)
        #expect(policy.decide(waiting) == .none)
        #expect(policy.held == .slotsDown(1))

        var budget = waiting
        budget.slotsDown = 0
        budget.restartsInWindow = 3
        #expect(policy.decide(budget) == .none)
        #expect(policy.held == .restartBudget(used: 3, limit: 5))

        var starting = budget
        starting.restartsInWindow = 2
        starting.workers.append(.init(slot: 1, phase: .starting))
        #expect(policy.decide(starting) == .none)
        #expect(policy.held == .starting(1))

        var unproven = starting
        unproven.workers[1] = .init(slot: 1, load: 1, unprovenRestart: true)
        #expect(policy.decide(unproven) == .none)
        #expect(policy.held == .unprovenRestart(1), "a restarted worker that has not answered yet: maybe a crash loop")

        var healthy = starting
        healthy.workers[1].phase = .ready
        healthy.workers[1].load = 1
        guard case .grow(let k, .queueWait(let wait, let limit, 50)) = policy.decide(healthy) else {
            Issue.record("no growth once the pool is healthy")
            return
        }
        #expect(k == 2 && wait == .seconds(9) && limit == .milliseconds(200))
        #expect(policy.held == nil)

        // Below the minimum: the missing workers come back unless slots are down.
        var below = ScalingPolicy(settings(min: 3))
        var s = ScalingPolicy.Snapshot(now: 1, workers: [.init(slot: 0)], slotsDown: 2)
        #expect(below.decide(s) == .none)
        s.slotsDown = 0
        #expect(below.decide(s) == .grow(by: 2, .belowMinimum(3)))

        // In the model: a slot down for a minute with work waiting all along: no growth at all.
        var m = ModelPool(settings(), workers: 1)
        m.slotsDown = 1
        m.run(seconds: 60, demand: 10)
        #expect(m.decisions.isEmpty)
        m.slotsDown = 0
        m.run(seconds: 1, demand: 10)
        #expect(m.grows.reduce(0, +) == 3)
    }

    @Test("resize by hand moves the bounds: n becomes the maximum, the minimum comes down to it; a fixed pool stays fixed")
    func resize() {
        var adaptive = ScalingPolicy(settings(min: 2, max: 4))
        adaptive.resized(to: 6, at: 0)
        #expect(adaptive.settings.minimum == 2 && adaptive.settings.maximum == 6)
        adaptive.resized(to: 1, at: 0)
        #expect(adaptive.settings.minimum == 1 && adaptive.settings.maximum == 1)
        adaptive.resized(to: 5, at: 0)
        #expect(adaptive.settings.minimum == 1 && adaptive.settings.maximum == 5, "still adaptive, from the moved minimum")
        adaptive.resized(to: 0, at: 0)
        #expect(adaptive.settings.minimum == 0 && adaptive.settings.maximum == 0)
        adaptive.resized(to: 3, at: 0)
        #expect(adaptive.settings.minimum == 1 && adaptive.settings.maximum == 3, "at least 1 while the pool has workers")

        var fixed = ScalingPolicy(.fixed(2))
        fixed.resized(to: 5, at: 0)
        #expect(fixed.settings.minimum == 5 && fixed.settings.maximum == 5 && !fixed.isAdaptive)

        // In the model: resized to 6 while idle at 4, then a burst grows it past the old maximum;
        // idleness brings it down to the minimum, not to 6.
        var m = ModelPool(settings(), workers: 4)
        m.run(seconds: 1, demand: 0)
        m.policy.resized(to: 6, at: m.now)
        m.run(seconds: 0.3, demand: 30)
        #expect(m.grows.isEmpty, "the cool-down runs from the resize")
        m.run(seconds: 3, demand: 30)
        #expect(m.workers.count == 6)
        m.run(seconds: 12, demand: 0)
        #expect(m.workers.count == 1)

        // Above the maximum (a resize down the pool has not applied yet): the least loaded go.
        var over = ScalingPolicy(settings())
        over.resized(to: 2, at: 0)
        let s = ScalingPolicy.Snapshot(now: 1, workers: [.init(slot: 0, load: 3), .init(slot: 1, phase: .starting),
                                                         .init(slot: 2, load: 0, idleSince: 0), .init(slot: 3, load: 1)])
        #expect(over.decide(s) == .shrink([2, 1], .aboveMaximum(2)))
    }

    @Test("growth: by what the work in sight needs, at most a step, never above the maximum; saturation grows without a queue")
    func growthSize() {
        var p = ScalingPolicy(settings(max: 8, step: 4))
        let oneShort = ScalingPolicy.Snapshot(now: second, queued: 1, oldestQueuedAt: 0,
                                              workers: [.init(slot: 0, load: 1), .init(slot: 1, load: 1)])
        #expect(p.decide(oneShort) == .grow(by: 1, .queueWait(wait: .seconds(1), limit: .milliseconds(200), queued: 1)))
        var q = ScalingPolicy(settings(max: 3, step: 4))
        var many = oneShort
        many.queued = 40
        guard case .grow(1, _) = q.decide(many) else { Issue.record("not 1 (the maximum is 3)"); return }

        var s = ScalingPolicy(settings(queueWait: nil, saturation: 1 * second))
        var busy = ScalingPolicy.Snapshot(now: 0, workers: [.init(slot: 0, load: 1), .init(slot: 1, phase: .busy)])
        #expect(s.decide(busy) == .none)
        busy.now = 900 * ms
        #expect(s.decide(busy) == .none)
        busy.now = 1000 * ms
        #expect(s.decide(busy) == .grow(by: 1, .saturated(duration: .seconds(1), limit: .seconds(1), workers: 2)))
        // One worker free at one check starts the count over.
        busy.now = 1600 * ms
        busy.workers.append(.init(slot: 2, load: 0, idleSince: 1000 * ms))
        #expect(s.decide(busy) == .none)
        busy.workers[2].load = 1
        busy.now = 2500 * ms
        #expect(s.decide(busy) == .none, "saturated again only since 2.5 s")
    }

    @Test("the longest idle workers retire first; a queued request keeps every worker")
    func retirementOrder() {
        var p = ScalingPolicy(settings(idle: 1 * second))
        var s = ScalingPolicy.Snapshot(now: 0, workers: [
            .init(slot: 0, load: 1), .init(slot: 1, idleSince: 0), .init(slot: 2, idleSince: -5 * second), .init(slot: 3, idleSince: 0),
        ])
        #expect(p.decide(s) == .none)
        s.now = 1 * second
        s.queued = 1
        s.oldestQueuedAt = s.now
        #expect(p.decide(s) == .none, "a queued request: nobody is idle")
        s.queued = 0
        s.oldestQueuedAt = nil
        s.now = 2 * second
        #expect(p.decide(s) == .none, "the idle count started over at the queued check")
        s.now = 3 * second
        #expect(p.decide(s) == .shrink([2, 3, 1], .idle(workers: 3, duration: .seconds(1), limit: .seconds(1))))
    }

    @Test("reasons read as a sentence", arguments: [
        (ScalingReason.queueWait(wait: .milliseconds(350), limit: .milliseconds(200), queued: 12), "queue wait 350 ms over 200 ms (12 queued)"),
        (.saturated(duration: .milliseconds(1200), limit: .seconds(1), workers: 4), "all 4 workers saturated for 1.2 s over 1 s"),
        (.saturated(duration: .seconds(2), limit: .seconds(1), workers: 1), "the worker saturated for 2 s over 1 s"),
        (.idle(workers: 3, duration: .seconds(30), limit: .seconds(30)), "3 workers idle for 30 s (idle timeout 30 s)"),
        (.belowMinimum(2), "below the minimum of 2"),
        (.aboveMaximum(4), "above the maximum of 4"),
    ])
    func reasons(_ reason: ScalingReason, _ text: String) {
        #expect(reason.description == text)
    }
}
