import CLoop

/// A thread that runs one reactor until stopped.
///
/// The thread creates the reactor (so it owns it), runs it, and closes it when ``stop()`` is
/// called. Use ``handle`` to submit work from anywhere.
public final class ReactorThread: Sendable {
    /// The reactor's handle.
    public let handle: Reactor.Handle
    private let thread: pthread_t
    /// The backend the reactor runs on.
    public let backend: Reactor.Backend

    /// Starts a thread and a reactor on it.
    /// - Parameters:
    ///   - choice: the backend choice.
    ///   - setUp: runs first on the new thread with the reactor (register things there).
    /// - Throws: ``ReactorError`` if the reactor cannot be created, or `.systemCall` if the
    ///   thread cannot.
    public init(backend choice: Reactor.BackendChoice = .automatic) throws(ReactorError) {
        final class Start: @unchecked Sendable {
            // @unchecked: written by the new thread before it posts `ready`, read by the creating
            // thread only after waiting on `ready` (a happens-before edge through the semaphore).
            var result: Result<(Reactor.Handle, Reactor.Backend), ReactorError> = .failure(ReactorError(.closed, "not started"))
            var ready = sem_t()
            let choice: Reactor.BackendChoice
            init(_ c: Reactor.BackendChoice) { choice = c; sem_init(&ready, 0, 0) }
        }
        let start = Start(choice)
        let box = Unmanaged.passRetained(start)
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { raw in
            let start = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
            let reactor: Reactor
            do throws(ReactorError) {
                reactor = try Reactor(backend: start.choice)
            } catch {
                start.result = .failure(error)
                sem_post(&start.ready)
                return nil
            }
            start.result = .success((reactor.handle, reactor.backendKind))
            sem_post(&start.ready)
            try? reactor.run()
            reactor.close()
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            throw ReactorError(.systemCall, "pthread_create failed", underlying: SyscallError("pthread_create", Errno(rawValue: rc)))
        }
        while sem_wait(&start.ready) != 0 {}
        sem_destroy(&start.ready)
        switch start.result {
        case .success(let (h, b)):
            handle = h
            backend = b
            thread = tid
        case .failure(let e):
            pthread_join(tid, nil)
            throw e
        }
    }

    /// Stops the reactor, waits for the thread to end, and closes the reactor.
    /// Call once, from another thread than the reactor's.
    public func stop() {
        precondition(!handle.isOnReactorThread, "ReactorThread.stop() called on its own thread")
        handle.stop()
        pthread_join(thread, nil)
    }
}
