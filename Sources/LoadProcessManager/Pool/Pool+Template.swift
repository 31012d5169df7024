import Glibc
import LPMReactor
import LPMWire

/// What the pool knows of its worker template (``SupervisorConfiguration/template``).
/// Confined to the reactor thread, as the pool.
final class TemplateSupervision {
    enum State { case starting, ready, dying }

    /// The template process while it runs (until it is reaped).
    struct Running {
        let pid: pid_t
        /// The supervisor's end of the template's channel (non-blocking).
        let channel: CInt
        /// The spawner's generation it was started by: a reload with a new executable makes a
        /// new spawner, and the template is then replaced.
        let generation: Int
        var state: State = .starting
        var watch: Reactor.ChildWatch?
        /// Its channel's registration, while the pool waits for its hello.
        var registration: Reactor.Registration?
        var startTimer: Reactor.Timer?
    }

    var running: Running?
    var restartTimer: Reactor.Timer?
    /// Template deaths since one was last ready: the restart delay doubles with each.
    var deathsInRow = 0
    /// The generation whose template refused to work (its preload left threads running, or
    /// the executable is not a template): it is not restarted until a reload.
    var refusedGeneration: Int?
    /// At start, the first workers wait for the template, to be forked from it; they are
    /// started once it is ready, or with exec as soon as it fails.
    var deferringStart = false
    /// Forks ordered (or queued to be), by slot, and how many orders are outstanding.
    var pending: [Int: PendingFork] = [:]
    var queued: [Int] = []
    var outstanding = 0
    /// Resizes waiting for the workers they ordered (``Pool/settleResizeWaiters()``).
    var resizeWaiters: [ResizeWaiter] = []
    /// Orders sent and not yet answered, at most: more wait in `queued`. The template forks
    /// one at a time; the bound keeps the descriptors in flight few.
    static let maxOutstanding = 32
}

/// A worker ordered from the template for a slot, until it announces itself.
struct PendingFork {
    enum Purpose {
        /// A worker for an empty slot; `restart`: it replaces one that died.
        case start(restart: Bool)
        /// The replacement of the slot's worker `oldPID` (``Pool/recycle(slot:reason:fork:)``).
        case recycle(oldPID: pid_t, reason: String)
    }
    var purpose: Purpose
    /// The spawner's generation when ordered: a worker of an older executable is not kept.
    let generation: Int
    /// The supervisor's end of the new worker's channel once the order is sent (-1: queued).
    var channel: CInt = -1
    var registration: Reactor.Registration?
    var timer: Reactor.Timer?
    /// The order went unanswered for `forkTimeout` once (the template was abandoned then).
    var expired = false
}

extension Pool {
    // MARK: Forking through the template

    /// Orders a worker for slot `i` from the template, when one is ready: the order is sent
    /// (or queued behind ``TemplateSupervision/maxOutstanding`` others) and the reactor goes on;
    /// the worker is installed when it announces its pid on its channel (``forkAnswered(slot:)``),
    /// or started with exec if no child comes of the order. Returns whether the fork is pending
    /// (`false`: no template is ready, or the order could not be sent: use exec now).
    func orderFork(slot i: Int, _ purpose: PendingFork.Purpose) -> Bool {
        if var p = template.pending[i] {
            // Already on its way (a slot retired and taken back, a recycle whose worker died):
            // the coming worker serves; a start supersedes a recycle.
            if case .start = purpose { p.purpose = purpose; template.pending[i] = p }
            return true
        }
        guard config.template != nil else { return false }
        guard let r = template.running else {
            // None runs and none is due: the first spawn after a reload, say.
            if template.restartTimer == nil, template.refusedGeneration != spawner.generation { startTemplate() }
            return false
        }
        if r.generation != spawner.generation {
            abandonTemplate("the executable was reloaded: a new template starts")
            return false
        }
        guard r.state == .ready else { return false }
        template.pending[i] = PendingFork(purpose: purpose, generation: r.generation)
        guard template.outstanding < TemplateSupervision.maxOutstanding else {
            template.queued.append(i)
            return true
        }
        if sendForkOrder(slot: i) { return true }
        template.pending[i] = nil
        return false
    }

