// The reactor on its own: timers, cross-thread jobs, and raw 64-byte frames through it.
#if canImport(Glibc)
import Glibc
#endif
import LPMReactor
import Synchronization

// MARK: Timers

/// Schedules and cancels timers on a reactor owned by the calling thread, with `live` other
/// timers pending (so the heap has some depth, as in a supervisor with request timeouts).
public final class TimerChurn {
    private let reactor: Reactor
    private var background: [Reactor.Timer] = []

    public init(live: Int = 1000, backend: Reactor.BackendChoice = .automatic) throws {
        reactor = try Reactor(backend: backend)
        for i in 0..<live {
            background.append(try reactor.schedule(after: .seconds(3600 + i)) {})
        }
    }

    /// The backend the reactor runs on.
    public var backend: Reactor.Backend { reactor.backendKind }

    /// `n` times: schedule a one-shot timer an hour away, then cancel it.
    public func run(_ n: Int) throws {
        for _ in 0..<n {
            let t = try reactor.schedule(after: .seconds(60)) {}
            guard reactor.cancel(t) else { throw BenchError("cancel refused a live timer") }
        }
    }

    public func close() {
        for t in background { reactor.cancel(t) }
        background = []
        reactor.close()
    }
}

// MARK: Cross-thread jobs

/// `Reactor.Handle.execute` from this thread to a reactor thread.
public final class ExecuteHop {
    private let thread: ReactorThread
    private let done = Semaphore()

    public init(backend: Reactor.BackendChoice = .automatic) throws {
        thread = try ReactorThread(backend: backend)
    }

    /// The backend the reactor thread runs on.
    public var backend: Reactor.Backend { thread.backend }

    /// `n` times: submit a job and wait until it has run (there and back: an eventfd wake of the
    /// reactor thread, then a futex wake of this one).
    public func roundTrips(_ n: Int) {
        let done = self.done
        let job: @Sendable (Reactor) -> Void = { _ in done.signal() }
        for _ in 0..<n {
            thread.handle.execute(job)
            done.wait()
        }
    }

    /// Submits `n` jobs without waiting, then waits for the last one (wake-ups coalesce).
    public func burst(_ n: Int) {
        let done = self.done
        let counter = Counter(n)
        let job: @Sendable (Reactor) -> Void = { _ in if counter.decrement() { done.signal() } }
        for _ in 0..<n { thread.handle.execute(job) }
        done.wait()
    }

    public func close() { thread.stop() }
}

/// Counts down to zero; `decrement` is `true` for the call that reaches it.
public final class Counter: Sendable {
    private let value: Atomic<Int>
    public init(_ n: Int) { value = Atomic(n) }
    @inline(__always) public func decrement() -> Bool {
        value.subtract(1, ordering: .acquiringAndReleasing).newValue == 0
    }
    public var current: Int { value.load(ordering: .acquiring) }
}

/// A shared count (failures, a pid).
public final class Tally: Sendable {
    private let v = Atomic<Int>(0)
    public init() {}
    public func add() { v.add(1, ordering: .relaxed) }
    public func set(_ x: Int) { v.store(x, ordering: .relaxed) }
    public var value: Int { v.load(ordering: .acquiring) }
}

/// A time stamp set once.
public final class Stamp: Sendable {
    private let v = Atomic<UInt64>(0)
    public init() {}
    public func setOnce(_ t: UInt64) { _ = v.compareExchange(expected: 0, desired: t, ordering: .acquiringAndReleasing) }
    public var value: UInt64 { v.load(ordering: .acquiring) }
}

// MARK: Raw frames through the reactor

/// The echo side of the raw jobs: reads 64-byte frames from `fd` on `reactor` and writes every
/// complete frame back, all complete frames of one read in one write (as the C child does).
public final class RawEchoPeer {
    private let fd: CInt
    private let reactor: Reactor
    private var registration: Reactor.Registration?
    private let input: UnsafeMutableRawPointer
    private let capacity = 256 * 1024
    private var have = 0
    private var out: [UInt8] = []
    private var outStart = 0
    private let onEnd: () -> Void

