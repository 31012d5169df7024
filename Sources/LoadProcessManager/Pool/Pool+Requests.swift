import Glibc
import LPMReactor
import LPMWire

extension Pool {
    // MARK: Admission

    /// Takes a request, or refuses it at once (the refusal is delivered like any answer, never
    /// by recursion). A descriptor not handed on is closed here, on every refusal.
    /// - Returns: where the request was admitted (`index` is `UInt32.max` when it was refused),
    ///   for a later cancellation.
    ///   `submission` is its number if it came through the inbox (0: it did not).
    @discardableResult
    func enqueue(_ payload: consuming [UInt8], _ options: RequestOptions, _ completion: consuming Completion,
                 descriptor: CInt = -1, isStream: Bool = false, isBatch: Bool = false,
                 submission: UInt64 = 0) -> (index: UInt32, id: RequestID) {
        defer { deliver() }
        if let refusal = refusal(payloadCount: payload.count, options) {
            if descriptor >= 0 { FileDescriptor.closeRaw(descriptor) }
            if submission != 0 { noteSubmission(submission, at: .max) }
            metrics?.refused(refusal.code)
            answer(completion, .failure(refusal))
            return (.max, .zero)
        }
        let id = ids.nextID()
        let index = table.admit(.init(payload: payload, id: id, createdAt: UInt64(reactor.iterationNanoseconds),
                                      maxAttempts: 1 + max(0, options.retries ?? config.retries),
                                      timeout: options.timeout ?? config.requestTimeout, descriptor: descriptor,
                                      isStream: isStream, isBatch: isBatch, submission: submission),
                                completion: completion)
        if submission != 0 { noteSubmission(submission, at: index) }
        metrics?.admitted(self)
        // After every pump, either the queue is empty or no worker can take its first request
        // (and whatever frees a worker pumps again): a request queued behind others changes
        // nothing, only one that finds the queue empty may be dispatched now.
        if phase == .running && table.queuedCount == 1 { pump() }
        return (index, id)
    }

    private func noteSubmission(_ number: UInt64, at index: UInt32) {
        submissions.admitted(number, at: index, pendingCount: table.pendingCount) { table.isSubmission($0, $1) }
    }

    /// Why a request cannot be taken now, if it cannot.
    private func refusal(payloadCount: Int, _ options: RequestOptions) -> SupervisorError? {
        switch phase {
        case .softKilling, .hardKilling, .stopped:
            return SupervisorError(.shutDown, "the pool is shutting down or stopped; no new requests")
        case .idle, .running:
            break
        }
        if let timeout = options.timeout, timeout < .zero {
            return SupervisorError(.invalidArgument, "the request timeout must not be negative, got \(timeout)")
        }
        if let retries = options.retries, retries < 0 {
            return SupervisorError(.invalidArgument, "retries must not be negative, got \(retries)")
        }
        if payloadCount + RequestHead.size > config.maxPayload {
            return SupervisorError(.payloadTooLarge, "payload of \(payloadCount) bytes exceeds maxPayload (\(config.maxPayload), less the \(RequestHead.size)-byte request head)")
        }
        if phase == .running && !hasActiveProcess && !hasLiveWorker {
            return SupervisorError(.noWorkers, activeCount == 0 && !slots.contains { $0.membership == .down }
                                   ? "the pool was resized to 0 workers" : "no worker is left: the restart budget is spent")
        }
        // At the limit, a request that a worker takes at once does not wait in the queue: a limit
        // of 0 means "never queue", not "refuse everything".
        if let limit = config.maxQueueLength, table.queuedCount >= limit,
           !(table.queuedCount == 0 && phase == .running && pickWorker() != nil) {
            return SupervisorError(.queueFull, "the queue holds \(table.queuedCount) requests, its limit")
        }
        return nil
    }

    /// Whether an active slot has a process: the common case of ``hasLiveWorker``, checked for
    /// every request with no copy of a slot (and so no retain of its process).
    private var hasActiveProcess: Bool {
        slots.withUnsafeBufferPointer { s in
            s.indices.contains { s[$0].membership == .active && (s.baseAddress! + $0).pointee.process != nil }
        }
    }

