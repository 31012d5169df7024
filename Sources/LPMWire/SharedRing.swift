import CLoop
import LPMReactor

/// The fixed layout of a shared-memory ring object. See docs/PROTOCOL.md, "Shared-memory rings".
///
/// One object (a memfd) per worker holds a 4096-byte control page, then the request ring's data
/// area (supervisor to worker), then the response ring's (worker to supervisor). Every offset
/// here is from the start of the object; every field is little-endian.
package enum SharedRingLayout {
    /// The object header's first word: the bytes `L` `P` `M` `R`.
    package static let magic: UInt32 = 0x524D_504C
    /// The layout version this build speaks.
    package static let version: UInt16 = 1
    /// Rings in one object: request, then response.
    package static let ringCount: UInt16 = 2
    /// The control page: object header, then each ring's control block. The data areas follow.
    package static let controlSize = 4096
    /// A ring's data area: a power of two from 4 KiB to 1 GiB.
    package static let capacityRange = 4096...(1 << 30)

    /// Object header fields.
    package static let magicOffset = 0
    package static let versionOffset = 4
    package static let ringCountOffset = 6
    package static let flagsOffset = 8
    package static let reservedOffset = 12
    package static let totalSizeOffset = 16
    package static let requestCapacityOffset = 24
    package static let responseCapacityOffset = 28
    /// The header is 64 bytes; bytes 32..<64 are reserved (zero).
    package static let headerSize = 64

    /// Control block of each ring (256 bytes): the producer's line, then the consumer's, each
    /// 128 bytes apart so that adjacent-line prefetching does not pair them.
    package static func controlOffset(_ ring: SharedRingDirection) -> Int { ring == .request ? 256 : 512 }
    /// In a control block: the producer index (u64), written by the producer only.
    package static let tailOffset = 0
    /// In a control block: "the producer waits for space" (u32), written by the producer, claimed
    /// (set to 0) by the consumer that rings for it.
    package static let producerWaitingOffset = 8
    /// In a control block: the consumer index (u64), written by the consumer only.
    package static let headOffset = 128
    /// In a control block: "the consumer sleeps" (u32), written by the consumer, claimed (set to
    /// 0) by the producer that rings for it.
    package static let consumerSleepingOffset = 136

    /// A record: u32 payload length, u8 kind, u8 flags, u16 reserved (0), u64 id, the payload,
    /// then padding to a multiple of 8.
    package static let recordHeaderSize = 16
    /// Records start at multiples of 8 and occupy multiples of 8.
    package static let alignment = 8
    /// A length word with this value is a wrap marker: the bytes from it to the end of the data
    /// area are skipped, and the next record starts at offset 0.
    package static let wrapMarker: UInt32 = 0xFFFF_FFFF
}

/// Which ring of a worker's pair.
package enum SharedRingDirection: Sendable, Hashable, CustomStringConvertible {
    /// Supervisor to worker.
    case request
    /// Worker to supervisor.
    case response

    package var description: String { self == .request ? "request ring" : "response ring" }
}

/// A peer broke the ring protocol, or a ring object is not one this build can use.
///
/// Every value here comes from what a peer wrote in shared memory or handed over; none of them is
/// a crash. A ring that reported one is unusable: the peer is in violation.
package enum SharedRingError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The object header is not a ring object of this version: which field, and what it held.
    case badHeader(field: String, value: UInt64)
    /// The object's size (`fstat`) is not what its header describes.
    case badSize(header: UInt64, actual: Int)
    /// The object's size is not sealed (`F_SEAL_SHRINK`): a peer could truncate it under the mapping.
    case notSealed
    /// The peer's index moved backwards.
    case indexWentBackwards(SharedRingDirection, index: String, from: UInt64, to: UInt64)
    /// The peer's index is not a multiple of 8, or leaves more than the capacity between the two indices.
    case indexOutOfRange(SharedRingDirection, index: String, value: UInt64, other: UInt64)
    /// A record's length exceeds the largest payload or runs past the end of the data area.
    case recordTooLong(SharedRingDirection, at: UInt64, length: UInt32)
    /// A record runs past the bytes the producer published.
    case recordPastPublished(SharedRingDirection, at: UInt64, size: Int, published: UInt64)
    /// A wrap marker at offset 0, or one whose skipped bytes were not published.
    case badWrapMarker(SharedRingDirection, at: UInt64)
    /// A payload larger than the ring takes (``SharedRingGeometry/maxPayload``): send it another way.
    case payloadTooLarge(SharedRingDirection, length: Int, max: Int)
    /// A system call failed while creating or attaching the object.
    case system(SyscallError)

    package var description: String {
        switch self {
        case .badHeader(let field, let value): return "shared ring: bad header field \(field) (\(value))"
        case .badSize(let header, let actual): return "shared ring: the header says \(header) bytes, the object has \(actual)"
        case .notSealed: return "shared ring: the object's size is not sealed"
        case .indexWentBackwards(let r, let index, let from, let to): return "\(r): \(index) went backwards from \(from) to \(to)"
        case .indexOutOfRange(let r, let index, let value, let other): return "\(r): \(index) \(value) out of range (other index \(other))"
        case .recordTooLong(let r, let at, let length): return "\(r): record at \(at) too long (\(length) bytes)"
        case .recordPastPublished(let r, let at, let size, let published): return "\(r): record at \(at) of \(size) bytes runs past the published index \(published)"
        case .badWrapMarker(let r, let at): return "\(r): bad wrap marker at \(at)"
        case .payloadTooLarge(let r, let length, let max): return "\(r): payload of \(length) bytes exceeds the largest, \(max)"
        case .system(let e): return "shared ring: \(e)"
        }
    }
}

