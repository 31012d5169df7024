import CLoop

/// The loop's own state: the buffers it reuses each iteration and its settings.
struct LoopState {
    /// Events of the current wait; its capacity is kept from one iteration to the next.
    var events: [BackendEvent] = []
    /// Jobs being run; its capacity is kept too.
    var jobs: [ReactorShared.Job] = []
    var stopRequested = false
    /// The monotonic clock, read once per iteration just after the wait (see
    /// ``Reactor/iterationNanoseconds``).
    var iterationNanoseconds: Int64 = Sys.monotonicNanoseconds()
    var busyPollNanoseconds: Int64 = Sys.environment("LPM_BUSY_POLL_US").flatMap { Int64($0) }.map { $0 * 1000 } ?? 0
    /// The poll hooks, each with its token (``Reactor/addPollHooks(_:)``).
    var pollHooks: [(token: Int, hooks: Reactor.PollHooks)] = []
    var nextPollHooksToken = 0

    init() { events.reserveCapacity(64) }
}

extension Reactor {
    /// Runs until ``stop()`` (or ``Handle/stop()``) is called.
    /// - Throws: ``ReactorError`` `.systemCall` if waiting fails.
    public func run() throws(ReactorError) {
        checkThread()
        loop.stopRequested = false
        while !loop.stopRequested {
            try runOnce(timeout: nil)
        }
        loop.stopRequested = false
    }

    /// Runs one iteration: waits up to `timeout` (`nil`: until something happens; `.zero`: do
    /// not block), then runs the ready callbacks, the due timers and the submitted jobs.
    /// For embedding in another loop.
    /// - Returns: how many callbacks, timers and jobs ran.
    @discardableResult
    public func runOnce(timeout: Duration?) throws(ReactorError) -> Int {
        checkThread()
        guard !isClosed else { throw ReactorError(.closed, "the reactor is closed") }
        var wait: Int64? = timeout.map { max(0, Reactor.nanoseconds($0)) }
        if loop.stopRequested || shared.hasLocalJobs { wait = 0 }
        if let deadline = timers.earliestDeadline {
            wait = min(wait ?? Int64.max, max(0, deadline &- Sys.monotonicNanoseconds()))
        }
        var events = loop.events
        loop.events = []  // keeps `events` uniquely referenced: no copy on append
        events.removeAllKeepingCapacity()
        defer { loop.events = events }
        do {
            try waitForEvents(wait, into: &events)
        } catch {
            throw ReactorError(.systemCall, "waiting for events failed", underlying: error)
        }
        loop.iterationNanoseconds = Sys.monotonicNanoseconds()
        var ran = 0
        for e in events {
            guard let (handler, ready) = registrations.readyHandler(for: e) else { continue }
            handler(ready)
            ran += 1
        }
        if !loop.pollHooks.isEmpty { ran += runPollHooks() }
        ran += runExpiredTimers()
        ran += runJobs()
        return ran
    }

    /// Work that is not a descriptor's readiness: memory another process writes (shared-memory
    /// rings). ``run`` runs it once per iteration, after the ready callbacks; while busy
    /// polling, ``hasWork`` ends the polling as soon as it returns true; before a blocking wait,
    /// ``prepareToBlock`` arranges to be woken through a watched descriptor, and returns true
    /// when work arrived meanwhile (the wait then does not block).
    package struct PollHooks {
        package var hasWork: () -> Bool
        package var run: () -> Int
        package var prepareToBlock: () -> Bool

        package init(hasWork: @escaping () -> Bool, run: @escaping () -> Int, prepareToBlock: @escaping () -> Bool) {
            self.hasWork = hasWork
            self.run = run
            self.prepareToBlock = prepareToBlock
        }
    }

    /// Adds poll hooks; returns the token that removes them. Reactor thread only.
    package func addPollHooks(_ hooks: PollHooks) -> Int {
        loop.nextPollHooksToken += 1
        loop.pollHooks.append((loop.nextPollHooksToken, hooks))
        return loop.nextPollHooksToken
    }

    /// Removes the poll hooks added with `token`. Reactor thread only.
    package func removePollHooks(_ token: Int) {
        loop.pollHooks.removeAll { $0.token == token }
    }

    private func runPollHooks() -> Int {
        var ran = 0
        for h in loop.pollHooks { ran += h.hooks.run() }
        return ran
    }

    private func pollHooksHaveWork() -> Bool {
        for h in loop.pollHooks where h.hooks.hasWork() { return true }
        return false
    }

