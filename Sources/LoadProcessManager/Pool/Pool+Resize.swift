import Glibc
import LPMReactor

extension Pool {
    /// Grows or shrinks the pool to `n` workers; the last call wins. `n` becomes the maximum
    /// of an adaptive pool (see ``ScalingPolicy/resized(to:at:)``).
    ///
    /// Only slots that are part of the pool count: slots down after a spent restart budget or a
    /// failed spawn do not, so restoring the original count brings them back. Growing reuses
    /// free slots first, starts a worker in each, and reports each failure (an event); it fails
    /// when nothing could be added. Shrinking retires the least-loaded workers: they get nothing
    /// new, finish their requests, run their soft-kill handler and exit, without charging the
    /// budget.
    ///
    /// `completion` runs on the reactor thread once every worker it added exists, the same with
    /// or without a template: a worker started with exec exists when it is spawned, a worker
    /// ordered from the template once it announced itself (or its order fell back to exec).
    /// The reactor goes on meanwhile. Growing fails (`spawnFailed`) only when no worker came of it.
    func resize(_ n: Int, completion: @escaping (SupervisorError?) -> Void) {
        let growth: (ordered: [Int], grewNow: Bool)
        do { growth = try resize(n) } catch { return completion(error) }
        guard !growth.ordered.isEmpty else { return completion(nil) }
        template.resizeWaiters.append(ResizeWaiter(slots: growth.ordered, grewNow: growth.grewNow, completion: completion))
        settleResizeWaiters()
    }

    /// Completes the resizes whose ordered workers all came (or fell back to exec, or failed).
    func settleResizeWaiters() {
        guard !template.resizeWaiters.isEmpty else { return }
        var waiting: [ResizeWaiter] = []
        var done: [ResizeWaiter] = []
        for w in template.resizeWaiters {
            if w.slots.contains(where: { template.pending[$0] != nil }) { waiting.append(w) } else { done.append(w) }
        }
        template.resizeWaiters = waiting
        for w in done {
            if phase == .softKilling || phase == .hardKilling || phase == .stopped {
                w.completion(SupervisorError(.shutDown, "the pool was shut down before its new workers started"))
            } else if let old = w.replacing, w.slots.allSatisfy({ slots[$0].process?.pid == old }) {
                w.completion(SupervisorError(.spawnFailed, "the replacement of worker \(old) could not be started (see the workerSpawnFailed events); it stays"))
            } else if w.replacing == nil && !w.grewNow && !w.slots.contains(where: { slots[$0].process != nil }) {
                w.completion(SupervisorError(.spawnFailed, "no worker could be started (see the workerSpawnFailed events)"))
            } else {
                w.completion(nil)
            }
        }
    }

    /// Grows or shrinks (see ``resize(_:completion:)``). Returns the slots whose worker was
    /// ordered from the template and has not announced itself yet, and whether a worker was
    /// added at once.
    @discardableResult
    func resize(_ n: Int) throws(SupervisorError) -> (ordered: [Int], grewNow: Bool) {
        defer { deliver() }
        guard n >= 0 else { throw SupervisorError(.invalidArgument, "resize(\(n)): the count must not be negative") }
        switch phase {
        case .softKilling, .hardKilling, .stopped:
            throw SupervisorError(.shutDown, "resize(\(n)) after the pool was shut down")
        case .idle, .running:
            break
        }
        // A size set by hand moves the bounds (an adaptive pool may then grow up to `n`, and
        // shrink when idle; a fixed one stays at `n`); the policy's counts start over.
        var policy = scalingPolicy()
        policy.resized(to: n, at: Sys.monotonicNanoseconds())
        scaling.policy = policy
        defer { updateRoom() }
        let active = activeCount
        var growth: (ordered: [Int], grewNow: Bool) = ([], false)
        if n > active {
            growth = try grow(by: n - active)
        } else if n < active {
            shrink(by: active - n)
            if n == 0 { noWorkersLeft() }
        }
        if phase == .running {
            checkOnline()
            pump()
        }
        return growth
    }

    /// Returns the slots ordered from the template (their workers come later), and whether a
    /// worker was added at once.
    private func grow(by count: Int) throws(SupervisorError) -> (ordered: [Int], grewNow: Bool) {
        // Free slots first (down, or retired with their process gone), then new ones.
        var free = slots.indices.filter { slots[$0].membership != .active && slots[$0].process == nil }
        free.reverse()
        var added = 0
        var ordered: [Int] = []
        var grewNow = false
        var firstError: SupervisorError?
        for _ in 0..<count {
            let i: Int
            if let reused = free.popLast() { i = reused } else {
                slots.append(WorkerSlot())
                i = slots.count - 1
            }
            cancelComeback(slot: i)
            slots[i].refusals = 0
            slots[i].membership = .active
            guard phase == .running else { added += 1; continue }
            if let error = spawnOrMarkDown(slot: i) { firstError = firstError ?? error } else {
                added += 1
                if template.pending[i] != nil { ordered.append(i) } else { grewNow = true }
            }
        }
        onlineAnnounced = false
        if added == 0, let firstError { throw firstError }
        return (ordered, grewNow || (added > 0 && phase != .running))
    }

    private func shrink(by count: Int) {
        // Least loaded first: slots without a process, then starting ones, then by load.
        func rank(_ i: Int) -> (Int, Int) {
            guard let w = slots[i].process else { return (0, 0) }
            return (w.lifecycle == .starting ? 1 : 2, w.load)
        }
        let order = slots.indices.filter { slots[$0].membership == .active }.sorted { rank($0) < rank($1) }
        for i in order.prefix(count) {
            slots[i].membership = .retired
            if let w = slots[i].process { drain(w) }
        }
    }
}

/// A ``Pool/resize(_:completion:)`` waiting for the workers it ordered from the template.
struct ResizeWaiter {
    /// The slots ordered.
    let slots: [Int]
    /// Whether the same resize added a worker at once (with exec, or in a pool not started).
    let grewNow: Bool
    /// For a restart: the pid of the worker being replaced (the slot still holds it if the
    /// replacement failed).
    var replacing: pid_t? = nil
    let completion: (SupervisorError?) -> Void
}
