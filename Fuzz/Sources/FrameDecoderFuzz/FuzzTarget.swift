import LPMWire

/// One libFuzzer input: the first byte picks how the rest is cut into reads, a payload limit and
/// a first buffer size; the rest is the byte stream a peer sent. Every decoded frame's payload
/// also goes through the payload decoders of its type.
///
/// Control byte: bits 0-4, bytes per read (0: all at once); bits 5-6, the mode (0: a 4096-byte
/// limit; 1: a 64-byte limit; 2: a 1 MiB limit, and after the input, 320 KiB of zero bytes so
/// that large frames complete and the buffer grows past its retained size and shrinks back;
/// 3: a 4096-byte limit); bit 7, a one-byte first buffer instead of 16 bytes.
///
/// Checked on every input: the decoder never crashes, every payload it hands out is exactly the
/// header's length and within the limit, a violation leaves nothing buffered, and the buffer
/// never grows past one maximum-size frame and a read's room.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data, size > 0 else { return 0 }
    let control = data[0]
    let stream = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    let mode = (control >> 5) & 3
    let maxPayload = mode == 1 ? 64 : mode == 2 ? 1 << 20 : 4096
    // A small first buffer, so that growth and compaction run on small inputs.
    let decoder = FrameDecoder(maxPayload: maxPayload, capacity: control & 0x80 == 0 ? 16 : 1)
    // The event decoder straight on the raw input too: names of any length, any bytes.
    decodePayload(.event, stream)
    var feeder = Feeder(decoder: decoder, maxPayload: maxPayload, chunk: Int(control & 0x1F))
    guard feeder.feed(stream), mode == 2 else { return 0 }
    // Zero bytes complete a pending frame (and then read as a bad magic byte), 64 KiB per read.
    var filler = Feeder(decoder: decoder, maxPayload: maxPayload, chunk: 0)
    zeros.withUnsafeBytes { zeros in
        for _ in 0..<5 where decoder.bufferedCount > 0 { if !filler.feed(zeros) { break } }
    }
    return 0
}

private let zeros = [UInt8](repeating: 0, count: 64 * 1024)

/// Feeds a decoder chunk by chunk and checks what it hands out.
private struct Feeder {
    let decoder: FrameDecoder
    let maxPayload: Int
    let chunk: Int

    /// Feeds `bytes`, decoding after each chunk. Returns `false` once the decoder reported a violation.
    mutating func feed(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let step = chunk == 0 ? max(bytes.count, 1) : chunk
        var offset = 0
        while offset < bytes.count {
            let next = min(offset + step, bytes.count)
            decoder.append(UnsafeRawBufferPointer(rebasing: bytes[offset..<next]))
            offset = next
            // Appending more than that at once is the only way past it (a read never asks as much).
            precondition(decoder.capacity <= max(Wire.headerSize + maxPayload + 16 * 1024, decoder.bufferedCount),
                         "the buffer grew past one maximum-size frame and a read's room")
            do {
                try decoder.decode { [maxPayload] header, payload in
                    precondition(payload.count == header.length && header.length <= maxPayload)
                    decodePayload(header.type, payload)
                }
            } catch {
                precondition(decoder.bufferedCount == 0, "a violation must drop what is buffered")
                return false
            }
            precondition(decoder.capacity <= Wire.retainedBufferCapacity || decoder.bufferedCount > 0,
                         "an empty buffer must go back to its first size")
            _ = decoder.pendingFrameMayCarryDescriptor
        }
        return true
    }
}

/// Runs the payload decoder of `type` on `payload`; the result must stay within it.
private func decodePayload(_ type: FrameType, _ payload: UnsafeRawBufferPointer) {
    switch type {
    case .event, .broadcast:
        if let (name, data) = EventPayload.decode(payload) {
            precondition(name.utf8.count <= 3 * (payload.count - 2) && data.count <= payload.count - 2)
        }
    case .request:
        if let (_, body) = RequestHead.decode(payload) {
            precondition(body.count == payload.count - RequestHead.size)
            // As a batch body: every item inside the payload, their lengths adding up.
            var total = 4
            if let n = Batch.items(body, { _, item in total += 4 + item.count }) {
                precondition(total == body.count && n <= Batch.maxCount)
            }
        }
    case .response:
        var total = 4
        if let n = Batch.answers(payload, { _, _, answer in total += 5 + answer.count }) {
            precondition(total == payload.count && n <= Batch.maxCount)
        }
    case .ready:
        _ = WorkerCapabilities.decode(payload)
    case .healthReport:
        _ = HealthReport.decode(payload)
    case .streamEnd:
        _ = StreamEnd.decode(payload)
    default:
        break
    }
}
