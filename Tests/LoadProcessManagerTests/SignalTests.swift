import Glibc
import LoadProcessManager
import LPMReactor
import Testing

@Suite("Supervisor and SIGINT", .serialized, .timeLimit(.minutes(1)))
struct SupervisorSignalTests {
    @Test("default SIGINT: workers are killed and reaped, then the process exits with 130")
    func defaultSIGINT() async {
        await #expect(processExitsWith: .exitCode(130)) {
            var c = SupervisorConfiguration(executable: .init(path: sibling("lpm-test-worker")))
            c.count = 2
            let s = try Supervisor(c)
            let log = EventLog(s)
            try await s.start()
            guard await log.wait(isOnline) else { exit(1) }
            kill(getpid(), SIGINT)
            try await Task.sleep(for: .seconds(10))
            exit(2)  // SIGINT did not end the process
        }
    }

    @Test("a SIGINT handler replaces the default; soft kill from it completes and reaps everything")
    func handlerSIGINT() async {
        await #expect(processExitsWith: .exitCode(0)) {
            var c = SupervisorConfiguration(executable: .init(path: sibling("lpm-test-worker"), environment: ["LPM_TEST_MODE": "slow"]))
            c.count = 2
            let s = try Supervisor(c)
            let log = EventLog(s)
            s.onSIGINT { s.softKill { if hasNoChildren() { exit(0) } else { exit(3) } } }
            try await s.start()
            guard await log.wait(isOnline) else { exit(1) }
            async let answer = s.enqueue("in flight during SIGINT")
            try await Task.sleep(for: .milliseconds(20))
            kill(getpid(), SIGINT)
            // The accepted request is still answered before the pool stops.
            guard (try? await answer)?.text == "in flight during SIGINT" else { exit(4) }
            try await Task.sleep(for: .seconds(10))
            exit(2)
        }
    }
}
