// swift-tools-version: 6.1
//
// The benchmarks of LoadProcessManager: a package of its own, so the library's build never pays
// for package-benchmark. See BENCHMARKS.md.
//
//   BENCHMARK_DISABLE_JEMALLOC=true swift package benchmark     # package-benchmark suite
//   ./compare.sh                                                 # the comparison table
import PackageDescription

let package = Package(
    name: "LPMBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "LoadProcessManager", path: "../"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        // The jobs, shared by the package-benchmark suite and the comparison runner.
        .target(
            name: "LPMBenchJobs",
            dependencies: [
                .product(name: "LPMReactor", package: "LoadProcessManager"),
                .product(name: "LoadProcessManager", package: "LoadProcessManager"),
            ],
            path: "Sources/LPMBenchJobs"
        ),
        // The no-op worker the benchmarks spawn (it answers with the request's data), and the
        // raw reactor echo child (`bench-worker --reactor-echo`).
        .executableTarget(
            name: "bench-worker",
            dependencies: [
                .product(name: "LoadProcessManagerWorker", package: "LoadProcessManager"),
                "LPMBenchJobs",
            ],
            path: "Sources/bench-worker"
        ),
        // The comparison runner: runs one job, prints `name=... value=... unit=...` lines.
        .executableTarget(
            name: "lpm-compare",
            dependencies: [
                .product(name: "LPMReactor", package: "LoadProcessManager"),
                .product(name: "LoadProcessManager", package: "LoadProcessManager"),
                "LPMBenchJobs", "bench-worker",
            ],
            path: "Sources/lpm-compare",
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        // The package-benchmark suite.
        .executableTarget(
            name: "LPMBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "LPMReactor", package: "LoadProcessManager"),
                .product(name: "LoadProcessManager", package: "LoadProcessManager"),
                "LPMBenchJobs",
                "bench-worker",
            ],
            path: "Benchmarks/LPMBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v5)],
            plugins: [
                .plugin(name: "BenchmarkPlugin", package: "benchmark"),
            ]
        ),
    ]
)
