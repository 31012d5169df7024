import LoadProcessManager
import ServiceLifecycle

/// A pool run as a swift-service-lifecycle `Service`, for a server whose `ServiceGroup` owns the
/// process's lifecycle.
///
/// ```swift
/// let pool = try SupervisorService(SupervisorConfiguration(workerPath: "/path/to/worker", count: 4))
/// let group = ServiceGroup(configuration: .init(services: [pool, httpServer],
///                                               gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
/// try await group.run()
/// // elsewhere: try await pool.supervisor.enqueue(payload)
/// ```
///
/// - ``run()`` starts the pool and returns once it has stopped.
/// - Graceful shutdown (the group's signals, or another service ending) soft-kills the pool: it
///   drains within ``/LoadProcessManager/SupervisorConfiguration/softKillTimeout``.
/// - Cancellation hard-kills it.
/// - The supervisor's own signal handling is off (``/LoadProcessManager/SupervisorConfiguration/shutdownSignals`` is
///   emptied): the group owns the signals.
public struct SupervisorService: Service, Sendable {
    /// The pool: enqueue requests through it.
    public let supervisor: Supervisor

    /// Creates the pool (not started: ``run()`` starts it) on a reactor thread of its own.
    /// - Throws: the reactor's error if its thread cannot be set up.
    public init(_ configuration: SupervisorConfiguration) throws {
        var c = configuration
        c.shutdownSignals = []
        supervisor = try Supervisor(c)
    }

    /// Starts the pool and returns once it has stopped (drained by a graceful shutdown, or
    /// hard-killed by cancellation).
    /// - Throws: ``/LoadProcessManager/SupervisorError`` when the pool cannot start.
    public func run() async throws {
        let supervisor = self.supervisor
        // Subscribed before the start: the sequence ends when the pool stops, whenever that is.
        let events = supervisor.events(bufferingPolicy: .bufferingNewest(1))
        try await supervisor.start()
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                for await _ in events {}
            } onGracefulShutdown: {
                supervisor.softKill(completion: {})
            }
        } onCancel: {
            supervisor.hardKill(completion: {})
        }
    }
}
