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
    /// Inputs are read lazily, as results are consumed: at most
    /// ``MapOptions/maxChunksInFlight`` chunks are outstanding. Cancelling the consuming task
    /// cancels the chunks outstanding (their inputs get `cancelled`) and ends the sequence after
    /// them; inputs not yet sent are not read. An invalid `chunkSize` or window (below 1) gives
    /// one `invalidArgument` result and ends the sequence.
    public func map<Inputs: Sequence & Sendable>(_ inputs: Inputs, options: MapOptions = MapOptions()) -> MapResults<Inputs>
        where Inputs.Element == [UInt8] {
        MapResults(supervisor: self, inputs: inputs, options: options)
    }

    /// ``map(_:options:)`` with a completion: `completion` gets one result per input, in order,
    /// once every input is answered (on the reactor thread).
    public func map(_ inputs: [[UInt8]], options: MapOptions = MapOptions(),
                    completion: @escaping @Sendable ([Result<WorkerResponse, SupervisorError>]) -> Void) {
        guard options.chunkSize >= 1 else {
            let error = SupervisorError(.invalidArgument, "chunkSize must be at least 1, got \(options.chunkSize)")
            return CallerTrampoline.run { completion(Array(repeating: .failure(error), count: inputs.count)) }
        }
        guard !inputs.isEmpty else { return CallerTrampoline.run { completion([]) } }
        let chunks = stride(from: 0, to: inputs.count, by: options.chunkSize).map { $0..<min($0 + options.chunkSize, inputs.count) }
        let join = MapJoin(chunks: chunks.count, count: inputs.count, completion)
        for (k, range) in chunks.enumerated() {
            submitChunk(inputs[range], options: options) { join.set(k, at: range.lowerBound, $0) }
        }
    }

    /// Sends one chunk; `completion` gets its results (on the reactor thread, or on this thread
    /// if the pool is gone). Returns what cancels it.
    @discardableResult
    func submitChunk<C: Collection>(_ items: C, options: MapOptions,
                                    _ completion: @escaping Pool.BatchCompletion) -> RequestHandle where C.Element == [UInt8] {
        if items.count == 1, let only = items.first {
            return enqueue(only, options: options.request) { completion([$0]) }
        }
        let count = items.count
        guard let submission = box.submit(.batch(Batch.encodeItems(items), count, options.request, completion)) else {
            let error = SupervisorError(.shutDown, "the pool is stopped")
            CallerTrampoline.run { completion(Array(repeating: .failure(error), count: count)) }
            return RequestHandle(submission: 0, box: box)
        }
        return RequestHandle(submission: submission, box: box)
    }
}

/// The chunks of a completion-form map, gathered until the last. `@unchecked Sendable`: touched
/// only on the reactor thread (chunk completions), or on the caller's thread once the pool is
/// gone (then every chunk is refused there, in turn).
private final class MapJoin: @unchecked Sendable {
    private var results: [Result<WorkerResponse, SupervisorError>]
    private var left: Int
    private let completion: @Sendable ([Result<WorkerResponse, SupervisorError>]) -> Void

    init(chunks: Int, count: Int, _ completion: @escaping @Sendable ([Result<WorkerResponse, SupervisorError>]) -> Void) {
        results = Array(repeating: .failure(SupervisorError(.shutDown, "not answered")), count: count)
        left = chunks
        self.completion = completion
    }

    func set(_ chunk: Int, at start: Int, _ answers: [Result<WorkerResponse, SupervisorError>]) {
        for (i, r) in answers.enumerated() { results[start + i] = r }
        left -= 1
        if left == 0 { completion(results) }
    }
}

/// The answers of ``Supervisor/map(_:options:)``, in the inputs' order.
public struct MapResults<Inputs: Sequence & Sendable>: AsyncSequence, Sendable where Inputs.Element == [UInt8] {
    public typealias Element = Result<WorkerResponse, SupervisorError>
    public typealias Failure = Never

    let supervisor: Supervisor
    let inputs: Inputs
    let options: MapOptions

    public func makeAsyncIterator() -> Iterator {
        Iterator(supervisor: supervisor, inputs: inputs.makeIterator(), options: options)
    }

    /// Reads inputs as results are consumed, keeps at most `maxChunksInFlight` chunks out.
    public struct Iterator: AsyncIteratorProtocol {
        let supervisor: Supervisor
        var inputs: Inputs.Iterator
        let options: MapOptions
        let state = MapState()
        var inputEnded = false
        /// Chunks sent, and the next to hand out.
        var sent = 0
        var next = 0
        var ready: [Element] = []
        var readyIndex = 0
        var invalid: SupervisorError?

        init(supervisor: Supervisor, inputs: Inputs.Iterator, options: MapOptions) {
            self.supervisor = supervisor
            self.inputs = inputs
            self.options = options
            if options.chunkSize < 1 {
                invalid = SupervisorError(.invalidArgument, "chunkSize must be at least 1, got \(options.chunkSize)")
            } else if options.maxChunksInFlight < 1 {
                invalid = SupervisorError(.invalidArgument, "maxChunksInFlight must be at least 1, got \(options.maxChunksInFlight)")
            }
        }

        public mutating func next() async -> Element? {
            if let error = invalid {
                invalid = nil
                inputEnded = true
                return .failure(error)
            }
            if readyIndex < ready.count {
                readyIndex += 1
                return ready[readyIndex - 1]
            }
            topUp()
            guard next < sent else { return nil }
            let chunk = next
            let state = self.state
            ready = await withTaskCancellationHandler {
                await withUnsafeContinuation { c in state.wait(for: chunk, c) }
            } onCancel: {
                state.cancelAll()
            }
            next += 1
            readyIndex = 1
            return ready.first
        }

        /// Sends chunks until the window is full or the inputs end (none once cancelled).
        private mutating func topUp() {
            while !inputEnded && sent - next < options.maxChunksInFlight {
                if Task.isCancelled || state.isCancelled { inputEnded = true; break }
                var items: [[UInt8]] = []
                items.reserveCapacity(options.chunkSize)
                while items.count < options.chunkSize, let input = inputs.next() { items.append(input) }
                if items.count < options.chunkSize { inputEnded = true }
                guard !items.isEmpty else { break }
                let chunk = sent
                let state = self.state
                sent += 1
                let handle = supervisor.submitChunk(items, options: options) { state.deliver(chunk, $0) }
                state.sent(chunk, handle)
            }
        }
    }
}

/// What a map's iterator shares with its chunks' completions. `@unchecked Sendable`: every field
/// is guarded by `lock`.
final class MapState: @unchecked Sendable {
    private let lock = ThreadLock()
    private var done: [Int: [Result<WorkerResponse, SupervisorError>]] = [:]
    private var waiter: (chunk: Int, continuation: UnsafeContinuation<[Result<WorkerResponse, SupervisorError>], Never>)?
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

    func deliver(_ chunk: Int, _ results: [Result<WorkerResponse, SupervisorError>]) {
        let resume: UnsafeContinuation<[Result<WorkerResponse, SupervisorError>], Never>? = lock.withLock {
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

    func wait(for chunk: Int, _ c: UnsafeContinuation<[Result<WorkerResponse, SupervisorError>], Never>) {
        let ready: [Result<WorkerResponse, SupervisorError>]? = lock.withLock {
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
