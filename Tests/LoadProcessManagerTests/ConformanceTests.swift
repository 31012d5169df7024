import CLoop
import Glibc
import LoadProcessManager
import LPMReactor
import LPMTestSupport
import Synchronization
import Testing

// The reference workers in other languages, Examples/PythonWorker/lpm_worker.py and
// Examples/CWorker (lpm_worker.h and echo_worker.c), run the same scenarios under a real
// supervisor, and face a hand-written peer for what a supervisor never does (close the channel
// while the worker lives, break the protocol). The two examples behave alike by design: their
// behaviour is listed at the top of echo_worker.c and of lpm_worker.py's `main`.

/// The repository's root, from this file's path.
private let repositoryRoot: String = {
    var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)  // Tests/LoadProcessManagerTests/ConformanceTests.swift
    return parts.joined(separator: "/")
}()

/// The directories of `PATH`.
private let searchPath: [String] = (getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin")
    .split(separator: ":").map(String.init)

/// The full path of the executable `name` found in `PATH`, if any.
private func which(_ name: String) -> String? {
    searchPath.lazy.map { "\($0)/\(name)" }.first { access($0, X_OK) == 0 }
}

/// Skips the current test case: says why on standard error (the console reports a cancelled
/// test case as passed, without its reason), then cancels it.
private func skip(_ reason: String) throws -> Never {
    Sys.writeToStandardError("skipped: \(reason)\n")
    try Test.cancel("\(reason)")
}

/// A language with a reference worker.
enum WorkerLanguage: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case python
    case c

    var testDescription: String { self == .python ? "Python" : "C" }

    /// The program and its arguments, or the test is skipped (cancelled) with the reason when
    /// the machine cannot run this language; a C worker that does not compile fails the test.
    func program(delayMilliseconds: Int = 0) async throws -> [String] {
        let delay = ["--delay-ms", String(delayMilliseconds)]
        switch self {
        case .python:
            guard access("/usr/bin/env", X_OK) == 0, which("python3") != nil else {
                try skip("python3 is not on PATH: the Python reference worker cannot run here")
            }
            return ["/usr/bin/env", "python3", repositoryRoot + "/Examples/PythonWorker/lpm_worker.py"] + delay
        case .c:
            switch await cWorkerBuild.value {
            case .success(let path): return [path] + delay
            case .failure(.noCompiler):
                try skip("no C compiler (cc, gcc or clang) on PATH: the C reference worker cannot be built here")
            case .failure(.failed(let log)):
                Issue.record("Examples/CWorker/echo_worker.c did not compile:\n\(log)")
                throw CBuildFailure.failed(log)
            }
        }
    }

    /// A pool of `count` of this language's example worker.
    func config(count: Int = 2, delayMilliseconds: Int = 0) async throws -> SupervisorConfiguration {
        let program = try await program(delayMilliseconds: delayMilliseconds)
        var c = SupervisorConfiguration(executable: .init(path: program[0], arguments: Array(program.dropFirst())))
        c.count = count
        c.shutdownSignals = []
        return c
    }
}

// MARK: Building the C worker

enum CBuildFailure: Error, Equatable {
    case noCompiler
    case failed(String)
}

/// A directory of this test process's own, removed when it exits.
private let scratchDirectory: String = {
    var template = Array("/tmp/lpm-conformance-XXXXXX".utf8CString)
    guard let made = mkdtemp(&template) else { return "/tmp" }
    atexit(removeScratchDirectory)
    return String(cString: made)
}()

private func removeScratchDirectory() {
    if let dir = opendir(scratchDirectory) {
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { unlink(scratchDirectory + "/" + name) }
        }
        closedir(dir)
    }
    rmdir(scratchDirectory)
}

/// The C example, compiled once per test process with the first of `cc`, `gcc` and `clang`
/// found on `PATH` (the Swift toolchain ships clang), warnings as errors.
private let cWorkerBuild = Task<Result<String, CBuildFailure>, Never> {
    guard let compiler = ["cc", "gcc", "clang"].lazy.compactMap(which).first else { return .failure(.noCompiler) }
    let output = scratchDirectory + "/echo_worker"
    let (status, log) = await runToCompletion([compiler, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", output,
                                               repositoryRoot + "/Examples/CWorker/echo_worker.c"])
    return status == .exited(0) ? .success(output) : .failure(.failed("\(compiler): \(status.map { "\($0)" } ?? "did not finish")\n\(log)"))
}

