import CLoop
import Glibc
import LPMReactor
import LPMTestSupport
import LPMWire
import Testing

// The shared-memory rings: the pure arithmetic as tables, every check of a peer's index,
// record or header on a hand-corrupted real mapping, and a two-process echo through the
// doorbells (lpm-ring-peer).

private let request = UInt8(FrameType.request.rawValue)
private let response = UInt8(FrameType.response.rawValue)

/// A ring object of two 4 KiB rings, with its descriptor closed; `preset` writes indices into
/// the control blocks before any view is made.
private func makeMapping(request: Int = 4096, response: Int = 4096) throws -> SharedRingMapping {
    var fd: FileDescriptor? = nil
    let m = try SharedRingMapping.create(requestCapacity: request, responseCapacity: response, descriptor: &fd)
    fd.take()!.close()
    return m
}

/// Runs `body` on a fresh mapping (two 4 KiB rings), then unmaps it.
private func withMapping<T>(_ body: (borrowing SharedRingMapping) throws -> T) throws -> T {
    let m = try makeMapping()
    // Not a defer: a defer cannot consume a noncopyable value.
    let result = Result { () throws -> T in try body(m) }
    m.unmap()
    return try result.get()
}

/// The control block field `offset` of `ring` in mapping `base`, as a pointer to write by hand.
private func field<T>(_ base: UnsafeMutableRawPointer, _ ring: SharedRingDirection, _ offset: Int, as: T.Type) -> UnsafeMutablePointer<T> {
    (base + SharedRingLayout.controlOffset(ring) + offset).assumingMemoryBound(to: T.self)
}

@Suite("Shared-memory rings: arithmetic")
struct SharedRingArithmeticTests {
    @Test("record size: header plus payload padded to 8", arguments: [
        (0, 16), (1, 24), (7, 24), (8, 24), (9, 32), (64, 80), (2032, 2048),
    ])
    func recordSize(payload: Int, size: Int) {
        #expect(SharedRingGeometry.recordSize(payload: payload) == size)
    }

