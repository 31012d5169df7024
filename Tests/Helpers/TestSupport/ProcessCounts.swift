import Dispatch
import Glibc

/// How many entries a /proc directory of this process has, less "." and ".." and the
/// directory's own descriptor when `selfDescriptor`.
private func entries(_ path: String, selfDescriptor: Bool) -> Int {
    guard let dir = opendir(path) else { return -1 }
    var n = 0
    while readdir(dir) != nil { n += 1 }
    closedir(dir)
    return n - 2 - (selfDescriptor ? 1 : 0)
}

/// How many descriptors this process has open (`/proc/self/fd`, less the one used to list it).
public func openFDCount() -> Int { entries("/proc/self/fd", selfDescriptor: true) }

/// How many threads this process has (`/proc/self/task`).
public func threadCount() -> Int { entries("/proc/self/task", selfDescriptor: false) }

/// This process's descriptors as `number->target`, for failure messages.
public func fdList() -> String {
    guard let dir = opendir("/proc/self/fd") else { return "" }
    var out: [String] = []
    while let e = readdir(dir) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        var buf = [CChar](repeating: 0, count: 512)
        let n = readlink("/proc/self/fd/" + name, &buf, 511)
        out.append(name + "->" + String(decoding: buf[..<max(0, n)].map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
    closedir(dir)
    return out.joined(separator: " ")
}

/// Call first in an exit test's body that counts descriptors or threads: a fresh child process
/// opens some of the Swift runtime's descriptors lazily, just after the body starts (the
/// executor's timerfd; a start-up eventfd is closed). Sleeps once (which opens the timerfd), then
/// waits until the count has held for a while (bounded: at most about two seconds).
public func settleChildProcess() async {
    // libdispatch opens one timerfd per clock it is asked to time on, the first time: arm a
    // timer on each (continuous, suspending, wall clock) so that none appears mid-test.
    try? await Task.sleep(for: .milliseconds(1))
    try? await Task.sleep(for: .milliseconds(1), clock: .suspending)
    await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
        DispatchQueue.global().asyncAfter(wallDeadline: .now() + .milliseconds(1)) { c.resume() }
    }
    await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(1)) { c.resume() }
    }
    var last = openFDCount(), unchanged = 0
    for _ in 0..<1000 where unchanged < 10 {
        try? await Task.sleep(for: .milliseconds(2))
        let now = openFDCount()
        if now == last { unchanged += 1 } else { unchanged = 0; last = now }
    }
}
