import Dispatch
import Glibc
import LoadProcessManager
import Synchronization

struct RunOptions: Sendable {
    var workers: Int
    var timeout: Duration?
    var retries: Int
    var ordered: Bool
    var maxInFlight: Int
    var environment: [String: String]
    var worker: String
    var arguments: [String]
}

/// `lpm run`: the main thread reads stdin and enqueues; completions (on the supervisor's reactor
/// thread) put answers in order and hand them to a serial queue that writes them; a permit is
/// taken per line read and given back once its answer is written, so at most `maxInFlight` lines
/// are held anywhere (queued, in flight, or waiting for an earlier line's answer).
final class Runner: Sendable {
    enum Outcome: Sendable {
        case answer([UInt8])
        case failure(String)
    }

    struct State {
        /// Ordered mode: answers waiting for an earlier line's, by line index.
        var waiting: [Int: Outcome] = [:]
        var nextToWrite = 0
        var answered = 0
        var failed = 0
        /// Bytes of input (newlines included) whose requests are answered, for the ETA.
        var bytesDone = 0
        var written = 0
        /// Lines read, once the input has ended (or reading stopped).
        var total: Int?
        var signals = 0
        /// Why the run was abandoned, when the workers never came up.
        var fatal: String?
        var everOnline = false
    }

    let options: RunOptions
    let outFD: CInt
    let stderrIsTTY: Bool
    let state = Mutex(State())
    /// One permit per line that may be held.
    let permits: DispatchSemaphore
    /// Signalled once every line read has been written.
    let finished = DispatchSemaphore(value: 0)
    let writer = DispatchQueue(label: "lpm.writer")
    /// Written to wake the reader out of `poll` (a signal, a fatal error).
    let wakeWrite: CInt
    let wakeRead: CInt
    let start = ContinuousClock.now
    /// Input size when stdin is a regular file (for the ETA).
    let inputSize: Int?

