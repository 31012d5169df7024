import Glibc
import LoadProcessManager
import LoadProcessManagerServiceLifecycle
import Logging
import ServiceLifecycle
import Testing

@Suite("ServiceLifecycle", .serialized, .timeLimit(.minutes(2)))
struct ServiceTests {
    @Test("a ServiceGroup runs the pool; a real SIGTERM drains it (the request in flight is answered) and run() returns")
    func sigtermDrains() async {
        await #expect(processExitsWith: .success) {
            var c = testConfig("slow", count: 2, env: ["LPM_TEST_DELAY_MS": "300"])
            c.shutdownSignals = [SIGINT, SIGTERM]  // the service turns them off: the group owns them
            let service = try SupervisorService(c)
            let group = ServiceGroup(configuration: .init(
                services: [service], gracefulShutdownSignals: [.sigterm],
                logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })))
            let log = EventLog(service.supervisor)
            async let ran: Void = group.run()
            #expect(await log.wait(isOnline))
            async let answer = outcome(service.supervisor, "in flight")
            // Admitted before the signal (answered already, on a slow run, is fine too).
            #expect(await eventually { await dispatched(service.supervisor) == 1 })
            kill(getpid(), SIGTERM)
            #expect((try? await answer.get())?.text == "in flight", "drained, not killed")
            try await ran
            #expect(await service.supervisor.status().isShutDown)
            #expect(log.count { if case .signalReceived = $0 { return true }; return false } == 0, "the pool watched no signal")
            #expect(hasNoChildren())
        }
    }

    @Test("cancelling the group hard-kills the pool: a request a worker never answers fails with shutDown")
    func cancellationHardKills() async throws {
        let service = try SupervisorService(testConfig("never", count: 1))
        let group = ServiceGroup(configuration: .init(
            services: [service], logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })))
        let log = EventLog(service.supervisor)
        let running = Task { try await group.run() }
        #expect(await log.wait(isOnline))
        async let answer = outcome(service.supervisor, "never answered")
        #expect(await eventually { await service.supervisor.status().pending == 1 })
        running.cancel()
        #expect(await answer.error?.code == .shutDown)
        _ = try? await running.value
        #expect(await service.supervisor.status().isShutDown)
    }
}
