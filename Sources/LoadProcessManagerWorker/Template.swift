import Glibc
import LPMReactor

/// The template mode of the worker runtime: a worker executable started by the supervisor with
/// `LPM_TEMPLATE=1` (`SupervisorConfiguration.template`) runs its preload once, then forks
/// workers on order, each a copy of the warm process that shares its pages copy-on-write.
///
/// The template's descriptor 3 is its channel to the supervisor (16-byte ``TemplateMessage``s).
/// It announces itself with a hello, then, for each fork order: checks that it is still
/// single-threaded (refuses the order otherwise: a fork copies only the calling thread, so a
/// lock held by another thread would stay held in the child), forks with
/// `clone(CLONE_PARENT)` (the child is the supervisor's own child), and closes its copy of the
/// child's channel. The child's first message, on its own channel, is its pid: the supervisor
/// hears of every child it has, even if the template dies right after the fork. It never handles requests, and exits at the
/// end of file of its channel (the supervisor is gone) or with the supervisor
/// (`PR_SET_PDEATHSIG`, set at its spawn).
///
/// The child returns from ``serve()`` into ``Worker/init(backend:)`` as if freshly started:
/// its channel on descriptor 3, every other descriptor from 4 up closed, signal dispositions
/// and mask as the process had them before its preload, `PR_SET_PDEATHSIG`, a process group
/// of its own, `LPM_WORKER_SLOT` set and `LPM_TEMPLATE` unset.
enum Template {
    // Written once, on the main thread, before any fork (the template is single-threaded
    // whenever it forks, and a worker started by exec never reads them concurrently).
    nonisolated(unsafe) static var savedDispositions: [sigaction]?
    nonisolated(unsafe) static var forked = false

    /// Whether this process was started as a template.
    static var isTemplate: Bool { getenv(TemplateMessage.environmentKey) != nil }

    /// Saves the signal dispositions the process has now, once, for the forked workers.
    static func saveDispositionsOnce() {
        if savedDispositions == nil { savedDispositions = Sys.signalDispositions() }
    }

    /// Serves fork orders on descriptor 3. Returns only in a forked worker.
    static func serve() {
        saveDispositionsOnce()
        let fd: CInt = 3
        // The supervisor made both ends non-blocking; the template sleeps in recvmsg.
        do { try Sys.setBlocking(fd) } catch { die("template: \(error)", 71) }
        let threads = Int32(Sys.threadCount() ?? 0)
        // A process whose glibc thread descriptor cannot be found does not fork (each order is
        // refused the same way).
        let hello = Sys.threadIDsToCorrect() == nil ? TemplateMessage(.unsupported, 0) : TemplateMessage(.hello, getpid(), threads)
        guard hello.send(on: fd) else { _exit(0) }
        // The kernel's record of the main thread's robust mutexes: a fork's child starts with
        // none, and registers this one again.
        let robustList = Sys.robustList()
        // The dispositions the preload changed (the template changes none after it): a forked
        // worker sets back these only, not every signal's.
        let changedSignals = savedDispositions.map { Sys.signalsChanged(since: $0) } ?? []
        // A test hook: what the template does right after each fork ("die": SIGKILL itself;
        // "stall": stop answering), to prove that the supervisor learns the worker's pid anyway.
        let afterFork = getenv("LPM_TEMPLATE_TEST_AFTER_FORK").map { String(cString: $0) }
        let control = ControlBuffer()
        var received: [CInt] = []
        while true {
            received.removeAll(keepingCapacity: true)
            let result = withUnsafeTemporaryAllocation(byteCount: TemplateMessage.size, alignment: 4) { buffer in
                (try? control.receive(fd, into: buffer, descriptors: &received)).map { result -> TemplateMessage?? in
                    guard case .processed(let r) = result, r.count > 0 else { return .some(nil) }
                    guard r.count == TemplateMessage.size else { return nil }
                    return TemplateMessage.decode(UnsafeRawBufferPointer(buffer))
                } ?? nil
            }
            // End of file or a failed receive: the supervisor is gone.
            guard let message = result else { _exit(0) }
            guard let order = message, order.kind == .fork, received.count == 1 else {
                die("template: malformed fork order", 76)
            }
            let channel = received[0]
            if let count = Sys.threadCount(), count > 1 {
                FileDescriptor.closeRaw(channel)
                guard TemplateMessage(.refusedThreads, Int32(count), order.a).send(on: fd) else { _exit(0) }
                continue
            }
            // Checked before each fork: the kernel writes the child's thread id there.
            guard let threadIDs = Sys.threadIDsToCorrect() else {
                FileDescriptor.closeRaw(channel)
                guard TemplateMessage(.unsupported, 0, order.a).send(on: fd) else { _exit(0) }
                continue
            }
            let pid: pid_t
            do { pid = try Sys.forkSibling(threadID: threadIDs.glibc) } catch {
                FileDescriptor.closeRaw(channel)
                guard TemplateMessage(.failed, error.errno.rawValue, order.a).send(on: fd) else { _exit(0) }
                continue
            }
            if pid == 0 { return becomeWorker(channel: channel, slot: Int(order.a), threadIDs: threadIDs, robustList: robustList,
                                                 changedSignals: changedSignals) }
            switch afterFork {
            case "die"?: kill(getpid(), SIGKILL)
            case "stall"?: while true { pause() }
            default: break
            }
            // The worker announces itself on its own channel; the template's order is done.
            FileDescriptor.closeRaw(channel)
        }
    }

