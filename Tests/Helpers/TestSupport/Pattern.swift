/// The test pattern shared by the test worker and the tests: byte i is (i * 31 + seed) mod 256.
/// It repeats every 256 bytes, so a slice is copied from a doubled period.
public func patternBytes(from: Int, count: Int, seed: UInt8) -> [UInt8] {
    let period = (0..<512).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) }
    var out = [UInt8](repeating: 0, count: count)
    out.withUnsafeMutableBufferPointer { dst in
        period.withUnsafeBufferPointer { src in
            var i = 0
            while i < count {
                let n = Swift.min(256, count - i)
                UnsafeMutableRawPointer(dst.baseAddress! + i).copyMemory(from: src.baseAddress! + ((from + i) & 255), byteCount: n)
                i += n
            }
        }
    }
    return out
}
