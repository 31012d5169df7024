import Glibc
import LoadProcessManager
import LPMReactor
import Testing

@Suite("Supervisor and shutdown signals", .serialized, .timeLimit(.minutes(1)))
struct SupervisorSignalTests {
    @Test("default SIGINT or SIGTERM: the pool drains (the request in flight is answered), workers are reaped, the process lives on",
          arguments: [SIGINT, SIGTERM])
    func defaultDrain(_ signal: CInt) async {
        await #expect(processExitsWith: .success) { [signal] in
            var c = SupervisorConfiguration(executable: .init(path: sibling("lpm-test-worker"), environment: ["LPM_TEST_MODE": "slow"]))
            c.count = 2
            let (s, log) = try await startOnline(c)
            async let answer = s.enqueue("in flight during the signal")
            // Admitted before the signal (answered already, on a slow run, is fine too).
            #expect(await eventually { await dispatched(s) == 1 })
            kill(getpid(), signal)
            // The accepted request is still answered before the pool stops.
            #expect((try? await answer)?.text == "in flight during the signal")
            #expect(await log.wait { if case .signalReceived(let n) = $0 { return n == signal }; return false })
            #expect(await log.wait(for: 2) { if case .workerExited(_, _, _, let expected) = $0 { return expected }; return false })
            let status = await s.status()
            #expect(status.isShutDown)
            #expect(hasNoChildren())
            do { _ = try await s.enqueue("after"); Issue.record("accepted after the drain") } catch let error as SupervisorError {
                #expect(error.code == .shutDown)
            }
        }
    }

    @Test("a second SIGTERM during the drain hard-kills: the request a worker never answers fails with shutDown")
    func secondSignalEscalates() async {
        await #expect(processExitsWith: .success) {
            var c = SupervisorConfiguration(executable: .init(path: sibling("lpm-test-worker"), environment: ["LPM_TEST_MODE": "never"]))
            c.count = 1
            c.softKillTimeout = nil  // only the second signal can end the drain
            let (s, log) = try await startOnline(c)
            async let answer = outcome(s, "never answered")
            #expect(await eventually { await s.status().pending == 1 })
            kill(getpid(), SIGTERM)
            #expect(await log.wait { if case .signalReceived = $0 { return true }; return false })
            #expect(await eventually { await s.status().isShutDown })
            let draining = await s.status()
            #expect(draining.isShutDown && draining.pending == 1, "still draining: \(draining)")
            kill(getpid(), SIGTERM)
            #expect(await answer.error?.code == .shutDown)
            #expect(await log.wait(isExit))
            #expect(hasNoChildren())
        }
    }

    @Test("the soft kill's deadline hard-kills a worker that never finishes")
    func softKillDeadline() async {
        await #expect(processExitsWith: .success) {
            var c = SupervisorConfiguration(executable: .init(path: sibling("lpm-test-worker"), environment: ["LPM_TEST_MODE": "never"]))
            c.count = 1
            c.shutdownSignals = []
            c.softKillTimeout = .milliseconds(200)
            let (s, _) = try await startOnline(c)
            async let answer = outcome(s, "never answered")
            try await Task.sleep(for: .milliseconds(20))
            await s.softKill()
            #expect(await answer.error?.code == .shutDown)
            #expect(hasNoChildren())
        }
    }

    @Test("a SIGINT handler replaces the default; soft kill from it completes and reaps everything")
    func handlerSIGINT() async {
        await #expect(processExitsWith: .exitCode(0)) {
            var c = SupervisorConfiguration(executable: .init(path: sibling("lpm-test-worker"), environment: ["LPM_TEST_MODE": "slow"]))
            c.count = 2
            let s = try Supervisor(c)
            let log = EventLog(s)
            s.onSIGINT { s.softKill(completion: { if hasNoChildren() { exit(0) } else { exit(3) } }) }
            try await s.start()
            guard await log.wait(isOnline) else { exit(1) }
            async let answer = s.enqueue("in flight during SIGINT")
            // Admitted before the signal (answered already, on a slow run, is fine too).
            guard await eventually({ await dispatched(s) == 1 }) else { exit(5) }
            kill(getpid(), SIGINT)
            // The accepted request is still answered before the pool stops.
            guard (try? await answer)?.text == "in flight during SIGINT" else { exit(4) }
            try await Task.sleep(for: .seconds(10))
            exit(2)
        }
    }

    @Test("with no shutdown signals the supervisor leaves them alone: SIGTERM ends the process as usual")
    func signalsOff() async {
        await #expect(processExitsWith: .signal(SIGTERM)) {
            var c = SupervisorConfiguration(executable: .init(path: sibling("lpm-test-worker")))
            c.shutdownSignals = []
            let (s, _) = try await startOnline(c)
            kill(getpid(), SIGTERM)
            try await Task.sleep(for: .seconds(10))
            withExtendedLifetime(s) {}  // the pool runs while the signal arrives
            exit(2)
        }
    }
}

