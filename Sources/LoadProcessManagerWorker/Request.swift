import Glibc
import LPMReactor
import LPMWire

extension Worker {
    /// A request received from the supervisor. Answer it exactly once; later answers are ignored.
    ///
    /// Use it on the worker's thread only (see ``Worker``).
    public final class Request {
        // The stored properties skip the dynamic exclusivity check (a runtime call per access,
        // most of a request's cost when checked): the worker sets them on its one thread,
        // between handler calls, never through an `inout` that could overlap another access.

        // Strong: the worker lives until the process exits (`run()` never returns), so the cycle
        // through its in-flight and spare lists is never a leak, and a strong reference is
        // cheaper to follow than an `unowned` one (no side-table count per access).
        let worker: Worker
        @exclusivity(unchecked) var wireID: UInt64
        /// The request's id, a UUID (version 4) assigned by the supervisor.
        @exclusivity(unchecked) public internal(set) var id: RequestID
        /// When the supervisor accepted it: nanoseconds on the supervisor's monotonic clock
        /// (`CLOCK_MONOTONIC`, shared by all processes of the machine).
        @exclusivity(unchecked) public internal(set) var createdAt: UInt64
        /// The request's payload.
        public var data: [UInt8] { payload }
        /// The payload's storage. Behind a computed ``data``: code in other modules reads a
        /// stored property with a dynamic exclusivity check of its own, this attribute or not.
        @exclusivity(unchecked) var payload: [UInt8]
        /// Whether the supervisor cancelled it (it timed out there); answers are then dropped.
        @exclusivity(unchecked) public internal(set) var isCancelled = false
        /// Called if the supervisor cancels the request. Dropped once the request is answered or
        /// cancelled, so a closure that captures the request does not keep it alive.
        @exclusivity(unchecked) public var onCancel: (() -> Void)?
        @exclusivity(unchecked) var answered = false
        /// Where the request is in flight: its index in the worker's in-flight list;
        /// ``handling`` while its handler's call is under way; ``notInFlight`` once it has left
        /// (answered and its stream finished, or cancelled).
        @exclusivity(unchecked) var inFlightIndex = Request.notInFlight
        /// The request whose handler call encloses this one's, while this one's is under way
        /// (a handler that runs the reactor itself can nest them). Not retained: the frame being
        /// delivered holds each request for its call.
        @exclusivity(unchecked) var outer: Unmanaged<Request>?
        static let notInFlight = -1
        static let handling = -2
        /// Whether the request is in flight: received, and not yet answered (or its streamed
        /// answer not yet finished) nor cancelled.
        var isInFlight: Bool { inFlightIndex != Request.notInFlight }
        /// The batch this request is an item of, and its place there (`nil`: a request of its own).
        /// Not retained (a retain and a release per item): the batch's loop holds the batch while
        /// the item's handler call runs, and ``batch`` holds it for an item still in flight after
        /// its call. Read only while the request is in flight.
        @exclusivity(unchecked) var batchItem: Unmanaged<BatchAnswers>?
        @exclusivity(unchecked) var batchIndex = 0
        /// The batch, held for an item that is still in flight after its handler call.
        @exclusivity(unchecked) var batch: BatchAnswers?
        /// The task running an async handler for this request, cancelled with the request.
        @exclusivity(unchecked) var task: Task<Void, Never>?
        /// The stream sent with the request, if any: read it with ``InputStream/resume()`` and its
        /// callbacks, or ``InputStream/readAll(_:)``. End of file marks its end.
        @exclusivity(unchecked) public internal(set) var stream: InputStream?
        /// The socket (or other descriptor) sent with the request, if any. The worker owns it:
        /// close it with ``closeSocket()`` so the supervisor knows this worker handles one fewer.
        @exclusivity(unchecked) public internal(set) var socket: CInt?
        /// Whether a stream accompanies the request.
        public var hasStream: Bool { stream != nil }
        /// Whether a socket accompanies the request.
        public var hasSocket: Bool { socket != nil }

        init(worker: Worker, wireID: UInt64, id: RequestID, createdAt: UInt64, data: [UInt8]) {
            self.worker = worker
            self.wireID = wireID
            self.id = id
            self.createdAt = createdAt
            payload = data
        }

        /// Makes a request that nobody kept after its answer ready for the next frame. The
        /// payload keeps its buffer when nothing else holds it (copy on write sees to that),
        /// unless the buffer grew large.
        @inline(__always)
        func reuse(wireID: UInt64, idWords: (UInt64, UInt64), createdAt: UInt64, body: UnsafeRawBufferPointer) {
            self.wireID = wireID
            // From two words: a `RequestID` passed as it is, a tuple of 16 bytes, is copied byte
            // by byte.
            id = unsafeBitCast(idWords, to: RequestID.self)
            self.createdAt = createdAt
            if payload.count == body.count {
                // The same size as the last (the common case of same-sized requests): one copy
                // over the bytes, no change of count.
                if !body.isEmpty { payload.withUnsafeMutableBytes { $0.copyMemory(from: body) } }
            } else if payload.capacity > Request.retainedDataCapacity {
                payload = Array(body)
            } else {
                // One call that empties the array and copies the bytes in, keeping the buffer
                // when nothing else holds it.
                payload.replaceSubrange(0..<payload.count, with: body)
            }
            isCancelled = false
            answered = false
            // Each checked first: storing `nil` over `nil` still releases the old value.
            batchItem = nil
            if batch != nil { batch = nil }
            if stream != nil { stream = nil }
            socket = nil
        }

        /// A reused request keeps a payload buffer up to this size; a larger one is freed.
        static let retainedDataCapacity = 64 << 10

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

    /// A custom event or broadcast from the supervisor (see ``Worker/on(_:_:)``).
    public struct Event {
        /// The event's name.
        public let name: String
        /// Its payload.
        public let data: [UInt8]
        let replyID: UInt64
        let channel: Channel
        /// The descriptor broadcast with the event (a listening socket, say), if any; the worker
        /// owns it.
        public let socket: CInt?

        /// Whether the supervisor waits for a reply.
        public var wantsReply: Bool { replyID != 0 }

        /// Replies to the supervisor (ignored unless it asked for a reply).
        public func reply(_ data: [UInt8]) {
            guard replyID != 0 else { return }
            channel.send(.eventReply, id: replyID, payload: data)
        }
    }
}