/// The pure arithmetic of one ring: where records go, whether they fit, whether what a peer
/// published is consistent. Indices are free-running byte counts (u64; they never wrap in
/// practice: 2^64 bytes); a position in the data area is `index & (capacity - 1)`.
package struct SharedRingGeometry: Sendable, Hashable {
    /// The data area's size in bytes, a power of two.
    package let capacity: Int
    /// The largest payload: half the capacity less a record header. Any record that size or
    /// smaller fits in an empty ring wherever the indices stand (the wrap rule never needs
    /// more than the whole ring).
    package var maxPayload: Int { capacity / 2 - SharedRingLayout.recordHeaderSize }

    /// A geometry for a data area of `capacity` bytes, or nil if it is not a power of two in
    /// ``SharedRingLayout/capacityRange``.
    package init?(capacity: Int) {
        guard SharedRingLayout.capacityRange.contains(capacity), capacity & (capacity - 1) == 0 else { return nil }
        self.capacity = capacity
    }

    /// The bytes a record with `payload` bytes occupies: header, payload, padding to 8.
    @inlinable
    package static func recordSize(payload: Int) -> Int {
        SharedRingLayout.recordHeaderSize &+ (payload &+ 7) & ~7
    }

    /// The offset in the data area of byte index `index`.
    @inlinable
    package func position(_ index: UInt64) -> Int { Int(truncatingIfNeeded: index & UInt64(capacity - 1)) }

    /// Where a record with `payload` bytes goes when the producer stands at `tail` and the
    /// consumer has released up to `head`: `skip` bytes of wrap padding (0, or everything up to
    /// the end of the data area) then the record at `offset`; nil if there is not room for both.
    /// - Precondition: `payload <= maxPayload` and `head <= tail <= head + capacity`.
    @inline(__always)
    package func place(payload: Int, tail: UInt64, head: UInt64) -> (offset: Int, skip: Int)? {
        // Wrapping arithmetic: every operand is at most the capacity (2^30) by the precondition.
        let size = Self.recordSize(payload: payload)
        let pos = position(tail)
        let skip = capacity &- pos < size ? capacity &- pos : 0
        let free = capacity &- Int(truncatingIfNeeded: tail &- head)
        guard skip &+ size <= free else { return nil }
        return (skip == 0 ? pos : 0, skip)
    }

    /// One step of a consumer reading at `cursor` with the producer's index at `tail`.
    package enum Step: Hashable, Sendable {
        /// A wrap marker: skip this many bytes (to the end of the data area).
        case wrap(skip: Int)
        /// A record of `size` bytes whose payload is `length` bytes.
        case record(size: Int, length: Int)
    }

    /// Checks a newly loaded producer index: not behind the last one seen, a multiple of 8, and
    /// at most `capacity` bytes ahead of what the consumer has released.
    @inline(__always)
    package func checkTail(_ tail: UInt64, lastTail: UInt64, head: UInt64, ring: SharedRingDirection) throws(SharedRingError) {
        guard tail >= lastTail else { throw .indexWentBackwards(ring, index: "producer index", from: lastTail, to: tail) }
        guard tail % 8 == 0, tail &- head <= UInt64(capacity) else {
            throw .indexOutOfRange(ring, index: "producer index", value: tail, other: head)
        }
    }

    /// Checks a newly loaded consumer index: not behind the last one seen, a multiple of 8, and
    /// not past what the producer has published.
    @inline(__always)
    package func checkHead(_ head: UInt64, lastHead: UInt64, published: UInt64, ring: SharedRingDirection) throws(SharedRingError) {
        guard head >= lastHead else { throw .indexWentBackwards(ring, index: "consumer index", from: lastHead, to: head) }
        guard head % 8 == 0, head <= published else {
            throw .indexOutOfRange(ring, index: "consumer index", value: head, other: published)
        }
    }

    /// Decodes the length word found at `cursor`, with `tail` the producer's checked index
    /// (`cursor < tail`): a wrap, or a record that lies wholly inside the published bytes and
    /// before the end of the data area.
    @inline(__always)
    package func step(lengthWord: UInt32, cursor: UInt64, tail: UInt64, ring: SharedRingDirection) throws(SharedRingError) -> Step {
        let pos = position(cursor)
        let available = tail &- cursor
        if lengthWord == SharedRingLayout.wrapMarker {
            let skip = capacity - pos
            guard pos != 0, UInt64(skip) <= available else { throw .badWrapMarker(ring, at: cursor) }
            return .wrap(skip: skip)
        }
        guard Int(lengthWord) <= maxPayload else { throw .recordTooLong(ring, at: cursor, length: lengthWord) }
        let size = Self.recordSize(payload: Int(lengthWord))
        guard size <= capacity - pos else { throw .recordTooLong(ring, at: cursor, length: lengthWord) }
        guard UInt64(size) <= available else { throw .recordPastPublished(ring, at: cursor, size: size, published: tail) }
        return .record(size: size, length: Int(lengthWord))
    }
}

