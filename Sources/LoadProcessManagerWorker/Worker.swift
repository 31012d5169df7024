import Glibc
import LPMReactor
import LPMWire

/// A request's identity, a version 4 UUID (``Worker/Request/id``). The same type as
/// `LoadProcessManager.RequestID`: a file that imports both modules sees one `RequestID`.
public typealias RequestID = LPMWire.RequestID

/// The runtime of a worker process: reads requests from the supervisor's channel, runs your
/// handlers, and sends the answers.
///
/// ```swift
/// let worker = Worker.connect()   // or `try Worker()` to handle the error yourself
/// worker.onRequest { request in request.respond(request.data) }
/// worker.ready()
/// worker.run()
/// ```
///
/// Everything runs on one thread, the worker's reactor thread (``reactor``). Call
/// ``Worker/Request/respond(_:)-([UInt8])`` and the other methods from that thread; from another
/// thread, hop with `worker.reactor.handle.execute { _ in ... }`.
///
/// The worker exits cleanly when its channel reaches end of file (the supervisor is gone), and
/// the kernel kills it if the supervisor thread that spawned it dies (`PR_SET_PDEATHSIG`, set by
/// the supervisor at spawn and again here), so it never outlives its parent.
public final class Worker {
    /// The reactor the worker runs on: use it for timers and your own descriptors.
    public let reactor: Reactor
    /// This worker's slot in the supervisor's pool (`LPM_WORKER_SLOT`), from 0: stable across
    /// restarts (a replacement takes the slot of the worker it replaces) and unique among the
    /// workers alive at one time, so it suits per-worker log names, ports and caches. `nil` when
    /// the supervisor did not set it.
    public let slot: Int?
    private let channel: Channel
    /// The largest frame payload (the channel's, read here without a call into LPMWire).
    private let maxPayload: Int
    /// The thread that delivered the last frame: the reactor's. An answer from it needs no
    /// further check (``checkThread()``).
    @exclusivity(unchecked) private var frameThread: pthread_t = 0
    private let flusher: ChannelFlusher
    /// The request handler. Called through ``handlerBox``, whose `let` is borrowed for the call
    /// (a closure stored in a `var` is copied, its context retained, at every call).
    var requestHandler: (Request) -> Void {
        get { handlerBox.call }
        set {
            // A handler replaced during a handler call (its own, maybe) stays alive until the
            // outermost call returns.
            if handlingTop != nil { retiredHandlers.append(handlerBox) }
            handlerBox = RequestHandlerBox(newValue)
        }
    }
    @exclusivity(unchecked) private var handlerBox = RequestHandlerBox { $0.fail("this worker has no request handler") }
    @exclusivity(unchecked) private var retiredHandlers: [RequestHandlerBox] = []
    private var eventHandlers: [String: (Event) -> Void] = [:]
    private var softKillHandler: ((_ done: @escaping () -> Void) -> Void)?
    private var hardKillHandler: (() -> Void)?
    /// The requests in flight whose handler call has returned, each knowing its index here
    /// (``Request/inFlightIndex``): entering and leaving is an append and a swap, no hashing.
    @exclusivity(unchecked) private var inFlight: [Request] = []
    /// The requests whose handler call is under way, innermost first, linked through
    /// ``Request/outer``, and how many of them are still in flight. A request answered during
    /// its call (the common case) never enters ``inFlight``: no retain, no array update.
    @exclusivity(unchecked) private var handlingTop: Unmanaged<Request>?
    @exclusivity(unchecked) private var handlingInFlight = 0
    /// Requests answered during their handler's call and kept by nobody: the next frames reuse
    /// them (and their payload buffers), so a request costs no allocation.
    @exclusivity(unchecked) private var spare: [Request] = []
    private static let spareLimit = 16
    /// The spare taken first and given back first: a request answered during its call comes
    /// back here, so one at a time costs no array operation.
    @exclusivity(unchecked) private var lastSpare: Request?
    /// Runs the tasks of async handlers on this thread (see ``taskExecutor``).
    let executor: WorkerExecutor
    /// Whether the main dispatch queue, the main actor's executor, is served by ``reactor``:
    /// set when the worker runs on the main thread (see `MainQueue.swift`).
    let servesMainActor: Bool
    private var pendingReplies: [UInt64: ([UInt8]) -> Void] = [:]
    private var nextEventID: UInt64 = 0
    @exclusivity(unchecked) private var state: ReadyState = .starting
    @exclusivity(unchecked) private var softKillRequested = false
    private var softKillRunning = false
    @exclusivity(unchecked) private var exiting = false

