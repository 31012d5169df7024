import Glibc
import LPMReactor
import LPMWire

/// Every request the pool holds, queued or in flight: the only place a request is admitted,
/// dispatched, retried and finished.
///
/// Exactly once is structural: a request's completion is stored when it is admitted and taken
/// out by ``finish(_:)`` (directly, or through ``attemptFailed(_:retryAllowed:)``), which also
/// frees the entry; nothing else reads it. A pure value: no I/O, no clock, no user code, so it is
/// tested as plain logic (`RequestTableTests`). `Completion` is generic for those tests; the pool
/// uses ``Pool/Completion``.
///
/// Wire ids are `generation << 32 | index`: the generation changes whenever the request is
/// finished or sent again, so a late answer to an earlier attempt (or to an earlier request in
/// the same entry) is recognised and dropped.
struct RequestTable<Completion>: ~Copyable {
    /// One request's record. Compact (about 100 bytes): a million queued requests cost their
    /// payloads plus about 110 MB, table and queue together.
    struct Entry {
        var payload: [UInt8] = []
        /// Set while the request is pending (queued or in flight); taken by `finish`.
        var completion: Completion?
        var id = RequestID.zero
        var createdAt: UInt64 = 0
        /// Its submission number, if it came through the inbox (0: it did not).
        var submission: UInt64 = 0
        var timer: Reactor.Timer?
        private var timeoutNanoseconds: Int64 = -1
        private var worker32: Int32 = -1
        var generation: UInt32 = 0
        /// A descriptor to pass with the request (a socket, or a stream's read end); -1: none.
        /// Owned by the request until it is sent; closed by the pool when the request finishes.
        var descriptor: CInt = -1
        /// Attempts made, at most `maxAttempts` (65,535 at most).
        var attempts: UInt16 = 0
        var maxAttempts: UInt16 = 1
        /// Workers that died with it in flight.
        var deaths: UInt8 = 0
        var isStream = false
        /// A batch of requests in one frame (`Batch`): its payload is the batch body.
        var isBatch = false
        /// In the queue's list (a request taken out by ``takeQueued()`` is queued, not listed).
        fileprivate var isListed = false
        /// The entries before and after it in the queue, or the next free entry; `none`: no entry.
        fileprivate var previous = UInt32.max
        fileprivate var next = UInt32.max

        var isPending: Bool { completion != nil }
        /// The worker slot it is in flight on; -1 while queued.
        var worker: Int {
            get { Int(worker32) }
            set { worker32 = Int32(truncatingIfNeeded: newValue) }
        }
        var timeout: Duration? {
            get { timeoutNanoseconds < 0 ? nil : .nanoseconds(timeoutNanoseconds) }
            set { timeoutNanoseconds = newValue.map { max(0, Reactor.nanoseconds($0)) } ?? -1 }
        }
    }

    /// What a request needs to be admitted.
    struct Admission {
        var payload: [UInt8]
        var id: RequestID
        var createdAt: UInt64
        var maxAttempts: Int
        var timeout: Duration?
        var descriptor: CInt = -1
        var isStream = false
        var isBatch = false
        var submission: UInt64 = 0
    }

    /// A request that finished: its completion, to be called once, and what the pool must
    /// release (a timer to cancel, a descriptor still owned).
    struct Finished {
        var completion: Completion
        var id: RequestID
        var createdAt: UInt64
        var attempts: Int
        var maxAttempts: Int
        var timeout: Duration?
        var worker: Int
        var timer: Reactor.Timer?
        var descriptor: CInt
    }

    /// What became of a failed attempt.
    enum AttemptOutcome {
        /// Queued again at the front, under a new generation; `timer` is the old attempt's, to cancel.
        case retried(timer: Reactor.Timer?)
        /// No attempt left (or retrying not allowed): finished.
        case finished(Finished)
    }

