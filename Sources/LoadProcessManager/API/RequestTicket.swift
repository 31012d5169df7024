import Glibc
import LPMReactor
import LPMWire

/// One request on its way from another thread to the pool: the job that carries it to the
/// reactor thread (submitted as an object, so the hop allocates nothing else), and what a
/// cancellation needs to find it there.
///
/// `@unchecked Sendable`: `payload`, `options` and `box` are set in `init`, and `completion`
/// before the ticket is submitted (the job queue's lock orders that write before the reactor
/// thread reads it); `index`, `id` and `cancelled` are read and written only on the reactor
/// thread.
final class RequestTicket: ReactorJob, @unchecked Sendable {
    let payload: [UInt8]
    let options: RequestOptions
    let box: Supervisor.PoolBox
    var completion: Completion?
    /// Where the pool admitted it (`UInt32.max`: not admitted, or refused).
    var index = UInt32.max
    var id = RequestID.zero
    /// Cancelled before the pool saw it: refused with `cancelled` when it arrives.
    var cancelled = false

    init(_ payload: [UInt8], _ options: RequestOptions, _ box: Supervisor.PoolBox, _ completion: Completion? = nil) {
        self.payload = payload
        self.options = options
        self.box = box
        self.completion = completion
    }

    func run(on reactor: Reactor) {
        guard let completion else { return }
        guard let pool = box.pool else { return completion(.failure(SupervisorError(.shutDown, "the pool is stopped"))) }
        pool.enqueue(self, completion)
    }

    func dropped() {
        completion?(.failure(SupervisorError(.shutDown, "the pool's reactor closed before the request reached it")))
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
        /// On its way from another thread.
        case ticket(RequestTicket)
    }

    private let target: Target

    init(ticket: RequestTicket) {
        target = .ticket(ticket)
    }

    init(index: UInt32, id: RequestID, box: Supervisor.PoolBox) {
        target = .admitted(index, id, box)
    }

    /// Cancels the request (see ``RequestHandle``). Any thread; harmless once it is answered.
    public func cancel() {
        let target = self.target
        let box: Supervisor.PoolBox
        switch target {
        case .admitted(_, _, let b): box = b
        case .ticket(let t): box = t.box
        }
        box.reactor.execute { _ in
            guard let pool = box.pool else { return }
            switch target {
            case .admitted(let index, let id, _): pool.cancel(index: index, id: id)
            case .ticket(let ticket): pool.cancel(ticket)
            }
        }
    }
}
