import Glibc
import LPMReactor
import LPMWire

/// How ``Supervisor/map(_:options:)`` hands its inputs to the workers.
public struct MapOptions: Sendable {
    /// Inputs per request. With more than 1, a worker that takes batches (the Swift worker
    /// runtime does) gets `chunkSize` inputs in one frame, runs its request handler once per
    /// input and answers them in one frame: far fewer frames and table entries for tiny inputs.
    /// The timeout and the retries then apply to each chunk as a whole (a worker that dies with
    /// a chunk fails or retries all of it). A worker that does not take batches (one in another
    /// language that does not announce it) gets the chunk's inputs as requests of their own.
    /// Default 1: one request per input.
    public var chunkSize: Int
    /// Chunks sent and not yet read by the consumer, at most (the window that bounds memory:
    /// inputs are read only as results are consumed). Default 64.
    public var maxChunksInFlight: Int
    /// The timeout and retries of each request (each chunk).
    public var request: RequestOptions

    public init(chunkSize: Int = 1, maxChunksInFlight: Int = 64, request: RequestOptions = RequestOptions()) {
        self.chunkSize = chunkSize
        self.maxChunksInFlight = maxChunksInFlight
        self.request = request
    }
}

/// One answer of ``Supervisor/map(_:options:)``: the bytes a worker answered for one input.
///
/// A chunk's answers arrive in one buffer; each `MapResponse` is a view of it (``bytes``), so
/// reading a result neither allocates nor copies. ``data`` copies the bytes into an array of
/// their own (each time it is read): read ``bytes`` or ``text`` where a view will do. A result
/// kept keeps the buffer it was read into alive (see ``ResponseBytes``); keep ``data`` instead
/// to hold one answer for long.
/// A map's answers carry no stream (an item of a chunk cannot answer with one; a streamed
/// answer to an input sent as a request of its own is closed).
public struct MapResponse: Sendable {
    /// The answer's bytes, in the buffer of the chunk's answers; `bytes.count`, iteration and
    /// `withUnsafeBytes` are free.
    public let bytes: ResponseBytes
    /// The input's request id, a version 4 UUID (the chunk's: the inputs of a chunk share it).
    public let id: RequestID
    /// When the request was enqueued: nanoseconds on `CLOCK_MONOTONIC`.
    public let createdAt: UInt64
    /// The worker that answered.
    public let workerPID: pid_t
    /// How many attempts it took (1 unless retried; a chunk is retried whole).
    public let attempts: Int

    /// The bytes as an array of their own: a copy, made at each read.
    public var data: [UInt8] { Array(bytes) }
    /// The bytes as UTF-8 text.
    public var text: String { bytes.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }

    init(bytes: ResponseBytes, id: RequestID, createdAt: UInt64, workerPID: pid_t, attempts: Int) {
        self.bytes = bytes
        self.id = id
        self.createdAt = createdAt
        self.workerPID = workerPID
        self.attempts = attempts
    }

    /// The answer to an input sent as a request of its own.
    init(_ r: WorkerResponse) {
        self.init(bytes: r.bytes, id: r.id, createdAt: r.createdAt, workerPID: r.workerPID, attempts: r.attempts)
    }
}

extension Supervisor {
    /// Sends every input to the workers and returns their answers in the inputs' order: one
    /// `Result` per input, a response or the error that input got (a timeout, a worker exit...).
    ///
    /// ```swift
    /// for await result in supervisor.map(lines, options: MapOptions(chunkSize: 1000)) {
    ///     print(try result.get().text)
    /// }
    /// ```
    ///
    /// Inputs are read lazily, on the consuming task, as results are consumed: at most
    /// ``MapOptions/maxChunksInFlight`` chunks are outstanding. Cancelling the consuming task
    /// cancels the chunks outstanding (their inputs get `cancelled`) and ends the sequence after
    /// them; no further chunk is sent (the inputs of the chunk being filled may have been read,
    /// they are not sent). An invalid `chunkSize` or window (below 1) gives one `invalidArgument`
    /// result and ends the sequence.
    public func map<Inputs: Sequence>(_ inputs: Inputs, options: MapOptions = MapOptions()) -> MapResults<Inputs>
        where Inputs.Element == [UInt8] {
        MapResults(supervisor: self, inputs: inputs, options: options)
    }

