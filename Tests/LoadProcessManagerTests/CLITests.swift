import Foundation
import Glibc
import Testing

/// The `lpm` command line, run as a process against the test worker.
@Suite("lpm command line")
struct CLITests {
    struct Run {
        let status: Int32
        let stdout: String
        let stderr: String
        var outputLines: [Substring] { stdout.split(separator: "\n", omittingEmptySubsequences: false).dropLast() }
    }

    /// Runs `lpm` with `arguments`, `input` as its stdin (a file), and its outputs in files;
    /// `whileRunning` gets the process once it is started.
    func lpm(_ arguments: [String], input: String, stderrHandle: FileHandle? = nil,
             whileRunning: (@Sendable (Process) async -> Void)? = nil) async throws -> Run {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lpm-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let (inURL, outURL, errURL) = (dir.appendingPathComponent("in"), dir.appendingPathComponent("out"), dir.appendingPathComponent("err"))
        try Data(input.utf8).write(to: inURL)
        // Close-on-exec: other tests spawn processes (exit tests count their descriptors), which
        // must not inherit these; Process still installs them as lpm's 0, 1 and 2.
        func open(_ url: URL, _ flags: Int32) -> FileHandle {
            FileHandle(fileDescriptor: Glibc.open(url.path, flags | O_CLOEXEC, 0o600), closeOnDealloc: true)
        }
        let handles = [open(inURL, O_RDONLY), open(outURL, O_WRONLY | O_CREAT | O_TRUNC), open(errURL, O_WRONLY | O_CREAT | O_TRUNC)]
        defer { for h in handles { try? h.close() } }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: sibling("lpm"))
        process.arguments = arguments
        process.standardInput = handles[0]
        process.standardOutput = handles[1]
        process.standardError = stderrHandle ?? handles[2]
        let exited = AsyncStream<Void>.makeStream()
        process.terminationHandler = { _ in exited.continuation.yield(); exited.continuation.finish() }
        try process.run()
        if let whileRunning { await whileRunning(process) }
        for await _ in exited.stream {}
        return Run(status: process.terminationStatus,
                   stdout: String(decoding: try Data(contentsOf: outURL), as: UTF8.self),
                   stderr: String(decoding: try Data(contentsOf: errURL), as: UTF8.self))
    }

    func worker(_ mode: String, _ extra: [String] = []) -> [String] {
        ["--env", "LPM_TEST_MODE=\(mode)"] + extra + ["--", sibling("lpm-test-worker")]
    }

    let lines = (1...3000).map { "request \($0) \(String(repeating: "x", count: $0 % 37))" }
    var input: String { lines.joined(separator: "\n") + "\n" }

    @Test("answers come in input order, one line each, exit 0")
    func orderedOutputMatchesInput() async throws {
        let run = try await lpm(["run", "--workers", "3"] + worker("echo"), input: input)
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.outputLines.map(String.init) == lines)
        #expect(run.stderr.contains("3000 answered, 0 failed"), "\(run.stderr)")
    }

    @Test("a small --max-in-flight still answers every line in order")
    func smallMaxInFlight() async throws {
        let run = try await lpm(["run", "--workers", "2", "--max-in-flight", "3"] + worker("echo"), input: input)
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.outputLines.map(String.init) == lines)
    }

    @Test("--unordered gives the same lines, in any order; a last line without a newline counts")
    func unorderedGivesSameMultiset() async throws {
        let run = try await lpm(["run", "--workers", "3", "--unordered"] + worker("echo"), input: lines.joined(separator: "\n"))
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.outputLines.map(String.init).sorted() == lines.sorted())
    }

    @Test("failed requests: an empty line each on stdout, the error on stderr with the line number, exit 1")
    func failuresExitOne() async throws {
        let run = try await lpm(["run", "--workers", "2"] + worker("fail"), input: (1...50).map(String.init).joined(separator: "\n") + "\n")
        #expect(run.status == 1)
        #expect(run.outputLines == Array(repeating: "", count: 50))
        #expect(run.stderr.contains("lpm: line 1: workerError: handler failed on purpose"), "\(run.stderr)")
        #expect(run.stderr.contains("lpm: line 50: workerError"), "\(run.stderr)")
        #expect(run.stderr.contains("0 answered, 50 failed"), "\(run.stderr)")
    }

    @Test("a missing worker: a clear message and a non-zero exit")
    func missingWorker() async throws {
        let run = try await lpm(["run", "--", "/nonexistent/lpm-worker"], input: "a\n")
        #expect(run.status == 127)
        #expect(run.stderr.contains("cannot run the worker '/nonexistent/lpm-worker': not found"), "\(run.stderr)")
        #expect(run.stdout.isEmpty)
    }

    @Test("a program that is no worker: a clear message and exit 2")
    func notAWorker() async throws {
        let run = try await lpm(["run", "--workers", "1", "--", "/bin/true"], input: "a\n")
        #expect(run.status == 2)
        #expect(run.stderr.contains("the workers could not be started"), "\(run.stderr)")
    }

    @Test("usage errors exit 64: a bad duration, no worker")
    func usageErrors() async throws {
        let bad = try await lpm(["run", "--timeout", "5"] + worker("echo"), input: "")
        #expect(bad.status == 64)
        #expect(bad.stderr.contains("'5' is not a duration"), "\(bad.stderr)")
        let none = try await lpm(["run", "--workers", "2"], input: "")
        #expect(none.status == 64)
        #expect(none.stderr.contains("Missing the worker"), "\(none.stderr)")
    }

    @Test("--timeout fails slow requests with timedOut")
    func timeout() async throws {
        // A worker that never answers: one that answers late could still beat the timeout on
        // a loaded machine (the supervisor reads answers before it runs its timers).
        let run = try await lpm(["run", "--workers", "1", "--timeout", "50ms"] + worker("never") + [], input: "a\nb\n")
        #expect(run.status == 1)
        #expect(run.stderr.contains("lpm: line 1: timedOut"), "\(run.stderr)")
    }

    @Test("SIGINT and SIGTERM: reading stops, the requests in flight finish, exit 130",
          arguments: [SIGINT, SIGTERM])
    func signalDrains(_ signal: CInt) async throws {
        let many = (1...100_000).map(String.init)
        let run = try await lpm(["run", "--workers", "2", "--max-in-flight", "100", "--env", "LPM_TEST_DELAY_MS=20"] + worker("slow"),
                                input: many.joined(separator: "\n") + "\n") { process in
            try? await Task.sleep(for: .milliseconds(500))
            kill(process.processIdentifier, signal)
        }
        #expect(run.status == 130, "\(run.stderr)")
        let out = run.outputLines.map(String.init)
        #expect(!out.isEmpty && out.count < many.count)
        #expect(out == Array(many.prefix(out.count)), "the answers written are those of the first lines, in order")
        #expect(run.stderr.contains("interrupted (\(signal == SIGINT ? "SIGINT" : "SIGTERM"))"), "\(run.stderr)")
        #expect(run.stderr.contains("0 failed"), "\(run.stderr)")
    }

    @Test("a second signal aborts the requests in flight at once: they fail, exit 130")
    func secondSignalAborts() async throws {
        // Each request takes 60 s: only the abort can end this run in time.
        let started = ContinuousClock.now
        let run = try await lpm(["run", "--workers", "2", "--max-in-flight", "8", "--env", "LPM_TEST_DELAY_MS=60000"] + worker("slow"),
                                input: (1...100).map(String.init).joined(separator: "\n") + "\n") { process in
            try? await Task.sleep(for: .milliseconds(500))
            process.interrupt()
            try? await Task.sleep(for: .milliseconds(300))
            process.interrupt()
        }
        #expect(ContinuousClock.now - started < .seconds(30), "the abort did not wait for the requests")
        #expect(run.status == 130, "\(run.stderr)")
        #expect(run.stderr.contains("aborting the requests in flight"), "\(run.stderr)")
        #expect(run.stderr.contains("shutDown"), "the aborted requests fail: \(run.stderr)")
    }

    @Test("on a terminal, stderr shows a progress line (done, rate, failures, percentage and ETA)")
    func progressOnATerminal() async throws {
        var master: Int32 = -1, slave: Int32 = -1
        try #require(openpty(&master, &slave, nil, nil, nil) == 0)
        _ = fcntl(master, F_SETFD, FD_CLOEXEC)
        _ = fcntl(slave, F_SETFD, FD_CLOEXEC)
        let terminal = FileHandle(fileDescriptor: slave, closeOnDealloc: true)
        let masterFD = master
        // Read the terminal while lpm writes to it (a pty's buffer is small).
        let reader = Task.detached { @Sendable () -> String in
            var text: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = read(masterFD, &buffer, buffer.count)
                if n <= 0 { break }
                text += buffer[0..<n]
            }
            return String(decoding: text, as: UTF8.self)
        }
        let lines = (1...400).map(String.init)
        let run = try await lpm(["run", "--workers", "2", "--max-in-flight", "4", "--env", "LPM_TEST_DELAY_MS=5"] + worker("slow"),
                                input: lines.joined(separator: "\n") + "\n", stderrHandle: terminal)
        try terminal.close()  // the last writer: the reader then sees end of file (EIO)
        let shown = await reader.value
        close(master)
        #expect(run.status == 0)
        #expect(shown.contains(" done, ") && shown.contains("/s, ") && shown.contains(" failed"), "\(shown.suffix(400))")
        #expect(shown.contains("%, ETA "), "stdin is a file: the percentage and the ETA are shown")
    }
}
