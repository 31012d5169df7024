// Small helpers shared by the benchmark jobs: clocks, a semaphore, process figures, spawning.
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Nanoseconds on `CLOCK_MONOTONIC` (the clock the reactor and the C baselines use).
@inline(__always)
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// A POSIX semaphore (no Foundation, no Dispatch: the jobs measure the library, not those).
public final class Semaphore: @unchecked Sendable {
    // @unchecked: sem_t is made for sharing between threads; the pointer never changes.
    private let sem: UnsafeMutablePointer<sem_t>

    public init(_ value: UInt32 = 0) {
        sem = .allocate(capacity: 1)
        sem_init(sem, 0, value)
    }

    deinit {
        sem_destroy(sem)
        sem.deallocate()
    }

    @inline(__always) public func signal() { sem_post(sem) }

    public func wait() {
        while sem_wait(sem) != 0 {}
    }

    /// Waits at most `seconds`; `false` on timeout.
    public func wait(seconds: Double) -> Bool {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let ns = Int(seconds * 1e9) + ts.tv_nsec
        ts.tv_sec += ns / 1_000_000_000
        ts.tv_nsec = ns % 1_000_000_000
        while sem_timedwait(sem, &ts) != 0 {
            if errno == ETIMEDOUT { return false }
        }
        return true
    }
}

/// A failure of a benchmark job (set-up, a wrong answer, a time-out).
public struct BenchError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// One figure, printed as `name=<name> value=<number> unit=<unit>`.
public struct Figure: Sendable {
    public var name: String
    public var value: Double
    public var unit: String
    public init(_ name: String, _ value: Double, _ unit: String) {
        self.name = name
        self.value = value
        self.unit = unit
    }

    public var line: String {
        let v: String
        if value == value.rounded() && abs(value) < 1e15 {
            v = String(Int64(value))
        } else if abs(value) >= 100 {
            v = String(Int64(value.rounded()))
        } else {
            // Three significant decimals without Foundation's String(format:).
            let scaled = (value * 1000).rounded() / 1000
            v = "\(scaled)"
        }
        return "name=\(name) value=\(v) unit=\(unit)"
    }
}

/// Process figures read from the kernel.
public enum ProcessFigures {
    /// This process's resident set in bytes (`/proc/self/statm`, second field).
    public static func residentBytes() -> Int {
        let fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 128)
        let n = read(fd, &buf, buf.count)
        guard n > 0 else { return 0 }
        var field = 0, value = 0
        for c in buf[0..<n] {
            if c == 0x20 { field += 1; if field > 1 { break }; continue }
            if field == 1, c >= 0x30, c <= 0x39 { value = value * 10 + Int(c - 0x30) }
        }
        return value * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    public struct Usage: Sendable {
        public var userNs: UInt64 = 0
        public var systemNs: UInt64 = 0
        public var voluntarySwitches = 0
        public var involuntarySwitches = 0
        public var cpuNs: UInt64 { userNs + systemNs }

        public static func - (a: Usage, b: Usage) -> Usage {
            Usage(userNs: a.userNs &- b.userNs, systemNs: a.systemNs &- b.systemNs,
                  voluntarySwitches: a.voluntarySwitches - b.voluntarySwitches,
                  involuntarySwitches: a.involuntarySwitches - b.involuntarySwitches)
        }
    }

    /// `getrusage` for this process (`RUSAGE_SELF`) or its reaped children (`RUSAGE_CHILDREN`).
    public static func usage(children: Bool = false) -> Usage {
        var ru = rusage()
        getrusage(children ? RUSAGE_CHILDREN.rawValue : RUSAGE_SELF.rawValue, &ru)
        func ns(_ t: timeval) -> UInt64 { UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_usec) * 1000 }
        return Usage(userNs: ns(ru.ru_utime), systemNs: ns(ru.ru_stime),
                     voluntarySwitches: ru.ru_nvcsw, involuntarySwitches: ru.ru_nivcsw)
    }
}

