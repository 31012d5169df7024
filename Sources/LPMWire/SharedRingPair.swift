import CLoop
import LPMReactor
import Synchronization

/// A worker's ring object mapped into this process: the request ring and the response ring in
/// one `MAP_SHARED` mapping of a memfd. See docs/PROTOCOL.md, "Shared-memory rings".
///
/// The supervisor creates the object (``create(requestCapacity:responseCapacity:descriptor:)``), hands its
/// descriptor to the worker, and takes the request producer and the response consumer; the
/// worker attaches (``attach(descriptor:)``) and takes the request consumer and the response
/// producer. Unmap with ``unmap()``; a mapping dropped while mapped is unmapped by `deinit` and
/// counted in ``leakCount``.
///
/// - Important: the views (``producer(_:)``, ``consumer(_:)``) point into the mapping: they must
///   not be used after ``unmap()``.
package struct SharedRingMapping: ~Copyable {
    /// The first byte of the mapping.
    package let base: UnsafeMutableRawPointer
    /// The mapping's size in bytes: the control page and both data areas.
    package let size: Int
    /// The request ring's arithmetic (read once, when mapped; never re-read from shared memory).
    package let request: SharedRingGeometry
    /// The response ring's arithmetic.
    package let response: SharedRingGeometry

    private init(base: UnsafeMutableRawPointer, size: Int, request: SharedRingGeometry, response: SharedRingGeometry) {
        self.base = base
        self.size = size
        self.request = request
        self.response = response
    }

    /// The object's size for two data areas of these capacities.
    package static func objectSize(request: SharedRingGeometry, response: SharedRingGeometry) -> Int {
        SharedRingLayout.controlSize + request.capacity + response.capacity
    }

    /// Creates a ring object and maps it: `memfd_create(2)` (`MFD_CLOEXEC | MFD_ALLOW_SEALING`,
    /// no name in any filesystem), `ftruncate(2)`, seals against shrinking and growing
    /// (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`), `mmap(2)` `MAP_SHARED`, and writes the
    /// header. Indices and flags start at 0 (a new memfd reads as zeros).
    /// - Parameters:
    ///   - requestCapacity: the request ring's data area, a power of two in
    ///     ``SharedRingLayout/capacityRange``.
    ///   - responseCapacity: the same for the response ring.
    ///   - descriptor: receives the memfd (CLOEXEC), to hand to the peer and then close.
    /// - Throws: ``SharedRingError/badHeader(field:value:)`` for a capacity out of range,
    ///   ``SharedRingError/system(_:)`` when a call fails.
    package static func create(
        requestCapacity: Int, responseCapacity: Int, descriptor: inout FileDescriptor?
    ) throws(SharedRingError) -> SharedRingMapping {
        guard let request = SharedRingGeometry(capacity: requestCapacity) else {
            throw .badHeader(field: "request capacity", value: UInt64(clamping: requestCapacity))
        }
        guard let response = SharedRingGeometry(capacity: responseCapacity) else {
            throw .badHeader(field: "response capacity", value: UInt64(clamping: responseCapacity))
        }
        let size = objectSize(request: request, response: response)
        do throws(SyscallError) {
            let fd = FileDescriptor(owning: try syscallValue("memfd_create") {
                memfd_create("lpm-rings", UInt32(MFD_CLOEXEC | MFD_ALLOW_SEALING))
            })
            do throws(SyscallError) {
                _ = try syscallValue("ftruncate") { ftruncate(fd.rawValue, off_t(size)) }
                _ = try syscallValue("fcntl") { cloop_fcntl_int(fd.rawValue, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) }
                let base = try map(fd.rawValue, size: size)
                base.storeBytes(of: SharedRingLayout.magic.littleEndian, toByteOffset: SharedRingLayout.magicOffset, as: UInt32.self)
                base.storeBytes(of: SharedRingLayout.version.littleEndian, toByteOffset: SharedRingLayout.versionOffset, as: UInt16.self)
                base.storeBytes(of: SharedRingLayout.ringCount.littleEndian, toByteOffset: SharedRingLayout.ringCountOffset, as: UInt16.self)
                base.storeBytes(of: UInt64(size).littleEndian, toByteOffset: SharedRingLayout.totalSizeOffset, as: UInt64.self)
                base.storeBytes(of: UInt32(requestCapacity).littleEndian, toByteOffset: SharedRingLayout.requestCapacityOffset, as: UInt32.self)
                base.storeBytes(of: UInt32(responseCapacity).littleEndian, toByteOffset: SharedRingLayout.responseCapacityOffset, as: UInt32.self)
                descriptor = consume fd
                return SharedRingMapping(base: base, size: size, request: request, response: response)
            } catch {
                fd.close()
                throw error
            }
        } catch {
            throw .system(error)
        }
    }

    /// Maps a ring object received from the peer and checks it: `fstat(2)` for its size,
    /// `fcntl(F_GET_SEALS)` for the seal against shrinking (without it the peer could truncate
    /// the object and turn a read into `SIGBUS`), `mmap(2)` `MAP_SHARED`, then every header field
    /// against this build's layout and the object's size. The descriptor stays the caller's;
    /// it can be closed once this returns (the mapping keeps the object alive).
    /// - Throws: ``SharedRingError`` naming the first field or size that does not match.
    package static func attach(descriptor fd: CInt) throws(SharedRingError) -> SharedRingMapping {
        var st = stat()
        do {
            _ = try syscallValue("fstat") { fstat(fd, &st) }
        } catch { throw .system(error) }
        let actual = Int(st.st_size)
        let largest = SharedRingLayout.controlSize + 2 * SharedRingLayout.capacityRange.upperBound
        let smallest = SharedRingLayout.controlSize + 2 * SharedRingLayout.capacityRange.lowerBound
        guard actual >= smallest, actual <= largest else { throw .badSize(header: 0, actual: actual) }
        let seals = cloop_fcntl_int(fd, F_GET_SEALS, 0)
        guard seals != -1, seals & F_SEAL_SHRINK != 0 else { throw .notSealed }
        let base: UnsafeMutableRawPointer
        do { base = try map(fd, size: actual) } catch { throw .system(error) }
        do {
            let (request, response) = try readHeader(base, size: actual)
            return SharedRingMapping(base: base, size: actual, request: request, response: response)
        } catch {
            munmap(base, actual)
            throw error
        }
    }

    /// Checks the object header at `base` (a mapping of `size` bytes) and returns both rings'
    /// geometry. Each field is loaded once.
    package static func readHeader(_ base: UnsafeRawPointer, size: Int) throws(SharedRingError) -> (SharedRingGeometry, SharedRingGeometry) {
        let magic = UInt32(littleEndian: base.load(fromByteOffset: SharedRingLayout.magicOffset, as: UInt32.self))
        guard magic == SharedRingLayout.magic else { throw .badHeader(field: "magic", value: UInt64(magic)) }
        let version = UInt16(littleEndian: base.load(fromByteOffset: SharedRingLayout.versionOffset, as: UInt16.self))
        guard version == SharedRingLayout.version else { throw .badHeader(field: "version", value: UInt64(version)) }
        let count = UInt16(littleEndian: base.load(fromByteOffset: SharedRingLayout.ringCountOffset, as: UInt16.self))
        guard count == SharedRingLayout.ringCount else { throw .badHeader(field: "ring count", value: UInt64(count)) }
        let flags = UInt32(littleEndian: base.load(fromByteOffset: SharedRingLayout.flagsOffset, as: UInt32.self))
        guard flags == 0 else { throw .badHeader(field: "flags", value: UInt64(flags)) }
        let requestCapacity = UInt32(littleEndian: base.load(fromByteOffset: SharedRingLayout.requestCapacityOffset, as: UInt32.self))
        guard let request = SharedRingGeometry(capacity: Int(requestCapacity)) else {
            throw .badHeader(field: "request capacity", value: UInt64(requestCapacity))
        }
        let responseCapacity = UInt32(littleEndian: base.load(fromByteOffset: SharedRingLayout.responseCapacityOffset, as: UInt32.self))
        guard let response = SharedRingGeometry(capacity: Int(responseCapacity)) else {
            throw .badHeader(field: "response capacity", value: UInt64(responseCapacity))
        }
        let total = UInt64(littleEndian: base.load(fromByteOffset: SharedRingLayout.totalSizeOffset, as: UInt64.self))
        guard total == UInt64(objectSize(request: request, response: response)), total == UInt64(size) else {
            throw .badSize(header: total, actual: size)
        }
        return (request, response)
    }

    /// The producer view of `ring`: the supervisor's for requests, the worker's for responses.
    /// - Throws: an index error if the ring's indices are already inconsistent.
    package func producer(_ ring: SharedRingDirection) throws(SharedRingError) -> SharedRingProducer {
        try SharedRingProducer(ring: ring, geometry: geometry(ring), control: base + SharedRingLayout.controlOffset(ring), data: data(ring))
    }

    /// The consumer view of `ring`: the worker's for requests, the supervisor's for responses.
    /// - Throws: an index error if the ring's indices are already inconsistent.
    package func consumer(_ ring: SharedRingDirection) throws(SharedRingError) -> SharedRingConsumer {
        try SharedRingConsumer(ring: ring, geometry: geometry(ring), control: base + SharedRingLayout.controlOffset(ring), data: data(ring))
    }

    /// The geometry of `ring`.
    package func geometry(_ ring: SharedRingDirection) -> SharedRingGeometry { ring == .request ? request : response }

    /// The first byte of `ring`'s data area.
    package func data(_ ring: SharedRingDirection) -> UnsafeMutableRawPointer {
        base + SharedRingLayout.controlSize + (ring == .request ? 0 : request.capacity)
    }

    /// Unmaps the object (`munmap(2)`). The views made from it must not be used afterwards.
    package consuming func unmap() {
        let (b, s) = (base, size)
        discard self
        munmap(b, s)
    }

    deinit {
        SharedRingMapping.leaks.add(1, ordering: .relaxed)
        munmap(base, size)
    }

    private static let leaks = Atomic<Int>(0)

    /// How many mappings were dropped without ``unmap()`` in this process.
    package static var leakCount: Int { leaks.load(ordering: .relaxed) }

    /// `mmap(2)` of `size` bytes of `fd`, read-write, `MAP_SHARED`.
    private static func map(_ fd: CInt, size: Int) throws(SyscallError) -> UnsafeMutableRawPointer {
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw SyscallError("mmap", Errno.current)
        }
        return p
    }
}

