import HTTPWork
import Hummingbird

/// The job of `GET /pool/work`: ``workRounds(n:)`` rounds.
public func workJob(n: Substring?) throws(HTTPError) -> Job {
    .work(rounds: try workRounds(n: n))
}

/// The rounds of `GET /pool/work` and `GET /inline/work`: `n` (100 000 when absent).
/// - Throws: a 400 `HTTPError` when `n` is not a number in `0...Job.maxRounds`.
public func workRounds(n: Substring?) throws(HTTPError) -> UInt64 {
    guard let n else { return 100_000 }
    guard let rounds = Job.rounds(n) else { throw HTTPError(.badRequest, message: "n must be a number of rounds in 0...\(Job.maxRounds)") }
    return rounds
}

/// The job of `GET /pool/stream`: `chunks` lines (8 when absent) of `n` rounds each (100 000),
/// `delay` milliseconds apart (0).
/// - Throws: a 400 `HTTPError` when a value is not a number or out of its range.
public func streamJob(chunks: Substring?, n: Substring?, delay: Substring?) throws(HTTPError) -> Job {
    .stream(chunks: try number("chunks", chunks, default: 8, max: Job.maxChunks),
            rounds: try workRounds(n: n),
            delayMilliseconds: try number("delay", delay, default: 0, max: Job.maxDelayMilliseconds))
}

private func number(_ name: String, _ text: Substring?, default value: Int, max: Int) throws(HTTPError) -> Int {
    guard let text else { return value }
    guard let n = Job.number(text, max: max) else { throw HTTPError(.badRequest, message: "\(name) must be a number in 0...\(max)") }
    return n
}
