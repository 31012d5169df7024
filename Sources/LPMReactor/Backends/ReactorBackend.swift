import CLoop

/// One readiness event as a backend reports it: the registration's token and what is ready.
struct BackendEvent {
    var token: UInt64
    var readiness: Reactor.Readiness
}

/// What the reactor needs from a kernel event interface. One instance per reactor; used only on
/// the reactor thread.
///
/// Tokens are opaque 64-bit values chosen by the reactor; each registration has its own, and a
/// `modify` gives it a new one, so an event carrying an old token can be dropped as stale.
protocol ReactorBackend: AnyObject {
    /// Which backend this is.
    var kind: Reactor.Backend { get }

    /// Starts watching `fd` for `interest`. Edge-triggered when `edge`, else level-triggered.
    func register(fd: CInt, token: UInt64, interest: Reactor.Interest, edge: Bool) throws(SyscallError)

    /// Changes what `fd` is watched for; events from now on carry `newToken`.
    func modify(fd: CInt, oldToken: UInt64, newToken: UInt64, interest: Reactor.Interest, edge: Bool) throws(SyscallError)

    /// Stops watching `fd`. Tolerates a descriptor that was already closed.
    func deregister(fd: CInt, token: UInt64) throws(SyscallError)

    /// Submits pending changes, waits up to `timeoutNanoseconds` (`nil`: no limit, `0`: do not
    /// block) and appends the ready events to `events`. A wait interrupted by a signal returns
    /// with no events.
    func wait(timeoutNanoseconds: Int64?, into events: inout [BackendEvent]) throws(SyscallError)

    /// Releases the kernel object. Called once.
    func close()
}