/// One record read from a ring, in place: valid until the consumer's next
/// ``SharedRingConsumer/release()``.
package struct SharedRingRecord {
    /// The frame id (a request id for requests and responses).
    package let id: UInt64
    /// The frame type (``FrameType`` raw value).
    package let kind: UInt8
    /// The frame flags (``FrameFlags`` raw value).
    package let flags: UInt8
    /// The payload, in the shared mapping.
    /// - Warning: the peer can still write these bytes (it can only spoil its own message):
    ///   decode them once, do not re-read a length from them and trust it twice.
    package let payload: UnsafeRawBufferPointer
}

@available(*, unavailable) extension SharedRingRecord: Sendable {}

/// Atomic accesses to one ring's control block.
struct SharedRingControl {
    let tail: UnsafeMutablePointer<UInt64>
    let producerWaiting: UnsafeMutablePointer<UInt32>
    let head: UnsafeMutablePointer<UInt64>
    let consumerSleeping: UnsafeMutablePointer<UInt32>

    init(_ block: UnsafeMutableRawPointer) {
        tail = (block + SharedRingLayout.tailOffset).assumingMemoryBound(to: UInt64.self)
        producerWaiting = (block + SharedRingLayout.producerWaitingOffset).assumingMemoryBound(to: UInt32.self)
        head = (block + SharedRingLayout.headOffset).assumingMemoryBound(to: UInt64.self)
        consumerSleeping = (block + SharedRingLayout.consumerSleepingOffset).assumingMemoryBound(to: UInt32.self)
    }

    /// Both indices as a side finds them when it attaches (acquire loads), checked against each
    /// other: the producer's within a capacity of the consumer's, neither misaligned.
    func attachedIndices(_ geometry: SharedRingGeometry, ring: SharedRingDirection) throws(SharedRingError) -> (head: UInt64, tail: UInt64) {
        let h = cloop_atomic_load_n_u64_acquire(head)
        let t = cloop_atomic_load_n_u64_acquire(tail)
        try geometry.checkHead(h, lastHead: 0, published: t, ring: ring)
        try geometry.checkTail(t, lastTail: 0, head: h, ring: ring)
        return (h, t)
    }
}