    /// Sends the fork order of pending slot `i` and watches the new worker's channel.
    /// `false`: not sent (the template is abandoned).
    private func sendForkOrder(slot i: Int) -> Bool {
        guard let settings = config.template, let r = template.running, r.state == .ready, var p = template.pending[i] else {
            return false
        }
        let pair: DescriptorPair
        do { pair = try Sys.socketpair(flags: CInt(SOCK_NONBLOCK.rawValue)) } catch {
            // Out of descriptors, say: exec fails the same way and reports it.
            return false
        }
        let parentEnd = pair.first, childEnd = pair.second
        let sent = TemplateMessage(.fork, Int32(truncatingIfNeeded: i)).send(on: r.channel, passing: childEnd.rawValue)
        childEnd.close()
        guard sent else {
            parentEnd.close()
            abandonTemplate("a fork order could not be sent")
            return false
        }
        let fd = parentEnd.release()
        do {
            p.registration = try reactor.register(fd, interest: .readable) { [unowned self] _ in
                self.forkAnswered(slot: i)
                self.settleResizeWaiters()
                self.deliver()
            }
            p.timer = try reactor.schedule(after: settings.forkTimeout) { [unowned self] in
                self.forkTimedOut(slot: i)
                self.settleResizeWaiters()
                self.deliver()
            }
        } catch {
            // Cannot watch the order (a closed reactor): its child, if any, is reaped here.
            if let registration = p.registration { try? reactor.deregister(registration) }  // current: cannot fail
            resolveBlocking(fd, milliseconds: settings.forkTimeout)
            return false
        }
        p.channel = fd
        template.pending[i] = p
        template.outstanding += 1
        return true
    }

    /// Sends queued orders while fewer than the bound are outstanding.
    private func sendQueuedForkOrders() {
        while template.outstanding < TemplateSupervision.maxOutstanding, !template.queued.isEmpty {
            let i = template.queued.removeFirst()
            if template.pending[i] != nil, !sendForkOrder(slot: i), let p = template.pending.removeValue(forKey: i) {
                forkFellThrough(slot: i, p)
            }
        }
    }

    /// Ends the watch of slot `i`'s outstanding order; returns it (its channel still open).
    private func takeOrder(slot i: Int) -> PendingFork? {
        guard let p = template.pending.removeValue(forKey: i) else { return nil }
        if let registration = p.registration { try? reactor.deregister(registration) }  // current: cannot fail
        if let t = p.timer { reactor.cancel(t) }
        if p.channel >= 0 { template.outstanding -= 1 }
        return p
    }

    /// The channel of slot `i`'s order is readable: the new worker's pid, or its end of file
    /// (no child: the template closed its copy, and says why on its own channel).
    private func forkAnswered(slot i: Int) {
        guard let fd = template.pending[i]?.channel, fd >= 0 else { return }
        var message: TemplateMessage?
        let result = withUnsafeTemporaryAllocation(byteCount: TemplateMessage.size, alignment: 4) { buffer -> IOResult<Int>? in
            let result = try? Sys.read(fd, buffer)
            if case .processed(TemplateMessage.size)? = result { message = TemplateMessage.decode(UnsafeRawBufferPointer(buffer)) }
            return result
        }
        if case .wouldBlock? = result { return }  // spurious readiness
        guard let p = takeOrder(slot: i) else { return }
        defer { sendQueuedForkOrders() }
        guard let message, message.kind == .forked, Sys.isChild(message.a) else {
            FileDescriptor.closeRaw(fd)
            return forkFellThrough(slot: i, p)
        }
        adopt(pid: message.a, channel: fd, slot: i, p)
    }

    /// Slot `i`'s order got no answer within `forkTimeout`: the template is abandoned (killed:
    /// its copy of the channel closes, and a child it forked announces itself all the same);
    /// after another `forkTimeout`, the order is given up and the slot uses exec.
    private func forkTimedOut(slot i: Int) {
        guard var p = template.pending[i], p.channel >= 0, let settings = config.template else { return }
        p.timer = nil
        template.pending[i] = p
        if !p.expired, let r = template.running, r.generation == p.generation, r.state != .dying {
            p.expired = true
            p.timer = try? reactor.schedule(after: settings.forkTimeout) { [unowned self] in
                self.forkTimedOut(slot: i)
                self.settleResizeWaiters()
                self.deliver()
            }
            template.pending[i] = p
            abandonTemplate("no answer to a fork order within \(settings.forkTimeout)")
            if p.timer != nil { return }
        }
        guard let p = takeOrder(slot: i) else { return }
        FileDescriptor.closeRaw(p.channel)
        forkFellThrough(slot: i, p)
        sendQueuedForkOrders()
    }

