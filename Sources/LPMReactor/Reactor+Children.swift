import Glibc  // pid_t only: no C call is made here

extension Reactor {
    /// Calls `handler` once, on this thread, with the exit status of child `pid`, and reaps it.
    ///
    /// Uses a pidfd (`pidfd_open(2)` with `PIDFD_NONBLOCK`, kernel 5.10+) and `waitid(P_PIDFD)`
    /// (kernel 5.4+), never
    /// `waitpid(-1)`: other children of the process are left alone. Where `pidfd_open` is refused
    /// with `ENOSYS` (a kernel before 5.3, or valgrind), it watches `SIGCHLD` instead and reaps
    /// with `waitid(P_PID)`; then do not watch `SIGCHLD` yourself, and watch children from one
    /// reactor only. The pid cannot be recycled
    /// before it is reaped here, provided nothing else reaps it (no `SIGCHLD` set to `SIG_IGN`,
    /// no `waitpid(-1)` elsewhere in the process).
    /// - Throws: ``ReactorError`` `.notAChild` when `pid` is not a live or unreaped child of this
    ///   process.
    @discardableResult
    public func watchChild(_ pid: pid_t, handler: @escaping (ExitStatus) -> Void) throws(ReactorError) -> ChildWatch {
        checkThread()
        guard pid > 0 else { throw ReactorError(.notAChild, "watchChild: \(pid) is not a process id") }
        let pidfd: CInt
        do { pidfd = try Sys.pidfdOpen(pid).release() } catch {
            throw ReactorError(.notAChild, "watchChild: no process \(pid)", underlying: error)
        }
        // Is it ours? waitid on a pidfd of another process's child reports ECHILD.
        do {
            if Sys.pidfdRefused { try Sys.checkIsChild(pid: pid) } else { try Sys.checkIsChild(pidfd: pidfd) }
        } catch {
            FileDescriptor.closeRaw(pidfd)
            throw ReactorError(.notAChild, "watchChild: \(pid) is not a child of this process", underlying: error)
        }
        return try watchPidfd(pidfd, pid: pid, handler: handler, user: true)
    }

    /// Like ``watchChild(_:handler:)`` for a pidfd the caller already has (the reactor takes it
    /// over and closes it after reaping).
    ///
    /// Where `pidfd_open` is refused (`Sys.pidfdRefused`: a kernel before 5.3, or valgrind),
    /// `pidfd` is the stand-in `Sys.pidfdOpen` returned: the reactor then watches `SIGCHLD` (as
    /// ``watchSignal(_:handler:)`` does) while such children exist, and on each one reaps those
    /// of them that exited with `waitid(P_PID, WNOHANG)`. Only one reactor per process should
    /// watch children that way, and the caller must not watch `SIGCHLD` itself.
    package func watchPidfd(_ pidfd: CInt, pid: pid_t, handler: @escaping (ExitStatus) -> Void, user: Bool = false) throws(ReactorError) -> ChildWatch {
        let standIn = Sys.pidfdRefused
        let r: Registration
        do {
            r = try registerInternal(pidfd, interest: .readable, isUser: user) { [unowned self] _ in self.childReady(pidfd) }
        } catch {
            FileDescriptor.closeRaw(pidfd)
            throw error
        }
        if standIn && children.sigchldWatch == nil {
            do {
                children.sigchldWatch = try watchSignal(SIGCHLD) { [unowned self] _ in self.reapStandIns() }
            } catch {
                deregisterInternal(r)
                FileDescriptor.closeRaw(pidfd)
                throw error
            }
        }
        children.add(.init(pid: pid, pidfd: pidfd, handler: handler, standIn: standIn), registration: r)
        if standIn {
            // It may have exited before SIGCHLD was watched: look once, in this iteration's jobs.
            _ = shared.submitLocal(.closure { $0.reapStandIns() })
        }
        return ChildWatch(pid: pid, registration: r)
    }

    /// Reaps each child watched through a stand-in that has exited, and calls its handler.
    private func reapStandIns() {
        for (r, child) in children.standInChildren() {
            // A handler called earlier in this loop may have unwatched it: then leave it alone.
            guard children.child(registration: r)?.pid == child.pid else { continue }
            let exit: ExitStatus
            do {
                guard let status = try Sys.reap(pid: child.pid) else { continue }
                exit = status
            } catch {
                // ECHILD: reaped by someone else. Report it as unknown (-1) rather than hang.
                exit = .exited(-1)
            }
            forget(child, registration: r)
            child.handler(exit)
        }
    }

    private func childReady(_ pidfd: CInt) {
        guard let r = registrations.registration(ofFD: pidfd), let child = children.child(registration: r) else { return }
        let exit: ExitStatus
        do {
            // A readable pidfd means the process exited; if waitid has nothing yet, wait again.
            guard let status = try Sys.reap(pidfd: pidfd) else { return }
            exit = status
        } catch {
            // ECHILD: reaped by someone else. Report it as unknown (-1) rather than hang.
            exit = .exited(-1)
        }
        forget(child, registration: r)
        child.handler(exit)
    }

    /// Stops watching a child: deregisters and closes its pidfd.
    private func forget(_ child: ChildWatchers.Child, registration r: Registration) {
        children.remove(registration: r)
        deregisterInternal(r)
        FileDescriptor.closeRaw(child.pidfd)
        if child.standIn && !children.hasStandIns, let watch = children.sigchldWatch {
            children.sigchldWatch = nil
            try? unwatchSignal(watch)  // cannot fail: the watch is current
        }
    }

    /// Sends `signal` to a watched child through its pidfd, race-free against pid reuse.
    /// The corresponding C function is `pidfd_send_signal(2)`.
    /// - Throws: ``ReactorError`` `.unknownRegistration` when the child was already reaped.
    public func signalChild(_ watch: ChildWatch, _ signal: CInt) throws(ReactorError) {
        checkThread()
        guard let child = children.child(watch) else {
            throw ReactorError(.unknownRegistration, "signalChild: \(watch.pid) is no longer watched")
        }
        do {
            if child.standIn { try Sys.sendSignal(child.pid, signal) } else { try Sys.pidfdSendSignal(child.pidfd, signal) }
        } catch {
            throw ReactorError(.systemCall, "signalChild(\(watch.pid), \(signal))", underlying: error)
        }
    }

    /// Stops watching a child without reaping it; its handler is not called.
    public func unwatchChild(_ watch: ChildWatch) throws(ReactorError) {
        checkThread()
        guard let child = children.child(watch) else {
            throw ReactorError(.unknownRegistration, "unwatchChild: \(watch.pid) is not watched")
        }
        forget(child, registration: watch.registration)
    }
}
