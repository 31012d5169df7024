extension Reactor {
    /// Watches `fd` and calls `handler` on this thread whenever it is ready for `interest`.
    ///
    /// The descriptor stays the caller's: deregister it before closing it.
    /// - Parameters:
    ///   - fd: an open descriptor (socket, pipe, eventfd, pidfd...). Regular files are refused
    ///     by epoll (`EPERM`).
    ///   - interest: what to wait for; must not be empty.
    ///   - trigger: level (default) or edge.
    ///   - handler: called with what is ready; only what `interest` asks for, plus hangup and error.
    /// - Returns: the registration, for ``modify(_:interest:)`` and ``deregister(_:)``.
    /// - Throws: ``ReactorError`` `.invalidDescriptor` for a closed or invalid fd,
    ///   `.invalidArgument` for an empty interest, `.systemCall` when the backend refuses.
    @discardableResult
    public func register(
        _ fd: CInt,
        interest: Interest,
        trigger: Trigger = .level,
        handler: @escaping (Readiness) -> Void
    ) throws(ReactorError) -> Registration {
        checkThread()
        return try registerInternal(fd, interest: interest, trigger: trigger, isUser: true, handler: handler)
    }

    /// Registers `fd`; `isUser`: counted in ``registrationCount`` (else the reactor's own).
    func registerInternal(
        _ fd: CInt,
        interest: Interest,
        trigger: Trigger = .level,
        isUser: Bool = false,
        handler: @escaping (Readiness) -> Void
    ) throws(ReactorError) -> Registration {
        guard !isClosed else { throw ReactorError(.closed, "the reactor is closed") }
        guard !interest.isEmpty else { throw ReactorError(.invalidArgument, "register(\(fd)): the interest is empty") }
        guard Sys.isValid(fd) else {
            throw ReactorError(.invalidDescriptor, "register(\(fd)): not an open file descriptor",
                               underlying: SyscallError("fcntl", .badFileDescriptor))
        }
        let backend = self.backend
        do {
            return try registrations.insert(fd: fd, interest: interest, trigger: trigger, isUser: isUser, handler: handler) {
                (token) throws(SyscallError) in
                try backend.register(fd: fd, token: token, interest: interest, edge: trigger == .edge)
            }
        } catch {
            throw ReactorError(error.errno == .badFileDescriptor ? .invalidDescriptor : .systemCall,
                               "register(\(fd)) refused by \(backend.kind)", underlying: error)
        }
    }

    /// Changes what a registration waits for.
    /// - Throws: ``ReactorError`` `.unknownRegistration` for a stale registration,
    ///   `.invalidArgument` for an empty interest.
    public func modify(_ registration: Registration, interest: Interest) throws(ReactorError) {
        checkThread()
        guard !interest.isEmpty else { throw ReactorError(.invalidArgument, "modify: the interest is empty") }
        let backend = self.backend
        let known: Bool
        do {
            known = try registrations.modify(registration, interest: interest) { (fd, old, new, edge) throws(SyscallError) in
                try backend.modify(fd: fd, oldToken: old, newToken: new, interest: interest, edge: edge)
            }
        } catch {
            let fd = registrations.descriptor(of: registration) ?? -1
            throw ReactorError(error.errno == .badFileDescriptor || error.errno == .noSuchFileOrDirectory ? .invalidDescriptor : .systemCall,
                               "modify(\(fd)) refused by \(backend.kind)", underlying: error)
        }
        guard known else { throw ReactorError(.unknownRegistration, "modify: unknown or stale registration") }
    }

    /// Stops watching a descriptor. Its handler is not called again, even for events already
    /// collected in this iteration. Safe to call from inside any callback, including its own.
    ///
    /// - Warning: On the io_uring backend the kernel keeps a reference to the file until the
    ///   removal is submitted, with the next wait: a descriptor deregistered and closed is
    ///   released (its peer sees end of file) only when the loop next runs. Do not deregister,
    ///   close, and then block this thread waiting for the peer to notice.
    /// - Throws: ``ReactorError`` `.unknownRegistration` for a stale registration.
    public func deregister(_ registration: Registration) throws(ReactorError) {
        checkThread()
        guard let (fd, token) = registrations.remove(registration) else {
            throw ReactorError(.unknownRegistration, "deregister: unknown or stale registration")
        }
        do {
            try backend.deregister(fd: fd, token: token)
        } catch {
            // The registration is gone on our side whatever the kernel says: no event reaches its
            // handler again (its token is stale). Both backends already absorb "already closed"
            // (ENOENT/EBADF); anything else is reported, the registration staying removed.
            throw ReactorError(.systemCall, "deregister(\(fd)) refused by \(backend.kind)", underlying: error)
        }
    }

    /// Deregisters a registration known to be live (the reactor's own signalfd and pidfds, and
    /// the package's channels and streams, which own theirs). A backend failure leaves the
    /// registration removed on our side (its events are dropped as stale), and closing the
    /// descriptor removes it from the kernel's interest list; with nobody to report it to, it
    /// only trips an assertion in debug builds.
    package func deregisterInternal(_ registration: Registration) {
        do { try deregister(registration) } catch {
            assertionFailure("deregistering an internal registration: \(error)")
        }
    }
}
