import Glibc
import LPMReactor
import LPMWire

extension Pool {
    /// A shutdown signal arrived: the handler set for it, or the default: the first drains
    /// (soft kill, within its deadline), another during the drain hard-kills.
    func shutdownSignal(_ signal: CInt) {
        emit(.signalReceived(signal))
        if let handler = signalHandlers[signal] ?? anySignalHandler {
            return outbox.push(.call { handler(signal) })
        }
        switch phase {
        case .idle, .running: softKill {}
        case .softKilling: hardKill {}
        case .hardKilling, .stopped: break
        }
    }

    /// Stops intake, lets every accepted request finish, tells each worker to finish, and
    /// completes once every worker is reaped.
    func softKill(_ done: @escaping @Sendable () -> Void) {
        defer { deliver() }
        switch phase {
        case .stopped:
            outbox.push(.call(done))
        case .softKilling, .hardKilling:
            killCompletions.append(done)
        case .idle:
            killCompletions.append(done)
            phase = .softKilling
            for index in table.takeQueued() {
                fail(index, .shutDown, "the pool was shut down before it started")
            }
            finishKillIfDone()
        case .running:
            killCompletions.append(done)
            phase = .softKilling
            logKill("soft kill: draining", ["deadline": "\(config.softKillTimeout.map { "\($0)" } ?? "none")"])
            if let t = config.softKillTimeout {
                do {
                    softKillTimer = try reactor.schedule(after: t) { [unowned self] in
                        self.softKillTimer = nil
                        self.hardKill {}
                    }
                } catch {
                    // A deadline that cannot be armed (negative): stop now rather than wait for ever.
                    hardKill {}
                    return
                }
            }
            advanceSoftKill()
        }
    }

    /// Once every accepted request has gone to a worker, tells each worker to finish.
    func advanceSoftKill() {
        if table.queuedCount > 0 {
            // Requests are still queued: a worker must remain to take them.
            guard !slots.contains(where: { $0.process?.lifecycle.isServing ?? false }) else { return }
            for index in table.takeQueued() {
                fail(index, .shutDown, "no worker is left to take the request during the soft kill")
            }
        }
        for s in slots {
            guard let w = s.process else { continue }
            apply(w.lifecycle.handle(.drain), to: w)
        }
        finishKillIfDone()
    }

    /// Kills every worker now; every pending request fails with `shutDown`.
    func hardKill(_ done: @escaping @Sendable () -> Void) {
        defer { deliver() }
        killCompletions.append(done)
        switch phase {
        case .stopped:
            return finishKillIfDone()
        case .hardKilling:
            return
        case .idle, .running, .softKilling:
            phase = .hardKilling
        }
        logKill("hard kill: killing every worker")
        if let t = softKillTimer { reactor.cancel(t); softKillTimer = nil }
        for s in slots {
            guard let w = s.process else { continue }
            if !w.channel.isClosed {
                // Its hard-kill handler gets a chance if it reads before SIGKILL lands.
                w.channel.send(.hardKill)
                flusher.flushAll()
            }
            apply(w.lifecycle.handle(.kill), to: w)
        }
        for index in table.takeAll() {
            fail(index, .shutDown, "the pool was hard-killed")
        }
        finishKillIfDone()
    }

    /// Once every worker is reaped during a kill: nothing left unanswered, the pool stops, and
    /// the kill completions run.
    func finishKillIfDone() {
        switch phase {
        case .softKilling:
            // Every worker gone, and every response stream read to its end by its caller (or
            // abandoned); the deadline, if any, hard-kills otherwise.
            guard slots.allSatisfy({ $0.process == nil }), openStreams.isEmpty else { return }
        case .hardKilling:
            guard slots.allSatisfy({ $0.process == nil }) else { return }
        case .stopped:
            break
        case .idle, .running:
            return
        }
        for core in openStreams.values {
            core.onFinished = nil
            core.abandon(SupervisorError(.shutDown, "the pool stopped before the response stream was read to its end",
                                         requestID: core.requestID, workerPID: core.workerPID))
        }
        openStreams = [:]
        for index in table.takeAll() {
            fail(index, .shutDown, "the pool stopped")
        }
        failReplies(from: nil, SupervisorError(.shutDown, "the pool stopped before the worker replied"))
        failReload()
        if phase != .stopped {
            phase = .stopped
            logKill("pool stopped")
            if let t = healthTimer { reactor.cancel(t); healthTimer = nil }
            if let t = pingTimer { reactor.cancel(t); pingTimer = nil }
            for i in slots.indices { cancelComeback(slot: i) }
            stopTemplate()
            if let t = softKillTimer { reactor.cancel(t); softKillTimer = nil }
            for w in signalWatches {
                // Unwatching a watch this pool made: it fails only if the reactor is closed.
                try? reactor.unwatchSignal(w)
            }
            signalWatches = []
            onStopped?()
        }
        // Event subscribers get the events still in the outbox, then their sequences end.
        outbox.push(.endEventStreams)
        for done in killCompletions { outbox.push(.call(done)) }
        killCompletions = []
        if let status = config.exitStatusAfterKill { outbox.push(.call { exit(status) }) }
    }

    /// Fails the replies awaited from `pid` (all of them with `nil`).
    func failReplies(from pid: pid_t?, _ error: SupervisorError) {
        for (id, entry) in pendingReplies where pid == nil || entry.pid == pid {
            pendingReplies[id] = nil
            outbox.push(.reply(entry.handler, .failure(error)))
        }
    }
}
