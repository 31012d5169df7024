/// The CPU-bound job both the worker and the server's in-process endpoint run: `rounds` steps of
/// splitmix64 (add the golden ratio, then its mixing function), each step applied to the output
/// of the one before, so the compiler can neither skip nor vectorize them. A round costs a few
/// nanoseconds: the time grows linearly with `rounds`.
public func work(rounds: UInt64, seed: UInt64 = 0) -> UInt64 {
    var x = seed
    var i: UInt64 = 0
    while i < rounds {
        x &+= 0x9E37_79B9_7F4A_7C15
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        x = z ^ (z >> 31)
        i += 1
    }
    return x
}

/// The digest as 16 lowercase hexadecimal digits.
public func hex(_ value: UInt64) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: 16 - digits.count) + digits
}

/// One line of a streamed answer: the chunk's number and the digest of its work (chunk `i` runs
/// `rounds` rounds seeded with `i`).
public func streamLine(index: Int, rounds: UInt64) -> String {
    "chunk \(index) \(hex(work(rounds: rounds, seed: UInt64(index))))\n"
}

/// What the server asks a worker to do, as it travels in a request's payload (ASCII words
/// separated by spaces: `work ROUNDS` or `stream CHUNKS ROUNDS DELAY_MS`).
public enum Job: Equatable, Sendable {
    /// Run ``work(rounds:seed:)`` once; the answer is the digest in hexadecimal.
    case work(rounds: UInt64)
    /// Answer with a stream of `chunks` lines (``streamLine(index:rounds:)``), waiting
    /// `delayMilliseconds` between two.
    case stream(chunks: Int, rounds: UInt64, delayMilliseconds: Int)

    /// The largest number of rounds a request may ask for (a few seconds of one core).
    public static let maxRounds: UInt64 = 1 << 31
    /// The largest number of chunks a stream may ask for.
    public static let maxChunks = 100_000
    /// The longest delay between two chunks, in milliseconds.
    public static let maxDelayMilliseconds = 10_000

    /// The job's payload.
    public var payload: [UInt8] {
        switch self {
        case .work(let rounds): Array("work \(rounds)".utf8)
        case .stream(let chunks, let rounds, let delay): Array("stream \(chunks) \(rounds) \(delay)".utf8)
        }
    }

    /// Decodes a payload; `nil` when it is not a job or a number is out of its range.
    public init?(payload: [UInt8]) {
        let words = String(decoding: payload, as: UTF8.self).split(separator: " ", omittingEmptySubsequences: false)
        switch (words.first, words.count) {
        case ("work", 2):
            guard let rounds = Self.rounds(words[1]) else { return nil }
            self = .work(rounds: rounds)
        case ("stream", 4):
            guard let chunks = Self.number(words[1], max: Self.maxChunks), let rounds = Self.rounds(words[2]),
                  let delay = Self.number(words[3], max: Self.maxDelayMilliseconds) else { return nil }
            self = .stream(chunks: chunks, rounds: rounds, delayMilliseconds: delay)
        default:
            return nil
        }
    }

    /// `text` as a number of rounds, or `nil` when it is not one or exceeds ``maxRounds``.
    public static func rounds(_ text: Substring) -> UInt64? {
        guard let n = UInt64(text), n <= maxRounds else { return nil }
        return n
    }

    /// `text` as a number in `0...max`, or `nil`.
    public static func number(_ text: Substring, max: Int) -> Int? {
        guard let n = Int(text), (0...max).contains(n) else { return nil }
        return n
    }
}
