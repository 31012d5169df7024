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
