import LPMReactor

/// The shared-memory rings attached to a ``Channel``: one side's producer and consumer views of
/// a worker's ring object, its own doorbell (registered in the channel's reactor) and the peer's.
///
/// The supervisor's side produces requests and consumes responses; the worker's the reverse.
/// Only the frames of a request and of its answer travel here (``carries(_:flags:)``); the
/// channel's socket keeps everything else. See docs/PROTOCOL.md, "Hand-over and negotiation".
final class SharedRingLink {
    /// Which side of the pair this is.
    enum Side { case supervisor, worker }

    let side: Side
    // Reactor thread only, no overlapping access: unchecked (see `Channel`).
    @exclusivity(unchecked) private var mapping: SharedRingMapping?
    @exclusivity(unchecked) var producer: SharedRingProducer
    @exclusivity(unchecked) var consumer: SharedRingConsumer
    /// This side's doorbell: an eventfd, readable when the peer rang it.
    let doorbell: CInt
    /// The peer's doorbell.
    let peerDoorbell: CInt
    @exclusivity(unchecked) var registration: Reactor.Registration?
    /// The largest payload a record takes in the outgoing ring.
    let maxOutgoingPayload: Int
    /// Records committed and not yet published.
    @exclusivity(unchecked) var unpublished = false
    /// Read through the reactor's poll hooks (a busy-polling reactor), not after each doorbell.
    @exclusivity(unchecked) var polled = false
    /// Whether this side announced that it sleeps on its incoming ring.
    @exclusivity(unchecked) var announced = false
    /// Whether a record read in place is being delivered: a close then leaves the mapping to
    /// `deinit` (the delivery still points into it).
    @exclusivity(unchecked) var delivering = false

    /// Takes ownership of `mapping` and of both doorbells.
    init(side: Side, mapping: consuming SharedRingMapping, doorbell: CInt, peerDoorbell: CInt) throws(SharedRingError) {
        self.side = side
        let outgoing: SharedRingDirection = side == .supervisor ? .request : .response
        let incoming: SharedRingDirection = side == .supervisor ? .response : .request
        do {
            producer = try mapping.producer(outgoing)
            consumer = try mapping.consumer(incoming)
        } catch {
            mapping.unmap()
            FileDescriptor.closeRaw(doorbell)
            FileDescriptor.closeRaw(peerDoorbell)
            throw error
        }
        maxOutgoingPayload = mapping.geometry(outgoing).maxPayload
        self.mapping = consume mapping
        self.doorbell = doorbell
        self.peerDoorbell = peerDoorbell
    }

    /// Whether a frame of this type and these flags may travel in this side's outgoing ring:
    /// requests from the supervisor, answers from the worker, never with a descriptor.
    @inline(__always)
    func carries(_ type: FrameType, flags: FrameFlags) -> Bool {
        guard !flags.announcesDescriptor else { return false }
        switch side {
        case .supervisor: return type == .request
        case .worker: return type == .response || type == .ack || type == .error
        }
    }

    /// Whether a record of this kind may arrive in this side's incoming ring.
    func accepts(_ type: FrameType, flags: FrameFlags) -> Bool {
        guard !flags.announcesDescriptor else { return false }
        switch side {
        case .supervisor: return type == .response || type == .ack || type == .error
        case .worker: return type == .request
        }
    }

    /// Rings the peer's doorbell. A failure is not reported: `EAGAIN` means it is readable
    /// already, and a peer whose descriptor broke is found dead by the liveness rules.
    func ringPeer() { try? SharedRingDoorbell.ring(peerDoorbell) }

    /// Publishes the committed records; rings the peer if it sleeps.
    @inline(__always)
    func publish() {
        guard unpublished else { return }
        unpublished = false
        if producer.publish() { ringPeer() }
    }

    /// Deregisters the doorbell, closes both, unmaps the object. The views must not be used after.
    func close(reactor: Reactor) {
        if let r = registration { reactor.deregisterInternal(r) }
        registration = nil
        FileDescriptor.closeRaw(doorbell)
        FileDescriptor.closeRaw(peerDoorbell)
        if !delivering { mapping.take()?.unmap() }
    }

    deinit { mapping.take()?.unmap() }
}

/// The ring descriptors a worker's channel has received so far (``FrameType/rings`` frames).
struct SharedRingHandOver {
    var object: CInt = -1
    var doorbell: CInt = -1
    var peerDoorbell: CInt = -1

    var isComplete: Bool { object >= 0 && doorbell >= 0 && peerDoorbell >= 0 }

    mutating func closeAll() {
        for fd in [object, doorbell, peerDoorbell] where fd >= 0 { FileDescriptor.closeRaw(fd) }
        self = SharedRingHandOver()
    }
}
