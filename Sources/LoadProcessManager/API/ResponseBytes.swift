import Glibc
import LPMWire

/// The bytes of an answer, as ``WorkerResponse/bytes`` and ``MapResponse/bytes`` hold them: a
/// view of the buffer the answer was read into, made with no copy and no allocation.
///
/// Indices run from 0 to `count`. Reading the bytes (iteration, subscripts, `==`,
/// ``withUnsafeBytes(_:)``) is free; `Array(bytes)`, or ``WorkerResponse/data``, copies them into
/// an array of their own.
///
/// A view keeps the buffer it points into alive. The buffer an answer is read into holds up to
/// 64 KiB of other answers (one large answer: just that one): a program that keeps a few answers
/// out of many for a long time should keep copies (`Array(bytes)`), not the views. The bytes
/// never change while a view exists: the buffer is written again only once no view of it is left.
public struct ResponseBytes: RandomAccessCollection, Hashable, CustomStringConvertible, ExpressibleByArrayLiteral,
                             @unchecked Sendable {
    // `@unchecked Sendable`: the owner is immutable storage (its bytes are not written while a
    // view holds it), and `base` points into it.
    @usableFromInline let owner: AnyObject?
    @usableFromInline let base: UnsafeRawPointer?
    /// The number of bytes.
    public let count: Int

    /// A view of `bytes`, which `storage` holds.
    init(storage: ByteStorage?, bytes: UnsafeRawBufferPointer) {
        owner = storage
        base = bytes.count > 0 ? bytes.baseAddress : nil
        count = base == nil ? 0 : bytes.count
    }

    /// A copy of `bytes`.
    public init<S: Sequence>(_ bytes: S) where S.Element == UInt8 {
        let array = Array(bytes)
        let storage = array.withUnsafeBytes { ByteStorage.copy($0) }
        self.init(storage: storage, bytes: UnsafeRawBufferPointer(start: storage.base, count: array.count))
    }

    /// No bytes.
    public init() {
        self.init(storage: nil, bytes: UnsafeRawBufferPointer(start: nil, count: 0))
    }

    public init(arrayLiteral elements: UInt8...) {
        self.init(elements)
    }

    /// The bytes from `start` to `end` (indices of this view), sharing its storage.
    func view(_ start: Int, _ end: Int) -> ResponseBytes {
        precondition(0 <= start && start <= end && end <= count, "ResponseBytes: \(start)..<\(end) is outside 0..<\(count)")
        return ResponseBytes(storage: owner.map { unsafeDowncast($0, to: ByteStorage.self) },
                             bytes: UnsafeRawBufferPointer(start: base.map { $0 + start }, count: end - start))
    }

    @inlinable public var startIndex: Int { 0 }
    @inlinable public var endIndex: Int { count }

    @inlinable public subscript(position: Int) -> UInt8 {
        precondition(position >= 0 && position < count, "ResponseBytes: index \(position) is outside 0..<\(count)")
        return base.unsafelyUnwrapped.load(fromByteOffset: position, as: UInt8.self)
    }

    /// Calls `body` with the bytes, valid during the call.
    @inlinable
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try withExtendedLifetime(owner) { () throws(E) -> R in
            try body(UnsafeRawBufferPointer(start: base, count: count))
        }
    }

    @inlinable
    public func withContiguousStorageIfAvailable<R>(_ body: (UnsafeBufferPointer<UInt8>) throws -> R) rethrows -> R? {
        try withExtendedLifetime(owner) {
            try body(UnsafeBufferPointer(start: base?.assumingMemoryBound(to: UInt8.self), count: count))
        }
    }

    public static func == (a: ResponseBytes, b: ResponseBytes) -> Bool {
        guard a.count == b.count else { return false }
        if a.count == 0 || a.base == b.base { return true }
        return a.withUnsafeBytes { x in b.withUnsafeBytes { y in memcmp(x.baseAddress!, y.baseAddress!, a.count) == 0 } }
    }

    public func hash(into hasher: inout Hasher) {
        withUnsafeBytes { hasher.combine(bytes: $0) }
    }

    public var description: String { "\(count) bytes" }
}
