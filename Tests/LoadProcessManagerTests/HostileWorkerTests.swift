import Glibc
import LoadProcessManager
import LPMTestSupport
import Testing

@Suite("Hostile workers", .serialized, .timeLimit(.minutes(2)))
struct HostileWorkerTests {
    @Test("a worker that floods pings and never reads, or floods descriptors, is killed; the supervisor's memory and descriptors stay flat",
          arguments: ["flood-pings", "fd-flood"])
    func floods(_ mode: String) async {
        await #expect(processExitsWith: .success) { [mode] in
            await settleChildProcess()
            try await Task.sleep(for: .milliseconds(1))
            let fds = openFDCount()
            let rss = residentBytes()
            var c = testConfig(mode, count: 1)
            c.afterBudgetSpent = .stop
            c.restarts = 0  // the hostile worker is not replaced
            let (s, log) = try await startOnline(c)
            s.enqueue([1]) { _ in }  // sets it off
            #expect(await log.wait(isViolation), "the worker was stopped")
            let reasons = log.all.compactMap { e -> String? in if case .protocolViolation(_, _, let r) = e { return r }; return nil }
            #expect(!reasons.isEmpty, "\(reasons)")
            await s.hardKill()
            #expect(hasNoChildren())
            try await Task.sleep(for: .milliseconds(50))
            #expect(openFDCount() == fds, "\(fdList())")
            let grown = residentBytes() - rss
            #expect(grown < 64 << 20, "the supervisor grew by \(grown) bytes")
        }
    }
}
