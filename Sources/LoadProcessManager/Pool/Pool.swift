import Glibc
import LPMReactor
import LPMWire

/// A worker slot: a place in the pool, and the process in it, if any.
struct WorkerSlot {
    /// Whether the slot counts as part of the pool.
    enum Membership: Equatable {
        /// Part of the pool: has a process, or gets one (at start, or by a restart).
        case active
        /// Out of the pool until a resize brings it back: its restarts were refused by the
        /// budget, or its process could not be spawned.
        case down
        /// Removed by a resize: its process (if any) drains and is not replaced.
        case retired
    }

    var membership: Membership = .active
    var process: WorkerProcess?
    var restarts = 0
    var lastExit: Reactor.ExitStatus?
    var completedBefore = 0
    /// While down: the timer that brings it back, and how many times it has been refused in a
    /// row (the backoff doubles with each).
    var comeback: Reactor.Timer?
    var refusals = 0
}

/// The supervisor's state and the I/O that goes with it, confined to the reactor thread.
///
/// Its parts each have one job: the ``RequestTable`` (requests, exactly once, retries), one
/// ``WorkerLifecycle`` per process, the ``RestartBudget`` and the ``DispatchPolicy`` are pure
/// values; the pool applies what they decide (spawn, send, kill) and queues every call into
/// user code in its ``Outbox``, delivered once its own state is consistent.
final class Pool {
    enum Phase { case idle, running, softKilling, hardKilling, stopped }
    typealias ReplyHandler = @Sendable (Result<[UInt8], SupervisorError>) -> Void

    let reactor: Reactor
    /// The configuration; its executable changes with a reload.
    var config: SupervisorConfiguration
    let flusher: ChannelFlusher
    /// Starts workers; replaced (and the old one freed) by a reload with a new executable.
    var spawner: Spawner
    // The state every request touches is declared `@exclusivity(unchecked)`: the dynamic
    // exclusivity checks on it (swift_beginAccess, a thread-local access set) cost about a
    // quarter of the reactor thread's time per request in a burst (`lpm-compare burst`, this
    // machine: 1.55-1.64 us/request checked, 1.14-1.22 unchecked). It is sound because the pool
    // is confined to the reactor thread, and no access to these overlaps another: the request
    // table, the outbox and the policy are values whose methods call nothing outside themselves,
    // and user code runs only from `deliver()`, between two calls of `outbox.next()`.
    @exclusivity(unchecked) var phase: Phase = .idle
    @exclusivity(unchecked) var slots: [WorkerSlot]
    @exclusivity(unchecked) var table = RequestTable<Completion>()
    /// Requests from other threads by submission number, for their handles' cancellations.
    @exclusivity(unchecked) var submissions = SubmissionIndex()
    var budget: RestartBudget
    /// The pool's metrics; `nil` when off or no backend is set (each hook is then one branch).
    let metrics: PoolMetrics?
    @exclusivity(unchecked) var policy: DispatchPolicy
    @exclusivity(unchecked) var outbox = Outbox()
    @exclusivity(unchecked) var ids = IDGenerator()
    var onlineAnnounced = false
    /// Set while the pool has no live worker and that has been announced; cleared by a spawn.
    var noWorkersAnnounced = false
    var healthTimer: Reactor.Timer?
    var healthSequence: UInt64 = 0
    var pingTimer: Reactor.Timer?
    var pingSequence: UInt64 = 0
    var signalWatches: [Reactor.SignalWatch] = []
    var killCompletions: [@Sendable () -> Void] = []
    var softKillTimer: Reactor.Timer?
    /// Replies awaited from workers, by event id.
    var pendingReplies: [UInt64: (pid: pid_t, handler: ReplyHandler)] = [:]
    var nextEventID: UInt64 = 0
    /// The pool's bounds, its scaling policy and the timer that checks it (Pool+Scaling.swift).
    /// `@exclusivity(unchecked)`: dispatch reads it for every request that finds no worker free;
    /// a plain value, no access to it overlaps another (its methods call nothing outside it).
    @exclusivity(unchecked) var scaling = PoolScaling()
    /// A rolling reload in progress: the slots still to replace, and who waits for the end.
    var reload: (remaining: [Int], waiting: Int?, completions: [@Sendable (SupervisorError?) -> Void])?
    /// Response streams the pool still reads for their callers (a soft kill waits for them).
    var openStreams: [ObjectIdentifier: ResponseStreamCore] = [:]
    /// The worker template, when ``SupervisorConfiguration/template`` is set (`Pool+Template.swift`).
    let template = TemplateSupervision()
    /// Called once the pool has stopped (the supervisor's own reactor thread then ends).
    var onStopped: (() -> Void)?

