// Several requests in one frame, and their answers in one frame: what `Supervisor.map` sends to
// workers whose ready frame announced ``WorkerCapabilities/batches``. See `docs/PROTOCOL.md`.

/// What a worker announces in the payload of its `ready` frame: a u32, little-endian (an empty
/// payload announces nothing; bits a supervisor does not know are ignored).
package struct WorkerCapabilities: OptionSet, Sendable, Hashable {
    package let rawValue: UInt32
    package init(rawValue: UInt32) { self.rawValue = rawValue }
    /// The worker takes batched requests (``Batch``) and answers each with one batched response.
    package static let batches = WorkerCapabilities(rawValue: 1)
    /// The worker can exchange requests and answers through shared-memory rings: the supervisor
    /// may hand them over (``FrameType/rings``) and send requests through them.
    package static let rings = WorkerCapabilities(rawValue: 2)

    /// `contains(.batches)`, for the dispatch path: inlined where it is read (a generic
    /// `OptionSet.contains` across modules is a call through the protocol, about 35 instructions).
    @inlinable package var takesBatches: Bool { rawValue & 1 != 0 }

    /// The capabilities a `ready` frame's payload announces.
    package static func decode(_ payload: UnsafeRawBufferPointer) -> WorkerCapabilities {
        payload.count >= 4 ? WorkerCapabilities(rawValue: payload.readLittleEndian(at: 0, as: UInt32.self)) : []
    }

    /// Appends the 4 bytes.
    package func encode(into out: inout [UInt8]) { out.appendLittleEndian(rawValue) }
}

/// The layouts of batches (integers little-endian):
///
/// - a batched request: a `request` frame with ``FrameFlags/batch``; its payload is the usual
///   ``RequestHead``, then `u32 count`, then `count` items, each `u32 length` and `length` bytes;
/// - its answer: one `response` frame with ``FrameFlags/batch`` and the request's id; its payload
///   is `u32 count` (the request's count), then `count` answers in the request's order, each
///   `u8 status` (0: a response, 1: an error whose bytes are its UTF-8 message), `u32 length` and
///   `length` bytes.
///
/// Decoding checks every length against the payload before reading it: a malformed batch is
/// refused whole (`nil`/`false`), never read past its end.
package enum Batch {
    /// The most items one batch may hold.
    package static let maxCount = 1 << 20

    /// The body of a batched request (what follows the request head): count and items.
    package static func encodeItems<C: Collection>(_ items: C) -> [UInt8] where C.Element == [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(4 + items.reduce(0) { $0 + 4 + $1.count })
        out.appendLittleEndian(UInt32(items.count))
        for item in items {
            out.appendLittleEndian(UInt32(item.count))
            out.append(contentsOf: item)
        }
        return out
    }

    /// Appends one answer to a batched response's payload (after its count).
    package static func appendAnswer(ok: Bool, _ bytes: UnsafeRawBufferPointer, into out: inout [UInt8]) {
        appendAnswerHead(ok: ok, count: bytes.count, into: &out)
        out.append(contentsOf: bytes)
    }

    /// Appends one answer to a batched response's payload (after its count).
    @inlinable
    package static func appendAnswer(ok: Bool, _ bytes: [UInt8], into out: inout [UInt8]) {
        appendAnswerHead(ok: ok, count: bytes.count, into: &out)
        out.append(contentsOf: bytes)
    }

    /// An answer's status and length: five single-byte appends, cheaper than copying a buffer
    /// of five.
    @inlinable
    static func appendAnswerHead(ok: Bool, count: Int, into out: inout [UInt8]) {
        let n = UInt32(count)
        out.append(ok ? 0 : 1)
        out.append(UInt8(truncatingIfNeeded: n))
        out.append(UInt8(truncatingIfNeeded: n >> 8))
        out.append(UInt8(truncatingIfNeeded: n >> 16))
        out.append(UInt8(truncatingIfNeeded: n >> 24))
    }

    /// The number of items of a batch body, and calls `body(index, bytes)` for each in order;
    /// `nil` (and no call) when the body is malformed.
    package static func items(_ payload: UnsafeRawBufferPointer, _ body: (Int, UnsafeRawBufferPointer) -> Void) -> Int? {
        guard let count = itemCount(payload) else { return nil }
        forEachItem(ofChecked: payload, count: count, body)
        return count
    }

    /// The number of items of a batch body, `nil` when it is malformed (every length checked).
    package static func itemCount(_ payload: UnsafeRawBufferPointer) -> Int? {
        validate(payload, statusByte: false)
    }

    /// The number of answers of a batched response, `nil` when it is malformed (every length
    /// checked).
    package static func answerCount(_ payload: UnsafeRawBufferPointer) -> Int? {
        validate(payload, statusByte: true)
    }

    /// Calls `body(index, bytes)` for each of the `count` items of a body that ``itemCount(_:)``
    /// accepted with that count (its lengths are not checked again).
    @inline(__always)
    package static func forEachItem(ofChecked payload: UnsafeRawBufferPointer, count: Int,
                                    _ body: (Int, UnsafeRawBufferPointer) -> Void) {
        var offset = 4
        for i in 0..<count {
            let n = Int(payload.readLittleEndian(at: offset, as: UInt32.self))
            body(i, UnsafeRawBufferPointer(rebasing: payload[(offset + 4)..<(offset + 4 + n)]))
            offset += 4 + n
        }
    }

    /// The number of answers of a batched response, and calls `body(index, ok, bytes)` for each
    /// in order; `nil` (and no call) when the payload is malformed.
    package static func answers(_ payload: UnsafeRawBufferPointer, _ body: (Int, Bool, UnsafeRawBufferPointer) -> Void) -> Int? {
        guard let count = answerCount(payload) else { return nil }
        var offset = 4
        for i in 0..<count {
            guard let a = answer(in: payload, at: offset) else { return nil }  // checked above
            body(i, a.ok, a.bytes)
            offset = a.next
        }
        return count
    }

    /// The answer that starts at `offset` in a batched response's payload (the first at 4): its
    /// status, its bytes and where the next one starts; `nil` when it does not fit the payload.
    @inlinable
    package static func answer(in payload: UnsafeRawBufferPointer, at offset: Int) -> (ok: Bool, bytes: UnsafeRawBufferPointer, next: Int)? {
        guard offset >= 0, payload.count - offset >= 5 else { return nil }
        let n = Int(payload.readLittleEndian(at: offset + 1, as: UInt32.self))
        guard n <= payload.count - offset - 5 else { return nil }
        return (payload[offset] == 0, UnsafeRawBufferPointer(rebasing: payload[(offset + 5)..<(offset + 5 + n)]), offset + 5 + n)
    }

    /// The count, if every item (or answer) lies inside the payload and the payload ends with the
    /// last one.
    private static func validate(_ payload: UnsafeRawBufferPointer, statusByte: Bool) -> Int? {
        guard payload.count >= 4 else { return nil }
        let count = Int(payload.readLittleEndian(at: 0, as: UInt32.self))
        let prefix = statusByte ? 5 : 4
        guard count <= maxCount, count <= (payload.count - 4) / prefix else { return nil }
        var offset = 4
        for _ in 0..<count {
            guard payload.count - offset >= prefix else { return nil }
            if statusByte && payload[offset] > 1 { return nil }
            let n = Int(payload.readLittleEndian(at: offset + prefix - 4, as: UInt32.self))
            guard n <= payload.count - offset - prefix else { return nil }
            offset += prefix + n
        }
        return offset == payload.count ? count : nil
    }
}