    /// Every set's `prepareToBlock` (each announces its sleep); true if any found work.
    private func preparePollHooksToBlock() -> Bool {
        var arrived = false
        for h in loop.pollHooks where h.hooks.prepareToBlock() { arrived = true }
        return arrived
    }

    private func waitForEvents(_ wait: Int64?, into events: inout [BackendEvent]) throws(SyscallError) {
        let busyPoll = loop.busyPollNanoseconds
        guard busyPoll > 0 && wait != 0 else {
            if wait != 0, !loop.pollHooks.isEmpty, preparePollHooksToBlock() { return try backend.wait(timeoutNanoseconds: 0, into: &events) }
            return try backend.wait(timeoutNanoseconds: wait, into: &events)
        }
        let hooks = !loop.pollHooks.isEmpty
        // Poll without blocking for a while before sleeping: trades CPU for the wake-up
        // latency of a blocking wait (large when the peer runs on another CPU).
        let start = Sys.monotonicNanoseconds()
        let limit = min(busyPoll, wait ?? Int64.max)
        repeat {
            try backend.wait(timeoutNanoseconds: 0, into: &events)
            if hooks, events.isEmpty {
                // The hooks' memory, a few rounds between two polls of the backend (a system
                // call); the backend is polled once per iteration all the same.
                for _ in 0..<64 {
                    if pollHooksHaveWork() { return }
                    cloop_cpu_relax()
                }
            }
        } while events.isEmpty && Sys.monotonicNanoseconds() &- start < limit
        // (Jobs from other threads wake the eventfd, which is one of the polled descriptors.)
        if events.isEmpty {
            if hooks, preparePollHooksToBlock() { return }
            let left = wait.map { max(0, $0 &- (Sys.monotonicNanoseconds() &- start)) }
            try backend.wait(timeoutNanoseconds: left, into: &events)
        }
    }

    /// The monotonic clock (`CLOCK_MONOTONIC`, nanoseconds) as read once per iteration, when the
    /// wait returned: a timestamp that costs nothing, for code that can live with one that is as
    /// old as the iteration (request creation times, say). Timers use the exact clock.
    package var iterationNanoseconds: Int64 { loop.iterationNanoseconds }

    private func runExpiredTimers() -> Int {
        guard timers.earliestDeadline != nil else { return 0 }
        let now = Sys.monotonicNanoseconds()
        var ran = 0
        while let handler = timers.popExpired(now: now) {
            handler()
            ran += 1
        }
        return ran
    }

    /// Runs `job` on this thread at the end of the current iteration, after the ready callbacks
    /// and due timers (from inside a job: in the same iteration, within a few rounds of jobs).
    /// Reactor thread only;
    /// costs no system call. Other threads use ``Handle/execute(_:)``.
    public func execute(_ job: @escaping (Reactor) -> Void) {
        checkThread()
        // The job never leaves this thread (it goes to the owner-thread queue), so it need not be
        // sent; passing it on as it is keeps a stored closure from being wrapped anew. `false`
        // (the reactor is closed) drops it, as documented for ``close()``.
        _ = shared.submitLocal(.closure(job))
    }

    /// Runs `job` on this thread at the end of the current iteration, like ``execute(_:)``, for
    /// an object that is its own job: no closure context, and the object is held strongly while
    /// queued (no unowned reference to load when it runs). Reactor thread only.
    package func execute(job: any ReactorJob) {
        checkThread()
        _ = shared.submitLocal(.object(job))
    }

    /// Makes ``run()`` return after the current iteration. Reactor thread only; other threads
    /// use ``Handle/stop()``.
    public func stop() {
        checkThread()
        loop.stopRequested = true
    }

    private func runJobs() -> Int {
        var ran = 0
        var jobs = loop.jobs
        loop.jobs = []
        defer { loop.jobs = jobs }
        // Jobs submitted by jobs run in the same iteration, up to a few rounds, so that a job
        // re-submitting itself cannot starve the descriptors.
        for _ in 0..<4 {
            shared.takeJobs(into: &jobs)
            if jobs.isEmpty { break }
            for job in jobs {
                switch job {
                case .closure(let body): body(self)
                case .object(let job): job.run(on: self)
                case .executorJob(let job):
                    job.runSynchronously(isolatedTo: executor.asUnownedSerialExecutor(), taskExecutor: taskExecutor.asUnownedTaskExecutor())
                case .taskExecutorJob(let job):
                    job.runSynchronously(on: taskExecutor.asUnownedTaskExecutor())
                case .stop: loop.stopRequested = true
                }
            }
            ran += jobs.count
            jobs.removeAllKeepingCapacity()
        }
        return ran
    }
}