/// The producer's side of one ring: reserve room, write the payload in place, commit, publish.
///
/// ```
/// guard let room = try producer.reserve(payload: n) else { /* full */ }
/// // write up to n bytes into room
/// producer.commit(length: n, kind: FrameType.request.rawValue, flags: 0, id: id)
/// if producer.publish() { /* write 1 to the consumer's doorbell eventfd */ }
/// ```
///
/// - Important: a view is a cursor into a ``SharedRingMapping``: it must not outlive it, and one
///   ring has one producer (one thread at a time).
package struct SharedRingProducer {
    /// The ring's arithmetic.
    package let geometry: SharedRingGeometry
    /// Which ring.
    package let ring: SharedRingDirection
    private let control: SharedRingControl
    private let data: UnsafeMutableRawPointer
    /// Bytes written, published or not (only this side writes it).
    private var tail: UInt64
    /// The producer index the consumer can see.
    private var publishedTail: UInt64
    /// The consumer index last loaded.
    private var head: UInt64
    /// The reservation not yet committed: the record's offset, the wrap padding before it, the
    /// payload bytes reserved.
    private var pending: (offset: Int, skip: Int, payload: Int)?

    init(ring: SharedRingDirection, geometry: SharedRingGeometry, control: UnsafeMutableRawPointer,
         data: UnsafeMutableRawPointer) throws(SharedRingError) {
        self.ring = ring
        self.geometry = geometry
        self.control = SharedRingControl(control)
        self.data = data
        let (h, t) = try self.control.attachedIndices(geometry, ring: ring)
        tail = t
        publishedTail = t
        head = h
    }

    /// Room for a record of up to `payload` bytes, in the mapping; nil when the ring is full
    /// (the consumer has not released enough). Write the payload there, then ``commit(length:kind:flags:id:)``.
    /// - Throws: ``SharedRingError/payloadTooLarge(_:length:max:)`` past
    ///   ``SharedRingGeometry/maxPayload``; an index error if the consumer's index is inconsistent.
    package mutating func reserve(payload: Int) throws(SharedRingError) -> UnsafeMutableRawBufferPointer? {
        precondition(pending == nil, "reserve: the previous reservation is not committed")
        guard payload >= 0, payload <= geometry.maxPayload else {
            throw .payloadTooLarge(ring, length: payload, max: geometry.maxPayload)
        }
        var spot = geometry.place(payload: payload, tail: tail, head: head)
        if spot == nil {
            try refreshHead()
            spot = geometry.place(payload: payload, tail: tail, head: head)
        }
        guard let spot else { return nil }
        pending = (spot.offset, spot.skip, payload)
        return UnsafeMutableRawBufferPointer(start: data + spot.offset + SharedRingLayout.recordHeaderSize, count: payload)
    }

    /// Gives up the current reservation (nothing was written that the consumer can see).
    package mutating func abandon() { pending = nil }

    /// Writes the record header of the reservation, with the payload's final `length` (at most
    /// what was reserved), and the wrap marker before it if one is needed. The record becomes
    /// visible at the next ``publish()``.
    package mutating func commit(length: Int, kind: UInt8, flags: UInt8, id: UInt64) {
        guard let p = pending else { preconditionFailure("commit: nothing reserved") }
        precondition(length >= 0 && length <= p.payload, "commit: \(length) bytes, \(p.payload) reserved")
        pending = nil
        if p.skip > 0 {
            (data + geometry.position(tail)).storeBytes(of: SharedRingLayout.wrapMarker.littleEndian, as: UInt32.self)
        }
        let record = data + p.offset
        record.storeBytes(of: UInt32(length).littleEndian, as: UInt32.self)
        record.storeBytes(of: kind, toByteOffset: 4, as: UInt8.self)
        record.storeBytes(of: flags, toByteOffset: 5, as: UInt8.self)
        record.storeBytes(of: UInt16(0), toByteOffset: 6, as: UInt16.self)
        record.storeBytes(of: id.littleEndian, toByteOffset: 8, as: UInt64.self)
        tail &+= UInt64(p.skip + SharedRingGeometry.recordSize(payload: length))
    }

    /// Makes every committed record visible to the consumer. Returns whether the consumer
    /// announced it sleeps: then write to its doorbell (eventfd). At most one publish per
    /// announced sleep returns true.
    ///
    /// Order: release-store of the producer index; full fence; relaxed load of "consumer sleeps",
    /// and only if set, an exchange to 0 (claiming it). The fence orders the index store before
    /// the flag load; without it either side's store can sit in its CPU's store buffer while it
    /// loads the other's old value, and a wake-up is lost (see docs/PROTOCOL.md).
    @discardableResult
    package mutating func publish() -> Bool {
        guard tail != publishedTail else { return false }
        cloop_atomic_store_n_u64_release(control.tail, tail)
        publishedTail = tail
        cloop_atomic_thread_fence_seq_cst()
        guard cloop_atomic_load_n_u32_relaxed(control.consumerSleeping) != 0 else { return false }
        return cloop_atomic_exchange_n_u32_acq_rel(control.consumerSleeping, 0) != 0
    }

    /// Before waiting for space on the doorbell: announces the wait, then checks again. Returns
    /// true if the caller should wait now (the consumer will ring once it releases bytes);
    /// false if room for `payload` appeared meanwhile (the announcement is withdrawn).
    package mutating func prepareToWaitForSpace(payload: Int) throws(SharedRingError) -> Bool {
        cloop_atomic_store_n_u32_relaxed(control.producerWaiting, 1)
        cloop_atomic_thread_fence_seq_cst()
        try refreshHead()
        if geometry.place(payload: min(payload, geometry.maxPayload), tail: tail, head: head) != nil {
            cloop_atomic_store_n_u32_relaxed(control.producerWaiting, 0)
            return false
        }
        return true
    }

    /// After a wake-up (or giving up the wait): withdraws the announcement.
    package func doneWaiting() { cloop_atomic_store_n_u32_relaxed(control.producerWaiting, 0) }

    /// The bytes not yet released by the consumer, as last seen.
    package var unreleasedBytes: Int { Int(tail &- head) }

    private mutating func refreshHead() throws(SharedRingError) {
        let h = cloop_atomic_load_n_u64_acquire(control.head)
        try geometry.checkHead(h, lastHead: head, published: publishedTail, ring: ring)
        head = h
    }
}

