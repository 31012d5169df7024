import CLoop
import LPMReactor
import LPMWire

/// How a request's caller is answered.
enum Completion {
    case handler(@Sendable (Result<Response, SupervisorError>) -> Void)
    case continuation(UnsafeContinuation<Result<Response, SupervisorError>, Never>)

    func callAsFunction(_ result: Result<Response, SupervisorError>) {
        switch self {
        case .handler(let h): h(result)
        case .continuation(let c): c.resume(returning: result)
        }
    }
}

/// A request the supervisor holds: queued or in flight.
struct RequestSlot {
    var payload: [UInt8] = []
    /// Owned by exactly one state: set while the request is pending, taken when it completes.
    var completion: Completion?
    var id = RequestID.zero
    var createdAt: UInt64 = 0
    var attempts = 0
    var maxAttempts = 1
    var timeout: Duration?
    var timer: Reactor.Timer?
    var worker = -1
    var generation: UInt32 = 0
    /// A descriptor to pass with the request (a socket, or a stream's read end); -1: none.
    /// Owned by the request until it is sent.
    var descriptor: CInt = -1
    var isStream = false
}

/// One worker process.
final class WorkerProcess {
    let slot: Int
    let pid: pid_t
    let channel: Channel
    var watch: Reactor.ChildWatch?
    var statmFD: CInt
    @exclusivity(unchecked) var state: WorkerState = .starting
    @exclusivity(unchecked) var everReady = false
    /// Requests on this worker now: those whose `worker` is this slot and that are pending.
    @exclusivity(unchecked) var inFlight = 0
    @exclusivity(unchecked) var rss = 0
    var heapTotal = 0
    var heapUsed = 0
    @exclusivity(unchecked) var completed = 0
    /// The supervisor ended it on purpose (kill, resize): not a crash.
    var expectedExit = false
    var violation: String?
    var softKillSent = false
    /// Sockets handed to this worker and not reported closed.
    @exclusivity(unchecked) var sockets = 0
    /// Response streams still flowing from this worker, by wire id.
    @exclusivity(unchecked) var streams: [UInt64: ResponseStreamCore] = [:]

    /// Requests in flight plus streams still flowing.
    var load: Int { inFlight + streams.count }

    init(slot: Int, pid: pid_t, channel: Channel, statmFD: CInt) {
        self.slot = slot
        self.pid = pid
        self.channel = channel
        self.statmFD = statmFD
    }
}

struct WorkerSlot {
    var process: WorkerProcess?
    var restarts = 0
    var lastExit: Reactor.ExitStatus?
    var completedBefore = 0
    var down = false
    /// Removed by ``Core/resize(_:)``: not restarted, not dispatched to; reused when growing.
    var retired = false
}

/// The supervisor's state, confined to the reactor thread.
final class Core {
    enum Phase { case idle, running, softKilling, hardKilling, stopped }

    let reactor: Reactor
    let config: SupervisorConfiguration
    let flusher: ChannelFlusher
    private let spawner: Spawner
    @exclusivity(unchecked) private var phase: Phase = .idle
    @exclusivity(unchecked) private var slots: [WorkerSlot]
    @exclusivity(unchecked) private var requests: [RequestSlot] = []
    @exclusivity(unchecked) private var freeRequests: [UInt32] = []
    @exclusivity(unchecked) private var queue = IndexDeque()
    @exclusivity(unchecked) private var pendingCount = 0
    private var restartTimes: [Int64] = []
    @exclusivity(unchecked) private var rrCursor = 0
    private var onlineAnnounced = false
    private var healthTimer: Reactor.Timer?
    private var healthSequence: UInt64 = 0
    private var sigintWatch: Reactor.SignalWatch?
    private var killCompletions: [@Sendable () -> Void] = []
    private var softKillTimer: Reactor.Timer?
    @exclusivity(unchecked) private var ids = IDGenerator()
    private let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
    var onStopped: (() -> Void)?

    var eventHandler: (@Sendable (SupervisorEvent) -> Void)?
    var workerEventHandlers: [String: @Sendable (WorkerEvent) -> Void] = [:]
    var anyWorkerEventHandler: (@Sendable (WorkerEvent) -> Void)?
    var sigintHandler: (@Sendable () -> Void)?

