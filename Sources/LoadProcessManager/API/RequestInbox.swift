import LPMReactor
import LPMWire

extension Supervisor {
    /// Holds the pool, the handle of the reactor it runs on, and the inbox through which other
    /// threads hand it requests.
    ///
    /// The inbox takes requests in batches: a caller appends under a lock, and the first append
    /// of a batch schedules this object as one reactor job, which takes the whole batch. So a
    /// request from another thread costs no allocation of its own (no closure, no ticket) and a
    /// burst costs one wake-up of the reactor thread, not one per request.
    ///
    /// Requests made with a completion handler get a submission number, in the order of the
    /// appends, which is the order of admission: their ``RequestHandle`` cancels by that number,
    /// and the cancellation travels through the inbox too, behind its request, so it always
    /// finds the request admitted (or answered).
    ///
    /// `@unchecked Sendable`: `reactor` is set in `init`; `items`, `scheduled`, `closed` and
    /// `lastSubmission` are guarded by `lock`; `pool`, `draining` and `drainedSubmissions` are
    /// read and written only on the reactor thread.
    final class PoolBox: ReactorJob, @unchecked Sendable {
        enum Item {
            /// A request with a completion handler; its submission number is its rank among
            /// the `.request` items.
            case request([UInt8], RequestOptions, Completion)
            /// A batch of requests (``Supervisor/map(_:options:)``): body, count, options, and
            /// its answers' handler; numbered like `.request`.
            case batch([UInt8], Int, RequestOptions, Pool.BatchCompletion)
            /// A request from an async caller: its ticket is what that caller's cancellation
            /// finds it by (the cancellation may come before the request).
            case ticket(RequestTicket)
            /// Cancels the request with this submission number.
            case cancel(UInt64)
            /// Cancels a ticket's request, wherever it is (or before it arrives).
            case cancelTicket(RequestTicket)

            /// Whether it gets a submission number.
            var isNumbered: Bool {
                switch self {
                case .request, .batch: return true
                case .ticket, .cancel, .cancelTicket: return false
                }
            }
        }

        /// Items in one block of `capacity`, appended at the end and taken from the front, each
        /// moved (a taken item leaves nothing behind to destroy: an array's `removeAll` destroyed
        /// a placeholder per item, about 120 instructions a request). Once every item is taken
        /// the chunk is empty again, its storage kept.
        final class Chunk {
            static var capacity: Int { 1024 }
            private let base = UnsafeMutablePointer<Item>.allocate(capacity: Chunk.capacity)
            private(set) var count = 0
            private var taken = 0

            deinit {
                (base + taken).deinitialize(count: count - taken)
                base.deallocate()
            }

            /// Appends `item`. - Precondition: the chunk is not full.
            @inline(__always)
            func append(_ item: consuming Item) {
                precondition(count < Chunk.capacity, "RequestInbox: a full chunk appended to")
                (base + count).initialize(to: item)
                count += 1
            }

            /// The oldest item not taken yet, moved out; `nil` once all are (the chunk is then
            /// empty).
            @inline(__always)
            func next() -> Item? {
                guard taken < count else {
                    taken = 0
                    count = 0
                    return nil
                }
                defer { taken += 1 }
                return (base + taken).move()
            }
        }

        let reactor: Reactor.Handle
        var pool: Pool?

        // `@exclusivity(unchecked)`: each is touched for every request, and the dynamic checks
        // cost more than the rest of the hand-over. Sound: the lock, or the reactor thread, makes
        // every access to them exclusive already (see above).
        //
        // The items wait in chunks of `chunkSize`: a burst from another thread appends to the
        // current chunk, and a full chunk is set aside whole, so that a batch of a million never
        // copies itself to grow (an array doubling did, about 110 instructions a request on the
        // caller's thread, and freed each old buffer). Emptied chunks come back as spares.
        private let lock = ThreadLock()
        @exclusivity(unchecked) private var items = Chunk()
        @exclusivity(unchecked) private var fullChunks: [Chunk] = []
        @exclusivity(unchecked) private var spareChunks: [Chunk] = []
        @exclusivity(unchecked) private var scheduled = false
        @exclusivity(unchecked) private var closed = false
        @exclusivity(unchecked) private var lastSubmission: UInt64 = 0