    init(options: RunOptions, inFD: CInt, outFD: CInt) {
        self.options = options
        self.outFD = outFD
        stderrIsTTY = isatty(2) == 1
        permits = DispatchSemaphore(value: options.maxInFlight)
        var fds: [CInt] = [0, 0]
        guard pipe(&fds) == 0 else { fail(2, "pipe: \(String(cString: strerror(errno)))") }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        (wakeRead, wakeWrite) = (fds[0], fds[1])
        var st = stat()
        if fstat(inFD, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG {
            let offset = lseek(inFD, 0, SEEK_CUR)
            inputSize = max(0, Int(st.st_size) - max(0, Int(offset)))
        } else {
            inputSize = nil
        }
    }

    /// Runs the whole command; returns the exit status.
    static func main(_ options: RunOptions) -> Int32 {
        guard let path = resolve(options.worker) else {
            printError("cannot run the worker '\(options.worker)': not found\(options.worker.contains("/") ? "" : " in PATH")")
            return 127
        }
        guard access(path, X_OK) == 0 else {
            printError("cannot run the worker '\(path)': \(String(cString: strerror(errno)))")
            return 126
        }
        // Keep stdin and stdout for ourselves: the workers inherit /dev/null as stdin and our
        // stderr as stdout, so that nothing they print mixes with the answers.
        let inFD = fcntl(0, F_DUPFD_CLOEXEC, 10)
        let outFD = fcntl(1, F_DUPFD_CLOEXEC, 10)
        guard inFD >= 0, outFD >= 0 else { fail(2, "cannot duplicate stdin or stdout: \(String(cString: strerror(errno)))") }
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        if devNull >= 0 { dup2(devNull, 0); close(devNull) }
        dup2(2, 1)

        var config = SupervisorConfiguration(executable: .init(path: path, arguments: options.arguments, environment: options.environment))
        config.count = options.workers
        config.requestTimeout = options.timeout
        config.retries = options.retries
        config.shutdownSignals = [SIGINT, SIGTERM]
        let supervisor: Supervisor
        do { supervisor = try Supervisor(config) } catch { fail(2, "cannot start the supervisor: \(error)") }
        let runner = Runner(options: options, inFD: inFD, outFD: outFD)
        return runner.run(supervisor, inFD: inFD)
    }

    /// `name` if it holds a slash, else its first executable match in `PATH`.
    static func resolve(_ name: String) -> String? {
        if name.contains("/") { return access(name, F_OK) == 0 ? name : nil }
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/local/bin:/usr/bin:/bin"
        for dir in path.split(separator: ":", omittingEmptySubsequences: false) {
            let candidate = (dir.isEmpty ? "." : String(dir)) + "/" + name
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    func run(_ supervisor: Supervisor, inFD: CInt) -> Int32 {
        supervisor.onSignal { [self] signo in
            let count = state.withLock { s in s.signals += 1; return s.signals }
            if count == 1 {
                message("interrupted (\(signo == SIGINT ? "SIGINT" : "SIGTERM")): no more input; letting the requests in flight finish (again to abort them)")
                wake()
            } else if count == 2 {
                message("aborting the requests in flight")
                supervisor.hardKill(completion: {})
            }
        }
        supervisor.onEvent { [self] event in
            switch event {
            case .online:
                state.withLock { $0.everOnline = true }
            case .noWorkersLeft:
                let abandon = state.withLock { s -> Bool in
                    guard !s.everOnline, s.fatal == nil else { return false }
                    s.fatal = "the workers could not be started: every one exited before it was ready"
                    return true
                }
                if abandon {
                    message("the workers could not be started: every one exited before it was ready (is '\(options.worker)' a LoadProcessManager worker?)")
                    wake()
                    supervisor.hardKill(completion: {})
                }
            case .workerExited(_, let pid, let status, let expected) where !expected:
                message("worker \(pid) exited: \(status)")
            default:
                break
            }
        }
        let started = DispatchSemaphore(value: 0)
        let startError = Mutex<SupervisorError?>(nil)
        supervisor.start { error in
            startError.withLock { $0 = error }
            started.signal()
        }
        started.wait()
        if let error = startError.withLock({ $0 }) {
            message("cannot start the worker '\(options.worker)': \(error)")
            return 2
        }

        let progress = startProgress()
        let lines = read(inFD, into: supervisor)
        let allWritten = state.withLock { s -> Bool in
            s.total = lines
            return s.written == lines
        }
        if allWritten { finished.signal() }
        finished.wait()

        let done = DispatchSemaphore(value: 0)
        supervisor.softKill(completion: { done.signal() })
        done.wait()
        progress?.cancel()
        writer.sync {}
        return summary()
    }

    // MARK: Input

    /// Reads lines until end of input or a stop; returns how many were taken.
    private func read(_ fd: CInt, into supervisor: Supervisor) -> Int {
        let maxLine = SupervisorConfiguration(workerPath: "").maxPayload
        let requestOptions = RequestOptions()
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var partial: [UInt8] = []
        var oversized = false  // the current line is past maxLine: its bytes are dropped
        var index = 0
        var batch: [[UInt8]] = []
        var batchStart = 0

        func flush() {
            guard !batch.isEmpty else { return }
            let base = batchStart
            let sizes = batch.map(\.count)
            supervisor.enqueue(contentsOf: batch, options: requestOptions) { [self] i, result in
                complete(base + i, bytes: sizes[i] + 1, result)
            }
            batch.removeAll(keepingCapacity: true)
        }
        /// Takes a permit for the next line; `false` when reading must stop.
        func admit() -> Bool {
            if permits.wait(timeout: .now()) == .timedOut {
                flush()  // what is batched must go out before waiting for its permits back
                permits.wait()
            }
            return !stopped
        }
        func take(_ line: [UInt8]) -> Bool {
            guard admit() else { permits.signal(); return false }
            if batch.isEmpty { batchStart = index }
            batch.append(line)
            index += 1
            if batch.count >= 256 { flush() }
            return true
        }
        func takeOversized(_ length: Int) -> Bool {
            guard admit() else { permits.signal(); return false }
            flush()
            record(index, bytes: length + 1, .failure("the line is longer than \(maxLine) bytes (the largest payload)"))
            index += 1
            return true
        }

        var pollFDs = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
        var oversizedLength = 0
        reading: while !stopped {
            flush()
            if poll(&pollFDs, 2, -1) < 0 {
                if errno == EINTR { continue }
                message("poll: \(String(cString: strerror(errno)))")
                break
            }
            if pollFDs[1].revents != 0 { break }
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                message("reading stdin: \(String(cString: strerror(errno)))")
                break
            }
            if n == 0 {
                if oversized { _ = takeOversized(oversizedLength) } else if !partial.isEmpty { _ = take(partial) }
                break
            }
            var start = 0
            while start < n {
                guard let newline = buffer[start..<n].firstIndex(of: 10) else {
                    if oversized {
                        oversizedLength += n - start
                    } else {
                        partial.append(contentsOf: buffer[start..<n])
                        if partial.count > maxLine { oversized = true; oversizedLength = partial.count; partial = [] }
                    }
                    break
                }
                if oversized {
                    oversized = false
                    guard takeOversized(oversizedLength + newline - start) else { break reading }
                } else if partial.isEmpty {
                    guard take(Array(buffer[start..<newline])) else { break reading }
                } else {
                    partial.append(contentsOf: buffer[start..<newline])
                    if partial.count > maxLine {
                        guard takeOversized(partial.count) else { break reading }
                    } else {
                        guard take(partial) else { break reading }
                    }
                    partial.removeAll(keepingCapacity: partial.capacity <= 1 << 20)
                }
                start = newline + 1
            }
        }
        flush()
        return index
    }

    private var stopped: Bool { state.withLock { $0.signals > 0 || $0.fatal != nil } }

    private func wake() {
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
        permits.signal()  // in case the reader waits for a permit
    }

    // MARK: Output

    private func complete(_ index: Int, bytes: Int, _ result: Result<WorkerResponse, SupervisorError>) {
        switch result {
        case .success(let response):
            if response.bytes.contains(10) {
                record(index, bytes: bytes, .failure("the answer contains a newline (\(response.bytes.count) bytes from worker \(response.workerPID))"))
            } else {
                record(index, bytes: bytes, .answer(response.data))
            }
        case .failure(let error):
            record(index, bytes: bytes, .failure(error.description))
        }
    }

    /// Counts an outcome and hands what can be written to the writer, in order. The hand-off
    /// happens under the lock, so that batches reach the writer in the order they were formed.
    private func record(_ index: Int, bytes: Int, _ outcome: Outcome) {
        state.withLock { s in
            if case .answer = outcome { s.answered += 1 } else { s.failed += 1 }
            s.bytesDone += bytes
            var ready: [(Int, Outcome)] = []
            if options.ordered {
                if index == s.nextToWrite {
                    ready.append((index, outcome))
                    s.nextToWrite += 1
                    while let next = s.waiting.removeValue(forKey: s.nextToWrite) {
                        ready.append((s.nextToWrite, next))
                        s.nextToWrite += 1
                    }
                } else {
                    s.waiting[index] = outcome
                }
            } else {
                ready.append((index, outcome))
            }
            if !ready.isEmpty {
                let batch = ready
                writer.async { [self] in emit(batch) }
            }
        }
    }

    private func emit(_ batch: [(Int, Outcome)]) {
        var out: [UInt8] = []
        var errors = ""
        for (index, outcome) in batch {
            switch outcome {
            case .answer(let data):
                out.append(contentsOf: data)
                out.append(10)
            case .failure(let text):
                if options.ordered { out.append(10) }
                errors += "lpm: line \(index + 1): \(text)\n"
            }
        }
        if !errors.isEmpty { writeAll(2, Array(((stderrIsTTY ? "\r\u{1B}[K" : "") + errors).utf8)) }
        if !out.isEmpty, !writeAll(outFD, out) {
            message("writing stdout: \(String(cString: strerror(errno)))")
            _exit(1)
        }
        for _ in batch { permits.signal() }
        let allWritten = state.withLock { s -> Bool in
            s.written += batch.count
            return s.written == s.total
        }
        if allWritten { finished.signal() }
    }

    @discardableResult
    private func writeAll(_ fd: CInt, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                offset += n
            }
            return true
        }
    }

