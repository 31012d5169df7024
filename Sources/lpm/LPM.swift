import ArgumentParser
import Glibc
import LPMReactor

@main
struct LPM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lpm",
        abstract: "Runs requests through a pool of LoadProcessManager worker processes.",
        subcommands: [Run.self]
    )
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sends each line of stdin to a pool of workers as a request; writes the answers to stdout, one per line.",
        discussion: """
        Each input line (its bytes, without the newline) is one request's payload; each answer is \
        written as one line on stdout. By default answers come in input order, and a request that \
        failed gets an empty line, so that output line N always answers input line N; with \
        --unordered, answers are written as they come and failed requests write nothing on stdout. \
        Every failure is reported on stderr as "lpm: line N: <error>" (an answer containing a \
        newline is a failure too).

        At most --max-in-flight requests are read ahead of the output: stdin is read only as \
        answers are written. The workers' own stdout goes to stderr, and their stdin is /dev/null.

        A progress line is shown on stderr when it is a terminal; a summary is always printed on \
        stderr at the end. Ctrl-C (SIGINT) or SIGTERM stops reading, lets the requests in flight \
        finish, prints the summary and exits with 130; a second one kills the workers at once.

        Exit status: 0 when every request was answered, 1 when some failed, 2 when the workers \
        could not be started (126: the worker is not executable, 127: it was not found), 64 on \
        usage errors, 130 when interrupted.
        """
    )

    @Option(name: .shortAndLong, help: "How many workers to run (default: the number of online CPUs).")
    var workers: Int?

    @Option(help: ArgumentHelp("Timeout of each request, counted from dispatch to a worker: 250ms, 5s, 2m...", valueName: "duration"),
            transform: DurationArgument.parse)
    var timeout: Duration?

    @Option(help: "Extra attempts for a request after its worker died or it timed out.")
    var retries: Int = 0

    @Flag(help: "Write answers as they come instead of in input order; failed requests write nothing on stdout.")
    var unordered = false

    @Option(help: "The most requests read ahead of the output (sent, or answered and not written yet).")
    var maxInFlight: Int = 4096

    @Option(name: .customLong("env"), help: ArgumentHelp("An environment variable for the workers (repeatable).", valueName: "KEY=VALUE"))
    var environment: [String] = []

    @Argument(parsing: .postTerminator, help: ArgumentHelp("The worker executable and its arguments, after --.", valueName: "worker"))
    var command: [String] = []

    func validate() throws {
        if command.isEmpty { throw ValidationError("Missing the worker: write it after --, as in `lpm run -- ./my-worker`.") }
        if let workers, workers < 1 { throw ValidationError("--workers must be at least 1.") }
        if retries < 0 { throw ValidationError("--retries must be 0 or more.") }
        if maxInFlight < 1 { throw ValidationError("--max-in-flight must be at least 1.") }
        if let timeout, timeout <= .zero { throw ValidationError("--timeout must be longer than zero.") }
        for entry in environment where !entry.contains("=") || entry.hasPrefix("=") {
            throw ValidationError("--env takes KEY=VALUE, not '\(entry)'.")
        }
    }

    func run() throws {
        // Before any thread starts: the supervisor's reactor reads these from a signalfd.
        Reactor.blockSignals([SIGINT, SIGTERM])
        var env: [String: String] = [:]
        for entry in environment {
            let eq = entry.firstIndex(of: "=")!
            env[String(entry[..<eq])] = String(entry[entry.index(after: eq)...])
        }
        let options = RunOptions(
            workers: workers ?? max(1, Int(sysconf(CInt(_SC_NPROCESSORS_ONLN)))),
            timeout: timeout,
            retries: retries,
            ordered: !unordered,
            maxInFlight: maxInFlight,
            environment: env,
            worker: command[0],
            arguments: Array(command.dropFirst())
        )
        let status = Runner.main(options)
        if status != 0 { throw ExitCode(status) }
    }
}
