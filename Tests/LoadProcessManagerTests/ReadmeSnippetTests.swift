import Foundation
import Testing

@Suite("README snippet", .timeLimit(.minutes(1)))
struct ReadmeSnippetTests {
    @Test("the README's supervisor snippet is the example, and it runs: the answer, both exits, then 'soft kill done'")
    func snippetRuns() throws {
        // The README's first Swift block, line by line, is in the example (bar the worker path).
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let readme = try String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8)
        let example = try String(contentsOf: root.appendingPathComponent("Examples/ReadmeSnippet/main.swift"), encoding: .utf8)
        let block = try #require(readme.components(separatedBy: "```swift\n").dropFirst().first?.components(separatedBy: "```").first)
        let exampleLines = Set(example.split(separator: "\n").map(String.init))
        for line in block.split(separator: "\n").map(String.init) where !line.contains("/path/to/my-worker") {
            #expect(exampleLines.contains(line), "README line not in Examples/ReadmeSnippet: \(line)")
        }

        let process = Process()
        process.executableURL = URL(fileURLWithPath: sibling("lpm-readme-example"))
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.hasPrefix(#"{"dummy":"world"}"#) || $0.contains("world") }, "\(lines)")
        let exits = lines.indices.filter { lines[$0].hasPrefix("worker ") && lines[$0].contains(" exited ") }
        let done = try #require(lines.lastIndex(of: "soft kill done"), "\(lines)")
        #expect(exits.count == 2, "\(lines)")
        #expect(exits.allSatisfy { $0 < done }, "soft kill done printed before the workers exited: \(lines)")
    }
}