    init(reactor: Reactor, config: SupervisorConfiguration) {
        self.reactor = reactor
        self.config = config
        flusher = ChannelFlusher(reactor: reactor)
        spawner = Spawner(config)
        slots = Array(repeating: WorkerSlot(), count: max(0, config.count))
    }

    deinit { spawner.free() }

    private func emit(_ e: SupervisorEvent) { eventHandler?(e) }

    // MARK: Start

    func start() throws(SupervisorError) {
        guard phase == .idle else {
            if phase == .running { return }
            throw SupervisorError(.shutDown, "start() after the pool was shut down")
        }
        guard config.count >= 1 || !slots.isEmpty || config.count == 0 else { throw SupervisorError(.invalidArgument, "count must not be negative, got \(config.count)") }
        phase = .running
        if config.handleSIGINT {
            sigintWatch = try? reactor.watchSignal(SIGINT) { [unowned self] _ in self.sigint() }
        }
        healthTimer = try? reactor.schedule(after: config.healthInterval, repeating: config.healthInterval) { [unowned self] in
            self.sampleHealth()
        }
        var firstError: SupervisorError?
        for i in slots.indices where !slots[i].retired {
            do { try spawn(slot: i) } catch { firstError = firstError ?? error; slots[i].down = true }
        }
        if !hasLiveWorker {
            noWorkersLeft()
            if let firstError { throw firstError }
        }
    }

    private func spawn(slot i: Int) throws(SupervisorError) {
        let cpu = config.cpuAffinity.isEmpty ? nil : config.cpuAffinity[i % config.cpuAffinity.count]
        let spawned: (pid: pid_t, channel: CInt)
        do { spawned = try spawner.spawn(cpu: cpu) } catch {
            throw SupervisorError(.spawnFailed, "could not start the worker \(config.executable.path): \(error)")
        }
        let statm = "/proc/\(spawned.pid)/statm".withCString { cloop_open($0, O_RDONLY | O_CLOEXEC) }
        let channel = Channel(fd: spawned.channel, reactor: reactor, flusher: flusher, maxPayload: config.maxPayload)
        let w = WorkerProcess(slot: i, pid: spawned.pid, channel: channel, statmFD: statm)
        channel.onFrame = { [unowned self, unowned w] h, p in self.frame(w, h, p) }
        channel.onEnd = { [unowned self, unowned w] end in self.channelEnded(w, end) }
        do {
            let pidfd = try Sys.pidfdOpen(spawned.pid).release()
            w.watch = try reactor.watchPidfd(pidfd, pid: spawned.pid) { [unowned self] status in self.exited(w, status) }
            try channel.start()
        } catch {
            // Cannot watch it: kill and reap it here, synchronously.
            _ = kill(spawned.pid, SIGKILL)
            _ = waitpid(spawned.pid, nil, 0)
            if let watch = w.watch { try? reactor.unwatchChild(watch) }
            channel.close()
            if statm >= 0 { FileDescriptor.closeRaw(statm) }
            throw SupervisorError(.spawnFailed, "could not watch worker \(spawned.pid): \(error)")
        }
        slots[i].process = w
        slots[i].down = false
        noWorkersAnnounced = false
        emit(.workerStarted(slot: i, pid: spawned.pid))
    }

    // MARK: Requests

    /// Whether some slot that is not retired has a process.
    private var hasLiveWorker: Bool { slots.contains { !$0.retired && $0.process != nil } }

