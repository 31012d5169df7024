@testable import LPMReactor
import Testing

/// The timer heap as plain logic: deadlines are numbers, "now" is given, nothing runs.
@Suite("TimerHeap")
struct TimerHeapTests {
    /// Pops every handler due at `now`, in order.
    private func due<H>(_ heap: inout TimerHeap<H>, now: Int64) -> [H] {
        var out: [H] = []
        while let h = heap.popExpired(now: now) { out.append(h) }
        return out
    }

    @Test("timers come out by deadline, ties in scheduling order")
    func ordering() {
        var heap = TimerHeap<Int>()
        let deadlines: [Int64] = [50, 10, 40, 10, 30, 20, 10, 60]
        for (i, d) in deadlines.enumerated() { _ = heap.schedule(deadline: d, i) }
        #expect(heap.count == 8)
        #expect(heap.earliestDeadline == 10)
        #expect(due(&heap, now: 9).isEmpty)
        #expect(due(&heap, now: 10) == [1, 3, 6])
        #expect(due(&heap, now: 45) == [5, 4, 2])
        #expect(due(&heap, now: 1000) == [0, 7])
        #expect(heap.count == 0)
        #expect(heap.earliestDeadline == nil)
    }

    @Test("a thousand shuffled deadlines come out sorted")
    func manyShuffled() {
        var heap = TimerHeap<Int64>()
        var rng = SystemRandomNumberGenerator()
        let deadlines = (0..<1000).map { _ in Int64.random(in: 0..<500, using: &rng) }
        for d in deadlines { _ = heap.schedule(deadline: d, d) }
        let out = due(&heap, now: .max)
        #expect(out == deadlines.sorted())
    }

    @Test("cancel removes a timer anywhere in the heap, once; a fired one-shot is stale")
    func cancel() {
        var heap = TimerHeap<Int>()
        let timers = (0..<10).map { heap.schedule(deadline: Int64(100 - $0 * 10), $0) }
        let r1 = heap.cancel(timers[4])
        #expect(r1)
        let r2 = heap.cancel(timers[4])
        #expect(!r2)
        let r3 = heap.cancel(timers[9])
        #expect(r3)  // the earliest, at the top
        #expect(heap.count == 8)
        #expect(due(&heap, now: 100) == [8, 7, 6, 5, 3, 2, 1, 0])
        let r4 = heap.cancel(timers[0])
        #expect(!r4)  // fired: stale
    }

    @Test("a reused slot gets a new generation: the old timer value stays stale")
    func staleGeneration() {
        var heap = TimerHeap<Int>()
        let first = heap.schedule(deadline: 5, 1)
        let r5 = heap.cancel(first)
        #expect(r5)
        let second = heap.schedule(deadline: 5, 2)
        #expect(second.index == first.index)
        #expect(second.generation != first.generation)
        let r6 = heap.cancel(first)
        #expect(!r6)
        #expect(heap.count == 1)
        let r7 = heap.cancel(second)
        #expect(r7)
    }

    @Test("a repeating timer moves on by its interval, skips missed ticks, and can be cancelled")
    func repeating() {
        var heap = TimerHeap<Int>()
        let t = heap.schedule(deadline: 10, interval: 10, 7)
        _ = heap.schedule(deadline: 25, 8)
        #expect(due(&heap, now: 10) == [7])
        #expect(heap.earliestDeadline == 20)
        #expect(due(&heap, now: 25) == [7, 8])  // 20 then the one-shot at 25
        // Far behind: one call, then the next deadline is a full interval after now.
        #expect(due(&heap, now: 1000) == [7])
        #expect(heap.earliestDeadline == 1010)
        let r8 = heap.cancel(t)
        #expect(r8)
        #expect(heap.count == 0)
    }

    @Test("removeAll makes every timer stale")
    func removeAll() {
        var heap = TimerHeap<Int>()
        let a = heap.schedule(deadline: 1, 1)
        _ = heap.schedule(deadline: 2, 2)
        heap.removeAll()
        #expect(heap.count == 0)
        let r9 = heap.cancel(a)
        #expect(!r9)
        let r10 = heap.popExpired(now: .max)
        #expect(r10 == nil)
    }
}
