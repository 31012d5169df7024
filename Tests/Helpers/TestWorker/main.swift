// A worker for the tests; its behaviour is picked with LPM_TEST_MODE:
//   echo (default)  answers each request with its payload
//   slow            waits LPM_TEST_DELAY_MS (default 100) before answering
//   never           never answers (emits "cancelled" with the payload when a request is cancelled)
//   half-frame      sends half a frame header on the first request, then blocks for good
//   hang            blocks its thread for good on the first request (answers no ping)
//   crash-on-start  exits with code 3 at once
//   exit-on-request exits with code 7 on the first request
//   flood-pings     floods the supervisor with pings, never reads again
//   fd-flood        sends thousands of descriptors on frames that announce none
//   garbage         writes bytes that are not a frame on the first request
//   lie             answers a request id it never received
//   busy            says ready then busy at once
//   ready-twice     calls ready() twice
//   events          emits "hello" with a reply wanted on each request; answers with the reply
//   softkill-handler runs a soft-kill handler that waits 100 ms then calls done
//   late            answers after LPM_TEST_DELAY_MS, even when cancelled
//   pid             answers with its pid
//   big             answers with LPM_TEST_SIZE bytes
//   stream-digest   reads the request's stream; answers "count:fnv1a-hex"
//   stream-exit     reads the first chunk of the request's stream, then exits with code 5
//   stream-out      payload "N:seed": answers with a stream of N pattern bytes
//   stream-die      starts a response stream, then exits mid-way
//   socket-echo     echoes one line on the request's socket, closes it, answers with its pid
//   slot            answers with Worker.slot ("none" when unset)
//   getenv          answers with the value of the variable the payload names ("<unset>" when unset)
//   cloexec         answers with fcntl(3, F_GETFD) & FD_CLOEXEC
//   fail-x          fails requests whose payload starts with "x", echoes the others
//   raw-echo        (no worker runtime) announces batches only, echoes on the socket
//   ring-kind, ring-length, ring-tail, ring-flags  (no worker runtime) announces rings,
//                   then spoils the response ring on the first request (RawRingWorker.swift)
//   never-count     never answers, except "count": the number of other requests in flight,
//                   and "block:MS[:padding]": blocks the thread MS ms, then answers "blocked"
//   transport       answers "rings" when the channel has rings attached, else "socket"
//   bad-batch       (no worker runtime) announces batches when ready, answers every request
//                   with a malformed batched response
//   reuse-check     "later:X" kept and answered with its payload 20 ms later; "keep:X" keeps
//                   the payload array and answers "ok"; "hold:X" answers "ok" and keeps the
//                   request; "dump" / "dump-held" answer with the kept payloads / the held
//                   requests' payloads, joined by ","; anything else is echoed (requests
//                   answered at once and kept by nobody are reused)
//   answer-on-release  holds requests until LPM_TEST_HOLD have come, then blocks its thread (no
//                   ping read) until the file LPM_TEST_RELEASE exists, answers them all (4 KiB
//                   each: several reads of the supervisor's, less than the socket holds) and goes
//                   on, or with LPM_TEST_THEN_HANG set hangs for good once they are written
//   off-thread      answers from another thread (a detached task): the runtime stops the worker
//   task-trap       a synchronous handler whose answer comes from `Task { await ...; respond }`
//                   (main-actor code: this file's top level), after LPM_TEST_DELAY_MS
// Async handlers (`worker.onRequest { request async throws in ... }`):
//   async-sleep     payload "MS": sleeps MS ms, answers "MS:N:main", N its completion rank
//                   (1, 2...) and main whether it ran on the main thread ("main" or "other")
//   async-nonisolated  the same, from a handler made in a nonisolated function (it runs on the
//                   worker's task executor rather than the main actor)
//   async-cancel    awaits for an hour; when cancelled, emits "async-cancelled" with the payload
//                   and "+cancelled" when Task.isCancelled was set, then rethrows
//   async-throw     throws an error whose description is "async handler failed on purpose"
//   async-silent    returns without answering
//   async-detached  payload "spin:MS": burns CPU in a detached task until another request has
//                   been answered (then answers "spun") or for MS ms at most (then answers
//                   "spun alone"); any other payload is answered at once
//   async-busy      says busy, sleeps LPM_TEST_DELAY_MS, answers, says ready
//   async-stream    payload "N:seed": after a sleep, answers with a stream of N pattern bytes,
//                   written in 64 KiB chunks with a sleep between them
//   thread-id       answers "kernel glibc clock dispatch": the main thread's id (gettid), the
//                   one glibc's thread descriptor holds, "clock-ok" when its thread CPU clock
//                   (pthread_getcpuclockid(pthread_self())) reads, else the error, and the id
//                   libdispatch caches (after checking the main queue is bound to it)
//   mutex-contend   locks a Synchronization.Mutex on the main thread while another thread
//                   contends for it (blocked in the kernel: PI futex), then unlocks; answers "ok"
//                   when the other thread got it within 5 s, else "stuck"
// Preload (Worker.preload, once in a template or in each worker started with exec):
//   LPM_TEST_PRELOAD_MB=N     maps N MiB of anonymous memory and writes every page
//   LPM_TEST_PRELOAD_SIGNALS=1 catches SIGUSR1, ignores SIGUSR2 and blocks SIGTERM
//   LPM_TEST_PRELOAD_MUTEX=1  locks and unlocks the mutex of mutex-contend once (the Swift
//                             runtime caches the thread's id on a first lock)
//   LPM_TEST_PRELOAD_THREAD=1 starts a thread that sleeps for good (a template then refuses to fork)
//   template-info   answers "preloadPID pid ppid pgid forked|exec fds sigblk sigcgt sigign": the
//                   pid the preload ran in, its own, its parent's, its process group, how it
//                   started, its open descriptor count and its blocked, caught and ignored
//                   signal masks (hex)
import LPMReactor
import LoadProcessManagerWorker
import LPMWire
import LPMTestSupport
import Dispatch
import Glibc
import Synchronization