    func enqueue(_ payload: [UInt8], _ options: RequestOptions, _ completion: Completion,
                 descriptor: CInt = -1, isStream: Bool = false) {
        let attempts = 1 + max(0, options.retries ?? config.retries)
        // A descriptor not handed on is closed here, on every failure path.
        func refuse(_ e: SupervisorError) {
            if descriptor >= 0 { FileDescriptor.closeRaw(descriptor) }
            completion(.failure(e))
        }
        switch phase {
        case .softKilling, .hardKilling, .stopped:
            return refuse(SupervisorError(.shutDown, "the pool is shutting down or stopped; no new requests"))
        case .idle, .running:
            break
        }
        if payload.count + 24 > config.maxPayload {
            return refuse(SupervisorError(.payloadTooLarge, "payload of \(payload.count) bytes exceeds maxPayload (\(config.maxPayload), less the 24-byte request prefix)"))
        }
        if phase == .running && !hasLiveWorker {
            return refuse(SupervisorError(.noWorkers, activeCount == 0 ? "the pool was resized to 0 workers" : "no worker is left: the restart budget is spent"))
        }
        if let limit = config.maxQueueLength, queue.count >= limit {
            return refuse(SupervisorError(.queueFull, "the queue holds \(queue.count) requests, its limit"))
        }
        let index: UInt32
        if let free = freeRequests.popLast() { index = free } else {
            index = UInt32(requests.count)
            requests.append(RequestSlot())
        }
        let i = Int(index)
        requests[i].payload = payload
        requests[i].completion = completion
        requests[i].id = RequestID.random(using: &ids)
        requests[i].createdAt = UInt64(Sys.monotonicNanoseconds())
        requests[i].attempts = 0
        requests[i].maxAttempts = attempts
        requests[i].timeout = options.timeout ?? config.requestTimeout
        requests[i].worker = -1
        requests[i].descriptor = descriptor
        requests[i].isStream = isStream
        pendingCount += 1
        queue.pushBack(index)
        if phase == .running { pump() }
    }

    /// Hands queued requests to workers while some worker can take one.
    private func pump() {
        while let next = queue.first {
            let forSocket = requests[Int(next)].descriptor >= 0 && !requests[Int(next)].isStream
            guard let w = pickWorker(forSocket: forSocket) else { break }
            _ = queue.popFront()
            dispatch(next, to: w)
        }
        if phase == .softKilling { advanceSoftKill() }
    }

    /// The ready worker with the fewest requests in flight (and streams flowing); ties go to
    /// the lowest RSS, then round robin. For a socket, the worker with the fewest open sockets
    /// comes first.
    private func pickWorker(forSocket: Bool = false) -> WorkerProcess? {
        var best: WorkerProcess?
        let n = slots.count
        var k = 0
        while k < n {
            let i = (rrCursor + k) % n
            k += 1
            guard let w = slots[i].process, w.state == .ready, w.load < config.maxConcurrentRequestsPerWorker else { continue }
            if let b = best {
                if forSocket && w.sockets != b.sockets {
                    if w.sockets < b.sockets { best = w }
                } else if w.load < b.load || (w.load == b.load && w.rss < b.rss) {
                    best = w
                }
            } else {
                best = w
                if w.load == 0 && w.rss == 0 && (!forSocket || w.sockets == 0) { break }
            }
        }
        if let best { rrCursor = (best.slot + 1) % n }
        return best
    }

    private func wireID(_ index: UInt32) -> UInt64 { UInt64(requests[Int(index)].generation) << 32 | UInt64(index) }

    private func dispatch(_ index: UInt32, to w: WorkerProcess) {
        let i = Int(index)
        requests[i].attempts += 1
        requests[i].worker = w.slot
        w.inFlight += 1
        // Fields are read one by one: copying the whole slot would retain and release its
        // payload and completion for nothing.
        let id = requests[i].id, createdAt = requests[i].createdAt
        let descriptor = requests[i].descriptor
        if descriptor >= 0 {
            // The descriptor travels with the frame and the channel closes our copy once sent:
            // the request cannot be sent again, so it gets no further attempt.
            let isStream = requests[i].isStream
            var body: [UInt8] = []
            body.reserveCapacity(24 + requests[i].payload.count)
            id.append(to: &body)
            body.appendLittleEndian(createdAt)
            body.append(contentsOf: requests[i].payload)
            w.channel.send(.request, id: wireID(index), flags: isStream ? .stream : [], passing: descriptor, payload: body)
            requests[i].descriptor = -1
            requests[i].maxAttempts = requests[i].attempts
            if !isStream { w.sockets += 1 }
        } else {
            let payload = requests[i].payload
            w.channel.send(.request, id: wireID(index), length: 24 + payload.count) { out in
                id.append(to: &out)
                out.appendLittleEndian(createdAt)
                out.append(contentsOf: payload)
            }
        }
        if let timeout = requests[i].timeout {
            let generation = requests[i].generation, attempt = requests[i].attempts
            requests[i].timer = try? reactor.schedule(after: timeout) { [unowned self] in
                self.timedOut(index, generation: generation, attempt: attempt)
            }
        }
    }

