// lpm-ring-peer: the far side of the shared-ring tests (Tests/LPMWireTests/SharedRingTests.swift).
//
//   lpm-ring-peer echo [SPIN_NS]
//   lpm-ring-peer pingpong N poll|bell    the Swift side of Benchmarks/Baselines' ring-pingpong:
//                                         prints name=swift_ring_pingpong_<mode>_64B value=<ns/rt>
//   lpm-ring-peer pipeline N poll|bell    the same for ring-echo: name=swift_ring_echo_<mode>_1x64B
//                                         value=<msg/s> (build with -c release for figures)
//
// The two benchmark modes create the ring object (256 KiB rings, as the C baseline), start this
// program as the echo peer, and time N 64-byte messages after a warm-up; `poll` makes both
// sides spin instead of sleeping, `bell` makes them sleep as soon as a ring is empty.
//
// Descriptors: 3 the ring object (a memfd), 4 this side's doorbell (an eventfd), 5 the
// parent's doorbell. Reads the request ring and echoes every record into the response ring
// (same id, flags and payload; kind `response`), through the doorbell handshake: when the
// request ring is empty it spins for SPIN_NS (default 0), then announces its sleep and waits on
// descriptor 4; when the response ring is full it announces that it waits for space. A record
// of kind 0xEE stops it: it answers with its counters (u64 sleeps, u64 waits for space, both
// little-endian) and exits 0. Exit 2: a ring error (printed); 3: a wait of 30 s with no wake-up
// (a lost wake-up: the test's deadline would otherwise be the only sign).
import Glibc
import LPMReactor
import LPMWire

let stopKind: UInt8 = 0xEE
let bell: CInt = 4
let parentBell: CInt = 5

func fail(_ code: Int32, _ message: String) -> Never {
    Sys.writeToStandardError("lpm-ring-peer: \(message)\n")
    exit(code)
}

func waitForBell() throws {
    guard try SharedRingDoorbell.wait(bell, timeoutMilliseconds: 30_000) else { fail(3, "no wake-up in 30 s") }
}

func echo(spin: Int64) throws -> Int32 {
    let mapping = try SharedRingMapping.attach(descriptor: 3)
    close(3)
    var requests = try mapping.consumer(.request)
    var responses = try mapping.producer(.response)
    var sleeps: UInt64 = 0
    var spaceWaits: UInt64 = 0
    var stopped = false

    // Publishes the responses written and releases the requests read (all of them echoed by
    // now); rings the parent once if either side of it asked.
    func flush() throws {
        var ring = responses.publish()
        if requests.release() { ring = true }
        if ring { try SharedRingDoorbell.ring(parentBell) }
    }

    while !stopped {
        var read = 0
        while let r = try requests.next() {
            read += 1
            var length = r.payload.count
            var counters = (sleeps.littleEndian, spaceWaits.littleEndian)
            if r.kind == stopKind { length = 16 }
            var room = try responses.reserve(payload: length)
            while room == nil {
                // Full: publish what is written so the parent can drain it, then wait for space.
                // The request being echoed stays unreleased.
                if responses.publish() { try SharedRingDoorbell.ring(parentBell) }
                if try responses.prepareToWaitForSpace(payload: length) {
                    spaceWaits += 1
                    try waitForBell()
                    responses.doneWaiting()
                }
                room = try responses.reserve(payload: length)
            }
            if r.kind == stopKind {
                withUnsafeBytes(of: &counters) { room!.copyMemory(from: $0) }
                responses.commit(length: 16, kind: stopKind, flags: 0, id: r.id)
                stopped = true
                break
            }
            room!.copyMemory(from: r.payload)
            responses.commit(length: length, kind: FrameType.response.rawValue, flags: r.flags, id: r.id)
            // Hand space back regularly: the parent may be waiting for it.
            if read & 63 == 0 { try flush() }
        }
        try flush()
        if read > 0 || stopped { continue }
        if spin > 0, try requests.spin(nanoseconds: spin) { continue }
        if try requests.prepareToSleep() {
            sleeps += 1
            try waitForBell()
        }
        requests.woke()
    }
    mapping.unmap()
    return 0
}

// MARK: - Benchmarks

/// Starts this program as `echo SPIN` with the ring object on 3, its doorbell on 4, ours on 5.
func spawnEcho(ring: CInt, peerBell: CInt, ourBell: CInt, spin: Int64) -> pid_t {
    let high = [ring, peerBell, ourBell].map { fcntl($0, F_DUPFD_CLOEXEC, 10) }
    guard !high.contains(-1) else { fail(1, "fcntl(F_DUPFD_CLOEXEC) failed") }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    for (i, fd) in high.enumerated() { posix_spawn_file_actions_adddup2(&actions, fd, CInt(3 + i)) }
    // The path /proc/self/exe names, not the link itself: under valgrind the link is the tool.
    var buffer = [CChar](repeating: 0, count: 4096)
    let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    let me = length > 0 ? String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "/proc/self/exe"
    let args = [me, "echo", String(spin)].map { (s: String) in strdup(s) }
    var argv = args + [nil]
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, me, &actions, nil, &argv, environ)
    posix_spawn_file_actions_destroy(&actions)
    for a in args { free(a) }
    for fd in high { close(fd) }
    guard rc == 0 else { fail(1, "posix_spawn: \(rc)") }
    return pid
}

/// The parent side of a benchmark: the request producer, the response consumer, the doorbells.
struct BenchSide {
    var out: SharedRingProducer
    var inbound: SharedRingConsumer
    let bell: CInt
    let peerBell: CInt
    let pid: pid_t
    let poll: Bool

