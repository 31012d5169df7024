// The README's supervisor snippet as top-level code, so that it is compiled and run by the tests
// (`ReadmeSnippetTests`): `try await supervisor.start()` and `await supervisor.softKill()` must
// pick the async variants, and "soft kill done" must come after every worker has exited.
import Glibc
import LoadProcessManager

func siblingExecutable(_ name: String) -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    let me = n > 0 ? String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
    return String(me[..<(me.lastIndex(of: "/") ?? me.startIndex)]) + "/" + name
}
let workerPath = siblingExecutable("lpm-demo-worker")

// From here on, the README's snippet (bar the worker's path).
var config = SupervisorConfiguration(workerPath: workerPath, count: 2)
config.requestTimeout = .seconds(5)   // counted from dispatch; default: none
config.retries = 1                    // extra attempts after a worker dies or a timeout
let supervisor = try Supervisor(config)   // starts its reactor thread

supervisor.onEvent { event in
    switch event {
    case .online: print("All workers are online")
    case .workerExited(_, let pid, let status, _): print("worker \(pid) \(status)")
    default: break
    }
}
supervisor.onSIGINT { supervisor.softKill(completion: { print("soft kill done") }) }
try await supervisor.start()

let response = try await supervisor.enqueue(Array(#"{"Hello":"World"}"#.utf8))
print(response.text, response.id, response.workerPID)

await supervisor.softKill()   // lets accepted requests finish, then reaps every worker
print("soft kill done")