/// Speaks the protocol by hand: says it takes batches, then answers each request with a batch
/// that announces 5 answers and holds none.
func badBatchWorker() -> Never {
    _ = fcntl(3, F_SETFL, fcntl(3, F_GETFL) & ~O_NONBLOCK)
    func writeAll(_ bytes: [UInt8]) { bytes.withUnsafeBytes { b in var o = 0; while o < b.count { let n = write(3, b.baseAddress! + o, b.count - o); if n <= 0 { exit(0) }; o += n } } }
    func readExactly(_ n: Int) -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: n)
        var got = 0
        while got < n {
            let r = buf.withUnsafeMutableBytes { read(3, $0.baseAddress! + got, n - got) }
            if r <= 0 { exit(0) }
            got += r
        }
        return buf
    }
    var caps: [UInt8] = []
    WorkerCapabilities.batches.encode(into: &caps)
    var ready: [UInt8] = []
    ready.appendFrame(.ready, id: 0, payload: caps)
    writeAll(ready)
    while true {
        let header = readExactly(Wire.headerSize)
        let length = header.withUnsafeBytes { Int($0.readLittleEndian(at: 4, as: UInt32.self)) }
        let id = header.withUnsafeBytes { $0.readLittleEndian(at: 8, as: UInt64.self) }
        _ = readExactly(length)
        if header[2] == FrameType.request.rawValue {
            var answer: [UInt8] = []
            answer.appendFrame(.response, flags: .batch, id: id, payload: [5, 0, 0, 0])
            writeAll(answer)
        }
    }
}

/// A thread's body that sleeps for good (off the main actor: it runs on its own thread).
nonisolated func sleepForever(_: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    while true { sleep(1000) }
}

