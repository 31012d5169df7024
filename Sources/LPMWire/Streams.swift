import Glibc
import LPMReactor

/// Reads a descriptor (a pipe's read end, a socket) on the reactor, chunk by chunk, only while
/// there is demand: pausing it leaves the bytes in the kernel, so the writer feels the
/// back-pressure.
package final class StreamReader {
    /// The descriptor read. Owned by the reader; closed at the end.
    package let fd: CInt
    private let reactor: Reactor
    private var registration: Reactor.Registration?
    private var paused = true
    private var finished = false
    private let chunkSize: Int
    /// Called with each chunk read.
    package var onChunk: ([UInt8]) -> Void = { _ in }
    /// Called once: `nil` at end of file, or the error that ended reading.
    package var onEnd: (SyscallError?) -> Void = { _ in }
    /// Bytes delivered so far.
    package private(set) var count = 0

    /// Takes ownership of `fd` (made non-blocking here).
    package init(fd: CInt, reactor: Reactor, chunkSize: Int = 64 * 1024) {
        self.fd = fd
        self.reactor = reactor
        self.chunkSize = chunkSize
        do { try Sys.setNonBlocking(fd) } catch { setupError = error }
    }

    /// Why the descriptor could not be made non-blocking, reported by the first ``resume()``.
    private var setupError: SyscallError?

    /// Whether the stream has ended (end of file, error, or ``close()``).
    package var isFinished: Bool { finished }

    /// Starts or resumes delivering chunks.
    package func resume() {
        guard paused, !finished else { return }
        paused = false
        if let setupError { return end(setupError) }
        if registration == nil {
            do {
                // Strong: a reader that is reading stays alive; the reactor drops the closure when
                // it is deregistered (pause, end, close).
                registration = try reactor.register(fd, interest: .readable) { _ in self.readable() }
            } catch {
                end(error.underlying ?? SyscallError("register", .badFileDescriptor))
            }
        }
    }

    /// Stops delivering chunks until ``resume()``.
    package func pause() {
        guard !paused, !finished else { return }
        paused = true
        if let r = registration { reactor.deregisterInternal(r); registration = nil }
    }

    /// Delivers every byte to `done` at the end (for small streams and tests).
    package func readAll(_ done: @escaping (Result<[UInt8], SyscallError>) -> Void) {
        var all: [UInt8] = []
        onChunk = { all.append(contentsOf: $0) }
        onEnd = { error in done(error.map { .failure($0) } ?? .success(all)) }
        resume()
    }

    private func readable() {
        guard !paused, !finished else { return }
        var chunk = [UInt8](repeating: 0, count: chunkSize)
        let result = chunk.withUnsafeMutableBytes { raw in Result { () throws(SyscallError) in try Sys.read(fd, raw) } }
        switch result {
        case .failure(let e): end(e)
        case .success(.wouldBlock): break
        case .success(.processed(0)): end(nil)
        case .success(.processed(let n)):
            chunk.removeLast(chunkSize - n)
            count += n
            onChunk(chunk)
        }
    }

    private func end(_ error: SyscallError?) {
        guard !finished else { return }
        close()
        onEnd(error)
    }

    /// Stops reading and closes the descriptor; ``onEnd`` is not called.
    package func close() {
        guard !finished else { return }
        finished = true
        closeWatched(fd, &registration, on: reactor)
    }
}

