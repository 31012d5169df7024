@testable import LoadProcessManager
import Glibc
import LPMReactor
import Testing

/// Reads `fd` until end of file (waiting on `poll` while it is non-blocking and empty).
private func readToEnd(_ fd: CInt) -> String {
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 256)
    while true {
        let n = read(fd, &buffer, buffer.count)
        if n > 0 { bytes += buffer[..<n]; continue }
        if n == 0 { break }
        guard errno == EAGAIN || errno == EINTR else { break }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        _ = poll(&p, 1, 5_000)
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// The short name (`/proc/PID/comm`) of process `pid`, `nil` once it is gone.
private func commandName(_ pid: pid_t) -> String? {
    guard let f = fopen("/proc/\(pid)/comm", "r") else { return nil }
    defer { fclose(f) }
    var buf = [CChar](repeating: 0, count: 64)
    guard fgets(&buf, 64, f) != nil else { return nil }
    return String(decoding: buf.prefix { $0 != 0 && $0 != 10 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Runs `script` with `/bin/sh -c` through a `Spawner` (descriptor 3 is the channel) and returns
/// what it wrote to descriptor 3.
private func spawnShell(_ script: String, slot: Int?, inherit: SupervisorConfiguration.Executable.InheritedEnvironment = .all) throws -> String {
    let spawner = Spawner(SupervisorConfiguration(executable: .init(path: "/bin/sh", arguments: ["-c", script], inheritEnvironment: inherit)))
    defer { spawner.free() }
    let (pid, channel) = try spawner.spawn(cpu: nil, slot: slot)
    defer { close(channel) }
    let text = readToEnd(channel)
    var status: CInt = 0
    while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
    return text
}


@Suite("Spawning: death signal, exec errors, identity and environment", .serialized, .timeLimit(.minutes(1)))
struct SpawnTests {
    @Test("a supervisor that dies abruptly (_exit, SIGKILL) leaves no worker behind, even one that never speaks the protocol (/bin/sleep 1000)",
          arguments: [false, true])
    func nonProtocolWorkersDieWithSupervisor(byKill: Bool) async throws {
        let path = "/tmp/lpm-spawn-test-\(getpid())"
        defer { unlink(path) }
        await #expect(processExitsWith: byKill ? .signal(SIGKILL) : .exitCode(0)) { [byKill] in
            // The workers inherit descriptors 0-2: point them away from the test harness's pipes,
            // so that a worker that outlives this process fails the test instead of hanging it.
            let null = open("/dev/null", O_RDWR)
            for fd: CInt in 0...2 { dup2(null, fd) }
            close(null)
            var c = SupervisorConfiguration(executable: .init(path: "/bin/sleep", arguments: ["1000"]))
            c.count = 2
            c.shutdownSignals = []
            let s = try Supervisor(c)
            let log = EventLog(s)
            try await s.start()
            let started: (SupervisorEvent) -> Bool = { if case .workerStarted = $0 { return true }; return false }
            guard await log.wait(for: 2, started) else { _exit(1) }
            let pids = log.all.compactMap { e -> pid_t? in if case .workerStarted(_, let pid) = e { return pid }; return nil }
            // The instrument first: both are running sleep (the death signal survived execve).
            guard await eventually({ pids.allSatisfy { commandName($0) == "sleep" } }) else { _exit(2) }
            let file = fopen("/tmp/lpm-spawn-test-\(getppid())", "w")
            fputs(pids.map { String($0) }.joined(separator: " "), file)
            fclose(file)
            if byKill { kill(getpid(), SIGKILL) }
            _exit(0)  // no kill, no cleanup: the workers must still go
        }
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { Issue.record("the child wrote no pids"); return }
        let pids = readToEnd(fd).split(separator: " ").compactMap { pid_t($0) }
        close(fd)
        #expect(pids.count == 2)
        #expect(await eventually { pids.allSatisfy(isDeadOrZombie) }, "sleep workers \(pids) outlived their supervisor")
        for pid in pids where !isDeadOrZombie(pid) { kill(pid, SIGKILL) }  // after a failure only
    }

    @Test("the death signal follows the spawning thread: a child spawned from a thread that ends is SIGKILLed")
    func deathSignalFollowsThread() async {
        await #expect(processExitsWith: .success) {
            // pthread_create takes a C function: the pid comes back through this box.
            final class Box { var pid: pid_t = 0 }
            let box = Unmanaged.passRetained(Box())
            defer { box.release() }
            var thread = pthread_t()
            let rc = pthread_create(&thread, nil, { raw in
                let box = Unmanaged<Box>.fromOpaque(raw!).takeUnretainedValue()
                var argv: [UnsafeMutablePointer<CChar>?] = [strdup("sleep"), strdup("1000"), nil]
                var envp: [UnsafeMutablePointer<CChar>?] = [nil]
                box.pid = (try? Sys.spawnWorker("/bin/sleep", argv: &argv, envp: &envp, channel: 2)) ?? -1
                argv.forEach { free($0) }
                return nil
            }, box.toOpaque())
            #expect(rc == 0)
            pthread_join(thread, nil)
            let pid = box.takeUnretainedValue().pid
            #expect(pid > 0)
            var status: CInt = 0
            let deadline = ContinuousClock.now + .seconds(10)
            while waitpid(pid, &status, WNOHANG) == 0 && ContinuousClock.now < deadline { usleep(1000) }
            if ContinuousClock.now >= deadline {
                Issue.record("the child outlived the thread that spawned it")
                Sys.killAndReap(pid)
                return
            }
            // Killed by SIGKILL (the W* macros are C macros: decode by hand).
            #expect(status & 0x7F == SIGKILL, "status \(status)")
        }
    }

    @Test("an executable that cannot be run fails with spawnFailed and its errno (ENOENT, EACCES) from execve; no child is left",
          arguments: [("/nonexistent/worker", ENOENT), ("/etc/passwd", EACCES)])
    func execFailure(path: String, code: CInt) async {
        await #expect(processExitsWith: .success) { [path, code] in
            var c = SupervisorConfiguration(workerPath: path, count: 1)
            c.shutdownSignals = []
            let s = try Supervisor(c)
            do { try await s.start(); Issue.record("started") } catch let error as SupervisorError {
                #expect(error.code == .spawnFailed)
                #expect(error.underlying?.errno == code, "\(error)")
                #expect(error.underlying?.call == "execve(\(path))", "\(error)")
            }
            #expect(hasNoChildren(), "the failed child is reaped by the spawn itself")
            await s.hardKill()
        }
    }

    @Test("the spawner sets LPM_WORKER_SLOT per spawn, and the channel is descriptor 3 across execve")
    func slotFromSpawner() throws {
        #expect(try spawnShell(#"printf %s "${LPM_WORKER_SLOT-unset}" >&3"#, slot: 4) == "4")
        #expect(try spawnShell(#"printf %s "${LPM_WORKER_SLOT-unset}" >&3"#, slot: 0) == "0")
        #expect(try spawnShell(#"printf %s "${LPM_WORKER_SLOT-unset}" >&3"#, slot: nil) == "unset")
    }

    @Test("a worker sees its slot (Worker.slot)")
    func workerSlot() async throws {
        let (s, _) = try await startOnline(testConfig("slot", count: 1))
        let answer = try await s.enqueue("x").text
        #expect(answer == "0")
        await s.softKill()
    }

    @Test("inheritEnvironment: .only lets through the names listed, .none nothing, .all everything; LPM_* and Executable.environment are always set")
    func inheritedEnvironment() async {
        await #expect(processExitsWith: .success) {
            setenv("LPM_SPAWN_TEST_SECRET", "hidden", 1)
            let path = String(cString: getenv("PATH"))
            func values(_ inherit: SupervisorConfiguration.Executable.InheritedEnvironment, _ names: [String]) async throws -> [String] {
                var c = testConfig("getenv", count: 1)
                c.executable.inheritEnvironment = inherit
                let (s, _) = try await startOnline(c)
                var answers: [String] = []
                for name in names { answers.append(try await s.enqueue(name).text) }
                await s.softKill()
                return answers
            }
            let names = ["PATH", "LPM_SPAWN_TEST_SECRET", "LPM_TEST_MODE", "LPM_CHANNEL_FD"]
            let only = try await values(.only(["PATH"]), names)
            let none = try await values(.none, names)
            let all = try await values(.all, names)
            #expect(only == [path, "<unset>", "getenv", "3"])
            #expect(none == ["<unset>", "<unset>", "getenv", "3"])
            #expect(all == [path, "hidden", "getenv", "3"])
        }
    }

    @Test("a Swift worker's channel is close-on-exec")
    func channelIsCloseOnExec() async throws {
        let (s, _) = try await startOnline(testConfig("cloexec", count: 1))
        #expect(try await s.enqueue("x").text == "1")
        await s.softKill()
    }
}
