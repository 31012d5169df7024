/// The reactor's timers: an indexed binary min-heap of deadlines over a slot array.
///
/// A pure value: it never reads a clock (callers pass "now" and deadlines in nanoseconds) and
/// never runs a handler (``popExpired(now:)`` hands the due one back), so it is tested as plain
/// logic. Each timer lives in a slot that keeps its position in the heap, so cancelling is
/// O(log n) with no search; slots are reused through a free list, and a generation number per
/// slot makes a ``Reactor/Timer`` stale once its timer fired (one-shot) or was cancelled.
/// Timers due at the same instant come out in the order they were scheduled.
struct TimerHeap<Handler> {
    private struct Slot {
        var deadline: Int64 = 0
        var interval: Int64 = 0
        var sequence: UInt64 = 0
        var generation: UInt32 = 0
        var heapIndex: Int = -1
        var handler: Handler?
    }

    private var slots: [Slot] = []
    private var freeSlots: [UInt32] = []
    /// Slot indices, ordered as a binary min-heap by (deadline, sequence).
    private var heap: [UInt32] = []
    private var sequence: UInt64 = 0

    /// How many timers are scheduled.
    var count: Int { slots.count - freeSlots.count }

    /// The earliest deadline, or `nil` when no timer is scheduled.
    var earliestDeadline: Int64? { heap.first.map { slots[Int($0)].deadline } }

    /// Schedules `handler` at `deadline`, then every `interval` after it when `interval > 0`.
    mutating func schedule(deadline: Int64, interval: Int64 = 0, _ handler: Handler) -> Reactor.Timer {
        let index = slots.takeSlot(reusing: &freeSlots, else: Slot())
        sequence &+= 1
        let i = Int(index)
        slots[i].deadline = deadline
        slots[i].interval = interval
        slots[i].sequence = sequence
        slots[i].generation &+= 1
        slots[i].handler = handler
        heap.append(index)
        slots[i].heapIndex = heap.count - 1
        siftUp(heap.count - 1)
        return Reactor.Timer(index: index, generation: slots[i].generation)
    }

    /// Cancels a timer; `false` when it already fired (one-shot) or was cancelled.
    @discardableResult
    mutating func cancel(_ timer: Reactor.Timer) -> Bool {
        let i = Int(timer.index)
        guard i < slots.count, slots[i].generation == timer.generation, slots[i].handler != nil else { return false }
        if slots[i].heapIndex >= 0 { remove(at: slots[i].heapIndex) }
        release(timer.index)
        return true
    }

    /// The handler of the earliest timer due at `now`, if any. A one-shot timer is removed
    /// (its ``Reactor/Timer`` goes stale); a repeating one moves to its next deadline, skipping
    /// ticks already missed, so that the handler may cancel it.
    mutating func popExpired(now: Int64) -> Handler? {
        guard let top = heap.first else { return nil }
        let t = Int(top)
        guard slots[t].deadline <= now, let handler = slots[t].handler else { return nil }
        if slots[t].interval > 0 {
            var next = slots[t].deadline &+ slots[t].interval
            if next <= now { next = now &+ slots[t].interval }  // skip missed ticks
            slots[t].deadline = next
            sequence &+= 1
            slots[t].sequence = sequence
            siftDown(0)
        } else {
            remove(at: 0)
            release(top)
        }
        return handler
    }

    /// Drops every timer; their ``Reactor/Timer`` values go stale.
    mutating func removeAll() {
        for i in heap { release(i) }
        heap.removeAll()
    }

    private mutating func release(_ index: UInt32) {
        slots[Int(index)].handler = nil
        slots[Int(index)].heapIndex = -1
        freeSlots.append(index)
    }

    private func less(_ a: UInt32, _ b: UInt32) -> Bool {
        let x = slots[Int(a)], y = slots[Int(b)]
        return x.deadline != y.deadline ? x.deadline < y.deadline : x.sequence < y.sequence
    }

    private mutating func place(_ pos: Int, _ index: UInt32) {
        heap[pos] = index
        slots[Int(index)].heapIndex = pos
    }

    private mutating func siftUp(_ start: Int) {
        var pos = start
        let item = heap[pos]
        while pos > 0 {
            let parent = (pos - 1) / 2
            if !less(item, heap[parent]) { break }
            place(pos, heap[parent])
            pos = parent
        }
        place(pos, item)
    }

    private mutating func siftDown(_ start: Int) {
        var pos = start
        let item = heap[pos]
        let n = heap.count
        while true {
            var child = 2 * pos + 1
            if child >= n { break }
            if child + 1 < n && less(heap[child + 1], heap[child]) { child += 1 }
            if !less(heap[child], item) { break }
            place(pos, heap[child])
            pos = child
        }
        place(pos, item)
    }

    private mutating func remove(at pos: Int) {
        let removed = heap[pos]
        let last = heap.removeLast()
        slots[Int(removed)].heapIndex = -1
        if pos < heap.count {
            place(pos, last)
            siftDown(pos)
            siftUp(slots[Int(last)].heapIndex)
        }
    }
}