/// Writes to a descriptor (a pipe's write end, a socket) on the reactor, buffering what the
/// kernel does not take yet.
package final class StreamWriter {
    /// The descriptor written. Owned by the writer; closed by ``finish(_:)`` or ``close()``.
    package let fd: CInt
    private let reactor: Reactor
    private var buffer: [UInt8] = []
    private var start = 0
    private var registration: Reactor.Registration?
    private var finishing: ((SyscallError?) -> Void)?
    private var failed: SyscallError?
    private var closed = false
    private var blocked = false
    private let isSocket: Bool
    /// Called when the buffer has emptied after the kernel refused bytes (for back-pressure:
    /// write more then). Never called from inside ``write(_:)``.
    package var onDrain: () -> Void = {}
    /// Called once if a write fails (the reader went away: `EPIPE`).
    package var onError: (SyscallError) -> Void = { _ in }
    /// Bytes accepted so far.
    package private(set) var count = 0

    /// Takes ownership of `fd` (made non-blocking here). A socket (`isSocket`) is written with
    /// `send(MSG_NOSIGNAL)`: a reader gone away gives `EPIPE`, never `SIGPIPE`.
    package init(fd: CInt, reactor: Reactor, isSocket: Bool = false) {
        self.fd = fd
        self.reactor = reactor
        self.isSocket = isSocket
        // A descriptor that cannot be made non-blocking fails the writer: `write` then writes
        // nothing, `error` says why, and `finish` reports it.
        do { try Sys.setNonBlocking(fd) } catch { failed = error }
    }

    /// Bytes accepted and not yet written.
    package var bufferedCount: Int { buffer.count - start }

    /// Whether a write failed.
    package var error: SyscallError? { failed }

    /// Queues `bytes` and writes what the kernel takes now.
    package func write(_ bytes: [UInt8]) {
        guard !closed, failed == nil, finishing == nil else { return }
        count += bytes.count
        buffer.append(contentsOf: bytes)
        drain()
    }

    /// Once everything is written, closes the descriptor (the reader sees end of file) and
    /// calls `done` with `nil`, or with the error that stopped writing.
    package func finish(_ done: @escaping (SyscallError?) -> Void) {
        guard !closed, finishing == nil else { return }
        if let failed { close(); return done(failed) }
        finishing = done
        drain()
    }

    private func drain() {
        while start < buffer.count {
            let s = start, fd = fd, isSocket = isSocket
            let result = buffer.withUnsafeBytes { raw in
                Result { () throws(SyscallError) in
                    let bytes = UnsafeRawBufferPointer(rebasing: raw[s...])
                    return try isSocket ? Sys.send(fd, bytes) : Sys.write(fd, bytes)
                }
            }
            switch result {
            case .failure(let e):
                return fail(e)
            case .success(.processed(let n)):
                start += n
                continue
            case .success(.wouldBlock):
                blocked = true
                if registration == nil {
                    do {
                        // Strong: a writer with bytes pending stays alive until they are written.
                        registration = try reactor.register(fd, interest: .writable) { _ in self.drain() }
                    } catch {
                        return fail(error.underlying ?? SyscallError("register", .badFileDescriptor))
                    }
                }
                return
            }
        }
        if !settle(nil) && blocked {
            blocked = false
            onDrain()
        }
    }

    private func fail(_ e: SyscallError) {
        failed = e
        if !settle(e) { onError(e) }
    }

    /// Nothing left to write (all of it written, or `error`): stops watching for writability,
    /// and ends a ``finish(_:)`` in progress. Returns whether one was.
    private func settle(_ error: SyscallError?) -> Bool {
        buffer.removeAll(keepingCapacity: error == nil)
        start = 0
        if let r = registration { reactor.deregisterInternal(r); registration = nil }
        guard let done = finishing else { return false }
        finishing = nil
        close()
        done(error)
        return true
    }

    /// Closes the descriptor now, dropping anything unwritten.
    package func close() {
        guard !closed else { return }
        closed = true
        closeWatched(fd, &registration, on: reactor)
    }
}

/// A 64-bit FNV-1a digest, for checking streams end to end.
package struct StreamDigest: Sendable, Hashable, CustomStringConvertible {
    /// The digest so far.
    package private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
    /// The bytes digested so far.
    package private(set) var count = 0
    /// The digest of no bytes.
    package init() {}
    /// Adds `bytes`.
    package mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBufferPointer { update($0) }
    }

    /// Adds `bytes`.
    package mutating func update(_ bytes: UnsafeBufferPointer<UInt8>) {
        var v = value
        for i in 0..<bytes.count { v = (v ^ UInt64(bytes[i])) &* 0x100_0000_01b3 }
        value = v
        count += bytes.count
    }
    /// `count:digest`, the digest in hexadecimal.
    package var description: String { "\(count):\(String(value, radix: 16))" }
}

/// The end of a stream's reader or writer: deregisters `fd` (if registered), then closes it.
private func closeWatched(_ fd: CInt, _ registration: inout Reactor.Registration?, on reactor: Reactor) {
    if let r = registration { reactor.deregisterInternal(r); registration = nil }
    FileDescriptor.closeRaw(fd)
}
