@testable import LoadProcessManager
import LPMWire
import Testing

// The supervisor's pure parts, as plain logic: no process, no descriptor, no clock.

private func admission<C>(_ attempts: Int = 1, descriptor: CInt = -1, isStream: Bool = false) -> RequestTable<C>.Admission {
    .init(payload: [1, 2, 3], id: .zero, createdAt: 0, maxAttempts: attempts, timeout: nil, descriptor: descriptor, isStream: isStream)
}

@Suite("Request table")
struct RequestTableTests {
    @Test("admit, dispatch, answer: the completion comes out once and the entry is reused")
    func happyPath() {
        var t = RequestTable<String>()
        let a = t.admit(admission(), completion: "a")
        #expect(t.pendingCount == 1 && t.queuedCount == 1)
        #expect(t.dispatchFirst(to: 0) == a)
        #expect(t.queuedCount == 0 && t[a].attempts == 1 && t[a].worker == 0)
        let wire = t.wireID(a)
        #expect(t.lookup(wireID: wire, from: 0) == .pending(a))
        #expect(t.lookup(wireID: wire, from: 1) == .elsewhere)
        #expect(t.finish(a)?.completion == "a")
        #expect(t.finish(a) == nil, "a second finish answers nothing")
        #expect(t.pendingCount == 0)
        #expect(t.lookup(wireID: wire, from: 0) == .late, "an answer after the end is late")
        let b = t.admit(admission(), completion: "b")
        #expect(b == a, "the entry is reused")
        #expect(t.wireID(b) != wire, "under a new generation")
        #expect(t.lookup(wireID: 99, from: 0) == .unknown)
    }

    @Test("a failed attempt is retried at the front while attempts are left, then finished")
    func retries() {
        var t = RequestTable<String>()
        let a = t.admit(admission(2), completion: "a")
        let b = t.admit(admission(), completion: "b")
        _ = t.dispatchFirst(to: 0)
        let first = t.wireID(a)
        guard case .retried? = t.attemptFailed(a, retryAllowed: true) else { Issue.record("not retried"); return }
        #expect(t.firstQueued == a, "retried at the front, before b")
        #expect(t.lookup(wireID: first, from: 0) == .late, "the failed attempt's answer is dropped")
        #expect(t.dispatchFirst(to: 1) == a && t[a].attempts == 2)
        guard case .finished(let f)? = t.attemptFailed(a, retryAllowed: true) else { Issue.record("not finished"); return }
        #expect(f.completion == "a" && f.attempts == 2 && f.maxAttempts == 2)
        #expect(t.attemptFailed(a, retryAllowed: true) == nil, "nothing is answered twice")
        #expect(t.firstQueued == b && t.pendingCount == 1)
    }

    @Test("no retry when retrying is not allowed (the pool is stopping)")
    func noRetryWhenStopping() {
        var t = RequestTable<String>()
        let a = t.admit(admission(5), completion: "a")
        _ = t.dispatchFirst(to: 0)
        guard case .finished(let f)? = t.attemptFailed(a, retryAllowed: false) else { Issue.record("not finished"); return }
        #expect(f.attempts == 1)
    }

    @Test("a request with a descriptor gets one attempt; the descriptor is handed back until sent")
    func descriptors() {
        var t = RequestTable<String>()
        let a = t.admit(admission(3, descriptor: 42), completion: "a")
        #expect(t.carriesSocket(a) == true)
        _ = t.dispatchFirst(to: 0)
        #expect(t[a].maxAttempts == 1)
        t.descriptorSent(a)
        guard case .finished(let f)? = t.attemptFailed(a, retryAllowed: true) else { Issue.record("not finished"); return }
        #expect(f.descriptor == -1, "sent: no longer ours to close")
        let s = t.admit(admission(descriptor: 7, isStream: true), completion: "s")
        #expect(t.carriesSocket(s) == false, "a stream is not a socket")
        #expect(t.finish(s)?.descriptor == 7, "never sent: the pool must close it")
    }