    /// ``map(_:options:)`` with a completion: `completion` gets one result per input, in order,
    /// once every input is answered (on the reactor thread).
    public func map(_ inputs: [[UInt8]], options: MapOptions = MapOptions(),
                    completion: @escaping @Sendable ([Result<MapResponse, SupervisorError>]) -> Void) {
        guard options.chunkSize >= 1 else {
            let error = SupervisorError(.invalidArgument, "chunkSize must be at least 1, got \(options.chunkSize)")
            return CallerTrampoline.run { completion(Array(repeating: .failure(error), count: inputs.count)) }
        }
        guard !inputs.isEmpty else { return CallerTrampoline.run { completion([]) } }
        let chunks = stride(from: 0, to: inputs.count, by: options.chunkSize).map { $0..<min($0 + options.chunkSize, inputs.count) }
        let join = MapJoin(chunks: chunks.count, count: inputs.count, completion)
        let packer = ChunkPacker(capacity: options.chunkSize)
        for range in chunks {
            for item in inputs[range] { packer.add(item) }
            submitChunk(packer, options: options) { join.set(at: range.lowerBound, $0) }
        }
    }

    /// Sends the chunk `packer` holds (its items packed as a batch body; a chunk of one is sent
    /// as a plain request), and empties `packer` for the next; `completion` gets its results (on
    /// the reactor thread, or on this thread if the pool is gone). Returns what cancels it.
    @discardableResult
    func submitChunk(_ packer: ChunkPacker, options: MapOptions,
                     _ completion: @escaping Pool.BatchCompletion) -> RequestHandle {
        let count = packer.count
        if let single = packer.takeSingle() {
            return enqueue(single, options: options.request) { completion(BatchResults([$0])) }
        }
        guard let submission = box.submit(.batch(packer.take(), count, options.request, completion)) else {
            let error = SupervisorError(.shutDown, "the pool is stopped")
            CallerTrampoline.run { completion(BatchResults(failure: error, count: count)) }
            return RequestHandle(submission: 0, box: box)
        }
        return RequestHandle(submission: submission, box: box)
    }
}

/// The chunks of a completion-form map, gathered until the last. `@unchecked Sendable`: touched
/// only on the reactor thread (chunk completions), or on the caller's thread once the pool is
/// gone (then every chunk is refused there, in turn).
private final class MapJoin: @unchecked Sendable {
    private var results: [Result<MapResponse, SupervisorError>]
    private var left: Int
    private let completion: @Sendable ([Result<MapResponse, SupervisorError>]) -> Void

    init(chunks: Int, count: Int, _ completion: @escaping @Sendable ([Result<MapResponse, SupervisorError>]) -> Void) {
        results = Array(repeating: .failure(SupervisorError(.shutDown, "not answered")), count: count)
        left = chunks
        self.completion = completion
    }

    func set(at start: Int, _ answers: BatchResults) {
        var reader = BatchReader(answers)
        var i = start
        while let r = reader.next() {
            results[i] = r
            i += 1
        }
        left -= 1
        if left == 0 { completion(results) }
    }
}

/// The answers of ``Supervisor/map(_:options:)``, in the inputs' order.
///
/// Generic over the inputs only where it reads them (inlined into the caller, so specialized for
/// the sequence it is given); packing, sending and ordering are the supervisor's own code.
public struct MapResults<Inputs: Sequence>: AsyncSequence where Inputs.Element == [UInt8] {
    public typealias Element = Result<MapResponse, SupervisorError>
    public typealias Failure = Never

    @usableFromInline let supervisor: Supervisor
    @usableFromInline let inputs: Inputs
    @usableFromInline let options: MapOptions

    init(supervisor: Supervisor, inputs: Inputs, options: MapOptions) {
        self.supervisor = supervisor
        self.inputs = inputs
        self.options = options
    }

    @inlinable
    public func makeAsyncIterator() -> Iterator {
        Iterator(inputs: inputs.makeIterator(), core: MapCore(supervisor: supervisor, options: options))
    }

    /// Reads inputs as results are consumed, keeps at most `maxChunksInFlight` chunks out.
    public struct Iterator: AsyncIteratorProtocol {
        @usableFromInline var inputs: Inputs.Iterator
        @usableFromInline let core: MapCore

        @inlinable
        init(inputs: Inputs.Iterator, core: MapCore) {
            self.inputs = inputs
            self.core = core
        }

        @inlinable
        public mutating func next() async -> Element? {
            if let ready = core.nextReady() { return ready }
            while core.wantsInputs {
                guard let input = inputs.next() else {
                    core.endOfInputs()
                    break
                }
                core.add(input)
            }
            return await core.awaitNext()
        }
    }
}

