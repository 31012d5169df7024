import Glibc
import LPMReactor
import LPMWire

extension Worker {
    /// The byte stream of a streamed response (``Request/respondWithStream(_:)``): what the worker
    /// writes goes to the caller's `ResponseStream`.
    ///
    /// Use it on the worker's thread only (see ``Worker``).
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

    /// A byte stream the worker reads on its reactor: the stream sent with a request
    /// (``Request/stream``), or any readable descriptor (``init(fd:reactor:chunkSize:)``).
    ///
    /// Chunks are read only while the stream is resumed: pausing it leaves the bytes in the
    /// kernel, so the writer on the other side feels the back-pressure. Use it on the worker's
    /// thread only (see ``Worker``).
    public final class InputStream {
        private let reader: StreamReader

        init(reader: StreamReader) { self.reader = reader }

        /// A stream reading `fd` (a pipe, a socket, a file) on `reactor`, in chunks of up to
        /// `chunkSize` bytes. Takes ownership of `fd`: makes it non-blocking, and closes it at the
        /// end of the stream or on ``close()``.
        public convenience init(fd: CInt, reactor: Reactor, chunkSize: Int = 64 * 1024) {
            self.init(reader: StreamReader(fd: fd, reactor: reactor, chunkSize: chunkSize))
        }

        /// Called with each chunk read.
        public var onChunk: ([UInt8]) -> Void {
            get { reader.onChunk }
            set { reader.onChunk = newValue }
        }

        /// Called once: `nil` at end of file, or the error that ended reading. Not called after
        /// ``close()``.
        public var onEnd: (SyscallError?) -> Void {
            get { reader.onEnd }
            set { reader.onEnd = newValue }
        }

        /// Bytes delivered so far.
        public var count: Int { reader.count }

        /// Whether the stream has ended (end of file, error, or ``close()``).
        public var isFinished: Bool { reader.isFinished }

        /// Starts or resumes delivering chunks.
        public func resume() { reader.resume() }

        /// Stops delivering chunks until ``resume()``.
        public func pause() { reader.pause() }

        /// Delivers every byte to `done` at the end (for small streams); replaces ``onChunk`` and
        /// ``onEnd``, and resumes the stream.
        public func readAll(_ done: @escaping (Result<[UInt8], SyscallError>) -> Void) { reader.readAll(done) }

        /// Stops reading and closes the descriptor; ``onEnd`` is not called.
        public func close() { reader.close() }
    }
}
