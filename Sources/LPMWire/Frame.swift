import LPMReactor

/// The wire format between a supervisor and its workers, version 1. See `docs/PROTOCOL.md`.
///
/// Every frame is a 16-byte little-endian header followed by `length` payload bytes:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | magic `0x4C` ('L') |
/// | 1 | 1 | version (1) |
/// | 2 | 1 | type (``FrameType``) |
/// | 3 | 1 | flags (``FrameFlags``) |
/// | 4 | 4 | payload length (u32) |
/// | 8 | 8 | id (u64): request id, event id or sequence number |
@usableFromInline package enum Wire {
    /// The first byte of every frame.
    @usableFromInline package static let magic: UInt8 = 0x4C
    /// The protocol version this build speaks.
    @usableFromInline package static let version: UInt8 = 1
    /// The header size in bytes.
    package static let headerSize = 16
    /// The default largest payload accepted, 16 MiB.
    package static let defaultMaxPayload = 16 << 20
    /// The largest payloads a side may be configured to accept: none up to 1 GiB (the length
    /// field could say 4 GiB; nothing here should ever hold that much for one peer).
    package static let maxPayloadRange = 0...(1 << 30)
    /// The default bound on the bytes a channel queues for a peer that does not read them, 4 MiB.
    /// A channel raises it to one maximum-size frame (see ``Channel/outgoingLimit``).
    package static let defaultOutgoingLimit = 4 << 20
    /// A buffer (decoding or outgoing) that grew past this for a large frame goes back to its
    /// initial size once it is drained, so one large frame is not held for the channel's life.
    package static let retainedBufferCapacity = 256 << 10
    /// The environment variable that carries the channel's descriptor number to a worker.
    package static let channelEnvironmentKey = "LPM_CHANNEL_FD"
    /// The environment variable that carries the largest payload the worker may send or receive.
    package static let maxPayloadEnvironmentKey = "LPM_MAX_FRAME"
}

/// The kind of a frame. The direction is in each case's comment (S: supervisor, W: worker).
@usableFromInline package enum FrameType: UInt8, Sendable, CaseIterable {
    /// W→S: ready to take requests (also after ``busy``).
    case ready = 1
    /// W→S: take no new requests until the next ``ready``.
    case busy = 2
    /// S→W: a request. id: request id. Payload: a ``RequestHead`` (16-byte UUID, u64 createdAt in
    /// ns on the supervisor's monotonic clock), then the request data.
    case request = 3
    /// W→S: the answer to request `id`. Payload: the response data.
    case response = 4
    /// W→S: request `id` is handled with no data.
    case ack = 5
    /// W→S: request `id` failed in the worker. Payload: a UTF-8 message.
    case error = 6
    /// Both ways: a custom event. id: 0, or a reply id when the sender wants a reply. Payload:
    /// an ``EventPayload`` (u16 name length, the UTF-8 name, then the event data).
    case event = 7
    /// Both ways: the reply to event `id`. Payload: the reply data.
    case eventReply = 8
    /// S→W: a broadcast event (payload as ``event``).
    case broadcast = 9
    /// S→W: report your memory. id: a sequence number echoed back.
    case healthRequest = 10
    /// W→S: memory report. Payload: a ``HealthReport`` (u64 heapTotal, u64 heapUsed: bytes, from
    /// malloc statistics).
    case healthReport = 11
    /// S→W: finish the requests you have, run your soft-kill handler, then exit.
    case softKill = 12
    /// S→W: you are about to be killed (SIGKILL follows).
    case hardKill = 13
    /// S→W: stop working on request `id`; its caller has given up (timeout).
    case cancel = 14
    /// Both ways: answer with ``pong`` and the same id.
    case ping = 15
    /// Both ways: the answer to ``ping``.
    case pong = 16
    /// W→S: a socket passed with a request was closed by the worker. id: the request id.
    case socketClosed = 17
    /// W→S: the response stream of request `id` is complete. Payload: a ``StreamEnd`` (u64 byte
    /// count, u8 status: 0 complete, 1 the worker failed to produce it).
    case streamEnd = 18
    /// S→W, only to a worker whose `ready` announced ``WorkerCapabilities/rings``: hands over
    /// one descriptor of its shared-memory rings (docs/PROTOCOL.md, "Hand-over and
    /// negotiation"). id: 0 the ring object (a memfd), 1 the worker's doorbell, 2 the
    /// supervisor's doorbell (eventfds). No payload.
    case rings = 19
}