/// The non-generic part of a map's iterator: packs inputs into chunks, sends them, and hands
/// out their results in order. Used by one task at a time (the iterator's); what it shares with
/// the chunks' completions is in its ``MapState``.
@usableFromInline
final class MapCore {
    let supervisor: Supervisor
    let options: MapOptions
    let state = MapState()
    var invalid: SupervisorError?
    var inputEnded = false
    /// Chunks sent, and the next to hand out.
    var sent = 0
    var next = 0
    /// The chunk being filled; emptied each time it is sent (its buffer kept).
    let packer: ChunkPacker
    /// The results of chunk `next - 1`, read as they are handed out.
    @exclusivity(unchecked) var ready = BatchReader()
    /// Whether the consumer was cancelled (seen once, then kept: no lock per input).
    var cancelled = false

    @usableFromInline
    init(supervisor: Supervisor, options: MapOptions) {
        self.supervisor = supervisor
        self.options = options
        packer = ChunkPacker(capacity: options.chunkSize)
        if options.chunkSize < 1 {
            invalid = SupervisorError(.invalidArgument, "chunkSize must be at least 1, got \(options.chunkSize)")
        } else if options.maxChunksInFlight < 1 {
            invalid = SupervisorError(.invalidArgument, "maxChunksInFlight must be at least 1, got \(options.maxChunksInFlight)")
        }
    }

    /// The next result already here, if any (or the error of invalid options, once).
    @usableFromInline
    func nextReady() -> Result<MapResponse, SupervisorError>? {
        if ready.remaining > 0 { return ready.next() }
        if let error = invalid {
            invalid = nil
            inputEnded = true
            return .failure(error)
        }
        return ready.next()
    }

    /// Whether another input may be read now: the inputs have not ended, the window has room,
    /// and the consumer was not cancelled.
    @usableFromInline
    var wantsInputs: Bool {
        guard !inputEnded && sent - next < options.maxChunksInFlight else { return false }
        // The state's flag is set only by this iterator's cancellation handler; it is read when
        // a chunk's results arrive (`awaitNext`), so here the task's own flag suffices, read
        // once a chunk (when it starts), not once an input.
        if cancelled || (packer.count == 0 && Task.isCancelled) {
            stopReading()
            return false
        }
        return true
    }

    /// The consumer was cancelled: no more inputs are read, and a partial chunk is not sent.
    private func stopReading() {
        cancelled = true
        inputEnded = true
        packer.reset()
    }

    @usableFromInline
    func add(_ input: [UInt8]) {
        packer.add(input)
        guard packer.count == options.chunkSize else { return }
        // Checked here and when a chunk starts (`wantsInputs`), not once an input.
        if Task.isCancelled { return stopReading() }
        sendChunk()
    }

    @usableFromInline
    func endOfInputs() {
        inputEnded = true
        if packer.count > 0 { sendChunk() }
    }

    private func sendChunk() {
        let chunk = sent
        let state = self.state
        sent += 1
        let handle = supervisor.submitChunk(packer, options: options) { state.deliver(chunk, $0) }
        state.sent(chunk, handle)
    }

    /// Waits for the next chunk in order and hands out its first result; `nil` once every chunk
    /// sent is handed out and no input is left.
    @usableFromInline
    func awaitNext() async -> Result<MapResponse, SupervisorError>? {
        if let ready = nextReady() { return ready }
        guard next < sent else { return nil }
        let chunk = next
        let state = self.state
        let results = await withTaskCancellationHandler {
            await withUnsafeContinuation { c in state.wait(for: chunk, c) }
        } onCancel: {
            state.cancelAll()
        }
        ready = BatchReader(results)
        next += 1
        if !cancelled && state.isCancelled { cancelled = true }
        return nextReady()
    }
}