// MARK: Processes started by hand

/// The environment of this process, with `extra` added (replacing names it has).
private func environment(_ extra: [String: String]) -> [String] {
    var env: [String: String] = [:]
    var p = Glibc.environ
    while let entry = p.pointee {
        let s = String(cString: entry)
        if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
        p += 1
    }
    for (k, v) in extra { env[k] = v }
    return env.map { "\($0.key)=\($0.value)" }
}

/// Starts `argv` (searched in `PATH`) with `channel` as its descriptor 3 when given, and its
/// standard output and error in `log` when given; returns its pid, or -1.
private func spawn(_ argv: [String], env: [String], channel: CInt? = nil, log: String? = nil) -> pid_t {
    var actions = posix_spawn_file_actions_t()
    var attributes = posix_spawnattr_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawnattr_init(&attributes)
    defer {
        posix_spawn_file_actions_destroy(&actions)
        posix_spawnattr_destroy(&attributes)
    }
    if let channel { posix_spawn_file_actions_adddup2(&actions, channel, 3) }
    if let log {
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
    }
    // An empty signal mask and default dispositions, whatever this thread has.
    var none = sigset_t(), all = sigset_t()
    sigemptyset(&none)
    sigfillset(&all)
    posix_spawnattr_setsigmask(&attributes, &none)
    posix_spawnattr_setsigdefault(&attributes, &all)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    let cArgv = argv.map { strdup($0) } + [nil]
    let cEnv = env.map { strdup($0) } + [nil]
    defer { (cArgv + cEnv).forEach { free($0) } }
    var pid: pid_t = 0
    let rc = cArgv.withUnsafeBufferPointer { a in
        cEnv.withUnsafeBufferPointer { e in
            posix_spawnp(&pid, argv[0], &actions, &attributes, a.baseAddress!, e.baseAddress!)
        }
    }
    return rc == 0 ? pid : -1
}

/// Waits for `pid` to end (polling, so that no thread blocks), at most `seconds`; kills it if
/// it does not. Returns how it ended, or nil if it had to be killed.
private func waitForExit(_ pid: pid_t, seconds: Double = 20) async -> WorkerExitStatus? {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    var status: CInt = 0
    while ContinuousClock.now < deadline {
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid {
            return status & 0x7f == 0 ? .exited((status >> 8) & 0xff) : .signaled(status & 0x7f)
        }
        if r < 0 { return nil }
        try? await Task.sleep(for: .milliseconds(5))
    }
    kill(pid, SIGKILL)
    _ = waitpid(pid, &status, 0)
    return nil
}

/// Runs `argv` to its end; returns how it ended and what it wrote.
private func runToCompletion(_ argv: [String]) async -> (WorkerExitStatus?, String) {
    let log = scratchDirectory + "/log-\(UInt32.random(in: 0...UInt32.max))"
    defer { unlink(log) }
    let pid = spawn(argv, env: environment([:]), log: log)
    guard pid > 0 else { return (nil, "could not start \(argv[0]): \(String(cString: strerror(errno)))") }
    let status = await waitForExit(pid, seconds: 50)
    return (status, readFile(log))
}

private func readFile(_ path: String) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    return String(decoding: readToEnd(fd), as: UTF8.self)
}

/// Everything `fd` gives until end of file, waiting at most `seconds` for each read.
private func readToEnd(_ fd: CInt, seconds: Double = 20) -> [UInt8] {
    var all: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, CInt(seconds * 1000)) == 1 else { return all }
        let n = read(fd, &buffer, buffer.count)
        if n > 0 { all += buffer[..<n] } else if n == 0 || errno != EINTR { return all }
    }
}

/// Exactly `count` bytes from `fd`, or fewer if it ends or stays silent for `seconds`.
private func readExactly(_ fd: CInt, _ count: Int, seconds: Double = 20) -> [UInt8] {
    var all: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: count)
    while all.count < count {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, CInt(seconds * 1000)) == 1 else { return all }
        let n = read(fd, &buffer, count - all.count)
        if n > 0 { all += buffer[..<n] } else if n == 0 || errno != EINTR { return all }
    }
    return all
}

