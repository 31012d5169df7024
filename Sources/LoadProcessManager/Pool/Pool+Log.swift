import Glibc
import LPMReactor
import Logging

extension Pool {
    /// Logs a pool event to ``SupervisorConfiguration/logger``, at the level it deserves, with
    /// its fields as metadata. Every event the pool emits goes through here, so the log and the
    /// events never disagree.
    func log(_ e: SupervisorEvent) {
        let logger = config.logger
        switch e {
        case .online:
            logger.info("all workers are ready", metadata: ["workers": "\(activeCount)"])
        case .workerStarted(let slot, let pid):
            logger.info("worker started", metadata: ["slot": "\(slot)", "pid": "\(pid)"])
        case .workerExited(let slot, let pid, let status, let expected):
            logger.log(level: expected ? .info : .warning, expected ? "worker exited" : "worker exited unexpectedly",
                       metadata: ["slot": "\(slot)", "pid": "\(pid)", "status": "\(status)",
                                  "restarts": "\(slot < slots.count ? slots[slot].restarts : 0)"])
        case .workerRestarted(let slot, let pid):
            logger.notice("worker restarted", metadata: ["slot": "\(slot)", "pid": "\(pid)", "restarts": "\(slots[slot].restarts)"])
        case .workerRecycled(let slot, let oldPID, let newPID, let reason):
            logger.info("worker recycled", metadata: ["slot": "\(slot)", "pid": "\(oldPID)", "replacement": "\(newPID)", "reason": "\(reason)"])
        case .restartBudgetExhausted(let slot):
            logger.error("restart budget spent: slot down", metadata: [
                "slot": "\(slot)", "restarts": "\(config.restarts)", "window": "\(config.maxRestartsInInterval)"])
        case .workerRestartScheduled(let slot, let delay):
            logger.warning("down slot will be tried again", metadata: ["slot": "\(slot)", "delay": "\(delay)"])
        case .workerSpawnFailed(let slot, let reason):
            logger.error("worker could not be spawned", metadata: ["slot": "\(slot)", "reason": "\(reason)"])
        case .protocolViolation(let slot, let pid, let reason):
            logger.error("worker broke the protocol and is killed", metadata: ["slot": "\(slot)", "pid": "\(pid)", "reason": "\(reason)"])
        case .workerUnresponsive(let slot, let pid, let reason):
            logger.error("worker unresponsive and is killed", metadata: ["slot": "\(slot)", "pid": "\(pid)", "reason": "\(reason)"])
        case .broadcastFailed(let slot, let pid, let reason):
            logger.warning("broadcast did not reach a worker", metadata: ["slot": "\(slot)", "pid": "\(pid)", "reason": "\(reason)"])
        case .idleWorkerRetired(let slot, let pid):
            logger.info("idle worker retired", metadata: ["slot": "\(slot)", "pid": "\(pid)"])
        case .poolScaled(let from, let to, let reason):
            logScaling(from: from, to: to, reason)
        case .noWorkersLeft:
            logger.error("no worker is left: requests fail with noWorkers")
        case .templateReady(let pid):
            logger.info("worker template ready: workers are forked from it", metadata: ["pid": "\(pid)"])
        case .templateUnavailable(let pid, let reason):
            logger.warning("worker template unavailable: workers are started with exec", metadata: ["pid": "\(pid)", "reason": "\(reason)"])
        case .signalReceived(let signal):
            logger.notice("shutdown signal received", metadata: ["signal": "\(Reactor.signalName(signal) ?? "\(signal)")"])
        }
    }

    /// Logs a kill phase.
    func logKill(_ phase: String, _ metadata: Logger.Metadata = [:]) {
        var m = metadata
        m["pending"] = "\(table.pendingCount)"
        config.logger.info("\(phase)", metadata: m)
    }
}
