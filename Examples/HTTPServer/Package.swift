// swift-tools-version: 6.0
// An HTTP server (Hummingbird 2) that hands CPU-bound work to a pool of worker processes.
// A package of its own, so that the library's build never pays for Hummingbird.
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "HTTPServer",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "lpm-http-server", targets: ["lpm-http-server"]),
        .executable(name: "lpm-http-worker", targets: ["lpm-http-worker"]),
    ],
    dependencies: [
        .package(name: "LoadProcessManager", path: "../.."),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        // Already in Hummingbird's graph; named for `HTTPField.Name` (the worker-pid header).
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
    ],
    targets: [
        // The CPU-bound job and the request format, shared by the server and the worker (no
        // dependency, no Foundation: the worker stays light).
        .target(name: "HTTPWork", swiftSettings: strict),
        // The routes, the pool's error to HTTP status mapping, and the start-up wait.
        .target(
            name: "PoolHTTP",
            dependencies: [
                "HTTPWork",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "LoadProcessManager", package: "LoadProcessManager"),
                .product(name: "LoadProcessManagerServiceLifecycle", package: "LoadProcessManager"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(name: "lpm-http-server", dependencies: ["PoolHTTP"], swiftSettings: strict),
        .executableTarget(
            name: "lpm-http-worker",
            dependencies: ["HTTPWork", .product(name: "LoadProcessManagerWorker", package: "LoadProcessManager")],
            swiftSettings: strict
        ),
        // Table tests of the pure parts, and the real worker under a real supervisor (the worker
        // is built next to the test binary). smoke.sh runs the real server.
        .testTarget(
            name: "PoolHTTPTests",
            dependencies: [
                "PoolHTTP", "HTTPWork", "lpm-http-worker",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "LoadProcessManager", package: "LoadProcessManager"),
            ],
            swiftSettings: strict
        ),
    ]
)