    private enum ReadyState { case starting, ready, busy }

    /// Connects to the supervisor through the descriptor named by `LPM_CHANNEL_FD`.
    /// - Parameter backend: the reactor backend; epoll first by default (lower latency for a
    ///   worker's lone round trips); `LPM_REACTOR_BACKEND` overrides it.
    /// - Throws: ``WorkerError`` when the process was not started by a supervisor.
    public init(backend: Reactor.BackendChoice = .preferring(.epoll)) throws {
        // A template serves fork orders here, for good; only its forked workers go on.
        if Template.isTemplate { Template.serve() }
        guard let raw = getenv(Wire.channelEnvironmentKey), let fd = CInt(String(cString: raw)), Sys.isValid(fd) else {
            throw WorkerError("this process was not started by a Supervisor (\(Wire.channelEnvironmentKey) is not set to an open descriptor)")
        }
        // Nothing this worker execs inherits its channel: a child holding it would keep the
        // supervisor from seeing end of file when this worker dies. (Inherited across execve, it
        // could not be created CLOEXEC; no other thread of ours exists yet to spawn meanwhile.)
        try Sys.setCloseOnExec(fd)
        let maxPayload = getenv(Wire.maxPayloadEnvironmentKey).flatMap { Int(String(cString: $0)) } ?? Wire.defaultMaxPayload
        guard Wire.maxPayloadRange.contains(maxPayload) else {
            throw WorkerError("\(Wire.maxPayloadEnvironmentKey)=\(maxPayload) is outside \(Wire.maxPayloadRange)")
        }
        slot = getenv("LPM_WORKER_SLOT").flatMap { Int(String(cString: $0)) }
        // The supervisor set this at spawn; set it again for a worker started some other way,
        // then check the parent did not die before the call took effect.
        try Sys.setParentDeathSignal(SIGKILL)
        if let parent = getenv("LPM_PARENT_PID").flatMap({ pid_t(String(cString: $0)) }), getppid() != parent { _exit(0) }
        try Sys.setNonBlocking(fd)
        reactor = try Reactor(backend: backend)
        flusher = ChannelFlusher(reactor: reactor)
        channel = Channel(fd: fd, reactor: reactor, flusher: flusher, maxPayload: maxPayload)
        self.maxPayload = maxPayload
        executor = WorkerExecutor(handle: reactor.handle)
        servesMainActor = MainQueue.attach(to: reactor)
        // Unretained: the channel is this worker's own (only the worker and its flusher hold it,
        // and the reactor's registration holds it unowned), so it delivers frames only while the
        // worker is alive. Through `Unmanaged`, the worker is borrowed for each call; a checked
        // `unowned` costs two atomic operations per frame, and `unowned(unsafe)` still a retain.
        let unmanaged = Unmanaged.passUnretained(self)
        channel.onFrame = { header, payload in unmanaged._withUnsafeGuaranteedRef { $0.frame(header, payload) } }
        channel.acceptsRings = true
        channel.onEnd = { [unowned self] end in
            switch end {
            case .endOfFile: self.exit(code: 0)  // the supervisor is gone
            // A supervisor that closed its end with frames of ours unread resets the connection
            // (ECONNRESET, EPIPE on a write): it is gone all the same.
            case .failed(let e) where e.errnoCode == ECONNRESET || e.errnoCode == EPIPE: self.exit(code: 0)
            case .violation(let v): self.violation(v.reason)
            case .failed, .registrationFailed: self.exit(code: 74)  // EX_IOERR
            }
        }
        try channel.start()
    }

    /// Connects to the supervisor, or prints why it cannot (this process was not started by a
    /// supervisor, say) to standard error and exits with status 64 (`EX_USAGE`).
    public static func connect(backend: Reactor.BackendChoice = .preferring(.epoll)) -> Worker {
        do {
            return try Worker(backend: backend)
        } catch {
            let text = "\(CommandLine.arguments.first ?? "worker"): \(error)\n"
            Sys.writeToStandardError(text)
            _exit(64)
        }
    }