    private func timedOut(_ index: UInt32, generation: UInt32, attempt: Int) {
        let i = Int(index)
        guard requests[i].generation == generation, requests[i].completion != nil, requests[i].attempts == attempt else { return }
        requests[i].timer = nil
        let slot = requests[i].worker
        if slot >= 0, let w = slots[slot].process {
            w.inFlight -= 1
            w.channel.send(.cancel, id: wireID(index))
        }
        let timeout = requests[i].timeout ?? .zero
        let attempts = requests[i].attempts
        if attempts < requests[i].maxAttempts, phase == .running {
            // A new generation: a late answer to the timed-out attempt is dropped.
            requests[i].generation &+= 1
            requests[i].worker = -1
            queue.pushFront(index)
        } else {
            complete(index, .failure(SupervisorError(.timedOut, "request \(requests[i].id) timed out after \(timeout) (attempt \(attempts) of \(requests[i].maxAttempts))",
                                                      requestID: requests[i].id, workerPID: slot >= 0 ? slots[slot].process?.pid : nil, attempts: attempts)))
        }
        pump()
    }

    /// Completes a request exactly once: takes its completion, frees its slot, then answers.
    private func complete(_ index: UInt32, _ result: Result<Response, SupervisorError>) {
        let i = Int(index)
        guard let completion = requests[i].completion else { return }
        requests[i].completion = nil
        if let t = requests[i].timer { reactor.cancel(t); requests[i].timer = nil }
        requests[i].payload = []
        requests[i].generation &+= 1
        requests[i].worker = -1
        if requests[i].descriptor >= 0 {
            FileDescriptor.closeRaw(requests[i].descriptor)
            requests[i].descriptor = -1
        }
        freeRequests.append(index)
        pendingCount -= 1
        completion(result)
    }

    // MARK: Frames from workers

    private func frame(_ w: WorkerProcess, _ h: FrameHeader, _ payload: UnsafeRawBufferPointer) {
        switch h.type {
        case .response, .ack, .error:
            let index = UInt32(truncatingIfNeeded: h.id)
            let generation = UInt32(truncatingIfNeeded: h.id >> 32)
            let i = Int(index)
            guard i < requests.count else { return violation(w, "answered request \(h.id), which was never sent") }
            guard requests[i].generation == generation, requests[i].completion != nil else {
                return  // a late answer (timed out, or retried elsewhere): dropped
            }
            guard requests[i].worker == w.slot else {
                return violation(w, "answered request \(h.id), which is not on this worker")
            }
            w.inFlight -= 1
            w.completed += 1
            let requestID = requests[i].id, createdAt = requests[i].createdAt, attempts = requests[i].attempts
            var stream: ResponseStream?
            if h.flags.contains(.stream) {
                guard h.type == .response, let fd = w.channel.takeDescriptor() else {
                    return violation(w, "a streamed response without its descriptor")
                }
                let core = ResponseStreamCore(fd: fd, reactor: reactor, workerPID: w.pid, requestID: requestID)
                w.streams[h.id] = core
                stream = ResponseStream(core: core, reactor: reactor.handle)
            } else if h.flags.contains(.descriptor) {
                if let fd = w.channel.takeDescriptor() { FileDescriptor.closeRaw(fd) }
                return violation(w, "a response may carry a descriptor only as a stream")
            }
            if h.type == .error {
                complete(index, .failure(SupervisorError(.workerError, String(decoding: payload, as: UTF8.self),
                                                         requestID: requestID, workerPID: w.pid, attempts: attempts)))
            } else {
                complete(index, .success(Response(data: Array(payload), id: requestID, createdAt: createdAt, stream: stream,
                                                  workerPID: w.pid, attempts: attempts)))
            }
            pump()
        case .ready:
            guard w.state == .starting || w.state == .busy || w.state == .ready else { return }
            w.state = .ready
            w.everReady = true
            checkOnline()
            pump()
        case .busy:
            if w.state == .ready || w.state == .starting { w.state = .busy }
        case .event:
            guard let (name, data) = EventPayload.decode(payload) else { return violation(w, "malformed event frame: the name runs past the payload") }
            let handle = reactor.handle
            let box = UnsafeSendableBox(self)
            let replyID = h.id, pid = w.pid, slot = w.slot
            let event = WorkerEvent(name: name, data: data, pid: pid, wantsReply: replyID != 0) { reply in
                guard replyID != 0 else { return }
                handle.execute { _ in box.value.sendReply(slot: slot, pid: pid, id: replyID, data: reply) }
            }
            if let handler = workerEventHandlers[name] ?? anyWorkerEventHandler { handler(event) }
        case .healthReport:
            guard payload.count >= 16 else { return violation(w, "health report shorter than 16 bytes") }
            w.heapTotal = Int(truncatingIfNeeded: payload.readLittleEndian(at: 0, as: UInt64.self))
            w.heapUsed = Int(truncatingIfNeeded: payload.readLittleEndian(at: 8, as: UInt64.self))
        case .ping:
            w.channel.send(.pong, id: h.id)
        case .pong:
            break
        case .eventReply:
            guard let entry = pendingReplies[h.id], entry.pid == w.pid else { return }
            pendingReplies[h.id] = nil
            entry.handler(.success(Array(payload)))
        case .socketClosed:
            if w.sockets > 0 { w.sockets -= 1 }
            pump()
        case .streamEnd:
            guard payload.count >= 9 else { return violation(w, "streamEnd shorter than 9 bytes") }
            guard let core = w.streams.removeValue(forKey: h.id) else { return }
            core.markEnd(count: Int(truncatingIfNeeded: payload.readLittleEndian(at: 0, as: UInt64.self)), ok: payload[8] == 0)
            pump()
        case .request, .broadcast, .healthRequest, .softKill, .hardKill, .cancel:
            violation(w, "a worker may not send \(h.type) frames")
        }
    }