    /// Event handlers (``Supervisor/onEvent(_:)``), in the order added, and the subscribers of
    /// ``Supervisor/events(bufferingPolicy:)``, by subscription.
    var eventHandlers: [@Sendable (SupervisorEvent) -> Void] = []
    var eventSubscribers: [UInt64: AsyncStream<SupervisorEvent>.Continuation] = [:]
    var nextSubscriber: UInt64 = 0
    var workerEventHandlers: [String: @Sendable (WorkerEvent) -> Void] = [:]
    var anyWorkerEventHandler: (@Sendable (WorkerEvent) -> Void)?
    var signalHandlers: [CInt: @Sendable (CInt) -> Void] = [:]
    var anySignalHandler: (@Sendable (CInt) -> Void)?

    init(reactor: Reactor, config: SupervisorConfiguration) {
        self.reactor = reactor
        self.config = config
        flusher = ChannelFlusher(reactor: reactor)
        spawner = Spawner(config)
        slots = Array(repeating: WorkerSlot(), count: max(0, config.count))
        budget = RestartBudget(limit: config.restarts, window: config.maxRestartsInInterval)
        policy = DispatchPolicy(capacity: config.maxConcurrentRequestsPerWorker)
        metrics = PoolMetrics.make(config)
    }

    deinit { spawner.free() }

    // MARK: Calls into user code

    func emit(_ e: SupervisorEvent) {
        log(e)
        metrics?.event(e, self)
        outbox.push(.event(e))
    }

    func answer(_ completion: consuming Completion, _ result: consuming Result<WorkerResponse, SupervisorError>) {
        outbox.push(.answer(completion, result))
    }

    /// Answers a request now, where the pool's state is consistent and nothing is owed before
    /// this answer (the common case: a response frame), else queues it. The hot path: it spares
    /// the answer a trip through the outbox's storage.
    func answerNow(_ completion: consuming Completion, _ result: consuming Result<WorkerResponse, SupervisorError>) {
        guard outbox.beginDirect() else { return answer(completion, result) }
        completion(result)
        outbox.endDirect()
        deliver()
    }

    /// Delivers what the pool owes user code. Every entry into the pool ends with it; a nested
    /// entry (a handler calling the API) returns at once and the outer loop delivers.
    @inline(__always)
    func deliver() {
        if outbox.beginDrain() { drainOutbox() }
    }

    private func drainOutbox() {
        while let d = outbox.next() {
            switch consume d {
            case .answer(let completion, let result): completion(result)
            case .event(let e):
                for handler in eventHandlers { handler(e) }
                for subscriber in eventSubscribers.values { subscriber.yield(e) }
            case .workerEvent(let e): (workerEventHandlers[e.name] ?? anyWorkerEventHandler)?(e)
            case .reply(let handler, let result): handler(result)
            case .call(let body): body()
            case .endEventStreams:
                let subscribers = eventSubscribers.values
                eventSubscribers = [:]
                for s in subscribers { s.finish() }
                // The pool has stopped for good: nothing can call the user's handlers any more,
                // and letting them go breaks the cycles they may hold (a handler that captures its
                // supervisor, or keeps the events it gets, whose replies reach the pool).
                eventHandlers = []
                workerEventHandlers = [:]
                anyWorkerEventHandler = nil
                signalHandlers = [:]
                anySignalHandler = nil
            }
        }
    }

    // MARK: Start

