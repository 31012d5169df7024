import ArgumentParser

/// Parses durations written as a number and a unit: `250ms`, `5s`, `1.5s`, `2m`, `1h`
/// (also `ns`, `us`, `µs`). A number without a unit is refused, so that `--timeout 5` cannot
/// mean five seconds to one reader and five milliseconds to another.
enum DurationArgument {
    static func parse(_ text: String) throws -> Duration {
        let units: [(String, Double)] = [
            ("ns", 1e-9), ("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1), ("m", 60), ("h", 3600),
        ]
        let trimmed = text.trimmingSpaces
        // Longest suffix first: "ms" before "s" and "m".
        for (unit, scale) in units.sorted(by: { $0.0.count > $1.0.count }) where trimmed.hasSuffix(unit) {
            let number = String(trimmed.dropLast(unit.count))
            guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
                  let value = Double(number), value.isFinite, value >= 0, value * scale < 1e9 else { break }
            let nanoseconds = (value * scale * 1e9).rounded()
            return .nanoseconds(Int64(nanoseconds))
        }
        throw ValidationError("'\(text)' is not a duration: write a number and a unit, as in 250ms, 5s, 1.5s, 2m or 1h (units: ns, us, ms, s, m, h)")
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}

extension Duration {
    /// The duration in seconds, as a `Double`.
    var seconds: Double {
        let (s, attos) = components
        return Double(s) + Double(attos) * 1e-18
    }
}
