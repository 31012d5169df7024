/// A first-in first-out ring with O(1) push at either end and pop at the front. Its storage is
/// kept when it empties (up to a bound), so a steady flow allocates nothing. Free slots hold
/// `filler` (so that nothing popped stays referenced), and an element costs its own size.
struct Ring<Element> {
    private let filler: Element
    private var storage: [Element]
    private var head = 0
    private(set) var count = 0

    init(filler: Element) {
        self.filler = filler
        storage = Array(repeating: filler, count: 16)
    }

    var isEmpty: Bool { count == 0 }
    var first: Element? { count > 0 ? storage[head] : nil }

    private var mask: Int { storage.count - 1 }

    /// The element `offset` places from the front (`offset < count`).
    subscript(offset: Int) -> Element {
        precondition(offset >= 0 && offset < count, "ring offset \(offset) out of 0..<\(count)")
        return storage[(head + offset) & mask]
    }

    private mutating func grow() {
        var bigger = [Element](repeating: filler, count: storage.count * 2)
        for i in 0..<count { bigger[i] = storage[(head + i) & mask] }
        storage = bigger
        head = 0
    }

    mutating func pushBack(_ x: Element) {
        if count == storage.count { grow() }
        storage[(head + count) & mask] = x
        count += 1
    }

    mutating func pushFront(_ x: Element) {
        if count == storage.count { grow() }
        head = (head - 1) & mask
        storage[head] = x
        count += 1
    }

    mutating func popFront() -> Element? {
        guard count > 0 else { return nil }
        let x = storage[head]
        storage[head] = filler
        head = (head + 1) & mask
        count -= 1
        return x
    }

    /// Empties the ring; storage grown past 1,024 entries is given back.
    mutating func removeAll() {
        if storage.count > 1024 {
            storage = Array(repeating: filler, count: 16)
        } else {
            for i in 0..<count { storage[(head + i) & mask] = filler }
        }
        head = 0
        count = 0
    }
}

extension Ring: Sendable where Element: Sendable {}