    /// Sets the handler for requests. Runs on the reactor thread for each request; answer with
    /// ``Worker/Request/respond(_:)-([UInt8])``, ``Worker/Request/ack()`` or ``Worker/Request/fail(_:)``, now or later.
    ///
    /// A handler that needs to `await` is an `async` closure, passed to the `async` overload of
    /// `onRequest`: it then runs in a task on the worker's thread.
    public func onRequest(_ handler: @escaping (Request) -> Void) {
        requestHandler = handler
    }

    /// Sets the handler for a custom event or broadcast named `name` from the supervisor.
    public func on(_ name: String, _ handler: @escaping (Event) -> Void) {
        eventHandlers[name] = handler
    }

    /// Sets the soft-kill handler. When the supervisor soft-kills the pool, the handler runs
    /// once no request is in flight; call `done` when finished and the worker exits. Without a
    /// handler the worker exits as soon as it is idle (and not busy).
    public func onSoftKill(_ handler: @escaping (_ done: @escaping () -> Void) -> Void) {
        softKillHandler = handler
    }

    /// Sets the hard-kill handler: runs if the hard-kill notice arrives before the SIGKILL that
    /// follows it. Best effort by nature.
    public func onHardKill(_ handler: @escaping () -> Void) {
        hardKillHandler = handler
    }

    /// Tells the supervisor this worker takes requests. Idempotent: calling it again while
    /// ready sends nothing.
    public func ready() {
        guard state != .ready else { return }
        state = .ready
        // Announces batches (the supervisor's `map` may send several requests in one frame) and
        // rings (a supervisor configured for shared memory hands them over in answer).
        channel.send(.ready, id: 0, length: 4) { WorkerCapabilities([.batches, .rings]).encode(into: &$0) }
        if softKillRequested { maybeFinishSoftKill() }
    }

    /// Tells the supervisor to send no new requests until the next ``ready()``. Requests already
    /// sent may still arrive and should be handled.
    public func busy() {
        guard state != .busy else { return }
        state = .busy
        channel.send(.busy)
    }

    /// Whether shared-memory rings are attached to this worker's channel (the supervisor's
    /// transport is `.sharedMemory` and answered the announcement).
    package var usesRings: Bool { channel.usesRings }

    /// The requests received and not yet answered.
    public func requests() -> [Request] {
        var all = inFlight
        var node = handlingTop
        while let r = node?.takeUnretainedValue() {
            if r.inFlightIndex == Request.handling { all.append(r) }
            node = r.outer
        }
        return all
    }

    /// Every request in flight with this wire id: one, or the items of a batch.
    private func inFlightRequests(_ wireID: UInt64) -> [Request] {
        var found = inFlight.filter { $0.wireID == wireID }
        var node = handlingTop
        while let r = node?.takeUnretainedValue() {
            if r.wireID == wireID && r.inFlightIndex == Request.handling { found.append(r) }
            node = r.outer
        }
        return found
    }

    /// Emits a custom event to the supervisor.
    /// - Parameters:
    ///   - name: the event's name.
    ///   - data: its payload.
    ///   - reply: called with the supervisor's reply, if the supervisor replies.
    public func emit(_ name: String, _ data: [UInt8] = [], reply: (([UInt8]) -> Void)? = nil) {
        var id: UInt64 = 0
        if let reply {
            nextEventID &+= 1
            id = nextEventID
            pendingReplies[id] = reply
        }
        channel.send(.event, id: id, payload: EventPayload.encode(name: name, data: data))
    }

    /// Runs the worker until the supervisor closes the channel or a kill ends it. Never returns.
    ///
    /// When the worker runs on the main thread, the loop also runs the main actor's jobs (the
    /// main dispatch queue), so a `Task {}` started from main-actor code (a `main.swift` worker's
    /// top-level code and its closures) runs on this thread between the loop's events.
    public func run() -> Never {
        while true {
            do { try reactor.run() } catch { exit(code: 70) }
        }
    }

    // MARK: Frames