    // MARK: Dispatch

    /// Hands queued requests to workers while some worker can take one.
    func pump() {
        if table.queuedCount > 0 { dispatchQueued() }
        if phase == .softKilling { advanceSoftKill() }
    }

    /// The dispatch loop. What the policy weighs is read from the slots once, into a small
    /// array on the stack, and kept up to date as requests go out (a dispatch changes only the
    /// load, and the sockets, of the worker it chose): each pick then reads plain values, with no
    /// reference counted object touched, and the pick that ends the loop costs as little.
    private func dispatchQueued() {
        let live = slots  // one retain for the whole loop; nothing in it changes the slots
        let n = live.count
        guard n > 0 else {
            failUnservableBatches()
            if idleRetired > 0 { growBackForLoad() }
            return
        }
        live.withUnsafeBufferPointer { s in
            withUnsafeTemporaryAllocation(of: DispatchPolicy.Candidate.self, capacity: n) { c in
                for i in 0..<n { c.initializeElement(at: i, to: candidate(s, i)) }
                defer { _ = c.deinitialize() }
                while let next = table.firstQueued {
                    let isBatch = table.isBatch(next), forSocket = table.carriesSocket(next)
                    guard let slot = policy.pick(count: n, forSocket: forSocket, { i in
                              isBatch && !c[i].takesBatches ? .ineligible : c[i]
                          }),
                          let index = table.dispatchFirst(to: slot) else {
                        if isBatch && !batchesCanBeServed {
                            failUnservable(next)
                            continue
                        }
                        if idleRetired > 0 { growBackForLoad() }
                        return
                    }
                    c[slot].load += 1
                    if forSocket { c[slot].sockets += 1 }
                    process(s, slot)!._withUnsafeGuaranteedRef { send(index, to: $0) }
                }
            }
        }
    }

    /// Batches queued while the pool has no slot at all cannot wait for a worker that takes them.
    private func failUnservableBatches() {
        while let next = table.firstQueued, table.isBatch(next), !batchesCanBeServed { failUnservable(next) }
    }

    /// A batch no worker can take (only after a reload to an executable that takes none): failed,
    /// so that it does not block the queue.
    private func failUnservable(_ batch: UInt32) {
        fail(batch, .noWorkers, "no worker takes batched requests (their ready frames announce no batch capability)")
    }

    /// The process of slot `i`, not retained: valid while the slots array `s` is held.
    @inline(__always)
    private func process(_ s: UnsafeBufferPointer<WorkerSlot>, _ i: Int) -> Unmanaged<WorkerProcess>? {
        UnsafeRawPointer((s.baseAddress! + i).pointer(to: \.process)!).load(as: Unmanaged<WorkerProcess>?.self)
    }

    /// What the dispatch policy weighs of slot `i`.
    @inline(__always)
    private func candidate(_ s: UnsafeBufferPointer<WorkerSlot>, _ i: Int) -> DispatchPolicy.Candidate {
        guard s[i].membership == .active, let process = process(s, i) else { return .ineligible }
        return process._withUnsafeGuaranteedRef { w in
            guard w.lifecycle.acceptsWork, !w.exitSeen else { return .ineligible }
            return .init(eligible: true, load: w.load, rss: w.rss, sockets: w.sockets,
                         takesBatches: w.capabilities.takesBatches)
        }
    }

    /// The slot the dispatch policy picks among the ready workers of the pool.
    func pickWorker(forSocket: Bool = false, forBatch: Bool = false) -> Int? {
        slots.withUnsafeBufferPointer { s in
            policy.pick(count: s.count, forSocket: forSocket) { i in
                // The process borrowed from its slot, not retained: the slots do not change
                // during the pick.
                let c = candidate(s, i)
                return forBatch && !c.takesBatches ? .ineligible : c
            }
        }
    }