    init(_ mapping: borrowing SharedRingMapping, ring: CInt, poll: Bool) throws {
        out = try mapping.producer(.request)
        inbound = try mapping.consumer(.response)
        bell = try Sys.eventfd().release()
        peerBell = try Sys.eventfd().release()
        pid = spawnEcho(ring: ring, peerBell: peerBell, ourBell: bell, spin: poll ? Int64.max / 2 : 0)
        self.poll = poll
    }

    /// Publishes and releases, ringing the peer if it asked.
    mutating func flush() throws {
        var ring = out.publish()
        if inbound.release() { ring = true }
        if ring && !poll { try SharedRingDoorbell.ring(peerBell) }
    }

    /// Waits for a response (and for request space when `space` > 0).
    mutating func wait(space: Int = 0) throws {
        if poll {
            while true {
                if try inbound.spin(nanoseconds: 1_000_000) { return }
                if space > 0, try !out.prepareToWaitForSpace(payload: space) { out.doneWaiting(); return }
                out.doneWaiting()
            }
        }
        var sleep = try inbound.prepareToSleep()
        if sleep && space > 0 { sleep = try out.prepareToWaitForSpace(payload: space) }
        if sleep { _ = try SharedRingDoorbell.wait(bell, timeoutMilliseconds: -1) }
        inbound.woke()
        out.doneWaiting()
    }

    mutating func stop() throws {
        while try out.reserve(payload: 0) == nil { try wait(space: 16) }
        out.commit(length: 0, kind: stopKind, flags: 0, id: 0)
        try flush()
        var status: CInt = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        close(bell)
        close(peerBell)
        guard status == 0 else { fail(1, "the echo peer exited with status \(status)") }
    }
}

/// A ring object of two 256 KiB rings (as the C baseline's), its descriptor closed once the peer has it.
func withBenchSide(poll: Bool, _ body: (inout BenchSide) throws -> Void) throws {
    var fd: FileDescriptor? = nil
    let mapping = try SharedRingMapping.create(requestCapacity: 256 << 10, responseCapacity: 256 << 10, descriptor: &fd)
    let ring = fd.take()!
    var side = try BenchSide(mapping, ring: ring.rawValue, poll: poll)
    ring.close()
    try body(&side)
    mapping.unmap()
}

func benchPingPong(_ n: Int, poll: Bool) throws {
    try withBenchSide(poll: poll) { side in
        var message = [UInt8](repeating: 0xA5, count: 64)
        let warm = min(10_000, max(1000, n / 10))
        var start: Int64 = 0
        for i in 0..<(warm + n) {
            if i == warm { start = Sys.monotonicNanoseconds() }
            var room = try side.out.reserve(payload: 64)
            while room == nil {
                try side.wait(space: 64)
                room = try side.out.reserve(payload: 64)
            }
            message.withUnsafeBytes { room!.copyMemory(from: $0) }
            side.out.commit(length: 64, kind: FrameType.request.rawValue, flags: 0, id: UInt64(i))
            try side.flush()
            var r = try side.inbound.next()
            while r == nil {
                try side.wait()
                r = try side.inbound.next()
            }
            guard let r, r.id == UInt64(i), r.payload.count == 64 else { fail(1, "bad echo") }
            message.withUnsafeMutableBytes { $0.copyMemory(from: r.payload) }
            try side.flush()
        }
        let elapsed = Sys.monotonicNanoseconds() - start
        try side.stop()
        print("name=swift_ring_pingpong_\(poll ? "poll" : "bell")_64B value=\(Double(elapsed) / Double(n)) unit=ns/rt")
    }
}

func benchPipeline(_ n: Int, poll: Bool) throws {
    try withBenchSide(poll: poll) { side in
        let message = [UInt8](repeating: 0x5A, count: 64)
        var sent = 0, got = 0
        let start = Sys.monotonicNanoseconds()
        while got < n {
            var progress = false, full = false
            while sent < n {
                guard let room = try side.out.reserve(payload: 64) else { full = true; break }
                message.withUnsafeBytes { room.copyMemory(from: $0) }
                side.out.commit(length: 64, kind: FrameType.request.rawValue, flags: 0, id: UInt64(sent))
                sent += 1
                progress = true
            }
            while let r = try side.inbound.next() {
                guard r.id == UInt64(got), r.payload.count == 64 else { fail(1, "bad echo") }
                got += 1
                progress = true
            }
            try side.flush()
            if !progress { try side.wait(space: full ? 64 : 0) }
        }
        let elapsed = Sys.monotonicNanoseconds() - start
        try side.stop()
        print("name=swift_ring_echo_\(poll ? "poll" : "bell")_1x64B value=\(Int(Double(n) * 1e9 / Double(elapsed))) unit=msg/s")
    }
}

let arguments = CommandLine.arguments
func usage() -> Never { fail(64, "usage: lpm-ring-peer echo [SPIN_NS] | pingpong N poll|bell | pipeline N poll|bell") }
guard arguments.count >= 2 else { usage() }
do {
    switch arguments[1] {
    case "echo":
        let spin = arguments.count > 2 ? Int64(arguments[2]) ?? 0 : 0
        // The kernel kills this process if the spawning thread goes away.
        try? Sys.setParentDeathSignal(SIGKILL)
        exit(try echo(spin: spin))
    case "pingpong", "pipeline":
        guard arguments.count == 4, let n = Int(arguments[2]), n > 0, ["poll", "bell"].contains(arguments[3]) else { usage() }
        let poll = arguments[3] == "poll"
        if arguments[1] == "pingpong" { try benchPingPong(n, poll: poll) } else { try benchPipeline(n, poll: poll) }
    default:
        usage()
    }
} catch {
    fail(2, "\(error)")
}
