import Glibc
import LPMReactor

/// Reads a process's resident set size from `/proc/PID/statm`, with `pread` on a descriptor kept
/// open for the process's life (1 µs, against 4.5 µs to open, read and close each time).
final class StatmReader {
    private var fd: CInt
    private static let pageSize = Sys.pageSize

    /// Opens `/proc/<pid>/statm`; a reader that could not open it (the process already gone, no
    /// procfs, no descriptor left) reports nothing: RSS is then 0 in ``Supervisor/health()`` and
    /// dispatch falls back to load alone. Not an error worth failing a spawn for.
    init(pid: pid_t) {
        fd = (try? Sys.open("/proc/\(pid)/statm", flags: O_RDONLY).release()) ?? -1
    }

    deinit { close() }

    /// Resident bytes, or `nil` if the file cannot be read (the process is gone: `ESRCH`).
    func residentBytes() -> Int? {
        guard fd >= 0 else { return nil }
        var buffer = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        return withUnsafeMutableBytes(of: &buffer) { raw -> Int? in
            guard let n = try? Sys.pread(fd, into: UnsafeMutableRawBufferPointer(rebasing: raw[..<(raw.count - 1)]), at: 0), n > 0 else {
                return nil
            }
            // statm: "size resident shared text lib data dt", in pages; the second field.
            var field = 0, pages = 0
            for k in 0..<n {
                let c = raw[k]
                if c == 0x20 { field += 1; if field > 1 { break }; continue }
                if field == 1, c >= 0x30, c <= 0x39 { pages = pages * 10 + Int(c - 0x30) }
            }
            return pages * Self.pageSize
        }
    }

    /// Closes the descriptor (also done on deinit).
    func close() {
        if fd >= 0 { FileDescriptor.closeRaw(fd); fd = -1 }
    }
}