        @exclusivity(unchecked) private var draining = Chunk()
        @exclusivity(unchecked) private var drainingChunks: [Chunk] = []
        @exclusivity(unchecked) private var drainedSubmissions: UInt64 = 0

        private static var chunkSize: Int { Chunk.capacity }
        /// Spare chunks kept (each holds `chunkSize` items' storage).
        private static var sparesKept: Int { 8 }

        init(reactor: Reactor.Handle) { self.reactor = reactor }

        /// Appends `item` for the pool. Returns the request's submission number (0 for items that
        /// are not `.request`), or `nil` when the pool's reactor is gone: the item was not taken,
        /// and the caller answers it. Once taken, an item is the inbox's to answer, whatever
        /// happens to the reactor.
        func submit(_ item: consuming Item) -> UInt64? {
            let counted = item.isNumbered
            lock.lock()
            if closed {
                lock.unlock()
                return nil
            }
            var submission: UInt64 = 0
            if counted {
                lastSubmission &+= 1
                submission = lastSubmission
            }
            if items.count == Self.chunkSize {
                fullChunks.append(items)
                items = spareChunks.popLast() ?? Chunk()
            }
            items.append(item)  // moved into the batch: no copy of its payload and completion
            let schedule = !scheduled
            scheduled = true
            lock.unlock()
            if schedule && !reactor.execute(job: self) { refuseAll("the pool's reactor is stopped") }
            return submission
        }

        /// The batch, on the reactor thread.
        func run(on reactor: Reactor) {
            lock.withLock {
                swap(&draining, &items)
                swap(&drainingChunks, &fullChunks)
                scheduled = false
            }
            for chunk in drainingChunks { take(chunk) }
            take(draining)
            if !drainingChunks.isEmpty {
                // Emptied chunks go back as spares, up to a bound.
                lock.withLock {
                    while spareChunks.count < Self.sparesKept, let chunk = drainingChunks.popLast() {
                        spareChunks.append(chunk)
                    }
                }
                drainingChunks.removeAll()
            }
        }

        /// Hands every item of `batch` to the pool, in order, and empties it (keeping its storage).
        private func take(_ batch: Chunk) {
            if let pool {
                // Each item is moved out of the chunk (no copy of its payload and completion,
                // so no retain and release of them), and nothing is left to destroy.
                while let item = batch.next() {
                    switch consume item {
                    case .request(let payload, let options, let completion):
                        drainedSubmissions &+= 1
                        pool.enqueue(payload, options, completion, submission: drainedSubmissions)
                    case .batch(let body, let count, let options, let completion):
                        drainedSubmissions &+= 1
                        pool.enqueueBatch(body, count: count, options, submission: drainedSubmissions, completion)
                    case .ticket(let ticket):
                        pool.enqueue(ticket)
                    case .cancel(let submission):
                        pool.cancel(submission: submission)
                    case .cancelTicket(let ticket):
                        pool.cancel(ticket)
                    }
                }
            } else {
                while let item = batch.next() { Self.refuse(item, "the pool is stopped") }
            }
        }

        /// The reactor closed with the batch's job still queued.
        func dropped() {
            refuseAll("the pool's reactor closed before the request reached it")
        }

        /// Refuses every item queued and any later one: the reactor is gone.
        private func refuseAll(_ why: String) {
            let left: [Item] = lock.withLock {
                closed = true
                scheduled = false
                var left: [Item] = []
                for chunk in fullChunks + [items] {
                    while let item = chunk.next() { left.append(item) }
                }
                fullChunks = []
                spareChunks = []
                return left
            }
            guard !left.isEmpty else { return }
            // Answered on this thread, unnested (a completion may enqueue again).
            CallerTrampoline.run { for item in left { Self.refuse(item, why) } }
        }

        private static func refuse(_ item: Item, _ why: String) {
            switch item {
            case .request(_, _, let completion): completion(.failure(SupervisorError(.shutDown, why)))
            case .ticket(let ticket): ticket.completion?(.failure(SupervisorError(.shutDown, why)))
            case .batch(_, let count, _, let completion):
                completion(BatchResults(failure: SupervisorError(.shutDown, why), count: count))
            case .cancel, .cancelTicket: break
            }
        }
    }

}
