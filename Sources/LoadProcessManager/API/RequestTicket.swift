import Glibc
import LPMReactor
import LPMWire

/// A request from an async caller on its way to the pool (through the inbox), and what that
/// caller's cancellation finds it by: the cancellation may arrive before the request does.
///
/// `@unchecked Sendable`: `payload` and `options` are set in `init`, and `completion` before the
/// ticket is submitted (the inbox's lock orders that write before the reactor thread reads it);
/// `index`, `id` and `cancelled` are read and written only on the reactor thread. So no access
/// to them overlaps another, and they are `@exclusivity(unchecked)`: the dynamic checks cost
/// more than the rest of the ticket's work on an async round trip.
final class RequestTicket: @unchecked Sendable {
    let payload: [UInt8]
    let options: RequestOptions
    @exclusivity(unchecked) var completion: Completion?
    /// Where the pool admitted it (`UInt32.max`: not admitted, or refused).
    @exclusivity(unchecked) var index = UInt32.max
    @exclusivity(unchecked) var id = RequestID.zero
    /// Cancelled before the pool saw it: refused with `cancelled` when it arrives.
    @exclusivity(unchecked) var cancelled = false

    init(_ payload: [UInt8], _ options: RequestOptions) {
        self.payload = payload
        self.options = options
    }
}

/// A request made with a completion handler, which its caller may cancel.
///
/// ``cancel()`` answers the request with `cancelled` at once, if it is not answered yet: a
/// queued request leaves the queue; one in flight is cancelled on its worker too (the worker's
/// `onCancel` handler runs), and the worker's late answer is dropped. The completion is called
/// exactly once either way.
public struct RequestHandle: Sendable {
    // One reference: the handle is made for every request, on the caller's thread, so it must
    // cost next to nothing (no retain of objects the reactor thread is using meanwhile).
    private enum Target: Sendable {
        /// Admitted on the reactor thread itself: its entry and id.
        case admitted(UInt32, RequestID, Supervisor.PoolBox)
        /// Handed over from another thread through the inbox: its submission number.
        case submitted(UInt64, Supervisor.PoolBox)
    }

    private let target: Target

    init(submission: UInt64, box: Supervisor.PoolBox) {
        target = .submitted(submission, box)
    }

    init(index: UInt32, id: RequestID, box: Supervisor.PoolBox) {
        target = .admitted(index, id, box)
    }

    /// Cancels the request (see ``RequestHandle``). Any thread; harmless once it is answered.
    public func cancel() {
        switch target {
        case .admitted(let index, let id, let box):
            box.reactor.execute { _ in box.pool?.cancel(index: index, id: id) }
        case .submitted(let submission, let box):
            // Behind its request in the inbox: it finds the request admitted, or answered.
            _ = box.submit(.cancel(submission))
        }
    }
}
