import Glibc
import LPMReactor
import LPMWire
import Testing

/// A channel on a reactor of its own, over a real socketpair; the test plays the peer on the
/// other end.
private final class Harness {
    let reactor: Reactor
    let flusher: ChannelFlusher
    let channel: Channel
    /// The peer's end (non-blocking), owned by the harness (-1 once ``closePeer()`` closed it).
    private(set) var peer: CInt
    var ends: [ChannelEnd] = []
    var frames: [FrameHeader] = []

    init(maxPayload: Int = 1024, outgoingLimit: Int = Wire.defaultOutgoingLimit) throws {
        reactor = try Reactor(backend: .only(.epoll))
        flusher = ChannelFlusher(reactor: reactor)
        let pair = try Sys.socketpair(flags: CInt(SOCK_NONBLOCK.rawValue))
        peer = pair.second.release()
        channel = Channel(fd: pair.first.release(), reactor: reactor, flusher: flusher, maxPayload: maxPayload,
                          outgoingLimit: outgoingLimit)
        channel.onEnd = { [unowned self] in self.ends.append($0) }
        channel.onFrame = { [unowned self] h, _ in self.frames.append(h) }
        try channel.start()
    }

    /// Runs the reactor until `done` holds (10 s at most).
    func run(until done: () -> Bool) throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while !done() && ContinuousClock.now < deadline { _ = try reactor.runOnce(timeout: .milliseconds(5)) }
    }

    /// Runs a few reactor iterations, for what should not happen.
    func spin() throws {
        for _ in 0..<10 { _ = try reactor.runOnce(timeout: .milliseconds(2)) }
    }

    /// Sends `bytes` from the peer with `descriptors` attached in one `sendmsg(2)` (SCM_RIGHTS).
    func send(_ bytes: [UInt8], descriptors: [CInt]) -> Int {
        // struct cmsghdr on Linux: size_t cmsg_len, int cmsg_level, int cmsg_type, then the data.
        let headerSize = MemoryLayout<Int>.size + 2 * MemoryLayout<CInt>.size
        let dataSize = descriptors.count * MemoryLayout<CInt>.size
        var control = [UInt8](repeating: 0, count: headerSize + (dataSize + 7) / 8 * 8)
        control.withUnsafeMutableBytes { c in
            c.storeBytes(of: headerSize + dataSize, toByteOffset: 0, as: Int.self)
            c.storeBytes(of: SOL_SOCKET, toByteOffset: MemoryLayout<Int>.size, as: CInt.self)
            c.storeBytes(of: CInt(SCM_RIGHTS), toByteOffset: MemoryLayout<Int>.size + MemoryLayout<CInt>.size, as: CInt.self)
            for (k, d) in descriptors.enumerated() { c.storeBytes(of: d, toByteOffset: headerSize + k * 4, as: CInt.self) }
        }
        var bytes = bytes
        return bytes.withUnsafeMutableBytes { b in
            control.withUnsafeMutableBytes { c in
                var iov = iovec(iov_base: b.baseAddress, iov_len: b.count)
                return withUnsafeMutablePointer(to: &iov) { iovp in
                    var msg = msghdr()
                    msg.msg_iov = iovp
                    msg.msg_iovlen = 1
                    msg.msg_control = c.baseAddress
                    msg.msg_controllen = c.count
                    return Glibc.sendmsg(peer, &msg, CInt(MSG_NOSIGNAL))
                }
            }
        }
    }

    /// Closes the peer's end, as a peer that exits.
    func closePeer() {
        FileDescriptor.closeRaw(peer)
        peer = -1
    }

    deinit {
        channel.close()
        reactor.close()
        if peer >= 0 { FileDescriptor.closeRaw(peer) }
    }
}

/// One end of a socketpair to pass, and its partner to watch: once every copy of the passed end
/// is closed, the partner reads end of file. That proves the channel closed what it received
/// without counting the process's descriptors (tests run in parallel).
private struct PassedSocket {
    let passed: CInt
    let partner: CInt

    init() throws {
        let pair = try Sys.socketpair(flags: CInt(SOCK_NONBLOCK.rawValue))
        passed = pair.first.release()
        partner = pair.second.release()
    }

