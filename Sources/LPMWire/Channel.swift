import LPMReactor
import Glibc

/// Why a channel stopped.
package enum ChannelEnd: Sendable, Hashable, CustomStringConvertible {
    /// The peer closed its end (end of file).
    case endOfFile
    /// The peer sent bytes that are not a valid frame stream.
    case violation(ProtocolViolation)
    /// A read or write failed.
    case failed(SyscallError)
    /// The reactor refused to watch the socket for writability.
    case registrationFailed(ReactorError)

    /// The end in words.
    package var description: String {
        switch self {
        case .endOfFile: return "the peer closed the channel"
        case .violation(let v): return v.description
        case .failed(let e): return e.description
        case .registrationFailed(let e): return e.description
        }
    }
}

/// Collects the channels that have frames to write and flushes them all once per reactor
/// iteration: every frame due for a peer in one iteration goes out in one `send`.
package final class ChannelFlusher {
    private let reactor: Reactor
    private var dirty: [Channel] = []
    private var scheduled = false
    /// Made once, submitted once per iteration with output: no allocation per iteration.
    private var flushJob: ((Reactor) -> Void)?

    /// Creates a flusher for channels on `reactor`.
    package init(reactor: Reactor) { self.reactor = reactor }

    func markDirty(_ channel: Channel) {
        dirty.append(channel)
        if !scheduled {
            scheduled = true
            if flushJob == nil { flushJob = { [unowned self] _ in self.flushAll() } }
            // Submitting from the reactor thread costs no system call and takes no lock; the job
            // runs after this iteration's callbacks and timers.
            reactor.execute(flushJob!)
        }
    }

    /// Flushes every dirty channel now.
    package func flushAll() {
        scheduled = false
        var i = 0
        while i < dirty.count {
            dirty[i].flush()
            i += 1
        }
        dirty.removeAll(keepingCapacity: true)
    }
}

