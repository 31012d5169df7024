import Foundation
import Testing

/// The directory holding this test binary and the modules built with it.
private func binDirectory() -> URL {
    URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
}

private let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

@Suite("Public surface", .timeLimit(.minutes(2)))
struct SurfaceTests {
    @Test("a client outside the package imports every product beside Foundation and swift-system: no clash, no package helper visible")
    func externalClient() throws {
        let bin = binDirectory()
        // swift-system's C module, wherever the build keeps the checkouts (`.build/checkouts`).
        var checkouts = bin
        while checkouts.path != "/" && !FileManager.default.fileExists(atPath: checkouts.appendingPathComponent("checkouts").path) {
            checkouts.deleteLastPathComponent()
        }
        let csystem = checkouts.appendingPathComponent("checkouts/swift-system/Sources/CSystem/include/module.modulemap")
        try #require(FileManager.default.fileExists(atPath: csystem.path), "swift-system's checkout not found from \(bin.path)")

        func typecheck(_ source: URL) throws -> (Int32, String) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["swiftc", "-typecheck", "-swift-version", "6", "-I", bin.appendingPathComponent("Modules").path,
                           "-Xcc", "-fmodule-map-file=" + root.appendingPathComponent("CShims/module.modulemap").path,
                           "-Xcc", "-fmodule-map-file=" + csystem.path, source.path]
            let err = Pipe()
            p.standardError = err
            p.standardOutput = err
            try p.run()
            let output = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            return (p.terminationStatus, output)
        }

        let client = root.appendingPathComponent("Tests/Helpers/SurfaceClient/client.swift")
        let (status, output) = try typecheck(client)
        #expect(status == 0, "\(output)")

        // The instrument works: the package-only helpers are not visible to a client.
        let probe = FileManager.default.temporaryDirectory.appendingPathComponent("lpm-surface-probe-\(getpid()).swift")
        defer { try? FileManager.default.removeItem(at: probe) }
        try """
        import LoadProcessManager
        import LPMReactor
        func f(_ a: Channel, _ b: StreamDigest, _ c: IOResult<Int>) {}
        """.write(to: probe, atomically: true, encoding: .utf8)
        let (probeStatus, probeOutput) = try typecheck(probe)
        #expect(probeStatus != 0)
        for name in ["Channel", "StreamDigest", "IOResult"] {
            #expect(probeOutput.contains("cannot find type '\(name)' in scope"), "\(probeOutput)")
        }
    }
}
