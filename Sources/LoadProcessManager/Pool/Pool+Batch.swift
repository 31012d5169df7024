import Glibc
import LPMReactor
import LPMWire

extension Pool {
    /// The answers of a batch, one per item, in the items' order.
    typealias BatchCompletion = @Sendable (BatchResults) -> Void

    /// Whether some worker takes batched requests now, or may once it is ready (one is starting).
    var batchesCanBeServed: Bool {
        slots.contains { slot in
            guard let w = slot.process, slot.membership == .active else { return false }
            return w.capabilities.contains(.batches) || w.lifecycle == .starting
        }
    }

    /// Takes a batch of `count` requests, `body` in the layout of ``Batch`` (count, then items):
    /// sent as one frame to a worker that takes batches (retries and the timeout then apply to
    /// the batch as a whole), or, when no worker announced that it does, as `count` requests of
    /// their own. `completion` gets one answer per item, in order, once all are answered.
    func enqueueBatch(_ body: [UInt8], count: Int, _ options: RequestOptions, submission: UInt64 = 0,
                      _ completion: @escaping BatchCompletion) {
        let takesBatches = slots.contains { $0.process?.capabilities.contains(.batches) == true }
        guard takesBatches else {
            if submission != 0 { enqueueAsRefused(submission) }
            return fanOut(body, count: count, options, completion)
        }
        enqueue(body, options, .handler { result in completion(BatchResults(result, count: count)) },
                isBatch: true, submission: submission)
    }

    /// A submission that became several requests: its number is recorded as refused (its own
    /// handle cannot cancel the parts).
    private func enqueueAsRefused(_ submission: UInt64) {
        submissions.admitted(submission, at: .max, pendingCount: table.pendingCount) { table.isSubmission($0, $1) }
    }

    /// The batch as requests of their own, joined into one completion.
    private func fanOut(_ body: [UInt8], count: Int, _ options: RequestOptions, _ completion: @escaping BatchCompletion) {
        var items: [[UInt8]] = []
        items.reserveCapacity(count)
        let parsed = body.withUnsafeBytes { Batch.items($0) { _, bytes in items.append(Array(bytes)) } }
        guard parsed == count, count > 0 else {
            let error = SupervisorError(.invalidArgument, "malformed batch of \(count) requests")
            outbox.push(.call { completion(BatchResults(failure: error, count: max(count, 0))) })
            return deliver()
        }
        let join = BatchJoin(count: count, completion)
        for (i, item) in items.enumerated() {
            enqueue(item, options, .handler { join.set(i, $0) })
        }
    }
}

/// The answers of a batch sent as separate requests, gathered until the last one arrives.
/// `@unchecked Sendable`: only touched on the reactor thread (the completions of the parts).
private final class BatchJoin: @unchecked Sendable {
    private var results: [Result<WorkerResponse, SupervisorError>?]
    private var left: Int
    private let completion: Pool.BatchCompletion

    init(count: Int, _ completion: @escaping Pool.BatchCompletion) {
        results = Array(repeating: nil, count: count)
        left = count
        self.completion = completion
    }

    func set(_ i: Int, _ result: Result<WorkerResponse, SupervisorError>) {
        guard results[i] == nil else { return }
        results[i] = result
        left -= 1
        if left == 0 { completion(BatchResults(results.map { $0! })) }
    }
}

/// The answers of a batch, one per item, in the items' order: the worker's batched response kept
/// whole (each answer is decoded only when it is read, on the reader's thread), one error for
/// every item, or results of their own (a batch sent as separate requests).
struct BatchResults: Sendable {
    fileprivate enum Storage: Sendable {
        case answers(WorkerResponse)
        case failure(SupervisorError)
        case each([Result<WorkerResponse, SupervisorError>])
    }

    fileprivate let storage: Storage
    /// The number of results, one per item.
    let count: Int

    /// The answers of a batch of `count` items from the pool's answer to it.
    init(_ result: Result<WorkerResponse, SupervisorError>, count: Int) {
        switch result {
        case .failure(let error): storage = .failure(error)
        case .success(let response): storage = .answers(response)
        }
        self.count = count
    }

    /// `error` for each of `count` items.
    init(failure error: SupervisorError, count: Int) {
        storage = .failure(error)
        self.count = count
    }

    /// Results already made.
    init(_ results: [Result<WorkerResponse, SupervisorError>]) {
        storage = .each(results)
        count = results.count
    }

    /// Every result, in order.
    func all() -> [Result<MapResponse, SupervisorError>] {
        var reader = BatchReader(self)
        var out: [Result<MapResponse, SupervisorError>] = []
        out.reserveCapacity(count)
        while let r = reader.next() { out.append(r) }
        return out
    }
}

/// Reads the results of a ``BatchResults`` in order, decoding each answer as it is read: a
/// response is a view of the batched answer's payload (no copy).
struct BatchReader {
    /// The batched answer's payload and what its answers share, when the batch has one.
    private var payload = ResponseBytes()
    /// Where each answer ends in `payload`, times 2, plus 1 for a failure: found in one walk of
    /// the payload when the reader is made, so that reading an answer is a load, not a decode.
    private var ends: [Int] = []
    private var id = RequestID.zero
    private var createdAt: UInt64 = 0
    private var workerPID: pid_t = 0
    private var attempts = 0
    private var error: SupervisorError?
    private var each: [Result<WorkerResponse, SupervisorError>] = []
    private let count: Int
    private var index = 0
    /// Where the next answer starts in the payload (after the u32 count).
    private var offset = 4

    init(_ results: BatchResults) {
        count = results.count
        switch results.storage {
        case .answers(let r):
            payload = r.bytes
            id = r.id
            createdAt = r.createdAt
            workerPID = r.workerPID
            attempts = r.attempts
            ends = Self.ends(of: r.bytes, count: count)
            if ends.count < count {
                // The pool checked the whole answer before accepting it (one per item, each
                // inside the payload): this is only a guard. The items from the first that does
                // not fit get the error.
                error = SupervisorError(.protocolViolation, "malformed batched answer from worker \(r.workerPID)")
            }
        case .failure(let e): error = e
        case .each(let a): each = a
        }
    }

    /// No results.
    init() {
        count = 0
    }

    /// The ends of the first `count` answers of a batched response's payload (fewer if one does
    /// not fit in it), as ``ends`` holds them.
    private static func ends(of payload: ResponseBytes, count: Int) -> [Int] {
        [Int](unsafeUninitializedCapacity: count) { ends, found in
            payload.withUnsafeBytes { p in
                var at = 4
                while found < count, let answer = Batch.answer(in: p, at: at) {
                    ends.initializeElement(at: found, to: answer.next << 1 | (answer.ok ? 0 : 1))
                    found += 1
                    at = answer.next
                }
            }
        }
    }

    /// The results not yet read.
    var remaining: Int { count - index }

    /// The next result, `nil` after the last.
    @inline(__always)
    mutating func next() -> Result<MapResponse, SupervisorError>? {
        guard index < count else { return nil }
        let i = index
        index = i + 1
        if _fastPath(i < ends.count) {
            let e = ends[i], start = offset + 5, end = e >> 1
            offset = end
            let bytes = payload.view(start, end)
            if e & 1 == 0 {
                return .success(MapResponse(bytes: bytes, id: id, createdAt: createdAt, workerPID: workerPID, attempts: attempts))
            }
            return .failure(SupervisorError(.workerError, bytes.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }, requestID: id,
                                            workerPID: workerPID, attempts: attempts))
        }
        if let error { return .failure(error) }
        return each[i].map { MapResponse($0) }
    }
}
