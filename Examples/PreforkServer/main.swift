// A prefork TCP server: the supervisor accepts connections and hands each socket to the worker
// handling the fewest; workers answer with a minimal HTTP response.
//
//   swift build --product lpm-prefork-worker && swift run lpm-prefork-server 8080 [workers]
//   curl http://127.0.0.1:8080/
//
// Ctrl-C soft-kills the pool: connections in progress are finished, then the process exits.
import CLoop
import Glibc
import LoadProcessManager
import LPMReactor

func siblingExecutable(_ name: String) -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    let me = String(decoding: buffer[..<max(0, n)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return String(me[..<(me.lastIndex(of: "/") ?? me.startIndex)]) + "/" + name
}

let arguments = CommandLine.arguments
guard arguments.count >= 2, let port = UInt16(arguments[1]) else {
    print("usage: lpm-prefork-server PORT [WORKERS]")
    exit(64)
}
let workers = arguments.count >= 3 ? Int(arguments[2]) ?? 2 : 2

Reactor.blockSignals([SIGINT, SIGTERM])
let reactor = try Reactor()

// The listening socket, non-blocking, on the loopback address.
let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
var one: Int32 = 1
setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
var address = sockaddr_in()
address.sin_family = sa_family_t(AF_INET)
address.sin_port = port.bigEndian
address.sin_addr.s_addr = inet_addr("127.0.0.1")
let bound = withUnsafePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
}
guard bound == 0, listen(listener, 1024) == 0 else {
    print("cannot listen on 127.0.0.1:\(port): \(String(cString: strerror(errno)))")
    exit(1)
}

var configuration = SupervisorConfiguration(workerPath: siblingExecutable("lpm-prefork-worker"), count: workers)
configuration.maxConcurrentRequestsPerWorker = 1024
let supervisor = Supervisor(configuration, reactor: reactor)

/// Connections served. `@unchecked Sendable`: touched only on the reactor (main) thread.
final class Stats: @unchecked Sendable { var served = 0; var failed = 0 }
let stats = Stats()

// Accept every pending connection and pass each socket to a worker.
let acceptRegistration = try reactor.register(listener, interest: .readable) { _ in
    while true {
        let connection = accept4(listener, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
        if connection < 0 { break }  // EAGAIN: accepted everything pending
        supervisor.enqueue([], socket: connection) { result in
            if case .success = result { stats.served += 1 } else { stats.failed += 1 }
        }
    }
}

supervisor.onEvent { event in
    if case .online = event { print("listening on http://127.0.0.1:\(port)/ with \(workers) workers") }
}
let handle = reactor.handle
supervisor.onSIGINT {
    print("SIGINT: finishing the connections in progress")
    handle.execute { reactor in
        try? reactor.deregister(acceptRegistration)
        close(listener)
    }
    supervisor.softKill(completion: {
        print("served \(stats.served) connections (\(stats.failed) failed); soft kill done")
        exit(0)
    })
}
supervisor.start(completion: { error in
    if let error { print("could not start: \(error)"); exit(1) }
})
try reactor.run()