    private func send(_ index: UInt32, to w: WorkerProcess) {
        w.inFlight += 1
        metrics?.dispatched(index, self)
        let head = RequestHead(id: table[index].id, createdAt: table[index].createdAt)
        let wireID = table.wireID(index)
        let descriptor = table[index].descriptor
        if descriptor >= 0 {
            // The descriptor travels with the frame and the channel closes our copy once sent.
            let isStream = table[index].isStream
            var body: [UInt8] = []
            body.reserveCapacity(RequestHead.size + table[index].payload.count)
            head.encode(into: &body)
            body.append(contentsOf: table[index].payload)
            w.channel.send(.request, id: wireID, flags: isStream ? .stream : [], passing: descriptor, payload: body)
            table.descriptorSent(index)
            if !isStream { w.sockets += 1 }
        } else {
            w.channel.send(.request, id: wireID, flags: table[index].isBatch ? .batch : [], head: head,
                           payload: table[index].payload)
        }
        if let timeout = table[index].timeout {
            let generation = UInt32(truncatingIfNeeded: wireID >> 32), attempt = Int(table[index].attempts)
            do {
                table.setTimer(index, try reactor.schedule(after: timeout) { [unowned self] in
                    self.timedOut(index, generation: generation, attempt: attempt)
                    self.deliver()
                })
            } catch {
                // Validated at admission (not negative): a reactor that cannot schedule is closed.
                attemptFailed(index, on: w, .shutDown, "could not arm the request's timeout: \(error)")
            }
        }
    }

    private func timedOut(_ index: UInt32, generation: UInt32, attempt: Int) {
        guard table.isCurrent(index, generation: generation, attempt: attempt) else { return }
        table.setTimer(index, nil)  // it fired
        // In flight on its slot's current process: a process that exits takes its requests with it.
        let w = slots[table[index].worker].process
        w?.channel.send(.cancel, id: table.wireID(index))
        let timeout = table[index].timeout ?? .zero
        metrics?.timedOut()
        attemptFailed(index, on: w, .timedOut, "timed out after \(timeout)")
        if config.recycleAfterTimeout, let w { recycle(slot: w.slot, reason: "a request timed out after \(timeout)") }
        pump()
    }

    // MARK: Finishing

    /// An attempt on `w` failed: retried while attempts are left and the pool runs, else
    /// failed with `code`, saying why and after how many attempts.
    func attemptFailed(_ index: UInt32, on w: WorkerProcess?, _ code: SupervisorError.Code, _ why: String,
                       exitStatus: Reactor.ExitStatus? = nil, retry: Bool = true) {
        let pid = w?.pid
        w?.inFlight -= 1
        switch table.attemptFailed(index, retryAllowed: retry && phase == .running) {
        case .retried(let timer)?:
            if let timer { reactor.cancel(timer) }
            metrics?.retried(index, self)
        case .finished(let f)?:
            release(f)
            metrics?.finished(f, code, self)
            let subject = pid.map { "worker \($0): request \(f.id)" } ?? "request \(f.id)"
            answer(f.completion, .failure(SupervisorError(
                code, "\(subject) \(why) (attempt \(f.attempts) of \(f.maxAttempts))",
                requestID: f.id, workerPID: pid, exitStatus: exitStatus, attempts: f.attempts)))
        case nil:
            break
        }
    }

    /// Fails a pending request with `code`, whatever its attempts.
    func fail(_ index: UInt32, _ code: SupervisorError.Code, _ message: String) {
        if table[index].worker >= 0 { slots[table[index].worker].process?.inFlight -= 1 }
        guard let f = table.finish(index) else { return }
        release(f)
        metrics?.finished(f, code, self)
        answer(f.completion, .failure(SupervisorError(code, message, requestID: f.id, attempts: f.attempts)))
    }

    /// Releases what a finished request still held: its timer, its descriptor.
    func release(_ f: RequestTable<Completion>.Finished) {
        if let timer = f.timer { reactor.cancel(timer) }
        if f.descriptor >= 0 { FileDescriptor.closeRaw(f.descriptor) }
    }
}
