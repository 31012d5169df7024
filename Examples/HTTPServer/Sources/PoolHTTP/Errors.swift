import HTTPWork
import Hummingbird
import LoadProcessManager

/// The HTTP status for a pool error, seen from the client: the pool is the server's upstream.
///
/// | pool error | status |
/// |---|---|
/// | `queueFull`, `noWorkers`, `shutDown`, `spawnFailed` | 503 Service Unavailable (come back later) |
/// | `timedOut`, `workerUnresponsive` | 504 Gateway Timeout |
/// | `workerExited`, `protocolViolation`, `poisonRequest`, `workerError`, `streamFailed` | 502 Bad Gateway |
/// | `payloadTooLarge` | 413 Content Too Large |
/// | `cancelled` | 499 (the client went away; nobody reads it) |
/// | anything else | 500 Internal Server Error |
public func httpStatus(for code: SupervisorError.Code) -> HTTPResponse.Status {
    switch code {
    case .queueFull, .noWorkers, .shutDown, .spawnFailed: .serviceUnavailable
    case .timedOut, .workerUnresponsive: .gatewayTimeout
    case .workerExited, .protocolViolation, .poisonRequest, .workerError, .streamFailed: .badGateway
    case .payloadTooLarge: .contentTooLarge
    case .cancelled: HTTPResponse.Status(code: 499, reasonPhrase: "Client Closed Request")
    default: .internalServerError
    }
}

/// The `HTTPError` for a pool error: its status (``httpStatus(for:)``), its message, and
/// `Retry-After: 1` on a 503, when trying again soon can succeed.
public func httpError(_ error: SupervisorError) -> HTTPError {
    let status = httpStatus(for: error.code)
    var headers = HTTPFields()
    if status == .serviceUnavailable && error.code != .shutDown { headers[.retryAfter] = "1" }
    return HTTPError(status, headers: headers, message: error.description)
}

/// The job of `GET /pool/work` and `GET /inline/work`: `n` rounds (100 000 when absent).
/// - Throws: a 400 `HTTPError` when `n` is not a number in `0...Job.maxRounds`.
public func workJob(n: Substring?) throws(HTTPError) -> Job {
    .work(rounds: try rounds(n))
}

/// The job of `GET /pool/stream`: `chunks` lines (8 when absent) of `n` rounds each (100 000),
/// `delay` milliseconds apart (0).
/// - Throws: a 400 `HTTPError` when a value is not a number or out of its range.
public func streamJob(chunks: Substring?, n: Substring?, delay: Substring?) throws(HTTPError) -> Job {
    .stream(chunks: try number("chunks", chunks, default: 8, max: Job.maxChunks),
            rounds: try rounds(n),
            delayMilliseconds: try number("delay", delay, default: 0, max: Job.maxDelayMilliseconds))
}

private func rounds(_ text: Substring?) throws(HTTPError) -> UInt64 {
    guard let text else { return 100_000 }
    guard let n = Job.rounds(text) else { throw HTTPError(.badRequest, message: "n must be a number of rounds in 0...\(Job.maxRounds)") }
    return n
}

private func number(_ name: String, _ text: Substring?, default value: Int, max: Int) throws(HTTPError) -> Int {
    guard let text else { return value }
    guard let n = Job.number(text, max: max) else { throw HTTPError(.badRequest, message: "\(name) must be a number in 0...\(max)") }
    return n
}