/// A request's answer as a value (typed, where a closure would lose the error's type).
func outcome(_ s: Supervisor, _ text: String) async -> Result<WorkerResponse, SupervisorError> {
    do { return .success(try await s.enqueue(text)) } catch { return .failure(error) }
}

/// Whether `pid` is gone or a zombie (dead, waiting for a reaper).
func isDeadOrZombie(_ pid: pid_t) -> Bool {
    guard let f = fopen("/proc/\(pid)/stat", "r") else { return true }
    defer { fclose(f) }
    var buf = [CChar](repeating: 0, count: 512)
    guard fgets(&buf, 512, f) != nil else { return true }
    let text = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    guard let close = text.lastIndex(of: ")") else { return true }
    let state = text[text.index(close, offsetBy: 2)]
    return state == "Z" || state == "X"
}

@Suite("Workers never outlive their supervisor", .serialized, .timeLimit(.minutes(1)))
struct OrphanTests {
    @Test("a supervisor process that dies abruptly takes its workers with it")
    func workersDieWithParent() async throws {
        let path = "/tmp/lpm-orphan-test-\(getpid())"
        defer { unlink(path) }
        await #expect(processExitsWith: .exitCode(0)) {
            var c = SupervisorConfiguration(executable: .init(path: sibling("lpm-test-worker")))
            c.count = 2
            c.shutdownSignals = []
            let s = try Supervisor(c)
            let log = EventLog(s)
            try await s.start()
            guard await log.wait(isOnline) else { _exit(1) }
            let pids = await s.health().map { String($0.pid) }.joined(separator: " ")
            let file = fopen("/tmp/lpm-orphan-test-\(getppid())", "w")
            fputs(pids, file)
            fclose(file)
            _exit(0)  // no kill, no cleanup: the workers must still go
        }
        guard let f = fopen(path, "r") else { Issue.record("the child wrote no pids"); return }
        var buf = [CChar](repeating: 0, count: 256)
        fgets(&buf, 256, f)
        fclose(f)
        let pids = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            .split(separator: " ").compactMap { pid_t($0) }
        #expect(pids.count == 2)
        let deadline = ContinuousClock.now + .seconds(10)
        while !pids.allSatisfy(isDeadOrZombie) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(pids.allSatisfy(isDeadOrZombie), "workers \(pids) outlived their supervisor")
    }
}

@Suite("Exit after kill", .serialized, .timeLimit(.minutes(1)))
struct ExitAfterKillTests {
    @Test("exitStatusAfterKill ends the process once the soft kill completes")
    func exitAfterSoftKill() async {
        await #expect(processExitsWith: .exitCode(7)) {
            var c = SupervisorConfiguration(executable: .init(path: sibling("lpm-test-worker")))
            c.shutdownSignals = []
            c.exitStatusAfterKill = 7
            let s = try Supervisor(c)
            try await s.start()
            _ = try await s.enqueue("x")
            await s.softKill()
            try await Task.sleep(for: .seconds(10))
            exit(2)
        }
    }
}