    func start() throws(SupervisorError) {
        defer { deliver() }
        guard phase == .idle else {
            if phase == .running { return }
            throw SupervisorError(.shutDown, "start() after the pool was shut down")
        }
        // What the configuration asks for and cannot be had is an error, before any worker runs.
        guard Wire.maxPayloadRange.contains(config.maxPayload) else {
            throw SupervisorError(.invalidArgument, "maxPayload \(config.maxPayload) is outside \(Wire.maxPayloadRange)")
        }
        try prepareScaling()
        var watches: [Reactor.SignalWatch] = []
        func undoWatches() {
            // Undoing watches just made: fails only if the reactor is closed, and then they are gone.
            for w in watches { try? reactor.unwatchSignal(w) }
        }
        for signal in config.shutdownSignals {
            do {
                watches.append(try reactor.watchSignal(signal) { [unowned self] signo in
                    self.shutdownSignal(signo)
                    self.deliver()
                })
            } catch {
                undoWatches()
                let name = Reactor.signalName(signal) ?? "signal \(signal)"
                throw SupervisorError(.invalidArgument, "cannot watch \(name) (remove it from shutdownSignals to run without): \(error)")
            }
        }
        let timer: Reactor.Timer
        var ping: Reactor.Timer?
        do {
            timer = try reactor.schedule(after: config.healthInterval, repeating: config.healthInterval) { [unowned self] in
                self.sampleHealth()
            }
        } catch {
            undoWatches()
            throw SupervisorError(.invalidArgument, "healthInterval \(config.healthInterval): \(error)")
        }
        if let interval = config.pingInterval {
            do {
                ping = try reactor.schedule(after: interval, repeating: interval) { [unowned self] in
                    self.checkLiveness()
                    self.deliver()
                }
            } catch {
                undoWatches()
                reactor.cancel(timer)
                throw SupervisorError(.invalidArgument, "pingInterval \(interval): \(error)")
            }
        }
        signalWatches = watches
        healthTimer = timer
        pingTimer = ping
        phase = .running
        // With a template, the first workers are forked from it once it has preloaded.
        if startTemplateDeferringWorkers() { return }
        var firstError: SupervisorError?
        for i in slots.indices where slots[i].membership == .active {
            if let error = spawnOrMarkDown(slot: i) { firstError = firstError ?? error }
        }
        if !hasLiveWorker {
            noWorkersLeft()
            if let firstError { throw firstError }
        }
    }

    /// Spawns a process into slot `i` (see ``spawn(slot:restart:fork:)``). On failure the slot
    /// goes down and the failure is reported (an event), and returned.
    func spawnOrMarkDown(slot i: Int, restart: Bool = false, fork: Bool = true) -> SupervisorError? {
        do {
            try spawn(slot: i, restart: restart, fork: fork)
            return nil
        } catch {
            slots[i].membership = .down
            emit(.workerSpawnFailed(slot: i, reason: error.message))
            return error
        }
    }

    /// Starts a worker in slot `i`: ordered from the template when one is ready and `fork`
    /// (the slot then has no process until the forked worker announces itself, and gets one
    /// with exec if none does: `Pool+Template.swift`), else now with exec. `restart`: it
    /// replaces a worker that died (``SupervisorEvent/workerRestarted(slot:pid:)`` follows
    /// its start).
    func spawn(slot i: Int, restart: Bool = false, fork: Bool = true) throws(SupervisorError) {
        if fork, config.template != nil, orderFork(slot: i, .start(restart: restart)) {
            // Part of the pool from now, as a spawned worker's slot (a comeback brings a slot
            // down back this way).
            slots[i].membership = .active
            return
        }
        let spawned = try execWorker(slot: i)
        try install(slot: i, spawned)
        if restart { emit(.workerRestarted(slot: i, pid: spawned.pid)) }
    }

    /// The CPU slot `i`'s worker is pinned to, if any.
    func cpu(forSlot i: Int) -> Int? {
        config.cpuAffinity.isEmpty ? nil : config.cpuAffinity[i % config.cpuAffinity.count]
    }

    /// Starts the executable for slot `i`; returns its pid and the supervisor's end of its channel.
    func execWorker(slot i: Int) throws(SupervisorError) -> (pid: pid_t, channel: CInt) {
        do { return try spawner.spawn(cpu: cpu(forSlot: i), slot: i) } catch {
            throw SupervisorError(.spawnFailed, "could not start the worker \(config.executable.path): \(error)",
                                  underlying: .init(error))
        }
    }

