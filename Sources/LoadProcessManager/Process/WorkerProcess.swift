import Glibc
import LPMReactor
import LPMWire

/// One worker process, as the pool sees it: its channel, its pidfd watch, its `/proc/PID/statm`
/// descriptor, its lifecycle and its counters. Confined to the reactor thread.
final class WorkerProcess {
    /// Its slot; changes when it is recycled (it moves to a retired slot to drain).
    @exclusivity(unchecked) var slot: Int
    let pid: pid_t
    let channel: Channel
    var watch: Reactor.ChildWatch?
    let statm: StatmReader
    // Read or written for every request: `@exclusivity(unchecked)` for the reason given, and
    // measured, on the pool's own state (`Pool`): one thread, no overlapping access.
    @exclusivity(unchecked) var lifecycle: WorkerLifecycle = .starting
    /// Its exit has been seen: what it sent before is being read, and it gets nothing new.
    @exclusivity(unchecked) var exitSeen = false
    /// Requests in flight on it (pending, with `worker` equal to this slot in the request table).
    @exclusivity(unchecked) var inFlight = 0
    @exclusivity(unchecked) var rss = 0
    var heapTotal = 0
    var heapUsed = 0
    /// Since when it has had nothing in flight, as of the last health sample (`nil`: busy).
    var idleSince: Int64?
    /// Recycle it once it has answered this many requests (`nil`: never).
    @exclusivity(unchecked) var recycleAfter: Int?
    /// The ping awaiting its pong (0: none), and when it was sent (monotonic nanoseconds).
    var pingOutstanding: UInt64 = 0
    var pingSentAt: Int64 = 0
    @exclusivity(unchecked) var completed = 0
    /// Sockets handed to it and not reported closed.
    @exclusivity(unchecked) var sockets = 0
    /// Response streams still flowing from it, by wire id.
    @exclusivity(unchecked) var streams: [UInt64: ResponseStreamCore] = [:]

    /// What its last ready frame announced (batched requests...).
    @exclusivity(unchecked) var capabilities: WorkerCapabilities = []
    /// Events (and event replies) received in the current one-second window, and its start.
    var eventsInWindow = 0
    var eventWindowStart: Int64 = 0

    /// Requests in flight plus streams still flowing.
    var load: Int { inFlight + streams.count }

    init(slot: Int, pid: pid_t, channel: Channel, statm: StatmReader) {
        self.slot = slot
        self.pid = pid
        self.channel = channel
        self.statm = statm
    }

    /// Samples RSS (a `pread` of statm on the kept-open descriptor); keeps the last value if the
    /// read fails.
    func sampleRSS() {
        if let bytes = statm.residentBytes() { rss = bytes }
    }
}