    private func sendReply(slot: Int, pid: pid_t, id: UInt64, data: [UInt8]) {
        guard let w = slots[slot].process, w.pid == pid else { return }
        w.channel.send(.eventReply, id: id, payload: data)
    }

    /// Kills a worker that broke the protocol; its requests are retried or failed on exit.
    private func violation(_ w: WorkerProcess, _ reason: String) {
        guard w.violation == nil else { return }
        w.violation = reason
        emit(.protocolViolation(slot: w.slot, pid: w.pid, reason: reason))
        killProcess(w)
    }

    private func killProcess(_ w: WorkerProcess) {
        if let watch = w.watch { try? reactor.signalChild(watch, SIGKILL) }
        w.channel.close()
        if w.state != .down { w.state = .stopping }
    }

    private func channelEnded(_ w: WorkerProcess, _ end: ChannelEnd) {
        switch end {
        case .violation(let v): violation(w, v.reason)
        default:
            // A worker must not close its channel and live on: make sure it is gone; the pidfd
            // then reports how it ended. (A worker that is exiting has its exit code set
            // before its descriptors close, so SIGKILL does not change the status reported.)
            if !w.expectedExit && !w.softKillSent { killProcess(w) }
        }
    }

    // MARK: Exits and restarts

    private func exited(_ w: WorkerProcess, _ status: Reactor.ExitStatus) {
        let i = w.slot
        w.watch = nil
        w.channel.close()
        if w.statmFD >= 0 { FileDescriptor.closeRaw(w.statmFD); w.statmFD = -1 }
        slots[i].process = nil
        slots[i].lastExit = status
        slots[i].completedBefore += w.completed
        let expected = w.expectedExit || w.softKillSent || phase == .hardKilling || phase == .stopped
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
        // A scan, not a per-worker set: deaths are rare, dispatches are not.
        let inFlight = requests.indices.filter { requests[$0].completion != nil && requests[$0].worker == i }.reversed()
        w.inFlight = 0
        for k in inFlight {
            let index = UInt32(k)
            let r = requests[Int(index)]
            guard r.completion != nil else { continue }
            if let t = r.timer { reactor.cancel(t); requests[Int(index)].timer = nil }
            if r.attempts < r.maxAttempts && phase == .running {
                requests[Int(index)].generation &+= 1
                requests[Int(index)].worker = -1
                queue.pushFront(index)
            } else {
                let code: SupervisorError.Code = phase == .hardKilling || phase == .stopped ? .shutDown
                    : (w.violation != nil ? .protocolViolation : .workerExited)
                let why = w.violation.map { "broke the protocol (\($0)) and was killed" } ?? String(describing: status)
                complete(index, .failure(SupervisorError(code, "worker \(w.pid) \(why) with request \(r.id) in flight after \(r.attempts) attempt\(r.attempts == 1 ? "" : "s")",
                                                         requestID: r.id, workerPID: w.pid, exitStatus: status, attempts: r.attempts)))
            }
        }

        switch phase {
        case .running where slots[i].retired:
            slots[i].down = true
        case .running where !w.expectedExit:
            onlineAnnounced = false
            restart(slot: i)
        case .running:
            break
        case .softKilling, .hardKilling:
            slots[i].down = true
            finishKillIfDone()
        case .idle, .stopped:
            slots[i].down = true
        }
        if phase == .running, !hasLiveWorker { noWorkersLeft() }
        pump()
    }