/// Frame flags.
@usableFromInline package struct FrameFlags: OptionSet, Sendable, Hashable {
    @usableFromInline package let rawValue: UInt8
    @usableFromInline package init(rawValue: UInt8) { self.rawValue = rawValue }
    /// One file descriptor travels with this frame (SCM_RIGHTS on the same `sendmsg`).
    package static let descriptor = FrameFlags(rawValue: 1)
    /// A stream accompanies the frame: the descriptor passed with it is the stream's read end.
    package static let stream = FrameFlags(rawValue: 2)
    /// A batch: a `request` carrying several requests, or the `response` carrying their answers
    /// (see ``Batch``). Sent only to workers whose ready frame announced
    /// ``WorkerCapabilities/batches``.
    package static let batch = FrameFlags(rawValue: 4)
    /// Whether the frame claims a descriptor: ``descriptor`` or ``stream`` (either means exactly
    /// one descriptor travels with the frame). Bits, not a set built per call: this runs per frame.
    @inlinable package var announcesDescriptor: Bool { rawValue & 0b11 != 0 }
}

/// A decoded frame header.
package struct FrameHeader: Sendable, Hashable {
    /// The frame type.
    package var type: FrameType
    /// The flags.
    package var flags: FrameFlags
    /// The payload length in bytes.
    package var length: Int
    /// The request id, event id or sequence number.
    package var id: UInt64

    /// A header with these fields.
    package init(type: FrameType, flags: FrameFlags = [], length: Int, id: UInt64) {
        self.type = type
        self.flags = flags
        self.length = length
        self.id = id
    }

    /// The header's first 8 bytes as one word (to be stored little-endian): magic, version,
    /// type, flags, then the u32 payload length.
    @inline(__always)
    package static func firstWord(_ type: FrameType, flags: FrameFlags, length: Int) -> UInt64 {
        UInt64(Wire.magic) | UInt64(Wire.version) << 8 | UInt64(type.rawValue) << 16
            | UInt64(flags.rawValue) << 24 | UInt64(length) << 32
    }
}

/// Why a byte sequence is not a valid frame stream.
package struct ProtocolViolation: Error, Hashable, Sendable, CustomStringConvertible {
    /// What is wrong, in words.
    package var reason: String
    /// What kind of rule was broken.
    package var kind: Kind

    /// The kinds of violation a channel tells apart.
    package enum Kind: Hashable, Sendable {
        /// Bytes that are not a valid frame stream, or a payload that does not fit its type.
        case frame
        /// A descriptor that no frame announced, a frame announcing one that did not come, or
        /// descriptors cut off by the kernel (`MSG_CTRUNC`).
        case descriptor
        /// The peer does not read: `queued` bytes are waiting for it, more than the channel's
        /// outgoing limit.
        case peerNotReading(queued: Int)
    }

    /// A violation for `reason`.
    package init(_ reason: String, kind: Kind = .frame) {
        self.reason = reason
        self.kind = kind
    }

    /// The peer does not read its end of the channel: `queued` bytes wait for it.
    package static func peerNotReading(queued: Int) -> ProtocolViolation {
        ProtocolViolation("the peer does not read: \(queued) bytes queued", kind: .peerNotReading(queued: queued))
    }

    /// `protocol violation: ` and the reason.
    package var description: String { "protocol violation: \(reason)" }
}

extension Array where Element == UInt8 {
    /// Appends a frame header.
    @inlinable
    package mutating func appendFrameHeader(_ type: FrameType, flags: FrameFlags = [], length: Int, id: UInt64) {
        precondition(length >= 0 && length <= Int(UInt32.max))
        // The 16 bytes as two little-endian words, appended in one copy (six appends cost
        // several times more, each checking capacity and uniqueness): magic, version, type,
        // flags and the u32 length, then the u64 id.
        let first = UInt64(Wire.magic) | UInt64(Wire.version) << 8 | UInt64(type.rawValue) << 16
            | UInt64(flags.rawValue) << 24 | UInt64(length) << 32
        Swift.withUnsafeBytes(of: (first.littleEndian, id.littleEndian)) { append(contentsOf: $0) }
    }

    /// Appends a whole frame.
    @inlinable
    package mutating func appendFrame(_ type: FrameType, flags: FrameFlags = [], id: UInt64, payload: some Collection<UInt8>) {
        appendFrameHeader(type, flags: flags, length: payload.count, id: id)
        append(contentsOf: payload)
    }

    /// Appends a fixed-width integer, little-endian.
    @inlinable
    package mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        var v = value.littleEndian
        Swift.withUnsafeBytes(of: &v) { append(contentsOf: $0) }
    }
}

