/// The reactor's watched signals: one signalfd for all of them, each signal's handler and the
/// disposition it replaced. Reactor thread only; the system calls go through ``SignalCalls``.
struct SignalWatchers {
    typealias Handler = (CInt) -> Void

    private struct Entry {
        var generation: UInt32
        var handler: Handler
        var previous: SignalDisposition
    }

    private var fd: CInt = -1
    private var registration: Reactor.Registration?
    private var entries: [CInt: Entry] = [:]
    private var generation: UInt32 = 0
    /// The kernel thread id of the reactor thread, where the forwarder sends signals.
    private let ownerTID = SignalCalls.currentThreadID()

    /// How many signals are watched.
    var count: Int { entries.count }

    /// Starts watching `signal` (see ``Reactor/watchSignal(_:handler:)``). `register` registers
    /// the signalfd with the reactor, the first time one is made.
    mutating func watch(
        _ signal: CInt, handler: @escaping Handler,
        register: (CInt) throws(ReactorError) -> Reactor.Registration
    ) throws(ReactorError) -> Reactor.SignalWatch {
        guard SignalCalls.isCatchable(signal) else {
            throw ReactorError(.invalidArgument, "watchSignal: signal \(signal) cannot be caught")
        }
        guard entries[signal] == nil else { throw ReactorError(.alreadyWatched, "watchSignal: signal \(signal) is already watched") }
        SignalCalls.block([signal])
        // Forward the signal from threads that do not block it (see watchSignal).
        SignalCalls.forward(to: ownerTID)
        let previous = SignalCalls.installForwarder(signal)
        let undo = {
            SignalCalls.restore(signal, previous)
            SignalCalls.unblock([signal])
        }
        let newFD: CInt
        do { newFD = try SignalCalls.signalfd(fd, Array(entries.keys) + [signal]) } catch {
            undo()
            throw ReactorError(.systemCall, "signalfd failed", underlying: error)
        }
        if fd < 0 {
            do { registration = try register(newFD) } catch {
                FileDescriptor.closeRaw(newFD)
                undo()
                throw error
            }
            fd = newFD
        }
        generation &+= 1
        entries[signal] = Entry(generation: generation, handler: handler, previous: previous)
        return Reactor.SignalWatch(signal: signal, generation: generation)
    }

    /// Stops watching (see ``Reactor/unwatchSignal(_:)``). `deregister` is called, before the
    /// signalfd is closed, when the last signal goes.
    mutating func unwatch(_ watch: Reactor.SignalWatch, deregister: (Reactor.Registration) -> Void) throws(ReactorError) {
        guard let entry = entries[watch.signal], entry.generation == watch.generation else {
            throw ReactorError(.unknownRegistration, "unwatchSignal: signal \(watch.signal) is not watched by this watch")
        }
        entries[watch.signal] = nil
        if entries.isEmpty {
            if let r = registration { deregister(r) }
            registration = nil
            FileDescriptor.closeRaw(fd)
            fd = -1
        } else {
            do {
                _ = try SignalCalls.signalfd(fd, entries.keys)
            } catch {
                // Narrowing the mask of a live signalfd fails only with EINVAL/EBADF, bugs here.
                preconditionFailure("unwatchSignal: \(error)")
            }
        }
        SignalCalls.restore(watch.signal, entry.previous)
        SignalCalls.unblock([watch.signal])
    }

    /// The next pending signal and its handler, read from the signalfd; `nil` when none is
    /// pending (or the signal was unwatched meanwhile: it is then dropped).
    func next() -> (CInt, Handler?)? {
        guard fd >= 0, let signo = SignalCalls.readSignal(fd) else { return nil }
        return (signo, entries[signo]?.handler)
    }

    /// Restores every disposition, unblocks the signals when `onOwnerThread`, stops forwarding
    /// and closes the signalfd (the reactor is closing; its backend goes with it).
    mutating func removeAll(onOwnerThread: Bool) {
        for (signal, entry) in entries {
            SignalCalls.restore(signal, entry.previous)
            // Unblock it again in this thread, as unwatch does (when closing on it).
            if onOwnerThread { SignalCalls.unblock([signal]) }
        }
        // Stop forwarding to this thread: it may end, and its id be reused.
        if !entries.isEmpty { SignalCalls.stopForwarding(to: ownerTID) }
        entries.removeAll()
        registration = nil
        if fd >= 0 { FileDescriptor.closeRaw(fd); fd = -1 }
    }
}
