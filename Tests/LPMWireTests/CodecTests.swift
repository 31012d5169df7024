import LPMWire
import Testing

/// The message codecs against the byte layouts written down in docs/PROTOCOL.md.
@Suite("Message codecs")
struct CodecTests {
    /// An id whose bytes are 0x10, 0x11, ... 0x1F, so a layout test sees each one in place.
    let id = [UInt8](0x10...0x1F).withUnsafeBytes { RequestID(loading: $0) }

    func encoded(_ encode: (inout [UInt8]) -> Void) -> [UInt8] {
        var out: [UInt8] = [0xEE]  // encoders append: what was there stays
        encode(&out)
        #expect(out.first == 0xEE)
        return Array(out.dropFirst())
    }

    @Test("request head: the 16 id bytes in order, then createdAt as a little-endian u64")
    func requestHeadLayout() {
        let bytes = encoded(RequestHead(id: id, createdAt: 0x0102_0304_0506_0708).encode)
        #expect(bytes.count == RequestHead.size && RequestHead.size == 24)
        #expect(bytes == Array(0x10...0x1F) + [8, 7, 6, 5, 4, 3, 2, 1])
    }

    @Test("request head: round trip, with the body after it as a view of the rest")
    func requestHeadRoundTrip() throws {
        var generator = IDGenerator()
        let head = RequestHead(id: .random(using: &generator), createdAt: .max - 3)
        var bytes: [UInt8] = []
        head.encode(into: &bytes)
        bytes += [9, 8, 7]
        try bytes.withUnsafeBytes { raw in
            let (decoded, body) = try #require(RequestHead.decode(raw))
            #expect(decoded == head)
            #expect(Array(body) == [9, 8, 7])
            #expect(body.baseAddress == raw.baseAddress! + 24)
        }
        // Exactly the head: an empty body.
        try bytes.dropLast(3).withUnsafeBytes { raw in
            let (decoded, body) = try #require(RequestHead.decode(raw))
            #expect(decoded == head && body.isEmpty)
        }
    }

    @Test("health report: heapTotal then heapUsed, little-endian u64s")
    func healthReportLayout() {
        let bytes = encoded(HealthReport(heapTotal: 0x0102_0304_0506_0708, heapUsed: 0xA0B0).encode)
        #expect(bytes.count == HealthReport.size && HealthReport.size == 16)
        #expect(bytes == [8, 7, 6, 5, 4, 3, 2, 1, 0xB0, 0xA0, 0, 0, 0, 0, 0, 0])
    }

    @Test("stream end: the count as a little-endian u64, then the status byte, 0 for ok")
    func streamEndLayout() {
        #expect(encoded(StreamEnd(count: 0x0102, ok: true).encode) == [2, 1, 0, 0, 0, 0, 0, 0, 0])
        #expect(encoded(StreamEnd(count: 7, ok: false).encode) == [7, 0, 0, 0, 0, 0, 0, 0, 1])
        #expect(StreamEnd.size == 9)
        // Any status other than 0 is a failure.
        #expect([UInt8]([7, 0, 0, 0, 0, 0, 0, 0, 2]).withUnsafeBytes(StreamEnd.decode) == StreamEnd(count: 7, ok: false))
    }

    @Test("health report and stream end: round trips at the edges of their ranges")
    func roundTrips() {
        for (total, used) in [(0, 0), (Int.max, 1), (1 << 40, -1)] {
            let report = HealthReport(heapTotal: total, heapUsed: used)
            #expect(encoded(report.encode).withUnsafeBytes(HealthReport.decode) == report)
        }
        for end in [StreamEnd(count: 0, ok: true), StreamEnd(count: .max, ok: false), StreamEnd(count: 1 << 33, ok: true)] {
            #expect(encoded(end.encode).withUnsafeBytes(StreamEnd.decode) == end)
        }
    }

    @Test("a payload shorter than the message decodes to nil, never reads past it")
    func shortPayloads() {
        let bytes = [UInt8](repeating: 0xAB, count: 32)
        for n in 0..<RequestHead.size {
            #expect(bytes[..<n].withUnsafeBytes(RequestHead.decode) == nil)
        }
        for n in 0..<HealthReport.size {
            #expect(bytes[..<n].withUnsafeBytes(HealthReport.decode) == nil)
        }
        for n in 0..<StreamEnd.size {
            #expect(bytes[..<n].withUnsafeBytes(StreamEnd.decode) == nil)
        }
        #expect(bytes[..<RequestHead.size].withUnsafeBytes(RequestHead.decode) != nil)
        #expect(bytes[..<HealthReport.size].withUnsafeBytes(HealthReport.decode) != nil)
        #expect(bytes[..<StreamEnd.size].withUnsafeBytes(StreamEnd.decode) != nil)
    }

