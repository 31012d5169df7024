@_exported import LPMReactor
@_exported import LPMWire
import CLoop

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
/// ``Request/respond(_:)-([UInt8])`` and the other methods from that thread; from another thread, hop with
/// `worker.reactor.handle.execute { _ in ... }`.
///
/// The worker exits cleanly when its channel reaches end of file (the supervisor is gone), and
/// asks the kernel to kill it if the supervisor thread that spawned it dies
/// (`PR_SET_PDEATHSIG`), so it never outlives its parent.
public final class Worker {
    /// The reactor the worker runs on: use it for timers and your own descriptors.
    public let reactor: Reactor
    private let channel: Channel
    private let flusher: ChannelFlusher
    private var requestHandler: (Request) -> Void = { $0.fail("this worker has no request handler") }
    private var eventHandlers: [String: (Event) -> Void] = [:]
    private var softKillHandler: ((_ done: @escaping () -> Void) -> Void)?
    private var hardKillHandler: (() -> Void)?
    @exclusivity(unchecked) private var inFlight: [UInt64: Request] = [:]
    private var pendingReplies: [UInt64: ([UInt8]) -> Void] = [:]
    private var nextEventID: UInt64 = 0
    @exclusivity(unchecked) private var state: ReadyState = .starting
    private var softKillRequested = false
    private var softKillRunning = false
    private var exiting = false

    private enum ReadyState { case starting, ready, busy }

    /// Connects to the supervisor through the descriptor named by `LPM_CHANNEL_FD`.
    /// - Parameter backend: the reactor backend; epoll first by default (lower latency for a
    ///   worker's lone round trips); `LPM_REACTOR_BACKEND` overrides it.
    /// - Throws: ``WorkerError`` when the process was not started by a supervisor.
    public init(backend: Reactor.BackendChoice = .preferring(.epoll)) throws {
        guard let raw = getenv(Wire.channelEnvironmentKey), let fd = CInt(String(cString: raw)), Sys.isValid(fd) else {
            throw WorkerError("this process was not started by a Supervisor (\(Wire.channelEnvironmentKey) is not set to an open descriptor)")
        }
        let maxPayload = getenv(Wire.maxPayloadEnvironmentKey).flatMap { Int(String(cString: $0)) } ?? Wire.defaultMaxPayload
        // Die with the supervisor; then check it did not die before the call took effect.
        _ = cloop_prctl1(PR_SET_PDEATHSIG, UInt(SIGKILL))
        if let parent = getenv("LPM_PARENT_PID").flatMap({ pid_t(String(cString: $0)) }), getppid() != parent { _exit(0) }
        try Sys.setNonBlocking(fd)
        reactor = try Reactor(backend: backend)
        flusher = ChannelFlusher(reactor: reactor)
        channel = Channel(fd: fd, reactor: reactor, flusher: flusher, maxPayload: maxPayload)
        channel.onFrame = { [unowned self] header, payload in self.frame(header, payload) }
        channel.onEnd = { [unowned self] end in
            switch end {
            case .endOfFile: self.exit(code: 0)  // the supervisor is gone
            case .violation(let v): self.violation(v.reason)
            case .failed: self.exit(code: 74)  // EX_IOERR
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
            _ = text.withCString { CLoop.write(2, $0, strlen($0)) }
            _exit(64)
        }
    }

    /// Sets the handler for requests. Runs on the reactor thread for each request; answer with
    /// ``Request/respond(_:)-([UInt8])``, ``Request/ack()`` or ``Request/fail(_:)``, now or later.
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
        channel.send(.ready)
        if softKillRequested { maybeFinishSoftKill() }
    }

    /// Tells the supervisor to send no new requests until the next ``ready()``. Requests already
    /// sent may still arrive and should be handled.
    public func busy() {
        guard state != .busy else { return }
        state = .busy
        channel.send(.busy)
    }