    @Test("capacities: powers of two from 4 KiB to 1 GiB only")
    func capacities() {
        for ok in [4096, 8192, 1 << 20, 1 << 30] { #expect(SharedRingGeometry(capacity: ok)?.capacity == ok) }
        for bad in [0, 1, 2048, 4095, 4097, 6144, 1 << 31, -4096] { #expect(SharedRingGeometry(capacity: bad) == nil, "\(bad)") }
        #expect(SharedRingGeometry(capacity: 4096)?.maxPayload == 2032)
    }

    struct Placement: Sendable, CustomTestStringConvertible {
        let name: String, payload: Int, tail: UInt64, head: UInt64, expected: (offset: Int, skip: Int)?
        var testDescription: String { name }
    }

    @Test("placement: where a record goes, wrap padding, full", arguments: [
        Placement(name: "empty at 0", payload: 10, tail: 0, head: 0, expected: (0, 0)),
        Placement(name: "after a record", payload: 10, tail: 32, head: 0, expected: (32, 0)),
        Placement(name: "exact fit before the end", payload: 48, tail: 4096 - 64, head: 4096 - 64, expected: (4032, 0)),
        Placement(name: "one byte too many wraps", payload: 49, tail: 4096 - 64, head: 4096 - 64, expected: (0, 64)),
        Placement(name: "wrap needs the skipped bytes free too", payload: 100, tail: 4096 - 8, head: 4096 - 8 - 4000, expected: nil),
        Placement(name: "free-running indices past one lap", payload: 0, tail: 3 * 4096 + 8, head: 3 * 4096, expected: (8, 0)),
        Placement(name: "full", payload: 0, tail: 4096, head: 0, expected: nil),
        Placement(name: "one record short of room", payload: 8, tail: 4096 - 16, head: 0, expected: nil),
        Placement(name: "the largest payload in an empty ring, mid-way", payload: 2032, tail: 2056, head: 2056, expected: (0, 2040)),
        Placement(name: "the largest payload at offset 2048", payload: 2032, tail: 2048, head: 2048, expected: (2048, 0)),
    ])
    func placement(_ c: Placement) throws {
        let g = try #require(SharedRingGeometry(capacity: 4096))
        let got = g.place(payload: c.payload, tail: c.tail, head: c.head)
        #expect(got?.offset == c.expected?.offset)
        #expect(got?.skip == c.expected?.skip)
    }

    @Test("the largest payload fits an empty ring wherever the indices stand")
    func largestAlwaysFitsEmpty() throws {
        let g = try #require(SharedRingGeometry(capacity: 4096))
        for at in stride(from: UInt64(0), to: 8192, by: 8) {
            #expect(g.place(payload: g.maxPayload, tail: at, head: at) != nil, "at \(at)")
        }
    }

    @Test("steps: a record, a wrap; each bad length or marker a typed error")
    func steps() throws {
        let g = try #require(SharedRingGeometry(capacity: 4096))
        #expect(try g.step(lengthWord: 5, cursor: 0, tail: 24, ring: .request) == .record(size: 24, length: 5))
        #expect(try g.step(lengthWord: SharedRingLayout.wrapMarker, cursor: 4064, tail: 4096 + 16, ring: .request) == .wrap(skip: 32))
        #expect(throws: SharedRingError.recordTooLong(.request, at: 0, length: 2033)) {
            try g.step(lengthWord: 2033, cursor: 0, tail: 4096, ring: .request)
        }
        #expect(throws: SharedRingError.recordTooLong(.request, at: 4064, length: 100)) {
            try g.step(lengthWord: 100, cursor: 4064, tail: 4096 + 4064, ring: .request)
        }
        #expect(throws: SharedRingError.recordPastPublished(.request, at: 0, size: 24, published: 16)) {
            try g.step(lengthWord: 5, cursor: 0, tail: 16, ring: .request)
        }
        #expect(throws: SharedRingError.badWrapMarker(.request, at: 4096)) {
            try g.step(lengthWord: SharedRingLayout.wrapMarker, cursor: 4096, tail: 8192, ring: .request)
        }
        #expect(throws: SharedRingError.badWrapMarker(.request, at: 4000)) {
            try g.step(lengthWord: SharedRingLayout.wrapMarker, cursor: 4000, tail: 4040, ring: .request)
        }
    }

    @Test("index checks: backwards, misaligned, past the capacity, past what was published")
    func indexChecks() throws {
        let g = try #require(SharedRingGeometry(capacity: 4096))
        try g.checkTail(4096, lastTail: 64, head: 0, ring: .response)
        #expect(throws: SharedRingError.indexWentBackwards(.response, index: "producer index", from: 64, to: 56)) {
            try g.checkTail(56, lastTail: 64, head: 0, ring: .response)
        }
        #expect(throws: SharedRingError.indexOutOfRange(.response, index: "producer index", value: 4104, other: 0)) {
            try g.checkTail(4104, lastTail: 0, head: 0, ring: .response)
        }
        #expect(throws: SharedRingError.indexOutOfRange(.response, index: "producer index", value: 12, other: 0)) {
            try g.checkTail(12, lastTail: 0, head: 0, ring: .response)
        }
        try g.checkHead(64, lastHead: 0, published: 64, ring: .request)
        #expect(throws: SharedRingError.indexWentBackwards(.request, index: "consumer index", from: 64, to: 0)) {
            try g.checkHead(0, lastHead: 64, published: 64, ring: .request)
        }
        #expect(throws: SharedRingError.indexOutOfRange(.request, index: "consumer index", value: 72, other: 64)) {
            try g.checkHead(72, lastHead: 0, published: 64, ring: .request)
        }
        #expect(throws: SharedRingError.indexOutOfRange(.request, index: "consumer index", value: 4, other: 64)) {
            try g.checkHead(4, lastHead: 0, published: 64, ring: .request)
        }
    }
}

@Suite("Shared-memory rings: one process, a real mapping")
struct SharedRingMappingTests {
    @Test("records of every size go round many laps, read in place, in order")
    func roundTrip() throws {
        try withMapping { m in
            var p = try m.producer(.request)
            var c = try m.consumer(.request)
            var sent = 0, got = 0
            var wraps = 0
            var lastOffset = -1
            while got < 3000 {
                // Fill until full, then drain half, so the indices stand everywhere.
                while sent < 3000 {
                    let n = (sent * 37) % (p.geometry.maxPayload + 1)
                    guard let room = try p.reserve(payload: n) else { break }
                    for i in 0..<n { room[i] = UInt8(truncatingIfNeeded: sent &+ i) }
                    p.commit(length: n, kind: request, flags: 2, id: UInt64(sent))
                    sent += 1
                }
                p.publish()
                var read = 0
                while read < max(1, (sent - got) / 2), let r = try c.next() {
                    let n = (got * 37) % (p.geometry.maxPayload + 1)
                    #expect(r.id == UInt64(got) && r.kind == request && r.flags == 2 && r.payload.count == n)
                    #expect(r.payload.elementsEqual((0..<n).lazy.map { UInt8(truncatingIfNeeded: got &+ $0) }))
                    let offset = r.payload.baseAddress! - UnsafeRawPointer(m.data(.request))
                    if offset < lastOffset { wraps += 1 }
                    lastOffset = offset
                    got += 1
                    read += 1
                }
                c.release()
            }
            #expect(try c.next() == nil)
            #expect(wraps > 50)
        }
    }

