import CLoop
import Glibc
import LPMTestSupport
@testable import LPMReactor
import Testing

/// Children watched without pidfds, where `pidfd_open` and `pidfd_send_signal` are refused with
/// ENOSYS (kernels before 5.3, and valgrind): SIGCHLD and `waitid(P_PID)` instead.
@Suite("child processes where pidfds are refused")
struct PidfdFallbackTests {
    @Test("exits, signals and an exit before the watch all come back once; nothing is left behind")
    func refused() async {
        let result = await #expect(processExitsWith: .success, observing: [\.standardOutputContent]) {
            // pidfd_open is 434, pidfd_send_signal 424 on every architecture (the unified table).
            guard refuseSystemCall(434, with: ENOSYS), refuseSystemCall(424, with: ENOSYS) else {
                print("note: cannot install a seccomp filter here: pidfd fallback test skipped")
                return
            }
            let fdsBefore = openFDCount()
            let reactor = try Reactor(backend: .only(.epoll))
            #expect(!Sys.pidfdRefused)

            // An ordinary exit.
            var statuses: [pid_t: Reactor.ExitStatus] = [:]
            let exiting = spawnShell("exit 3")
            try reactor.watchChild(exiting) { statuses[exiting] = $0 }
            #expect(Sys.pidfdRefused)
            // A child killed through signalChild (kill(2) in place of pidfd_send_signal).
            let sleeping = spawnShell("exec sleep 30")
            let watch = try reactor.watchChild(sleeping) { statuses[sleeping] = $0 }
            try reactor.signalChild(watch, SIGKILL)
            // A child that is already a zombie when it is watched: its SIGCHLD came and went.
            let early = spawnShell("exit 5")
            var info = siginfo_t()
            #expect(waitid(P_PID, id_t(early), &info, WEXITED | WNOWAIT) == 0)
            try reactor.watchChild(early) { statuses[early] = $0 }
            // Not a child of ours.
            #expect(throws: ReactorError.self) { try reactor.watchChild(getppid()) { _ in } }

            try run(reactor) { statuses.count == 3 }
            #expect(statuses[exiting] == .exited(3))
            #expect(statuses[sleeping] == .signaled(SIGKILL))
            #expect(statuses[early] == .exited(5))
            // Each was reaped (waitid finds no child left), and the SIGCHLD watch went with them.
            #expect(waitid(P_ALL, 0, &info, WEXITED | WNOHANG) == -1 && errno == ECHILD)
            #expect(reactor.registrationCount == 0)
            #expect(reactor.children.sigchldWatch == nil)

            // Unwatching leaves the child unreaped and the handler uncalled.
            let left = spawnShell("exit 7")
            var called = false
            let leftWatch = try reactor.watchChild(left) { _ in called = true }
            try reactor.unwatchChild(leftWatch)
            try reactor.runOnce(timeout: .milliseconds(100))
            #expect(!called)
            #expect(waitid(P_PID, id_t(left), &info, WEXITED) == 0 && cloop_siginfo_si_status(&info) == 7)

            reactor.close()
            #expect(openFDCount() == fdsBefore, "\(fdsBefore) descriptors before, now: \(fdList())")
        }
        if let out = result?.standardOutputContent, !out.isEmpty { print(String(decoding: out, as: UTF8.self), terminator: "") }
    }
}