    /// Whether every copy of the passed end is closed (ours is closed here first).
    ///
    /// Waits for the end of file (5 s at most): the last reference to a socket that travelled
    /// with SCM_RIGHTS may be dropped by the kernel a moment after the `close` that released it
    /// (seen about once in 50 runs under parallel load, when the partner was read at once).
    func allCopiesClosed() -> Bool {
        FileDescriptor.closeRaw(passed)
        defer { FileDescriptor.closeRaw(partner) }
        var p = pollfd(fd: partner, events: Int16(POLLIN), revents: 0)
        _ = poll(&p, 1, 5000)
        var byte: UInt8 = 0
        return recv(partner, &byte, 1, 0) == 0
    }
}

private func frame(_ type: FrameType, flags: FrameFlags = [], id: UInt64 = 1) -> [UInt8] {
    var bytes: [UInt8] = []
    bytes.appendFrame(type, flags: flags, id: id, payload: [UInt8]())
    return bytes
}

private extension ChannelEnd {
    var violationKind: ProtocolViolation.Kind? {
        if case .violation(let v) = self { return v.kind }
        return nil
    }
}

@Suite("Channel bounds", .timeLimit(.minutes(1)))
struct ChannelBoundsTests {
    @Test("a peer that never reads ends the channel once the outgoing limit is passed; no more is queued")
    func peerNotReading() throws {
        let limit = 64 * 1024
        let h = try Harness(outgoingLimit: limit)
        #expect(h.channel.outgoingLimit == limit)
        var mostQueued = 0
        var sent = 0
        try h.run {
            for _ in 0..<512 {
                h.channel.send(.ping, id: UInt64(sent))
                sent += 1
            }
            mostQueued = max(mostQueued, h.channel.pendingOutput)
            return !h.ends.isEmpty
        }
        #expect(h.ends.count == 1)
        guard case .peerNotReading(let queued)? = h.ends.first?.violationKind else {
            Issue.record("ended with \(h.ends), not peerNotReading")
            return
        }
        #expect(queued > limit && queued <= limit + Wire.headerSize)
        #expect(mostQueued <= limit + Wire.headerSize)
        #expect(h.ends.first?.description == "protocol violation: the peer does not read: \(queued) bytes queued")
        #expect(h.channel.isClosed)
    }

    @Test("a write to a peer that has gone reads what it sent first: its last frames are delivered, then the channel ends once")
    func lastFramesBeforeBrokenPipe() throws {
        let h = try Harness()
        var bytes: [UInt8] = []
        for i in 0..<50 { bytes.appendFrame(.response, id: UInt64(i + 1), payload: [UInt8](repeating: 7, count: 100)) }
        #expect(write(h.peer, bytes, bytes.count) == bytes.count)
        h.closePeer()
        // A frame to the peer, written before the reactor saw the socket readable: EPIPE.
        h.channel.send(.ping, id: 99)
        h.flusher.flushAll()
        #expect(h.frames.map(\.id) == (1...50).map(UInt64.init), "every frame the peer sent before it went")
        #expect(h.ends.count == 1)
        try h.spin()
        #expect(h.ends.count == 1 && h.frames.count == 50)
    }

    @Test("the outgoing limit is never below one maximum-size frame, which can always be queued")
    func limitHoldsOneFrame() throws {
        let h = try Harness(maxPayload: 256 * 1024, outgoingLimit: 1)
        #expect(h.channel.outgoingLimit == Wire.headerSize + 256 * 1024)
        h.channel.send(.response, id: 1, payload: [UInt8](repeating: 7, count: 256 * 1024))
        try h.run { h.channel.pendingOutput < 256 * 1024 }
        #expect(h.ends.isEmpty)
    }

    @Test("a descriptor on a frame that announces none is closed and ends the channel")
    func strayDescriptor() throws {
        let h = try Harness()
        let passed = try PassedSocket()
        #expect(h.send(frame(.ping), descriptors: [passed.passed]) == Wire.headerSize)
        try h.run { !h.ends.isEmpty }
        #expect(h.ends.first?.violationKind == .descriptor)
        #expect(passed.allCopiesClosed())
    }

