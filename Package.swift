// swift-tools-version:6.1
//
// Module boundaries follow dependencies, not features:
//   AFXDPRings   pure Swift rings and free lists (swift-atomics only); testable over heap memory
//   CAFXDP       the thin C shim over libxdp / libbpf: the "NIC hardware"
//   AFXDPSystem  the operating system as everything here uses it: network
//                namespaces, threads, the pthread lock, the clock
//   AFXDP        the engine (Send/, Receive/, Shared/): the deserialized miniport
//   AFXDPTestbed network namespaces and veth pairs for tests and the benchmark tool
//   afxdp-bench  the command-line benchmark
//   afxdp-ref    the reference: the bare libxdp ring loop in C, for comparison
import PackageDescription

let package = Package(
    name: "swift-afxdp",
    products: [
        .library(name: "AFXDP", targets: ["AFXDP"]),
        .library(name: "AFXDPRings", targets: ["AFXDPRings"]),
        .library(name: "AFXDPTestbed", targets: ["AFXDPTestbed"]),
        .library(name: "AFXDPSystem", targets: ["AFXDPSystem"]),
        .executable(name: "afxdp-bench", targets: ["afxdp-bench"]),
        .executable(name: "afxdp-ref", targets: ["afxdp-ref"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        // `swift package generate-documentation` (scripts/docs): the DocC catalog in Sources/AFXDP/AFXDP.docc.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        .target(
            name: "AFXDPRings",
            dependencies: [.product(name: "Atomics", package: "swift-atomics")]
        ),
        .target(
            name: "CAFXDP",
            linkerSettings: [.linkedLibrary("xdp"), .linkedLibrary("bpf")]
        ),
        .target(name: "AFXDPSystem", dependencies: ["CAFXDP"]),
        // Turns the compiled XDP object into Swift source, for the build plugin.
        .executableTarget(name: "afxdp-embed"),
        .plugin(
            name: "EmbedXDPProgram",
            capability: .buildTool(),
            dependencies: ["afxdp-embed"]
        ),
        .target(
            name: "AFXDP",
            dependencies: [
                "AFXDPRings", "CAFXDP", "AFXDPSystem",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            plugins: ["EmbedXDPProgram"]
        ),
        .target(name: "AFXDPTestbed", dependencies: ["AFXDPSystem", "AFXDP", "CAFXDP"]),
        .executableTarget(
            name: "afxdp-bench",
            dependencies: [
                "AFXDP", "AFXDPTestbed", "AFXDPSystem",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // The reference: the bare libxdp ring loop in C, no engine, that
        // afxdp-bench's figures are compared against.
        .executableTarget(
            name: "afxdp-ref",
            dependencies: ["CAFXDP"],
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [.linkedLibrary("m")]
        ),
        .testTarget(name: "AFXDPRingsTests", dependencies: ["AFXDPRings", "AFXDPSystem"]),
        // Test-only C: dropping a thread's capabilities to test the privilege errors.
        .target(name: "CTestSupport", path: "Tests/CTestSupport"),
        .testTarget(
            name: "AFXDPTests",
            dependencies: [
                "AFXDP", "AFXDPTestbed", "AFXDPSystem", "CTestSupport", .product(name: "Logging", package: "swift-log"),
                .product(name: "MetricsTestKit", package: "swift-metrics"), .product(name: "CoreMetrics", package: "swift-metrics"),
            ]),
        // The README's example of a user-written intermediate driver, compiled
        // against the public API only (no @testable) and run on veth.
        .testTarget(name: "ExampleTests", dependencies: ["AFXDP", "AFXDPTestbed"]),
    ]
)