    private func frame(_ h: FrameHeader, _ payload: UnsafeRawBufferPointer) {
        // Exiting: a last write that found the supervisor gone reads what it sent (the channel
        // delivers a peer's last frames before it ends); nothing of it is run any more.
        if _slowPath(exiting) { return }
        frameThread = pthread_self()
        switch h.type {
        case .request:
            guard let (head, body) = Head.decode(payload) else {
                return violation("request frame shorter than its \(RequestHead.size)-byte head")
            }
            if h.flags.contains(.batch) { return batch(h, head, body) }
            let request = makeRequest(wireID: h.id, head: head, body: body)
            if h.flags.announcesDescriptor {
                guard let fd = channel.takeDescriptor() else { return violation("a request announced a descriptor that did not arrive") }
                if h.flags.contains(.stream) {
                    request.stream = InputStream(reader: StreamReader(fd: fd, reactor: reactor))
                } else {
                    request.socket = fd
                }
            }
            if let done = handle(consume request) { keepSpare(done) }
        case .event, .broadcast:
            guard let (name, data) = EventPayload.decode(payload) else { return violation("malformed event frame") }
            var socket: CInt?
            if h.flags.announcesDescriptor {
                guard let fd = channel.takeDescriptor() else { return violation("an event announced a descriptor that did not arrive") }
                socket = fd
            }
            let event = Event(name: name, data: data, replyID: h.type == .event ? h.id : 0, channel: channel, socket: socket)
            eventHandlers[name]?(event)
        case .eventReply:
            pendingReplies.removeValue(forKey: h.id)?(Array(payload))
        case .healthRequest:
            let heap = Sys.heapFigures()
            let report = HealthReport(heapTotal: heap.total, heapUsed: heap.used)
            channel.send(.healthReport, id: h.id, length: HealthReport.size) { report.encode(into: &$0) }
        case .softKill:
            softKillRequested = true
            maybeFinishSoftKill()
        case .hardKill:
            hardKillHandler?()
            exit(code: 0)
        case .cancel:
            // One request, or every item of a batch still in flight.
            for r in inFlightRequests(h.id) {
                let onCancel = r.onCancel, task = r.task
                leaveFlight(r)
                r.isCancelled = true
                // In flight: its batch is held (by its loop, or by the request).
                r.batchItem?._withUnsafeGuaranteedRef { $0.cancelled = true }
                onCancel?()
                task?.cancel()
            }
            if softKillRequested { maybeFinishSoftKill() }
        case .ping:
            channel.send(.pong, id: h.id)
        case .pong:
            break
        case .ready, .busy, .response, .ack, .error, .healthReport, .socketClosed, .streamEnd, .rings:
            violation("unexpected frame \(h.type) from the supervisor")
        }
    }

    /// Keeps `request` (answered, held by nobody) for a later frame, if there is room.
    @inline(__always)
    private func keepSpare(_ request: consuming Request) {
        if lastSpare == nil {
            lastSpare = consume request
        } else if spare.count < Worker.spareLimit {
            spare.append(consume request)
        }
    }

    /// `current` reused (taken out of it) for the next item of a batch, or a request from
    /// ``makeRequest(wireID:head:body:)``. Returned owned: binding it to a second name in the
    /// caller costs a retain and a release.
    @inline(__always)
    private func nextRequest(reusing current: inout Request?, wireID: UInt64, head: Head,
                             body: UnsafeRawBufferPointer) -> Request {
        guard let reused = current.take() else { return makeRequest(wireID: wireID, head: head, body: body) }
        reused.reuse(wireID: wireID, idWords: head.id, createdAt: head.createdAt, body: body)
        return reused
    }

    /// A request object for a frame: a spare one reused, or a new one.
    @inline(__always)
    private func makeRequest(wireID: UInt64, head: Head, body: UnsafeRawBufferPointer) -> Request {
        if let reused = lastSpare.take() ?? spare.popLast() {
            reused.reuse(wireID: wireID, idWords: head.id, createdAt: head.createdAt, body: body)
            return reused
        }
        return Request(worker: self, wireID: wireID, id: head.requestID, createdAt: head.createdAt, data: Array(body))
    }