/// One end of a supervisor–worker socketpair, on a reactor: reads and decodes frames, and
/// buffers frames to write until the end of the reactor iteration.
package final class Channel {
    /// The socket. Owned by the channel; closed by ``close()``.
    package let fd: CInt
    private let reactor: Reactor
    private let flusher: ChannelFlusher
    private var registration: Reactor.Registration?
    @exclusivity(unchecked) private var out: [UInt8] = []
    @exclusivity(unchecked) private var outStart = 0
    @exclusivity(unchecked) private var isDirty = false
    /// Descriptors to send, each with the offset in `out` of the frame it travels with.
    @exclusivity(unchecked) private var outgoingFDs: [(offset: Int, fd: CInt)] = []
    /// Descriptors received and not yet claimed by a frame, in arrival order.
    @exclusivity(unchecked) private var incomingFDs: [CInt] = []
    @exclusivity(unchecked) private var waitingForWritable = false
    private let decoder: FrameDecoder
    /// Whether the channel has been closed or has failed.
    package private(set) var isClosed = false
    /// Called for each frame received; the payload is valid only during the call.
    package var onFrame: (FrameHeader, UnsafeRawBufferPointer) -> Void = { _, _ in }
    /// Called once when the channel stops for any reason other than ``close()``.
    package var onEnd: (ChannelEnd) -> Void = { _ in }

    /// Takes ownership of `fd` (a non-blocking stream socket).
    package init(fd: CInt, reactor: Reactor, flusher: ChannelFlusher, maxPayload: Int) {
        self.fd = fd
        self.reactor = reactor
        self.flusher = flusher
        decoder = FrameDecoder(maxPayload: maxPayload)
        out.reserveCapacity(16 * 1024)
    }

    /// The largest payload accepted in either direction.
    package var maxPayload: Int { decoder.maxPayload }

    /// Starts reading.
    package func start() throws(ReactorError) {
        registration = try reactor.register(fd, interest: .readable) { [unowned self] ready in
            self.handle(ready)
        }
    }

    /// Bytes queued and not yet written.
    package var pendingOutput: Int { out.count - outStart }

    /// Queues a frame with no payload.
    package func send(_ type: FrameType, id: UInt64 = 0) {
        guard !isClosed else { return }
        out.appendFrameHeader(type, length: 0, id: id)
        markDirty()
    }

    /// Queues a frame; `write` appends exactly `length` payload bytes to the buffer it is given.
    package func send(_ type: FrameType, id: UInt64, flags: FrameFlags = [], length: Int, _ write: (inout [UInt8]) -> Void) {
        guard !isClosed else { return }
        out.appendFrameHeader(type, flags: flags, length: length, id: id)
        let before = out.count
        write(&out)
        precondition(out.count - before == length, "frame payload length mismatch")
        markDirty()
    }

    /// Queues a frame that carries `descriptor` (SCM_RIGHTS). The channel owns the descriptor
    /// from now on and closes it once sent (or when the channel closes).
    package func send(_ type: FrameType, id: UInt64, flags: FrameFlags = [], passing descriptor: CInt, payload: [UInt8]) {
        guard !isClosed else { FileDescriptor.closeRaw(descriptor); return }
        outgoingFDs.append((out.count, descriptor))
        out.appendFrame(type, flags: flags.union(.descriptor), id: id, payload: payload)
        markDirty()
    }

    /// Takes the descriptor that came with the frame being delivered (one whose flags contain
    /// ``FrameFlags/descriptor``). The caller owns it. `nil` if none arrived: the peer broke the
    /// protocol.
    package func takeDescriptor() -> CInt? {
        incomingFDs.isEmpty ? nil : incomingFDs.removeFirst()
    }

    /// Queues a frame whose payload is `payload`.
    package func send(_ type: FrameType, id: UInt64, payload: [UInt8]) {
        guard !isClosed else { return }
        out.appendFrame(type, id: id, payload: payload)
        markDirty()
    }

    @inline(__always)
    private func markDirty() {
        if !isDirty && !waitingForWritable {
            isDirty = true
            flusher.markDirty(self)
        }
    }

    /// Writes what is queued, as far as the socket takes it; waits for writability for the rest.
    func flush() {
        isDirty = false
        guard !isClosed, outStart < out.count else { return }
        while outStart < out.count {
            let start = outStart, fd = self.fd
            // Bytes up to the next frame that carries a descriptor go with a plain send; that
            // frame starts a sendmsg of its own, so the descriptor arrives with its first byte.
            var stop = out.count
            var passing: CInt = -1
            if let next = outgoingFDs.first {
                if next.offset > start { stop = next.offset } else {
                    passing = next.fd
                    if outgoingFDs.count > 1 { stop = outgoingFDs[1].offset }
                }
            }
            let result = out.withUnsafeBytes { raw in
                Result { () throws(SyscallError) in
                    let chunk = UnsafeRawBufferPointer(rebasing: raw[start..<stop])
                    return passing >= 0 ? try Sys.sendmsg(fd, chunk, passing: passing) : try Sys.send(fd, chunk)
                }
            }
            switch result {
            case .failure(let error):
                end(.failed(error))
                return
            case .success(.processed(let n)):
                outStart += n
                if passing >= 0 {
                    outgoingFDs.removeFirst()
                    FileDescriptor.closeRaw(passing)
                }
                if outStart < stop { break }  // the socket took less: wait for writability
                continue
            case .success(.wouldBlock):
                break
            }
            break
        }
        if outStart == out.count {
            out.removeAll(keepingCapacity: true)
            outStart = 0
            outgoingFDs.removeAll(keepingCapacity: true)
            if waitingForWritable {
                waitingForWritable = false
                watch(.readable)
            }
        } else if !waitingForWritable {
            waitingForWritable = true
            watch([.readable, .writable])
        }
    }

    /// Changes what the socket is watched for; a channel the reactor cannot watch ends.
    private func watch(_ interest: Reactor.Interest) {
        guard let r = registration else { return }
        do { try reactor.modify(r, interest: interest) } catch { end(.registrationFailed(error)) }
    }

    private func handle(_ ready: Reactor.Readiness) {
        if ready.contains(.writable) { flush() }
        guard !isClosed, ready.contains(.readable) || ready.contains(.hangup) || ready.contains(.error) else { return }
        do {
            guard let n = try decoder.receive(from: fd, descriptors: &incomingFDs) else { return }
            if n == 0 {
                deliver()
                if !isClosed { end(.endOfFile) }
                return
            }
        } catch {
            end(.failed(error))
            return
        }
        deliver()
    }

    private struct Stop: Error {}

    private func deliver() {
        do {
            try decoder.decode { header, payload in
                if self.isClosed { throw Stop() }
                self.onFrame(header, payload)
            }
        } catch let v as ProtocolViolation {
            end(.violation(v))
        } catch {}
    }

    private func end(_ reason: ChannelEnd) {
        guard !isClosed else { return }
        close()
        onEnd(reason)
    }

    /// Writes everything queued, blocking until the socket takes it (used just before a worker
    /// exits, so that no answer is lost).
    package func flushBlocking() {
        guard !isClosed else { return }
        while outStart < out.count {
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            flush()
            if isClosed || outStart == out.count { return }
            _ = poll(&p, 1, 1000)
        }
    }

    /// Deregisters and closes the socket. Frames still queued are written first if the socket
    /// takes them without blocking.
    package func close() {
        guard !isClosed else { return }
        isClosed = true
        if outStart < out.count && outgoingFDs.isEmpty {
            // Best effort: whatever the socket takes without blocking. A failure changes nothing
            // (the socket is closed next), so it is not reported.
            _ = out.withUnsafeBytes { raw in try? Sys.send(fd, UnsafeRawBufferPointer(rebasing: raw[outStart...])) }
        }
        for (_, d) in outgoingFDs { FileDescriptor.closeRaw(d) }
        outgoingFDs = []
        for d in incomingFDs { FileDescriptor.closeRaw(d) }
        incomingFDs = []
        if let r = registration { reactor.deregisterInternal(r) }
        registration = nil
        FileDescriptor.closeRaw(fd)
        out = []
    }
}
