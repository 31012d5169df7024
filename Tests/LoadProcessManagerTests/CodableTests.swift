import LoadProcessManagerCodable
import Testing

struct Greeting: Codable, Equatable {
    var Hello: String
}

@Suite("Codable conveniences", .serialized, .timeLimit(.minutes(1)))
struct CodableTests {
    @Test("a JSON value goes to an echo worker and decodes back")
    func jsonRoundTrip() async throws {
        let (s, _) = try await startOnline(testConfig(count: 1))
        let answer = try await s.enqueue(json: Greeting(Hello: "World"), as: Greeting.self)
        #expect(answer == Greeting(Hello: "World"))
        let r = try await s.enqueue(json: ["a": 1])
        #expect(r.text == #"{"a":1}"#)
        await s.softKill()
    }
}
