import Glibc
// TEMPORARY until the wire branch lands.
import LPMWire
struct RequestHead {
    static let size = 24
    var id: RequestID
    var createdAt: UInt64
    func encode(into out: inout [UInt8]) { id.append(to: &out); out.appendLittleEndian(createdAt) }
}
struct HealthReport {
    static let size = 16
    var heapTotal: UInt64
    var heapUsed: UInt64
    static func decode(_ p: UnsafeRawBufferPointer) -> HealthReport? {
        guard p.count >= 16 else { return nil }
        return HealthReport(heapTotal: p.readLittleEndian(at: 0, as: UInt64.self), heapUsed: p.readLittleEndian(at: 8, as: UInt64.self))
    }
}
struct StreamEnd {
    static let size = 9
    var count: UInt64
    var ok: Bool
    static func decode(_ p: UnsafeRawBufferPointer) -> StreamEnd? {
        guard p.count >= 9 else { return nil }
        return StreamEnd(count: p.readLittleEndian(at: 0, as: UInt64.self), ok: p[8] == 0)
    }
}