    /// Starts echoing on `fd` (made non-blocking). `onEnd` runs once at end of file or error,
    /// after the descriptor is deregistered and closed.
    public init(fd: CInt, reactor: Reactor, onEnd: @escaping () -> Void) throws {
        self.fd = fd
        self.reactor = reactor
        self.onEnd = onEnd
        input = .allocate(byteCount: capacity, alignment: 16)
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        // The handler holds the peer: it lives until the descriptor ends.
        registration = try reactor.register(fd, interest: .readable) { ready in self.handle(ready) }
    }

    deinit { input.deallocate() }

    private func handle(_ ready: Reactor.Readiness) {
        if ready.contains(.writable) { flushOut() }
        guard registration != nil else { return }
        let n = read(fd, input + have, capacity - have)
        if n == 0 { return end() }
        if n < 0 {
            if errno == EAGAIN || errno == EINTR { return }
            return end()
        }
        have += n
        let (whole, _) = completeRawFrames(input, have)
        if whole > 0 {
            if out.count == outStart {
                let w = write(fd, input, whole)
                let written = w > 0 ? w : 0
                if w < 0 && errno != EAGAIN && errno != EINTR { return end() }
                if written < whole { queue(input + written, whole - written) }
            } else {
                queue(input, whole)
            }
            if whole < have { (input).copyMemory(from: input + whole, byteCount: have - whole) }
            have -= whole
        }
    }

    private func queue(_ p: UnsafeRawPointer, _ n: Int) {
        let wasEmpty = out.count == outStart
        out.append(contentsOf: UnsafeRawBufferPointer(start: p, count: n))
        if wasEmpty, let r = registration { try? reactor.modify(r, interest: [.readable, .writable]) }
    }

    private func flushOut() {
        while outStart < out.count {
            let w = out.withUnsafeBytes { write(fd, $0.baseAddress! + outStart, out.count - outStart) }
            if w > 0 { outStart += w; continue }
            if w < 0 && (errno == EAGAIN || errno == EINTR) { return }
            return end()
        }
        out.removeAll(keepingCapacity: true)
        outStart = 0
        if let r = registration { try? reactor.modify(r, interest: .readable) }
    }

    private func end() {
        guard let r = registration else { return }
        registration = nil
        try? reactor.deregister(r)
        close(fd)
        onEnd()
    }
}

/// The driving side: keeps `inFlight` 64-byte frames outstanding on each peer, reads every
/// answer available in one read, refills, and writes all it owes a peer in one write. With one
/// peer and one frame in flight it is a ping-pong.
public final class RawDriver {
    private final class Peer {
        let fd: CInt
        let child: SpawnedChild?
        var target = 0
        var sent = 0
        var received = 0
        var pending = 0  // bytes owed and not written
        var written = 0  // bytes written so far (position in the periodic source)
        var have = 0
        var registration: Reactor.Registration?
        var wantsWritable = false
        let input: UnsafeMutableRawPointer
        init(fd: CInt, child: SpawnedChild?) {
            self.fd = fd
            self.child = child
            input = .allocate(byteCount: 256 * 1024, alignment: 16)
        }
        deinit { input.deallocate() }
    }

    private let reactor: Reactor
    private var peers: [Peer] = []
    private let inFlight: Int
    /// `inFlight + 1` frames of 64 bytes: any window of the periodic byte stream is contiguous.
    private let source: UnsafeMutableRawPointer
    private var outstanding = 0
    private var echoThread: ReactorThread?

    public enum PeerKind {
        /// `bench-worker --reactor-echo` processes (a reactor on each side).
        case processes(workerPath: String)
        /// An echo peer on a reactor thread of this process.
        case thread
    }

