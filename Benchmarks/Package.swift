// swift-tools-version:6.1
//
// package-benchmark suites for swift-afxdp, in a package of their own (as
// swift-nio does) so that the engine does not depend on the benchmark tool.
//
//   Rings          NIC-free: the public AFXDPRings types over heap memory
//   PortSimulated  NIC-free: the engine (pool, lists, send queue, completion,
//                  receive) on an XDPPort over a kernel simulated in memory
//   PortDevice     an XDPPort on a veth pair in two namespaces it makes and removes;
//                  needs root, and skips itself with a message otherwise
//
// Run with scripts/benchmarks from the top of the repository.
import PackageDescription

let package = Package(
    name: "swift-afxdp-benchmarks",
    platforms: [.macOS(.v13)],
    dependencies: [
        // `name:` because a path dependency is otherwise known by its
        // directory's name, which differs between checkouts and worktrees.
        .package(name: "swift-afxdp", path: "../"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "Rings",
            dependencies: [
                .product(name: "AFXDP", package: "swift-afxdp"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/Rings",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "PortSimulated",
            dependencies: [
                .product(name: "AFXDP", package: "swift-afxdp"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/PortSimulated",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "PortDevice",
            dependencies: [
                .product(name: "AFXDP", package: "swift-afxdp"),
                .product(name: "AFXDPTestbed", package: "swift-afxdp"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/PortDevice",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