    /// An answer from a worker, matched against the table.
    enum Lookup: Equatable {
        /// In flight on that worker: `index` is the entry.
        case pending(UInt32)
        /// An answer to an attempt that timed out or was retried elsewhere, or to a finished request.
        case late
        /// An id the pool never sent.
        case unknown
        /// Pending, but on another worker.
        case elsewhere
    }

    /// No entry (the end of a list).
    fileprivate static var none: UInt32 { .max }

    /// The entries, in segments that never move (see ``Segments``).
    private var entries = Segments()
    /// Free entries, as a list through their `next` links (the last freed first).
    private var freeHead = RequestTable.none
    /// The most entries the table has had: an answer naming an entry at or above the current
    /// count, but below this, is late (its request finished before the table shrank).
    private var highWater = 0
    /// Generations of entries made after a shrink start here, above any the old entries had, so
    /// that a late answer cannot match a new request.
    private var generationFloor: UInt32 = 0
    /// The queue, in order: a list through the entries' `previous` and `next` links, so that
    /// queueing, dispatching and cancelling a queued request each touch a few fields of the
    /// entries concerned and nothing else (no ring of ids, no stale ids to skip).
    private var queueHead = RequestTable.none
    private var queueTail = RequestTable.none
    /// Requests admitted and not finished (queued plus in flight).
    private(set) var pendingCount = 0
    /// Requests queued, listed or taken out by ``takeQueued()`` and not finished yet.
    private(set) var queuedCount = 0

    /// The first queued request.
    var firstQueued: UInt32? { queueHead == Self.none ? nil : queueHead }

    /// The queue's list, front first (for tests and diagnostics: it walks the list).
    var listedInOrder: [UInt32] {
        var out: [UInt32] = []
        var i = queueHead
        while i != Self.none {
            out.append(i)
            i = entries[Int(i)].next
        }
        return out
    }

    private mutating func linkAtBack(_ index: UInt32) {
        let e = entries.address(Int(index))
        e.pointee.previous = queueTail
        e.pointee.next = Self.none
        e.pointee.isListed = true
        if queueTail != Self.none { entries.address(Int(queueTail)).pointee.next = index } else { queueHead = index }
        queueTail = index
    }

    private mutating func linkAtFront(_ index: UInt32) {
        let e = entries.address(Int(index))
        e.pointee.previous = Self.none
        e.pointee.next = queueHead
        e.pointee.isListed = true
        if queueHead != Self.none { entries.address(Int(queueHead)).pointee.previous = index } else { queueTail = index }
        queueHead = index
    }

    /// Takes a listed entry out of the queue's list.
    private mutating func unlink(_ index: UInt32) {
        let e = entries.address(Int(index))
        let before = e.pointee.previous, after = e.pointee.next
        if before != Self.none { entries.address(Int(before)).pointee.next = after } else { queueHead = after }
        if after != Self.none { entries.address(Int(after)).pointee.previous = before } else { queueTail = before }
        e.pointee.previous = Self.none
        e.pointee.next = Self.none
        e.pointee.isListed = false
    }

    /// Empties the queue's list; its requests stay queued (pending, on no worker).
    private mutating func unlistAll(into out: inout [UInt32]) {
        var i = queueHead
        while i != Self.none {
            let e = entries.address(Int(i))
            out.append(i)
            i = e.pointee.next
            e.pointee.previous = Self.none
            e.pointee.next = Self.none
            e.pointee.isListed = false
        }
        queueHead = Self.none
        queueTail = Self.none
    }

    /// Borrows an entry (reading one field copies nothing else, retains nothing).
    subscript(index: UInt32) -> Entry {
        unsafeAddress { UnsafePointer(entries.address(Int(index))) }
    }

    /// How many entries the table holds now, pending or free (it grows with the peak of pending
    /// requests, and gives them back when it empties).
    var entryCount: Int { entries.count }

    func wireID(_ index: UInt32) -> UInt64 { UInt64(entries[Int(index)].generation) << 32 | UInt64(index) }

    /// Whether the request is a batch (only workers that take batches may have it).
    func isBatch(_ index: UInt32) -> Bool { entries[Int(index)].isBatch }