    @Test("descriptors on a partial header count against the frame: a second one is a violation")
    func strayDescriptorsOnPartialFrame() throws {
        let h = try Harness()
        let passed = try PassedSocket()
        let bytes = frame(.ping)
        #expect(h.send(Array(bytes[0..<4]), descriptors: [passed.passed]) == 4)
        try h.spin()
        #expect(h.ends.isEmpty)  // one may still belong to this frame
        #expect(h.send(Array(bytes[4..<8]), descriptors: [passed.passed]) == 4)
        try h.run { !h.ends.isEmpty }
        #expect(h.ends.first?.violationKind == .descriptor)
        #expect(passed.allCopiesClosed())
    }

    @Test("a descriptor announced and not taken is closed after its frame; the channel goes on")
    func announcedNotTaken() throws {
        let h = try Harness()
        let passed = try PassedSocket()
        #expect(h.send(frame(.event, flags: .descriptor), descriptors: [passed.passed]) == Wire.headerSize)
        try h.run { !h.frames.isEmpty }
        #expect(h.ends.isEmpty && !h.channel.isClosed)
        #expect(h.channel.takeDescriptor() == nil)  // outside the frame's delivery
        #expect(passed.allCopiesClosed())
    }

    @Test("a descriptor announced and taken belongs to the caller, open and CLOEXEC")
    func announcedAndTaken() throws {
        let h = try Harness()
        let passed = try PassedSocket()
        var taken: CInt?
        h.channel.onFrame = { [unowned h] header, _ in
            h.frames.append(header)
            taken = h.channel.takeDescriptor()
            #expect(h.channel.takeDescriptor() == nil)
        }
        #expect(h.send(frame(.response, flags: [.descriptor, .stream]), descriptors: [passed.passed]) == Wire.headerSize)
        try h.run { !h.frames.isEmpty }
        let fd = try #require(taken)
        #expect(fcntl(fd, F_GETFD) == FD_CLOEXEC)
        #expect(h.ends.isEmpty)
        FileDescriptor.closeRaw(fd)
        #expect(passed.allCopiesClosed())
    }

    @Test("a frame that announces a descriptor that did not come is a violation")
    func announcedMissing() throws {
        let h = try Harness()
        _ = frame(.event, flags: .descriptor).withUnsafeBytes { Glibc.send(h.peer, $0.baseAddress, $0.count, 0) }
        try h.run { !h.ends.isEmpty }
        #expect(h.ends.first?.violationKind == .descriptor)
        #expect(h.frames.isEmpty)
    }

    @Test("more descriptors in one message than the receiver takes (MSG_CTRUNC) is a violation; none stays open")
    func truncatedDescriptors() throws {
        let h = try Harness()
        let passed = try PassedSocket()
        #expect(h.send(frame(.event, flags: .descriptor), descriptors: Array(repeating: passed.passed, count: 40)) == Wire.headerSize)
        try h.run { !h.ends.isEmpty }
        #expect(h.ends.first?.violationKind == .descriptor)
        #expect(h.frames.isEmpty)
        #expect(passed.allCopiesClosed())
    }

    @Test("the receive buffer grows for a large frame and comes back down after it")
    func receiveBufferShrinks() throws {
        let h = try Harness(maxPayload: 2 << 20)
        let initial = h.channel.receiveCapacity
        var capacityDuringFrame = 0
        h.channel.onFrame = { [unowned h] header, payload in
            h.frames.append(header)
            if header.length > 0 { capacityDuringFrame = h.channel.receiveCapacity }
        }
        var bytes: [UInt8] = []
        bytes.appendFrame(.response, id: 1, payload: [UInt8](repeating: 3, count: 1 << 20))
        bytes.appendFrame(.ping, id: 2, payload: [UInt8]())
        var offset = 0
        try h.run {
            if offset < bytes.count {
                let n = bytes.withUnsafeBytes { Glibc.send(h.peer, $0.baseAddress! + offset, $0.count - offset, 0) }
                if n > 0 { offset += n }
            }
            return h.frames.count == 2
        }
        #expect(h.frames.map(\.id) == [1, 2])
        #expect(capacityDuringFrame >= 1 << 20)
        // Never past one maximum-size frame and a read's room.
        #expect(capacityDuringFrame <= Wire.headerSize + (2 << 20) + 16 * 1024)
        #expect(h.channel.receiveCapacity == initial)
        #expect(h.ends.isEmpty)
    }

