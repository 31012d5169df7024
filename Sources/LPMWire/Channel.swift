import LPMReactor
import Glibc

/// Why a channel stopped.
package enum ChannelEnd: Sendable, Hashable, CustomStringConvertible {
    /// The peer closed its end (end of file).
    case endOfFile
    /// The peer broke the protocol: bytes that are not a valid frame stream, a descriptor no
    /// frame announced, or it does not read its end (``ProtocolViolation/Kind/peerNotReading(queued:)``).
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
    // Reactor thread only, no overlapping access: unchecked (see `Reactor`'s state).
    @exclusivity(unchecked) private var dirty: [Channel] = []
    @exclusivity(unchecked) private var scheduled = false

    /// Creates a flusher for channels on `reactor`.
    package init(reactor: Reactor) { self.reactor = reactor }

    func markDirty(_ channel: Channel) {
        dirty.append(channel)
        if !scheduled {
            scheduled = true
            // The flusher is its own job (no closure, no allocation per iteration, no unowned
            // reference to load): submitting from the reactor thread costs no system call and
            // takes no lock; the job runs after this iteration's callbacks and timers.
            reactor.execute(job: self)
        }
    }

    /// The channels with rings on a busy-polling reactor: read through the reactor's poll hooks.
    @exclusivity(unchecked) private var polled: [Channel] = []
    /// This flusher's poll hooks on the reactor, while it has polled channels.
    @exclusivity(unchecked) private var pollHooksToken: Int?

    /// Reads `channel`'s incoming ring through the reactor's poll hooks from now on.
    func addPolled(_ channel: Channel) {
        polled.append(channel)
        guard pollHooksToken == nil else { return }
        pollHooksToken = reactor.addPollHooks(Reactor.PollHooks(
            hasWork: { [unowned self] in
                for c in self.polled where c.ringHasUnread() { return true }
                return false
            },
            run: { [unowned self] in
                var ran = 0
                // A channel may close (and leave the list) while one delivers.
                let list = self.polled
                for c in list { ran += c.pollRing() }
                return ran
            },
            prepareToBlock: { [unowned self] in
                var arrived = false
                for c in self.polled where c.ringPrepareToBlock() { arrived = true }
                return arrived
            }))
    }

    func removePolled(_ channel: Channel) {
        polled.removeAll { $0 === channel }
        if polled.isEmpty, let token = pollHooksToken {
            reactor.removePollHooks(token)
            pollHooksToken = nil
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
        dirty.removeAllKeepingCapacity()
    }
}

extension ChannelFlusher: ReactorJob {
    package func run(on reactor: Reactor) { flushAll() }
    /// The reactor was dropped with the flush queued: the channels go with it.
    package func dropped() {}
}

/// One end of a supervisor–worker socketpair, on a reactor: reads and decodes frames, and
/// buffers frames to write until the end of the reactor iteration.
///
/// Nothing the peer sends makes the channel hold unbounded memory or descriptors:
/// - the frames queued for a peer that does not read are bounded by ``outgoingLimit``;
/// - a descriptor is held only while a frame that announces it (``FrameFlags/descriptor`` or
///   ``FrameFlags/stream``) is being received or delivered, and is closed after that frame's
///   delivery unless ``takeDescriptor()`` took it;
/// - the decoding and outgoing buffers go back to their initial size after a large frame.
/// A peer that does not read, or sends a descriptor no frame claims, ends the channel with
/// ``ChannelEnd/violation(_:)``.
package final class Channel {
    /// The socket. Owned by the channel; closed by ``close()``.
    package let fd: CInt
    private let reactor: Reactor
    private let flusher: ChannelFlusher
    @exclusivity(unchecked) private var registration: Reactor.Registration?
    @exclusivity(unchecked) private var out = OutputBuffer(capacity: Channel.outgoingCapacity)
    /// Where `send(_:id:flags:length:_:)` has its payload written, then copied to `out`.
    @exclusivity(unchecked) private var scratch: [UInt8] = []
    @exclusivity(unchecked) private var outStart = 0
    @exclusivity(unchecked) private var isDirty = false
    /// Descriptors to send, each with the offset in `out` of the frame it travels with.
    @exclusivity(unchecked) private var outgoingFDs: [(offset: Int, fd: CInt)] = []
    /// Descriptors received and not yet claimed by a frame, in arrival order: at most one once
    /// every complete frame is delivered (see ``checkHeldDescriptors()``).
    @exclusivity(unchecked) private var incomingFDs: [CInt] = []
    /// The descriptor of the frame being delivered, until ``takeDescriptor()`` takes it; -1 if none.
    @exclusivity(unchecked) private var deliveredFD: CInt = -1
    /// Set when a frame was refused because the peer does not read: the next flush ends the channel.
    @exclusivity(unchecked) private var refusedOutput = false
    @exclusivity(unchecked) private var waitingForWritable = false
    private let decoder: FrameDecoder
    /// Whether the channel has been closed or has failed.
    @exclusivity(unchecked) package private(set) var isClosed = false
    /// Called for each frame received; the payload is valid only during the call.
    @exclusivity(unchecked) package var onFrame: (FrameHeader, UnsafeRawBufferPointer) -> Void = { _, _ in }
    /// Called once when the channel stops for any reason other than ``close()``.
    package var onEnd: (ChannelEnd) -> Void = { _ in }

    /// The supervisor's side: the capacity of each ring to offer a worker whose `ready` frame
    /// announces ``WorkerCapabilities/rings`` (``offerRings(capacity:)``); `nil`, never.
    @exclusivity(unchecked) package var ringOffer: Int?
    /// The worker's side: whether ``FrameType/rings`` frames are taken (the worker announced
    /// the capability). A channel that does not take them delivers them like any frame.
    @exclusivity(unchecked) package var acceptsRings = false
    /// The rings attached, if any: requests and answers that fit go through them.
    @exclusivity(unchecked) private var rings: SharedRingLink?
    /// The ring descriptors received so far, on the worker's side.
    @exclusivity(unchecked) private var handOver = SharedRingHandOver()
    /// A ring failure met while queueing (a peer's index out of range): the channel ends at the
    /// next flush, as for ``refusedOutput``.
    @exclusivity(unchecked) private var ringFailure: SharedRingError?
    /// Whether shared-memory rings are attached to this channel.
    package var usesRings: Bool { rings != nil }

    /// The most bytes queued for the peer before a frame is refused: at least one maximum-size
    /// frame, so a large request or response can always be queued. Past it the peer is taken
    /// not to read, and the channel ends with ``ProtocolViolation/peerNotReading(queued:)``; so at
    /// most this plus one frame is ever queued.
    package let outgoingLimit: Int
    private static let outgoingCapacity = 16 * 1024

    /// Takes ownership of `fd` (a non-blocking stream socket).
    /// - Parameters:
    ///   - fd: the socket, owned by the channel from now on.
    ///   - reactor: the reactor the channel reads and writes on; call on its thread.
    ///   - flusher: writes the frames queued in one iteration at its end.
    ///   - maxPayload: the largest payload either way, in ``Wire/maxPayloadRange``.
    ///   - outgoingLimit: the bound on bytes queued for the peer, raised to one maximum-size
    ///     frame when lower (``Wire/defaultOutgoingLimit`` by default).
    package init(fd: CInt, reactor: Reactor, flusher: ChannelFlusher, maxPayload: Int,
                 outgoingLimit: Int = Wire.defaultOutgoingLimit) {
        self.fd = fd
        self.reactor = reactor
        self.flusher = flusher
        decoder = FrameDecoder(maxPayload: maxPayload)
        self.outgoingLimit = max(outgoingLimit, Wire.headerSize + maxPayload)
    }

    /// A payload this channel delivered, kept past the delivery: the storage to hold and where
    /// the bytes are in it. A payload read from the socket is lent from the receive buffer (no
    /// copy: the decoder never writes those bytes again while the storage is held); one from a
    /// ring, whose bytes the peer reuses, is copied. An empty payload needs no storage.
    package func keep(_ payload: UnsafeRawBufferPointer) -> (storage: ByteStorage?, bytes: UnsafeRawBufferPointer) {
        guard payload.count > 0 else { return (nil, UnsafeRawBufferPointer(start: nil, count: 0)) }
        if let owner = decoder.lend(payload) { return (owner, payload) }
        if keptCopies == nil { keptCopies = ByteArena() }
        let copy = keptCopies!.copy(payload)
        return (copy.storage, copy.bytes)
    }

    /// Where payloads from the ring are copied when kept (made at the first).
    @exclusivity(unchecked) private var keptCopies: ByteArena?

    /// The decoding buffer's size in bytes (for tests: it comes back down after a large frame).
    package var receiveCapacity: Int { decoder.capacity }

    /// The outgoing buffer's size in bytes (for tests: it comes back down once drained).
    package var sendCapacity: Int { out.capacity }

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
        guard !isClosed, admit() else { return }
        out.appendFrameHeader(type, length: 0, id: id)
        markDirty()
    }

    /// Queues a frame; `write` appends exactly `length` payload bytes to the buffer it is given.
    package func send(_ type: FrameType, id: UInt64, flags: FrameFlags = [], length: Int, _ write: (inout [UInt8]) -> Void) {
        guard !isClosed else { return }
        scratch.removeAll(keepingCapacity: scratch.capacity <= Wire.retainedBufferCapacity)
        write(&scratch)
        precondition(scratch.count == length, "frame payload length mismatch")
        scratch.withUnsafeBytes { queue(type, flags: flags, id: id, $0) }
    }

    /// Queues a request frame: its header and `head` in one copy, then `payload` (the request
    /// path: two appends to the buffer where the general `send(_:id:flags:length:_:)` makes four).
    package func send(_ type: FrameType, id: UInt64, flags: FrameFlags = [], head: RequestHead, payload: [UInt8]) {
        guard !isClosed else { return }
        let length = RequestHead.size + payload.count
        if rings != nil {
            let sent = ringWrite(type, flags: flags, id: id, length: length) { room in
                // The head (the id's 16 bytes, createdAt), then the payload.
                withUnsafeBytes(of: (head.id.bytes, head.createdAt.littleEndian)) {
                    room.copyMemory(from: $0.baseAddress!, byteCount: RequestHead.size)
                }
                payload.withUnsafeBytes {
                    if $0.count > 0 { (room + RequestHead.size).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                }
            }
            if sent { return }
        }
        guard admit() else { return }
        precondition(length <= Int(UInt32.max), "frame payload too long")
        let first = FrameHeader.firstWord(type, flags: flags, length: length)
        // 40 bytes, no padding: the frame header's two words, the id's 16 bytes, createdAt.
        out.append(bytesOf: (first.littleEndian, id.littleEndian, head.id.bytes, head.createdAt.littleEndian))
        out.append(payload)
        markDirty()
    }

    /// Queues a frame that carries `descriptor` (SCM_RIGHTS). The channel owns the descriptor
    /// from now on and closes it once sent (or when the channel closes).
    package func send(_ type: FrameType, id: UInt64, flags: FrameFlags = [], passing descriptor: CInt, payload: [UInt8]) {
        guard !isClosed, admit() else { FileDescriptor.closeRaw(descriptor); return }
        outgoingFDs.append((out.count, descriptor))
        out.appendFrameHeader(type, flags: flags.union(.descriptor), length: payload.count, id: id)
        out.append(payload)
        markDirty()
    }

    /// Takes the descriptor that came with the frame being delivered (one whose flags contain
    /// ``FrameFlags/descriptor`` or ``FrameFlags/stream``). The caller owns it. `nil` outside
    /// such a frame's delivery, or when it was taken already. A descriptor not taken by the end
    /// of its frame's delivery is closed by the channel.
    package func takeDescriptor() -> CInt? {
        guard deliveredFD >= 0 else { return nil }
        defer { deliveredFD = -1 }
        return deliveredFD
    }

    /// Whether a frame may be queued: the hot path is one comparison. A peer with more than
    /// ``outgoingLimit`` bytes waiting does not read; the channel ends at the next flush, not
    /// inside the caller's `send` (the caller may be in the middle of changing its own state).
    @inline(__always)
    private func admit() -> Bool {
        if _fastPath(out.count - outStart <= outgoingLimit) { return true }
        refuseOutput()
        return false
    }

    private func refuseOutput() {
        refusedOutput = true
        if !isDirty {
            isDirty = true
            flusher.markDirty(self)
        }
    }

    /// Queues a frame whose payload is `payload`.
    package func send(_ type: FrameType, id: UInt64, payload: [UInt8]) {
        guard !isClosed else { return }
        payload.withUnsafeBytes { queue(type, flags: [], id: id, $0) }
    }

    /// Queues a frame whose payload is `bytes`: as a ring record if the channel has rings and the
    /// record fits, else on the socket.
    @inline(__always)
    private func queue(_ type: FrameType, flags: FrameFlags, id: UInt64, _ bytes: UnsafeRawBufferPointer) {
        if rings != nil, ringWrite(type, flags: flags, id: id, length: bytes.count, { room in
            if bytes.count > 0 { room.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
        }) { return }
        guard admit() else { return }
        out.appendFrameHeader(type, flags: flags, length: bytes.count, id: id)
        out.append(bytes)
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
    /// Records in the ring are published first: a frame on the socket never arrives before a
    /// record queued ahead of it is visible (see ``drainRing()``).
    func flush() {
        isDirty = false
        guard !isClosed else { return }
        if refusedOutput { return end(.violation(.peerNotReading(queued: pendingOutput))) }
        if let r = rings {
            if let failure = ringFailure { return end(.violation(ProtocolViolation(failure.description, kind: .frame))) }
            r.publish()
        }
        guard outStart < out.count else { return }
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
            let chunk = out.bytes(from: start, to: stop)
            let result = Result { () throws(SyscallError) in
                passing >= 0 ? try Sys.sendmsg(fd, chunk, passing: passing) : try Sys.send(fd, chunk)
            }
            switch result {
            case .failure(let error):
                // The peer is gone (EPIPE, ECONNRESET: it closed its end, or exited). What it
                // sent before it went is still in the socket: it is read and delivered first,
                // as before an end of file, and then the channel ends (at that end of file, or
                // with this error). Ended at once, a worker's last answers were lost with the
                // socket when a frame went to it just after it exited (a ping, a health request).
                outStart = out.count
                readRemaining()
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
            // After a burst or a large frame, its memory goes back.
            out.removeAll(shrinkingAbove: Wire.retainedBufferCapacity, to: Self.outgoingCapacity)
            outStart = 0
            outgoingFDs.removeAllKeepingCapacity()
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
        _ = readOnce()
    }

    /// One read, and the delivery of every frame it completes. Returns whether bytes came and the
    /// channel is still open (`false`: the read would block, or the channel ended).
    private func readOnce() -> Bool {
        do {
            guard let n = try decoder.receive(from: fd, descriptors: &incomingFDs) else { return false }
            if decoder.descriptorsTruncated {
                end(.violation(ProtocolViolation("more descriptors in one message than fit (MSG_CTRUNC)", kind: .descriptor)))
                return false
            }
            if n == 0 {
                deliver()
                // Records published before the peer closed are delivered too.
                if rings != nil { drainRing() }
                if !isClosed { end(.endOfFile) }
                return false
            }
        } catch {
            end(.failed(error))
            return false
        }
        deliver()
        if !incomingFDs.isEmpty { checkHeldDescriptors() }
        return !isClosed
    }

    /// Reads and delivers everything the peer sent that is not read yet, up to its end of file (or
    /// a read that would block): for a peer known to be gone, whose exit was seen before its end
    /// of file (a reactor reads a socket once per readiness, so a worker that answered many
    /// requests and exited can leave answers in the socket when its exit is handled), or before
    /// judging that a peer did not answer. At an end of file the channel ends as it would on its
    /// own. Bounded (256 reads): a dead peer's socket holds what its buffer holds, but a live
    /// peer, or a process that inherited the peer's end, could still be writing.
    package func readRemaining() {
        guard !isClosed else { return }
        var reads = 0
        while reads < 256 && readOnce() { reads += 1 }
        if !isClosed && rings != nil { drainRing() }
    }

    private struct Stop: Error {}

    private func deliver() {
        do {
            try decoder.decode { header, payload in
                if self.isClosed { throw Stop() }
                if self.rings != nil {
                    // Whatever the peer published in the ring before it sent this frame comes
                    // first: a cancel never overtakes its request, an exit never its answers.
                    self.drainRing()
                    if self.isClosed { throw Stop() }
                }
                if header.type == .rings && self.acceptsRings {
                    try self.receiveRings(header)
                } else if header.type == .ready, let capacity = self.ringOffer, self.rings == nil,
                          WorkerCapabilities.decode(payload).contains(.rings) {
                    self.offerRings(capacity: capacity)
                    self.onFrame(header, payload)
                } else if header.flags.announcesDescriptor {
                    try self.deliverWithDescriptor(header, payload)
                } else {
                    self.onFrame(header, payload)
                }
            }
        } catch let v as ProtocolViolation {
            end(.violation(v))
        } catch {}
    }

    /// Delivers a frame that announces a descriptor with the next one received, and closes it
    /// afterwards unless ``takeDescriptor()`` took it. A descriptor arrives with its frame's
    /// first byte, so by the time the frame is complete it is here, or it was never sent.
    private func deliverWithDescriptor(_ header: FrameHeader, _ payload: UnsafeRawBufferPointer) throws(ProtocolViolation) {
        guard !incomingFDs.isEmpty else {
            throw ProtocolViolation("a \(header.type) frame announced a descriptor that did not arrive", kind: .descriptor)
        }
        deliveredFD = incomingFDs.removeFirst()
        onFrame(header, payload)
        if deliveredFD >= 0 {
            FileDescriptor.closeRaw(deliveredFD)
            deliveredFD = -1
        }
    }

    /// Once every complete frame is delivered, the only descriptor that may still be held is
    /// the one of the frame being received, if it announces one (or its header is incomplete);
    /// any other was sent without a frame to claim it: closed, and the channel ends.
    private func checkHeldDescriptors() {
        guard !isClosed else { return }
        let allowed = decoder.pendingFrameMayCarryDescriptor ? 1 : 0
        if incomingFDs.count > allowed {
            end(.violation(ProtocolViolation("\(incomingFDs.count - allowed) descriptor(s) arrived with no frame announcing them",
                                             kind: .descriptor)))
        }
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
        rings?.publish()
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
            _ = try? Sys.send(fd, out.bytes(from: outStart, to: out.count))
        }
        for (_, d) in outgoingFDs { FileDescriptor.closeRaw(d) }
        outgoingFDs = []
        for d in incomingFDs { FileDescriptor.closeRaw(d) }
        incomingFDs = []
        if deliveredFD >= 0 {
            FileDescriptor.closeRaw(deliveredFD)
            deliveredFD = -1
        }
        if let r = registration { reactor.deregisterInternal(r) }
        registration = nil
        if let r = rings {
            // Records committed and not published are dropped with the channel, as queued
            // frames the socket did not take.
            if r.polled { flusher.removePolled(self) }
            r.close(reactor: reactor)
            rings = nil
        }
        handOver.closeAll()
        FileDescriptor.closeRaw(fd)
        out.removeAll(shrinkingAbove: 0, to: 0)
        outStart = 0
    }
}

// MARK: Shared-memory rings

extension Channel {
    /// Writes a frame into the outgoing ring if one is attached, the frame may travel there and
    /// fits; `fill` writes exactly `length` payload bytes at the pointer it is given. Returns
    /// false when the socket must take the frame (no ring, a frame the ring does not carry, too
    /// large, or the ring is full).
    @inline(__always)
    private func ringWrite(_ type: FrameType, flags: FrameFlags, id: UInt64, length: Int,
                           _ fill: (UnsafeMutableRawPointer) -> Void) -> Bool {
        guard let r = rings, length <= r.maxOutgoingPayload, r.carries(type, flags: flags) else { return false }
        let room: UnsafeMutableRawBufferPointer?
        do {
            room = try r.producer.reserve(payload: length)
        } catch {
            // The peer's index is inconsistent: the channel ends at the next flush; the frame
            // is dropped with it (its request is settled as the peer's are on a violation).
            if ringFailure == nil { ringFailure = error }
            if !isDirty { isDirty = true; flusher.markDirty(self) }
            return true
        }
        guard let room, let base = room.baseAddress else { return false }
        fill(base)
        r.producer.commit(length: length, kind: type.rawValue, flags: flags.rawValue, id: id)
        r.unpublished = true
        if !isDirty { isDirty = true; flusher.markDirty(self) }
        return true
    }

    /// The supervisor's side: creates a worker's ring object and both doorbells, hands them
    /// over on the socket (three ``FrameType/rings`` frames) and attaches the rings. Requests
    /// may go through them at once: the worker drains its ring when it attaches. If any step
    /// fails, the channel stays on the socket alone.
    package func offerRings(capacity: Int) {
        guard rings == nil, !isClosed else { return }
        var object: FileDescriptor?
        let mapping: SharedRingMapping
        do {
            mapping = try SharedRingMapping.create(requestCapacity: capacity, responseCapacity: capacity, descriptor: &object)
        } catch { return }
        let memfd = object.take()!.release()
        var fds: [CInt] = [memfd]
        // Ours, the worker's, and a copy of each to pass (the channel closes what it passes).
        do throws(SyscallError) {
            for _ in 0..<2 { fds.append(try Sys.eventfd().release()) }
            for i in 1...2 { fds.append(try Sys.duplicate(fds[i]).release()) }
        } catch {
            for fd in fds { FileDescriptor.closeRaw(fd) }
            mapping.unmap()
            return
        }
        let (mine, theirs, mineCopy, theirsCopy) = (fds[1], fds[2], fds[3], fds[4])
        let link: SharedRingLink
        do {
            link = try SharedRingLink(side: .supervisor, mapping: mapping, doorbell: mine, peerDoorbell: theirs)
        } catch {
            for fd in [memfd, mineCopy, theirsCopy] { FileDescriptor.closeRaw(fd) }
            return
        }
        send(.rings, id: 0, passing: memfd, payload: [])
        send(.rings, id: 1, passing: theirsCopy, payload: [])
        send(.rings, id: 2, passing: mineCopy, payload: [])
        if isClosed {
            link.close(reactor: reactor)
            return
        }
        start(link)
    }

    /// The worker's side: one ring descriptor arrived; with the third, the rings are attached.
    private func receiveRings(_ header: FrameHeader) throws(ProtocolViolation) {
        guard header.flags.announcesDescriptor, !incomingFDs.isEmpty else {
            throw ProtocolViolation("a rings frame without its descriptor", kind: .descriptor)
        }
        let fd = incomingFDs.removeFirst()
        guard rings == nil else {
            FileDescriptor.closeRaw(fd)
            throw ProtocolViolation("rings handed over twice", kind: .frame)
        }
        switch header.id {
        case 0 where handOver.object < 0: handOver.object = fd
        case 1 where handOver.doorbell < 0: handOver.doorbell = fd
        case 2 where handOver.peerDoorbell < 0: handOver.peerDoorbell = fd
        default:
            FileDescriptor.closeRaw(fd)
            throw ProtocolViolation("unexpected rings frame \(header.id)", kind: .frame)
        }
        guard handOver.isComplete else { return }
        let h = handOver
        handOver = SharedRingHandOver()
        let mapping: SharedRingMapping
        do {
            mapping = try SharedRingMapping.attach(descriptor: h.object)
        } catch {
            var rest = h
            rest.closeAll()
            throw ProtocolViolation("\(error)", kind: .frame)
        }
        FileDescriptor.closeRaw(h.object)  // the mapping keeps the object
        let link: SharedRingLink
        do {
            // On failure it has closed both doorbells and unmapped the object.
            link = try SharedRingLink(side: .worker, mapping: mapping, doorbell: h.doorbell, peerDoorbell: h.peerDoorbell)
        } catch {
            throw ProtocolViolation("\(error)", kind: .frame)
        }
        start(link)
    }

    /// Attaches `link`: its doorbell watched in the reactor, then a first drain and the sleep
    /// announcement. On a busy-polling reactor, the ring is read through the reactor's poll
    /// hooks instead, and the sleep is announced only before the reactor blocks.
    private func start(_ link: SharedRingLink) {
        do {
            link.registration = try reactor.register(link.doorbell, interest: .readable) { [unowned self] _ in self.ringWoke() }
        } catch {
            link.close(reactor: reactor)
            return end(.registrationFailed(error))
        }
        rings = link
        if reactor.busyPoll != nil {
            link.polled = true
            flusher.addPolled(self)
            drainRing()
        } else {
            settle()
        }
    }

    /// The doorbell rang: clears it, withdraws the sleep announcement, reads the ring.
    private func ringWoke() {
        guard let r = rings, !isClosed else { return }
        SharedRingDoorbell.drain(r.doorbell)
        r.consumer.woke()
        r.announced = false
        if r.polled { drainRing() } else { settle() }
    }

    /// Whether the incoming ring holds a record not yet read (true too when its index is bad:
    /// reading it then ends the channel).
    fileprivate func ringHasUnread() -> Bool {
        guard let r = rings, !isClosed else { return false }
        return (try? r.consumer.hasUnread()) ?? true
    }

    /// Once per reactor iteration on a polling reactor: withdraws a sleep announcement, reads
    /// the ring. Returns how many records were delivered.
    fileprivate func pollRing() -> Int {
        guard let r = rings, !isClosed else { return 0 }
        if r.announced {
            r.consumer.woke()
            r.announced = false
        }
        guard (try? r.consumer.hasUnread()) ?? true else { return 0 }
        return drainRing()
    }

    /// Before the polling reactor blocks: announces the sleep; true if a record arrived meanwhile.
    fileprivate func ringPrepareToBlock() -> Bool {
        guard let r = rings, !isClosed else { return false }
        do {
            if try r.consumer.prepareToSleep() {
                r.announced = true
                return false
            }
        } catch {}
        return true
    }

    /// Reads the incoming ring until it is empty and the sleep is announced with nothing
    /// arrived meanwhile (the handshake of docs/PROTOCOL.md, "Memory order").
    private func settle() {
        while !isClosed, let r = rings {
            drainRing()
            guard !isClosed else { return }
            do {
                if try r.consumer.prepareToSleep() { return }
            } catch {
                return end(.violation(ProtocolViolation(error.description, kind: .frame)))
            }
        }
    }

    /// Delivers every record published in the incoming ring, each through ``onFrame`` as a
    /// frame, its payload in the shared memory; releases them. A record the peer may not
    /// send there, or an inconsistent index, ends the channel with a violation.
    @discardableResult
    private func drainRing() -> Int {
        guard let r = rings else { return 0 }
        var count = 0
        r.delivering = true
        defer { r.delivering = false }
        do {
            while let record = try r.consumer.next() {
                let flags = FrameFlags(rawValue: record.flags)
                guard let type = FrameType(rawValue: record.kind), r.accepts(type, flags: flags) else {
                    end(.violation(ProtocolViolation("\(r.consumer.ring): a record of kind \(record.kind), flags \(record.flags)",
                                                            kind: .frame)))
                    return count
                }
                guard record.payload.count <= maxPayload else {
                    end(.violation(ProtocolViolation("\(r.consumer.ring): a payload of \(record.payload.count) bytes exceeds \(maxPayload)",
                                                            kind: .frame)))
                    return count
                }
                let header = FrameHeader(type: type, flags: flags, length: record.payload.count, id: record.id)
                count &+= 1
                // Delivered where it is: the peer can still write the shared bytes, so what is
                // kept is copied first and read there (``keep(_:)``), a batch's lengths included.
                onFrame(header, record.payload)
                if isClosed { return count }
                if count & 31 == 0, r.consumer.release() { r.ringPeer() }
            }
        } catch {
            end(.violation(ProtocolViolation(error.description, kind: .frame)))
            return count
        }
        if r.consumer.release() { r.ringPeer() }
        return count
    }
}
