/// A ring buffer of request indices: FIFO with O(1) push at either end.
struct IndexDeque {
    private var storage: [UInt32] = Array(repeating: 0, count: 16)
    private var head = 0
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }

    private mutating func grow() {
        var bigger = [UInt32](repeating: 0, count: storage.count * 2)
        for i in 0..<count { bigger[i] = storage[(head + i) & (storage.count - 1)] }
        storage = bigger
        head = 0
    }

    mutating func pushBack(_ x: UInt32) {
        if count == storage.count { grow() }
        storage[(head + count) & (storage.count - 1)] = x
        count += 1
    }

    mutating func pushFront(_ x: UInt32) {
        if count == storage.count { grow() }
        head = (head - 1) & (storage.count - 1)
        storage[head] = x
        count += 1
    }

    var first: UInt32? { count > 0 ? storage[head] : nil }

    mutating func popFront() -> UInt32? {
        guard count > 0 else { return nil }
        let x = storage[head]
        head = (head + 1) & (storage.count - 1)
        count -= 1
        return x
    }

    mutating func removeAll() {
        head = 0
        count = 0
        if storage.count > 1024 { storage = Array(repeating: 0, count: 16) }
    }
}
