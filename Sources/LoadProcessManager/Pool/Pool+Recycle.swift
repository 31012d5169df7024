import Glibc
import LPMReactor
import LPMWire

extension Pool {
    /// Replaces the worker in slot `i` without losing capacity or a request: a fresh worker
    /// starts in the slot first; the old one moves to a retired slot, gets nothing new, finishes
    /// what it holds and exits. Not charged to the restart budget.
    /// With a template and `fork`, the replacement is ordered from it and the swap happens
    /// when it announces itself (the old worker serves meanwhile).
    /// - Returns: whether the replacement started (if it could not be spawned, the old worker
    ///   stays, and the failure is reported as an event and returned).
    @discardableResult
    func recycle(slot i: Int, reason: String, fork: Bool = true) -> SupervisorError? {
        guard phase == .running, slots[i].membership == .active, let old = slots[i].process, old.lifecycle.isServing else {
            return nil
        }
        if fork, config.template != nil, orderFork(slot: i, .recycle(oldPID: old.pid, reason: reason)) { return nil }
        let spawned: (pid: pid_t, channel: CInt)
        do { spawned = try execWorker(slot: i) } catch {
            emit(.workerSpawnFailed(slot: i, reason: "recycling worker \(old.pid) (\(reason)): \(error.message)"))
            return error
        }
        return replace(old, slot: i, with: spawned, reason: reason)
    }

    /// Puts the started process `spawned` in slot `i` in place of `old`, which drains.
    @discardableResult
    func replace(_ old: WorkerProcess, slot i: Int, with spawned: (pid: pid_t, channel: CInt), reason: String) -> SupervisorError? {
        // The old worker moves to a retired slot (a free one, or a new one), with its requests.
        let j = slots.indices.first { slots[$0].membership == .retired && slots[$0].process == nil } ?? {
            slots.append(WorkerSlot(membership: .retired))
            return slots.count - 1
        }()
        slots[j].process = old
        slots[j].membership = .retired
        slots[i].process = nil
        old.slot = j
        table.moveInFlight(from: i, to: j)
        do {
            try install(slot: i, spawned)
        } catch {
            // Undo: the old worker keeps the slot.
            slots[i].process = old
            slots[j].process = nil
            old.slot = i
            table.moveInFlight(from: j, to: i)
            emit(.workerSpawnFailed(slot: i, reason: "recycling worker \(old.pid) (\(reason)): \(error.message)"))
            return error
        }
        let fresh = slots[i].process?.pid ?? 0
        emit(.workerRecycled(slot: i, oldPID: old.pid, newPID: fresh, reason: reason))
        drain(old)
        return nil
    }

    /// Recycles the worker `pid` (``Supervisor/restart(pid:)``).
    /// Returns the slot whose worker is being replaced.
    @discardableResult
    func restart(pid: pid_t) throws(SupervisorError) -> Int {
        defer { deliver() }
        guard phase == .running else { throw SupervisorError(.shutDown, "restart(pid: \(pid)): the pool is not running") }
        guard let i = slots.indices.first(where: { slots[$0].membership == .active && slots[$0].process?.pid == pid }),
              slots[i].process?.lifecycle.isServing == true else {
            throw SupervisorError(.invalidArgument, "restart(pid: \(pid)): no running worker of the pool has that pid")
        }
        if let error = recycle(slot: i, reason: "restart(pid:)") { throw error }
        return i
    }

    /// ``restart(pid:)``, completing once the replacement exists, the same with or without a
    /// template: spawned with exec at once, or ordered from the template and announced (until
    /// then the old worker still takes requests). `spawnFailed` if no replacement came of it
    /// (the old worker then stays).
    func restart(pid: pid_t, completion: @escaping (SupervisorError?) -> Void) {
        let i: Int
        do { i = try restart(pid: pid) } catch { return completion(error) }
        guard template.pending[i] != nil else { return completion(nil) }
        template.resizeWaiters.append(ResizeWaiter(slots: [i], grewNow: false, replacing: pid, completion: completion))
        settleResizeWaiters()
    }

    /// Checks the per-worker recycling limits after `w` answered a request.
    func recycleIfDue(_ w: WorkerProcess) {
        if let limit = w.recycleAfter, w.completed >= limit {
            w.recycleAfter = nil
            recycle(slot: w.slot, reason: "answered \(w.completed) requests")
        }
    }

    // MARK: Rolling reload

    /// Replaces every worker, one slot at a time (with `executable` if given): each replacement
    /// starts before the old worker drains, and the next slot is recycled once the replacement
    /// is ready, so capacity never drops below N-1 and nothing is lost. `done` runs when every
    /// slot runs a worker started by this reload that has been ready.
    func reload(_ executable: SupervisorConfiguration.Executable?, _ done: @escaping @Sendable (SupervisorError?) -> Void) {
        defer { deliver() }
        guard phase == .running else {
            return outbox.push(.call { done(SupervisorError(.shutDown, "reload(): the pool is not running")) })
        }
        if let executable {
            spawner.free()
            config.executable = executable
            spawner = Spawner(config)
        }
        let all = slots.indices.filter { slots[$0].membership == .active }
        // A reload during a reload starts over (with the newest executable); both callers are told.
        let waiting = reload?.completions ?? []
        reload = (all, nil, waiting + [done])
        advanceReload()
    }

    /// Recycles the next slot of the reload, once the previous replacement is ready.
    func advanceReload() {
        guard var r = reload else { return }
        if let slot = r.waiting {
            guard template.pending[slot] == nil, let w = slots[slot].process,
                  w.lifecycle.hasBeenReady || slots[slot].membership != .active else { return }
            r.waiting = nil
        }
        while let next = r.remaining.first {
            r.remaining.removeFirst()
            guard slots[next].membership == .active, slots[next].process != nil else { continue }
            if let error = recycle(slot: next, reason: "reload") {
                reload = nil
                for c in r.completions { outbox.push(.call { c(error) }) }
                return
            }
            r.waiting = next
            reload = r
            return
        }
        reload = nil
        for c in r.completions { outbox.push(.call { c(nil) }) }
    }

    /// A reload cannot finish once the pool stops: its callers are told.
    func failReload() {
        guard let r = reload else { return }
        reload = nil
        for c in r.completions { outbox.push(.call { c(SupervisorError(.shutDown, "the pool stopped during the reload")) }) }
    }
}
