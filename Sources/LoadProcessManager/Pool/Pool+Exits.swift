import Glibc
import LPMReactor
import LPMWire

extension Pool {
    /// Worker `w` was reaped: its slot, streams, replies and requests are settled, then it is
    /// restarted if it died on its own while the pool runs.
    func exited(_ w: WorkerProcess, _ status: Reactor.ExitStatus) {
        let i = w.slot
        w.watch = nil
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
            attemptFailed(index, on: w, code, why, exitStatus: status)
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

    /// Restarts slot `i` if the budget allows; otherwise the slot goes down (out of the pool
    /// until a resize brings it back).
    private func restart(slot i: Int) {
        guard budget.charge(at: Sys.monotonicNanoseconds()) else {
            slots[i].membership = .down
            emit(.restartBudgetExhausted(slot: i))
            return
        }
        slots[i].restarts += 1
        if spawnOrMarkDown(slot: i) == nil, let pid = slots[i].process?.pid {
            emit(.workerRestarted(slot: i, pid: pid))
        }
    }
}