    /// A forked worker announced itself for slot `i`: it takes the slot if the slot still wants
    /// it, else it is killed and reaped.
    private func adopt(pid: pid_t, channel: CInt, slot i: Int, _ p: PendingFork) {
        let wanted = phase == .running && slots[i].membership == .active && p.generation == spawner.generation
        if wanted, case .recycle(let oldPID, let reason) = p.purpose, let old = slots[i].process {
            if old.pid == oldPID, old.lifecycle.isServing {
                pinForked(pid, slot: i)
                replace(old, slot: i, with: (pid, channel), reason: reason)
                return
            }
        } else if wanted, slots[i].process == nil {
            pinForked(pid, slot: i)
            do {
                try install(slot: i, (pid, channel))
            } catch {
                slots[i].membership = .down
                emit(.workerSpawnFailed(slot: i, reason: error.message))
                if !hasLiveWorker { noWorkersLeft() }
                return
            }
            if case .start(restart: true) = p.purpose { emit(.workerRestarted(slot: i, pid: pid)) }
            return
        }
        Sys.killAndReap(pid)
        FileDescriptor.closeRaw(channel)
        if phase == .running, p.generation != spawner.generation { forkFellThrough(slot: i, p) }
    }

    private func pinForked(_ pid: pid_t, slot i: Int) {
        // Best effort, as for a spawned worker.
        if let cpu = cpu(forSlot: i) { try? Sys.pin(pid, toCPU: cpu) }
    }

    /// No worker came of slot `i`'s order: the slot gets one with exec, if it still wants one.
    private func forkFellThrough(slot i: Int, _ p: PendingFork) {
        guard phase == .running, slots[i].membership == .active else { return }
        switch p.purpose {
        case .recycle(let oldPID, let reason):
            if let old = slots[i].process {
                if old.pid == oldPID { recycle(slot: i, reason: reason, fork: false) }
                return
            }
            _ = spawnOrMarkDown(slot: i, fork: false)
        case .start(let restart):
            guard slots[i].process == nil else { return }
            if spawnOrMarkDown(slot: i, restart: restart, fork: false) != nil, restart { scheduleComeback(slot: i) }
        }
        if !hasLiveWorker { noWorkersLeft() }
        pump()
    }

