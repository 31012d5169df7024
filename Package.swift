// swift-tools-version: 6.0
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "LoadProcessManager",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "LPMReactor", targets: ["LPMReactor"]),
        .library(name: "LoadProcessManager", targets: ["LoadProcessManager"]),
        .library(name: "LoadProcessManagerWorker", targets: ["LoadProcessManagerWorker"]),
        .library(name: "LoadProcessManagerCodable", targets: ["LoadProcessManagerCodable"]),
        .library(name: "LoadProcessManagerServiceLifecycle", targets: ["LoadProcessManagerServiceLifecycle"]),
        .executable(name: "lpm-demo", targets: ["lpm-demo"]),
        .executable(name: "lpm-demo-worker", targets: ["lpm-demo-worker"]),
        .executable(name: "lpm-prefork-server", targets: ["lpm-prefork-server"]),
        .executable(name: "lpm-prefork-worker", targets: ["lpm-prefork-worker"]),
        .executable(name: "lpm", targets: ["lpm"]),
    ],
    dependencies: [
        // Structured logging for the supervisor (small; builds in seconds).
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // Metrics for the supervisor: CoreMetrics in the library, MetricsTestKit in the tests (small).
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        // The Service adapter's own product only.
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        // Tests only: the surface test imports it beside our modules (small; builds in seconds).
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        // The `lpm` command line only (the library never depends on it).
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // Documentation only, named when LPM_DOCS is set (scripts/docs.sh sets it): SwiftPM compiles the
        // command plugins of every package a manifest names, even for a plain `swift build`.
    ] + (Context.environment["LPM_DOCS"] == nil ? [] : [.package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0")]),
    targets: [
        // Kernel interfaces: a header-only module map over epoll, liburing, signalfd, timerfd,
        // eventfd, pidfd, spawn and sockets.
        .systemLibrary(
            name: "CLoop",
            path: "CShims",
            pkgConfig: "liburing",
            providers: [.apt(["liburing-dev"])]
        ),
        // The one-thread event loop: fds, timers, signals, child processes, cross-thread jobs.
        .target(name: "LPMReactor", dependencies: ["CLoop"], swiftSettings: strict),
        // Framing and message codec shared by the supervisor and the worker runtime.
        .target(name: "LPMWire", dependencies: ["LPMReactor", "CLoop"], swiftSettings: strict),
        // The parent side: Supervisor.
        .target(
            name: "LoadProcessManager",
            dependencies: ["LPMReactor", "LPMWire", .product(name: "Logging", package: "swift-log"),
                           .product(name: "CoreMetrics", package: "swift-metrics")],
            swiftSettings: strict
        ),
        // The child side: the Worker runtime (no Foundation, starts fast).
        .target(name: "LoadProcessManagerWorker", dependencies: ["LPMReactor", "LPMWire"], swiftSettings: strict),
        // Codable (JSON) conveniences for both sides; the only module that imports Foundation.
        .target(name: "LoadProcessManagerCodable", dependencies: ["LoadProcessManager", "LoadProcessManagerWorker"], swiftSettings: strict),

        // A pool as a swift-service-lifecycle Service (its own product: the core does not pay for it).
        .target(
            name: "LoadProcessManagerServiceLifecycle",
            dependencies: ["LoadProcessManager", .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
            swiftSettings: strict
        ),

        .executableTarget(name: "lpm-demo", dependencies: ["LoadProcessManager"], path: "Examples/Demo", swiftSettings: strict),
        .executableTarget(name: "lpm-demo-worker", dependencies: ["LoadProcessManagerWorker"], path: "Examples/DemoWorker", swiftSettings: strict),
        .executableTarget(name: "lpm-prefork-server", dependencies: ["LoadProcessManager", "CLoop"], path: "Examples/PreforkServer", swiftSettings: strict),
        .executableTarget(name: "lpm-prefork-worker", dependencies: ["LoadProcessManagerWorker"], path: "Examples/PreforkWorker", swiftSettings: strict),
        // The command line: `lpm run -- ./worker` feeds stdin's lines to a pool, answers on stdout.
        .executableTarget(
            name: "lpm",
            dependencies: ["LoadProcessManager", "LPMReactor", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strict
        ),
        .executableTarget(name: "reactor-example", dependencies: ["LPMReactor"], path: "Examples/ReactorExample", swiftSettings: strict),
        // The README's supervisor snippet as top-level code; run by the tests.
        .executableTarget(name: "lpm-readme-example", dependencies: ["LoadProcessManager"], path: "Examples/ReadmeSnippet", swiftSettings: strict),

        // Helpers for the tests: a worker whose behaviour the test picks, and what both share.
        .target(name: "LPMTestSupport", path: "Tests/Helpers/TestSupport", swiftSettings: strict),
        .executableTarget(name: "lpm-test-worker", dependencies: ["LoadProcessManagerWorker", "LPMWire", "LPMTestSupport"], path: "Tests/Helpers/TestWorker", swiftSettings: strict),

        .testTarget(name: "LPMReactorTests", dependencies: ["LPMReactor", "CLoop", "LPMTestSupport"], swiftSettings: strict),
        // The far side of the shared-ring tests: echoes a request ring into a response ring.
        .executableTarget(name: "lpm-ring-peer", dependencies: ["LPMWire"], path: "Tests/Helpers/RingPeer", swiftSettings: strict),

        .testTarget(name: "LPMWireTests", dependencies: ["LPMWire", "CLoop", "LPMTestSupport", "lpm-ring-peer"], swiftSettings: strict),
        // Type-checks Tests/Helpers/SurfaceClient as a client outside the package: the public
        // names of every product sit beside Foundation, swift-system and each other.
        .testTarget(
            name: "SurfaceTests",
            dependencies: ["LoadProcessManager", "LoadProcessManagerWorker", "LoadProcessManagerCodable", "LPMReactor",
                           .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict
        ),
        .testTarget(
            name: "LoadProcessManagerTests",
            dependencies: ["LoadProcessManager", "LoadProcessManagerWorker", "LoadProcessManagerCodable", "LPMWire", "CLoop", "LPMTestSupport", "lpm-test-worker", "lpm-demo-worker", "lpm-readme-example", "lpm",
                           .product(name: "Logging", package: "swift-log"), "LoadProcessManagerServiceLifecycle",
                           .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                           .product(name: "MetricsTestKit", package: "swift-metrics")],
            swiftSettings: strict
        ),
    ]
)
