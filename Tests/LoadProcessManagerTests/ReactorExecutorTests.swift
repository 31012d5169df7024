import Glibc
import LoadProcessManager
import Testing

/// The reactor thread's id, read from a job the supervisor runs there (an event handler).
private func reactorThread(_ s: Supervisor) async -> pthread_t {
    await withUnsafeContinuation { c in
        s.health { _ in c.resume(returning: pthread_self()) }
    }
}

/// An actor that lives on a supervisor's reactor thread (its executor is the reactor's).
private actor OnReactor {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    let supervisor: Supervisor

    init(_ supervisor: Supervisor) {
        self.supervisor = supervisor
        unownedExecutor = supervisor.reactor.executor.asUnownedSerialExecutor()
    }

    func roundTrips(_ n: Int, loopThread: pthread_t) async throws -> [String] {
        var out: [String] = []
        for i in 0..<n {
            out.append(try await supervisor.enqueue(Array("actor \(i)".utf8)).text)
            assertIsolated("resumed on the actor")
            #expect(pthread_self() == loopThread, "on the reactor thread")
        }
        return out
    }

    func request(_ text: String) async -> Result<WorkerResponse, SupervisorError> {
        await outcome(supervisor, text)
    }
}

@Suite("Async callers on the supervisor's executor", .timeLimit(.minutes(2)))
struct ReactorExecutorTests {
    @Test("a task that prefers the supervisor's executor runs on the reactor thread, and its requests are answered there")
    func roundTripsOnTheReactorThread() async throws {
        let (s, _) = try await startOnline(testConfig("echo", count: 2))
        let loopThread = await reactorThread(s)
        let seen = try await withTaskExecutorPreference(s.executor) {
            var threads = Set<UInt>()
            for k in 0..<200 {
                let r = try await s.enqueue(Array("req \(k)".utf8))
                #expect(r.text == "req \(k)")
                threads.insert(UInt(pthread_self()))
            }
            return threads
        }
        #expect(seen == [UInt(loopThread)], "every resumption on the reactor thread")
        await s.softKill()
    }

    @Test("many concurrent tasks on the executor: each request answered once, errors typed")
    func concurrentOnExecutor() async throws {
        let (s, _) = try await startOnline(testConfig("echo", count: 2))
        let answered = try await withThrowingTaskGroup(of: Int.self) { group in
            for t in 0..<32 {
                group.addTask(executorPreference: s.executor) {
                    var right = 0
                    for k in 0..<50 where try await s.enqueue(Array("\(t)/\(k)".utf8)).text == "\(t)/\(k)" {
                        right += 1
                    }
                    return right
                }
            }
            return try await group.reduce(0, +)
        }
        #expect(answered == 32 * 50)
        await s.hardKill()
        // After the pool stopped, a request from the executor's thread is refused, not lost.
        let refused = await withTaskExecutorPreference(s.executor) { await outcome(s, "late") }
        #expect(refused.error?.code == .shutDown, "\(refused)")
    }

    @Test("cancelling a task on the executor: its in-flight request is cancelled at once")
    func cancelOnExecutor() async throws {
        let (s, _) = try await startOnline(testConfig("never", count: 1))
        let task = Task(executorPreference: s.executor) { await outcome(s, "in flight") }
        #expect(await eventually { await s.status().pending == 1 })
        task.cancel()
        #expect((await task.value).error?.code == .cancelled)
        #expect(await s.status().pending == 0)
        await s.hardKill()
    }

    @Test("from an actor, enqueue runs and resumes on it (nonisolated(nonsending)); a cancelled caller still gets cancelled")
    func fromTheMainActor() async throws {
        let (s, _) = try await startOnline(testConfig("echo", count: 1))
        let texts = try await Task { @MainActor in
            var out: [String] = []
            for i in 0..<20 {
                out.append(try await s.enqueue(Array("main \(i)".utf8)).text)
                MainActor.assertIsolated("resumed on the main actor")
            }
            return out
        }.value
        #expect(texts == (0..<20).map { "main \($0)" })
        let (never, _) = try await startOnline(testConfig("never", count: 1))
        let task = Task { @MainActor in await outcome(never, "in flight") }
        #expect(await eventually { await never.status().pending == 1 })
        task.cancel()
        #expect((await task.value).error?.code == .cancelled)
        await never.hardKill()
        await s.softKill()
    }

    @Test("from an actor on the reactor's serial executor: requests admitted and answered there, and cancelled")
    func fromAnActorOnTheReactor() async throws {
        let (s, _) = try await startOnline(testConfig("echo", count: 2))
        let loopThread = await reactorThread(s)
        let caller = OnReactor(s)
        #expect(try await caller.roundTrips(50, loopThread: loopThread) == (0..<50).map { "actor \($0)" })
        await s.softKill()
        let (never, _) = try await startOnline(testConfig("never", count: 1))
        let stuck = OnReactor(never)
        let task = Task { await stuck.request("in flight") }
        #expect(await eventually { await never.status().pending == 1 })
        task.cancel()
        #expect((await task.value).error?.code == .cancelled)
        #expect(await never.status().pending == 0)
        await never.hardKill()
    }
}