    /// Connects `count` echo peers of `kind`.
    public init(peers count: Int, inFlight: Int, kind: PeerKind, backend: Reactor.Backend? = nil) throws {
        reactor = try Reactor(backend: backend.map { .only($0) } ?? .automatic)
        self.inFlight = inFlight
        source = .allocate(byteCount: (inFlight + 1) * rawMessageSize, alignment: 16)
        for i in 0..<(inFlight + 1) {
            let frame = source + i * rawMessageSize
            frame.storeBytes(of: UInt32(rawMessageSize - 4).littleEndian, as: UInt32.self)
            (frame + 4).initializeMemory(as: UInt8.self, repeating: UInt8(97 + i % 26), count: rawMessageSize - 4)
        }
        switch kind {
        case .processes(let path):
            let env = backend.map { ["LPM_REACTOR_BACKEND=\($0.rawValue)"] } ?? []
            for _ in 0..<count {
                let child = try SpawnedChild.spawn(path, ["--reactor-echo"], environment: env)
                peers.append(Peer(fd: child.fd, child: child))
            }
        case .thread:
            let thread = try ReactorThread(backend: backend.map { .only($0) } ?? .automatic)
            echoThread = thread
            for _ in 0..<count {
                var sv: [CInt] = [-1, -1]
                guard socketpair(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0, &sv) == 0 else {
                    throw BenchError("socketpair: errno \(errno)")
                }
                let theirs = sv[1]
                let ready = Semaphore()
                thread.handle.execute { reactor in
                    _ = try? RawEchoPeer(fd: theirs, reactor: reactor) {}
                    ready.signal()
                }
                ready.wait()
                let flags = fcntl(sv[0], F_GETFL)
                _ = fcntl(sv[0], F_SETFL, flags | O_NONBLOCK)
                peers.append(Peer(fd: sv[0], child: nil))
            }
        }
        for (i, p) in peers.enumerated() {
            p.registration = try reactor.register(p.fd, interest: .readable) { [unowned self] ready in
                self.handle(i, ready)
            }
        }
    }

    deinit { source.deallocate() }

    /// The backend the driving reactor runs on.
    public var backend: Reactor.Backend { reactor.backendKind }

    /// Exchanges `n` frames in all (spread evenly over the peers) and returns when every answer
    /// is back.
    public func run(_ n: Int) throws {
        outstanding = n
        let count = peers.count
        for (i, p) in peers.enumerated() {
            p.target = n / count + (i < n % count ? 1 : 0)
            p.sent = 0
            p.received = 0
            queue(p, inFlight)
            flush(p)
        }
        while outstanding > 0 {
            try reactor.runOnce(timeout: .seconds(10))
        }
    }

    private func queue(_ p: Peer, _ k: Int) {
        let k = min(k, p.target - p.sent)
        guard k > 0 else { return }
        p.sent += k
        p.pending += k * rawMessageSize
    }

    private func flush(_ p: Peer) {
        while p.pending > 0 {
            let w = write(p.fd, source + p.written % rawMessageSize, p.pending)
            if w > 0 { p.pending -= w; p.written += w; continue }
            if w < 0 && errno == EINTR { continue }
            break  // EAGAIN: wait for writability
        }
        let want = p.pending > 0
        if want != p.wantsWritable, let r = p.registration {
            p.wantsWritable = want
            try? reactor.modify(r, interest: want ? [.readable, .writable] : .readable)
        }
    }

    private func handle(_ i: Int, _ ready: Reactor.Readiness) {
        let p = peers[i]
        if ready.contains(.readable) || ready.contains(.hangup) {
            let n = read(p.fd, p.input + p.have, 256 * 1024 - p.have)
            if n > 0 {
                p.have += n
                let (whole, count) = completeRawFrames(p.input, p.have)
                if whole < p.have { p.input.copyMemory(from: p.input + whole, byteCount: p.have - whole) }
                p.have -= whole
                p.received += count
                outstanding -= count
                queue(p, count)
            } else if n == 0 {
                outstanding = 0  // the peer died: stop (run() reports the shortfall)
            }
        }
        flush(p)
    }

    /// Ends the peers and closes the reactor.
    public func close() {
        for p in peers {
            if let r = p.registration { try? reactor.deregister(r) }
            Glibc.close(p.fd)
        }
        // On io_uring a poll request holds its file until the removal is submitted (the next
        // wait): close the ring before waiting for the children to see end of file, or they
        // never do (see ReactorBackend+URing.swift).
        reactor.close()
        for p in peers {
            if let child = p.child {
                var status: CInt = 0
                while waitpid(child.pid, &status, 0) < 0 && errno == EINTR {}
            }
        }
        peers = []
        echoThread?.stop()
        echoThread = nil
    }
}