    @Test("the outgoing buffer gives back its memory once a large frame is written")
    func sendBufferShrinks() throws {
        let h = try Harness(maxPayload: 2 << 20)
        h.channel.send(.response, id: 1, payload: [UInt8](repeating: 5, count: 1 << 20))
        #expect(h.channel.sendCapacity >= 1 << 20)
        var received = 0
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        try h.run {
            let n = buffer.withUnsafeMutableBytes { recv(h.peer, $0.baseAddress, $0.count, 0) }
            if n > 0 { received += n }
            return received == (1 << 20) + Wire.headerSize && h.channel.pendingOutput == 0
        }
        #expect(received == (1 << 20) + Wire.headerSize)
        #expect(h.channel.sendCapacity < Wire.retainedBufferCapacity)
        #expect(h.ends.isEmpty)
    }
}

@Suite("Frame decoder bounds")
struct FrameDecoderBoundsTests {
    @Test("a header announcing a large payload reserves nothing: the buffer grows only as bytes arrive")
    func headerAloneReservesNothing() throws {
        let d = FrameDecoder(maxPayload: Wire.maxPayloadRange.upperBound, capacity: 1024)
        var header: [UInt8] = []
        header.appendFrameHeader(.response, length: Wire.maxPayloadRange.upperBound, id: 1)
        header.withUnsafeBytes { d.append($0) }
        try d.decode { _, _ in Issue.record("no frame is complete") }
        #expect(d.capacity == 1024)
        #expect(d.bufferedCount == Wire.headerSize)
        #expect(d.pendingFrameMayCarryDescriptor == false)
    }

    @Test("an empty buffer, even with no base address, appends nothing")
    func emptyAppend() throws {
        let d = FrameDecoder()
        d.append(UnsafeRawBufferPointer(start: nil, count: 0))
        [UInt8]().withUnsafeBytes { d.append($0) }
        #expect(d.bufferedCount == 0)
    }

    @Test("after a large frame the buffer goes back to its first size, keeping a partial frame")
    func shrinksKeepingPartialFrame() throws {
        let d = FrameDecoder(maxPayload: 1 << 20, capacity: 4096)
        var bytes: [UInt8] = []
        bytes.appendFrame(.response, id: 1, payload: [UInt8](repeating: 9, count: 512 * 1024))
        bytes.appendFrame(.event, flags: .descriptor, id: 2, payload: [UInt8](repeating: 1, count: 100))
        bytes.removeLast(50)
        bytes.withUnsafeBytes { d.append($0) }
        #expect(d.capacity >= 512 * 1024)
        var ids: [UInt64] = []
        try d.decode { h, p in ids.append(h.id); #expect(p.count == h.length) }
        #expect(ids == [1])
        #expect(d.capacity == 4096)
        #expect(d.bufferedCount == Wire.headerSize + 50)
        #expect(d.pendingFrameMayCarryDescriptor)
        [UInt8](repeating: 1, count: 50).withUnsafeBytes { d.append($0) }
        try d.decode { h, p in ids.append(h.id); #expect(p.allSatisfy { $0 == 1 } && p.count == 100) }
        #expect(ids == [1, 2])
    }

    @Test("a partial header may still announce a descriptor; a complete one says")
    func pendingDescriptor() throws {
        let d = FrameDecoder()
        #expect(!d.pendingFrameMayCarryDescriptor)
        var bytes: [UInt8] = []
        bytes.appendFrameHeader(.ping, length: 4, id: 1)
        Array(bytes[0..<3]).withUnsafeBytes { d.append($0) }
        #expect(d.pendingFrameMayCarryDescriptor)
        Array(bytes[3...]).withUnsafeBytes { d.append($0) }
        #expect(!d.pendingFrameMayCarryDescriptor)
    }

    @Test("a zero buffer capacity is a programming error")
    func zeroCapacity() async {
        await #expect(processExitsWith: .failure) { _ = FrameDecoder(capacity: 0) }
    }

    @Test("a payload limit outside the sane range is a programming error", arguments: [-1, (1 << 30) + 1, Int.max])
    func insaneMaxPayload(_ limit: Int) async {
        await #expect(processExitsWith: .failure) { [limit] in _ = FrameDecoder(maxPayload: limit) }
    }
}