    /// Restarts `slot` if the budget allows: at most `restarts` within the sliding window.
    private func restart(slot i: Int) {
        let now = Sys.monotonicNanoseconds()
        let window = Int64(config.maxRestartsInInterval.components.seconds) * 1_000_000_000
            + config.maxRestartsInInterval.components.attoseconds / 1_000_000_000
        restartTimes.removeAll { now - $0 >= window }
        guard restartTimes.count < config.restarts else {
            slots[i].down = true
            emit(.restartBudgetExhausted(slot: i))
            return
        }
        restartTimes.append(now)
        slots[i].restarts += 1
        do {
            try spawn(slot: i)
            emit(.workerRestarted(slot: i, pid: slots[i].process!.pid))
        } catch {
            slots[i].down = true
            emit(.workerSpawnFailed(slot: i, reason: error.message))
        }
    }

    /// Set while the pool has no live worker and that has been announced; cleared by a spawn.
    private var noWorkersAnnounced = false

    private func noWorkersLeft() {
        if !noWorkersAnnounced {
            noWorkersAnnounced = true
            emit(.noWorkersLeft)
        }
        while let index = queue.popFront() {
            complete(index, .failure(SupervisorError(.noWorkers, "no worker is left: the restart budget is spent",
                                                     requestID: requests[Int(index)].id, attempts: requests[Int(index)].attempts)))
        }
    }

    private func checkOnline() {
        guard !onlineAnnounced, phase == .running else { return }
        guard activeCount > 0 else { return }
        for s in slots where !s.down && !s.retired {
            guard let w = s.process, w.everReady else { return }
        }
        onlineAnnounced = true
        emit(.online)
    }

    // MARK: Health

    private func sampleHealth() {
        healthSequence &+= 1
        for s in slots {
            guard let w = s.process else { continue }
            w.rss = readRSS(w)
            w.channel.send(.healthRequest, id: healthSequence)
        }
    }

    private func readRSS(_ w: WorkerProcess) -> Int {
        guard w.statmFD >= 0 else { return 0 }
        var buf = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        let n = withUnsafeMutableBytes(of: &buf) { pread(w.statmFD, $0.baseAddress, $0.count - 1, 0) }
        guard n > 0 else { return w.rss }
        // statm: "size resident shared text lib data dt", in pages; the second field.
        return withUnsafeBytes(of: &buf) { raw in
            var field = 0, value = 0
            for k in 0..<n {
                let c = raw[k]
                if c == 0x20 { field += 1; if field > 1 { break }; continue }
                if field == 1, c >= 0x30, c <= 0x39 { value = value * 10 + Int(c - 0x30) }
            }
            return value * pageSize
        }
    }

    func health() -> [WorkerHealth] {
        slots.enumerated().filter { !$0.1.retired || $0.1.process != nil }.map { i, s in
            let w = s.process
            if let w { w.rss = readRSS(w) }
            let state: WorkerState = w?.state ?? .down
            return WorkerHealth(slot: i, pid: w?.pid ?? 0, rss: w?.rss ?? 0, heapTotal: w?.heapTotal ?? 0, heapUsed: w?.heapUsed ?? 0,
                                inFlight: w?.inFlight ?? 0, completed: s.completedBefore + (w?.completed ?? 0),
                                restarts: s.restarts, lastExit: s.lastExit, state: state)
        }
    }

    func status() -> PoolStatus {
        PoolStatus(queued: queue.count, pending: pendingCount, workers: activeCount,
                   ready: slots.reduce(0) { $0 + ($1.process?.state == .ready ? 1 : 0) },
                   isShutDown: phase != .idle && phase != .running)
    }

    // MARK: Events to one worker

    typealias ReplyHandler = @Sendable (Result<[UInt8], SupervisorError>) -> Void
    /// Replies awaited from workers, by event id.
    private var pendingReplies: [UInt64: (pid: pid_t, handler: ReplyHandler)] = [:]
    private var nextEventID: UInt64 = 0

