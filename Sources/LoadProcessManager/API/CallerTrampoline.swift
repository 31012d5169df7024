import Glibc

/// Runs calls into user code on the calling thread without nesting them: a call made while
/// another runs on the same thread is queued, and the outermost one runs the queue.
///
/// For answers the supervisor gives on the caller's thread once its reactor is gone (the pool
/// was killed): a completion that enqueues again is then refused again, at once, and a million
/// such refusals in a row must not grow the stack. On the reactor thread the pool's own outbox
/// does the same.
enum CallerTrampoline {
    /// The calls waiting on one thread. Touched only by that thread.
    private final class Queue {
        var calls: [() -> Void] = []
        var isRunning = false
    }

    /// One queue per thread, released with the thread (the key's destructor).
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        let rc = pthread_key_create(&key) { p in
            if let p { Unmanaged<AnyObject>.fromOpaque(p).release() }
        }
        precondition(rc == 0, "pthread_key_create: \(rc) (no key left for the caller trampoline)")
        return key
    }()

    private static var queue: Queue {
        if let p = pthread_getspecific(key) {
            return Unmanaged<AnyObject>.fromOpaque(p).takeUnretainedValue() as! Queue  // only Queues are stored
        }
        let q = Queue()
        pthread_setspecific(key, Unmanaged<AnyObject>.passRetained(q).toOpaque())
        return q
    }

    /// Runs `call` now, or after the call running on this thread returns.
    static func run(_ call: @escaping () -> Void) {
        let q = queue
        q.calls.append(call)
        guard !q.isRunning else { return }
        q.isRunning = true
        var next = 0
        while next < q.calls.count {
            let c = q.calls[next]
            next += 1
            c()
            if next >= 1024 && next * 2 >= q.calls.count {
                q.calls.removeFirst(next)
                next = 0
            }
        }
        q.calls.removeAll(keepingCapacity: q.calls.capacity <= 1024)
        q.isRunning = false
    }
}
