extension Reactor {
    /// Calls `handler` once after `delay`, or every `interval` after that when `repeating` is given.
    ///
    /// Timers live in a heap in user space: thousands cost no kernel object each; the wait's
    /// timeout is the earliest deadline. Timers due at the same instant fire in the order they
    /// were scheduled.
    /// - Throws: ``ReactorError`` `.invalidArgument` for a negative delay or a non-positive interval.
    @discardableResult
    public func schedule(after delay: Duration, repeating interval: Duration? = nil, _ handler: @escaping () -> Void) throws(ReactorError) -> Timer {
        checkThread()
        guard !isClosed else { throw ReactorError(.closed, "the reactor is closed") }
        let d = Reactor.nanoseconds(delay)
        guard d >= 0 else { throw ReactorError(.invalidArgument, "schedule: negative delay \(delay)") }
        var every: Int64 = 0
        if let interval {
            every = Reactor.nanoseconds(interval)
            guard every > 0 else { throw ReactorError(.invalidArgument, "schedule: the repeat interval must be positive, got \(interval)") }
        }
        return timers.schedule(deadline: Sys.monotonicNanoseconds() &+ d, interval: every, handler)
    }

    /// Cancels a timer. Returns `false` when it already fired (one-shot) or was cancelled.
    /// Safe from inside any callback, including another timer's.
    @discardableResult
    public func cancel(_ timer: Timer) -> Bool {
        checkThread()
        return timers.cancel(timer)
    }

    /// The time until the earliest timer, or `nil` when none is scheduled. For embedding.
    public var nextTimeout: Duration? {
        checkThread()
        return timers.earliestDeadline.map { .nanoseconds(max(0, $0 &- Sys.monotonicNanoseconds())) }
    }
}