    /// Sends a custom event to the worker `pid` (or, with `nil`, to the least-loaded ready
    /// worker); `reply` gets the worker's reply, or an error if it exits first.
    func emit(_ name: String, _ data: [UInt8], to pid: pid_t?, reply: ReplyHandler?) {
        let target: WorkerProcess?
        if let pid {
            target = slots.lazy.compactMap(\.process).first { $0.pid == pid && $0.state != .stopping }
        } else {
            target = pickWorker()
        }
        guard let w = target, phase == .running else {
            reply?(.failure(SupervisorError(.noWorkers, pid.map { "no running worker with pid \($0)" } ?? "no ready worker to send the event to")))
            return
        }
        var id: UInt64 = 0
        if let reply {
            nextEventID &+= 1
            id = nextEventID
            pendingReplies[id] = (w.pid, reply)
        }
        w.channel.send(.event, id: id, payload: EventPayload.encode(name: name, data: data))
    }

    /// Fails the replies awaited from `pid` (all of them with `nil`).
    private func failReplies(from pid: pid_t?, _ error: SupervisorError) {
        for (id, entry) in pendingReplies where pid == nil || entry.pid == pid {
            pendingReplies[id] = nil
            entry.handler(.failure(error))
        }
    }

    // MARK: Broadcast

    /// Sends an event to every worker; with `descriptor`, each gets its own copy of it (a
    /// listening socket, say) and the supervisor's copy is closed.
    func broadcast(_ name: String, _ data: [UInt8], descriptor: CInt = -1) {
        let body = EventPayload.encode(name: name, data: data)
        for s in slots {
            guard let w = s.process, w.state != .stopping else { continue }
            if descriptor >= 0, let copy = try? Sys.duplicate(descriptor).release() {
                w.channel.send(.broadcast, id: 0, passing: copy, payload: body)
            } else {
                w.channel.send(.broadcast, id: 0, payload: body)
            }
        }
        if descriptor >= 0 { FileDescriptor.closeRaw(descriptor) }
    }

    // MARK: Resize

    /// Slots that are part of the pool (not retired).
    var activeCount: Int { slots.reduce(0) { $0 + ($1.retired ? 0 : 1) } }

    /// Grows or shrinks the pool to `n` workers. Growing spawns now (reusing retired slots whose
    /// process is gone). Shrinking retires the least-loaded workers: they get nothing new,
    /// finish their requests, run their soft-kill handler, and exit. The last call wins.
    func resize(_ n: Int) throws(SupervisorError) {
        guard n >= 0 else { throw SupervisorError(.invalidArgument, "resize(\(n)): the count must not be negative") }
        switch phase {
        case .softKilling, .hardKilling, .stopped:
            throw SupervisorError(.shutDown, "resize(\(n)) after the pool was shut down")
        case .idle, .running:
            break
        }
        var active = activeCount
        if n > active {
            var firstError: SupervisorError?
            // Reuse slots whose process is gone first, then add new ones.
            for i in slots.indices where active < n && slots[i].retired && slots[i].process == nil {
                slots[i].retired = false
                slots[i].down = false
                active += 1
                if phase == .running { do { try spawn(slot: i) } catch { firstError = firstError ?? error; slots[i].down = true } }
            }
            while active < n {
                slots.append(WorkerSlot())
                active += 1
                if phase == .running { do { try spawn(slot: slots.count - 1) } catch { firstError = firstError ?? error; slots[slots.count - 1].down = true } }
            }
            onlineAnnounced = false
            if let firstError, !hasLiveWorker { throw firstError }
        } else if n < active {
            // Least loaded first: slots without a process, then starting ones, then by load.
            let order = slots.indices.filter { !slots[$0].retired }.sorted { a, b in
                func rank(_ i: Int) -> (Int, Int) {
                    guard let w = slots[i].process else { return (0, 0) }
                    return (w.state == .starting ? 1 : 2, w.load)
                }
                return rank(a) < rank(b)
            }
            for i in order.prefix(active - n) {
                slots[i].retired = true
                guard let w = slots[i].process else { slots[i].down = true; continue }
                w.state = .stopping
                w.expectedExit = true
                if !w.softKillSent {
                    w.softKillSent = true
                    w.channel.send(.softKill)
                }
            }
            if n == 0 { noWorkersLeft() }
        }
        if phase == .running {
            checkOnline()
            pump()
        }
    }