    @Test("event payload: u16 little-endian name length, the name, the data; a name past the end is nil")
    func eventPayload() {
        let bytes = EventPayload.encode(name: "hé", data: [1, 2])
        #expect(bytes == [3, 0, 0x68, 0xC3, 0xA9, 1, 2])
        let decoded = bytes.withUnsafeBytes(EventPayload.decode)
        #expect(decoded?.name == "hé" && decoded?.data == [1, 2])
        #expect([UInt8]([4, 0, 0x68, 0x69]).withUnsafeBytes(EventPayload.decode) == nil)
        #expect([UInt8]([1]).withUnsafeBytes(EventPayload.decode) == nil)
        let long = EventPayload.encode(name: String(repeating: "x", count: 70_000), data: [])
        #expect(long.count == 2 + 65_535 && long[0] == 0xFF && long[1] == 0xFF)
    }
}

extension CodecTests {
    @Test("the request frame example of docs/PROTOCOL.md, byte for byte")
    func protocolExample() {
        let uuid: [UInt8] = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x46, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]
        let head = RequestHead(id: uuid.withUnsafeBytes { RequestID(loading: $0) }, createdAt: 0x0102_0304_0506_0708)
        #expect(head.id.description == "00112233-4455-4677-8899-aabbccddeeff")
        var frame: [UInt8] = []
        frame.appendFrameHeader(.request, length: RequestHead.size + 2, id: 5)
        head.encode(into: &frame)
        frame += Array("hi".utf8)
        let expected: [UInt8] = [0x4c, 0x01, 0x03, 0x00, 0x1a, 0x00, 0x00, 0x00, 0x05, 0, 0, 0, 0, 0, 0, 0]
            + uuid + [0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01] + [0x68, 0x69]
        #expect(frame == expected)
    }
}

@Suite("Batch codec")
struct BatchCodecTests {
    @Test("items and answers round-trip, in order, empty items included")
    func roundTrip() {
        let items: [[UInt8]] = [[], Array("a".utf8), Array(repeating: 7, count: 300)]
        let body = Batch.encodeItems(items)
        var decoded: [[UInt8]] = []
        let n = body.withUnsafeBytes { Batch.items($0) { i, bytes in #expect(i == decoded.count); decoded.append(Array(bytes)) } }
        #expect(n == 3 && decoded == items)

        var answers: [UInt8] = []
        answers.appendLittleEndian(UInt32(2))
        Array("ok".utf8).withUnsafeBytes { Batch.appendAnswer(ok: true, $0, into: &answers) }
        Array("bad".utf8).withUnsafeBytes { Batch.appendAnswer(ok: false, $0, into: &answers) }
        var got: [(Bool, String)] = []
        let m = answers.withUnsafeBytes { Batch.answers($0) { _, ok, b in got.append((ok, String(decoding: b, as: UTF8.self))) } }
        #expect(m == 2 && got.map(\.0) == [true, false] && got.map(\.1) == ["ok", "bad"])
    }

    @Test("malformed batches are refused whole, before any item is read",
          arguments: [
            [UInt8](),                                  // no count
            [2, 0, 0, 0, 1, 0, 0, 0, 0x61],             // count 2, one item
            [1, 0, 0, 0, 5, 0, 0, 0, 0x61],             // an item longer than the payload
            [1, 0, 0, 0, 1, 0, 0, 0, 0x61, 0x62],       // bytes after the last item
            [0xFF, 0xFF, 0xFF, 0xFF],                   // a count no payload could hold
          ])
    func malformedItems(_ body: [UInt8]) {
        var calls = 0
        #expect(body.withUnsafeBytes { Batch.items($0) { _, _ in calls += 1 } } == nil)
        #expect(calls == 0)
    }

    @Test("answers with a status other than 0 or 1, or cut short, are refused")
    func malformedAnswers() {
        let bad: [[UInt8]] = [[1, 0, 0, 0, 2, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1, 0, 0, 0], [5, 0, 0, 0]]
        for b in bad { #expect(b.withUnsafeBytes { Batch.answers($0) { _, _, _ in } } == nil, "\(b)") }
    }

    @Test("capabilities: an empty ready payload announces nothing")
    func capabilities() {
        #expect([UInt8]().withUnsafeBytes { WorkerCapabilities.decode($0) } == [])
        var out: [UInt8] = []
        WorkerCapabilities.batches.encode(into: &out)
        #expect(out == [1, 0, 0, 0])
        #expect(out.withUnsafeBytes { WorkerCapabilities.decode($0) }.contains(.batches))
    }
}
