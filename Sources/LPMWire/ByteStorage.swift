/// Bytes in one heap block of their own (the object and its bytes are one allocation), for
/// buffers whose bytes outlive the code that filled them: a ``FrameDecoder`` reads into one and
/// lends the payloads it decodes (see ``FrameDecoder/lend(_:)``); whoever holds a lent payload
/// holds the storage. The bytes handed out are never written again while the storage is shared:
/// writers check `isKnownUniquelyReferenced` first.
package final class ByteStorage: ManagedBuffer<Int, UInt8> {
    /// A block of at least `capacity` bytes (uninitialized).
    package static func make(capacity: Int) -> ByteStorage {
        unsafeDowncast(ByteStorage.create(minimumCapacity: capacity) { _ in capacity }, to: ByteStorage.self)
    }

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
    }
}