    @Test("a timer of an earlier attempt is stale")
    func staleTimers() {
        var t = RequestTable<String>()
        let a = t.admit(admission(2), completion: "a")
        _ = t.dispatchFirst(to: 0)
        let generation = UInt32(truncatingIfNeeded: t.wireID(a) >> 32)
        #expect(t.isCurrent(a, generation: generation, attempt: 1) == true)
        _ = t.attemptFailed(a, retryAllowed: true)
        #expect(t.isCurrent(a, generation: generation, attempt: 1) == false)
    }

    @Test("after a burst the table gives its memory back; late answers to the old entries stay late")
    func shrinksWhenIdle() {
        var t = RequestTable<Int>()
        let n = RequestTable<Int>.keptWhenIdle + 100
        var wires: [UInt64] = []
        for k in 0..<n {
            let i = t.admit(admission(), completion: k)
            _ = t.dispatchFirst(to: 0)
            wires.append(t.wireID(i))
        }
        #expect(t.entryCount == n)
        for w in wires.dropLast() { _ = t.finish(UInt32(truncatingIfNeeded: w)) }
        let whilePending = t.shrinkIfIdle()
        #expect(!whilePending && t.entryCount == n, "kept while a request is pending")
        _ = t.finish(UInt32(truncatingIfNeeded: wires.last!))
        #expect(t.pendingCount == 0 && t.entryCount == n, "kept when it empties: the next batch of a burst reuses it")
        let idle = t.shrinkIfIdle()
        #expect(idle && t.entryCount == 0, "given back when asked, idle")
        let again = t.shrinkIfIdle()
        #expect(!again, "nothing more to give back")
        #expect(wires.allSatisfy { t.lookup(wireID: $0, from: 0) == .late })
        let fresh = t.admit(admission(), completion: -1)
        _ = t.dispatchFirst(to: 0)
        #expect(!wires.contains(t.wireID(fresh)), "a new request never matches an old answer")
        #expect(t.lookup(wireID: UInt64(n + 10), from: 0) == .unknown, "past the high-water mark: never sent")
    }