private func writeAll(_ fd: CInt, _ bytes: [UInt8]) -> Bool {
    bytes.withUnsafeBytes { raw in
        var offset = 0
        while offset < raw.count {
            let n = send(fd, raw.baseAddress! + offset, raw.count - offset, CInt(MSG_NOSIGNAL))
            if n < 0 { if errno == EINTR { continue }; return false }
            offset += n
        }
        return true
    }
}

/// A worker started by hand on a socketpair, this test playing the supervisor.
private struct HandStartedWorker {
    let pid: pid_t
    /// This test's end of the channel (blocking).
    let channel: CInt

    init(_ language: WorkerLanguage, environment extra: [String: String] = [:]) async throws {
        var pair: [CInt] = [-1, -1]
        try #require(socketpair(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        let env = environment(["LPM_CHANNEL_FD": "3", "LPM_PARENT_PID": String(getpid()), "LPM_WORKER_SLOT": "0"]
            .merging(extra) { $1 })
        pid = spawn(try await language.program(), env: env, channel: pair[1])
        close(pair[1])
        channel = pair[0]
        try #require(pid > 0, "the worker started")
    }
}

/// The bytes of a frame: the 16-byte header (little-endian), then the payload.
private func frame(_ type: UInt8, flags: UInt8 = 0, id: UInt64 = 0, length: UInt32? = nil, _ payload: [UInt8] = []) -> [UInt8] {
    var out: [UInt8] = [0x4C, 1, type, flags]
    withUnsafeBytes(of: (length ?? UInt32(payload.count)).littleEndian) { out += $0 }
    withUnsafeBytes(of: id.littleEndian) { out += $0 }
    return out + payload
}

private func hex(_ s: String) -> [UInt8] {
    let digits = Array(s.filter(\.isHexDigit))
    return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
}

// MARK: Looking at a worker from outside

/// The descriptor numbers the process `pid` has open.
private func openDescriptors(of pid: pid_t) -> Set<Int> {
    guard let dir = opendir("/proc/\(pid)/fd") else { return [] }
    defer { closedir(dir) }
    var fds: Set<Int> = []
    while let e = readdir(dir) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if let n = Int(name) { fds.insert(n) }
    }
    return fds
}

/// The open-file flags of the process `pid`'s descriptor `fd` (`flags:` in fdinfo, octal).
private func descriptorFlags(of pid: pid_t, _ fd: Int) -> Int? {
    readFile("/proc/\(pid)/fdinfo/\(fd)").split(separator: "\n")
        .first { $0.hasPrefix("flags:") }
        .flatMap { Int($0.dropFirst(6).trimmingPrefix(while: \.isWhitespace), radix: 8) }
}

/// Collects the custom events workers emit under one name.
private final class WorkerEvents: Sendable {
    private let events = Mutex<[WorkerEvent]>([])
    init(_ s: Supervisor, _ name: String) { s.on(name) { [self] e in events.withLock { $0.append(e) } } }
    var all: [WorkerEvent] { events.withLock { $0 } }

