import LPMReactor

import Glibc
/// At most `limit` restarts within a sliding window of `window` nanoseconds (Erlang/OTP's
/// intensity and period, systemd's StartLimitBurst and StartLimitIntervalSec). A pure value:
/// `now` is passed in (`RestartBudgetTests`).
struct RestartBudget: Sendable {
    let limit: Int
    let window: Int64
    /// Times of the restarts still inside the window, oldest first.
    private var times = Ring<Int64>(filler: 0)

    init(limit: Int, window: Duration) {
        self.limit = max(0, limit)
        self.window = max(0, Reactor.nanoseconds(window))
    }

    /// Restarts counted in the window ending at `now`.
    mutating func used(at now: Int64) -> Int {
        while let t = times.first, now - t >= window { _ = times.popFront() }
        return times.count
    }

    /// Charges a restart at `now` if the budget allows one; `false` when it is spent.
    mutating func charge(at now: Int64) -> Bool {
        guard used(at: now) < limit else { return false }
        times.pushBack(now)
        return true
    }
}