/// The pid the preload ran in (a forked worker's template, or its own).
nonisolated(unsafe) var preloadPID: pid_t = 0
Worker.preload {
    preloadPID = getpid()
    if let mb = getenv("LPM_TEST_PRELOAD_MB").flatMap({ Int(String(cString: $0)) }), mb > 0 {
        let bytes = mb << 20
        let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if p != MAP_FAILED, let p { memset(p, 0x5a, bytes) }
    }
    if getenv("LPM_TEST_PRELOAD_SIGNALS") != nil {
        // A handler, an ignored signal and a blocked one: a forked worker has none of them.
        signal(SIGUSR1, { _ in })
        signal(SIGUSR2, SIG_IGN)
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigprocmask(SIG_BLOCK, &set, nil)
    }
    if getenv("LPM_TEST_PRELOAD_MUTEX") != nil { Contention.mutex.withLock { $0 += 1 } }
    if getenv("LPM_TEST_PRELOAD_THREAD") != nil {
        var thread = pthread_t()
        _ = pthread_create(&thread, nil, sleepForever, nil)
    }
}

/// The async-detached mode: a spin that ends once the loop has answered another request.
enum Detached {
    static let answered = Atomic<Bool>(false)

    /// Burns CPU until another request has been answered (true) or `ms` have passed (false).
    static func spin(milliseconds ms: Int) -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let end = Int(now.tv_sec) * 1_000_000_000 + Int(now.tv_nsec) + ms * 1_000_000
        repeat {
            if answered.load(ordering: .acquiring) { return true }
            clock_gettime(CLOCK_MONOTONIC, &now)
        } while Int(now.tv_sec) * 1_000_000_000 + Int(now.tv_nsec) < end
        return false
    }
}

/// The mutex of the mutex-contend mode, and the other thread's side.
enum Contention {
    static let mutex = Mutex<Int>(0)
    static let got = Atomic<Int>(0)

    /// The main thread holds the mutex while another thread blocks on it, then releases it.
    static func contend() -> String {
        got.store(0, ordering: .relaxed)
        var thread = pthread_t()
        mutex.withLock { _ in
            _ = pthread_create(&thread, nil, { _ in
                Contention.mutex.withLock { $0 += 1 }
                Contention.got.store(1, ordering: .releasing)
                return nil
            }, nil)
            // Long enough for the other thread to give up spinning and block in the kernel.
            usleep(100_000)
        }
        for _ in 0..<500 where got.load(ordering: .acquiring) == 0 { usleep(10_000) }
        guard got.load(ordering: .acquiring) == 1 else { return "stuck" }
        pthread_join(thread, nil)
        return "ok"
    }
}

/// The main thread's ids as the kernel and glibc see them, and whether its CPU clock reads.
func threadIDReport() -> String {
    let ids = Sys.threadIDs()
    var clock = clockid_t()
    var now = timespec()
    let made = pthread_getcpuclockid(pthread_self(), &clock)
    let read = made == 0 ? (clock_gettime(clock, &now) == 0 ? "clock-ok" : "clock-errno-\(errno)") : "clockid-error-\(made)"
    // dispatchPrecondition traps unless the main queue is bound to the id libdispatch caches.
    dispatchPrecondition(condition: .onQueue(.main))
    return "\(ids.kernel) \(ids.glibc.map { String($0) } ?? "none") \(read) \(Sys.dispatchThreadID().map { String($0) } ?? "none")"
}

/// A line of /proc/self/status ("SigBlk", "SigCgt"...), its value only.
func statusField(_ name: String) -> String {
    guard let f = fopen("/proc/self/status", "r") else { return "?" }
    defer { fclose(f) }
    var line = [CChar](repeating: 0, count: 256)
    while fgets(&line, 256, f) != nil {
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if text.hasPrefix(name + ":") {
            return String(text.dropFirst(name.count + 1).filter { !$0.isWhitespace })
        }
    }
    return "?"
}

