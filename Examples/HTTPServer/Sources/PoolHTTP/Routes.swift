import Glibc
import HTTPTypes
import HTTPWork
import Hummingbird
import LoadProcessManager

/// The server's routes:
///
/// - `GET /pool/work?n=ROUNDS`: the job runs in a worker process; the handler only waits.
/// - `GET /inline/work?n=ROUNDS`: the same job runs in the handler, on the threads that serve
///   every request of this server.
/// - `GET /pool/stream?chunks=C&n=ROUNDS&delay=MS`: a worker computes `C` lines, one every
///   `ROUNDS` rounds (plus `MS` milliseconds), and the body streams them as they come.
/// - `GET /health`: the pool's status; 200 while a worker takes requests, else 503.
///
/// Each answer from a worker carries the worker's pid in `x-worker-pid`. A pool error becomes
/// the status ``httpStatus(for:)`` gives.
public func buildRouter(supervisor: Supervisor, options: RequestOptions = RequestOptions()) -> Router<BasicRequestContext> {
    let router = Router()

    router.get("pool/work") { request, _ -> Response in
        let job = try workJob(n: request.uri.queryParameters["n"])
        let answer = try await enqueue(job, on: supervisor, options: options)
        return textResponse(answer.text + "\n", workerPID: answer.workerPID)
    }

    router.get("inline/work") { request, _ -> Response in
        let rounds = try workRounds(n: request.uri.queryParameters["n"])
        return textResponse(hex(work(rounds: rounds)) + "\n", workerPID: nil)
    }

    router.get("pool/stream") { request, _ -> Response in
        let query = request.uri.queryParameters
        let job = try streamJob(chunks: query["chunks"], n: query["n"], delay: query["delay"])
        let answer = try await enqueue(job, on: supervisor, options: options)
        guard let stream = answer.stream else {
            throw HTTPError(.badGateway, message: "worker \(answer.workerPID) answered without a stream")
        }
        // The status line is sent before the first chunk: a stream that breaks later (its
        // worker died) cuts the body short, which the client sees as a truncated chunked body.
        let body = ResponseBody { writer in
            for try await chunk in stream {
                try await writer.write(ByteBuffer(bytes: chunk))
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: headers(workerPID: answer.workerPID), body: body)
    }

    router.get("health") { _, _ -> Response in
        let s = await supervisor.status()
        let text = #"{"workers":\#(s.workers),"ready":\#(s.ready),"queued":\#(s.queued),"pending":\#(s.pending),"shutDown":\#(s.isShutDown)}"#
        var response = textResponse(text + "\n", workerPID: nil)
        response.headers[.contentType] = "application/json"
        if s.ready == 0 || s.isShutDown { response.status = .serviceUnavailable }
        return response
    }

    return router
}

/// Enqueues `job`; a pool error becomes an `HTTPError` with the status ``httpStatus(for:)`` gives.
func enqueue(_ job: Job, on supervisor: Supervisor, options: RequestOptions) async throws(HTTPError) -> WorkerResponse {
    do {
        return try await supervisor.enqueue(job.payload, options: options)
    } catch {
        throw httpError(error)
    }
}

/// The header name that carries the pid of the worker that answered.
let workerPIDField = HTTPField.Name("x-worker-pid")!

func headers(workerPID: pid_t?) -> HTTPFields {
    var h: HTTPFields = [.contentType: "text/plain; charset=utf-8"]
    if let workerPID { h[workerPIDField] = String(workerPID) }
    return h
}

func textResponse(_ text: String, workerPID: pid_t?) -> Response {
    Response(status: .ok, headers: headers(workerPID: workerPID), body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
}