extension UnsafeRawBufferPointer {
    /// Reads a little-endian integer at `offset` (no alignment needed).
    @inlinable
    package func readLittleEndian<T: FixedWidthInteger>(at offset: Int, as: T.Type = T.self) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

/// Splits a byte stream into frames. Survives any byte sequence: anything that is not a valid
/// frame is reported as a ``ProtocolViolation`` and decoding stops.
///
/// Owns a raw buffer that `read(from:)` fills straight from the descriptor (no zero-filling,
/// no intermediate copy); payloads are handed out as views into it. The buffer grows as bytes
/// arrive, never on a header's word alone (a header announcing 16 MiB reserves nothing), and goes
/// back to its initial size once a large frame has been decoded.
package final class FrameDecoder {
    /// The largest payload accepted.
    package let maxPayload: Int
    /// The buffer the reads go to; payloads decoded from it may be lent (``lend(_:)``), so it
    /// is written in place only where no lent payload lies: after ``end``, or anywhere once
    /// nobody else holds it.
    @exclusivity(unchecked) private var owner: ByteStorage
    /// `owner`'s first byte.
    @exclusivity(unchecked) private var storage: UnsafeMutableRawPointer
    /// The buffer's size in bytes: the initial capacity, or more while a large frame is read.
    @exclusivity(unchecked) package private(set) var capacity: Int
    @exclusivity(unchecked) private var start = 0
    @exclusivity(unchecked) private var end = 0
    private let initialCapacity: Int
    /// Room each read asks for; the largest the buffer grows to is one maximum-size frame and this.
    private static let readRoom = 16 * 1024
    private let control = ControlBuffer()
    /// Whether the last ``receive(from:descriptors:)`` lost descriptors (`MSG_CTRUNC`).
    @exclusivity(unchecked) package private(set) var descriptorsTruncated = false

    /// A decoder refusing payloads over `maxPayload`, with `capacity` bytes of buffer to start.
    /// - Precondition: `maxPayload` is in ``Wire/maxPayloadRange`` and `capacity` is positive
    ///   (callers check what they are given: a configuration, the environment).
    package init(maxPayload: Int = Wire.defaultMaxPayload, capacity: Int = 64 * 1024) {
        precondition(Wire.maxPayloadRange.contains(maxPayload),
                     "FrameDecoder: maxPayload \(maxPayload) is outside \(Wire.maxPayloadRange)")
        precondition(capacity > 0, "FrameDecoder: the buffer capacity must be positive")
        self.maxPayload = maxPayload
        self.capacity = capacity
        initialCapacity = capacity
        owner = ByteStorage.make(capacity: capacity)
        storage = owner.base
    }

    /// Bytes buffered and not yet decoded.
    package var bufferedCount: Int { end - start }

    /// Whether the bytes left after ``decode(_:)`` may be the start of a frame that carries a
    /// descriptor: its header is not complete yet, or it is and announces one.
    package var pendingFrameMayCarryDescriptor: Bool {
        let n = end - start
        guard n >= Wire.headerSize else { return n > 0 }
        return FrameFlags(rawValue: storage.load(fromByteOffset: start + 3, as: UInt8.self)).announcesDescriptor
    }

    /// Makes room for at least `count` more bytes at the end.
    private func reserve(_ count: Int) {
        // Bytes before `start` are decoded: they may be moved over only if no payload among
        // them is lent. A shared buffer takes reads after its last byte while there is room,
        // then the undecoded bytes move to a new one (the lent ones stay with their holders).
        if start == end && isKnownUniquelyReferenced(&owner) { start = 0; end = 0 }
        if capacity - end >= count { return }
        let pending = end - start
        guard isKnownUniquelyReferenced(&owner) else {
            return resize(to: grown(initialCapacity, toHold: pending, plus: count))
        }
        if start > 0 {
            (storage + 0).copyMemory(from: storage + start, byteCount: pending)
            end = pending
            start = 0
            if capacity - end >= count { return }
        }
        resize(to: grown(capacity, toHold: pending, plus: count))
    }

    /// `from`, doubled until `held` bytes and `count` more fit, up to one maximum-size frame and
    /// a read's room.
    private func grown(_ from: Int, toHold held: Int, plus count: Int) -> Int {
        var newCapacity = from
        while newCapacity - held < count { newCapacity *= 2 }
        return min(newCapacity, max(held + count, Wire.headerSize + maxPayload + Self.readRoom))
    }

    /// Moves the undecoded bytes to a new buffer of `newCapacity` bytes (at least that many).
    /// The old one goes when nobody holds a payload lent from it.
    private func resize(to newCapacity: Int) {
        let bigger = ByteStorage.make(capacity: newCapacity)
        bigger.base.copyMemory(from: storage + start, byteCount: end - start)
        owner = bigger
        storage = bigger.base
        capacity = newCapacity
        end -= start
        start = 0
    }

    /// The storage holding `payload`, one that ``decode(_:)`` passed: whoever keeps it may
    /// read `payload` for as long as it does (those bytes are never written again). `nil` for
    /// bytes from elsewhere.
    package func lend(_ payload: UnsafeRawBufferPointer) -> ByteStorage? {
        guard let p = payload.baseAddress, UnsafeRawPointer(storage) <= p,
              p + payload.count <= UnsafeRawPointer(storage + capacity) else { return nil }
        return owner
    }

    /// Reads from `fd` into the buffer; the corresponding C function is `read(2)`.
    /// - Returns: the byte count (0 at end of file), or `nil` when nothing is available (EAGAIN).
    package func read(from fd: CInt) throws(SyscallError) -> Int? {
        reserve(Self.readRoom)
        switch try Sys.read(fd, UnsafeMutableRawBufferPointer(start: storage + end, count: capacity - end)) {
        case .wouldBlock: return nil
        case .processed(let n):
            end += n
            return n
        }
    }

    /// Receives from the socket `fd` into the buffer with `recvmsg(2)`; descriptors passed with
    /// SCM_RIGHTS are appended to `descriptors` (already CLOEXEC). When the kernel cut the
    /// descriptors short, ``descriptorsTruncated`` says so.
    /// - Returns: the byte count (0 at end of file), or `nil` when nothing is available (EAGAIN).
    package func receive(from fd: CInt, descriptors: inout [CInt]) throws(SyscallError) -> Int? {
        reserve(Self.readRoom)
        let room = UnsafeMutableRawBufferPointer(start: storage + end, count: capacity - end)
        switch try control.receive(fd, into: room, descriptors: &descriptors) {
        case .wouldBlock: return nil
        case .processed(let r):
            descriptorsTruncated = r.truncated
            end += r.count
            return r.count
        }
    }

    /// Appends bytes received some other way. An empty buffer (even one with no base address)
    /// appends nothing.
    package func append(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        reserve(bytes.count)
        (storage + end).copyMemory(from: base, byteCount: bytes.count)
        end += bytes.count
    }

    /// Decodes every complete frame in the buffer, calling `body` with each header and its
    /// payload (valid only during the call; `body` must not call back into this decoder).
    /// - Throws: ``ProtocolViolation`` at the first invalid header; the remaining bytes are
    ///   dropped. Errors thrown by `body` propagate.
    package func decode(_ body: (FrameHeader, UnsafeRawBufferPointer) throws -> Void) throws {
        while end - start >= Wire.headerSize {
            let h = UnsafeRawBufferPointer(start: storage + start, count: Wire.headerSize)
            guard h[0] == Wire.magic else { return try fail("bad magic byte 0x\(String(h[0], radix: 16))") }
            guard h[1] == Wire.version else { return try fail("unsupported protocol version \(h[1])") }
            guard let type = FrameType(rawValue: h[2]) else { return try fail("unknown frame type \(h[2])") }
            let length = Int(h.readLittleEndian(at: 4, as: UInt32.self))
            guard length <= maxPayload else {
                return try fail("frame of \(length) bytes exceeds the limit of \(maxPayload)")
            }
            // An incomplete frame waits for its bytes; the reads make room as they come.
            guard end - start - Wire.headerSize >= length else { break }
            let header = FrameHeader(type: type, flags: FrameFlags(rawValue: h[3]), length: length,
                                     id: h.readLittleEndian(at: 8, as: UInt64.self))
            let payload = UnsafeRawBufferPointer(start: storage + start + Wire.headerSize, count: length)
            start += Wire.headerSize + length
            try body(header, payload)
        }
        if capacity > Wire.retainedBufferCapacity { shrink() }
    }

    /// Gives a buffer that grew for a large frame back its initial size, once what is left fits
    /// there with room to spare (and is not the start of another large frame).
    private func shrink() {
        var need = end - start
        if need >= Wire.headerSize {
            need = Wire.headerSize + Int((storage + start).loadUnaligned(fromByteOffset: 4, as: UInt32.self).littleEndian)
        }
        guard need <= initialCapacity / 2, initialCapacity < capacity else { return }
        resize(to: initialCapacity)
    }

    private func fail(_ reason: String) throws {
        start = end
        throw ProtocolViolation(reason)
    }
}
