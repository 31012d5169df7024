import CLoop

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
    /// `@unchecked Sendable`: `result` is written by the new thread before it posts `ready` and
    /// read only after a wait on `ready`; the semaphores are thread-safe.
    final class State: @unchecked Sendable {
        var result: Result<(Reactor.Handle, Reactor.Backend), ReactorError> = .failure(ReactorError(.closed, "not started"))
        var ready = sem_t()
        var finished = sem_t()
        let choice: Reactor.BackendChoice
        init(_ c: Reactor.BackendChoice) {
            choice = c
            sem_init(&ready, 0, 0)
            sem_init(&finished, 0, 0)
        }
        deinit {
            sem_destroy(&ready)
            sem_destroy(&finished)
        }
    }

    /// Starts a thread and a reactor on it.
    /// - Throws: ``ReactorError`` if the reactor cannot be created, or `.systemCall` if the
    ///   thread cannot.
    public init(backend choice: Reactor.BackendChoice = .automatic) throws(ReactorError) {
        let state = State(choice)
        let box = Unmanaged.passRetained(state)
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { raw in
            let state = Unmanaged<State>.fromOpaque(raw!).takeRetainedValue()
            pthread_detach(pthread_self())
            let reactor: Reactor
            do throws(ReactorError) {
                reactor = try Reactor(backend: state.choice)
            } catch {
                state.result = .failure(error)
                sem_post(&state.ready)
                return nil
            }
            state.result = .success((reactor.handle, reactor.backendKind))
            sem_post(&state.ready)
            try? reactor.run()
            reactor.close()
            sem_post(&state.finished)
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            throw ReactorError(.systemCall, "pthread_create failed", underlying: SyscallError("pthread_create", Errno(rawValue: rc)))
        }
        while sem_wait(&state.ready) != 0 {}
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
        while sem_wait(&state.finished) != 0 {}
        sem_post(&state.finished)  // a later stop() returns at once
    }
}
