import HTTPWork
import Hummingbird
import PoolHTTP
import Testing

@Suite("The job and its HTTP parameters")
struct JobTests {
    @Test("work chains splitmix64 steps: round 1 is splitmix64's first output, each round feeds the next")
    func splitmix() {
        #expect(work(rounds: 0, seed: 7) == 7)
        #expect(work(rounds: 1) == 0xE220_A839_7B1D_CDAF)
        #expect(work(rounds: 2) == work(rounds: 1, seed: work(rounds: 1)))
        #expect(work(rounds: 1000, seed: 5) == work(rounds: 400, seed: work(rounds: 600, seed: 5)))
        #expect(hex(work(rounds: 1)) == "e220a8397b1dcdaf")
        #expect(hex(1) == "0000000000000001")
    }

    @Test("a stream line names its chunk and the digest of its own seed")
    func line() {
        #expect(streamLine(index: 3, rounds: 10) == "chunk 3 \(hex(work(rounds: 10, seed: 3)))\n")
    }

    @Test("payloads decode to the job they encode", arguments: [
        Job.work(rounds: 0), .work(rounds: Job.maxRounds), .stream(chunks: 0, rounds: 1, delayMilliseconds: 0),
        .stream(chunks: Job.maxChunks, rounds: 7, delayMilliseconds: Job.maxDelayMilliseconds),
    ])
    func roundTrip(_ job: Job) {
        #expect(Job(payload: job.payload) == job)
    }

    @Test("bad payloads decode to nil", arguments: [
        "", "work", "work ", "work -1", "work 1 2", "work x", "work \(Job.maxRounds + 1)", "stream 1 2",
        "stream 1 2 3 4", "stream -1 2 3", "stream 1 2 \(Job.maxDelayMilliseconds + 1)", "steam 1 2 3", "WORK 1",
    ])
    func badPayload(_ text: String) {
        #expect(Job(payload: Array(text.utf8)) == nil)
    }

    @Test("query parameters: defaults, values, and 400 for anything else")
    func queries() throws {
        #expect(try workJob(n: nil) == .work(rounds: 100_000))
        #expect(try workJob(n: "42") == .work(rounds: 42))
        #expect(try streamJob(chunks: nil, n: nil, delay: nil) == .stream(chunks: 8, rounds: 100_000, delayMilliseconds: 0))
        #expect(try streamJob(chunks: "3", n: "5", delay: "20") == .stream(chunks: 3, rounds: 5, delayMilliseconds: 20))
        // (chunks, n, delay) for /pool/stream; `chunks` nil also stands for /pool/work with `n`.
        let bad: [(Substring?, Substring?, Substring?)] = [
            (nil, "", nil), (nil, "-3", nil), (nil, "1e9", nil), (nil, "\(Job.maxRounds + 1)", nil),
            ("x", nil, nil), ("\(Job.maxChunks + 1)", nil, nil), ("1", "-1", nil), (nil, nil, "-1"), (nil, nil, "0.5"),
        ]
        for (chunks, n, delay) in bad {
            do {
                let job = try streamJob(chunks: chunks, n: n, delay: delay)
                Issue.record("accepted: \(job)")
            } catch {
                #expect(error.status == .badRequest)
            }
            guard chunks == nil, delay == nil else { continue }
            do {
                let job = try workJob(n: n)
                Issue.record("accepted: \(job)")
            } catch {
                #expect(error.status == .badRequest)
            }
        }
    }
}
