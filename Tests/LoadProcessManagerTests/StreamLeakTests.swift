import Glibc
import LoadProcessManager
import LPMReactor
import LPMWire
import LPMTestSupport
import Testing

@_silgen_name("malloc_trim") private func mallocTrim(_ pad: Int) -> CInt

/// This process's resident set, in bytes (`/proc/self/statm`: second field, in pages), after
/// giving freed heap memory back to the system (what is left is what is still allocated).
func residentBytes() -> Int {
    _ = mallocTrim(0)
    let fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return 0 }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 256)
    let n = read(fd, &buffer, buffer.count)
    let fields = String(decoding: buffer[..<max(0, n)], as: UTF8.self).split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
    return pages * sysconf(Int32(_SC_PAGESIZE))
}

/// The outcome of an upload, for tests that expect it to fail.
func upload(_ s: Supervisor, _ chunks: PatternChunks) async -> Result<WorkerResponse, any Error> {
    do { return .success(try await s.enqueue([], stream: chunks)) } catch { return .failure(error) }
}

/// The pattern's first `good` bytes in chunks of 64 KiB, then `failure` thrown.
struct FailingChunks: AsyncSequence, Sendable {
    typealias Element = [UInt8]
    struct Broken: Error {}
    let good: Int
    struct AsyncIterator: AsyncIteratorProtocol {
        let good: Int
        var sent = 0
        mutating func next() async throws -> [UInt8]? {
            guard sent < good else { throw Broken() }
            let n = Swift.min(64 * 1024, good - sent)
            defer { sent += n }
            return pattern(from: sent, count: n, seed: 4)
        }
    }
    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(good: good) }
}

/// Runs `body` between two snapshots of the process (after it settles): its descriptors must
/// come back to the count before, and its resident memory within `slack` bytes.
func expectNothingLeft(slack: Int = 40 << 20, _ body: () async throws -> Void) async throws {
    await settleChildProcess()
    try await Task.sleep(for: .milliseconds(1))  // opens the runtime's timerfd first
    let fds = openFDCount(), rss = residentBytes()
    // The instruments see what they are to see: a descriptor opened, 16 MiB held.
    let probe = open("/dev/null", O_RDONLY | O_CLOEXEC)
    #expect(openFDCount() == fds + 1)
    close(probe)
    do {
        let held = [UInt8](repeating: 1, count: 16 << 20)
        #expect(residentBytes() - rss >= 15 << 20, "resident memory counts \(held.count) bytes held")
    }
    try await body()
    try await Task.sleep(for: .milliseconds(50))  // the reactor thread closes its descriptors as it ends
    let grown = residentBytes() - rss
    print("resident memory: \(rss >> 10) KiB before, grew by \(grown >> 10) KiB")
    #expect(grown < slack, "resident memory grew by \(grown >> 20) MiB")
    #expect(openFDCount() == fds, "\(fdList())")
    #expect(hasNoChildren())
}

// The measuring runs in exit tests: descriptors and memory are the whole process's.
@Suite("Streams leave nothing behind", .serialized, .timeLimit(.minutes(5)))
struct StreamLeakTests {
    static let streams = 300, size = 1 << 20