    /// The requests received and not yet answered.
    public func requests() -> [Request] {
        Array(inFlight.values)
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
    public func run() -> Never {
        while true {
            do { try reactor.run() } catch { exit(code: 70) }
        }
    }

    // MARK: Frames

    private func frame(_ h: FrameHeader, _ payload: UnsafeRawBufferPointer) {
        switch h.type {
        case .request:
            guard payload.count >= 24 else { return violation("request frame shorter than its 24-byte prefix") }
            var uuid = RequestID.zero
            withUnsafeMutableBytes(of: &uuid.bytes) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: payload[0..<16])) }
            let createdAt = payload.readLittleEndian(at: 16, as: UInt64.self)
            let request = Request(worker: self, wireID: h.id, id: uuid, createdAt: createdAt,
                                  data: Array(UnsafeRawBufferPointer(rebasing: payload[24...])))
            if h.flags.contains(.descriptor) {
                guard let fd = channel.takeDescriptor() else { return violation("a request announced a descriptor that did not arrive") }
                if h.flags.contains(.stream) {
                    request.stream = StreamReader(fd: fd, reactor: reactor)
                } else {
                    request.socket = fd
                }
            }
            inFlight[h.id] = request
            requestHandler(request)
        case .event, .broadcast:
            guard let (name, data) = EventPayload.decode(payload) else { return violation("malformed event frame") }
            var socket: CInt?
            if h.flags.contains(.descriptor) {
                guard let fd = channel.takeDescriptor() else { return violation("an event announced a descriptor that did not arrive") }
                socket = fd
            }
            let event = Event(name: name, data: data, replyID: h.type == .event ? h.id : 0, channel: channel, socket: socket)
            eventHandlers[name]?(event)
        case .eventReply:
            pendingReplies.removeValue(forKey: h.id)?(Array(payload))
        case .healthRequest:
            let m = mallinfo2()
            channel.send(.healthReport, id: h.id, length: 16) { out in
                out.appendLittleEndian(UInt64(m.arena + m.hblkhd))
                out.appendLittleEndian(UInt64(m.uordblks + m.hblkhd))
            }
        case .softKill:
            softKillRequested = true
            maybeFinishSoftKill()
        case .hardKill:
            hardKillHandler?()
            exit(code: 0)
        case .cancel:
            if let r = inFlight.removeValue(forKey: h.id) {
                r.isCancelled = true
                r.onCancel?()
            }
        case .ping:
            channel.send(.pong, id: h.id)
        case .pong:
            break
        case .ready, .busy, .response, .ack, .error, .healthReport, .socketClosed, .streamEnd:
            violation("unexpected frame \(h.type) from the supervisor")
        }
    }

    private func violation(_ reason: String) {
        let text = "worker \(getpid()): protocol violation from the supervisor: \(reason)\n"
        _ = text.withCString { CLoop.write(2, $0, strlen($0)) }
        exit(code: 76)
    }

    fileprivate func finish(_ request: Request, _ type: FrameType, _ data: [UInt8]) {
        guard !request.answered, inFlight[request.wireID] != nil else { return }
        request.answered = true
        inFlight[request.wireID] = nil
        if data.count > channel.maxPayload {
            // The supervisor would take a frame this large as a protocol violation and kill this
            // worker: fail the request instead, saying why.
            let message = "the response of \(data.count) bytes exceeds the largest frame (\(channel.maxPayload) bytes)"
            channel.send(.error, id: request.wireID, payload: Array(message.utf8))
        } else {
            channel.send(type, id: request.wireID, payload: data)
        }
        if softKillRequested { maybeFinishSoftKill() }
    }

    /// Answers with `data` and a stream: the request stays in flight until the stream ends.
    fileprivate func finishStreaming(_ request: Request, _ data: [UInt8]) -> OutputStream? {
        guard !request.answered, inFlight[request.wireID] != nil else { return nil }
        let pair: DescriptorPair
        do { pair = try Sys.pipe(flags: O_NONBLOCK) } catch {
            finish(request, .error, Array("could not create the response stream: \(error)".utf8))
            return nil
        }
        request.answered = true
        let readEnd = pair.first.release(), writeEnd = pair.second.release()
        channel.send(.response, id: request.wireID, flags: .stream, passing: readEnd, payload: data)
        let wireID = request.wireID
        return OutputStream(writer: StreamWriter(fd: writeEnd, reactor: reactor)) { [unowned self] count, ok in
            self.channel.send(.streamEnd, id: wireID, length: 9) { out in
                out.appendLittleEndian(UInt64(count))
                out.append(ok ? 0 : 1)
            }
            self.inFlight[wireID] = nil
            if self.softKillRequested { self.maybeFinishSoftKill() }
        }
    }

    fileprivate func socketClosed(_ request: Request) {
        channel.send(.socketClosed, id: request.wireID)
    }

    private func maybeFinishSoftKill() {
        guard inFlight.isEmpty, !softKillRunning, state != .busy else { return }
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

/// A worker-side failure to start.
public struct WorkerError: Error, CustomStringConvertible, Sendable {
    /// What went wrong.
    public let description: String
    init(_ d: String) { description = d }
}

/// A request received from the supervisor. Answer it exactly once; later answers are ignored.
public final class Request {
    private unowned let worker: Worker
    let wireID: UInt64
    /// The request's id, a UUID (version 4) assigned by the supervisor.
    public let id: RequestID
    /// When the supervisor accepted it: nanoseconds on the supervisor's monotonic clock
    /// (`CLOCK_MONOTONIC`, shared by all processes of the machine).
    public let createdAt: UInt64
    /// The request's payload.
    public let data: [UInt8]
    /// Whether the supervisor cancelled it (it timed out there); answers are then dropped.
    public fileprivate(set) var isCancelled = false
    /// Called if the supervisor cancels the request.
    public var onCancel: (() -> Void)?
    fileprivate var answered = false
    /// The stream sent with the request, if any: read it with ``StreamReader/resume()`` and its
    /// callbacks, or ``StreamReader/readAll(_:)``. End of file marks its end.
    public fileprivate(set) var stream: StreamReader?
    /// The socket (or other descriptor) sent with the request, if any. The worker owns it:
    /// close it with ``closeSocket()`` so the supervisor knows this worker handles one fewer.
    public fileprivate(set) var socket: CInt?
    /// Whether a stream accompanies the request.
    public var hasStream: Bool { stream != nil }
    /// Whether a socket accompanies the request.
    public var hasSocket: Bool { socket != nil }

    init(worker: Worker, wireID: UInt64, id: RequestID, createdAt: UInt64, data: [UInt8]) {
        self.worker = worker
        self.wireID = wireID
        self.id = id
        self.createdAt = createdAt
        self.data = data
    }

    /// Answers with `data`.
    public func respond(_ data: [UInt8]) { worker.finish(self, .response, data) }

    /// Answers with `data` and a stream of bytes: write them to the returned stream, then call
    /// ``OutputStream/finish()``. The request counts as in flight until the stream is finished.
    /// Returns `nil` if the request was already answered.
    public func respondWithStream(_ data: [UInt8] = []) -> OutputStream? { worker.finishStreaming(self, data) }

    /// Answers with `data` and streams everything readable from `fd` (a file, a pipe, a socket;
    /// the worker takes ownership and closes it) to the caller.
    public func respond(_ data: [UInt8], stream fd: CInt) {
        guard let out = worker.finishStreaming(self, data) else { return FileDescriptor.closeRaw(fd) }
        let reader = StreamReader(fd: fd, reactor: worker.reactor)
        reader.onChunk = { chunk in
            out.write(chunk)
            if out.bufferedCount > 1 << 20 { reader.pause() }
        }
        out.onDrain = { reader.resume() }
        reader.onEnd = { error in if error == nil { out.finish() } else { out.fail() } }
        reader.resume()
    }

    /// Closes the socket that came with the request and tells the supervisor.
    public func closeSocket() {
        guard let fd = socket else { return }
        socket = nil
        FileDescriptor.closeRaw(fd)
        worker.socketClosed(self)
    }

    /// Answers with a UTF-8 string.
    public func respond(_ text: String) { worker.finish(self, .response, Array(text.utf8)) }

    /// Acknowledges the request without data: the caller gets an empty response.
    public func ack() { worker.finish(self, .ack, []) }

    /// Fails the request: the caller gets a `workerError` with this message.
    public func fail(_ message: String) { worker.finish(self, .error, Array(message.utf8)) }
}

/// A custom event or broadcast from the supervisor.
public struct Event {
    /// The event's name.
    public let name: String
    /// Its payload.
    public let data: [UInt8]
    let replyID: UInt64
    let channel: Channel
    /// The descriptor broadcast with the event (a listening socket, say), if any; the worker owns it.
    public let socket: CInt?

    /// Whether the supervisor waits for a reply.
    public var wantsReply: Bool { replyID != 0 }

    /// Replies to the supervisor (ignored unless it asked for a reply).
    public func reply(_ data: [UInt8]) {
        guard replyID != 0 else { return }
        channel.send(.eventReply, id: replyID, payload: data)
    }
}

/// The byte stream of a streamed response (``Request/respondWithStream(_:)``).
public final class OutputStream {
    private let writer: StreamWriter
    private var done: ((Int, Bool) -> Void)?

    init(writer: StreamWriter, done: @escaping (Int, Bool) -> Void) {
        self.writer = writer
        self.done = done
        // Strong references until the stream ends (then ``end(ok:)`` drops them): the stream
        // lives as long as it is being written, whoever else holds it.
        writer.onError = { _ in self.end(ok: false) }
    }

    /// Called when everything written so far has gone to the kernel: write more then.
    public var onDrain: () -> Void {
        get { writer.onDrain }
        set { writer.onDrain = newValue }
    }

    /// Bytes written and not yet taken by the kernel (the caller reads slowly: back-pressure).
    public var bufferedCount: Int { writer.bufferedCount }

    /// Whether the caller went away (the stream can no longer be written).
    public var isBroken: Bool { writer.error != nil }

    /// Writes bytes to the stream.
    public func write(_ bytes: [UInt8]) { writer.write(bytes) }

    /// Ends the stream once everything is written; the caller sees it complete.
    public func finish() {
        writer.finish { error in self.end(ok: error == nil) }
    }

    /// Ends the stream as failed: the caller's stream throws.
    public func fail() {
        writer.close()
        end(ok: false)
    }

    private func end(ok: Bool) {
        guard let d = done else { return }
        done = nil
        writer.onError = { _ in }
        writer.onDrain = {}
        d(writer.count, ok)
    }
}