    /// In the child: the state a spawned worker starts with.
    private static func becomeWorker(channel: CInt, slot: Int, threadIDs: Sys.ThreadIDs,
                                     robustList: (head: UnsafeMutableRawPointer?, length: Int), changedSignals: [CInt]) {
        // glibc's thread descriptor already holds this process's thread id (the kernel wrote it
        // at the fork); libdispatch's is corrected, and the robust list registered again, as
        // glibc's fork and its atfork handlers do.
        threadIDs.correctInChild()
        Sys.setRobustList(robustList)
        // First of all, its pid to the supervisor (its parent): from then on, it is watched and
        // reaped whatever becomes of the template. Not heard: the supervisor gave up on this
        // fork, and nothing would ever read this worker's channel.
        guard TemplateMessage(.forked, getpid()).send(on: channel) else { _exit(0) }
        forked = true
        if let saved = savedDispositions { Sys.restoreSignalDispositions(saved, signals: changedSignals) }
        do {
            // The supervisor is the parent (CLONE_PARENT); die with it, and check it did not
            // die before the call took effect (then this process was reparented).
            try Sys.setParentDeathSignal(SIGKILL)
            if let parent = getenv("LPM_PARENT_PID").flatMap({ pid_t(String(cString: $0)) }), getppid() != parent { _exit(0) }
            try Sys.leadOwnProcessGroup()
            // The worker's channel replaces the template's on 3; nothing else of the template's
            // stays open (the preload's mappings do, its descriptors do not).
            try Sys.duplicate(channel, onto: 3)
            try Sys.closeDescriptors(from: 4)
        } catch {
            die("forked worker: \(error)", 71)
        }
        setenv("LPM_WORKER_SLOT", String(slot), 1)
        unsetenv(TemplateMessage.environmentKey)
    }

    private static func die(_ text: String, _ code: CInt) -> Never {
        Sys.writeToStandardError("\(CommandLine.arguments.first ?? "worker") (\(getpid())): \(text)\n")
        _exit(code)
    }
}

extension Worker {
    /// Runs `body` now, on the calling thread, before ``connect(backend:)``: the place to load
    /// what every worker needs and is slow to build (a model, a parsed configuration, warm
    /// caches).
    ///
    /// With a worker template (`SupervisorConfiguration.template` in the supervisor), the
    /// preload runs once, in the template, and every worker is forked from it afterwards:
    /// the loaded pages are shared copy-on-write and a new worker is ready in well under a
    /// millisecond. Without one, it runs in each worker, as any code before `connect()` would.
    ///
    /// - Warning: The template forks only while it has a single thread. A preload must not
    ///   start threads (no `Task` on the cooperative pool, no Dispatch queue other than main,
    ///   no thread of a library), must not hold a lock when it returns, and must not rely on
    ///   descriptors: a forked worker keeps the preload's memory (mappings included) but not
    ///   its descriptors (every descriptor from 4 up is closed). A template with more than
    ///   one thread refuses to fork and the supervisor starts workers with exec instead.
    public static func preload(_ body: () throws -> Void) rethrows {
        Template.saveDispositionsOnce()
        try body()
    }

    /// Whether this worker was forked from a template (``preload(_:)``) rather than started
    /// with exec.
    public static var isForkedFromTemplate: Bool { Template.forked }
}
