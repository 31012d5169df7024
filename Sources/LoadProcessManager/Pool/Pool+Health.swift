import Glibc
import LPMReactor
import LPMWire

extension Pool {
    // MARK: Health

    /// On the health timer: RSS from statm, and a health request to each worker (its heap
    /// figures come back in a health report).
    func sampleHealth() {
        healthSequence &+= 1
        for s in slots {
            guard let w = s.process else { continue }
            w.sampleRSS()
            w.channel.send(.healthRequest, id: healthSequence)
        }
        metrics?.sampled(self)
        // Memory a burst's requests needed goes back once the pool is idle at a sample.
        table.shrinkIfIdle()
        enforceDrainDeadlines(now: Sys.monotonicNanoseconds())
        if let limit = config.recycleAboveRSS {
            for i in slots.indices where slots[i].membership == .active {
                guard let w = slots[i].process, w.rss > limit else { continue }
                recycle(slot: i, reason: "resident memory \(w.rss) bytes, over recycleAboveRSS (\(limit))")
            }
            deliver()
        }
    }

    /// On the ping timer: a worker whose ping is unanswered past the deadline is unresponsive
    /// (killed and replaced); every other one gets a new ping if none is outstanding.
    func checkLiveness() {
        let now = Sys.monotonicNanoseconds()
        let deadline = Reactor.nanoseconds(config.unresponsiveTimeout)
        for s in slots {
            guard let w = s.process, w.watch != nil else { continue }
            if w.pingOutstanding != 0 {
                guard now - w.pingSentAt > deadline else { continue }
                // A reactor reads a socket once per readiness: after a stall of this thread (a
                // blocking callback, a starved CPU), the answer can be in the socket behind
                // everything else the worker sent meanwhile. Read all of it before judging.
                w.channel.readRemaining()
                guard w.pingOutstanding != 0, w.watch != nil, !w.exitSeen else { continue }
                apply(w.lifecycle.handle(.unresponsive("no answer to a ping for \(config.unresponsiveTimeout)")), to: w)
            } else {
                pingSequence &+= 1
                w.pingOutstanding = pingSequence
                w.pingSentAt = now
                w.channel.send(.ping, id: pingSequence)
            }
        }
    }

    func health() -> [WorkerHealth] {
        slots.enumerated().filter { $0.1.membership != .retired || $0.1.process != nil }.map { i, s in
            let w = s.process
            w?.sampleRSS()
            return WorkerHealth(slot: i, pid: w?.pid ?? 0, rss: w?.rss ?? 0, heapTotal: w?.heapTotal ?? 0, heapUsed: w?.heapUsed ?? 0,
                                inFlight: w?.inFlight ?? 0, completed: s.completedBefore + (w?.completed ?? 0),
                                restarts: s.restarts, lastExit: s.lastExit, state: w?.lifecycle.publicState ?? .down)
        }
    }

    func status() -> PoolStatus {
        let bounds = scalingBounds
        return PoolStatus(queued: table.queuedCount, pending: table.pendingCount, workers: activeCount,
                          ready: slots.reduce(0) { $0 + ($1.process?.lifecycle.acceptsWork == true ? 1 : 0) },
                          isShutDown: phase != .idle && phase != .running,
                          minimumWorkers: bounds.minimum, maximumWorkers: bounds.maximum)
    }

    // MARK: Events to workers

    /// Sends a custom event to the worker `pid` (or, with `nil`, to the least-loaded ready
    /// worker); `reply` gets the worker's reply, or an error if it exits first.
    func emit(_ name: String, _ data: [UInt8], to pid: pid_t?, reply: ReplyHandler?, ticket: ReplyTicket? = nil) {
        defer { deliver() }
        if let ticket, ticket.cancelled, let reply {
            return outbox.push(.reply(reply, .failure(SupervisorError(.cancelled, "the event was cancelled before it was sent"))))
        }
        let target: WorkerProcess?
        if let pid {
            target = slots.lazy.compactMap(\.process).first { $0.pid == pid && $0.lifecycle.isServing }
        } else {
            target = pickWorker().flatMap { slots[$0].process }
        }
        guard let w = target, phase == .running else {
            if let reply {
                outbox.push(.reply(reply, .failure(SupervisorError(
                    .noWorkers, pid.map { "no running worker with pid \($0)" } ?? "no ready worker to send the event to"))))
            }
            return
        }
        var id: UInt64 = 0
        if let reply {
            nextEventID &+= 1
            id = nextEventID
            pendingReplies[id] = (w.pid, reply)
            ticket?.eventID = id
        }
        w.channel.send(.event, id: id, payload: EventPayload.encode(name: name, data: data))
    }

    /// Sends an event to every worker; with `descriptor`, each gets its own copy of it (a
    /// listening socket, say) and the supervisor's copy is closed.
    func broadcast(_ name: String, _ data: [UInt8], descriptor: CInt = -1) {
        let body = EventPayload.encode(name: name, data: data)
        for s in slots {
            guard let w = s.process, w.lifecycle.isServing else { continue }
            guard descriptor >= 0 else {
                w.channel.send(.broadcast, id: 0, payload: body)
                continue
            }
            do {
                w.channel.send(.broadcast, id: 0, passing: try Sys.duplicate(descriptor).release(), payload: body)
            } catch {
                emit(.broadcastFailed(slot: s.process?.slot ?? 0, pid: w.pid, reason: "could not copy the descriptor: \(error)"))
            }
        }
        if descriptor >= 0 { FileDescriptor.closeRaw(descriptor) }
        deliver()
    }
}
