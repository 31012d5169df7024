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

    /// The bytes frame `i` carries in the lending tests: a length and a pattern of its own.
    private static func lendingPayload(_ i: Int) -> [UInt8] {
        let n = i % 97 == 0 ? 300_000 : i % 13 == 0 ? 5_000 : 1 + (i &* 7919) % 300
        return (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i) }
    }

    @Test("a lent payload keeps its bytes while held: through later reads, compaction, growth and shrinking")
    func lentPayloadsStay() throws {
        // A small buffer: growth for the 5,000-byte frames, past the retained size for the
        // 300,000-byte ones (and a shrink after them), compaction all along.
        let d = FrameDecoder(maxPayload: 1 << 20, capacity: 1024)
        var stream: [UInt8] = []
        var ends: [Int] = []
        for i in 0..<400 {
            stream.appendFrame(.response, id: UInt64(i), payload: Self.lendingPayload(i))
            ends.append(stream.count)
        }
        var kept: [(id: UInt64, storage: ByteStorage, bytes: UnsafeRawBufferPointer)] = []
        var decoded = 0
        var at = 0, step = 0
        while at < stream.count {
            // Pieces of varying sizes, most of them cutting a frame.
            step += 1
            // Every third piece ends where a frame does (the buffer is then all decoded).
            let n = step % 3 == 0 ? ends.first { $0 > at }! - at : min(stream.count - at, [1, 17, 700, 4096, 70_000][step % 5])
            stream[at..<at + n].withUnsafeBytes { d.append($0) }
            at += n
            try d.decode { h, p in
                decoded += 1
                if h.id % 3 == 0, let storage = d.lend(p) { kept.append((h.id, storage, p)) }
            }
        }
        #expect(decoded == 400)
        #expect(kept.count == 134)
        let wrong = kept.filter { Array($0.bytes) != Self.lendingPayload(Int($0.id)) }.map(\.id)
        #expect(wrong.isEmpty, "payloads overwritten while lent: \(wrong)")
        #expect(d.capacity <= Wire.retainedBufferCapacity, "the buffer shrank back after the large frames")
    }

    @Test("a buffer nothing is lent from is reused: no new storage per read, even with each payload lent and let go")
    func unlentBufferIsReused() throws {
        let d = FrameDecoder(capacity: 4096)
        // Weak: it does not count as a holder (a new storage would free the first: nil here).
        weak var first: ByteStorage?
        var same = 0
        for round in 0..<1000 {
            var bytes: [UInt8] = []
            for k in 0..<3 { bytes.appendFrame(.response, id: UInt64(k), payload: Array(repeating: UInt8(truncatingIfNeeded: round), count: 700)) }
            bytes.withUnsafeBytes { d.append($0) }
            try d.decode { _, p in
                // Lent and dropped at once, as a handler that reads the answer and returns.
                guard let s = d.lend(p) else { return }
                if round == 0 && first == nil { first = s }
                if s === first { same += 1 }
            }
        }
        #expect(same == 3000)
    }

    @Test("payloads from elsewhere are not lent")
    func lendsOnlyItsOwn() {
        let d = FrameDecoder()
        let outside: [UInt8] = [1, 2, 3]
        #expect(outside.withUnsafeBytes { d.lend($0) } == nil)
    }

    @Test("an arena's block is reused once its copies are let go; kept copies keep theirs")
    func arena() {
        var arena = ByteArena(blockSize: 4096)
        weak var first: ByteStorage?
        var same = 0
        for round in 0..<1000 {
            let bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: round), count: 300)
            let copy = bytes.withUnsafeBytes { arena.copy($0) }
            if round == 0 { first = copy.storage }
            if copy.storage === first { same += 1 }
            #expect(Array(copy.bytes) == bytes)
        }
        #expect(same == 1000, "a block nobody holds is reused")
        var kept: [(storage: ByteStorage, bytes: UnsafeRawBufferPointer)] = []
        for round in 0..<100 {
            kept.append([UInt8](repeating: UInt8(round), count: 300).withUnsafeBytes { arena.copy($0) })
        }
        #expect(Set(kept.map { ObjectIdentifier($0.storage) }).count >= 100 * 304 / 4096)
        #expect(kept.enumerated().allSatisfy { i, k in k.bytes.allSatisfy { $0 == UInt8(i) } })
        let large = [UInt8](repeating: 9, count: 2000).withUnsafeBytes { arena.copy($0) }
        #expect(large.storage !== kept.last?.storage && large.bytes.count == 2000, "over a quarter of a block: a block of its own")
    }
}
