import LPMWire
import Testing

@Suite("Frame decoding")
struct FrameDecoderTests {
    func feed(_ d: FrameDecoder, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { d.append($0) }
    }

    @Test("every complete frame in one buffer is decoded, in order; a partial one waits")
    func batch() throws {
        var bytes: [UInt8] = []
        for i in 0..<100 { bytes.appendFrame(.response, id: UInt64(i), payload: Array(repeating: UInt8(i), count: i)) }
        bytes.appendFrameHeader(.ack, length: 10, id: 999)
        bytes.append(contentsOf: [1, 2, 3])
        let d = FrameDecoder()
        feed(d, bytes)
        var seen: [(UInt64, [UInt8])] = []
        try d.decode { h, p in seen.append((h.id, Array(p))) }
        #expect(seen.count == 100)
        #expect(seen.enumerated().allSatisfy { i, e in e.0 == UInt64(i) && e.1 == Array(repeating: UInt8(i), count: i) })
        #expect(d.bufferedCount == 16 + 3)
        feed(d, Array(repeating: 7, count: 7))
        try d.decode { h, p in seen.append((h.id, Array(p))) }
        #expect(seen.last?.0 == 999 && seen.last?.1.count == 10)
        #expect(d.bufferedCount == 0)
    }

    @Test("byte-at-a-time delivery decodes the same frames")
    func byteAtATime() throws {
        var bytes: [UInt8] = []
        for i in 0..<20 { bytes.appendFrame(.event, id: UInt64(i), payload: Array(repeating: 1, count: 3 * i)) }
        let d = FrameDecoder()
        var ids: [UInt64] = []
        for b in bytes {
            feed(d, [b])
            try d.decode { h, _ in ids.append(h.id) }
        }
        #expect(ids == (0..<20).map(UInt64.init))
    }

    @Test("bad magic, bad version, unknown type, oversized frame: a violation, never a crash",
          arguments: [
            [0x00, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] as [UInt8],
            [0x4C, 9, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0x4C, 1, 200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0x4C, 1, 4, 0, 0xFF, 0xFF, 0xFF, 0x7F, 0, 0, 0, 0, 0, 0, 0, 0],
          ])
    func violations(_ header: [UInt8]) {
        let d = FrameDecoder(maxPayload: 1024)
        feed(d, header)
        #expect(throws: ProtocolViolation.self) { try d.decode { _, _ in } }
        #expect(d.bufferedCount == 0)
    }

    @Test("random bytes never crash the decoder")
    func fuzz() {
        var rng = IDGenerator()
        for _ in 0..<2000 {
            let d = FrameDecoder(maxPayload: 4096)
            let n = Int(rng.next() % 200)
            var bytes = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if n > 3 && rng.next() % 2 == 0 { bytes[0] = 0x4C; bytes[1] = 1; bytes[2] = UInt8(1 + rng.next() % 16) }
            feed(d, bytes)
            do { try d.decode { h, p in #expect(p.count == h.length) } } catch {}
        }
    }

    @Test("request ids are version 4 UUIDs and unique")
    func requestIDs() {
        var g = IDGenerator()
        var seen = Set<RequestID>()
        for _ in 0..<10_000 {
            let id = RequestID.random(using: &g)
            let text = id.description
            #expect(text.count == 36)
            let chars = Array(text)
            #expect(chars[14] == "4")
            #expect("89ab".contains(chars[19]))
            seen.insert(id)
        }
        #expect(seen.count == 10_000)
    }
}
