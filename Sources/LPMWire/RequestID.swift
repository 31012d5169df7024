/// A request's identity: a version 4 (random) UUID, without Foundation.
///
/// The one public type of this internal module: `LoadProcessManager` (`Response.id`) and
/// `LoadProcessManagerWorker` (`Worker.Request.id`) each name it with a public typealias
/// `RequestID`, so a file that imports both sees one type.
///
/// The random bits come from a per-process generator seeded once from the kernel
/// (`SystemRandomNumberGenerator`); they are unique, not secret.
public struct RequestID: Hashable, Sendable, CustomStringConvertible {
    /// The 16 bytes, in network order.
    public var bytes: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                       UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)

    /// The all-zero id.
    public static let zero = RequestID(high: 0, low: 0)

    init(high: UInt64, low: UInt64) {
        let h = high.bigEndian, l = low.bigEndian
        bytes = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &bytes) { raw in
            raw.storeBytes(of: h, toByteOffset: 0, as: UInt64.self)
            raw.storeBytes(of: l, toByteOffset: 8, as: UInt64.self)
        }
    }

    /// A new random version 4 UUID from `generator`.
    package static func random(using generator: inout some RandomNumberGenerator) -> RequestID {
        var high = generator.next() as UInt64
        var low = generator.next() as UInt64
        high = (high & ~0xF000) | 0x4000          // version 4
        low = (low & ~(0xC << 60)) | (0x8 << 60)  // variant 10xx
        return RequestID(high: high, low: low)
    }

    /// Whether the two ids have the same 16 bytes.
    public static func == (a: RequestID, b: RequestID) -> Bool {
        withUnsafeBytes(of: a.bytes) { x in withUnsafeBytes(of: b.bytes) { y in x.elementsEqual(y) } }
    }

    /// Hashes the 16 bytes.
    public func hash(into hasher: inout Hasher) {
        withUnsafeBytes(of: bytes) { hasher.combine(bytes: $0) }
    }

    /// The canonical text form, `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`.
    public var description: String {
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(36)
        withUnsafeBytes(of: bytes) { raw in
            for (i, b) in raw.enumerated() {
                if i == 4 || i == 6 || i == 8 || i == 10 { out.append(UInt8(ascii: "-")) }
                out.append(hex[Int(b >> 4)])
                out.append(hex[Int(b & 15)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The id in the first 16 bytes of `raw`, which must hold at least 16.
    @inlinable
    package init(loading raw: UnsafeRawBufferPointer) {
        precondition(raw.count >= 16, "a request id needs 16 bytes")
        bytes = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &bytes) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[0..<16])) }
    }

    /// Appends the 16 bytes.
    @inlinable
    package func append(to out: inout [UInt8]) {
        withUnsafeBytes(of: bytes) { out.append(contentsOf: $0) }
    }
}

/// A fast generator for request ids (xoshiro256**), seeded once from the system generator.
package struct IDGenerator: RandomNumberGenerator {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    /// A generator seeded from the system generator.
    package init() {
        var system = SystemRandomNumberGenerator()
        s = (system.next(), system.next(), system.next(), system.next() | 1)
    }

    @inline(__always)
    private static func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

    /// The next 64 random bits.
    package mutating func next() -> UInt64 {
        let result = IDGenerator.rotl(s.1 &* 5, 7) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = IDGenerator.rotl(s.3, 45)
        return result
    }

    /// A new random version 4 UUID: ``RequestID/random(using:)`` with this generator, as one
    /// direct call (the generic one is not specialized across modules).
    package mutating func nextID() -> RequestID {
        RequestID.random(using: &self)
    }
}
