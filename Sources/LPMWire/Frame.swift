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
}

/// Frame flags.
@usableFromInline package struct FrameFlags: OptionSet, Sendable, Hashable {
    @usableFromInline package let rawValue: UInt8
    @usableFromInline package init(rawValue: UInt8) { self.rawValue = rawValue }
    /// One file descriptor travels with this frame (SCM_RIGHTS on the same `sendmsg`).
    package static let descriptor = FrameFlags(rawValue: 1)
    /// A stream accompanies the frame: the descriptor passed with it is the stream's read end.
    package static let stream = FrameFlags(rawValue: 2)
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
}

/// Why a byte sequence is not a valid frame stream.
package struct ProtocolViolation: Error, Hashable, Sendable, CustomStringConvertible {
    /// What is wrong, in words.
    package var reason: String
    /// A violation for `reason`.
    package init(_ reason: String) { self.reason = reason }
    /// `protocol violation: ` and the reason.
    package var description: String { "protocol violation: \(reason)" }
}

extension Array where Element == UInt8 {
    /// Appends a frame header.
    @inlinable
    package mutating func appendFrameHeader(_ type: FrameType, flags: FrameFlags = [], length: Int, id: UInt64) {
        precondition(length >= 0 && length <= Int(UInt32.max))
        append(Wire.magic)
        append(Wire.version)
        append(type.rawValue)
        append(flags.rawValue)
        appendLittleEndian(UInt32(truncatingIfNeeded: length))
        appendLittleEndian(id)
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
/// no intermediate copy); payloads are handed out as views into it.
package final class FrameDecoder {
    /// The largest payload accepted.
    package let maxPayload: Int
    @exclusivity(unchecked) private var storage: UnsafeMutableRawPointer
    @exclusivity(unchecked) private var capacity: Int
    @exclusivity(unchecked) private var start = 0
    @exclusivity(unchecked) private var end = 0

    /// A decoder refusing payloads over `maxPayload`, with `capacity` bytes of buffer to start.
    package init(maxPayload: Int = Wire.defaultMaxPayload, capacity: Int = 64 * 1024) {
        self.maxPayload = maxPayload
        self.capacity = capacity
        storage = .allocate(byteCount: capacity, alignment: 16)
    }

    deinit { storage.deallocate() }

    /// Bytes buffered and not yet decoded.
    package var bufferedCount: Int { end - start }

    /// Makes room for at least `count` more bytes at the end.
    private func reserve(_ count: Int) {
        if start == end { start = 0; end = 0 }
        if capacity - end >= count { return }
        if start > 0 {
            (storage + 0).copyMemory(from: storage + start, byteCount: end - start)
            end -= start
            start = 0
            if capacity - end >= count { return }
        }
        var newCapacity = capacity
        while newCapacity - end < count { newCapacity *= 2 }
        let bigger = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 16)
        bigger.copyMemory(from: storage, byteCount: end)
        storage.deallocate()
        storage = bigger
        capacity = newCapacity
    }

    /// Reads from `fd` into the buffer; the corresponding C function is `read(2)`.
    /// - Returns: the byte count (0 at end of file), or `nil` when nothing is available (EAGAIN).
    package func read(from fd: CInt) throws(SyscallError) -> Int? {
        // Room for a whole frame header and a good batch; more when a large frame is pending.
        reserve(16 * 1024)
        let room = capacity - end
        switch try Sys.read(fd, UnsafeMutableRawBufferPointer(start: storage + end, count: room)) {
        case .wouldBlock: return nil
        case .processed(let n):
            end += n
            return n
        }
    }

    /// Receives from the socket `fd` into the buffer with `recvmsg(2)`; descriptors passed with
    /// SCM_RIGHTS are appended to `descriptors` (already CLOEXEC).
    /// - Returns: the byte count (0 at end of file), or `nil` when nothing is available (EAGAIN).
    package func receive(from fd: CInt, descriptors: inout [CInt]) throws(SyscallError) -> Int? {
        reserve(16 * 1024)
        let room = capacity - end
        switch try Sys.recvmsg(fd, UnsafeMutableRawBufferPointer(start: storage + end, count: room), descriptors: &descriptors) {
        case .wouldBlock: return nil
        case .processed(let n):
            end += n
            return n
        }
    }

    /// Appends bytes received some other way.
    package func append(_ bytes: UnsafeRawBufferPointer) {
        reserve(bytes.count)
        (storage + end).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
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
            guard end - start - Wire.headerSize >= length else {
                // Make sure the rest of this frame will fit.
                reserve(Wire.headerSize + length - (end - start))
                return
            }
            let header = FrameHeader(type: type, flags: FrameFlags(rawValue: h[3]), length: length,
                                     id: h.readLittleEndian(at: 8, as: UInt64.self))
            let payload = UnsafeRawBufferPointer(start: storage + start + Wire.headerSize, count: length)
            start += Wire.headerSize + length
            try body(header, payload)
        }
        if start == end { start = 0; end = 0 }
    }

    private func fail(_ reason: String) throws {
        start = 0
        end = 0
        throw ProtocolViolation(reason)
    }
}
