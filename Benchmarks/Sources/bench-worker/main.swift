// The worker the benchmarks spawn.
//
//   bench-worker                 a no-op LoadProcessManager worker: answers each request with
//                                its own data (started by a Supervisor, channel on fd 3)
//   bench-worker --reactor-echo  a raw echo peer for the reactor jobs: echoes the 64-byte frames
//                                it reads on fd 3, through an LPMReactor (no Supervisor protocol)
//
// Under compare.sh's allocation counter (LD_PRELOAD=malloc_count.so, LPM_COUNT_MALLOCS=1) the
// request "?mallocs" is answered with this process's allocation count instead.
//
// LPM_BENCH_HANDLER picks the request handler, for the cost of the async ones (any job):
//   sync (default)  answers in a synchronous handler
//   async           answers in an async handler that never suspends (a task per request)
//   async-yield     answers in an async handler after one `await Task.yield()` (a task per
//                   request, suspended and resumed once through the main queue, since a
//                   closure written here is main-actor code)
//   nonisolated-async, nonisolated-async-yield
//                   the same with a nonisolated handler (resumed on the worker's task executor)
import LPMBenchJobs
import LPMReactor
import LoadProcessManagerWorker
#if canImport(Glibc)
import Glibc
#endif

if CommandLine.arguments.dropFirst().first == "--reactor-echo" {
    let reactor = try Reactor()
    _ = try RawEchoPeer(fd: 3, reactor: reactor) { reactor.stop() }
    try reactor.run()
    exit(0)
}

/// A closure made in a nonisolated function is nonisolated: its task runs on the worker's task
/// executor rather than the main actor.
nonisolated func setNonisolatedHandler(_ worker: Worker, yielding: Bool) {
    worker.onRequest { (request: Worker.Request) async in
        if yielding { await Task.yield() }
        request.respond(request.data)
    }
}

let worker = try Worker()
if let count = MallocCounter.function, getenv("LPM_COUNT_MALLOCS") != nil {
    worker.onRequest { request in
        if request.data == MallocCounter.query {
            request.respond(Array(String(count()).utf8))
        } else {
            request.respond(request.data)
        }
    }
} else {
    switch getenv("LPM_BENCH_HANDLER").map({ String(cString: $0) }) ?? "sync" {
    case "async":
        worker.onRequest { (request: Worker.Request) async in request.respond(request.data) }
    case "async-yield":
        worker.onRequest { (request: Worker.Request) async in
            await Task.yield()
            request.respond(request.data)
        }
    case let mode where mode.hasPrefix("nonisolated-"):
        setNonisolatedHandler(worker, yielding: mode.hasSuffix("-yield"))
    default:
        worker.onRequest { request in request.respond(request.data) }
    }
}
worker.ready()
worker.run()
