import CLoop
import Glibc
import LPMReactor
import Synchronization
import Testing

/// A counter that lives on a reactor thread.
actor ReactorCounter {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    let handle: Reactor.Handle
    var value = 0

    init(_ handle: Reactor.Handle) {
        self.handle = handle
        unownedExecutor = handle.executor.asUnownedSerialExecutor()
    }

    /// Increments and reports whether it ran on the reactor thread.
    func bump() -> Bool {
        value += 1
        return handle.isOnReactorThread
    }
}

@Suite("Reactor: signals, executor, backend fallback", .serialized)
struct ProcessWideTests {
    @Test("a real SIGINT sent to the process while other threads run reaches the reactor", arguments: availableBackends)
    func sigintWithOtherThreads(_ backend: Reactor.Backend) async {
        await #expect(processExitsWith: .exitCode(0)) { [backend] in
            // Threads that do NOT block SIGINT, created before the reactor watches it: the
            // kernel may deliver the signal to any of them.
            for _ in 0..<4 {
                var tid = pthread_t()
                pthread_create(&tid, nil, { _ in
                    while true { usleep(1000) }
                }, nil)
            }
            let reactor = try Reactor(backend: .only(backend))
            var got = 0
            try reactor.watchSignal(SIGINT) { signal in got = Int(signal) }
            for _ in 0..<20 {
                kill(getpid(), SIGINT)
                let deadline = ContinuousClock.now + .seconds(5)
                let before = got
                got = 0
                while got == 0 && ContinuousClock.now < deadline { try reactor.runOnce(timeout: .milliseconds(10)) }
                if got != Int(SIGINT) { exit(1) }
                got = before
            }
            exit(0)
        }
    }

    @Test("an actor runs on the reactor executor; assumeIsolated works from a reactor callback")
    func actorOnReactor() async throws {
        let thread = try ReactorThread()
        let counter = ReactorCounter(thread.handle)
        for _ in 0..<1000 {
            let onThread = await counter.bump()
            #expect(onThread)
        }
        #expect(await counter.value == 1000)
        final class Sem: @unchecked Sendable { var s = sem_t(); init() { sem_init(&s, 0, 0) } }
        let sem = Sem()
        let seen = Atomic<Int>(0)
        thread.handle.execute { _ in
            counter.assumeIsolated { c in seen.store(c.value, ordering: .relaxed) }
            sem_post(&sem.s)
        }
        while sem_wait(&sem.s) != 0 {}
        #expect(seen.load(ordering: .relaxed) == 1000)
        thread.stop()
    }

    @Test("io_uring refused by the kernel: automatic choice falls back to epoll")
    func fallbackToEpoll() throws {
        let path = "/proc/sys/kernel/io_uring_disabled"
        guard let f = fopen(path, "r+") else {
            print("note: cannot write \(path) (not root?): fallback test skipped")
            return
        }
        var old = [CChar](repeating: 0, count: 8)
        fgets(&old, 8, f)
        fclose(f)
        func set(_ v: String) -> Bool {
            guard let f = fopen(path, "w") else { return false }
            defer { fclose(f) }
            return fputs(v, f) >= 0
        }
        guard set("2") else { print("note: \(path) is read-only here: fallback test skipped"); return }
        let previous = String(decoding: old.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer { _ = set(previous.trimmingCharacters()) }
        do {
            _ = try Reactor(backend: .only(.uring))
            Issue.record("io_uring was not refused")
        } catch {
            #expect(error.code == .backendUnavailable)
            #expect(error.underlying?.errno == .notPermitted)
        }
        let r = try Reactor()
        #expect(r.backendKind == .epoll)
        r.close()
    }
}

extension String {
    func trimmingCharacters() -> String { String(filter { !$0.isWhitespace }) }
}