    @Test("the queue keeps its order through cancellations, retries to the front and take-outs (against a plain array)")
    func queueOrderAgainstModel() {
        var t = RequestTable<Int>()
        var rng = SystemRandomNumberGenerator()
        var model: [UInt32] = []       // the queue, front first
        var inFlight: [UInt32] = []
        var detached: [UInt32] = []    // taken out by takeQueued, still pending
        for step in 0..<20_000 {
            switch Int.random(in: 0..<10, using: &rng) {
            case 0, 1, 2:
                model.append(t.admit(admission(3), completion: step))
            case 3, 4:
                let i = t.dispatchFirst(to: 0)
                #expect(i == model.first)
                if let i { model.removeFirst(); inFlight.append(i) }
            case 5:
                // Cancel a queued request anywhere in the queue: front, middle or back.
                guard !model.isEmpty else { continue }
                let k = Int.random(in: 0..<model.count, using: &rng)
                #expect(t.finish(model.remove(at: k)) != nil)
            case 6:
                guard !inFlight.isEmpty else { continue }
                let i = inFlight.remove(at: Int.random(in: 0..<inFlight.count, using: &rng))
                switch t.attemptFailed(i, retryAllowed: true) {
                case .retried?: model.insert(i, at: 0)
                case .finished?: break
                case nil: Issue.record("an in-flight request was not pending")
                }
            case 7:
                guard !inFlight.isEmpty else { continue }
                #expect(t.finish(inFlight.removeLast()) != nil)
            case 8:
                if Int.random(in: 0..<50, using: &rng) == 0 {
                    let taken = t.takeQueued()
                    #expect(taken == model)
                    detached += taken
                    model = []
                }
            default:
                if let i = detached.popLast() { #expect(t.finish(i) != nil) }
            }
            #expect(t.listedInOrder == model)
            #expect(t.queuedCount == model.count + detached.count)
            #expect(t.pendingCount == model.count + inFlight.count + detached.count)
        }
    }

    @Test("exactly once under every path: 10,000 random operations answer each request once")
    func exactlyOnce() {
        var t = RequestTable<Int>()
        var rng = SystemRandomNumberGenerator()
        var answered = Set<Int>()
        var admitted = 0
        var inFlight: [UInt32] = []
        func record(_ n: Int) { #expect(answered.insert(n).inserted, "request \(n) answered twice") }
        for _ in 0..<10_000 {
            switch Int.random(in: 0..<6, using: &rng) {
            case 0, 1:
                t.admit(admission(Int.random(in: 1...3, using: &rng)), completion: admitted)
                admitted += 1
            case 2:
                if let i = t.dispatchFirst(to: Int.random(in: 0..<3, using: &rng)) { inFlight.append(i) }
            case 3:
                if let k = inFlight.indices.randomElement(using: &rng) {
                    if let f = t.finish(inFlight.remove(at: k)) { record(f.completion) }
                }
            case 4:
                if let k = inFlight.indices.randomElement(using: &rng) {
                    if case .finished(let f)? = t.attemptFailed(inFlight.remove(at: k), retryAllowed: Bool.random(using: &rng)) {
                        record(f.completion)
                    }
                }
            default:
                if Int.random(in: 0..<50, using: &rng) == 0 {
                    for i in t.takeAll() { if let f = t.finish(i) { record(f.completion) } }
                    inFlight.removeAll()
                }
            }
        }
        for i in t.takeAll() { if let f = t.finish(i) { record(f.completion) } }
        #expect(answered.count == admitted && t.pendingCount == 0)
    }
}

@Suite("Worker lifecycle")
struct WorkerLifecycleTests {
    typealias L = WorkerLifecycle

    @Test("transition table", arguments: [
        (L.starting, L.Event.readyFrame, L.ready, L.Action.becameReady),
        (.starting, .busyFrame, .busy(wasReady: false), .none),
        (.ready, .busyFrame, .busy(wasReady: true), .none),
        (.busy(wasReady: false), .readyFrame, .ready, .becameReady),
        (.ready, .drain, .draining(wasReady: true), .sendSoftKill),
        (.busy(wasReady: true), .drain, .draining(wasReady: true), .sendSoftKill),
        (.draining(wasReady: true), .drain, .draining(wasReady: true), .none),
        (.draining(wasReady: true), .readyFrame, .draining(wasReady: true), .none),
        (.ready, .kill, .stopping(.requested), .killProcess),
        (.stopping(.requested), .kill, .stopping(.requested), .none),
        (.ready, .violation("x"), .stopping(.violation("x")), .reportViolationAndKill("x")),
        (.draining(wasReady: true), .violation("x"), .stopping(.violation("x")), .reportViolationAndKill("x")),
        (.stopping(.violation("x")), .violation("y"), .stopping(.violation("x")), .none),
        (.ready, .channelClosed, .stopping(.channelClosed), .killProcess),
        (.draining(wasReady: false), .channelClosed, .draining(wasReady: false), .none),
        (.starting, .exited, .exited(.crashed), .reap(.crashed)),
        (.ready, .exited, .exited(.crashed), .reap(.crashed)),
        (.draining(wasReady: true), .exited, .exited(.expected), .reap(.expected)),
        (.stopping(.requested), .exited, .exited(.expected), .reap(.expected)),
        (.stopping(.channelClosed), .exited, .exited(.crashed), .reap(.crashed)),
        (.stopping(.violation("x")), .exited, .exited(.violation("x")), .reap(.violation("x"))),
        (.exited(.crashed), .readyFrame, .exited(.crashed), .none),
        (.exited(.crashed), .exited, .exited(.crashed), .none),
    ] as [(L, L.Event, L, L.Action)])
    func transition(from: L, event: L.Event, to: L, action: L.Action) {
        var l = from
        #expect(l.handle(event) == action)
        #expect(l == to)
    }

    @Test("only a ready worker takes work; online needs each to have been ready")
    func predicates() {
        let ready = L.ready, busy = L.busy(wasReady: true), busyFirst = L.busy(wasReady: false)
        #expect(ready.acceptsWork)
        #expect(!busy.acceptsWork)
        #expect(!L.starting.acceptsWork)
        #expect(busy.hasBeenReady)
        #expect(!busyFirst.hasBeenReady)
        #expect(busyFirst.isServing)
        #expect(!L.draining(wasReady: true).isServing)
        #expect(L.stopping(.requested).publicState == .stopping)
        #expect(L.exited(.expected).publicState == .down)
    }
}

@Suite("Restart budget")
struct RestartBudgetTests {
    @Test("at most `limit` restarts within a sliding window")
    func slidingWindow() {
        var b = RestartBudget(limit: 2, window: .seconds(10))
        let s: Int64 = 1_000_000_000
        let charges = [0, 5, 9, 10, 14, 15].map { b.charge(at: $0 * s) }
        // Two within 10 s, then spent at 9 s; the first leaves the window at 10 s, the second at 15 s.
        #expect(charges == [true, true, false, true, false, true])
        let later = b.used(at: 100 * s)
        #expect(later == 0)
    }

    @Test("a zero budget refuses every restart")
    func zero() {
        var b = RestartBudget(limit: 0, window: .seconds(1))
        let charged = b.charge(at: 0)
        #expect(!charged)
    }
}

@Suite("Dispatch policy")
struct DispatchPolicyTests {
    typealias C = DispatchPolicy.Candidate

    @Test("fewest in flight first, then lowest RSS; full or ineligible workers are skipped")
    func leastLoaded() {
        var p = DispatchPolicy(capacity: 4)
        let workers = [C(eligible: true, load: 3, rss: 1, sockets: 0), C(eligible: true, load: 1, rss: 9, sockets: 0),
                       C(eligible: true, load: 1, rss: 5, sockets: 0), C(eligible: false, load: 0, rss: 0, sockets: 0),
                       C(eligible: true, load: 4, rss: 0, sockets: 0)]
        let chosen = p.pick(count: workers.count, forSocket: false) { workers[$0] }
        #expect(chosen == 2)
        let full = [C(eligible: true, load: 4, rss: 0, sockets: 0)]
        let none = p.pick(count: 1, forSocket: false) { full[$0] }
        let empty = p.pick(count: 0, forSocket: false) { _ in .ineligible }
        #expect(none == nil && empty == nil)
    }

    @Test("equal workers are taken round robin")
    func roundRobin() {
        var p = DispatchPolicy(capacity: 64)
        let idle = C(eligible: true, load: 0, rss: 0, sockets: 0)
        let picks = (0..<6).map { _ in p.pick(count: 3, forSocket: false) { _ in idle } }
        #expect(picks == [0, 1, 2, 0, 1, 2])
    }

    @Test("a socket goes to the worker holding the fewest sockets")
    func sockets() {
        var p = DispatchPolicy(capacity: 64)
        let workers = [C(eligible: true, load: 0, rss: 0, sockets: 5), C(eligible: true, load: 9, rss: 9, sockets: 1)]
        let forSocket = p.pick(count: 2, forSocket: true) { workers[$0] }
        let forRequest = p.pick(count: 2, forSocket: false) { workers[$0] }
        #expect(forSocket == 1 && forRequest == 0)
    }
}

@Suite("SubmissionIndex: cancellation handles of requests from other threads")
struct SubmissionIndexTests {
    /// A model table: submission number -> (entry, still pending).
    private struct Model {
        var pending: [UInt64: UInt32] = [:]
        func isPending(_ index: UInt32, _ number: UInt64) -> Bool { pending[number] == index }
    }

    @Test("finds admitted requests, not refused or unknown ones; drops answered ones from the front")
    func findsAndDrops() {
        var s = SubmissionIndex()
        var m = Model()
        for n in UInt64(1)...10 {
            let index = n == 4 ? UInt32.max : UInt32(n * 10)
            if index != .max { m.pending[n] = index }
            s.admitted(n, at: index, pendingCount: m.pending.count, isPending: m.isPending)
        }
        #expect(s.find(3) == 30)
        #expect(s.find(4) == nil, "refused")
        #expect(s.find(11) == nil, "not admitted yet")
        for n in UInt64(1)...10 { m.pending[n] = nil }
        m.pending[11] = 110
        s.admitted(11, at: 110, pendingCount: 1, isPending: m.isPending)
        #expect(s.count == 1, "the answered front is dropped")
        #expect(s.find(11) == 110)
        #expect(s.find(3) == nil)
    }

    @Test("a request pending for long is moved aside: the index stays within a bound of the requests pending")
    func boundedWithAStraggler() {
        var s = SubmissionIndex()
        var m = Model()
        m.pending[1] = 7  // never answered
        s.admitted(1, at: 7, pendingCount: 1, isPending: m.isPending)
        for n in UInt64(2)...100_000 {
            m.pending[n] = UInt32(n % 1000 + 10)
            s.admitted(n, at: UInt32(n % 1000 + 10), pendingCount: m.pending.count, isPending: m.isPending)
            m.pending[n] = nil  // answered at once
        }
        #expect(s.count <= SubmissionIndex.ringBound + 2, "the ring does not grow with every later request")
        #expect(s.find(1) == 7, "the straggler is still found")
        #expect(s.find(99_999) == nil || !m.isPending(s.find(99_999)!, 99_999))
    }

    @Test("submissions must come in order")
    func inOrder() async {
        await #expect(processExitsWith: .failure) {
            var s = SubmissionIndex()
            s.admitted(2, at: 0, pendingCount: 1) { _, _ in true }
        }
    }
}

@Suite("BatchReader: a batch's answers, decoded as they are read")
struct BatchReaderTests {
    private func response(_ data: [UInt8]) -> WorkerResponse {
        WorkerResponse(bytes: ResponseBytes(data), id: .zero, createdAt: 0, stream: nil, workerPID: 42, attempts: 1)
    }

