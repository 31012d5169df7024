import Glibc
import LPMReactor
import LPMWire

/// Serves the main dispatch queue from a reactor on the main thread.
///
/// On Linux the main actor's executor is the main dispatch queue, which runs only when the main
/// thread drains it: `dispatchMain()`, Foundation's `RunLoop`, or an async `main`. A worker's
/// main thread sits in its reactor instead, so without this a `Task {}` started from main-actor
/// code (a `main.swift` worker's top-level code and the closures written there) never runs.
///
/// libdispatch lets another loop drain the main queue, the way CoreFoundation's run loop does on
/// Linux: `_dispatch_get_main_queue_handle_4CF()` returns an eventfd that libdispatch signals
/// when main-queue work arrives, and `_dispatch_main_queue_callback_4CF(NULL)` runs that work on
/// the calling thread, which must be the main thread. Both are exported by libdispatch.so
/// (swift-corelibs-libdispatch `src/queue.c`), which the Swift concurrency runtime loads. They
/// are looked up with `dlsym(3)`, so a libdispatch without them only means main-actor tasks do
/// not run here (as before), never a failure to start. The handle is -1 once `dispatch_main()`
/// has taken the main queue over (an async top-level `main.swift` does that): nothing is served
/// then either.
enum MainQueue {
    private typealias HandleFunction = @convention(c) () -> CInt
    private typealias DrainFunction = @convention(c) (UnsafeMutableRawPointer?) -> Void

    /// Registers the main queue's eventfd with `reactor` when the calling thread is the main
    /// thread. Returns whether the main queue is now served by `reactor`.
    static func attach(to reactor: Reactor) -> Bool {
        guard Wire.isMainThread,
              // `RTLD_DEFAULT`, a null handle in glibc's <dlfcn.h>: every loaded object.
              let handleSymbol = dlsym(nil, "_dispatch_get_main_queue_handle_4CF"),
              let drainSymbol = dlsym(nil, "_dispatch_main_queue_callback_4CF")
        else { return false }
        let fd = unsafeBitCast(handleSymbol, to: HandleFunction.self)()
        guard fd >= 0 else { return false }
        let drain = unsafeBitCast(drainSymbol, to: DrainFunction.self)
        do {
            // The eventfd is libdispatch's (non-blocking, close-on-exec): read its counter back
            // to zero, as CoreFoundation does, then run what is queued. Work queued while it runs
            // signals the eventfd again.
            try reactor.register(fd, interest: .readable) { _ in
                var count: UInt64 = 0
                _ = read(fd, &count, 8)
                drain(nil)
            }
        } catch {
            return false
        }
        // Work queued before the handle existed (a `Task {}` before `Worker()`) may not have
        // signalled it: drain once at the first iteration.
        reactor.execute { _ in drain(nil) }
        return true
    }
}
