import Glibc
/// One worker process's lifecycle, as a pure state machine: each event returns the action the
/// pool must take. Replaces a set of flags (ever ready, violation, expected exit, soft kill
/// sent...) with one value whose every state says what the worker may get and how its exit is
/// read. Tested as a transition table (`WorkerLifecycleTests`).
///
/// ```
/// starting --ready--> ready <--ready/busy--> busy
///     |                 |                      |
///     +----- drain -----+------- drain --------+--> draining --exit--> exited
///     +-- kill / violation / channel closed ---+--> stopping --exit--> exited
/// ```
enum WorkerLifecycle: Equatable, Sendable {
    /// Spawned; has not said `ready` yet.
    case starting
    /// Takes requests.
    case ready
    /// Said `busy()`: gets nothing until it says `ready` again.
    case busy(wasReady: Bool)
    /// Told to finish (soft kill, or retired by a resize): gets nothing new, finishes what it has
    /// and exits; its exit is expected.
    case draining(wasReady: Bool)
    /// Killed, or about to be: its exit is awaited.
    case stopping(StopCause)
    /// Reaped.
    case exited(ExitCause)

    /// Why a worker is being stopped.
    enum StopCause: Equatable, Sendable {
        /// The pool stopped it (hard kill, a soft kill's deadline): an expected exit.
        case requested
        /// It broke the protocol.
        case violation(String)
        /// It closed its channel while it was meant to run.
        case channelClosed
        /// It stopped answering pings.
        case unresponsive(String)
    }

    /// How a worker's exit is to be read.
    enum ExitCause: Equatable, Sendable {
        /// The pool asked for it (drain or kill).
        case expected
        /// It broke the protocol and was killed.
        case violation(String)
        /// It stopped answering pings and was killed.
        case unresponsive(String)
        /// It died on its own (crash, exit, or its channel closed first).
        case crashed
    }

    enum Event: Equatable, Sendable {
        case readyFrame
        case busyFrame
        /// Soft kill or retirement.
        case drain
        /// Hard kill, or a deadline passed.
        case kill
        case violation(String)
        case unresponsive(String)
        case channelClosed
        case exited
    }

    enum Action: Equatable, Sendable {
        case none
        /// It can take work now: dispatch, and see whether the pool is online.
        case becameReady
        /// Send it the soft-kill notice.
        case sendSoftKill
        /// Kill the process (SIGKILL) and close its channel.
        case killProcess
        /// Report the violation, then kill the process.
        case reportViolationAndKill(String)
        /// Report that it stopped answering, then kill the process.
        case reportUnresponsiveAndKill(String)
        /// It is gone: fail or retry its requests; restart it if `cause` is not expected.
        case reap(ExitCause)
    }

    /// Applies `event`; returns what the pool must do.
    mutating func handle(_ event: Event) -> Action {
        switch (self, event) {
        case (.exited, _):
            return .none

        case (_, .exited):
            let cause: ExitCause
            switch self {
            case .draining, .stopping(.requested): cause = .expected
            case .stopping(.violation(let reason)): cause = .violation(reason)
            case .stopping(.unresponsive(let reason)): cause = .unresponsive(reason)
            default: cause = .crashed
            }
            self = .exited(cause)
            return .reap(cause)

        case (.starting, .readyFrame), (.ready, .readyFrame), (.busy, .readyFrame):
            self = .ready
            return .becameReady
        case (.draining, .readyFrame), (.stopping, .readyFrame):
            return .none

        case (.starting, .busyFrame), (.ready, .busyFrame):
            self = .busy(wasReady: hasBeenReady)
            return .none
        case (.busy, .busyFrame), (.draining, .busyFrame), (.stopping, .busyFrame):
            return .none

        case (.starting, .drain), (.ready, .drain), (.busy, .drain):
            self = .draining(wasReady: hasBeenReady)
            return .sendSoftKill
        case (.draining, .drain), (.stopping, .drain):
            return .none

        case (.stopping, .kill):
            return .none
        case (_, .kill):
            self = .stopping(.requested)
            return .killProcess

        case (.stopping(.violation), .violation):
            return .none
        case (_, .violation(let reason)):
            self = .stopping(.violation(reason))
            return .reportViolationAndKill(reason)

        case (.stopping, .unresponsive):
            return .none
        case (_, .unresponsive(let reason)):
            self = .stopping(.unresponsive(reason))
            return .reportUnresponsiveAndKill(reason)

        case (.starting, .channelClosed), (.ready, .channelClosed), (.busy, .channelClosed):
            // A worker must not close its channel and live on: make sure it is gone; its exit
            // status then says how it ended.
            self = .stopping(.channelClosed)
            return .killProcess
        case (.draining, .channelClosed), (.stopping, .channelClosed):
            // An exiting worker closes its channel before it is reaped: expected.
            return .none
        }
    }

    /// Whether it may be given a request now.
    var acceptsWork: Bool { self == .ready }

    /// Whether it has been ready at least once (the pool is online when every worker has).
    var hasBeenReady: Bool {
        switch self {
        case .ready: true
        case .busy(let r), .draining(let r): r
        case .starting, .stopping, .exited: false
        }
    }

    /// Whether it is still meant to serve (not draining, stopping or gone).
    var isServing: Bool {
        switch self {
        case .starting, .ready, .busy: true
        case .draining, .stopping, .exited: false
        }
    }

    /// The state ``Supervisor/health()`` reports.
    var publicState: WorkerState {
        switch self {
        case .starting: .starting
        case .ready: .ready
        case .busy: .busy
        case .draining, .stopping: .stopping
        case .exited: .down
        }
    }
}
