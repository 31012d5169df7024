// The demo's worker: answers every request with {"dummy":"world"} after a short delay, as the
// load-process-manager example does (it waits 2 s; this one 200 ms, to keep the demo brisk).
import Glibc
import LPMReactor
import LoadProcessManagerWorker

let worker = Worker.connect()
worker.onRequest { request in
    let payload = String(decoding: request.data, as: UTF8.self)
    print("worker \(getpid()): request \(request.id) with payload \(payload)")
    _ = try? worker.reactor.schedule(after: .milliseconds(200)) {
        request.respond(#"{"dummy":"world"}"#)
    }
}
// Tell the supervisor this worker takes requests (mandatory).
worker.ready()
worker.run()
