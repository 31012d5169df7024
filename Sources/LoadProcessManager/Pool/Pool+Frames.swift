import Glibc
import LPMReactor
import LPMWire

extension Pool {
    /// A frame from worker `w`. Anything a worker may not send, or sends malformed, is a
    /// protocol violation: the worker is killed, its requests retried or failed on its exit.
    func frame(_ w: WorkerProcess, _ h: FrameHeader, _ payload: UnsafeRawBufferPointer) {
        switch h.type {
        case .response, .ack, .error:
            answered(w, h, payload)
        case .ready:
            w.capabilities = WorkerCapabilities.decode(payload)
            apply(w.lifecycle.handle(.readyFrame), to: w)
        case .busy:
            _ = w.lifecycle.handle(.busyFrame)
            metrics?.workersChanged(self)
        case .event:
            guard withinEventRate(w) else { return }
            guard let (name, data) = EventPayload.decode(payload) else {
                return violation(w, "malformed event frame: the name runs past the payload")
            }
            outbox.push(.workerEvent(workerEvent(name: name, data: data, replyID: h.id, from: w)))
        case .healthReport:
            guard let report = HealthReport.decode(payload) else {
                return violation(w, "health report shorter than \(HealthReport.size) bytes")
            }
            (w.heapTotal, w.heapUsed) = (report.heapTotal, report.heapUsed)
        case .ping:
            w.channel.send(.pong, id: h.id)
        case .pong:
            if h.id == w.pingOutstanding { w.pingOutstanding = 0 }
        case .eventReply:
            guard withinEventRate(w) else { return }
            guard let entry = pendingReplies[h.id], entry.pid == w.pid else { return }
            pendingReplies[h.id] = nil
            outbox.push(.reply(entry.handler, .success(Array(payload))))
        case .socketClosed:
            if w.sockets > 0 { w.sockets -= 1 }
            pump()
        case .streamEnd:
            guard let end = StreamEnd.decode(payload) else {
                return violation(w, "streamEnd shorter than \(StreamEnd.size) bytes")
            }
            guard let core = w.streams.removeValue(forKey: h.id) else { return }
            core.markEnd(count: Int(truncatingIfNeeded: end.count), ok: end.ok)
            pump()
        case .request, .broadcast, .healthRequest, .softKill, .hardKill, .cancel, .rings:
            violation(w, "a worker may not send \(h.type) frames")
        }
    }

    /// Counts an event from `w` against ``SupervisorConfiguration/maxEventsPerSecondPerWorker``;
    /// past it, the worker is a violation (and `false` is returned).
    private func withinEventRate(_ w: WorkerProcess) -> Bool {
        guard let limit = config.maxEventsPerSecondPerWorker else { return true }
        let now = reactor.iterationNanoseconds
        if now &- w.eventWindowStart >= 1_000_000_000 {
            w.eventWindowStart = now
            w.eventsInWindow = 0
        }
        w.eventsInWindow += 1
        guard w.eventsInWindow > limit else { return true }
        violation(w, "sent more than \(limit) events in one second (maxEventsPerSecondPerWorker)")
        return false
    }

    /// A response, an acknowledgement or an error for a request.
    private func answered(_ w: WorkerProcess, _ h: FrameHeader, _ payload: UnsafeRawBufferPointer) {
        let index: UInt32
        switch table.lookup(wireID: h.id, from: w.slot) {
        case .pending(let i): index = i
        case .late: return  // timed out, retried elsewhere, or finished: dropped
        case .unknown: return violation(w, "answered request \(h.id), which was never sent")
        case .elsewhere: return violation(w, "answered request \(h.id), which is not on this worker")
        }
        var stream: ResponseStream?
        if h.flags.contains(.stream) {
            guard h.type == .response, let fd = w.channel.takeDescriptor() else {
                return violation(w, "a streamed response without its descriptor")
            }
            let core = ResponseStreamCore(fd: fd, reactor: reactor, workerPID: w.pid, requestID: table[index].id)
            w.streams[h.id] = core
            let key = ObjectIdentifier(core)
            openStreams[key] = core
            core.onFinished = { [weak self] in
                guard let self else { return }
                self.openStreams[key] = nil
                // A soft kill may have been waiting for this stream: see, once whatever is
                // finishing it (an exit, a job) is done.
                if self.phase == .softKilling && self.openStreams.isEmpty {
                    self.reactor.execute { [weak self] _ in
                        self?.finishKillIfDone()
                        self?.deliver()
                    }
                }
            }
            stream = ResponseStream(core: core, reactor: reactor.handle)
        } else if h.flags.contains(.descriptor) {
            if let fd = w.channel.takeDescriptor() { FileDescriptor.closeRaw(fd) }
            return violation(w, "a response may carry a descriptor only as a stream")
        }
        // The answer's bytes as kept for the caller: lent from the receive buffer, or a copy of a
        // ring record (which the worker can still write): a batch is checked on the bytes its
        // reader walks later, not on the shared ones.
        let kept = h.type == .error ? nil : w.channel.keep(payload)
        if table[index].isBatch && h.type == .response {
            // One answer per item, in a well-formed batch, or the worker broke the protocol.
            let expected = table[index].payload.withUnsafeBytes { $0.readLittleEndian(at: 0, as: UInt32.self) }
            guard h.flags.contains(.batch), let n = Batch.answerCount(kept!.bytes), n == Int(expected) else {
                return violation(w, "malformed answer to batched request \(h.id) (\(expected) items)")
            }
        }
        w.inFlight -= 1
        w.completed += 1
        guard let f = table.finish(index) else { return }
        if w.recycleAfter != nil { recycleIfDue(w) }
        release(f)
        metrics?.answered(index, f, error: h.type == .error, self)
        // The pool is consistent here (the request is finished, its worker's counts updated):
        // the answer may go out at once. Dispatching more comes after.
        // The finished request consumed: its completion moves to the caller, with no copy.
        let id = f.id, createdAt = f.createdAt, attempts = f.attempts
        if h.type == .error {
            answerNow((consume f).completion, .failure(SupervisorError(.workerError, String(decoding: payload, as: UTF8.self),
                                                                       requestID: id, workerPID: w.pid, attempts: attempts)))
        } else {
            answerNow((consume f).completion, .success(WorkerResponse(bytes: ResponseBytes(storage: kept!.storage, bytes: kept!.bytes),
                                                                      id: id, createdAt: createdAt,
                                                                      stream: stream, workerPID: w.pid, attempts: attempts)))
        }
        pump()
    }