    @Test("the object header and a record, byte for byte as in docs/PROTOCOL.md")
    func layout() throws {
        var fd: FileDescriptor? = nil
        let m = try SharedRingMapping.create(requestCapacity: 8192, responseCapacity: 4096, descriptor: &fd)
        let d = fd.take()!.release()
        defer { FileDescriptor.closeRaw(d) }
        var st = stat()
        #expect(fstat(d, &st) == 0 && st.st_size == 4096 + 8192 + 4096)
        let header = Array(UnsafeRawBufferPointer(start: m.base, count: 64))
        #expect(header[0..<32] == [0x4C, 0x50, 0x4D, 0x52, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                   0x00, 0x40, 0, 0, 0, 0, 0, 0, 0x00, 0x20, 0, 0, 0x00, 0x10, 0, 0])
        #expect(header[32...].allSatisfy { $0 == 0 })
        #expect(m.data(.request) == m.base + 4096 && m.data(.response) == m.base + 4096 + 8192)
        var p = try m.producer(.response)
        // A record that does not fit before the end: a wrap marker, then the record at 0.
        let tail = m.base + 512
        let room = try #require(try p.reserve(payload: 2000))
        room.copyBytes(from: [0xAB, 0xCD, 0xEF])
        p.commit(length: 3, kind: response, flags: 4, id: 0x0102_0304_0506_0708)
        p.publish()
        #expect(tail.load(as: UInt64.self) == 24)
        // Bytes 19..<24 are padding (any value).
        let record = Array(UnsafeRawBufferPointer(start: m.data(.response), count: 19))
        #expect(record == [3, 0, 0, 0, 4, 4, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1, 0xAB, 0xCD, 0xEF])
        for _ in 0..<169 {
            _ = try p.reserve(payload: 0)
            p.commit(length: 0, kind: response, flags: 0, id: 0)
        }
        p.publish()
        // 24 + 169 * 16 = 2728; a record of 16 + 2000 bytes does not fit in the 1368 left.
        m.base.storeBytes(of: UInt64(2728), toByteOffset: 512 + 128, as: UInt64.self)
        _ = try #require(try p.reserve(payload: 2000))
        p.commit(length: 2000, kind: response, flags: 0, id: 7)
        p.publish()
        #expect(tail.load(as: UInt64.self) == 4096 + 2016)
        #expect(m.data(.response).load(fromByteOffset: 2728, as: UInt32.self) == 0xFFFF_FFFF)
        #expect(m.data(.response).load(as: UInt32.self) == 2000)
        m.unmap()
    }

    @Test("commit may shorten the reservation; abandon leaves nothing")
    func shortCommitAndAbandon() throws {
        try withMapping { m in
            var p = try m.producer(.response)
            var c = try m.consumer(.response)
            _ = try #require(try p.reserve(payload: 1000))
            p.abandon()
            let room = try #require(try p.reserve(payload: 1000))
            room.copyBytes(from: [1, 2, 3])
            p.commit(length: 3, kind: response, flags: 0, id: 9)
            let rings = p.publish()
            #expect(!rings)
            let r = try #require(try c.next())
            #expect(r.id == 9 && Array(r.payload) == [1, 2, 3])
            #expect(try c.next() == nil)
            c.release()
            #expect(p.unreleasedBytes == 24)
        }
    }

    @Test("a payload larger than half the ring is refused, whatever the room")
    func tooLarge() throws {
        try withMapping { m in
            var p = try m.producer(.request)
            #expect(throws: SharedRingError.payloadTooLarge(.request, length: 2033, max: 2032)) { try p.reserve(payload: 2033) }
            #expect(try p.reserve(payload: 2032) != nil)
        }
    }

