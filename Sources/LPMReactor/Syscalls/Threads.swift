import CLoop

/// A `pthread_mutex_t` in memory of its own (allocated here, never moved), so that its address
/// is stable for as long as the lock lives, whichever threads hold it.
///
/// A pthread mutex rather than `Synchronization.Mutex`: ThreadSanitizer sees the
/// happens-before edges of pthread mutexes (it intercepts them), while `Mutex`'s futex fast
/// path lives in an uninstrumented library and made every hand-off look like a race.
///
/// `@unchecked Sendable`: the only state is the mutex, which is made for use from any thread;
/// its pointer is set in `init` and freed in `deinit`, when no thread can hold the lock.
package final class ThreadLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    package init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// `pthread_mutex_lock(3)`; pair it with ``unlock()`` (for a body that must consume a value,
    /// which a closure cannot).
    @inline(__always)
    package func lock() { pthread_mutex_lock(mutex) }

    /// `pthread_mutex_unlock(3)`.
    @inline(__always)
    package func unlock() { pthread_mutex_unlock(mutex) }

    /// `pthread_mutex_lock(3)`, run `body`, `pthread_mutex_unlock(3)`.
    @inline(__always)
    package func withLock<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }
}

/// A POSIX semaphore (`sem_t`) in memory allocated here, so that both threads pass C the same,
/// stable address for as long as the object lives (a `sem_t` stored in a class property would
/// be valid only for the duration of each `&property` access).
///
/// `@unchecked Sendable`: `sem_wait`/`sem_post` are thread-safe; the pointer is set in `init`
/// and freed in `deinit`, once no thread can be waiting on it.
final class Semaphore: @unchecked Sendable {
    private let sem: UnsafeMutablePointer<sem_t>

    init(value: UInt32 = 0) {
        sem = .allocate(capacity: 1)
        sem.initialize(to: sem_t())
        sem_init(sem, 0, value)
    }

    deinit {
        sem_destroy(sem)
        sem.deallocate()
    }

    /// `sem_post(3)`.
    func post() { sem_post(sem) }

    /// `sem_wait(3)`, retried on `EINTR`.
    func wait() { while sem_wait(sem) != 0 {} }
}

/// The identity of a thread (`pthread_t`), to tell whether code runs on it.
struct ThreadIdentity: @unchecked Sendable {
    // `@unchecked Sendable`: a `pthread_t` is an integer id, compared, never dereferenced.
    private let id: pthread_t

    /// The calling thread (`pthread_self(3)`).
    static var current: ThreadIdentity { ThreadIdentity(id: pthread_self()) }

    /// Whether the calling thread is this one (`pthread_equal(3)`).
    @inline(__always)
    var isCurrent: Bool { pthread_equal(pthread_self(), id) != 0 }
}

extension Sys {
    /// Starts a detached thread running `body` (`pthread_create(3)` + `pthread_detach(3)`).
    static func startDetachedThread(_ body: @escaping @Sendable () -> Void) throws(SyscallError) {
        /// The closure travels to the new thread as a retained box.
        final class Box { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
        let box = Unmanaged.passRetained(Box(body))
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            pthread_detach(pthread_self())
            box.body()
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            throw SyscallError("pthread_create", Errno(rawValue: rc))
        }
    }

    /// The value of environment variable `name`, if set (`getenv(3)`).
    static func environment(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }

    /// Whether this process runs under valgrind. Valgrind's core preloads
    /// `vgpreload_core-<platform>.so` into every program it runs, and every child it traces,
    /// through `LD_PRELOAD`, and takes it out of the environment of the children it does not
    /// trace. (valgrind.h's `RUNNING_ON_VALGRIND` needs a header that is not always installed.)
    static var runningUnderValgrind: Bool {
        environment("LD_PRELOAD")?.contains("vgpreload_core") ?? false
    }

    /// Reads and discards an eventfd's counter (`read(2)` of 8 bytes). EAGAIN (nothing to read)
    /// and every other error are nothing to act on: the descriptor is only a wake-up.
    static func drainEventFD(_ fd: CInt) {
        var value: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &value) { CLoop.read(fd, $0.baseAddress, 8) }
    }

    /// Adds one to an eventfd's counter (`write(2)` of 8 bytes). EAGAIN only if the counter is
    /// at its maximum, and then the reader is woken anyway: the result is not needed.
    static func signalEventFD(_ fd: CInt) {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { CLoop.write(fd, $0.baseAddress, 8) }
    }
}
