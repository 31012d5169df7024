import Glibc
import LPMReactor
import LPMWire

/// The reactor-side state of a response stream: reads the worker's pipe only while the caller
/// asks for more (so a slow reader slows the worker: back-pressure), and ends the stream only
/// when the worker confirms it complete (`streamEnd`) with the same byte count. A worker that
/// dies first makes the stream fail, never end as if complete.
final class ResponseStreamCore {
    typealias Waiter = UnsafeContinuation<Result<[UInt8]?, SupervisorError>, Never>
    let requestID: RequestID
    let workerPID: pid_t
    private let reader: StreamReader
    private var chunks: [[UInt8]] = []
    private var endOfFile = false
    private var end: (count: Int, ok: Bool)?
    private var failure: SupervisorError?
    private var waiter: Waiter?
    private var done = false
    /// Called once when the pool has nothing more to do for this stream (read to its end,
    /// failed, or cancelled): a soft kill waits for the streams still being read.
    var onFinished: (() -> Void)?

    init(fd: CInt, reactor: Reactor, workerPID: pid_t, requestID: RequestID) {
        self.requestID = requestID
        self.workerPID = workerPID
        reader = StreamReader(fd: fd, reactor: reactor)
        reader.onChunk = { [unowned self] chunk in
            self.chunks.append(chunk)
            self.reader.pause()
            self.deliver()
        }
        reader.onEnd = { [unowned self] error in
            self.endOfFile = true
            if let error, self.failure == nil {
                self.failure = SupervisorError(.streamFailed, "reading the response stream of worker \(self.workerPID) failed: \(error)",
                                               requestID: self.requestID, workerPID: self.workerPID)
            }
            self.deliver()
        }
    }

    /// A stream dropped after its reactor closed (its cancel job was refused) is freed on the
    /// caller's thread: its descriptor is closed here. The reader is not registered then (it is
    /// only while a call to `next` waits, and that call holds the stream).
    deinit { reader.close() }

    /// The caller wants the next chunk.
    func next(_ w: Waiter) {
        precondition(waiter == nil, "a response stream is iterated by one task at a time")
        waiter = w
        deliver()
        if waiter != nil && !endOfFile && failure == nil { reader.resume() }
    }

    /// The worker says the stream is complete (`ok`) or broken.
    func markEnd(count: Int, ok: Bool) {
        end = (count, ok)
        deliver()
    }

    /// The worker died before the stream ended.
    func fail(_ e: SupervisorError) {
        guard end == nil, failure == nil, !done else { return }
        abandon(e)
    }

    /// The caller gave up: close our end (the worker sees EPIPE).
    func cancel() {
        abandon(SupervisorError(.cancelled, "the response stream was cancelled", requestID: requestID, workerPID: workerPID))
    }

    /// Stops the stream with `e` (unless it already failed), whatever the worker said: the
    /// caller gets the chunks already read, then `e`.
    func abandon(_ e: SupervisorError) {
        guard !done else { return }
        if failure == nil { failure = e }
        reader.close()
        deliver()
        released()
    }

    private func released() {
        let f = onFinished
        onFinished = nil
        f?()
    }

    private func deliver() {
        guard let w = waiter else { return }
        if !chunks.isEmpty {
            waiter = nil
            return w.resume(returning: .success(chunks.removeFirst()))
        }
        if let failure { return finish(w, .failure(failure)) }
        if endOfFile, let end {
            if end.ok && end.count == reader.count { return finish(w, .success(nil)) }
            return finish(w, .failure(SupervisorError(
                .streamFailed,
                end.ok ? "the response stream of worker \(workerPID) ended after \(reader.count) of \(end.count) bytes"
                       : "worker \(workerPID) failed to produce its response stream",
                requestID: requestID, workerPID: workerPID)))
        }
        // End of file without the worker's confirmation yet: wait for it, or for its exit.
    }

    /// The stream's last answer: the reader is closed (already, unless a failure came first)
    /// and drops its closures.
    private func finish(_ w: Waiter, _ result: Result<[UInt8]?, SupervisorError>) {
        waiter = nil
        done = true
        reader.close()
        reader.onChunk = { _ in }
        reader.onEnd = { _ in }
        w.resume(returning: result)
        released()
    }
}

/// The bytes a worker streams back with its response, as an `AsyncSequence` of chunks.
///
/// Iterate it once. It reads from the worker only as fast as you consume it. It ends when the
/// worker has finished the stream and every byte has been read; it throws a
/// ``SupervisorError`` (`streamFailed`) if the worker dies or fails first. Dropping it before
/// the end cancels it (the worker's writes then fail).
public final class ResponseStream: AsyncSequence, Sendable {
    public typealias Element = [UInt8]
    public typealias Failure = SupervisorError

    /// `@unchecked Sendable`: `core` is used only in jobs on the reactor thread.
    final class Box: @unchecked Sendable {
        let core: ResponseStreamCore
        init(_ core: ResponseStreamCore) { self.core = core }
    }

    private let box: Box
    private let reactor: Reactor.Handle

    init(core: ResponseStreamCore, reactor: Reactor.Handle) {
        box = Box(core)
        self.reactor = reactor
    }

    deinit {
        let box = self.box
        reactor.execute { _ in box.core.cancel() }
    }

    /// Reads the next chunk; `nil` at the confirmed end; throws if the stream broke.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let stream: ResponseStream

        /// Cancelling the calling task cancels the stream: this call and every later one throw
        /// `cancelled`, and the worker's writes then fail.
        public mutating func next() async throws(SupervisorError) -> [UInt8]? {
            let stream = self.stream
            let box = stream.box
            let reactor = stream.reactor
            let result: Result<[UInt8]?, SupervisorError> = await withTaskCancellationHandler {
                await withUnsafeContinuation { c in
                    let ok = reactor.execute { _ in box.core.next(c) }
                    if !ok { c.resume(returning: .failure(SupervisorError(.shutDown, "the pool's reactor is stopped"))) }
                }
            } onCancel: {
                stream.cancel()
            }
            return try result.get()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(stream: self) }

    /// Reads the whole stream into memory.
    public func collect() async throws(SupervisorError) -> [UInt8] {
        var all: [UInt8] = []
        var it = makeAsyncIterator()
        while let chunk = try await it.next() { all.append(contentsOf: chunk) }
        return all
    }

    /// Stops reading; the stream then throws `cancelled`.
    public func cancel() {
        let box = self.box
        reactor.execute { _ in box.core.cancel() }
    }
}
