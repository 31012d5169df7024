// The worker the benchmarks spawn.
//
//   bench-worker                 a no-op LoadProcessManager worker: answers each request with
//                                its own data (started by a Supervisor, channel on fd 3)
//   bench-worker --reactor-echo  a raw echo peer for the reactor jobs: echoes the 64-byte frames
//                                it reads on fd 3, through an LPMReactor (no Supervisor protocol)
//
// Under compare.sh's allocation counter (LD_PRELOAD=malloc_count.so, LPM_COUNT_MALLOCS=1) the
// request "?mallocs" is answered with this process's allocation count instead.
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
    worker.onRequest { request in request.respond(request.data) }
}
worker.ready()
worker.run()