    /// Waits (blocking, at most `milliseconds`) for an order's answer on `fd`: a child that
    /// announces itself is killed and reaped. Closes `fd`. For the pool's stop only.
    private func resolveBlocking(_ fd: CInt, milliseconds timeout: Duration) {
        let (seconds, attoseconds) = timeout.components
        let milliseconds = max(1, Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000))
        if Sys.waitReadable(fd, milliseconds: milliseconds), let pid = announcedChild(fd) { Sys.killAndReap(pid) }
        FileDescriptor.closeRaw(fd)
    }

    /// Reads a forked worker's first message on its channel `fd` (readable): its pid, if it is
    /// a child of this process; `nil` at end of file, or for anything else.
    private func announcedChild(_ fd: CInt) -> pid_t? {
        let message = withUnsafeTemporaryAllocation(byteCount: TemplateMessage.size, alignment: 4) { buffer -> TemplateMessage? in
            guard case .processed(TemplateMessage.size)? = try? Sys.read(fd, buffer) else { return nil }
            return TemplateMessage.decode(UnsafeRawBufferPointer(buffer))
        }
        guard let message, message.kind == .forked, Sys.isChild(message.a) else { return nil }
        return message.a
    }

    /// Whether a fork for an active slot is on its way (the pool then has a worker coming).
    var hasPendingFork: Bool { template.pending.keys.contains { slots[$0].membership == .active } }

    /// The template's channel is readable once it is ready: a refusal or a failed fork (it says
    /// nothing when a fork succeeds), or its end.
    private func templateAnswers() {
        while let r = template.running, r.state == .ready {
            let (result, answer) = readTemplateMessage(r.channel)
            switch result {
            case .wouldBlock?: return
            case .processed(0)?, nil: return abandonTemplate("it closed its channel")
            case .processed?: break
            }
            switch answer?.kind {
            case .unsupported?:
                return abandonTemplate(Self.unsupportedReason, refuse: true)
            case .refusedThreads?:
                return abandonTemplate("it runs \(answer!.a) threads (its preload started them): a template forks only while single-threaded",
                                       refuse: true)
            case .failed?:
                // A fork the kernel refused (EAGAIN, ENOMEM): this slot uses exec, the template stays.
                config.logger.warning("worker template could not fork: worker started with exec", metadata: [
                    "slot": "\(answer!.b)", "reason": "\(Errno(rawValue: answer!.a))"])
            default:
                return abandonTemplate("a malformed answer to a fork order")
            }
        }
    }

    private static let unsupportedReason = "the thread id cached by glibc (_thread_db_pthread_tid) or libdispatch cannot be found: a forked worker would keep the template's"

    // MARK: The template's life

    /// At start: starts the template, and the first workers wait for it. Returns whether they
    /// wait (`false`: no template configured, or it could not be started: use exec).
    func startTemplateDeferringWorkers() -> Bool {
        guard config.template != nil, startTemplate() else { return false }
        template.deferringStart = true
        return true
    }

    /// Spawns the template (with exec) and waits for its hello on the reactor.
    @discardableResult
    func startTemplate() -> Bool {
        guard let settings = config.template, phase == .running, template.running == nil else { return false }
        if let t = template.restartTimer { reactor.cancel(t); template.restartTimer = nil }
        let spawned: (pid: pid_t, channel: CInt)
        do { spawned = try spawner.spawnTemplate() } catch {
            templateUnavailable(pid: 0, "the template could not be started: \(error)")
            scheduleTemplateRestart()
            return false
        }
        var r = TemplateSupervision.Running(pid: spawned.pid, channel: spawned.channel, generation: spawner.generation)
        do {
            let pidfd = try Sys.pidfdOpen(spawned.pid).release()
            r.watch = try reactor.watchPidfd(pidfd, pid: spawned.pid) { [unowned self] status in
                self.templateExited(pid: spawned.pid, status)
                self.deliver()
            }
            r.registration = try reactor.register(spawned.channel, interest: .readable) { [unowned self] _ in
                if self.template.running?.state == .starting { self.templateHello() } else { self.templateAnswers() }
                self.deliver()
            }
            r.startTimer = try reactor.schedule(after: settings.startTimeout) { [unowned self] in
                self.template.running?.startTimer = nil
                self.abandonTemplate("it did not finish its preload within \(settings.startTimeout)")
                self.deliver()
            }
        } catch {
            // Cannot watch it: kill and reap it here (as for a worker), and use exec.
            if let registration = r.registration { try? reactor.deregister(registration) }
            if let watch = r.watch { try? reactor.unwatchChild(watch) }
            Sys.killAndReap(spawned.pid)
            FileDescriptor.closeRaw(spawned.channel)
            templateUnavailable(pid: spawned.pid, "the template could not be watched: \(error)")
            return false
        }
        template.running = r
        config.logger.info("worker template started: preloading", metadata: ["pid": "\(spawned.pid)"])
        return true
    }

    /// One read of a message from the template's channel: the read's result (`nil`: it failed),
    /// and the message when a whole one came.
    private func readTemplateMessage(_ channel: CInt) -> (IOResult<Int>?, TemplateMessage?) {
        var message: TemplateMessage?
        let result = withUnsafeTemporaryAllocation(byteCount: TemplateMessage.size, alignment: 4) { buffer -> IOResult<Int>? in
            let result = try? Sys.read(channel, buffer)
            if case .processed(TemplateMessage.size)? = result { message = TemplateMessage.decode(UnsafeRawBufferPointer(buffer)) }
            return result
        }
        return (result, message)
    }

    /// The template's channel is readable while it starts: its hello, or the end of its channel.
    private func templateHello() {
        guard var r = template.running, r.state == .starting else { return }
        let (result, hello) = readTemplateMessage(r.channel)
        switch result {
        case .wouldBlock?:
            return  // spurious readiness
        case .processed(0)?, nil:
            // It died before its hello (its preload crashed?): its exit, reported by its pidfd,
            // says how, and it is restarted.
            return abandonTemplate("it closed its channel before it was ready")
        case .processed?:
            if hello?.kind == .unsupported { return abandonTemplate(Self.unsupportedReason, refuse: true) }
            guard let hello, hello.kind == .hello, hello.a == r.pid else {
                return abandonTemplate("it is not a worker template (\(config.executable.path) does not use LoadProcessManagerWorker's Worker, or an older one)",
                                       refuse: true)
            }
            if hello.b > 1 {
                return abandonTemplate("it runs \(hello.b) threads after its preload: a template forks only while single-threaded",
                                       refuse: true)
            }
        }
        // Its channel stays watched: refusals and failed forks arrive on it.
        if let t = r.startTimer { reactor.cancel(t) }
        r.startTimer = nil
        r.state = .ready
        template.running = r
        template.deathsInRow = 0
        emit(.templateReady(pid: r.pid))
        spawnDeferredWorkers()
    }

    /// Ends the template's start-up watch (its channel's registration and its start timer) and
    /// records it in `state`.
    private func settleTemplate(_ r: inout TemplateSupervision.Running, as state: TemplateSupervision.State) {
        if let registration = r.registration { try? reactor.deregister(registration) }  // current: cannot fail
        if let t = r.startTimer { reactor.cancel(t) }
        r.registration = nil
        r.startTimer = nil
        r.state = state
        template.running = r
    }

    /// Gives up on the running template: it is killed (its exit is reported by its pidfd, and
    /// it is restarted then unless `refuse`), and workers are started with exec meanwhile.
    func abandonTemplate(_ reason: String, refuse: Bool = false) {
        guard var r = template.running, r.state != .dying else { return }
        settleTemplate(&r, as: .dying)
        if let watch = r.watch { try? reactor.signalChild(watch, SIGKILL) }  // already reaped: nothing to kill
        if refuse { template.refusedGeneration = r.generation }
        templateUnavailable(pid: r.pid, reason)
        // Orders not sent yet use exec; those sent end when the template's copies of their
        // channels close (no child), or with the child's pid.
        let queued = template.queued
        template.queued = []
        for i in queued {
            if let p = template.pending.removeValue(forKey: i) { forkFellThrough(slot: i, p) }
        }
        settleResizeWaiters()
    }

    /// The template was reaped.
    private func templateExited(pid: pid_t, _ status: Reactor.ExitStatus) {
        guard let r = template.running, r.pid == pid else { return }
        if let registration = r.registration { try? reactor.deregister(registration) }  // current: cannot fail
        if let t = r.startTimer { reactor.cancel(t) }
        FileDescriptor.closeRaw(r.channel)
        template.running = nil
        if r.state != .dying { templateUnavailable(pid: pid, "it \(status)") }
        guard phase == .running else { return }
        if r.generation != spawner.generation {
            // Replaced after a reload: the new executable's template starts now.
            template.deathsInRow = 0
            startTemplate()
        } else if template.refusedGeneration != r.generation {
            scheduleTemplateRestart()
        }
    }

    private func templateUnavailable(pid: pid_t, _ reason: String) {
        emit(.templateUnavailable(pid: pid, reason: reason))
        spawnDeferredWorkers()
    }

    /// Starts the template again after the restart delay (doubled with each death in a row).
    private func scheduleTemplateRestart() {
        guard let settings = config.template, phase == .running, template.restartTimer == nil else { return }
        let delay = min(settings.maxRestartDelay, settings.restartDelay * (1 << min(template.deathsInRow, 30)))
        template.deathsInRow += 1
        // A delay the reactor refuses (a closed reactor): no restart, workers use exec.
        template.restartTimer = try? reactor.schedule(after: delay) { [unowned self] in
            self.template.restartTimer = nil
            self.startTemplate()
            self.deliver()
        }
    }

    /// The first workers, held back at start while the template preloaded: forked now if it is
    /// ready, else started with exec.
    private func spawnDeferredWorkers() {
        guard template.deferringStart else { return }
        template.deferringStart = false
        guard phase == .running else { return }
        for i in slots.indices where slots[i].membership == .active && slots[i].process == nil && slots[i].comeback == nil
            && template.pending[i] == nil {
            _ = spawnOrMarkDown(slot: i)
        }
        if !hasLiveWorker { noWorkersLeft() }
        pump()
    }

    /// When the pool stops: the template is killed and reaped, and no restart is due.
    /// Orders still outstanding are settled here: a child that announces itself is killed and
    /// reaped (the template, dead, holds no copy of their channels any more).
    func stopTemplate() {
        template.deferringStart = false
        if let t = template.restartTimer { reactor.cancel(t); template.restartTimer = nil }
        if let r = template.running {
            template.running = nil
            if let registration = r.registration { try? reactor.deregister(registration) }  // current: cannot fail
            if let t = r.startTimer { reactor.cancel(t) }
            if let watch = r.watch { try? reactor.unwatchChild(watch) }  // current: cannot fail
            Sys.killAndReap(r.pid)
            FileDescriptor.closeRaw(r.channel)
        }
        template.queued = []
        for i in Array(template.pending.keys) {
            guard let p = takeOrder(slot: i), p.channel >= 0 else { continue }
            resolveBlocking(p.channel, milliseconds: config.template?.forkTimeout ?? .seconds(1))
        }
        settleResizeWaiters()
    }

    /// The template's pid while it runs and is ready to fork (tests and benchmarks).
    var readyTemplatePID: pid_t? {
        guard let r = template.running, r.state == .ready else { return nil }
        return r.pid
    }
}
