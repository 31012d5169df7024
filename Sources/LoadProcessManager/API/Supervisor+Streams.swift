import Glibc
import LPMReactor
import LPMWire

extension Supervisor {
    // MARK: Sockets and streams

    /// Queues a request that hands `socket` (an accepted connection, or any descriptor) to a
    /// worker: the one handling the fewest sockets, then the least loaded. The supervisor takes
    /// ownership of `socket` and closes its copy once sent (or when the request fails before).
    /// A socket request is not retried once sent: the socket is the worker's.
    public func enqueue(_ payload: [UInt8], socket: CInt, options: RequestOptions = RequestOptions(),
                        completion: @escaping @Sendable (Result<WorkerResponse, SupervisorError>) -> Void) {
        let ok = onLoop { pool in pool.enqueue(payload, options, .handler(completion), descriptor: socket) }
        if !ok {
            FileDescriptor.closeRaw(socket)
            CallerTrampoline.run { completion(.failure(SupervisorError(.shutDown, "the pool is stopped"))) }
        }
    }

    /// ``enqueue(_:socket:options:completion:)``, waiting for the answer.
    public func enqueue(_ payload: [UInt8], socket: CInt, options: RequestOptions = RequestOptions()) async throws(SupervisorError) -> WorkerResponse {
        let result: Result<WorkerResponse, SupervisorError> = await withUnsafeContinuation { c in
            enqueue(payload, socket: socket, options: options) { c.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Queues a request with a stream read from `fd` (a pipe, a file, a socket). The worker gets
    /// its own copy of the descriptor (`Request.stream` on the worker side) and reads it to end
    /// of file; the bytes never pass through the supervisor or the control channel. `fd` stays
    /// yours (the supervisor sends a duplicate). Not retried once sent.
    ///
    /// - Note: the duplicate shares `fd`'s open file description, so its file offset and status
    ///   flags are shared too: the worker's runtime makes it non-blocking (`O_NONBLOCK`), which
    ///   your `fd` then is as well. Pass a descriptor you do not read from yourself.
    public func enqueue(_ payload: [UInt8], stream fd: CInt, options: RequestOptions = RequestOptions(),
                        completion: @escaping @Sendable (Result<WorkerResponse, SupervisorError>) -> Void) {
        let copy: CInt
        do { copy = try Sys.duplicate(fd).release() } catch {
            let failure = SupervisorError(.invalidArgument, "enqueue(stream:): cannot copy the descriptor: \(error)",
                                          underlying: .init(error))
            return CallerTrampoline.run { completion(.failure(failure)) }
        }
        enqueueStream(payload, readEnd: copy, options: options, completion: completion)
    }

    private func enqueueStream(_ payload: [UInt8], readEnd: CInt, options: RequestOptions,
                               completion: @escaping @Sendable (Result<WorkerResponse, SupervisorError>) -> Void) {
        let ok = onLoop { pool in pool.enqueue(payload, options, .handler(completion), descriptor: readEnd, isStream: true) }
        if !ok {
            FileDescriptor.closeRaw(readEnd)
            CallerTrampoline.run { completion(.failure(SupervisorError(.shutDown, "the pool is stopped"))) }
        }
    }

    /// ``enqueue(_:stream:options:completion:)``, waiting for the answer.
    public func enqueue(_ payload: [UInt8], stream fd: CInt, options: RequestOptions = RequestOptions()) async throws(SupervisorError) -> WorkerResponse {
        let result: Result<WorkerResponse, SupervisorError> = await withUnsafeContinuation { c in
            enqueue(payload, stream: fd, options: options) { c.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Queues a request with a stream made of `chunks`: they are written to a socket whose other
    /// end the worker gets, as fast as the worker reads them (back-pressure), and the socket is
    /// closed at the end of the sequence (the worker sees end of file). If the sequence throws,
    /// the stream is cut short and the error is rethrown after the request is answered. Once the
    /// request is answered (or the worker goes away), the rest of the sequence is not read.
    ///
    /// A socket pair rather than a pipe: a worker that goes away makes the writes fail with
    /// `EPIPE` (`send` with `MSG_NOSIGNAL`) instead of raising `SIGPIPE` in this process.
    public func enqueue<Chunks: AsyncSequence>(_ payload: [UInt8], stream chunks: Chunks, options: RequestOptions = RequestOptions()) async throws -> WorkerResponse
    where Chunks.Element == [UInt8] {
        let pair: DescriptorPair
        do { pair = try Sys.socketpair(flags: CInt(SOCK_NONBLOCK.rawValue)) } catch { throw SupervisorError(.invalidArgument, "enqueue(stream:): \(error)") }
        let readEnd = pair.first.release(), writeEnd = pair.second.release()
        let pump = StreamPump(writeEnd: writeEnd, reactor: reactor)
        // Queued before the pump's first job: a request the reactor refuses (it is closed) is
        // answered here, before any job of the pump could run (see `StreamPump.Box`).
        enqueueStream(payload, readEnd: readEnd, options: options) { pump.answered($0) }
        var failure: (any Error)?
        do {
            for try await chunk in chunks {
                guard await pump.write(chunk) else { break }  // the stream has ended
            }
        } catch {
            failure = error
        }
        await pump.finish()
        let result = await pump.response()
        if let failure { throw failure }
        return try result.get()
    }

}