    /// Whether the request carries a socket (dispatch then prefers the worker with fewest sockets).
    func carriesSocket(_ index: UInt32) -> Bool {
        entries[Int(index)].descriptor >= 0 && !entries[Int(index)].isStream
    }

    /// Admits a request at the back of the queue.
    @discardableResult
    mutating func admit(_ a: consuming Admission, completion: consuming Completion) -> UInt32 {
        let index: UInt32
        if freeHead != Self.none {
            index = freeHead
            freeHead = entries.address(Int(index)).pointee.next
        } else {
            index = UInt32(entries.count)
            var fresh = Entry()
            fresh.generation = generationFloor
            entries.append(consume fresh)
            highWater = max(highWater, entries.count)
        }
        // Through the entry's address: written in place (a field set through the subscript
        // copied the whole entry, its payload and completion retained and released).
        let e = entries.address(Int(index))
        swap(&e.pointee.payload, &a.payload)  // moved in (the entry's was empty)
        e.pointee.completion = consume completion
        e.pointee.id = a.id
        e.pointee.createdAt = a.createdAt
        e.pointee.submission = a.submission
        e.pointee.attempts = 0
        e.pointee.maxAttempts = UInt16(clamping: max(1, a.maxAttempts))
        e.pointee.timeout = a.timeout
        e.pointee.timer = nil
        e.pointee.worker = -1
        e.pointee.descriptor = a.descriptor
        e.pointee.isStream = a.isStream
        e.pointee.isBatch = a.isBatch
        e.pointee.deaths = 0
        pendingCount += 1
        queuedCount += 1
        linkAtBack(index)
        return index
    }

    /// Takes the first queued request for `worker`: one more attempt, now in flight there.
    /// A request with a descriptor gets no further attempt: the descriptor goes with this one.
    mutating func dispatchFirst(to worker: Int) -> UInt32? {
        guard queueHead != Self.none else { return nil }
        let index = queueHead
        unlink(index)
        queuedCount -= 1
        let e = entries.address(Int(index))
        e.pointee.attempts += 1
        e.pointee.worker = worker
        if e.pointee.descriptor >= 0 { e.pointee.maxAttempts = e.pointee.attempts }
        return index
    }

    /// The request's descriptor has been handed to the channel: no longer the table's to close.
    mutating func descriptorSent(_ index: UInt32) {
        entries[Int(index)].descriptor = -1
    }

    mutating func setTimer(_ index: UInt32, _ timer: Reactor.Timer?) {
        entries[Int(index)].timer = timer
    }

    /// Matches an answer from `worker` to the request it names.
    func lookup(wireID: UInt64, from worker: Int) -> Lookup {
        let i = Int(UInt32(truncatingIfNeeded: wireID))
        guard i < entries.count else { return i < highWater ? .late : .unknown }
        let e = entries.address(i)
        guard e.pointee.generation == UInt32(truncatingIfNeeded: wireID >> 32), e.pointee.isPending else { return .late }
        guard e.pointee.worker == worker else { return e.pointee.worker < 0 ? .late : .elsewhere }
        return .pending(UInt32(i))
    }

    /// Whether `attempt` is still the request's current attempt (a timer of an older one is stale).
    func isCurrent(_ index: UInt32, generation: UInt32, attempt: Int) -> Bool {
        let i = Int(index)
        return i < entries.count && entries[i].generation == generation && entries[i].isPending
            && Int(entries[i].attempts) == attempt && entries[i].worker >= 0
    }

