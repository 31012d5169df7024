// The HTTP example's worker: runs the CPU-bound job the server hands it (`work ROUNDS`), or
// answers with a stream of lines computed one by one (`stream CHUNKS ROUNDS DELAY_MS`).
// The supervisor gives it one request at a time (`maxConcurrentRequestsPerWorker = 1`): the
// job holds its only thread while it runs.
import HTTPWork
import LPMReactor
import LoadProcessManagerWorker

let worker = Worker.connect()

worker.onRequest { request in
    switch Job(payload: request.data) {
    case .work(let rounds):
        request.respond(hex(work(rounds: rounds)))
    case .stream(let chunks, let rounds, let delay):
        guard let out = request.respondWithStream(Array("streaming".utf8)) else { return }
        stream(to: out, chunks: chunks, rounds: rounds, delayMilliseconds: delay, on: worker.reactor)
    case nil:
        request.fail("not a job: \(String(decoding: request.data.prefix(64), as: UTF8.self))")
    }
}

/// Writes the lines one at a time, giving the reactor a turn between two (pings, a cancelled
/// stream), and waits for the caller to read when 64 KiB are buffered (back-pressure).
func stream(to out: Worker.OutputStream, chunks: Int, rounds: UInt64, delayMilliseconds: Int, on reactor: Reactor) {
    var index = 0
    func next() {
        if out.isBroken { return out.fail() }  // the caller went away
        guard index < chunks else { return out.finish() }
        out.write(Array(streamLine(index: index, rounds: rounds).utf8))
        index += 1
        if out.bufferedCount > 64 * 1024 {
            out.onDrain = {
                out.onDrain = {}
                later(next)
            }
        } else {
            later(next)
        }
    }
    func later(_ body: @escaping () -> Void) {
        do {
            _ = try reactor.schedule(after: .milliseconds(index < chunks ? delayMilliseconds : 0), body)
        } catch {
            out.fail()
        }
    }
    next()
}

worker.ready()
worker.run()