    // MARK: Kill

    private func sigint() {
        if let handler = sigintHandler {
            handler()
        } else {
            hardKill {
                // The default for SIGINT, as for a process without a handler: end the process.
                exit(130)
            }
        }
    }

    func softKill(_ done: @escaping @Sendable () -> Void) {
        switch phase {
        case .stopped:
            return done()
        case .softKilling, .hardKilling:
            killCompletions.append(done)
            return
        case .idle:
            killCompletions.append(done)
            phase = .softKilling
            while let index = queue.popFront() {
                complete(index, .failure(SupervisorError(.shutDown, "the pool was shut down before it started", requestID: requests[Int(index)].id)))
            }
            finishKillIfDone()
        case .running:
            killCompletions.append(done)
            phase = .softKilling
            if let t = config.softKillTimeout {
                softKillTimer = try? reactor.schedule(after: t) { [unowned self] in
                    self.softKillTimer = nil
                    for s in self.slots { if let w = s.process { w.expectedExit = true; self.killProcess(w) } }
                }
            }
            advanceSoftKill()
        }
    }

    /// Once every accepted request has gone to a worker, tells each worker to finish.
    private func advanceSoftKill() {
        guard queue.isEmpty else {
            // Requests are still queued: a worker must remain to take them.
            if !slots.contains(where: { $0.process.map { $0.state != .stopping } ?? false }) {
                while let index = queue.popFront() {
                    complete(index, .failure(SupervisorError(.shutDown, "no worker is left to take the request during the soft kill", requestID: requests[Int(index)].id)))
                }
            } else { return }
            return advanceSoftKill()
        }
        for s in slots {
            guard let w = s.process, !w.softKillSent else { continue }
            w.softKillSent = true
            w.expectedExit = true
            w.channel.send(.softKill)
        }
        finishKillIfDone()
    }

    func hardKill(_ done: @escaping @Sendable () -> Void) {
        killCompletions.append(done)
        switch phase {
        case .stopped:
            let c = killCompletions; killCompletions = []
            c.forEach { $0() }
            return
        case .hardKilling:
            return
        case .idle, .running, .softKilling:
            phase = .hardKilling
        }
        if let t = softKillTimer { reactor.cancel(t); softKillTimer = nil }
        for s in slots {
            guard let w = s.process else { continue }
            w.expectedExit = true
            w.channel.send(.hardKill)
            flusher.flushAll()
            killProcess(w)
        }
        // Every pending request fails now, queued or in flight.
        for i in requests.indices where requests[i].completion != nil {
            if requests[i].worker >= 0, let w = slots[requests[i].worker].process { w.inFlight -= 1 }
            complete(UInt32(i), .failure(SupervisorError(.shutDown, "the pool was hard-killed", requestID: requests[i].id, attempts: requests[i].attempts)))
        }
        queue.removeAll()
        finishKillIfDone()
    }

    private func finishKillIfDone() {
        guard phase == .softKilling || phase == .hardKilling, slots.allSatisfy({ $0.process == nil }) else { return }
        // Nothing may be left unanswered.
        for i in requests.indices where requests[i].completion != nil {
            complete(UInt32(i), .failure(SupervisorError(.shutDown, "the pool stopped", requestID: requests[i].id, attempts: requests[i].attempts)))
        }
        queue.removeAll()
        failReplies(from: nil, SupervisorError(.shutDown, "the pool stopped before the worker replied"))
        phase = .stopped
        if let t = healthTimer { reactor.cancel(t); healthTimer = nil }
        if let t = softKillTimer { reactor.cancel(t); softKillTimer = nil }
        if let s = sigintWatch { try? reactor.unwatchSignal(s); sigintWatch = nil }
        let completions = killCompletions
        killCompletions = []
        onStopped?()
        completions.forEach { $0() }
        if let status = config.exitStatusAfterKill { exit(status) }
    }

    var isStopped: Bool { phase == .stopped }
}

/// Carries a reactor-thread object through `Sendable` plumbing back to the reactor thread.
/// `@unchecked Sendable`: `value` is only dereferenced inside jobs run on the reactor thread.
struct UnsafeSendableBox<T: AnyObject>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}
