import LoadProcessManager

/// The pool stopped, or lost every worker, before it was ready.
public struct PoolNotOnline: Error, CustomStringConvertible {
    public let description: String
}

/// Returns once every worker of the pool has said it is ready (the pool's `online` event), so
/// that the server does not accept connections it cannot serve. Call it before serving; the
/// pool may be started before or after the call.
/// - Throws: ``PoolNotOnline`` when the pool stops, or has no worker left, first.
public func waitUntilOnline(_ supervisor: Supervisor) async throws {
    // Subscribed before looking at the status: `online` cannot fall between the two.
    let events = supervisor.events()
    let status = await supervisor.status()
    if status.workers > 0 && status.ready == status.workers { return }
    for await event in events {
        switch event {
        case .online: return
        case .noWorkersLeft: throw PoolNotOnline(description: "no worker of the pool could start")
        default: continue
        }
    }
    throw PoolNotOnline(description: "the pool stopped before its workers were ready")
}