    /// Calls the request handler for `request`; keeps it in flight if it is not answered by
    /// the end of the call. Returns it if it was answered during the call and nobody else holds
    /// it (not the handler, a timer, a stream or a task): the next request may reuse it.
    @inline(__always)
    private func handle(_ request: consuming Request) -> Request? {
        request.inFlightIndex = Request.handling
        request.outer = handlingTop
        handlingTop = Unmanaged.passUnretained(request)
        handlingInFlight += 1
        callHandler(request)
        handlingTop = request.outer
        request.outer = nil
        if handlingTop == nil && !retiredHandlers.isEmpty { retiredHandlers.removeAll() }
        if request.inFlightIndex == Request.handling {
            // Not answered yet (or its streamed answer is still being written): in flight
            // until it is.
            handlingInFlight -= 1
            request.inFlightIndex = inFlight.count
            // An item of a batch holds its batch from now on (the batch's loop moves on).
            if let item = request.batchItem { request.batch = item.takeUnretainedValue() }
            inFlight.append(request)
            return nil
        }
        guard isKnownUniquelyReferenced(&request) else { return nil }
        return consume request
    }

    /// Calls the request handler, borrowed (a closure capturing `handle`'s variable would make
    /// its accesses dynamically checked).
    @inline(__always)
    private func callHandler(_ request: Request) {
        Unmanaged.passUnretained(handlerBox)._withUnsafeGuaranteedRef { $0.call(request) }
    }

    /// A batched request: each item goes to the request handler as a request of its own (same
    /// id and wire id as the batch), and their answers go back in one frame, in order.
    private func batch(_ h: FrameHeader, _ head: Head, _ body: UnsafeRawBufferPointer) {
        if h.flags.announcesDescriptor { return violation("a batched request with a descriptor") }
        guard let count = Batch.itemCount(body), count > 0 else {
            return violation("malformed batched request")
        }
        let state = BatchAnswers(wireID: h.id, count: count, bodySize: body.count)
        // One request object goes from item to item while each is answered during its call and
        // kept by nobody: no trip through the spares per item.
        var current: Request?
        // The items walked here, not through `Batch.forEachItem`: its closure is not inlined
        // across the module boundary (a call and a context per item). `itemCount` checked them.
        var offset = 4
        // Items answered during their call reach `state` unretained: it lives until the loop ends.
        withExtendedLifetime(state) {
            for i in 0..<count {
                let n = Int(body.readLittleEndian(at: offset, as: UInt32.self))
                let item = UnsafeRawBufferPointer(rebasing: body[(offset + 4)..<(offset + 4 + n)])
                offset += 4 + n
                let request = nextRequest(reusing: &current, wireID: h.id, head: head, body: item)
                request.batchItem = Unmanaged.passUnretained(state)
                request.batchIndex = i
                // Handed over, not shared: answered during the call, it comes back for the next item.
                current = handle(consume request)
            }
        }
        if let done = current { keepSpare(done) }
    }

    private func violation(_ reason: String) {
        let text = "worker \(getpid()): protocol violation from the supervisor: \(reason)\n"
        Sys.writeToStandardError(text)
        exit(code: 76)
    }

    /// Takes `request` out of the in-flight list (if it is still there) and drops what it no
    /// longer needs: its cancel handler (which may capture it) and its task handle.
    @inline(__always)
    private func leaveFlight(_ request: Request) {
        let i = request.inFlightIndex
        if i >= 0 {
            let last = inFlight.removeLast()
            if last !== request {
                inFlight[i] = last
                last.inFlightIndex = i
            }
        } else if i == Request.handling {
            handlingInFlight -= 1
        } else {
            return
        }
        request.inFlightIndex = Request.notInFlight
        if request.onCancel != nil { request.onCancel = nil }
        if request.task != nil { request.task = nil }
    }

    /// Traps when a request is answered off the worker's thread: its state and the channel
    /// belong to that thread, and a race there would lose or corrupt answers.
    @inline(__always)
    private func checkThread() {
        // The thread that delivers frames is the reactor's: on it, no call into the reactor.
        if _fastPath(pthread_self() == frameThread) { return }
        precondition(reactor.isOnReactorThread, """
            a Worker.Request was answered off the worker's thread; answer on it (an async handler \
            runs there), or hop with worker.reactor.handle.execute { _ in ... }
            """)
    }