    @Test("the handshake: a sleeping consumer is rung once; one that saw data does not sleep")
    func handshake() throws {
        try withMapping { m in
            var p = try m.producer(.request)
            var c = try m.consumer(.request)
            #expect(try c.prepareToSleep())
            #expect(field(m.base, .request, SharedRingLayout.consumerSleepingOffset, as: UInt32.self).pointee == 1)
            _ = try p.reserve(payload: 0)
            p.commit(length: 0, kind: request, flags: 0, id: 1)
            let first = p.publish()
            #expect(first)
            _ = try p.reserve(payload: 0)
            p.commit(length: 0, kind: request, flags: 0, id: 2)
            let second = p.publish()
            #expect(!second, "the first publish claimed the flag")
            c.woke()
            #expect(try c.next()?.id == 1)
            #expect(try c.next()?.id == 2)
            c.release()
            // Data published before the announcement: the re-check sees it and withdraws.
            _ = try p.reserve(payload: 0)
            p.commit(length: 0, kind: request, flags: 0, id: 3)
            let third = p.publish()
            #expect(!third)
            #expect(try !c.prepareToSleep())
            #expect(field(m.base, .request, SharedRingLayout.consumerSleepingOffset, as: UInt32.self).pointee == 0)
            // A producer waiting for space is rung by the release that makes room.
            while try p.reserve(payload: 500) != nil { p.commit(length: 500, kind: request, flags: 0, id: 4) }
            p.publish()
            #expect(try p.prepareToWaitForSpace(payload: 500))
            #expect(try c.next()?.id == 3)
            let rings = c.release()
            #expect(rings)
            p.doneWaiting()
            #expect(try p.reserve(payload: 0) != nil)
        }
    }

    @Test("spin: returns at once when a record is there, false after the time otherwise")
    func spin() throws {
        try withMapping { m in
            var p = try m.producer(.request)
            var c = try m.consumer(.request)
            #expect(try !c.spin(nanoseconds: 200_000))
            _ = try p.reserve(payload: 0)
            p.commit(length: 0, kind: request, flags: 0, id: 1)
            p.publish()
            #expect(try c.spin(nanoseconds: 60_000_000_000))
        }
    }
}

@Suite("Shared-memory rings: a peer's corruption is a typed error")
struct SharedRingCorruptionTests {
    /// Publishes `records` empty records, then lets `corrupt` write the mapping by hand, then
    /// reads: returns the error `next()` throws after reading everything legitimately there.
    private func consumerError(
        preset: UInt64 = 0, records: Int = 2, readFirst: Int = 0,
        _ corrupt: (UnsafeMutableRawPointer, UnsafeMutableRawPointer) -> Void
    ) throws -> SharedRingError? {
        try withMapping { (m) throws -> SharedRingError? in
            field(m.base, .request, SharedRingLayout.tailOffset, as: UInt64.self).pointee = preset
            field(m.base, .request, SharedRingLayout.headOffset, as: UInt64.self).pointee = preset
            var p = try m.producer(.request)
            var c = try m.consumer(.request)
            for i in 0..<records {
                _ = try p.reserve(payload: 0)
                p.commit(length: 0, kind: request, flags: 0, id: UInt64(i))
            }
            p.publish()
            for _ in 0..<readFirst { _ = try c.next() }
            corrupt(m.base, m.data(.request))
            do throws(SharedRingError) {
                for _ in 0..<4 { _ = try c.next() }
                return nil
            } catch {
                return error
            }
        }
    }

    private func setTail(_ base: UnsafeMutableRawPointer, _ v: UInt64) {
        field(base, .request, SharedRingLayout.tailOffset, as: UInt64.self).pointee = v
    }

    @Test("the producer index goes backwards")
    func tailBackwards() throws {
        let e = try consumerError(readFirst: 2) { base, _ in self.setTail(base, 16) }
        #expect(e == .indexWentBackwards(.request, index: "producer index", from: 32, to: 16))
    }

    @Test("the producer index runs more than the capacity ahead")
    func tailAhead() throws {
        let e = try consumerError(readFirst: 2) { base, _ in self.setTail(base, 4096 + 8) }
        #expect(e == .indexOutOfRange(.request, index: "producer index", value: 4104, other: 0))
    }

    @Test("the producer index is not a multiple of 8")
    func tailMisaligned() throws {
        let e = try consumerError(readFirst: 2) { base, _ in self.setTail(base, 36) }
        #expect(e == .indexOutOfRange(.request, index: "producer index", value: 36, other: 0))
    }

    @Test("a record length past the largest payload")
    func lengthTooLarge() throws {
        let e = try consumerError { _, data in data.storeBytes(of: UInt32(4000), as: UInt32.self) }
        #expect(e == .recordTooLong(.request, at: 0, length: 4000))
    }

