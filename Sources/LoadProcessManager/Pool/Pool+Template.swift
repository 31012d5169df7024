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
}

extension Pool {
    // MARK: Spawning through the template

    /// Starts a worker for `slot`: forked from the template when one is ready, else with exec.
    func spawnProcess(cpu: Int?, slot: Int) throws(SyscallError) -> (pid: pid_t, channel: CInt) {
        if config.template != nil, let forked = forkFromTemplate(slot: slot) {
            if let cpu {
                // Best effort, as for a spawned worker.
                try? Sys.pin(forked.pid, toCPU: cpu)
            }
            return forked
        }
        return try spawner.spawn(cpu: cpu, slot: slot)
    }

    /// Orders the template to fork a worker for `slot`, and waits for its answer (as the
    /// thread waits for an exec: a fork of the template takes a fraction of that). `nil`: use
    /// exec (no template ready, or it failed; the pool has said why).
    private func forkFromTemplate(slot: Int) -> (pid: pid_t, channel: CInt)? {
        guard let settings = config.template else { return nil }
        guard let r = template.running else {
            // None runs and none is due: the first spawn after a reload, say.
            if template.restartTimer == nil, template.refusedGeneration != spawner.generation { startTemplate() }
            return nil
        }
        if r.generation != spawner.generation {
            abandonTemplate("the executable was reloaded: a new template starts")
            return nil
        }
        guard r.state == .ready else { return nil }
        let pair: DescriptorPair
        do { pair = try Sys.socketpair(flags: CInt(SOCK_NONBLOCK.rawValue)) } catch {
            // Out of descriptors, say: exec fails the same way and reports it.
            return nil
        }
        let parentEnd = pair.first, childEnd = pair.second
        let sent = TemplateMessage(.fork, Int32(truncatingIfNeeded: slot)).send(on: r.channel, passing: childEnd.rawValue)
        childEnd.close()
        guard sent else {
            parentEnd.close()
            abandonTemplate("a fork order could not be sent")
            return nil
        }
        let (seconds, attoseconds) = settings.forkTimeout.components
        let milliseconds = max(1, Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000))
        // The child says its pid on its own channel; the template speaks only when no child
        // was forked (a refusal, a failed fork). End of file on the child's channel: no child
        // (the template closed its copy of it), and the template says why.
        var answer: TemplateMessage?
        var childEnded = false
        if let readable = Sys.waitReadable(parentEnd.rawValue, r.channel, milliseconds: milliseconds) {
            if readable.first {
                if let pid = announcedChild(parentEnd.rawValue) { return (pid, parentEnd.release()) }
                childEnded = true
            }
            if readable.second || Sys.waitReadable(r.channel, milliseconds: milliseconds) {
                answer = withUnsafeTemporaryAllocation(byteCount: TemplateMessage.size, alignment: 4) { buffer in
                    guard case .processed(TemplateMessage.size)? = try? Sys.read(r.channel, buffer) else { return nil }
                    return TemplateMessage.decode(UnsafeRawBufferPointer(buffer))
                }
            }
        }
        switch answer?.kind {
        case .refusedThreads?:
            parentEnd.close()
            abandonTemplate("it runs \(answer!.a) threads (its preload started them): a template forks only while single-threaded",
                            refuse: true)
        case .failed?:
            parentEnd.close()
            // A fork the kernel refused (EAGAIN, ENOMEM): this spawn uses exec, the template stays.
            config.logger.warning("worker template could not fork: worker started with exec", metadata: [
                "slot": "\(slot)", "reason": "\(Errno(rawValue: answer!.a))"])
        default:
            // Dead, stalled or confused: the template is killed. A child it forked before is
            // ours all the same: its pid arrives on its channel (or the channel ends once the
            // template's copy is closed: no child), and it serves as this slot's worker.
            abandonTemplate(answer == nil ? "no answer to a fork order within \(settings.forkTimeout)" : "a malformed answer to a fork order")
            if !childEnded, Sys.waitReadable(parentEnd.rawValue, milliseconds: milliseconds),
               let pid = announcedChild(parentEnd.rawValue) {
                config.logger.info("worker forked before its template was abandoned: kept", metadata: [
                    "slot": "\(slot)", "pid": "\(pid)"])
                return (pid, parentEnd.release())
            }
            parentEnd.close()
        }
        return nil
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
                self.templateHello()
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

    /// The template's channel is readable while it starts: its hello, or the end of its channel.
    private func templateHello() {
        guard var r = template.running, r.state == .starting else { return }
        var hello: TemplateMessage?
        let result = withUnsafeTemporaryAllocation(byteCount: TemplateMessage.size, alignment: 4) { buffer -> IOResult<Int>? in
            let result = try? Sys.read(r.channel, buffer)
            if case .processed(TemplateMessage.size)? = result { hello = TemplateMessage.decode(UnsafeRawBufferPointer(buffer)) }
            return result
        }
        switch result {
        case .wouldBlock?:
            return  // spurious readiness
        case .processed(0)?, nil:
            // It died before its hello (its preload crashed?): its exit, reported by its pidfd,
            // says how, and it is restarted.
            return abandonTemplate("it closed its channel before it was ready")
        case .processed?:
            guard let hello, hello.kind == .hello, hello.a == r.pid else {
                return abandonTemplate("it is not a worker template (\(config.executable.path) does not use LoadProcessManagerWorker's Worker, or an older one)",
                                       refuse: true)
            }
            if hello.b > 1 {
                return abandonTemplate("it runs \(hello.b) threads after its preload: a template forks only while single-threaded",
                                       refuse: true)
            }
        }
        settleTemplate(&r, as: .ready)
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
        for i in slots.indices where slots[i].membership == .active && slots[i].process == nil && slots[i].comeback == nil {
            _ = spawnOrMarkDown(slot: i)
        }
        if !hasLiveWorker { noWorkersLeft() }
        pump()
    }

    /// When the pool stops: the template is killed and reaped, and no restart is due.
    func stopTemplate() {
        template.deferringStart = false
        if let t = template.restartTimer { reactor.cancel(t); template.restartTimer = nil }
        guard let r = template.running else { return }
        template.running = nil
        if let registration = r.registration { try? reactor.deregister(registration) }  // current: cannot fail
        if let t = r.startTimer { reactor.cancel(t) }
        if let watch = r.watch { try? reactor.unwatchChild(watch) }  // current: cannot fail
        Sys.killAndReap(r.pid)
        FileDescriptor.closeRaw(r.channel)
    }

    /// The template's pid while it runs and is ready to fork (tests and benchmarks).
    var readyTemplatePID: pid_t? {
        guard let r = template.running, r.state == .ready else { return nil }
        return r.pid
    }
}
