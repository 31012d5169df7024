import Glibc
import LPMReactor

extension Pool {
    /// Grows or shrinks the pool to `n` workers; the last call wins.
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
        idleRetired = 0  // a size set by hand: idle workers are no longer grown back beyond it
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
            if let w = slots[i].process { apply(w.lifecycle.handle(.drain), to: w) }
        }
    }

    // MARK: Idle shrink

    /// On the health timer: retires one worker idle for ``SupervisorConfiguration/idleShrink``,
    /// while the pool is above its minimum.
    func retireIdleWorker() {
        guard phase == .running, let (after, minimum) = config.idleShrink else { return }
        let now = Sys.monotonicNanoseconds()
        var candidate: Int?
        for i in slots.indices where slots[i].membership == .active {
            guard let w = slots[i].process, w.lifecycle.acceptsWork else { continue }
            guard w.load == 0 else { w.idleSince = nil; continue }
            let since = w.idleSince ?? now
            w.idleSince = since
            if now - since >= Reactor.nanoseconds(after) { candidate = candidate ?? i }
        }
        guard let i = candidate, activeCount > max(0, minimum), let w = slots[i].process else { return }
        slots[i].membership = .retired
        idleRetired += 1
        emit(.idleWorkerRetired(slot: i, pid: w.pid))
        apply(w.lifecycle.handle(.drain), to: w)
    }

    /// Work waits and no worker can take it: grows back one worker retired for idleness.
    func growBackForLoad() {
        guard idleRetired > 0, phase == .running else { return }
        idleRetired -= 1
        do { try grow(by: 1) } catch {
            // Reported by grow (an event); the queue waits for the workers still there.
        }
    }
}
