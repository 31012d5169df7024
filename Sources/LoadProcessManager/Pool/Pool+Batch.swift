import LPMReactor
import LPMWire

extension Pool {
    /// The answers of a batch, one per item, in the items' order.
    typealias BatchCompletion = @Sendable ([Result<WorkerResponse, SupervisorError>]) -> Void

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
        enqueue(body, options, .handler { result in completion(Self.unbatch(result, count: count)) },
                isBatch: true, submission: submission)
    }

    /// The answers of a batch from the pool's answer to it: the worker's answers, or the batch's
    /// error for each item.
    private static func unbatch(_ result: Result<WorkerResponse, SupervisorError>, count: Int) -> [Result<WorkerResponse, SupervisorError>] {
        switch result {
        case .failure(let error):
            return Array(repeating: .failure(error), count: count)
        case .success(let r):
            var out: [Result<WorkerResponse, SupervisorError>] = []
            out.reserveCapacity(count)
            let parsed = r.data.withUnsafeBytes { payload in
                Batch.answers(payload) { _, ok, bytes in
                    if ok {
                        out.append(.success(WorkerResponse(data: Array(bytes), id: r.id, createdAt: r.createdAt, stream: nil,
                                                           workerPID: r.workerPID, attempts: r.attempts)))
                    } else {
                        out.append(.failure(SupervisorError(.workerError, String(decoding: bytes, as: UTF8.self), requestID: r.id,
                                                            workerPID: r.workerPID, attempts: r.attempts)))
                    }
                }
            }
            // The pool checked the answer before accepting it; this is only a guard.
            guard parsed == count else {
                return Array(repeating: .failure(SupervisorError(.protocolViolation, "malformed batched answer from worker \(r.workerPID)")), count: count)
            }
            return out
        }
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
            outbox.push(.call { completion(Array(repeating: .failure(error), count: max(count, 0))) })
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
        if left == 0 { completion(results.map { $0! }) }
    }
}
