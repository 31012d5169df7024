import Glibc
import LPMReactor

/// How a request's caller is answered.
enum Completion {
    case handler(@Sendable (Result<WorkerResponse, SupervisorError>) -> Void)
    case continuation(UnsafeContinuation<Result<WorkerResponse, SupervisorError>, Never>)

    /// Calls the caller back. Consuming: the handler or continuation is moved out, not retained.
    consuming func callAsFunction(_ result: consuming Result<WorkerResponse, SupervisorError>) {
        switch consume self {
        case .handler(let h): h(result)
        case .continuation(let c): c.resume(returning: result)
        }
    }
}

/// A call into user code, owed by the pool.
enum Delivery {
    /// A request's answer.
    case answer(Completion, Result<WorkerResponse, SupervisorError>)
    /// A pool event, for the ``Supervisor/onEvent(_:)`` handler as it is when delivered.
    case event(SupervisorEvent)
    /// A custom event from a worker, for its handler as it is when delivered.
    case workerEvent(WorkerEvent)
    /// A worker's reply to an event, or why none came.
    case reply(Pool.ReplyHandler, Result<[UInt8], SupervisorError>)
    /// Anything else (kill and start completions).
    case call(@Sendable () -> Void)
    /// The pool stopped: the event sequences end, after the events queued before this.
    case endEventStreams
}

/// The calls into user code the pool owes, in the order they arose.
///
/// The pool never calls user code in the middle of a change of its own state: it queues the
/// call here, and the outermost entry into the pool (an API call, a frame, an exit, a timer)
/// delivers the queue once its work is done. A handler may then re-enter any API: what it
/// causes is queued behind, and delivered by the same loop. So the stack never grows per
/// request, however many requests a completion enqueues, or how often they are refused.
struct Outbox {
    private var queue = Ring<Delivery>(filler: .call({}))
    /// Set while ``drain(_:)`` runs: nested entries leave the delivery to it.
    private(set) var isDraining = false

    var isEmpty: Bool { queue.isEmpty }

    mutating func push(_ d: Delivery) { queue.pushBack(d) }

    /// Pops the next delivery, or `nil` (and ends the drain) when there is none.
    mutating func beginDrain() -> Bool {
        guard !isDraining, !queue.isEmpty else { return false }
        isDraining = true
        return true
    }

    /// Starts a direct delivery, made by the caller itself, when nothing is owed before it:
    /// the same guarantees as a drain (nested entries queue behind), without the queue.
    mutating func beginDirect() -> Bool {
        guard !isDraining, queue.isEmpty else { return false }
        isDraining = true
        return true
    }

    mutating func endDirect() { isDraining = false }

    mutating func next() -> Delivery? {
        if let d = queue.popFront() { return d }
        isDraining = false
        return nil
    }
}