/// The doorbell of a ring's sleeping side: an eventfd (`Sys.eventfd()`, CLOEXEC and
/// NONBLOCK) that the other side writes to when the flags say so. A reactor registers it for
/// readability; a side without one blocks in ``wait(_:timeoutMilliseconds:)``.
package enum SharedRingDoorbell {
    /// Rings: `write(2)` of 1 to the eventfd, retrying `EINTR`. `EAGAIN` (the counter is full)
    /// means the doorbell is already readable: nothing is lost.
    package static func ring(_ fd: CInt) throws(SyscallError) {
        var one: UInt64 = 1
        _ = try withUnsafeBytes(of: &one) { (b) throws(SyscallError) in try Sys.write(fd, b) }
    }

    /// Waits until the doorbell rang, then drains it: `poll(2)` for `POLLIN` up to
    /// `timeoutMilliseconds` (-1: no limit), then `read(2)` of the counter. Retries `EINTR`
    /// (with the full timeout again). Returns false on timeout. Wake-ups can be spurious (a ring
    /// for an announcement already withdrawn): check the ring again after each.
    package static func wait(_ fd: CInt, timeoutMilliseconds: Int32) throws(SyscallError) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let n = try syscallValue("poll") { poll(&p, 1, timeoutMilliseconds) }
        if n == 0 { return false }
        drain(fd)
        return true
    }

    /// Reads the eventfd's counter if it is set (non-blocking; nothing to do otherwise).
    package static func drain(_ fd: CInt) {
        var count: UInt64 = 0
        _ = try? withUnsafeMutableBytes(of: &count) { (b) throws(SyscallError) in try Sys.read(fd, b) }
    }
}
