/// Finds the table entry of a request handed over from another thread by its submission number
/// (what its caller's ``RequestHandle`` holds), with no dictionary entry per request.
///
/// Submission numbers are admitted in order, one after the other, so the entries of the
/// requests admitted since the oldest one still pending sit in a ring, by number: 4 bytes a
/// request. The front of the ring is dropped as its requests finish; a request that stays pending
/// while many later ones come and go (a slow one, say) is moved aside to a small dictionary, so
/// that the ring stays within a bound of the requests pending. A pure value: tested as plain
/// logic (`SubmissionIndexTests`).
struct SubmissionIndex {
    /// The submission number of the ring's first element.
    private var base: UInt64 = 1
    /// Table entries by submission number from `base` on; `UInt32.max`: refused.
    private var ring = Ring<UInt32>(filler: .max)
    /// Requests moved out of the ring while still pending.
    private var stragglers: [UInt64: UInt32] = [:]

    /// The ring's length past which pending requests at its front are moved aside (or twice
    /// the requests pending, if more).
    static var ringBound: Int { 4096 }

    /// How many requests the index holds (ring and stragglers), answered ones not yet dropped included.
    var count: Int { ring.count + stragglers.count }

    /// Records that submission `number` (the next one in order) was admitted at `index`
    /// (`UInt32.max`: it was refused). `isPending(index, number)` tells whether entry `index`
    /// still holds submission `number`, pending; `pendingCount` is how many requests are.
    mutating func admitted(_ number: UInt64, at index: UInt32, pendingCount: Int,
                           isPending: (UInt32, UInt64) -> Bool) {
        precondition(number == base &+ UInt64(ring.count), "submission \(number) admitted out of order (expected \(base &+ UInt64(ring.count)))")
        ring.pushBack(index)
        while let first = ring.first {
            if first != .max && isPending(first, base) {
                guard ring.count > max(Self.ringBound, 2 * pendingCount) else { break }
                stragglers[base] = first  // pending for long: moved aside
            }
            _ = ring.popFront()
            base &+= 1
        }
        if stragglers.count > max(64, 2 * pendingCount) {
            stragglers = stragglers.filter { isPending($0.value, $0.key) }
        }
    }

    /// Where submission `number` was admitted, if it was and has not been dropped. The entry may
    /// since hold another request: check it.
    func find(_ number: UInt64) -> UInt32? {
        guard number >= base else { return stragglers[number] }
        let offset = number - base
        guard offset < UInt64(ring.count) else { return nil }
        let index = ring[Int(offset)]
        return index == .max ? nil : index
    }
}
