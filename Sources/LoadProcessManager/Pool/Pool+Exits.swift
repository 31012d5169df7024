import Glibc
import LPMReactor
import LPMWire

extension Pool {
    /// Worker `w` was reaped: its slot, streams, replies and requests are settled, then it is
    /// restarted if it died on its own while the pool runs.
    func exited(_ w: WorkerProcess, _ status: Reactor.ExitStatus) {
        let i = w.slot
        w.watch = nil
        // What it sent before it went (answers still in its socket or ring when the exit is seen
        // first) is read and delivered now, so that no answer is lost, none is retried, and no
        // request is failed that was answered; it gets no new request meanwhile.
        w.exitSeen = true
        w.channel.readRemaining()
        w.channel.close()
        w.statm.close()
        guard case .reap(let cause) = w.lifecycle.handle(.exited) else { return }
        slots[i].process = nil
        slots[i].lastExit = status
        slots[i].completedBefore += w.completed
        let expected = cause == .expected || phase == .hardKilling || phase == .stopped
        emit(.workerExited(slot: i, pid: w.pid, status: status, expected: expected))

        // Its response streams that have not ended fail, naming the worker.
        for (_, core) in w.streams {
            core.fail(SupervisorError(.streamFailed, "worker \(w.pid) \(status) before its response stream ended",
                                      requestID: core.requestID, workerPID: w.pid, exitStatus: status))
        }
        w.streams.removeAll()
        failReplies(from: w.pid, SupervisorError(.workerExited, "worker \(w.pid) \(status) before replying to an event",
                                                 workerPID: w.pid, exitStatus: status))
        // Its requests: retried elsewhere while attempts are left, else failed with the reason.
        // A scan, not a per-worker set: deaths are rare, dispatches are not. Reversed, so that
        // retries pushed to the front keep their order.
        let code: SupervisorError.Code
        let why: String
        switch cause {
        case .violation(let reason):
            (code, why) = (.protocolViolation, "broke the protocol (\(reason)) and was killed with the request in flight")
        case .unresponsive(let reason):
            (code, why) = (.workerUnresponsive, "was unresponsive (\(reason)) and was killed with the request in flight")
        case .expected where phase == .hardKilling || phase == .stopped:
            (code, why) = (.shutDown, "was stopped with the request in flight (\(status))")
        case .expected, .crashed:
            (code, why) = (.workerExited, "\(status) with the request in flight")
        }
        for index in table.inFlight(on: i).reversed() {
            if cause != .expected, let limit = config.poisonThreshold, table.noteDeath(index) >= limit {
                let deaths = table[index].deaths
                attemptFailed(index, on: w, .poisonRequest,
                              "was in flight on \(deaths) workers that died (the last \(why)): not tried again",
                              exitStatus: status, retry: false)
            } else {
                attemptFailed(index, on: w, code, why, exitStatus: status)
            }
        }

        switch phase {
        case .running where slots[i].membership == .retired:
            break
        case .running where cause != .expected:
            onlineAnnounced = false
            restart(slot: i)
        case .softKilling, .hardKilling:
            finishKillIfDone()
        case .running, .idle, .stopped:
            break
        }
        if phase == .running, !hasLiveWorker { noWorkersLeft() }
        pump()
    }

    /// Restarts slot `i` if the budget allows; otherwise the slot goes down, to come back later
    /// (``SupervisorConfiguration/afterBudgetSpent``) or by a resize.
    private func restart(slot i: Int) {
        guard budget.charge(at: Sys.monotonicNanoseconds()) else {
            slots[i].membership = .down
            emit(.restartBudgetExhausted(slot: i))
            return scheduleComeback(slot: i)
        }
        slots[i].refusals = 0
        respawn(slot: i)
    }

    private func respawn(slot i: Int) {
        slots[i].restarts += 1
        if spawnOrMarkDown(slot: i, restart: true) != nil { scheduleComeback(slot: i) }
    }

    /// Arms the timer that brings down slot `i` back: `initial`, doubled with each refusal in a
    /// row, at most `maximum`.
    func scheduleComeback(slot i: Int) {
        guard case .backoff(let initial, let maximum) = config.afterBudgetSpent, slots[i].comeback == nil else { return }
        let delay = min(maximum, initial * (1 << min(slots[i].refusals, 30)))
        slots[i].refusals += 1
        do {
            slots[i].comeback = try reactor.schedule(after: delay) { [unowned self] in
                self.slots[i].comeback = nil
                // Still down (not brought back by a resize, nor the pool stopped): try again.
                guard self.phase == .running, self.slots[i].membership == .down, self.slots[i].process == nil else { return }
                self.onlineAnnounced = false
                self.respawn(slot: i)
                self.pump()
                self.deliver()
            }
            emit(.workerRestartScheduled(slot: i, delay: delay))
        } catch {
            // A delay the reactor refuses (a closed reactor): the slot stays down, as with `.stop`.
        }
    }

    /// Cancels the comeback of slot `i`, if one is armed (a resize takes the slot, or the pool stops).
    func cancelComeback(slot i: Int) {
        if let t = slots[i].comeback { reactor.cancel(t); slots[i].comeback = nil }
    }
}
