import Glibc
/// Which worker gets the next request: a pure value (`DispatchPolicyTests`).
///
/// The ready worker with the fewest requests in flight (and response streams flowing), below
/// its capacity; ties go to the lowest RSS, then round robin from the worker after the last one
/// chosen. For a request that carries a socket, the worker holding the fewest sockets comes
/// first. A worker with nothing in flight and no RSS sample is taken at once.
struct DispatchPolicy: Sendable {
    /// What the policy needs to know of one worker slot.
    struct Candidate: Equatable, Sendable {
        /// Ready, and part of the pool.
        var eligible: Bool
        var load: Int
        var rss: Int
        var sockets: Int
        /// Announced that it takes batched requests (only those may get one).
        var takesBatches = true

        static let ineligible = Candidate(eligible: false, load: 0, rss: 0, sockets: 0)
    }

    /// Requests one worker holds at once.
    let capacity: Int
    /// Where the round robin starts next.
    private(set) var cursor = 0

    init(capacity: Int) { self.capacity = max(1, capacity) }

    /// The chosen slot among `count` slots, or `nil` when none can take the request.
    mutating func pick(count n: Int, forSocket: Bool, _ candidate: (Int) -> Candidate) -> Int? {
        guard n > 0 else { return nil }
        var best = -1
        var b = Candidate.ineligible
        // From the cursor round, wrapping without a division per candidate.
        var next = cursor < n ? cursor : cursor % n
        var k = 0
        while k < n {
            let i = next
            next = next + 1 == n ? 0 : next + 1
            k += 1
            let c = candidate(i)
            guard c.eligible, c.load < capacity else { continue }
            if best < 0 {
                best = i
                b = c
                if c.load == 0 && c.rss == 0 && (!forSocket || c.sockets == 0) { break }
            } else if forSocket && c.sockets != b.sockets {
                if c.sockets < b.sockets { best = i; b = c }
            } else if c.load < b.load || (c.load == b.load && c.rss < b.rss) {
                best = i
                b = c
            }
        }
        guard best >= 0 else { return nil }
        cursor = best + 1 == n ? 0 : best + 1
        return best
    }
}