func openDescriptorCount() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var n = 0
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { n += 1 }
    }
    return n - 1  // the directory's own descriptor
}

// bad-batch for every worker never calls `connect()`: started as a template, it is not one.
if getenv("LPM_TEST_ONLY_SLOT") == nil, getenv("LPM_TEST_MODE").map({ String(cString: $0) }) == "bad-batch" { badBatchWorker() }
let worker = Worker.connect()
// What is per worker is read here, after `connect()`: with a worker template, everything above
// ran once in the template, and `connect()` returns in each forked worker with its own slot
// (LPM_WORKER_SLOT) and the environment the template had.
// With LPM_TEST_ONLY_SLOT, only the worker in that slot takes LPM_TEST_MODE; the others echo.
let onlySlot = getenv("LPM_TEST_ONLY_SLOT").map { String(cString: $0) }
let mySlot = getenv("LPM_WORKER_SLOT").map { String(cString: $0) }
let mode = onlySlot == nil || onlySlot == mySlot ? getenv("LPM_TEST_MODE").map { String(cString: $0) } ?? "echo" : "echo"
let delay = getenv("LPM_TEST_DELAY_MS").flatMap { Int(String(cString: $0)) } ?? 100
if mode == "crash-on-start" { exit(3) }
// In one slot only: speaks the protocol by hand on the channel `connect()` checked (nothing
// was sent on it yet).
if mode == "bad-batch" { badBatchWorker() }
if mode == "raw-echo" || mode.hasPrefix("ring-") { rawRingWorker(mode) }
/// The payload arrays the reuse-check mode keeps (main-actor state, like the handler).
var keptPayloads: [[UInt8]] = []
/// The requests the reuse-check mode holds after answering them.
var heldRequests: [Worker.Request] = []
worker.on("ping-event") { event in event.reply(Array("pong:".utf8) + event.data) }
worker.on("record") { event in
    // Echo a broadcast back as an event so the test can see it arrived.
    var data = event.data
    if let fd = event.socket {
        data += Array("+fd".utf8)
        close(fd)
    }
    worker.emit("recorded", data)
}

