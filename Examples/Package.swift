// swift-tools-version:6.1
//
// Small, complete programs on swift-afxdp, in a package of their own that
// depends on the library by path, as a user's package would:
//
//   reflector       swaps the MAC addresses of every frame it receives and
//                   sends the same frames back out (zero copy)
//   generator       sends test frames at a rate it keeps to
//   capture         writes what it receives to a pcapng file (tcpdump -r reads it)
//   async-consumer  counts and checks received frames through AsyncPort
//
// Each takes --help. scripts/test builds them and runs each against a veth pair.
import PackageDescription

let package = Package(
    name: "swift-afxdp-examples",
    dependencies: [
        // `name:` because a path dependency is otherwise known by its
        // directory's name, which differs between checkouts.
        .package(name: "swift-afxdp", path: "../")
    ],
    targets: [
        // What the programs share: reading their arguments, the test frame's layout.
        .target(name: "ExampleSupport", dependencies: [.product(name: "AFXDP", package: "swift-afxdp")]),
        .executableTarget(name: "reflector", dependencies: ["ExampleSupport", .product(name: "AFXDP", package: "swift-afxdp")]),
        .executableTarget(name: "generator", dependencies: ["ExampleSupport", .product(name: "AFXDP", package: "swift-afxdp")]),
        .executableTarget(name: "capture", dependencies: ["ExampleSupport", .product(name: "AFXDP", package: "swift-afxdp")]),
        .executableTarget(name: "async-consumer", dependencies: ["ExampleSupport", .product(name: "AFXDP", package: "swift-afxdp")]),
    ]
)
