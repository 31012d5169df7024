// The payload layouts of the frames that carry more than raw data: one codec per message, used by
// both the supervisor and the worker runtime, so no layout is written down twice. Integers in
// payloads are little-endian, like the frame header. See `docs/PROTOCOL.md`.
//
// Encoders append to the caller's buffer (the channel's output buffer, through
// `Channel.send(_:id:flags:length:_:)`), and decoders read straight from the frame's payload view:
// neither allocates.

/// A message with a fixed-size layout filling a frame's payload: ``HealthReport``, ``StreamEnd``.
@usableFromInline package protocol FixedSizeMessage: Sendable, Equatable {
    /// The encoded size in bytes.
    static var size: Int { get }
    /// Reads the message from the first ``size`` bytes of `payload`, which holds at least that many.
    init(unchecked payload: UnsafeRawBufferPointer)
    /// Appends the ``size`` bytes.
    func encode(into out: inout [UInt8])
}

extension FixedSizeMessage {
    /// The message; nil when `payload` is shorter than ``size``. Bytes past it are not read.
    @inlinable
    package static func decode(_ payload: UnsafeRawBufferPointer) -> Self? {
        payload.count >= size ? Self(unchecked: payload) : nil
    }
}

/// The start of a `request` frame's payload: the request's UUID and the time the supervisor
/// accepted it. The request data follows it.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 16 | id: a UUID, version 4, network order |
/// | 16 | 8 | createdAt: u64, nanoseconds on the supervisor's `CLOCK_MONOTONIC` |
@usableFromInline package struct RequestHead: Sendable, Equatable {
    /// The encoded size in bytes.
    @usableFromInline package static let size = 24
    /// The request's id.
    @usableFromInline package var id: RequestID
    /// When the supervisor accepted the request: nanoseconds on its monotonic clock.
    @usableFromInline package var createdAt: UInt64

    /// A head with these fields.
    @inlinable
    package init(id: RequestID, createdAt: UInt64) {
        self.id = id
        self.createdAt = createdAt
    }

    /// Appends the 24 bytes.
    @inlinable
    package func encode(into out: inout [UInt8]) {
        id.append(to: &out)
        out.appendLittleEndian(createdAt)
    }

    /// The head and the body after it; nil when `payload` is shorter than `size`.
    @inlinable
    package static func decode(_ payload: UnsafeRawBufferPointer) -> (head: RequestHead, body: UnsafeRawBufferPointer)? {
        guard payload.count >= size else { return nil }
        let head = RequestHead(id: RequestID(loading: payload), createdAt: payload.readLittleEndian(at: 16, as: UInt64.self))
        return (head, UnsafeRawBufferPointer(rebasing: payload[size...]))
    }
}

/// The payload of a `healthReport` frame: the worker's heap, in bytes.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | heapTotal: u64 |
/// | 8 | 8 | heapUsed: u64 |
@usableFromInline package struct HealthReport: FixedSizeMessage {
    /// The encoded size in bytes.
    @usableFromInline package static let size = 16
    /// The bytes the allocator holds from the system (`Int`, as both sides count bytes; sent as
    /// its u64 bit pattern).
    @usableFromInline package var heapTotal: Int
    /// The bytes of it in use.
    @usableFromInline package var heapUsed: Int

    /// A report with these figures.
    @inlinable
    package init(heapTotal: Int, heapUsed: Int) {
        (self.heapTotal, self.heapUsed) = (heapTotal, heapUsed)
    }

    /// Appends the 16 bytes.
    @inlinable
    package func encode(into out: inout [UInt8]) {
        for field in [heapTotal, heapUsed] { out.appendLittleEndian(UInt64(truncatingIfNeeded: field)) }
    }

    @inlinable
    package init(unchecked payload: UnsafeRawBufferPointer) {
        self.init(heapTotal: Int(truncatingIfNeeded: payload.readLittleEndian(at: 0, as: UInt64.self)),
                  heapUsed: Int(truncatingIfNeeded: payload.readLittleEndian(at: 8, as: UInt64.self)))
    }
}

/// The payload of a `streamEnd` frame: how many bytes the worker wrote to the response stream,
/// and whether it produced all of them.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | count: u64 |
/// | 8 | 1 | status: 0 complete; 1 (any other value) failed |
@usableFromInline package struct StreamEnd: FixedSizeMessage {
    /// The encoded size in bytes.
    @usableFromInline package static let size = 9
    /// The bytes written to the stream.
    @usableFromInline package var count: UInt64
    /// The status byte as sent: 0 complete, anything else failed (kept as sent, so a status
    /// added later reads as "failed" here, never as a crash).
    @usableFromInline package var status: UInt8

    /// Whether the stream is complete (status 0).
    @inlinable package var ok: Bool { status == 0 }

    /// An end with these fields.
    @inlinable
    package init(count: UInt64, ok: Bool) {
        self.count = count
        status = ok ? 0 : 1
    }

    /// Appends the 9 bytes: the count, then the status.
    @inlinable
    package func encode(into out: inout [UInt8]) {
        out.appendLittleEndian(count)
        out.append(status)
    }

    @inlinable
    package init(unchecked payload: UnsafeRawBufferPointer) {
        count = payload.readLittleEndian(at: 0, as: UInt64.self)
        status = payload[8]
    }

    /// Equal when they say the same thing: the same count, both complete or both failed.
    @inlinable
    package static func == (a: StreamEnd, b: StreamEnd) -> Bool { a.count == b.count && a.ok == b.ok }
}

/// The payload of `event` and `broadcast` frames: u16 name length, the UTF-8 name, the data.
package enum EventPayload {
    /// Encodes an event's name and data. A name longer than 65,535 UTF-8 bytes is cut there.
    package static func encode(name: String, data: [UInt8]) -> [UInt8] {
        var body: [UInt8] = []
        var name = name
        name.withUTF8 { n in
            let count = min(n.count, Int(UInt16.max))
            body.reserveCapacity(2 + count + data.count)
            body.appendLittleEndian(UInt16(count))
            body.append(contentsOf: UnsafeBufferPointer(rebasing: n[..<count]))
        }
        body.append(contentsOf: data)
        return body
    }

    /// Decodes an event's name and data; `nil` when the name runs past the payload.
    package static func decode(_ payload: UnsafeRawBufferPointer) -> (name: String, data: [UInt8])? {
        guard payload.count >= 2 else { return nil }
        let n = Int(payload.readLittleEndian(at: 0, as: UInt16.self))
        guard payload.count >= 2 + n else { return nil }
        let name = String(decoding: UnsafeRawBufferPointer(rebasing: payload[2..<2 + n]), as: UTF8.self)
        return (name, Array(UnsafeRawBufferPointer(rebasing: payload[(2 + n)...])))
    }
}