    @Test("300 uploads of 1 MiB and 300 response streams of 1 MiB: memory and descriptors come back")
    func manyStreams() async throws {
        let result = await #expect(processExitsWith: .success, observing: [\.standardOutputContent]) {
            try await expectNothingLeft {
                let (up, _) = try await startOnline(testConfig("stream-digest"))
                let want = expectedDigest(Self.size, seed: 7)
                for i in 0..<Self.streams {
                    let r = try await up.enqueue(Array("\(i)".utf8), stream: PatternChunks(total: Self.size, seed: 7))
                    #expect(r.text == want)
                }
                await up.softKill()
                let (down, _) = try await startOnline(testConfig("stream-out"))
                for _ in 0..<Self.streams {
                    let r = try await down.enqueue("\(Self.size):7")
                    var d = StreamDigest()
                    for try await chunk in r.stream! { d.update(chunk) }
                    #expect(d.description == want)
                }
                await down.softKill()
            }
        }
        if let out = result?.standardOutputContent { print(String(decoding: out, as: UTF8.self), terminator: "") }
    }

    @Test("a sequence that throws half-way: the request is answered, the error rethrown, nothing left open")
    func sequenceThrows() async throws {
        await #expect(processExitsWith: .success) {
            try await expectNothingLeft {
                let (s, _) = try await startOnline(testConfig("stream-digest", count: 1))
                for _ in 0..<20 {
                    do {
                        _ = try await s.enqueue([], stream: FailingChunks(good: 3 << 20))
                        Issue.record("the sequence's error was not rethrown")
                    } catch is FailingChunks.Broken {}
                }
                // The worker saw end of file after the good bytes and answered: it serves on.
                let r = try await s.enqueue([], stream: PatternChunks(total: 1000, seed: 1))
                #expect(r.text == expectedDigest(1000, seed: 1))
                await s.softKill()
            }
        }
    }

    @Test("a worker that dies mid-upload fails it, and once none is left uploads are refused; nothing left open")
    func workerDiesMidUpload() async throws {
        await #expect(processExitsWith: .success) {
            try await expectNothingLeft {
                var c = testConfig("stream-exit", count: 1)
                c.restarts = 2
                // The slot stays down once the budget is spent (with the default backoff it would
                // come back after 1 s, which a slow run could reach before the last upload).
                c.afterBudgetSpent = .stop
                let (s, _) = try await startOnline(c)
                // The worker exits on the first chunk: the writes after it fail with EPIPE.
                for _ in 0...c.restarts {
                    let r = await upload(s, PatternChunks(total: 16 << 20, seed: 2))
                    #expect((r.error as? SupervisorError)?.code == .workerExited, "\(r)")
                }
                // The restart budget is spent: refused before dispatch.
                let refused = await upload(s, PatternChunks(total: 16 << 20, seed: 2))
                #expect((refused.error as? SupervisorError)?.code == .noWorkers, "\(refused)")
                await s.hardKill()
            }
        }
    }

    @Test("uploads cut by a hard kill, or refused after it, end; nothing left open")
    func poolStopped() async throws {
        await #expect(processExitsWith: .success) {
            try await expectNothingLeft {
                let (s, _) = try await startOnline(testConfig("never", count: 2))
                // The workers never read: the uploads block on back-pressure until the kill.
                async let a = upload(s, PatternChunks(total: 8 << 20, seed: 1))
                async let b = upload(s, PatternChunks(total: 8 << 20, seed: 2))
                try await Task.sleep(for: .milliseconds(200))
                await s.hardKill()
                for r in await [a, b] { #expect((r.error as? SupervisorError)?.code != nil) }
                let refused = await upload(s, PatternChunks(total: 4 << 20, seed: 3))
                #expect((refused.error as? SupervisorError)?.code == .shutDown)
            }
        }
    }

    @Test("response streams unread, read part-way or cancelled, dropped after the pool stopped: nothing left open")
    func responseStreamsDroppedLate() async throws {
        await #expect(processExitsWith: .success) {
            try await expectNothingLeft {
                let (s, _) = try await startOnline(testConfig("stream-out"))
                var kept: [ResponseStream] = []
                for i in 0..<20 {
                    // Small ones the worker finishes at once; big ones it cannot (nobody reads).
                    let r = try await s.enqueue(i % 2 == 0 ? "1000:1" : "\(4 << 20):1")
                    guard let stream = r.stream else { Issue.record("no stream"); continue }
                    if i % 4 == 1 { var it = stream.makeAsyncIterator(); _ = try await it.next() }
                    if i % 4 == 0 { stream.cancel() }  // a small one: the worker is done with it
                    kept.append(stream)
                }
                try await Task.sleep(for: .milliseconds(100))
                await s.hardKill()
                try await Task.sleep(for: .milliseconds(50))  // the reactor closes
                kept.removeAll()
            }
        }
    }
}