    func wait(for n: Int) async -> Bool {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if all.count >= n { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return false
    }
}

/// Polls `s.health()` until `done` holds for it (or a generous deadline passes); returns the last.
private func pollHealth(of s: Supervisor, until done: ([WorkerHealth]) -> Bool) async -> [WorkerHealth] {
    let deadline = ContinuousClock.now + .seconds(20)
    var h = await s.health()
    while !done(h) && ContinuousClock.now < deadline {
        try? await Task.sleep(for: .milliseconds(10))
        h = await s.health()
    }
    return h
}

// MARK: The scenarios

@Suite("Reference workers in Python and C speak the protocol (the same scenarios for both)",
       .serialized, .timeLimit(.minutes(1)))
struct ConformanceTests {
    @Test("request and response: hundreds at once over both workers, empty, and larger than the socket buffers",
          arguments: WorkerLanguage.allCases)
    func requests(_ language: WorkerLanguage) async throws {
        let (s, _) = try await startOnline(try await language.config())
        let results = try await withThrowingTaskGroup(of: (Int, WorkerResponse).self) { group in
            for i in 0..<300 {
                group.addTask { (i, try await s.enqueue("request \(i) " + String(repeating: "x", count: i))) }
            }
            return try await group.reduce(into: [(Int, WorkerResponse)]()) { $0.append($1) }
        }
        #expect(results.count == 300)
        for (i, r) in results {
            #expect(r.text == "request \(i) " + String(repeating: "x", count: i))
        }
        #expect(Set(results.map { $0.1.workerPID }).count == 2, "both workers answered")
        #expect(try await s.enqueue([]).data.isEmpty)
        // Larger than the socket buffers: many reads on the worker's side, a write that must wait.
        let big = (0..<1_000_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        #expect(try await s.enqueue(big).data == big)
        await s.softKill()
    }

    @Test("descriptors with requests: a socket (written, then closed: socketClosed), a stream read to its end, a response stream",
          arguments: WorkerLanguage.allCases)
    func requestDescriptors(_ language: WorkerLanguage) async throws {
        let (s, _) = try await startOnline(try await language.config())
        // A socket: the worker writes the request's data to it and closes it. End of file
        // here proves the worker closed its copy (the supervisor closes its own once sent).
        var pair: [CInt] = [-1, -1]
        try #require(socketpair(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        let text = "through the socket"
        #expect(try await s.enqueue(Array(text.utf8), socket: pair[1]).text == text)
        #expect(String(decoding: readToEnd(pair[0]), as: UTF8.self) == text)
        close(pair[0])

        // A stream with the request (an upload larger than a socket buffer), read to its end.
        let upload = patternBytes(from: 0, count: 300_000, seed: 7)
        let chunks = AsyncStream<[UInt8]> { c in
            for start in stride(from: 0, to: upload.count, by: 10_000) { c.yield(Array(upload[start..<min(start + 10_000, upload.count)])) }
            c.finish()
        }
        #expect(try await s.enqueue(Array("upload".utf8), stream: chunks).data == upload)

        // A stream with the response: its read end came with the response frame (SCM_RIGHTS),
        // and streamEnd said how many bytes to expect.
        let response = try await s.enqueue("stream 300000")
        #expect(response.text == "stream")
        let stream = try #require(response.stream)
        let streamed = try await stream.collect()
        #expect(streamed.count == 300_000)
        #expect(streamed == (0..<300_000).map { UInt8($0 % 251) })
        await s.softKill()
    }

    @Test("events both ways: the supervisor asks (request(event:)), the worker asks back, replies reach both",
          arguments: WorkerLanguage.allCases)
    func events(_ language: WorkerLanguage) async throws {
        let (s, _) = try await startOnline(try await language.config())
        s.on("question") { event in
            #expect(event.wantsReply)
            event.reply(Array("42 for \(String(decoding: event.data, as: UTF8.self))".utf8))
        }
        let echoed = try await s.request(event: "echo", Array("ping me".utf8))
        #expect(String(decoding: echoed, as: UTF8.self) == "ping me")
        let answer = try await s.request(event: "ask", Array("life".utf8))
        #expect(String(decoding: answer, as: UTF8.self) == "answer:42 for life")
        // An event with no handler of its own gets the catch-all's empty reply.
        #expect(try await s.request(event: "nobody handles this", [1, 2, 3]).isEmpty)
        for h in await s.health() {
            let reply = try await s.request(event: "echo", Array("to \(h.pid)".utf8), to: h.pid)
            #expect(String(decoding: reply, as: UTF8.self) == "to \(h.pid)")
        }
        await s.softKill()
    }

    @Test("broadcast with a descriptor: every worker reads the file it was passed, writes to the pipe it was passed, and keeps no copy",
          arguments: WorkerLanguage.allCases)
    func broadcastDescriptor(_ language: WorkerLanguage) async throws {
        let (s, _) = try await startOnline(try await language.config())
        let reads = WorkerEvents(s, "fd-contents")
        let path = "/tmp/lpm-conformance-broadcast-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let file = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        try #require(file >= 0)
        unlink(path)
        let text = "contents of a file passed to every worker"
        #expect(write(file, text, text.utf8.count) == text.utf8.count)
        s.broadcast("read-fd", socket: file)  // the supervisor owns and closes it
        #expect(await reads.wait(for: 2), "both workers reported")
        #expect(reads.all.allSatisfy { String(decoding: $0.data, as: UTF8.self) == text })
        #expect(Set(reads.all.map(\.pid)).count == 2)

        // A pipe's write end: each worker writes one line with its slot (LPM_WORKER_SLOT). End of
        // file comes once every copy is closed: the supervisor's and each worker's.
        var pipe: [CInt] = [-1, -1]
        try #require(CLoop.pipe2(&pipe, O_CLOEXEC) == 0)
        s.broadcast("write-fd", Array("hello".utf8), socket: pipe[1])
        let lines = String(decoding: readToEnd(pipe[0]), as: UTF8.self).split(separator: "\n").sorted()
        close(pipe[0])
        #expect(lines == ["0 hello", "1 hello"])

        // Nothing but the standard descriptors and the channel is left open in a worker.
        for h in await s.health() {
            #expect(openDescriptors(of: h.pid) == [0, 1, 2, 3], "worker \(h.pid)")
        }
        await s.softKill()
    }

    @Test("health and liveness: pid, resident size, the worker's own report; pings answered; fd 3 made close-on-exec",
          arguments: WorkerLanguage.allCases)
    func health(_ language: WorkerLanguage) async throws {
        var config = try await language.config()
        config.healthInterval = .milliseconds(50)
        config.pingInterval = .milliseconds(20)
        config.unresponsiveTimeout = .seconds(10)
        let (s, log) = try await startOnline(config)
        let first = await pollHealth(of: s) { $0.allSatisfy { $0.heapTotal > 0 } }
        #expect(first.count == 2)
        for h in first {
            #expect(h.pid > 0)
            #expect(h.rss > 0)
            #expect(h.heapTotal > 0, "a healthReport from \(h.pid) arrived")
            #expect(h.state == .ready)
            // The worker set FD_CLOEXEC on its channel (it arrives without it).
            let flags = try #require(descriptorFlags(of: h.pid, 3))
            #expect(flags & Int(O_CLOEXEC) != 0, "fd 3 of \(h.pid) is close-on-exec")
        }
        // Many pings later, the same workers, none declared unresponsive.
        try await Task.sleep(for: .milliseconds(300))
        #expect(await s.health().map(\.pid) == first.map(\.pid))
        #expect(log.count { if case .workerUnresponsive = $0 { return true }; return false } == 0)
        await s.softKill()
    }

    @Test("busy and ready: a busy worker gets no requests until it is ready again", arguments: WorkerLanguage.allCases)
    func busyAndReady(_ language: WorkerLanguage) async throws {
        let (s, _) = try await startOnline(try await language.config())
        let busyPID = await s.health()[0].pid
        #expect(try await s.request(event: "busy", to: busyPID) == Array("busy".utf8))
        let busy = await pollHealth(of: s) { $0.contains { $0.pid == busyPID && $0.state == .busy } }
        #expect(busy.contains { $0.pid == busyPID && $0.state == .busy })
        for i in 0..<20 {
            #expect(try await s.enqueue("while busy \(i)").workerPID != busyPID)
        }
        #expect(try await s.request(event: "ready", to: busyPID) == Array("ready".utf8))
        let ready = await pollHealth(of: s) { $0.allSatisfy { $0.state == .ready } }
        #expect(ready.allSatisfy { $0.state == .ready })
        await s.softKill()
    }

    @Test("cancel: a request that times out is cancelled on its worker, which says so and drops it",
          arguments: WorkerLanguage.allCases)
    func cancel(_ language: WorkerLanguage) async throws {
        // An answer an hour away: the timeout comes first however slow the machine (an answer
        // that came in with it would be taken, the supervisor reading before its timers).
        let (s, log) = try await startOnline(try await language.config(count: 1, delayMilliseconds: 3_600_000))
        let pid = await s.health()[0].pid
        let cancelled = WorkerEvents(s, "cancelled")
        var failure: SupervisorError?
        do { _ = try await s.enqueue(Array("too slow".utf8), options: RequestOptions(timeout: .milliseconds(50))) } catch { failure = error }
        #expect(failure?.code == .timedOut)
        #expect(await cancelled.wait(for: 1), "the worker heard the cancel")
        #expect(cancelled.all.map { String(decoding: $0.data, as: UTF8.self) } == ["too slow"])
        // Its requests are all an hour away: an event round trip shows it still answers.
        #expect(try await s.request(event: "echo", Array("still answering".utf8), to: pid) == Array("still answering".utf8))
        #expect(log.count(isExit) == 0)
        await s.softKill()
    }

    @Test("soft kill: the requests in hand finish, each worker's soft-kill handler runs, then it exits 0",
          arguments: WorkerLanguage.allCases)
    func softKill(_ language: WorkerLanguage) async throws {
        let (s, log) = try await startOnline(try await language.config(delayMilliseconds: 300))
        let byes = WorkerEvents(s, "bye")
        let responses = Task {
            try await withThrowingTaskGroup(of: String.self) { group in
                for i in 0..<20 { group.addTask { try await s.enqueue("slow \(i)").text } }
                return try await group.reduce(into: Set<String>()) { $0.insert($1) }
            }
        }
        // Every request dispatched, then the kill. Each is answered 300 ms after it reached its
        // worker, so a slow run may see some answered before the last is dispatched: in hand
        // or answered is what is known.
        #expect(await eventually { await dispatched(s) == 20 }, "every request was in hand on a worker (or answered) when the soft kill came")
        await s.softKill()
        #expect(try await responses.value == Set((0..<20).map { "slow \($0)" }))
        let exits = log.all.compactMap { e -> (WorkerExitStatus, Bool)? in
            if case .workerExited(_, _, let status, let expected) = e { return (status, expected) }
            return nil
        }
        #expect(exits.count == 2)
        #expect(exits.allSatisfy { $0.0 == .exited(0) && $0.1 })
        #expect(Set(byes.all.map { String(decoding: $0.data, as: UTF8.self) }) == ["0", "1"])
    }

    @Test("a killed worker is replaced, and the pool keeps answering", arguments: WorkerLanguage.allCases)
    func killedWorkerReplaced(_ language: WorkerLanguage) async throws {
        let (s, log) = try await startOnline(try await language.config())
        let victim = await s.health()[0].pid
        #expect(kill(victim, SIGKILL) == 0)
        #expect(await log.wait(isRestart), "the slot was restarted")
        let after = await pollHealth(of: s) { $0.allSatisfy { $0.state == .ready } }
        #expect(after.count == 2)
        #expect(!after.map(\.pid).contains(victim))
        #expect(after[0].lastExit == .signaled(SIGKILL))
        for i in 0..<20 { #expect(try await s.enqueue("after \(i)").text == "after \(i)") }
        await s.softKill()
    }

    // MARK: A hand-written supervisor

    /// The `request` example of docs/PROTOCOL.md, byte for byte, and the response it must get.
    static let documentedRequest = hex("""
        4c 01 03 00  1a 00 00 00  05 00 00 00 00 00 00 00
        00 11 22 33 44 55 46 77 88 99 aa bb cc dd ee ff
        08 07 06 05 04 03 02 01
        68 69
        """)
    static let expectedResponse = hex("4c 01 04 00  02 00 00 00  05 00 00 00 00 00 00 00  68 69")
    /// The `event` example of docs/PROTOCOL.md ("echo", data "abc", reply id 9), and its reply.
    static let documentedEvent = hex("4c 01 07 00  09 00 00 00  09 00 00 00 00 00 00 00  04 00  65 63 68 6f  61 62 63")
    static let expectedEventReply = hex("4c 01 08 00  03 00 00 00  09 00 00 00 00 00 00 00  61 62 63")

    @Test("end of file: a worker whose supervisor closes the channel exits 0, whether or not the supervisor read what it sent",
          arguments: WorkerLanguage.allCases, [true, false])
    func endOfFile(_ language: WorkerLanguage, readEverything: Bool) async throws {
        let worker = try await HandStartedWorker(language)
        if readEverything {
            // `ready`, exactly as documented, then the documented request's response, the
            // documented event's reply, and a pong.
            #expect(readExactly(worker.channel, 16) == hex("4c 01 01 00 00 00 00 00 00 00 00 00 00 00 00 00"))
            #expect(writeAll(worker.channel, Self.documentedRequest + Self.documentedEvent + frame(15, id: 0xDEAD_BEEF_0102)))
            #expect(readExactly(worker.channel, Self.expectedResponse.count) == Self.expectedResponse)
            #expect(readExactly(worker.channel, Self.expectedEventReply.count) == Self.expectedEventReply)
            #expect(readExactly(worker.channel, 16) == frame(16, id: 0xDEAD_BEEF_0102))
        } else {
            // Closed with the worker's `ready` (and its answer) unread: Linux then gives the
            // worker ECONNRESET rather than end of file, which means the same.
            #expect(writeAll(worker.channel, Self.documentedRequest))
            try await Task.sleep(for: .milliseconds(200))
        }
        close(worker.channel)
        #expect(await waitForExit(worker.pid) == .exited(0))
    }

    @Test("the Swift worker runtime too: closed with its frames unread (ECONNRESET), it exits 0")
    func swiftRuntimeConnectionReset() async throws {
        var pair: [CInt] = [-1, -1]
        try #require(socketpair(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        let env = environment(["LPM_CHANNEL_FD": "3", "LPM_PARENT_PID": String(getpid()), "LPM_WORKER_SLOT": "0",
                               "LPM_TEST_MODE": "echo"])
        let pid = spawn([sibling("lpm-test-worker")], env: env, channel: pair[1])
        close(pair[1])
        try #require(pid > 0)
        // Its `ready` and the answer to this request stay unread when the channel is closed.
        #expect(writeAll(pair[0], Self.documentedRequest))
        try await Task.sleep(for: .milliseconds(200))
        close(pair[0])
        #expect(await waitForExit(pid) == .exited(0))
    }

