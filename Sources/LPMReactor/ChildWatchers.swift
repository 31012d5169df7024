import Glibc  // pid_t only: no C call is made here

/// The reactor's watched child processes, by the registration index of their pidfd.
struct ChildWatchers {
    typealias Handler = (Reactor.ExitStatus) -> Void

    struct Child {
        var pid: pid_t
        var pidfd: CInt
        var handler: Handler
    }

    private var children: [UInt32: Child] = [:]

    /// Records a child whose pidfd is registered as `registration`.
    mutating func add(_ child: Child, registration: Reactor.Registration) {
        children[registration.index] = child
    }

    /// The child a watch names, if still watched.
    func child(_ watch: Reactor.ChildWatch) -> Child? {
        guard let child = children[watch.registration.index], child.pid == watch.pid else { return nil }
        return child
    }

    /// The child whose pidfd has registration `r`, if watched.
    func child(registration r: Reactor.Registration) -> Child? { children[r.index] }

    /// Forgets the child whose pidfd has registration `r`.
    mutating func remove(registration r: Reactor.Registration) { children[r.index] = nil }

    /// Closes every pidfd (reaping none) and forgets them.
    mutating func removeAll() {
        for (_, child) in children { FileDescriptor.closeRaw(child.pidfd) }
        children.removeAll()
    }
}