    /// Finishes a pending request: takes its completion and frees the entry. `nil` if it is not
    /// pending (already finished): the caller then has nothing to answer.
    mutating func finish(_ index: UInt32) -> Finished? {
        let e = entries.address(Int(index))
        guard e.pointee.isPending else { return nil }
        if e.pointee.worker < 0 {
            queuedCount -= 1
            if e.pointee.isListed { unlink(index) }
        }
        // Field by field: copying the whole entry would retain and release its payload for nothing.
        // The completion is moved straight from the entry into `Finished`, through its address
        // (`Optional.take()` on the entry copies it, and so did a local in between: a retain and
        // a release of the caller's closure per request).
        let slot = e.pointer(to: \.completion)!
        let done = Finished(completion: slot.move().unsafelyUnwrapped, id: e.pointee.id, createdAt: e.pointee.createdAt,
                            attempts: Int(e.pointee.attempts), maxAttempts: Int(e.pointee.maxAttempts),
                            timeout: e.pointee.timeout, worker: e.pointee.worker, timer: e.pointee.timer,
                            descriptor: e.pointee.descriptor)
        slot.initialize(to: nil)
        e.pointee.payload = []
        e.pointee.timer = nil
        e.pointee.worker = -1
        e.pointee.descriptor = -1
        e.pointee.generation &+= 1
        e.pointee.next = freeHead
        freeHead = index
        pendingCount -= 1
        return done
    }

    /// Entries kept when the table empties; past that it gives its memory back.
    static var keptWhenIdle: Int { 4096 }

    /// Gives back what the table grew to, if nothing is pending and it holds more than
    /// ``keptWhenIdle`` entries. The pool calls it on a timer, not whenever the table empties: in
    /// a burst the table empties between two batches of requests, and giving its segments back
    /// each time (to map and fill them again a moment later) cost more than the requests.
    /// - Returns: whether it shrank.
    @discardableResult
    mutating func shrinkIfIdle() -> Bool {
        guard pendingCount == 0 && entries.count > Self.keptWhenIdle else { return false }
        shrink()
        return true
    }

    private mutating func shrink() {
        var top = generationFloor
        for i in 0..<entries.count where entries[i].generation &- generationFloor > top &- generationFloor {
            top = entries[i].generation
        }
        generationFloor = top &+ 1
        entries.removeAll()
        freeHead = Self.none
        queueHead = Self.none
        queueTail = Self.none
    }

    /// An attempt in flight failed (its worker died, or it timed out). With an attempt left and
    /// `retryAllowed`, the request goes back to the front of the queue under a new generation
    /// (a late answer to the failed attempt is then dropped); otherwise it finishes. The one
    /// place where retries are decided.
    mutating func attemptFailed(_ index: UInt32, retryAllowed: Bool) -> AttemptOutcome? {
        let i = Int(index)
        guard entries[i].isPending else { return nil }
        if retryAllowed && entries[i].attempts < entries[i].maxAttempts {
            let timer = entries[i].timer
            entries[i].timer = nil
            entries[i].generation &+= 1
            entries[i].worker = -1
            queuedCount += 1
            linkAtFront(index)
            return .retried(timer: timer)
        }
        return finish(index).map { .finished($0) }
    }

    /// Counts a worker that died with the request in flight; returns how many have.
    mutating func noteDeath(_ index: UInt32) -> Int {
        entries[Int(index)].deaths &+= entries[Int(index)].deaths == .max ? 0 : 1
        return Int(entries[Int(index)].deaths)
    }

    /// The requests in flight on `worker`, most recently admitted entry last.
    func inFlight(on worker: Int) -> [UInt32] {
        (0..<entries.count).filter { entries[$0].isPending && entries[$0].worker == worker }.map { UInt32($0) }
    }

    /// The requests in flight on `from` are now on `to` (their worker moved slots).
    mutating func moveInFlight(from: Int, to: Int) {
        for i in 0..<entries.count where entries[i].isPending && entries[i].worker == from { entries[i].worker = to }
    }

    /// Empties the queue; the requests it held are returned, still pending (and counted as
    /// queued), for the caller to finish.
    mutating func takeQueued() -> [UInt32] {
        var out: [UInt32] = []
        out.reserveCapacity(queuedCount)
        unlistAll(into: &out)
        return out  // still counted as queued until finished
    }