/// Inputs packed as a batch body as they come (no array of inputs kept); a chunk of one input
/// keeps it as is, to go as a plain request. The body is built in a buffer of its own (a length
/// stored and the bytes copied per input, no array append) and becomes an array once, whole.
/// Used by one task at a time (the map's iterator, or the caller of the completion form).
final class ChunkPacker {
    /// The items so far, after 4 bytes that ``take()`` fills with the count: `used` bytes of
    /// `reserved`.
    @exclusivity(unchecked) private var body: UnsafeMutableRawPointer?
    @exclusivity(unchecked) private var reserved = 0
    @exclusivity(unchecked) private var used = 0
    @exclusivity(unchecked) private(set) var count = 0
    @exclusivity(unchecked) private(set) var single: [UInt8]?
    /// The inputs a chunk holds at most: the body is sized once, from its first two inputs.
    private let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
    }

    deinit { body?.deallocate() }

    func add(_ input: [UInt8]) {
        if count == 0 {
            single = input
        } else {
            if count == 1, let first = single {
                single = nil
                // Room for the chunk if its inputs are about the size of its first two (the
                // common case of same-sized inputs: no growth), within a bound.
                let guess = 4 + min(capacity, Batch.maxCount) * (4 + max(first.count, input.count))
                let want = max(min(guess, 1 << 22), 12 + first.count + input.count)
                // The buffer of the chunks before is kept, unless it is too small, or large
                // beyond what this one is likely to need.
                if reserved < want || reserved > max(want, 1 << 22) {
                    body?.deallocate()
                    body = nil
                    grow(to: want)
                }
                used = 4
                append(first)
            }
            append(input)
        }
        count += 1
    }

    /// The input of a chunk of one, which then empties; `nil` for any other count.
    func takeSingle() -> [UInt8]? {
        guard count == 1, let input = single else { return nil }
        reset()
        return input
    }

    /// The batch body (count, then items) of a chunk of two or more, which then empties (its
    /// buffer is kept for the next).
    func take() -> [UInt8] {
        guard let body, count > 1 else { return [] }
        body.storeBytes(of: UInt32(count).littleEndian, as: UInt32.self)
        let packed = Array(UnsafeRawBufferPointer(start: body, count: used))
        reset()
        return packed
    }

    /// Empties the chunk.
    func reset() {
        count = 0
        used = 0
        single = nil
    }

    @inline(__always)
    private func append(_ input: [UInt8]) {
        let n = input.count
        let end = used + 4 + n
        if end > reserved { grow(to: max(end, 2 * reserved)) }
        let at = body! + used
        at.storeBytes(of: UInt32(truncatingIfNeeded: n).littleEndian, as: UInt32.self)
        if n > 0 { input.withUnsafeBytes { (at + 4).copyMemory(from: $0.baseAddress!, byteCount: n) } }
        used = end
    }

    private func grow(to size: Int) {
        let bigger = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        if let body {
            bigger.copyMemory(from: body, byteCount: used)
            body.deallocate()
        }
        body = bigger
        reserved = size
    }
}

extension MapResults: Sendable where Inputs: Sendable {}

/// What a map's iterator shares with its chunks' completions. `@unchecked Sendable`: every field
/// is guarded by `lock`.
final class MapState: @unchecked Sendable {
    private let lock = ThreadLock()
    private var done: [Int: BatchResults] = [:]
    private var waiter: (chunk: Int, continuation: UnsafeContinuation<BatchResults, Never>)?
    private var outstanding: [Int: RequestHandle] = [:]
    private var cancelled = false

    var isCancelled: Bool { lock.withLock { cancelled } }

    /// Chunk `chunk` was sent: `handle` cancels it until it is answered.
    func sent(_ chunk: Int, _ handle: RequestHandle) {
        let cancelNow: Bool = lock.withLock {
            guard done[chunk] == nil else { return false }  // already answered (refused at once)
            outstanding[chunk] = handle
            return cancelled
        }
        if cancelNow { handle.cancel() }
    }

    func deliver(_ chunk: Int, _ results: BatchResults) {
        let resume: UnsafeContinuation<BatchResults, Never>? = lock.withLock {
            outstanding[chunk] = nil
            if let w = waiter, w.chunk == chunk {
                waiter = nil
                return w.continuation
            }
            done[chunk] = results
            return nil
        }
        resume?.resume(returning: results)
    }

    func wait(for chunk: Int, _ c: UnsafeContinuation<BatchResults, Never>) {
        let ready: BatchResults? = lock.withLock {
            if let r = done.removeValue(forKey: chunk) { return r }
            waiter = (chunk, c)
            return nil
        }
        if let ready { c.resume(returning: ready) }
    }

    /// Cancels every chunk outstanding, and those sent later; each still gets its results.
    func cancelAll() {
        let handles: [RequestHandle] = lock.withLock {
            cancelled = true
            return Array(outstanding.values)
        }
        for h in handles { h.cancel() }
    }
}