worker.onRequest { request in
    switch mode {
    case "slow", "late":
        _ = try? worker.reactor.schedule(after: .milliseconds(delay)) { request.respond(request.data) }
    case "half-frame":
        // The first half of a frame header, then nothing ever again.
        var half: [UInt8] = [0x4C, 1, 1, 0, 0, 0, 0, 0]
        _ = write(3, &half, half.count)
        while true { sleep(1000) }
    case "hang":
        // Blocks its thread for good: no answer, no pong.
        while true { sleep(1000) }
    case "never":
        // Never answers; a cancellation from the supervisor is reported as an event.
        request.onCancel = { worker.emit("cancelled", request.data) }
    case "exit-on-request":
        exit(7)
    case "flood-pings":
        // Floods the supervisor with pings and never reads its channel again: the supervisor's
        // pongs pile up, until it calls this worker unresponsive or in violation.
        var frame: [UInt8] = []
        frame.appendFrame(.ping, id: 1, payload: [UInt8]())
        var pollfd = pollfd(fd: 3, events: Int16(POLLOUT), revents: 0)
        while true {
            if write(3, &frame, frame.count) < 0 { _ = poll(&pollfd, 1, 1000) }
        }
    case "flood-events":
        // Floods the supervisor with custom events (no reply wanted), as fast as it can write.
        var frame: [UInt8] = []
        frame.appendFrame(.event, id: 0, payload: EventPayload.encode(name: "spam", data: [1, 2, 3]))
        var pollfd = pollfd(fd: 3, events: Int16(POLLOUT), revents: 0)
        while true {
            if write(3, &frame, frame.count) < 0 {
                if errno == EPIPE || errno == ECONNRESET { exit(0) }
                _ = poll(&pollfd, 1, 1000)
            }
        }
    case "fd-flood":
        // Sends descriptors on frames that announce none, thousands of them.
        var frame: [UInt8] = []
        frame.appendFrame(.pong, id: 1, payload: [UInt8]())
        for _ in 0..<5_000 {
            let sent = frame.withUnsafeBytes { try? Sys.sendmsg(3, $0, passing: 0) }
            if sent == nil { break }  // the supervisor closed the channel
        }
        while true { sleep(1000) }
    case "garbage":
        var junk: [UInt8] = [0xDE, 0xAD, 0xBE, 0xEF, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
        _ = write(3, &junk, junk.count)
    case "oversize-header":
        // A header announcing 16 MiB, more than the supervisor accepts in this test.
        var header: [UInt8] = [0x4C, 1, 4, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
        _ = write(3, &header, header.count)
    case "lie":
        request.respond(request.data)
        // A response to an id that was never sent (a different slot and generation).
        var frame: [UInt8] = [0x4C, 1, 4, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0, 0x77, 0, 0, 0]
        _ = write(3, &frame, frame.count)
    case "events":
        worker.emit("hello", request.data) { reply in request.respond(reply) }
    case "pid":
        request.respond(String(getpid()))
    case "never-count":
        // "count": answers with how many other requests are in flight here; any other payload
        // is never answered (and leaves the in-flight list only when cancelled).
        let text = String(decoding: request.data, as: UTF8.self)
        if text == "count" { request.respond(String(worker.requests().count - 1)) }
        if text.hasPrefix("block:"), let ms = UInt32(text.split(separator: ":")[1]) {
            // Blocks the worker's thread: what arrives meanwhile waits in the ring and the socket.
            usleep(ms * 1000)
            request.respond("blocked")
        }
    case "transport":
        request.respond(worker.usesRings ? "rings" : "socket")
    case "big":
        let size = getenv("LPM_TEST_SIZE").flatMap { Int(String(cString: $0)) } ?? 1024
        request.respond([UInt8](repeating: 0x5A, count: size))
    case "stream-digest":
        guard let stream = request.stream else { return request.fail("no stream") }
        var digest = StreamDigest()
        stream.onChunk = { digest.update($0) }
        stream.onEnd = { error in
            if let error { request.fail("stream error: \(error)") } else { request.respond(digest.description) }
        }
        stream.resume()
    case "stream-exit":
        guard let stream = request.stream else { return request.fail("no stream") }
        stream.onChunk = { _ in exit(5) }
        stream.resume()
    case "stream-out":
        let text = String(decoding: request.data, as: UTF8.self).split(separator: ":")
        let total = Int(text.first ?? "0") ?? 0
        let seed = UInt8(text.last ?? "0") ?? 0
        guard let out = request.respondWithStream(Array("streaming".utf8)) else { return }
        var sent = 0
        func more() {
            while sent < total && out.bufferedCount < 256 * 1024 {
                let n = min(64 * 1024, total - sent)
                let from = sent
                sent += n
                out.write(patternBytes(from: from, count: n, seed: seed))
            }
            if sent == total { out.onDrain = {}; out.finish() }
        }
        out.onDrain = { more() }
        more()
    case "stream-die":
        guard let out = request.respondWithStream() else { return }
        out.write([UInt8](repeating: 7, count: 100_000))
        _ = try? worker.reactor.schedule(after: .milliseconds(50)) { exit(9) }
    case "socket-echo":
        guard let fd = request.socket else { return request.fail("no socket") }
        var line: [UInt8] = []
        var byte: UInt8 = 0
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
        while read(fd, &byte, 1) == 1 {
            line.append(byte)
            if byte == 10 { break }
        }
        _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        request.closeSocket()
        request.respond(String(getpid()))
    case "fail":
        request.fail("handler failed on purpose")
    case "fail-x":
        // Fails the requests whose payload starts with "x", echoes the others.
        if request.data.first == UInt8(ascii: "x") { request.fail("no x: \(String(decoding: request.data, as: UTF8.self))") } else { request.respond(request.data) }
    case "template-info":
        let how = Worker.isForkedFromTemplate ? "forked" : "exec"
        request.respond("\(preloadPID) \(getpid()) \(getppid()) \(getpgrp()) \(how) \(openDescriptorCount()) \(statusField("SigBlk")) \(statusField("SigCgt")) \(statusField("SigIgn"))")
    case "thread-id":
        request.respond(threadIDReport())
    case "mutex-contend":
        request.respond(Contention.contend())
    case "slot":
        request.respond(worker.slot.map { String($0) } ?? "none")
    case "getenv":
        request.respond(getenv(String(decoding: request.data, as: UTF8.self)).map { String(cString: $0) } ?? "<unset>")
    case "cloexec":
        request.respond(String(fcntl(3, F_GETFD) & FD_CLOEXEC))
    case "answer-all-exit":
        // Holds requests until LPM_TEST_HOLD have come, answers them all at once (512 bytes
        // each: more than one read of the supervisor's, less than the socket holds), then exits
        // 0 once the answers are written (a job queued behind the iteration's flush).
        heldRequests.append(request)
        let hold = getenv("LPM_TEST_HOLD").flatMap { Int(String(cString: $0)) } ?? 100
        if heldRequests.count == hold {
            for r in heldRequests { r.respond(r.data + [UInt8](repeating: 0x2E, count: max(0, 512 - r.data.count))) }
            heldRequests = []
            worker.reactor.execute { _ in _exit(0) }
        }
    case "answer-on-release":
        heldRequests.append(request)
        let hold = getenv("LPM_TEST_HOLD").flatMap { Int(String(cString: $0)) } ?? 24
        if heldRequests.count == hold, let path = getenv("LPM_TEST_RELEASE").map({ String(cString: $0) }) {
            while access(path, F_OK) != 0 { usleep(5_000) }
            for r in heldRequests { r.respond(r.data + [UInt8](repeating: 0x2E, count: max(0, 4096 - r.data.count))) }
            heldRequests = []
            if getenv("LPM_TEST_THEN_HANG") != nil {
                // A job runs after the iteration's flush: the answers are written, then nothing.
                worker.reactor.execute { _ in while true { sleep(3600) } }
            }
        }
    case "reuse-check":
        let text = String(decoding: request.data, as: UTF8.self)
        if text.hasPrefix("later:") {
            _ = try? worker.reactor.schedule(after: .milliseconds(20)) { request.respond(request.data) }
        } else if text.hasPrefix("keep:") {
            keptPayloads.append(request.data)
            request.respond("ok")
        } else if text.hasPrefix("hold:") {
            heldRequests.append(request)
            request.respond("ok")
        } else if text == "dump-held" {
            request.respond(heldRequests.map { String(decoding: $0.data, as: UTF8.self) }.joined(separator: ","))
        } else if text == "dump" {
            request.respond(keptPayloads.map { String(decoding: $0, as: UTF8.self) }.joined(separator: ","))
        } else {
            request.respond(request.data)
        }
    case "off-thread":
        // A mistake the runtime catches: the request belongs to the worker's thread.
        nonisolated(unsafe) let stray = request
        Task.detached { stray.respond("from another thread") }
    case "task-trap":
        // The pattern of a user's report: a task started from a synchronous handler. This is
        // main-actor code, so the task runs on the main actor, which the worker's loop serves.
        Task {
            try await Task.sleep(for: .milliseconds(delay))
            request.respond(request.data)
        }
    default:
        request.respond(request.data)
    }
}

// MARK: Async modes

/// Completion ranks and the main-thread check, for the async modes.
final class AsyncLog {
    var completed = 0
    /// A "hold" request waiting for another request to complete.
    var held: CheckedContinuation<Void, Never>?
    func complete(_ payload: [UInt8]) -> String {
        completed += 1
        return "\(String(decoding: payload, as: UTF8.self)):\(completed):\(Wire.isMainThread ? "main" : "other")"
    }

    /// Lets a "hold" request go on, after another request completed.
    func releaseHeld() {
        if let waiting = held {
            held = nil
            waiting.resume()
        }
    }

    /// The async-sleep request: "hold" waits until another request completes; a number is
    /// milliseconds to sleep. Runs on the handler's isolation (the main actor, or none).
    nonisolated(nonsending) func serve(_ request: Worker.Request) async throws {
        let text = String(decoding: request.data, as: UTF8.self)
        if text == "hold" {
            await withCheckedContinuation { held = $0 }
        } else {
            try await Task.sleep(for: .milliseconds(Int(text) ?? 0))
        }
        request.respond(complete(request.data))
        if text != "hold" { releaseHeld() }
    }
}

struct AsyncFailure: Error, CustomStringConvertible {
    var description: String { "async handler failed on purpose" }
}

/// Sets the handler of the nonisolated mode: a closure made here is nonisolated, so its task
/// runs on the worker's task executor.
nonisolated func setUpNonisolated(_ worker: Worker) {
    let log = AsyncLog()
    worker.onRequest { request in try await log.serve(request) }
}

@MainActor func setUpAsyncMode(_ mode: String) {
    let log = AsyncLog()
    switch mode {
    case "async-nonisolated":
        setUpNonisolated(worker)
    case "async-sleep":
        worker.onRequest { request in try await log.serve(request) }
    case "async-cancel":
        worker.onRequest { request in
            do {
                try await Task.sleep(for: .seconds(3600))
            } catch {
                worker.emit("async-cancelled", request.data + Array((Task.isCancelled ? "+cancelled" : "").utf8))
                throw error
            }
            request.respond("slept an hour")
        }
    case "async-throw":
        worker.onRequest { _ in
            try await Task.sleep(for: .milliseconds(1))
            throw AsyncFailure()
        }
    case "async-silent":
        worker.onRequest { _ in try await Task.sleep(for: .milliseconds(1)) }
    case "async-detached":
        worker.onRequest { request in
            let text = String(decoding: request.data, as: UTF8.self)
            guard text.hasPrefix("spin:"), let ms = Int(text.dropFirst(5)) else {
                request.respond(text)
                Detached.answered.store(true, ordering: .releasing)
                return
            }
            // CPU-heavy work on another thread: the worker's loop stays free meanwhile, and
            // answers another request while this one spins (no race with the clock).
            let together = await Task.detached { Detached.spin(milliseconds: ms) }.value
            request.respond(together ? "spun" : "spun alone")
        }
    case "async-busy":
        worker.onRequest { request in
            worker.busy()
            try await Task.sleep(for: .milliseconds(delay))
            request.respond(log.complete(request.data))
            worker.ready()
        }
    case "async-stream":
        worker.onRequest { request in
            let text = String(decoding: request.data, as: UTF8.self).split(separator: ":")
            let total = Int(text.first ?? "0") ?? 0
            let seed = UInt8(text.last ?? "0") ?? 0
            try await Task.sleep(for: .milliseconds(5))
            guard let out = request.respondWithStream(Array("streaming".utf8)) else { return }
            var sent = 0
            while sent < total {
                let n = min(64 * 1024, total - sent)
                out.write(patternBytes(from: sent, count: n, seed: seed))
                sent += n
                try await Task.sleep(for: .milliseconds(1))
            }
            out.finish()
        }
    default:
        break
    }
}

if mode.hasPrefix("async-") { setUpAsyncMode(mode) }

if mode == "softkill-handler" {
    worker.onSoftKill { done in
        _ = try? worker.reactor.schedule(after: .milliseconds(100)) { done() }
    }
}
worker.ready()
if mode == "ready-twice" { worker.ready() }
if mode == "busy" { worker.busy() }
worker.run()

