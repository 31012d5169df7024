import LPMReactor
import LPMWire

extension Pool {
    /// Takes a request that came from another thread as a ticket: refused with `cancelled` if
    /// its caller gave up before it arrived, else admitted like any other (the ticket learns
    /// where, for a later cancellation).
    func enqueue(_ ticket: RequestTicket) {
        // Taken from the ticket: the table holds it from here on (one owner, no retain).
        guard let completion = ticket.completion.take() else { return }
        guard !ticket.cancelled else {
            metrics?.refused(.cancelled)
            answer(completion, .failure(SupervisorError(.cancelled, "the request was cancelled before it was queued")))
            return deliver()
        }
        let admitted = enqueue(ticket.payload, ticket.options, completion)
        ticket.index = admitted.index
        ticket.id = admitted.id
    }

    /// Cancels the request a ticket carried, wherever it is now.
    func cancel(_ ticket: RequestTicket) {
        guard ticket.index != .max else {
            ticket.cancelled = true  // not here yet (or refused): refused when it arrives
            return
        }
        cancel(index: ticket.index, id: ticket.id)
    }

    /// Cancels the request that came through the inbox with submission number `submission`, if
    /// it is still pending.
    func cancel(submission: UInt64) {
        guard let index = submissions.find(submission), table.isSubmission(index, submission) else { return }
        cancel(index: index, id: table[index].id)
    }

    /// Cancels request `id` in entry `index`, if it is still pending: a queued one leaves the
    /// queue; one in flight is cancelled on its worker (`cancel` frame), and its late answer is
    /// dropped. Either way its caller gets `cancelled` now.
    func cancel(index: UInt32, id: RequestID) {
        defer { deliver() }
        guard index != .max, table.pending(index, id: id) else { return }
        let slot = table[index].worker
        var whereItWas = "while queued"
        if slot >= 0, let w = slots[slot].process {
            w.channel.send(.cancel, id: table.wireID(index))
            whereItWas = "while in flight on worker \(w.pid)"
        }
        fail(index, .cancelled, "request \(id) was cancelled by its caller \(whereItWas)")
        pump()
    }

    /// Stops waiting for the reply a ticket's event asked for: its caller gets `cancelled` now, a
    /// late reply is dropped.
    func cancel(_ ticket: ReplyTicket) {
        defer { deliver() }
        guard ticket.eventID != 0 else {
            ticket.cancelled = true  // not sent yet: refused when it is
            return
        }
        guard let entry = pendingReplies.removeValue(forKey: ticket.eventID) else { return }
        outbox.push(.reply(entry.handler, .failure(SupervisorError(.cancelled, "the wait for worker \(entry.pid)'s reply was cancelled"))))
    }
}

/// What a cancellation of ``Supervisor/request(event:_:to:)`` needs to find its wait.
/// `@unchecked Sendable`: its fields are read and written only on the reactor thread.
final class ReplyTicket: @unchecked Sendable {
    /// The event's id once sent (0: not sent yet).
    var eventID: UInt64 = 0
    /// Cancelled before it was sent.
    var cancelled = false
}
