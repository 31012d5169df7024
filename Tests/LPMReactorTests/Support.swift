import CLoop
import Glibc
import LPMReactor
import LPMTestSupport
import Synchronization
import Testing

/// Backends the kernel here accepts; io_uring is left out, with a printed reason, where refused.
let availableBackends: [Reactor.Backend] = {
    var result: [Reactor.Backend] = [.epoll]
    do {
        let r = try Reactor(backend: .only(.uring))
        r.close()
        result.append(.uring)
    } catch {
        print("note: io_uring backend skipped: \(error)")
    }
    return result
}()

func makePipe() -> (CInt, CInt) {
    var fds: [CInt] = [-1, -1]
    precondition(pipe2(&fds, O_CLOEXEC | O_NONBLOCK) == 0)
    return (fds[0], fds[1])
}

func makeSocketPair() -> (CInt, CInt) {
    var fds: [CInt] = [-1, -1]
    precondition(socketpair(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue) | CInt(SOCK_NONBLOCK.rawValue), 0, &fds) == 0)
    return (fds[0], fds[1])
}

func writeByte(_ fd: CInt, _ b: UInt8 = 0x41) {
    var b = b
    precondition(write(fd, &b, 1) == 1)
}

@discardableResult
func drain(_ fd: CInt) -> Int {
    var buf = [UInt8](repeating: 0, count: 4096)
    var total = 0
    while true {
        let n = read(fd, &buf, buf.count)
        if n <= 0 { return total }
        total += n
    }
}

/// Runs the reactor until `done()` or the deadline (a hang guard, not a timing assertion).
func run(_ reactor: Reactor, seconds: Double = 10, until done: () -> Bool) throws {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while !done() && ContinuousClock.now < deadline {
        try reactor.runOnce(timeout: .milliseconds(50))
    }
}

/// Spawns `/bin/sh -c script` and returns its pid.
func spawnShell(_ script: String) -> pid_t {
    var pid: pid_t = 0
    let args = ["/bin/sh", "-c", script]
    var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    let rc = posix_spawn(&pid, "/bin/sh", nil, nil, &argv, nil)
    precondition(rc == 0)
    return pid
}

/// Checks that a test left nothing registered and no descriptor open.
func finish(_ reactor: Reactor, fdsBefore: Int) {
    #expect(reactor.registrationCount == 0)
    reactor.close()
    #expect(openFDCount() == fdsBefore, "\(fdsBefore) descriptors before, now: \(fdList())")
}
