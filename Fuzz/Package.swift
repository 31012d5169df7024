// swift-tools-version: 6.0
// A libFuzzer target for LPMWire's decoders, kept out of the main package so that `swift build`
// and `swift test` there never build it. It compiles LPMWire and LPMReactor from the main
// package's own sources (Sources/LPMWire and Sources/LPMReactor here are symbolic links): LPMWire
// is not a product, and its decoders are `package` symbols. Build and run with `./run.sh`.
import PackageDescription

let package = Package(
    name: "LPMFuzz",
    products: [
        .executable(name: "FrameDecoderFuzz", targets: ["FrameDecoderFuzz"]),
    ],
    targets: [
        .systemLibrary(name: "CLoop", path: "CShims", pkgConfig: "liburing", providers: [.apt(["liburing-dev"])]),
        .target(name: "LPMReactor", dependencies: ["CLoop"]),
        .target(name: "LPMWire", dependencies: ["LPMReactor", "CLoop"]),
        // The declaration of libFuzzer's driver entry, which the target's `main` calls.
        .systemLibrary(name: "CFuzzer", path: "Sources/CFuzzer"),
        .executableTarget(name: "FrameDecoderFuzz", dependencies: ["LPMWire", "CFuzzer"]),
    ]
)