    @Test("a record length past the end of the data area")
    func lengthPastEnd() throws {
        let e = try consumerError(preset: 4096 - 32, records: 1) { base, data in
            (data + 4096 - 32).storeBytes(of: UInt32(100), as: UInt32.self)
            self.setTail(base, 4096 - 32 + 16)
        }
        #expect(e == .recordTooLong(.request, at: 4064, length: 100))
    }

    @Test("a record length past the published bytes")
    func lengthPastPublished() throws {
        let e = try consumerError { _, data in data.storeBytes(of: UInt32(100), as: UInt32.self) }
        #expect(e == .recordPastPublished(.request, at: 0, size: 120, published: 32))
    }

    @Test("a wrap marker at offset 0")
    func wrapAtZero() throws {
        let e = try consumerError { _, data in data.storeBytes(of: SharedRingLayout.wrapMarker, as: UInt32.self) }
        #expect(e == .badWrapMarker(.request, at: 0))
    }

    @Test("a wrap marker whose skipped bytes were not published")
    func wrapUnpublished() throws {
        let e = try consumerError(preset: 4000, records: 1) { _, data in
            (data + 4000).storeBytes(of: SharedRingLayout.wrapMarker, as: UInt32.self)
        }
        #expect(e == .badWrapMarker(.request, at: 4000))
    }

    @Test("a second wrap marker right after a wrap (no endless loop)")
    func doubleWrap() throws {
        let e = try consumerError(preset: 4096 - 64, records: 0) { base, data in
            (data + 4096 - 64).storeBytes(of: SharedRingLayout.wrapMarker, as: UInt32.self)
            data.storeBytes(of: SharedRingLayout.wrapMarker, as: UInt32.self)
            self.setTail(base, 4096 + 64)
        }
        #expect(e == .badWrapMarker(.request, at: 4096))
    }

