import CFuzzer
import Glibc
import LPMWire

// SwiftPM gives this executable its own `main`, so libFuzzer's is not linked: hand libFuzzer the
// command line here (the same flags: -seed, -max_total_time, corpus folders).
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOneInput(data, size) })

/// One libFuzzer input: the first byte picks how the rest is cut into reads (1 to 64 bytes at a
/// time, or all at once) and a payload limit; the rest is the byte stream a peer sent. Every
/// decoded frame's payload also goes through the payload decoders of its type.
///
/// Checked on every input: the decoder never crashes, every payload it hands out is exactly the
/// header's length and within the limit, and after a violation it holds nothing.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data, size > 0 else { return 0 }
    let control = data[0]
    let stream = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    let chunk = control & 0x3F == 0 ? max(stream.count, 1) : Int(control & 0x3F)
    let maxPayload = control & 0x40 == 0 ? 4096 : 64
    // A small first buffer, so that growth and compaction run on small inputs.
    let decoder = FrameDecoder(maxPayload: maxPayload, capacity: control & 0x80 == 0 ? 16 : 1)
    var offset = 0
    while offset < stream.count {
        let next = min(offset + chunk, stream.count)
        decoder.append(UnsafeRawBufferPointer(rebasing: stream[offset..<next]))
        offset = next
        do {
            try decoder.decode { header, payload in
                precondition(payload.count == header.length && header.length <= maxPayload)
                decodePayload(header.type, payload)
            }
        } catch {
            precondition(decoder.bufferedCount == 0, "a violation must drop what is buffered")
            break
        }
        _ = decoder.pendingFrameMayCarryDescriptor
    }
    // The event decoder straight on the raw input too: names of any length, any bytes.
    decodePayload(.event, stream)
    return 0
}

/// Runs the payload decoder of `type` on `payload`; the result must stay within it.
private func decodePayload(_ type: FrameType, _ payload: UnsafeRawBufferPointer) {
    switch type {
    case .event, .broadcast:
        if let (name, data) = EventPayload.decode(payload) {
            precondition(name.utf8.count <= 3 * (payload.count - 2) && data.count <= payload.count - 2)
        }
    case .request:
        if let (_, body) = RequestHead.decode(payload) { precondition(body.count == payload.count - RequestHead.size) }
    case .healthReport:
        _ = HealthReport.decode(payload)
    case .streamEnd:
        _ = StreamEnd.decode(payload)
    default:
        break
    }
}
