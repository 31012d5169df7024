// An HTTP server (Hummingbird 2) that hands CPU-bound work to a pool of worker processes.
//
//   lpm-http-server [--host 127.0.0.1] [--port 8080] [--workers N] [--queue N] [--timeout-ms N]
//
// Defaults: 2 workers per CPU, 1024 requests queued at most (then 503), 30 s per request (then 504).
//
// The pool and the HTTP server run in one ServiceGroup: the pool starts first and the server
// accepts connections once every worker is ready; SIGINT or SIGTERM stops the server (requests
// in flight finish), then drains the pool (soft kill); a second signal ends both at once.
// `--port 0` picks a free port; the line "listening on http://HOST:PORT" says which.
import Glibc
import Hummingbird
import LoadProcessManager
import LoadProcessManagerServiceLifecycle
import Logging
import PoolHTTP
import ServiceLifecycle

struct Options {
    var host = "127.0.0.1"
    var port = 8080
    var workers = 2 * Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    var queue = 1024
    var timeoutMilliseconds = 30_000
}

func usage(_ message: String) -> Never {
    let text = "lpm-http-server: \(message)\n"
        + "usage: lpm-http-server [--host ADDRESS] [--port N] [--workers N] [--queue N] [--timeout-ms N]\n"
    _ = write(2, text, text.utf8.count)
    exit(64)
}

func parseOptions() -> Options {
    var options = Options()
    var args = CommandLine.arguments.dropFirst()
    while let name = args.popFirst() {
        if name == "--help" || name == "-h" { usage("options") }
        guard let value = args.popFirst() else { usage("\(name) needs a value") }
        func number(_ range: ClosedRange<Int>) -> Int {
            guard let n = Int(value), range.contains(n) else { usage("\(name) must be a number in \(range)") }
            return n
        }
        switch name {
        case "--host": options.host = value
        case "--port": options.port = number(0...65535)
        case "--workers": options.workers = number(1...1024)
        case "--queue": options.queue = number(1...1_000_000)
        case "--timeout-ms": options.timeoutMilliseconds = number(1...3_600_000)
        default: usage("unknown option \(name)")
        }
    }
    return options
}

/// The worker executable, built next to this one (`swift build` puts both products in one folder).
func workerPath() -> String {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard n > 0 else { usage("cannot read /proc/self/exe") }
    let me = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let folder = me[..<(me.lastIndex(of: "/") ?? me.startIndex)]
    return folder + "/lpm-http-worker"
}

let options = parseOptions()
var logger = Logger(label: "lpm-http-server")
logger.logLevel = getenv("LOG_LEVEL").flatMap { Logger.Level(rawValue: String(cString: $0)) } ?? .info

var config = SupervisorConfiguration(workerPath: workerPath(), count: options.workers)
// A CPU-bound job holds its worker's only thread: give each worker one request at a time, so
// that a request waits in the supervisor's queue for the first free worker instead of behind a
// slow job in a busy worker.
config.maxConcurrentRequestsPerWorker = 1
config.maxQueueLength = options.queue
config.requestTimeout = .milliseconds(options.timeoutMilliseconds)
// A job that timed out still runs in its worker (nothing interrupts a computation): start a
// replacement at once, and let the old worker exit when it is done.
config.recycleAfterTimeout = true
config.softKillTimeout = .seconds(30)
config.logger = logger

let pool = try SupervisorService(config)
let host = options.host
var app = Application(
    router: buildRouter(supervisor: pool.supervisor),
    configuration: .init(address: .hostname(host, port: options.port)),
    onServerRunning: { channel in
        let port = channel.localAddress?.port ?? 0
        print("listening on http://\(host):\(port)")
        fflush(nil)  // a script waiting for this line reads it now
    },
    logger: logger
)
app.beforeServerStarts { try await waitUntilOnline(pool.supervisor) }

// Services stop in the reverse order: the server first (its requests in flight finish, still
// served by the pool), then the pool drains.
let group = ServiceGroup(configuration: .init(
    services: [pool, app],
    gracefulShutdownSignals: [.sigterm, .sigint],
    cancellationSignals: [],
    logger: logger
))
try await group.run()
logger.info("stopped")
