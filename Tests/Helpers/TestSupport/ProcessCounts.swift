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
