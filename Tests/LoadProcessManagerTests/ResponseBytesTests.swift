import Glibc
import LoadProcessManager
import Synchronization
import Testing

/// The bytes request `i` of the kept-answers tests sends (and the echo worker answers): a length
/// and a pattern of its own; every 50th is larger than a ring's record limit, or the arena's share.
private func payload(_ i: Int) -> [UInt8] {
    let n = i % 50 == 0 ? 40_000 : 1 + (i &* 7919) % 2000
    return (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i) }
}

@Suite("Answer bytes: views of the receive buffer", .timeLimit(.minutes(2)))
struct ResponseBytesTests {
    @Test("answers kept while thousands more arrive keep their bytes (async callers)",
          arguments: [false, true])
    func keptAnswersAsync(rings: Bool) async throws {
        var config = testConfig("echo", count: 2)
        if rings { config.transport = .sharedMemory(ringBytes: 64 * 1024) }
        let (s, _) = try await startOnline(config)
        let n = 3000
        let kept = await withTaskGroup(of: [(Int, WorkerResponse)].self) { group in
            for t in 0..<32 {
                group.addTask {
                    var mine: [(Int, WorkerResponse)] = []
                    for i in stride(from: t, to: n, by: 32) {
                        if let r = try? await s.enqueue(payload(i)) { mine.append((i, r)) }
                    }
                    return mine
                }
            }
            var all: [(Int, WorkerResponse)] = []
            for await part in group { all += part }
            return all
        }
        #expect(kept.count == n)
        let wrong = kept.filter { i, r in !r.bytes.elementsEqual(payload(i)) }.map(\.0)
        #expect(wrong.isEmpty, "answers changed while kept: \(wrong.prefix(20))")
        await s.softKill()
    }

    @Test("answers kept from completion handlers keep their bytes", arguments: [false, true])
    func keptAnswersHandler(rings: Bool) async throws {
        var config = testConfig("echo", count: 2)
        if rings { config.transport = .sharedMemory(ringBytes: 64 * 1024) }
        let (s, _) = try await startOnline(config)
        let n = 3000
        let kept = Mutex<[(Int, WorkerResponse)]>([])
        await withUnsafeContinuation { (done: UnsafeContinuation<Void, Never>) in
            let left = Atomic(n)
            for i in 0..<n {
                s.enqueue(payload(i)) { result in
                    if case .success(let r) = result { kept.withLock { $0.append((i, r)) } }
                    if left.subtract(1, ordering: .relaxed).newValue == 0 { done.resume() }
                }
            }
        }
        let all = kept.withLock { $0 }
        #expect(all.count == n)
        let wrong = all.filter { i, r in !r.bytes.elementsEqual(payload(i)) }.map(\.0)
        #expect(wrong.isEmpty, "answers changed while kept: \(wrong.prefix(20))")
        await s.softKill()
    }

    @Test("bytes, data and text agree; an empty answer has no bytes")
    func views() async throws {
        let (s, _) = try await startOnline(testConfig("echo", count: 1))
        let r = try await s.enqueue("héllo")
        #expect(Array(r.bytes) == Array("héllo".utf8) && r.data == Array("héllo".utf8) && r.text == "héllo")
        #expect(r.bytes.count == 6 && r.bytes.startIndex == 0 && r.bytes[1] == 0xC3)
        #expect(r.bytes.withUnsafeBytes { Array($0) } == r.data)
        let empty = try await s.enqueue([])
        #expect(empty.bytes.isEmpty && empty.data == [] && empty.text == "")
        #expect(empty.bytes.withUnsafeBytes { $0.count } == 0)
        await s.softKill()
    }

    @Test("equality and hashing are by content, wherever the bytes are")
    func valueSemantics() {
        let a: ResponseBytes = [1, 2, 3]
        let b = ResponseBytes([1, 2, 3] as [UInt8])
        let c = ResponseBytes([1, 2, 4] as [UInt8])
        #expect(a == b && a != c && a != [1, 2] && ResponseBytes() == [])
        #expect(Set([a, b, c]).count == 2)
        #expect(a.description == "3 bytes" && Array(a.reversed()) == [3, 2, 1])
        #expect(a.withContiguousStorageIfAvailable { Array($0) } == [1, 2, 3])
    }

    @Test("an index outside the bytes stops the process")
    func outOfRange() async {
        await #expect(processExitsWith: .failure) {
            let a: ResponseBytes = [1, 2, 3]
            _ = a[3]
        }
    }
}