    @inline(__always)
    func finish(_ request: Request, _ type: FrameType, _ data: [UInt8]) {
        checkThread()
        guard !request.answered, request.isInFlight else { return }
        request.answered = true
        leaveFlight(request)
        if let item = request.batchItem {
            request.batchItem = nil
            // Held by its loop (answered during its call) or by `request.batch` (after it).
            let held = request.batch.take()
            item._withUnsafeGuaranteedRef { batch in
                batch.answer(request.batchIndex, ok: type != .error, data)
                if batch.isComplete && !batch.cancelled { sendBatch(batch) }
            }
            withExtendedLifetime(held) {}
            if softKillRequested { maybeFinishSoftKill() }
            return
        }
        if _fastPath(data.count <= maxPayload) {
            channel.send(type, id: request.wireID, payload: data)
        } else {
            refuseOversized(request, data.count)
        }
        if softKillRequested { maybeFinishSoftKill() }
    }

    /// Fails a request whose response exceeds the largest frame: the supervisor would take such
    /// a frame as a protocol violation and kill this worker. Out of line: `finish` stays small.
    @inline(never)
    private func refuseOversized(_ request: Request, _ count: Int) {
        let message = "the response of \(count) bytes exceeds the largest frame (\(maxPayload) bytes)"
        channel.send(.error, id: request.wireID, payload: Array(message.utf8))
    }

    /// Sends a batch's answers, once all are in.
    private func sendBatch(_ batch: BatchAnswers) {
        let payload = batch.encoded
        if payload.count > maxPayload {
            let message = "the answers of a batch of \(batch.count), \(payload.count) bytes, exceed the largest frame (\(maxPayload) bytes)"
            channel.send(.error, id: batch.wireID, payload: Array(message.utf8))
        } else {
            channel.send(.response, id: batch.wireID, flags: .batch, length: payload.count) { $0.append(contentsOf: payload) }
        }
    }

    /// Answers with `data` and a stream: the request stays in flight until the stream ends.
    func finishStreaming(_ request: Request, _ data: [UInt8]) -> OutputStream? {
        checkThread()
        guard !request.answered, request.isInFlight else { return nil }
        if request.batchItem != nil {
            finish(request, .error, Array("a request of a batch cannot answer with a stream".utf8))
            return nil
        }
        let pair: DescriptorPair
        // A socketpair, not a pipe: written with MSG_NOSIGNAL, so a supervisor that stops
        // reading (the caller cancelled the stream) gives EPIPE here, never SIGPIPE.
        do { pair = try Sys.socketpair(flags: CInt(SOCK_NONBLOCK.rawValue)) } catch {
            finish(request, .error, Array("could not create the response stream: \(error)".utf8))
            return nil
        }
        request.answered = true
        let readEnd = pair.first.release(), writeEnd = pair.second.release()
        channel.send(.response, id: request.wireID, flags: .stream, passing: readEnd, payload: data)
        let wireID = request.wireID
        return OutputStream(writer: StreamWriter(fd: writeEnd, reactor: reactor, isSocket: true)) { [unowned self] count, ok in
            let end = StreamEnd(count: UInt64(count), ok: ok)
            self.channel.send(.streamEnd, id: wireID, length: StreamEnd.size) { end.encode(into: &$0) }
            self.leaveFlight(request)
            if self.softKillRequested { self.maybeFinishSoftKill() }
        }
    }

    func socketClosed(_ request: Request) {
        checkThread()
        channel.send(.socketClosed, id: request.wireID)
    }

    private func maybeFinishSoftKill() {
        guard inFlight.isEmpty, handlingInFlight == 0, !softKillRunning, state != .busy else { return }
        if let handler = softKillHandler {
            softKillRunning = true
            handler { [unowned self] in self.exit(code: 0) }
        } else {
            exit(code: 0)
        }
    }

    private func exit(code: CInt) {
        guard !exiting else { return }
        exiting = true
        flusher.flushAll()
        channel.flushBlocking()
        channel.close()
        fflush(nil)  // the handlers' buffered output (print) must not be lost
        _exit(code)
    }
}

