import Hummingbird
import LoadProcessManager
import PoolHTTP
import Testing

@Suite("Pool errors as HTTP statuses")
struct ErrorTests {
    @Test("every pool error code has its status", arguments: [
        (SupervisorError.Code.queueFull, 503), (.noWorkers, 503), (.shutDown, 503), (.spawnFailed, 503),
        (.timedOut, 504), (.workerUnresponsive, 504),
        (.workerExited, 502), (.protocolViolation, 502), (.poisonRequest, 502), (.workerError, 502), (.streamFailed, 502),
        (.payloadTooLarge, 413), (.cancelled, 499), (.invalidArgument, 500),
    ])
    func status(_ code: SupervisorError.Code, _ expected: Int) {
        #expect(httpStatus(for: code).code == expected)
    }
}