    private func workerEvent(name: String, data: [UInt8], replyID: UInt64, from w: WorkerProcess) -> WorkerEvent {
        let handle = reactor.handle
        // Weak: an event the user keeps must not keep the pool alive (nor close a cycle through
        // a handler that stores the events it gets).
        let box = UnsafeSendableWeakBox(self)
        let pid = w.pid, slot = w.slot
        return WorkerEvent(name: name, data: data, pid: pid, wantsReply: replyID != 0) { reply in
            guard replyID != 0 else { return }
            handle.execute { _ in box.value?.sendReply(slot: slot, pid: pid, id: replyID, data: reply) }
        }
    }

    private func sendReply(slot: Int, pid: pid_t, id: UInt64, data: [UInt8]) {
        guard let w = slots[slot].process, w.pid == pid else { return }
        w.channel.send(.eventReply, id: id, payload: data)
    }

    /// Kills a worker that broke the protocol (once); its requests are retried or failed on exit.
    func violation(_ w: WorkerProcess, _ reason: String) {
        apply(w.lifecycle.handle(.violation(reason)), to: w)
    }

    func channelEnded(_ w: WorkerProcess, _ end: ChannelEnd) {
        switch end {
        case .violation(let v): violation(w, v.reason)
        default: apply(w.lifecycle.handle(.channelClosed), to: w)
        }
    }

    /// Carries out what a worker's lifecycle decided.
    func apply(_ action: WorkerLifecycle.Action, to w: WorkerProcess) {
        metrics?.workersChanged(self)
        switch action {
        case .none, .reap:
            break
        case .becameReady:
            checkOnline()
            advanceReload()
            pump()
        case .sendSoftKill:
            w.channel.send(.softKill)
        case .killProcess:
            killProcess(w)
        case .reportViolationAndKill(let reason):
            emit(.protocolViolation(slot: w.slot, pid: w.pid, reason: reason))
            killProcess(w)
        case .reportUnresponsiveAndKill(let reason):
            emit(.workerUnresponsive(slot: w.slot, pid: w.pid, reason: reason))
            killProcess(w)
        }
    }

    /// SIGKILL through the pidfd; the exit arrives through the pidfd. The channel stays open
    /// until then: answers the worker sent before the signal landed are still read and
    /// delivered (its exit reads the rest), so that a request it answered is neither retried
    /// nor failed. Closed at once for a worker that broke the protocol (nothing more from it is
    /// trusted) and in a hard kill (every request fails with `shutDown` anyway).
    private func killProcess(_ w: WorkerProcess) {
        if let watch = w.watch {
            // Fails only for a process already reaped (ESRCH): then it is gone anyway.
            try? reactor.signalChild(watch, SIGKILL)
        }
        if case .stopping(.violation) = w.lifecycle { return w.channel.close() }
        if phase == .hardKilling || w.watch == nil { w.channel.close() }
    }
}

/// ``UnsafeSendableBox``, holding its object weakly.
struct UnsafeSendableWeakBox<T: AnyObject>: @unchecked Sendable {
    weak var value: T?
    init(_ v: T) { value = v }
}

/// Carries a reactor-thread object through `Sendable` plumbing back to the reactor thread.
/// `@unchecked Sendable`: `value` is only dereferenced inside jobs run on the reactor thread.
struct UnsafeSendableBox<T: AnyObject>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}