    /// Makes the started process `spawned` slot `i`'s worker: its channel, its watch. On failure
    /// it is killed and reaped.
    func install(slot i: Int, _ spawned: (pid: pid_t, channel: CInt)) throws(SupervisorError) {
        let channel = Channel(fd: spawned.channel, reactor: reactor, flusher: flusher, maxPayload: config.maxPayload,
                              outgoingLimit: config.maxQueuedBytesPerWorker)
        // Rings are offered when the worker's ready frame announces them (the channel answers it).
        if config.transport.usesSharedMemory { channel.ringOffer = config.transport.ringBytes }
        let w = WorkerProcess(slot: i, pid: spawned.pid, channel: channel, statm: StatmReader(pid: spawned.pid))
        if let n = config.recycleAfterRequests, n > 0 {
            // Jitter (up to a tenth more), so that workers started together do not all recycle at once.
            w.recycleAfter = n + Int.random(in: 0...(n / 10))
        }
        // The pool and the worker unretained on the per-frame path (a checked `unowned` costs an
        // atomic retain and release per frame, an `unowned(unsafe)` one still a retain per use):
        // the pool outlives its channels, which it
        // closes before it is released (a dropped supervisor hard-kills, holding the pool until
        // every worker is reaped); the worker is held by its pidfd watch until it is reaped, and
        // `exited` closes its channel first (a closed channel delivers no frame).
        let pool = Unmanaged.passUnretained(self), worker = Unmanaged.passUnretained(w)
        channel.onFrame = { h, p in
            pool._withUnsafeGuaranteedRef { pool in
                worker._withUnsafeGuaranteedRef { pool.frame($0, h, p) }
                pool.deliver()
            }
        }
        channel.onEnd = { [unowned self, unowned w] end in self.channelEnded(w, end); self.deliver() }
        do {
            let pidfd = try Sys.pidfdOpen(spawned.pid).release()
            w.watch = try reactor.watchPidfd(pidfd, pid: spawned.pid) { [unowned self] status in
                self.exited(w, status)
                self.deliver()
            }
            try channel.start()
        } catch {
            // Cannot watch it: kill and reap it here, synchronously.
            Sys.killAndReap(spawned.pid)
            if let watch = w.watch { try? reactor.unwatchChild(watch) }  // reaped above: nothing left to watch
            channel.close()
            w.statm.close()
            throw SupervisorError(.spawnFailed, "could not watch worker \(spawned.pid): \(error)",
                                  underlying: (error as? SyscallError).map { .init($0) })
        }
        slots[i].process = w
        slots[i].membership = .active
        noWorkersAnnounced = false
        emit(.workerStarted(slot: i, pid: spawned.pid))
    }

    // MARK: The pool's shape

    /// Whether some slot of the pool has a process.
    /// Counts the first workers while they wait for the template to preload, and workers
    /// ordered from it.
    var hasLiveWorker: Bool {
        slots.contains { $0.membership == .active && $0.process != nil } || template.deferringStart || hasPendingFork
    }

    /// Slots that are part of the pool.
    var activeCount: Int { slots.reduce(0) { $0 + ($1.membership == .active ? 1 : 0) } }

    /// Fails the queue when no worker is left to take it; says so once.
    func noWorkersLeft() {
        if !noWorkersAnnounced {
            noWorkersAnnounced = true
            emit(.noWorkersLeft)
        }
        let reason = slots.contains { $0.membership == .down }
            ? "no worker is left: the restart budget is spent or workers could not be spawned"
            : "the pool has 0 workers"
        for index in table.takeQueued() {
            fail(index, .noWorkers, reason)
        }
    }

    /// Announces `online` once every slot of the pool has a worker that has been ready.
    func checkOnline() {
        guard !onlineAnnounced, phase == .running, activeCount > 0 else { return }
        for s in slots where s.membership == .active {
            guard let w = s.process, w.lifecycle.hasBeenReady else { return }
        }
        onlineAnnounced = true
        emit(.online)
    }

    var isStopped: Bool { phase == .stopped }
}
