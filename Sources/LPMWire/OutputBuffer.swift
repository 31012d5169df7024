import Glibc

/// The bytes a channel has queued for its peer: one growable block of raw memory.
///
/// An append is a capacity check and a `memcpy` (an `Array<UInt8>` append checks uniqueness,
/// goes through the generic sequence machinery and retains the array it reads from: several
/// times the cost, twice per request on the request path). Not copyable: the channel owns it and
/// frees it.
struct OutputBuffer: ~Copyable {
    private(set) var base: UnsafeMutableRawPointer
    private(set) var count = 0
    private(set) var capacity: Int

    init(capacity: Int) {
        self.capacity = max(capacity, 64)
        base = Self.allocate(self.capacity)
    }

    deinit { free(base) }

    private static func allocate(_ bytes: Int) -> UnsafeMutableRawPointer {
        guard let p = malloc(bytes) else { fatalError("OutputBuffer: malloc of \(bytes) bytes failed: out of memory") }
        return p
    }

    /// Room for `n` more bytes; returns where they go (the caller writes exactly `n`, then
    /// ``commit(_:)``).
    @inline(__always)
    mutating func reserve(_ n: Int) -> UnsafeMutableRawPointer {
        if _slowPath(capacity - count < n) { grow(to: count + n) }
        return base + count
    }

    @inline(__always)
    mutating func commit(_ n: Int) { count += n }

    private mutating func grow(to needed: Int) {
        var c = capacity
        while c < needed { c = c &<< 1 }
        guard let p = realloc(base, c) else { fatalError("OutputBuffer: realloc of \(c) bytes failed: out of memory") }
        base = p
        capacity = c
    }

    @inline(__always)
    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard let source = bytes.baseAddress, bytes.count > 0 else { return }
        reserve(bytes.count).copyMemory(from: source, byteCount: bytes.count)
        count += bytes.count
    }

    @inline(__always)
    mutating func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0) }
    }

    /// Appends the bytes of `value` as they are in memory (a tuple of little-endian words, say).
    @inline(__always)
    mutating func append<T: BitwiseCopyable>(bytesOf value: T) {
        reserve(MemoryLayout<T>.size).storeBytes(of: value, as: T.self)
        count += MemoryLayout<T>.size
    }

    /// Appends a frame header.
    @inline(__always)
    mutating func appendFrameHeader(_ type: FrameType, flags: FrameFlags = [], length: Int, id: UInt64) {
        precondition(length >= 0 && length <= Int(UInt32.max), "frame payload too long")
        append(bytesOf: (FrameHeader.firstWord(type, flags: flags, length: length).littleEndian, id.littleEndian))
    }

    /// The bytes from `start` up to `end`.
    func bytes(from start: Int, to end: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + start, count: end - start)
    }

    /// Empties the buffer; with more than `keep` bytes of capacity, it shrinks to `initial`.
    mutating func removeAll(shrinkingAbove keep: Int, to initial: Int) {
        count = 0
        if capacity > keep {
            free(base)
            capacity = max(initial, 64)
            base = Self.allocate(capacity)
        }
    }
}
