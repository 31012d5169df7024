extension Reactor {
    /// Delivers `signal` to `handler` on this thread through a `signalfd(2)`.
    ///
    /// The reactor blocks the signal in its own thread and reads it from a signalfd. A signal
    /// sent to the process is delivered to *any* thread that does not block it, and there it would
    /// run the default action (for SIGINT: end the process). So that it cannot, the reactor also
    /// installs a small handler for the signal that forwards it to the reactor thread with
    /// `tgkill(2)`: a SIGINT landing on a thread of the Swift runtime, of Dispatch, or of your
    /// own, still reaches `handler`. To avoid that extra hop, block the signal in the main thread
    /// before any other thread exists (``Reactor/blockSignals(_:)``); threads inherit the mask.
    ///
    /// - Important: One reactor per process should watch a given signal; the forwarder targets the
    ///   reactor thread that most recently started watching a signal. Child processes spawned by
    ///   this package reset both the mask and the disposition.
    /// - Throws: ``ReactorError`` `.invalidArgument` for a signal that cannot be caught (SIGKILL,
    ///   SIGSTOP) or a bad number; `.alreadyWatched` when the signal is already watched.
    @discardableResult
    public func watchSignal(_ signal: CInt, handler: @escaping (CInt) -> Void) throws(ReactorError) -> SignalWatch {
        checkThread()
        guard !isClosed else { throw ReactorError(.closed, "the reactor is closed") }
        return try signals.watch(signal, handler: handler) { (fd) throws(ReactorError) in
            try registerInternal(fd, interest: .readable) { [unowned self] _ in self.readSignals() }
        }
    }

    /// Stops watching a signal: restores the previous disposition and unblocks it in this thread
    /// (a pending instance is then delivered the ordinary way).
    /// - Throws: ``ReactorError`` `.unknownRegistration` for a stale watch.
    public func unwatchSignal(_ watch: SignalWatch) throws(ReactorError) {
        checkThread()
        try signals.unwatch(watch) { deregisterInternal($0) }
    }

    /// Blocks `signals` in the calling thread. Call it first thing in `main`, before any other
    /// thread exists, so that every thread inherits the mask and a watched signal goes straight
    /// to the signalfd. The corresponding C function is `pthread_sigmask(2)`.
    public static func blockSignals(_ signals: [CInt]) {
        SignalCalls.block(signals)
    }

    private func readSignals() {
        while let (signo, handler) = signals.next() {
            handler?(signo)
        }
    }

    /// The usual name of a signal ("SIGINT"), if it has one.
    public static func signalName(_ signal: CInt) -> String? {
        SignalCalls.name(signal)
    }
}