    enum Breach: String, CaseIterable, Sendable {
        case badMagic, otherVersion, unknownType, workerOnlyType, oversizedFrame, shortRequest, descriptorNobodyAnnounced
    }

    @Test("a supervisor that breaks the protocol: the worker exits 76", arguments: WorkerLanguage.allCases, Breach.allCases)
    func violation(_ language: WorkerLanguage, breach: Breach) async throws {
        let worker = try await HandStartedWorker(language, environment: ["LPM_MAX_FRAME": "1024"])
        #expect(readExactly(worker.channel, 16) == frame(1))
        switch breach {
        case .badMagic: #expect(writeAll(worker.channel, [0x4D] + frame(15).dropFirst()))
        case .otherVersion: #expect(writeAll(worker.channel, [0x4C, 2] + frame(15).dropFirst(2)))
        case .unknownType: #expect(writeAll(worker.channel, frame(200)))
        case .workerOnlyType: #expect(writeAll(worker.channel, frame(4, id: 1)))  // a response
        case .oversizedFrame: #expect(writeAll(worker.channel, frame(7, length: 2048)))  // the header is enough
        case .shortRequest: #expect(writeAll(worker.channel, frame(3, id: 1, [1, 2, 3])))
        case .descriptorNobodyAnnounced:
            // A ping, unflagged, carrying a descriptor.
            let ping = frame(15)
            let sent = ping.withUnsafeBytes { try? Sys.sendmsg(worker.channel, $0, passing: 1) }
            guard case .some(.processed(16)) = sent else { Issue.record("sendmsg: \(String(describing: sent))"); break }
        }
        #expect(await waitForExit(worker.pid) == .exited(76))
        close(worker.channel)
    }

    @Test("lpm_worker.h compiles cleanly, warnings as errors, pedantic, C99 and C11, with gcc and clang",
          arguments: ["gcc", "clang"], ["c99", "c11"])
    func cHeaderCompilesCleanly(_ compiler: String, standard: String) async throws {
        guard let path = which(compiler) else { try skip("\(compiler) is not on PATH") }
        let object = scratchDirectory + "/echo-\(compiler)-\(standard).o"
        defer { unlink(object) }
        let (status, log) = await runToCompletion([path, "-std=\(standard)", "-pedantic", "-Wall", "-Wextra", "-Werror",
                                                   "-c", "-o", object, repositoryRoot + "/Examples/CWorker/echo_worker.c"])
        #expect(status == .exited(0), "\(log)")
    }
}
