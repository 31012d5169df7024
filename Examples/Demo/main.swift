// The main example: a supervisor with two workers answering ten requests; Ctrl-C (SIGINT) then
// soft-kills the pool. Run it with `swift run lpm-demo` (after building lpm-demo-worker).
//
// Pass --exit-when-done to soft-kill by itself once the ten answers are in (no Ctrl-C needed).
import LoadProcessManager
import LPMReactor
import Glibc

// The worker executable is built next to this one.
func siblingExecutable(_ name: String) -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    let me = n > 0 ? String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
    return String(me[..<(me.lastIndex(of: "/") ?? me.startIndex)]) + "/" + name
}

/// Counts answers. `@unchecked Sendable`: completion handlers run on the reactor thread (here,
/// the main thread), so only that thread touches `value`.
final class Counter: @unchecked Sendable { var value = 0 }

// Block SIGINT before any other thread exists, so it goes straight to the reactor.
Reactor.blockSignals([SIGINT, SIGTERM])
let exitWhenDone = CommandLine.arguments.contains("--exit-when-done")
let reactor = try Reactor()
var configuration = SupervisorConfiguration(workerPath: siblingExecutable("lpm-demo-worker"), count: 2)
let supervisor = Supervisor(configuration, reactor: reactor)

supervisor.onSIGINT {
    print("SIGINT received through supervisor")
    // supervisor.hardKill()  // would kill the workers without waiting for their requests
    supervisor.softKill(completion: {
        print("soft kill done")
        exit(0)
    })
}

supervisor.onEvent { event in
    guard case .online = event else { return }
    print("All workers are online")
    let answered = Counter()
    for _ in 0..<10 {
        let payload = #"{"Hello":"World"}"#
        print("Enqueuing a new request with payload \(payload)")
        supervisor.enqueue(Array(payload.utf8)) { result in
            switch result {
            case .success(let r): print("Answer received from worker \(r.workerPID): \(r.text) (request \(r.id))")
            case .failure(let e): print("Request failed: \(e)")
            }
            answered.value += 1
            if answered.value == 10 {
                supervisor.health { workers in
                    for h in workers { print("worker \(h.pid): rss \(h.rss / 1024) KiB, \(h.completed) answered") }
                }
                if exitWhenDone {
                    supervisor.softKill(completion: {
                        print("soft kill done")
                        exit(0)
                    })
                } else {
                    print("Press Ctrl-C to soft-kill the pool.")
                }
            }
        }
    }
}

supervisor.start(completion: { error in
    if let error { print("could not start: \(error)"); exit(1) }
})
try reactor.run()
