import Glibc  // pid_t only: no C call is made here

/// The reactor's watched child processes, by the registration index of their pidfd.
struct ChildWatchers {
    typealias Handler = (Reactor.ExitStatus) -> Void

    struct Child {
        var pid: pid_t
        var pidfd: CInt
        var handler: Handler
        /// `pidfd` is a stand-in (`pidfd_open` refused, see `Sys.pidfdOpen`): the exit comes
        /// through `SIGCHLD` and `waitid(P_PID)`.
        var standIn = false
    }

    private var children: [UInt32: Child] = [:]
    /// The registrations of the children watched through stand-ins.
    private var standIns: [UInt32: Reactor.Registration] = [:]
    /// The reactor's `SIGCHLD` watch, while any child is watched through a stand-in.
    var sigchldWatch: Reactor.SignalWatch?

    /// Whether any child is watched through a stand-in.
    var hasStandIns: Bool { !standIns.isEmpty }

    /// The children watched through stand-ins, with their registrations.
    func standInChildren() -> [(Reactor.Registration, Child)] {
        standIns.values.compactMap { r in children[r.index].map { (r, $0) } }
    }

    /// Records a child whose pidfd is registered as `registration`.
    mutating func add(_ child: Child, registration: Reactor.Registration) {
        children[registration.index] = child
        if child.standIn { standIns[registration.index] = registration }
    }

    /// The child a watch names, if still watched.
    func child(_ watch: Reactor.ChildWatch) -> Child? {
        guard let child = children[watch.registration.index], child.pid == watch.pid else { return nil }
        return child
    }

    /// The child whose pidfd has registration `r`, if watched.
    func child(registration r: Reactor.Registration) -> Child? { children[r.index] }

    /// Forgets the child whose pidfd has registration `r`.
    mutating func remove(registration r: Reactor.Registration) {
        children[r.index] = nil
        standIns[r.index] = nil
    }

    /// Closes every pidfd (reaping none) and forgets them.
    mutating func removeAll() {
        for (_, child) in children { FileDescriptor.closeRaw(child.pidfd) }
        children.removeAll()
        standIns.removeAll()
        sigchldWatch = nil  // (the signal watchers are cleared by their own removeAll)
    }
}
