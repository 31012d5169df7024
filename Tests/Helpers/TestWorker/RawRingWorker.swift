import Glibc
import LPMReactor
import LPMWire

/// Speaks the protocol by hand, without the worker runtime (modes `raw-echo` and `ring-*`).
///
/// - `raw-echo`: announces batches only (no rings, as a worker in another language would) and
///   echoes every request on the socket.
/// - `ring-kind`, `ring-length`, `ring-tail`, `ring-flags`: announces rings, takes the three
///   descriptors, waits for the first request in the request ring, then spoils the response
///   ring (a record of an unknown kind; a length past the ring; a producer index that is not
///   a multiple of 8; a record that announces a descriptor) and rings the supervisor's
///   doorbell. Then only reads the socket until it closes.
func rawRingWorker(_ mode: String) -> Never {
    let fd: CInt = 3
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
    func writeAll(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { b in
            var o = 0
            while o < b.count { let n = write(fd, b.baseAddress! + o, b.count - o); if n <= 0 { exit(0) }; o += n }
        }
    }
    let announce: WorkerCapabilities = mode == "raw-echo" ? .batches : [.batches, .rings]
    var caps: [UInt8] = []
    announce.encode(into: &caps)
    var ready: [UInt8] = []
    ready.appendFrame(.ready, id: 0, payload: caps)
    writeAll(ready)

    let decoder = FrameDecoder()
    var descriptors: [CInt] = []
    var handOver: [UInt64: CInt] = [:]
    var spoiled = false
    while true {
        guard let n = try? decoder.receive(from: fd, descriptors: &descriptors), n > 0 else { exit(0) }
        try? decoder.decode { header, payload in
            switch header.type {
            case .request where mode == "raw-echo":
                var answer: [UInt8] = []
                answer.appendFrame(.response, id: header.id, payload: Array(payload[RequestHead.size...]))
                writeAll(answer)
            case .rings:
                handOver[header.id] = descriptors.removeFirst()
            case .ping:
                var pong: [UInt8] = []
                pong.appendFrame(.pong, id: header.id, payload: [UInt8]())
                writeAll(pong)
            default:
                break
            }
        }
        if !spoiled, let object = handOver[0], let supervisorBell = handOver[2] {
            spoiled = true
            spoil(mode, object: object, supervisorBell: supervisorBell)
        }
    }
}

/// Waits for a request record, then breaks the response ring as `mode` says and rings.
private func spoil(_ mode: String, object: CInt, supervisorBell: CInt) {
    guard let mapping = try? SharedRingMapping.attach(descriptor: object) else { exit(9) }
    guard var requests = try? mapping.consumer(.request), var responses = try? mapping.producer(.response) else { exit(9) }
    var id: UInt64 = 0
    while true {
        if let r = try? requests.next() { id = r.id; break }
        usleep(1000)
    }
    let control = mapping.base + SharedRingLayout.controlOffset(.response)
    switch mode {
    case "ring-kind":
        _ = try? responses.reserve(payload: 8)
        responses.commit(length: 8, kind: 99, flags: 0, id: id)
        responses.publish()
    case "ring-flags":
        _ = try? responses.reserve(payload: 8)
        responses.commit(length: 8, kind: FrameType.response.rawValue, flags: FrameFlags.descriptor.rawValue, id: id)
        responses.publish()
    case "ring-length":
        mapping.data(.response).storeBytes(of: UInt32(0x7FFF_FFF0).littleEndian, as: UInt32.self)
        control.storeBytes(of: UInt64(16).littleEndian, toByteOffset: SharedRingLayout.tailOffset, as: UInt64.self)
    default:  // ring-tail
        control.storeBytes(of: UInt64(12).littleEndian, toByteOffset: SharedRingLayout.tailOffset, as: UInt64.self)
    }
    try? SharedRingDoorbell.ring(supervisorBell)
    // The mapping stays: the supervisor kills this process.
    withExtendedLifetime(mapping) { while true { pause() } }
}