/// Where the `bench-worker` executable is: `LPM_BENCH_WORKER`, else next to the running binary
/// (SwiftPM puts every product of the package in one folder).
public func benchWorkerPath() throws -> String {
    if let env = getenv("LPM_BENCH_WORKER") { return String(cString: env) }
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    guard n > 0 else { throw BenchError("readlink(/proc/self/exe) failed") }
    let exe = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let dir = exe[..<(exe.lastIndex(of: "/") ?? exe.endIndex)]
    let path = "\(dir)/bench-worker"
    guard access(path, X_OK) == 0 else {
        throw BenchError("\(path) not found: build it first (swift build -c release --product bench-worker) or set LPM_BENCH_WORKER")
    }
    return path
}

/// A child process started with `posix_spawn`, its end of a socketpair as descriptor 3.
public struct SpawnedChild {
    public let pid: pid_t
    /// The parent's end (blocking unless `nonBlocking`).
    public let fd: CInt

    /// Spawns `path args...` with the other end of a fresh `AF_UNIX` stream socketpair on fd 3.
    public static func spawn(_ path: String, _ args: [String], environment extra: [String] = [], nonBlocking: Bool = true) throws -> SpawnedChild {
        var sv: [CInt] = [-1, -1]
        guard socketpair(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0, &sv) == 0 else {
            throw BenchError("socketpair: errno \(errno)")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, sv[1], 3)
        var argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) } + [nil]
        var envStrings: [String] = []
        var p = environ
        while let e = p.pointee {
            let s = String(cString: e)
            if !s.hasPrefix("LPM_CHANNEL_FD=") { envStrings.append(s) }
            p += 1
        }
        envStrings.append("LPM_CHANNEL_FD=3")
        envStrings += extra
        var envp: [UnsafeMutablePointer<CChar>?] = envStrings.map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, &argv, &envp)
        close(sv[1])
        guard rc == 0 else {
            close(sv[0])
            throw BenchError("posix_spawn(\(path)): error \(rc)")
        }
        if nonBlocking {
            let flags = fcntl(sv[0], F_GETFL)
            _ = fcntl(sv[0], F_SETFL, flags | O_NONBLOCK)
        }
        return SpawnedChild(pid: pid, fd: sv[0])
    }

    /// Closes the parent's end (the child sees end of file and exits) and reaps the child.
    public func finish() {
        close(fd)
        var status: CInt = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    }
}

/// Writes all of `count` bytes to a blocking descriptor.
@inline(__always)
func writeFully(_ fd: CInt, _ base: UnsafeRawPointer, _ count: Int) throws {
    var done = 0
    while done < count {
        let n = write(fd, base + done, count - done)
        if n > 0 { done += n; continue }
        if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
        throw BenchError("write: errno \(errno)")
    }
}

/// The frame the raw echo jobs exchange (as the C baselines): a u32 little-endian length (60)
/// and 60 payload bytes: 64 bytes in all.
public let rawMessageSize = 64

/// The number of complete 64-byte raw frames at the start of `p[0..<n]`, and their byte count.
@inline(__always)
func completeRawFrames(_ p: UnsafeRawPointer, _ n: Int) -> (bytes: Int, count: Int) {
    var off = 0, count = 0
    while n - off >= 4 {
        let len = Int(p.loadUnaligned(fromByteOffset: off, as: UInt32.self).littleEndian)
        if n - off < 4 + len { break }
        off += 4 + len
        count += 1
    }
    return (off, count)
}

/// The allocation counter of Tools/malloc_count.c, when it is preloaded (`LD_PRELOAD`).
public enum MallocCounter {
    /// The payload that asks a counting bench-worker for its count.
    public static let query: [UInt8] = Array("?mallocs".utf8)

    /// `lpm_malloc_count`, if the counter is preloaded.
    public static let function: (@convention(c) () -> UInt)? = {
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "lpm_malloc_count") else { return nil }
        return unsafeBitCast(sym, to: (@convention(c) () -> UInt).self)
    }()

    /// This process's allocations so far (all threads).
    public static func count() -> Int { function.map { Int($0()) } ?? 0 }
}