    @Test("the consumer index seen by the producer: backwards, past what was published")
    func headChecks() throws {
        try withMapping { m in
            var p = try m.producer(.request)
            var c = try m.consumer(.request)
            while try p.reserve(payload: 1000) != nil { p.commit(length: 1000, kind: request, flags: 0, id: 0) }
            p.publish()
            _ = try c.next()
            c.release()
            // Four records of 1016 bytes filled the ring; one released makes room for the fifth
            // after 32 bytes of wrap padding, exactly.
            #expect(try p.reserve(payload: 1000) != nil)
            p.commit(length: 1000, kind: request, flags: 0, id: 0)
            p.publish()
            let head = field(m.base, .request, SharedRingLayout.headOffset, as: UInt64.self)
            #expect(head.pointee == 1016)
            head.pointee = 0
            #expect(throws: SharedRingError.indexWentBackwards(.request, index: "consumer index", from: 1016, to: 0)) {
                _ = try p.reserve(payload: 1000)
            }
            head.pointee = 1 << 20
            #expect(throws: SharedRingError.indexOutOfRange(.request, index: "consumer index", value: 1 << 20, other: 5112)) {
                _ = try p.reserve(payload: 1000)
            }
        }
    }

    @Test("indices already inconsistent when a view is made")
    func viewChecks() throws {
        try withMapping { m in
            field(m.base, .response, SharedRingLayout.tailOffset, as: UInt64.self).pointee = 8192
            #expect(throws: SharedRingError.self) { _ = try m.consumer(.response) }
            #expect(throws: SharedRingError.self) { _ = try m.producer(.response) }
            _ = try m.consumer(.request)
        }
    }

    /// Attaches a fresh object after `corrupt` wrote its header.
    private func attachError(_ corrupt: (UnsafeMutableRawPointer) -> Void) throws -> SharedRingError? {
        var fd: FileDescriptor? = nil
        let m = try SharedRingMapping.create(requestCapacity: 4096, responseCapacity: 8192, descriptor: &fd)
        let d = fd.take()!.release()
        defer { FileDescriptor.closeRaw(d) }
        corrupt(m.base)
        var failure: SharedRingError?
        do throws(SharedRingError) {
            let other = try SharedRingMapping.attach(descriptor: d)
            other.unmap()
        } catch {
            failure = error
        }
        m.unmap()
        return failure
    }

    @Test("attach: a good object; then every header field checked")
    func header() throws {
        #expect(try attachError { _ in } == nil)
        #expect(try attachError { $0.storeBytes(of: UInt32(0x1234), as: UInt32.self) } == .badHeader(field: "magic", value: 0x1234))
        #expect(try attachError { $0.storeBytes(of: UInt16(2), toByteOffset: 4, as: UInt16.self) } == .badHeader(field: "version", value: 2))
        #expect(try attachError { $0.storeBytes(of: UInt16(3), toByteOffset: 6, as: UInt16.self) } == .badHeader(field: "ring count", value: 3))
        #expect(try attachError { $0.storeBytes(of: UInt32(1), toByteOffset: 8, as: UInt32.self) } == .badHeader(field: "flags", value: 1))
        #expect(try attachError { $0.storeBytes(of: UInt32(6000), toByteOffset: 24, as: UInt32.self) } == .badHeader(field: "request capacity", value: 6000))
        #expect(try attachError { $0.storeBytes(of: UInt32(0), toByteOffset: 28, as: UInt32.self) } == .badHeader(field: "response capacity", value: 0))
        // Capacities that add up to another size than the object's.
        #expect(try attachError { $0.storeBytes(of: UInt32(1 << 20), toByteOffset: 24, as: UInt32.self) } == .badSize(header: 16384, actual: 16384))
        #expect(try attachError { $0.storeBytes(of: UInt64(1 << 40), toByteOffset: 16, as: UInt64.self) } == .badSize(header: 1 << 40, actual: 16384))
    }

    @Test("attach: an object whose size is not sealed, or too small, is refused")
    func unsealed() throws {
        let fd = memfd_create("lpm-rings-test", UInt32(MFD_CLOEXEC))
        #expect(fd >= 0)
        defer { close(fd) }
        #expect(ftruncate(fd, 3 * 4096) == 0)
        #expect(throws: SharedRingError.notSealed) { _ = try SharedRingMapping.attach(descriptor: fd) }
        let small = memfd_create("lpm-rings-test", UInt32(MFD_CLOEXEC | MFD_ALLOW_SEALING))
        defer { close(small) }
        #expect(ftruncate(small, 4096) == 0)
        #expect(throws: SharedRingError.badSize(header: 0, actual: 4096)) { _ = try SharedRingMapping.attach(descriptor: small) }
        #expect(throws: SharedRingError.self) { _ = try SharedRingMapping.attach(descriptor: -1) }
    }

    @Test("the creator's seals hold: the peer cannot shrink or grow the object")
    func sealsHold() throws {
        var fd: FileDescriptor? = nil
        let m = try SharedRingMapping.create(requestCapacity: 4096, responseCapacity: 4096, descriptor: &fd)
        let d = fd.take()!.release()
        defer { FileDescriptor.closeRaw(d) }
        m.unmap()
        #expect(ftruncate(d, 4096) == -1 && errno == EPERM)
        #expect(ftruncate(d, 1 << 20) == -1 && errno == EPERM)
        #expect(cloop_fcntl_int(d, F_GET_SEALS, 0) == F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
        #expect(cloop_fcntl_int(d, F_GETFD, 0) & FD_CLOEXEC != 0)
    }
}

// MARK: - Two processes

/// What the echo run saw.
struct EchoStats {
    var records = 0
    var parentSleeps = 0
    var peerSleeps: UInt64 = 0
    var peerSpaceWaits: UInt64 = 0
}

struct EchoFailure: Error, CustomStringConvertible {
    let description: String
}

/// lpm-ring-peer, built next to the test binary.
private func ringPeerPath() -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    let me = String(decoding: buffer[..<max(0, n)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return String(me[..<(me.lastIndex(of: "/") ?? me.startIndex)]) + "/lpm-ring-peer"
}

/// A deterministic 64-bit mix (splitmix64) of `x`.
private func mix(_ x: UInt64) -> UInt64 {
    var z = x &+ 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}

/// Starts lpm-ring-peer with the ring object on 3, its doorbell on 4, ours on 5.
private func spawnPeer(ring: CInt, peerBell: CInt, ourBell: CInt, spin: Int64) throws -> pid_t {
    // Numbers above 5 first, so that no dup2 below lands on a descriptor another one still needs.
    let high = [ring, peerBell, ourBell].map { fcntl($0, F_DUPFD_CLOEXEC, 10) }
    defer { for fd in high where fd >= 0 { close(fd) } }
    guard !high.contains(-1) else { throw EchoFailure(description: "fcntl: errno \(errno)") }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    for (i, fd) in high.enumerated() { posix_spawn_file_actions_adddup2(&actions, fd, CInt(3 + i)) }
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    var empty = sigset_t()
    sigemptyset(&empty)
    posix_spawnattr_setsigmask(&attr, &empty)
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK))
    let path = ringPeerPath()
    let args = [path, "echo", String(spin)].map { (s: String) in strdup(s) }
    defer { for a in args { free(a) } }
    var argv = args + [nil]
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, path, &actions, &attr, &argv, environ)
    guard rc == 0 else { throw EchoFailure(description: "posix_spawn(\(path)): \(String(cString: strerror(rc)))") }
    return pid
}