    /// Every pending request, queued or in flight (the queue is emptied), for the caller to finish.
    mutating func takeAll() -> [UInt32] {
        var listed: [UInt32] = []
        unlistAll(into: &listed)
        return (0..<entries.count).filter { entries[$0].isPending }.map { UInt32($0) }
    }

    /// Whether entry `index` holds submission `number`, pending.
    func isSubmission(_ index: UInt32, _ number: UInt64) -> Bool {
        Int(index) < entries.count && entries[Int(index)].isPending && entries[Int(index)].submission == number
    }

    /// The pending request with id `id` in entry `index`, if it is still there (a cancellation
    /// names the request by its entry and its id, which outlives retries).
    func pending(_ index: UInt32, id: RequestID) -> Bool {
        Int(index) < entries.count && entries[Int(index)].isPending && entries[Int(index)].id == id
    }
}

extension RequestTable {
    /// The entries of a table, in segments of ``segmentSize`` that never move once made: the
    /// table grows by one segment at a time, with no copy of the entries before it and no
    /// doubling (a queue of a million requests neither copies its entries nor keeps spare
    /// capacity for another million), and an entry's address is stable. Segments are their own
    /// anonymous mappings, so that the memory goes back to the system when the table empties.
    struct Segments: ~Copyable {
        static var segmentShift: Int { 12 }
        static var segmentSize: Int { 1 << segmentShift }
        private static var segmentBytes: Int {
            let page = 4096
            return (segmentSize * MemoryLayout<Entry>.stride + page - 1) / page * page
        }

        /// The segments' addresses: a raw block (an `Array` here cost a bounds check, and the
        /// load of its buffer, at every entry access).
        private var directory: UnsafeMutablePointer<UnsafeMutablePointer<Entry>>
        private var directoryCapacity = 16
        private var segmentCount = 0
        private(set) var count = 0

        init() { directory = .allocate(capacity: 16) }

        deinit {
            Self.release(directory, segments: segmentCount, count: count)
            directory.deallocate()
        }

        /// The entry at `i`, which must be below ``count``.
        @inline(__always)
        func address(_ i: Int) -> UnsafeMutablePointer<Entry> {
            assert(i >= 0 && i < count, "request table entry \(i) out of 0..<\(count)")
            return directory[i &>> Self.segmentShift] + (i & (Self.segmentSize &- 1))
        }

        subscript(i: Int) -> Entry {
            unsafeAddress { UnsafePointer(address(i)) }
            nonmutating unsafeMutableAddress { address(i) }
        }

        mutating func append(_ entry: consuming Entry) {
            if count == segmentCount &<< Self.segmentShift {
                guard let raw = mmap(nil, Self.segmentBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                      raw != MAP_FAILED else {
                    fatalError("RequestTable: mmap of \(Self.segmentBytes) bytes failed (errno \(errno)): out of memory")
                }
                if segmentCount == directoryCapacity {
                    let grown = UnsafeMutablePointer<UnsafeMutablePointer<Entry>>.allocate(capacity: directoryCapacity * 2)
                    grown.moveInitialize(from: directory, count: segmentCount)
                    directory.deallocate()
                    directory = grown
                    directoryCapacity *= 2
                }
                (directory + segmentCount).initialize(to: raw.bindMemory(to: Entry.self, capacity: Self.segmentSize))
                segmentCount += 1
            }
            count += 1
            address(count - 1).initialize(to: entry)
        }

        /// Destroys every entry and unmaps every segment (the directory's block is kept).
        mutating func removeAll() {
            Self.release(directory, segments: segmentCount, count: count)
            segmentCount = 0
            count = 0
        }

        private static func release(_ directory: UnsafeMutablePointer<UnsafeMutablePointer<Entry>>, segments: Int, count: Int) {
            for k in 0..<segments {
                directory[k].deinitialize(count: min(segmentSize, count - k &<< segmentShift))
                munmap(UnsafeMutableRawPointer(directory[k]), segmentBytes)
            }
        }
    }
}