    private func answers(_ items: [(Bool, String)], count: UInt32? = nil) -> [UInt8] {
        var out: [UInt8] = []
        out.appendLittleEndian(count ?? UInt32(items.count))
        for (ok, text) in items { Array(text.utf8).withUnsafeBytes { Batch.appendAnswer(ok: ok, $0, into: &out) } }
        return out
    }

    @Test("responses and errors come out in order, one per item, then nil")
    func inOrder() {
        var reader = BatchReader(BatchResults(.success(response(answers([(true, "a"), (false, "no"), (true, "")]))), count: 3))
        #expect(reader.remaining == 3)
        #expect((try? reader.next()?.get())?.text == "a")
        let failed = reader.next()
        #expect(failed?.error?.code == .workerError && failed?.error?.message == "no" && failed?.error?.workerPID == 42)
        #expect((try? reader.next()?.get())?.data == [])
        #expect(reader.next() == nil && reader.remaining == 0)
    }

    @Test("an answer cut short: that item and every one after it get protocolViolation, still one each")
    func malformed() {
        var bytes = answers([(true, "a"), (true, "bcdef")])
        bytes.removeLast(3)  // the second answer runs past the payload
        var reader = BatchReader(BatchResults(.success(response(bytes)), count: 3))
        #expect((try? reader.next()?.get())?.text == "a")
        #expect(reader.next()?.error?.code == .protocolViolation)
        #expect(reader.next()?.error?.code == .protocolViolation)
        #expect(reader.next() == nil)
    }

    @Test("a failed batch gives its error to every item; results of their own come back as they are")
    func failureAndEach() {
        let error = SupervisorError(.timedOut, "timed out")
        #expect(BatchResults(.failure(error), count: 4).all().map { $0.error } == Array(repeating: error, count: 4))
        let each: [Result<WorkerResponse, SupervisorError>] = [.success(response([1])), .failure(error)]
        let back = BatchResults(each).all()
        #expect(back.count == 2 && (try? back[0].get())?.data == [1] && back[1].error == error)
    }
}