@available(*, unavailable) extension SharedRingProducer: Sendable {}

/// The consumer's side of one ring: read records in place, release them, and the sleeping
/// handshake.
///
/// ```
/// while let r = try consumer.next() { handle(r.payload) }
/// if consumer.release() { /* ring the producer's doorbell: it waits for space */ }
/// if try consumer.prepareToSleep() { /* wait on the doorbell, then */ consumer.woke() }
/// ```
///
/// Nothing the producer writes is trusted: every index and record header is checked before a
/// byte of the record is read, lengths are read once into local values, and a bad one is a
/// ``SharedRingError``. Reading never leaves the data area and never loops: each call reads
/// at most one wrap marker and one record.
///
/// - Important: a view is a cursor into a ``SharedRingMapping``: it must not outlive it, and one
///   ring has one consumer (one thread at a time).
package struct SharedRingConsumer {
    /// The ring's arithmetic.
    package let geometry: SharedRingGeometry
    /// Which ring.
    package let ring: SharedRingDirection
    private let control: SharedRingControl
    private let data: UnsafeMutableRawPointer
    /// Released bytes (only this side writes the shared copy; never re-read from it).
    private var head: UInt64
    /// Read bytes: records read but not released lie between `head` and `cursor`.
    private var cursor: UInt64
    /// The producer index last loaded and checked.
    private var tail: UInt64

    init(ring: SharedRingDirection, geometry: SharedRingGeometry, control: UnsafeMutableRawPointer,
         data: UnsafeMutableRawPointer) throws(SharedRingError) {
        self.ring = ring
        self.geometry = geometry
        self.control = SharedRingControl(control)
        self.data = data
        let (h, t) = try self.control.attachedIndices(geometry, ring: ring)
        head = h
        cursor = h
        tail = t
    }

    /// The next record, read in place, or nil if the ring holds no unread record. The record's
    /// bytes stay valid until ``release()``.
    /// - Throws: ``SharedRingError`` when the producer's index or the record is inconsistent.
    package mutating func next() throws(SharedRingError) -> SharedRingRecord? {
        if cursor == tail {
            guard try refreshTail() else { return nil }
        }
        var word = UInt32(littleEndian: (data + geometry.position(cursor)).load(as: UInt32.self))
        var step = try geometry.step(lengthWord: word, cursor: cursor, tail: tail, ring: ring)
        if case .wrap(let skip) = step {
            cursor &+= UInt64(skip)
            if cursor == tail { return nil }
            word = UInt32(littleEndian: data.load(as: UInt32.self))
            step = try geometry.step(lengthWord: word, cursor: cursor, tail: tail, ring: ring)
        }
        // After a wrap the cursor stands at offset 0, where a wrap marker is refused: at most one
        // wrap per call.
        guard case .record(let size, let length) = step else { throw .badWrapMarker(ring, at: cursor) }
        let record = data + geometry.position(cursor)
        cursor &+= UInt64(size)
        return SharedRingRecord(
            id: UInt64(littleEndian: record.load(fromByteOffset: 8, as: UInt64.self)),
            kind: record.load(fromByteOffset: 4, as: UInt8.self),
            flags: record.load(fromByteOffset: 5, as: UInt8.self),
            payload: UnsafeRawBufferPointer(start: record + SharedRingLayout.recordHeaderSize, count: length)
        )
    }

    /// Whether a record (or a wrap marker) is published and not yet read. Loads the producer's
    /// index when everything seen so far is read.
    package mutating func hasUnread() throws(SharedRingError) -> Bool {
        cursor != tail ? true : try refreshTail()
    }

    /// Hands every record read so far back to the producer. Returns whether the producer
    /// announced it waits for space: then write to its doorbell. Records read before this call
    /// are invalid after it.
    ///
    /// Order: release-store of the consumer index (the payload reads happen before the producer
    /// can reuse the bytes); full fence; relaxed load of "producer waits", and only if set, an
    /// exchange to 0.
    @discardableResult
    package mutating func release() -> Bool {
        guard cursor != head else { return false }
        head = cursor
        cloop_atomic_store_n_u64_release(control.head, head)
        cloop_atomic_thread_fence_seq_cst()
        guard cloop_atomic_load_n_u32_relaxed(control.producerWaiting) != 0 else { return false }
        return cloop_atomic_exchange_n_u32_acq_rel(control.producerWaiting, 0) != 0
    }

    /// Before sleeping on the doorbell: announces the sleep, then checks the ring again.
    /// Returns true if the caller should sleep now (the producer will ring after its next
    /// publish); false if something arrived meanwhile (the announcement is withdrawn).
    ///
    /// Order: relaxed store of 1 to "consumer sleeps"; full fence; acquire load of the producer
    /// index. The fence is the other half of the one in ``SharedRingProducer/publish()``: of the
    /// two loads after the two fences, at least one sees the other side's store, so either this
    /// check sees the record or the producer sees the flag.
    /// - Precondition: everything read is released (``release()``), or the producer could wait
    ///   for space while this side sleeps.
    package mutating func prepareToSleep() throws(SharedRingError) -> Bool {
        precondition(cursor == head, "prepareToSleep: release the records read first")
        cloop_atomic_store_n_u32_relaxed(control.consumerSleeping, 1)
        cloop_atomic_thread_fence_seq_cst()
        var arrived = cursor != tail
        if !arrived { arrived = try refreshTail() }
        if arrived {
            cloop_atomic_store_n_u32_relaxed(control.consumerSleeping, 0)
            return false
        }
        return true
    }

    /// After a wake-up (spurious ones happen: check the ring again): withdraws the announcement.
    package func woke() { cloop_atomic_store_n_u32_relaxed(control.consumerSleeping, 0) }

    /// Spins (with a CPU pause hint) up to `nanoseconds` for a record to arrive. Returns whether
    /// one did. The busy-polling stage before ``prepareToSleep()``.
    package mutating func spin(nanoseconds: Int64) throws(SharedRingError) -> Bool {
        if try hasUnread() { return true }
        let deadline = Sys.monotonicNanoseconds() &+ nanoseconds
        var round = 0
        while true {
            // One pause between loads (a PAUSE costs up to about 140 cycles on recent x86), the
            // clock read every 256 rounds, and the CPU yielded every 1024 (`sched_yield(2)`), so
            // that a peer on the same CPU, or waiting for one, still runs.
            cloop_cpu_relax()
            if try hasUnread() { return true }
            round &+= 1
            if round & 255 == 0 {
                if Sys.monotonicNanoseconds() >= deadline { return false }
                if round & 1023 == 0 { sched_yield() }
            }
        }
    }

    /// Loads and checks the producer index; returns whether it holds unread bytes.
    private mutating func refreshTail() throws(SharedRingError) -> Bool {
        let t = cloop_atomic_load_n_u64_acquire(control.tail)
        try geometry.checkTail(t, lastTail: tail, head: head, ring: ring)
        tail = t
        return cursor != tail
    }
}

@available(*, unavailable) extension SharedRingConsumer: Sendable {}
