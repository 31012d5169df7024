import Glibc
import LPMReactor

extension Pool {
    /// Grows or shrinks the pool to `n` workers; the last call wins. `n` becomes the maximum
    /// of an adaptive pool (see ``ScalingPolicy/resized(to:at:)``).
    ///
    /// Only slots that are part of the pool count: slots down after a spent restart budget or a
    /// failed spawn do not, so restoring the original count brings them back. Growing reuses
    /// free slots first, spawns now, and reports each failure (an event); it throws when nothing
    /// could be added. Shrinking retires the least-loaded workers: they get nothing new, finish
    /// their requests, run their soft-kill handler and exit, without charging the budget.
    func resize(_ n: Int) throws(SupervisorError) {
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
        if n > active {
            try grow(by: n - active)
        } else if n < active {
            shrink(by: active - n)
            if n == 0 { noWorkersLeft() }
        }
        if phase == .running {
            checkOnline()
            pump()
        }
    }

    private func grow(by count: Int) throws(SupervisorError) {
        // Free slots first (down, or retired with their process gone), then new ones.
        var free = slots.indices.filter { slots[$0].membership != .active && slots[$0].process == nil }
        free.reverse()
        var added = 0
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
            if let error = spawnOrMarkDown(slot: i) { firstError = firstError ?? error } else { added += 1 }
        }
        onlineAnnounced = false
        if added == 0, let firstError { throw firstError }
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
