/// Bytes in one heap block of their own (the object and its bytes are one allocation), for
/// buffers whose bytes outlive the code that filled them: a ``FrameDecoder`` reads into one and
/// lends the payloads it decodes (see ``FrameDecoder/lend(_:)``); whoever holds a lent payload
/// holds the storage. The bytes handed out are never written again while the storage is shared:
/// writers check `isKnownUniquelyReferenced` first.
package final class ByteStorage: ManagedBuffer<Int, UInt8> {
    /// A block of at least `capacity` bytes (uninitialized), its first byte on a cache line.
    package static func make(capacity: Int) -> ByteStorage {
        unsafeDowncast(ByteStorage.create(minimumCapacity: capacity + alignment - 1) { _ in capacity }, to: ByteStorage.self)
    }

    /// Where the bytes start: the first cache line boundary in the tail (the tail itself starts
    /// 24 bytes into the object, past its header and the capacity). Unaligned, the kernel's
    /// copies into a receive buffer and the frame decoder's loads cost measurably more.
    private static var alignment: Int { 64 }

    /// A block holding a copy of `bytes`.
    package static func copy(_ bytes: UnsafeRawBufferPointer) -> ByteStorage {
        let s = make(capacity: bytes.count)
        if let from = bytes.baseAddress, bytes.count > 0 {
            s.base.copyMemory(from: from, byteCount: bytes.count)
        }
        return s
    }

    /// The first byte. Stable for the storage's life (the bytes are tail-allocated in the object).
    package var base: UnsafeMutableRawPointer {
        withUnsafeMutablePointerToElements { UnsafeMutableRawPointer($0) }
            .alignedUp(toMultipleOf: Self.alignment)
    }
}

/// Copies of short-lived payloads, packed into shared blocks: each copy is a view of a block
/// (no allocation of its own), and a block is reused once nobody holds a view of it, or left to
/// its holders when full. For payloads whose own memory is reused at once (a ring's records).
package struct ByteArena {
    private var block: ByteStorage
    private var used = 0
    private let blockSize: Int

    package init(blockSize: Int = 64 * 1024) {
        self.blockSize = blockSize
        block = ByteStorage.make(capacity: blockSize)
    }

    /// A copy of `bytes` (not empty), and the storage that holds it. A payload over a quarter
    /// of a block gets a block of its own.
    package mutating func copy(_ bytes: UnsafeRawBufferPointer) -> (storage: ByteStorage, bytes: UnsafeRawBufferPointer) {
        let n = bytes.count
        guard n <= blockSize / 4 else {
            let own = ByteStorage.copy(bytes)
            return (own, UnsafeRawBufferPointer(start: own.base, count: n))
        }
        if isKnownUniquelyReferenced(&block) {
            used = 0  // every view of it is gone
        } else if blockSize - used < n {
            block = ByteStorage.make(capacity: blockSize)  // the full one stays with its views
            used = 0
        }
        let at = block.base + used
        if let from = bytes.baseAddress { at.copyMemory(from: from, byteCount: n) }
        used += (n + 7) & ~7
        return (block, UnsafeRawBufferPointer(start: at, count: n))
    }
}
