// lpm-ring-peer: the far side of the shared-ring tests (Tests/LPMWireTests/SharedRingTests.swift).
//
//   lpm-ring-peer echo [SPIN_NS]
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

let arguments = CommandLine.arguments
guard arguments.count >= 2, arguments[1] == "echo" else { fail(64, "usage: lpm-ring-peer echo [SPIN_NS]") }
let spin = arguments.count > 2 ? Int64(arguments[2]) ?? 0 : 0
// The kernel kills this process if the test's spawning thread goes away.
try? Sys.setParentDeathSignal(SIGKILL)
do {
    exit(try echo(spin: spin))
} catch {
    fail(2, "\(error)")
}