    /// A line on stderr, clearing the progress line first.
    private func message(_ text: String) {
        writeAll(2, Array(((stderrIsTTY ? "\r\u{1B}[K" : "") + "lpm: " + text + "\n").utf8))
    }

    // MARK: Progress and summary

    private func startProgress() -> (any DispatchSourceTimer)? {
        guard stderrIsTTY else { return nil }
        let timer = DispatchSource.makeTimerSource(queue: writer)
        timer.schedule(deadline: .now() + .milliseconds(100), repeating: .milliseconds(100))
        timer.setEventHandler { [self] in
            let s = state.withLock { $0 }
            let elapsed = (ContinuousClock.now - start).seconds
            let done = s.answered + s.failed
            var line = "\r\u{1B}[K\(done) done, \(Int(Double(done) / max(elapsed, 0.001)))/s, \(s.failed) failed"
            if let inputSize, inputSize > 0, s.bytesDone > 0 {
                let fraction = min(1, Double(s.bytesDone) / Double(inputSize))
                let eta = elapsed * (1 - fraction) / fraction
                line += ", \(Int(fraction * 100))%, ETA \(Self.clock(eta))"
            }
            writeAll(2, Array(line.utf8))
        }
        timer.resume()
        return timer
    }

    static func clock(_ seconds: Double) -> String {
        let total = Int(seconds.rounded())
        let (h, m, s) = (total / 3600, total / 60 % 60, total % 60)
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return h > 0 ? "\(h):\(two(m)):\(two(s))" : "\(m):\(two(s))"
    }

    private func summary() -> Int32 {
        let s = state.withLock { $0 }
        let elapsed = (ContinuousClock.now - start).seconds
        let done = s.answered + s.failed
        let rate = Int(Double(done) / max(elapsed, 0.001))
        var text = "\(s.answered) answered, \(s.failed) failed in \(Self.seconds(elapsed)) (\(rate)/s)"
        if s.signals > 0 { text += "; interrupted" }
        message(text)
        if s.fatal != nil { return 2 }
        if s.signals > 0 { return 130 }
        return s.failed > 0 ? 1 : 0
    }

    static func seconds(_ value: Double) -> String {
        let centis = Int((value * 100).rounded())
        let frac = centis % 100
        return "\(centis / 100).\(frac < 10 ? "0" : "")\(frac) s"
    }
}

/// Prints `text` on stderr and exits with `status`.
func fail(_ status: Int32, _ text: String) -> Never {
    printError(text)
    exit(status)
}

/// Writes "lpm: `text`" and a newline on stderr.
func printError(_ text: String) {
    let bytes = Array("lpm: \(text)\n".utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}