/// Sends `count` records of pseudo-random sizes (mostly under 200 bytes, one in 64 up to the
/// largest payload) through lpm-ring-peer and checks each echo: order, id, kind, length and
/// every byte. Bursts of random length, each waited for in full before the next, make both
/// sides sleep often; one burst in 16 is long enough to fill the rings. Every wait is bounded
/// by 30 s: a lost wake-up is a failure, not a hang.
func runEcho(count: Int, spin: Int64 = 0, requestCapacity: Int = 16384, responseCapacity: Int = 8192) throws -> EchoStats {
    var memfd: FileDescriptor? = nil
    let mapping = try SharedRingMapping.create(requestCapacity: requestCapacity, responseCapacity: responseCapacity, descriptor: &memfd)
    let ring = memfd.take()!.release()
    let result = Result { () throws -> EchoStats in try echo(mapping, ring: ring, count: count, spin: spin) }
    mapping.unmap()
    return try result.get()
}

/// ``runEcho(count:spin:requestCapacity:responseCapacity:)`` on a mapping; closes `ring`.
private func echo(_ mapping: borrowing SharedRingMapping, ring: CInt, count: Int, spin: Int64) throws -> EchoStats {
    var ringOpen = true
    let peerBell = try Sys.eventfd().release()
    let bell = try Sys.eventfd().release()
    var pid: pid_t = 0
    defer {
        if pid > 0 {
            kill(pid, SIGKILL)
            var st: CInt = 0
            while waitpid(pid, &st, 0) == -1 && errno == EINTR {}
        }
        if ringOpen { FileDescriptor.closeRaw(ring) }
        FileDescriptor.closeRaw(peerBell)
        FileDescriptor.closeRaw(bell)
    }
    var requests = try mapping.producer(.request)
    var responses = try mapping.consumer(.response)
    let maxPayload = min(requests.geometry.maxPayload, responses.geometry.maxPayload)
    let patternSize = 65536
    let pattern = UnsafeMutableRawBufferPointer.allocate(byteCount: patternSize + maxPayload, alignment: 8)
    defer { pattern.deallocate() }
    for i in 0..<pattern.count { pattern[i] = UInt8(truncatingIfNeeded: mix(UInt64(i))) }
    func size(_ id: Int) -> Int {
        let r = mix(UInt64(id) &* 31)
        return r % 64 == 0 ? Int((r >> 8) % UInt64(maxPayload + 1)) : Int((r >> 8) % 200)
    }
    func source(_ id: Int) -> UnsafeRawPointer { UnsafeRawPointer(pattern.baseAddress! + (id &* 7919) % patternSize) }

    pid = try spawnPeer(ring: ring, peerBell: peerBell, ourBell: bell, spin: spin)
    FileDescriptor.closeRaw(ring)
    ringOpen = false
    var stats = EchoStats()
    let deadline = Sys.monotonicNanoseconds() + 300_000_000_000
    var next = 0, expected = 0, burstEnd = 0
    func waitForBell() throws {
        guard try SharedRingDoorbell.wait(bell, timeoutMilliseconds: 30_000) else {
            throw EchoFailure(description: "no wake-up in 30 s: sent \(next), received \(expected)")
        }
    }
    while expected < count {
        if expected == next && next == burstEnd {
            let r = mix(UInt64(next) ^ 0xB0B)
            burstEnd = min(count, next + 1 + Int(r % 16 == 0 ? (r >> 8) % 4000 : (r >> 8) % 32))
        }
        var progressed = false
        var full = false
        while next < burstEnd {
            let n = size(next)
            guard let room = try requests.reserve(payload: n) else { full = true; break }
            room.baseAddress!.copyMemory(from: source(next), byteCount: n)
            requests.commit(length: n, kind: request, flags: 0, id: UInt64(next))
            next += 1
            progressed = true
            if next & 63 == 0, requests.publish() { try SharedRingDoorbell.ring(peerBell) }
        }
        if requests.publish() { try SharedRingDoorbell.ring(peerBell) }
        while let r = try responses.next() {
            let n = size(expected)
            guard r.id == UInt64(expected), r.kind == response, r.payload.count == n,
                  memcmp(r.payload.baseAddress!, source(expected), n) == 0 else {
                throw EchoFailure(description: "record \(expected): got id \(r.id) kind \(r.kind) length \(r.payload.count) (want \(n)) or other bytes")
            }
            expected += 1
            progressed = true
        }
        if responses.release() { try SharedRingDoorbell.ring(peerBell) }
        if progressed { continue }
        guard Sys.monotonicNanoseconds() < deadline else { throw EchoFailure(description: "deadline: sent \(next), received \(expected)") }
        // Nothing to do: wait for responses, and for space when the request ring was full.
        var sleep = try responses.prepareToSleep()
        if sleep && full { sleep = try requests.prepareToWaitForSpace(payload: size(next)) }
        if sleep {
            stats.parentSleeps += 1
            try waitForBell()
        }
        responses.woke()
        requests.doneWaiting()
    }
    // Stop the peer; its answer carries its counters.
    while try requests.reserve(payload: 0) == nil {
        if try requests.prepareToWaitForSpace(payload: 0) { try waitForBell() }
        requests.doneWaiting()
    }
    requests.commit(length: 0, kind: 0xEE, flags: 0, id: UInt64(count))
    if requests.publish() { try SharedRingDoorbell.ring(peerBell) }
    while true {
        if let r = try responses.next() {
            guard r.kind == 0xEE, r.payload.count == 16 else { throw EchoFailure(description: "bad stop answer") }
            stats.peerSleeps = UInt64(littleEndian: r.payload.loadUnaligned(as: UInt64.self))
            stats.peerSpaceWaits = UInt64(littleEndian: r.payload.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
            break
        }
        if try responses.prepareToSleep() { try waitForBell() }
        responses.woke()
    }
    responses.release()
    var status: CInt = 0
    while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
    pid = 0
    guard status == 0 else { throw EchoFailure(description: "lpm-ring-peer exited with status \(status)") }
    stats.records = count
    return stats
}

@Suite("Shared-memory rings: two processes", .serialized)
struct SharedRingProcessTests {
    @Test("two million records echoed through the doorbells, the peer sleeping often", .timeLimit(.minutes(5)))
    func echoStress() throws {
        let s = try runEcho(count: 2_000_000)
        print("shared ring echo: \(s)")
        #expect(s.records == 2_000_000)
        // Both sides went through the sleep handshake many times (each burst ends with one).
        #expect(s.peerSleeps > 1000)
        #expect(s.parentSleeps > 1000)
    }

    @Test("tight rings: the peer waits for space in the response ring", .timeLimit(.minutes(5)))
    func echoTight() throws {
        let s = try runEcho(count: 200_000, requestCapacity: 65536, responseCapacity: 4096)
        print("shared ring echo, tight: \(s)")
        #expect(s.peerSpaceWaits > 0)
    }

    @Test("busy polling before sleeping", .timeLimit(.minutes(5)))
    func echoSpinning() throws {
        let s = try runEcho(count: 200_000, spin: 50_000)
        print("shared ring echo, spinning: \(s)")
        #expect(s.records == 200_000)
    }

    @Test("nothing left behind: descriptors, mappings, children")
    func leavesNothing() async {
        await #expect(processExitsWith: .success) {
            await settleChildProcess()
            let fds = openFDCount()
            let maps = ringMappings()
            // The instruments see a mapping and a descriptor.
            var fd: FileDescriptor? = nil
            let probe = try SharedRingMapping.create(requestCapacity: 4096, responseCapacity: 4096, descriptor: &fd)
            #expect(ringMappings() == maps + 1 && openFDCount() == fds + 1)
            fd.take()!.close()
            probe.unmap()
            let s = try runEcho(count: 20_000)
            #expect(s.records == 20_000)
            #expect(openFDCount() == fds, "\(fdList())")
            #expect(ringMappings() == maps && maps == 0)
            var info = siginfo_t()
            #expect(waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == -1 && errno == ECHILD)
            #expect(SharedRingMapping.leakCount == 0 && FileDescriptor.leakCount == 0)
        }
    }
}

/// Lines of /proc/self/maps that map a ring object (`/memfd:lpm-rings (deleted)`).
func ringMappings() -> Int {
    guard let f = fopen("/proc/self/maps", "r") else { return -1 }
    defer { fclose(f) }
    var n = 0
    var line = [CChar](repeating: 0, count: 4096)
    while fgets(&line, CInt(line.count), f) != nil {
        if strstr(line, "memfd:lpm-rings") != nil { n += 1 }
    }
    return n
}
