import CLoop
import Glibc

extension Wire {
    /// Whether the calling thread is the process's main thread: its kernel thread id is the
    /// process id (`gettid(2)` == `getpid(2)`). The worker runtime serves the main dispatch
    /// queue only from that thread.
    package static var isMainThread: Bool { cloop_gettid() == getpid() }
}
