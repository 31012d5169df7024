/// A thread that runs one reactor until stopped.
///
/// The thread creates the reactor (so it owns it), runs it, and closes it when stopped. Use
/// ``handle`` to submit work from anywhere. The thread is detached: it ends on its own once
/// stopped, whether or not anyone waits for it with ``stop()``.
public final class ReactorThread: Sendable {
    /// The reactor's handle.
    public let handle: Reactor.Handle
    /// The backend the reactor runs on.
    public let backend: Reactor.Backend
    private let state: State

    /// Shared by the creating thread and the reactor thread.
    ///
    /// `@unchecked Sendable`: `result` is written by the new thread before it posts `ready` and
    /// read only after a wait on `ready` (the semaphore orders the two); `ready` and `finished`
    /// are ``Semaphore``s, thread-safe and at addresses of their own that stay valid while
    /// either thread holds this object; `choice` is immutable.
    final class State: @unchecked Sendable {
        var result: Result<(Reactor.Handle, Reactor.Backend), ReactorError> = .failure(ReactorError(.closed, "not started"))
        let ready = Semaphore()
        let finished = Semaphore()
        let choice: Reactor.BackendChoice
        init(_ c: Reactor.BackendChoice) { choice = c }
    }

    /// Starts a thread and a reactor on it.
    /// - Throws: ``ReactorError`` if the reactor cannot be created, or `.systemCall` if the
    ///   thread cannot.
    public init(backend choice: Reactor.BackendChoice = .automatic) throws(ReactorError) {
        let state = State(choice)
        do {
            try Sys.startDetachedThread {
                let reactor: Reactor
                do throws(ReactorError) {
                    reactor = try Reactor(backend: state.choice)
                } catch {
                    state.result = .failure(error)
                    state.ready.post()
                    return
                }
                state.result = .success((reactor.handle, reactor.backendKind))
                state.ready.post()
                do {
                    try reactor.run()
                } catch {
                    // Waiting failed (not EINTR: that is retried): the loop cannot go on. Nobody
                    // is left to report to but the log; the reactor is closed below, so jobs
                    // submitted later are refused (`execute` returns false) rather than lost.
                    print("ReactorThread: the reactor stopped: \(error)")
                }
                reactor.close()
                state.finished.post()
            }
        } catch {
            throw ReactorError(.systemCall, "pthread_create failed", underlying: error)
        }
        state.ready.wait()
        switch state.result {
        case .success(let (h, b)):
            handle = h
            backend = b
            self.state = state
        case .failure(let e):
            throw e
        }
    }

    /// Stops the reactor and waits until its thread has closed it. Call once, from another
    /// thread than the reactor's. (``Reactor/Handle/stop()`` stops it without waiting.)
    public func stop() {
        precondition(!handle.isOnReactorThread, "ReactorThread.stop() called on its own thread")
        handle.stop()
        state.finished.wait()
        state.finished.post()  // a later stop() returns at once
    }
}