/// The answers of a batched request, gathered in the items' order until the last is in: encoded
/// straight into a buffer of its own (status, length, bytes), sent in one copy.
final class BatchAnswers {
    let wireID: UInt64
    let count: Int
    // One thread, no overlapping access (as for `Request`): no dynamic exclusivity checks.
    /// Set when the supervisor cancelled the batch: nothing is sent.
    @exclusivity(unchecked) var cancelled = false
    /// The answers encoded so far, in order, after the count: `used` bytes of `capacity`.
    @exclusivity(unchecked) private var buffer: UnsafeMutableRawPointer
    @exclusivity(unchecked) private var capacity: Int
    @exclusivity(unchecked) private var used = 4
    @exclusivity(unchecked) private var next = 0
    /// Answers that came before the ones ahead of them, waiting for their turn.
    @exclusivity(unchecked) private var early: [Int: (Bool, [UInt8])] = [:]

    /// `bodySize`: the request's items (4 bytes of length each, and their bytes), a guess of the
    /// answers' size (one byte more per item).
    init(wireID: UInt64, count: Int, bodySize: Int) {
        self.wireID = wireID
        self.count = count
        capacity = max(64, bodySize + count + 4)
        buffer = .allocate(byteCount: capacity, alignment: 8)
        buffer.storeBytes(of: UInt32(count).littleEndian, as: UInt32.self)
    }

    deinit { buffer.deallocate() }

    var isComplete: Bool { next == count }

    func answer(_ i: Int, ok: Bool, _ data: [UInt8]) {
        guard _fastPath(i == next) else { return keepEarly(i, ok: ok, data) }
        append(ok: ok, data)
        next += 1
        if _slowPath(!early.isEmpty) { appendEarly() }
    }

    /// Out of line, as ``appendEarly()``: the in-order path stays small.
    @inline(never)
    private func keepEarly(_ i: Int, ok: Bool, _ data: [UInt8]) {
        early[i] = (ok, data)
    }

    /// Appends the answers that came early and whose turn it now is.
    @inline(never)
    private func appendEarly() {
        while let (ok, data) = early.removeValue(forKey: next) {
            append(ok: ok, data)
            next += 1
        }
    }

    @inline(__always)
    private func append(ok: Bool, _ data: [UInt8]) {
        let n = data.count
        let end = used + 5 + n
        if end > capacity { grow(to: end) }
        let at = buffer + used
        at.storeBytes(of: ok ? 0 : 1, as: UInt8.self)
        at.storeBytes(of: UInt32(truncatingIfNeeded: n).littleEndian, toByteOffset: 1, as: UInt32.self)
        if n > 0 { data.withUnsafeBytes { (at + 5).copyMemory(from: $0.baseAddress!, byteCount: n) } }
        used = end
    }

    private func grow(to size: Int) {
        let bigger = max(size, capacity * 2)
        let new = UnsafeMutableRawPointer.allocate(byteCount: bigger, alignment: 8)
        new.copyMemory(from: buffer, byteCount: used)
        buffer.deallocate()
        buffer = new
        capacity = bigger
    }

    /// The encoded answers (count, then each), valid until this object changes or goes.
    var encoded: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: buffer, count: used) }
}

/// A request's head (``RequestHead``: the id's 16 bytes, then `createdAt`), read as three words.
/// The id stays two words until it is stored: a `RequestID`, a tuple of 16 bytes, is copied byte
/// by byte each time it is passed on.
struct Head {
    let id: (UInt64, UInt64)
    let createdAt: UInt64

    var requestID: RequestID { unsafeBitCast(id, to: RequestID.self) }

    /// The head and the body after it; `nil` when `payload` is shorter than the head.
    @inline(__always)
    static func decode(_ payload: UnsafeRawBufferPointer) -> (Head, UnsafeRawBufferPointer)? {
        guard payload.count >= RequestHead.size else { return nil }
        // The id's bytes as they lie (network order), the time little-endian.
        let head = Head(id: (payload.loadUnaligned(fromByteOffset: 0, as: UInt64.self),
                             payload.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
                        createdAt: payload.readLittleEndian(at: 16, as: UInt64.self))
        return (head, UnsafeRawBufferPointer(rebasing: payload[RequestHead.size...]))
    }
}

/// The request handler, held where a call can borrow it.
final class RequestHandlerBox {
    let call: (Worker.Request) -> Void
    init(_ call: @escaping (Worker.Request) -> Void) { self.call = call }
}

/// A worker-side failure to start.
public struct WorkerError: Error, CustomStringConvertible, Sendable {
    /// What went wrong.
    public let description: String
    init(_ d: String) { description = d }
}

