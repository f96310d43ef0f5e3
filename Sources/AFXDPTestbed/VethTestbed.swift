// Two network namespaces joined by a veth pair: the test host for the engine's
// integration tests and for the benchmark tool.
//
// Names carry a project prefix, the process id and a per-process counter, so
// that two runs, or two processes running at once, never collide, and so that
// `removeStale` can tell the leftovers of a crashed run from a live one:
//
//   namespaces  <prefix>-<pid>-<n>-a   <prefix>-<pid>-<n>-b
//   interfaces  axa<pid36>-<n36>       axb<pid36>-<n36>    (pid and n in base 36)
//
// The veth ends are created directly inside their namespaces, never in the
// host's, so interface names cannot clash with the host's interfaces either.

import Glibc
import Synchronization

/// A 48-bit Ethernet address.
public struct MACAddress: Sendable, Hashable, CustomStringConvertible {
    /// The six octets, in wire order.
    public let bytes: [UInt8]
    /// The same octets packed little-endian into the low 48 bits, so that a
    /// frame header is written with two stores rather than six array reads.
    public let packed: UInt64

    /// An address from its six octets, in wire order.
    public init(bytes: [UInt8]) {
        precondition(bytes.count == 6, "a MAC address has 6 octets, not \(bytes.count)")
        self.bytes = bytes
        packed = bytes.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
    }

    /// Parses `aa:bb:cc:dd:ee:ff`; nil if `text` is not in that form.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            guard (1...2).contains(part.count), let octet = UInt8(part, radix: 16) else { return nil }
            bytes.append(octet)
        }
        self.init(bytes: bytes)
    }

    /// `aa:bb:cc:dd:ee:ff`, lower case.
    public var description: String {
        bytes.map { byte in
            let hex = String(byte, radix: 16)
            return byte < 0x10 ? "0" + hex : hex
        }.joined(separator: ":")
    }
}

private let testbedCounter = Atomic<Int>(0)

/// Two fresh network namespaces, A and B, joined by a veth pair whose ends are
/// up, have IPv6 disabled (so the kernel sends no neighbour discovery or MLD
/// frames into the tests' sockets) and have `queues` RX and TX queues each.
///
/// Nothing is removed automatically: call `destroy()`, or use
/// `withVethTestbed`, which always does. (A `deinit` would be wrong here: Swift
/// may end an object's lifetime after its last use, while the namespaces' names
/// are still in use elsewhere.)
///
/// Deleting a namespace removes its name at once, but the kernel tears the
/// namespace, the veth pair and any XDP program on it down only once nothing
/// refers to it any more: close the sockets opened inside it first.
public final class VethTestbed: Sendable {
    /// The namespace that holds `interfaceA`.
    public let namespaceA: String
    /// The namespace that holds `interfaceB`.
    public let namespaceB: String
    /// The veth end inside `namespaceA`.
    public let interfaceA: String
    /// The veth end inside `namespaceB`.
    public let interfaceB: String
    /// The Ethernet address of `interfaceA`.
    public let macAddressA: MACAddress
    /// The Ethernet address of `interfaceB`.
    public let macAddressB: MACAddress
    /// The interface index of `interfaceA`, valid inside `namespaceA`.
    public let interfaceIndexA: Int32
    /// The interface index of `interfaceB`, valid inside `namespaceB`.
    public let interfaceIndexB: Int32
    /// The number of RX and of TX queues on each end.
    public let queues: Int

    private let destroyed = Atomic<Bool>(false)

    private init(
        namespaceA: String, namespaceB: String,
        interfaceA: String, interfaceB: String,
        endA: LinkInfo, endB: LinkInfo, queues: Int
    ) {
        self.namespaceA = namespaceA
        self.namespaceB = namespaceB
        self.interfaceA = interfaceA
        self.interfaceB = interfaceB
        self.macAddressA = endA.address
        self.macAddressB = endB.address
        self.interfaceIndexA = endA.index
        self.interfaceIndexB = endB.index
        self.queues = queues
    }

    /// Makes two namespaces and a veth pair between them; see the type's
    /// description. On failure it removes whatever it had made and throws
    /// `TestbedError`.
    ///
    /// - Parameters:
    ///   - prefix: starts the namespaces' names; letters, digits, `_` and `.`.
    ///   - queues: RX and TX queues on each end, 1 or more.
    public static func create(prefix: String = "afxdp", queues: Int = 1) throws -> VethTestbed {
        try validate(prefix: prefix)
        guard queues >= 1 && queues <= 256 else {
            throw TestbedError(message: "queues must be between 1 and 256, not \(queues)")
        }

        let pid = getpid()
        let (names, number) = try makeNamespaces(prefix: prefix, pid: pid, ends: ["a", "b"])
        let namespaceA = names[0], namespaceB = names[1]
        do {
            let suffix = interfaceSuffix(pid: pid, number: number)
            let interfaceA = "axa" + suffix
            let interfaceB = "axb" + suffix
            let (endA, endB) = try makeVethPair(
                (namespaceA, interfaceA), (namespaceB, interfaceB), queues: queues)
            return VethTestbed(
                namespaceA: namespaceA, namespaceB: namespaceB,
                interfaceA: interfaceA, interfaceB: interfaceB,
                endA: endA, endB: endB, queues: queues
            )
        } catch {
            for name in names { deleteNamespace(name) }
            throw error
        }
    }

    /// Whether `destroy()` has been called.
    public var isDestroyed: Bool {
        destroyed.load(ordering: .acquiring)
    }

    /// Deletes both namespaces, which deletes the veth pair with them. Safe to
    /// call more than once and from several threads; only the first call acts.
    /// Failures are reported on standard error, not thrown, so that it can run
    /// from `defer`.
    public func destroy() {
        guard !destroyed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        Self.deleteNamespace(namespaceA)
        Self.deleteNamespace(namespaceB)
    }

    /// Makes a testbed, runs `body` with it and destroys it afterwards, also
    /// when `body` throws.
    public static func withVethTestbed<R>(
        prefix: String = "afxdp",
        queues: Int = 1,
        _ body: (VethTestbed) throws -> R
    ) throws -> R {
        let testbed = try create(prefix: prefix, queues: queues)
        defer { testbed.destroy() }
        return try body(testbed)
    }

    /// Makes a testbed, runs `body` with it and destroys it afterwards, also
    /// when `body` throws or is cancelled.
    public static func withVethTestbed<R>(
        prefix: String = "afxdp",
        queues: Int = 1,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (VethTestbed) async throws -> R
    ) async throws -> R {
        let testbed = try create(prefix: prefix, queues: queues)
        defer { testbed.destroy() }
        return try await body(testbed)
    }

    /// Deletes the namespaces named `<prefix>-<pid>-...` whose process `pid` is
    /// no longer running: the leftovers of a crashed run. Returns the names it
    /// deleted.
    @discardableResult
    public static func removeStale(prefix: String = "afxdp") -> [String] {
        let lead = prefix + "-"
        var removed: [String] = []
        for name in NetworkNamespace.list() where name.hasPrefix(lead) {
            let rest = name.utf8.dropFirst(lead.utf8.count)
            guard let dash = rest.firstIndex(of: UInt8(ascii: "-")) else { continue }
            let digits = rest[..<dash]
            guard !digits.isEmpty, digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
                  let pid = pid_t(String(decoding: digits, as: UTF8.self)), pid > 0
            else { continue }
            if processIsAlive(pid) { continue }
            if deleteNamespace(name) {
                removed.append(name)
            }
        }
        return removed
    }
}

// MARK: - Steps

extension VethTestbed {
    private static func validate(prefix: String) throws {
        let allowed = prefix.utf8.allSatisfy { byte in
            (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
                || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
                || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
                || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".")
        }
        guard !prefix.isEmpty, prefix.utf8.count <= 64, allowed, prefix.first != "." else {
            throw TestbedError(
                message: "invalid testbed prefix '\(prefix)'",
                hint: "use 1 to 64 letters, digits, '_' or '.', not starting with '.'"
            )
        }
    }

    /// Adds `<prefix>-<pid>-<n>-<end>` for each of `ends`, for the next free n.
    static func makeNamespaces(prefix: String, pid: pid_t, ends: [String]) throws -> ([String], Int) {
        var attempts = 0
        while true {
            let number = testbedCounter.wrappingAdd(1, ordering: .relaxed).oldValue
            let names = ends.map { "\(prefix)-\(pid)-\(number)-\($0)" }
            attempts += 1
            // A namespace of this name can exist only if another pid namespace
            // shares /var/run/netns, or a crashed process had our pid: take the
            // next number.
            if attempts < 32 && names.contains(where: NetworkNamespace.exists) {
                continue
            }
            var made: [String] = []
            do {
                for name in names {
                    try runCommand(["ip", "netns", "add", name])
                    made.append(name)
                }
            } catch {
                for name in made { deleteNamespace(name) }
                throw error
            }
            return (names, number)
        }
    }

    /// The part of interface names that makes them unique: the process id and
    /// the testbed's number, in base 36. With a 3-letter lead: 3 + 5 (pid_max
    /// is at most 2^22) + 1 + at most 6 = 15 characters, the kernel's limit.
    static func interfaceSuffix(pid: pid_t, number: Int) -> String {
        base36(Int(pid)) + "-" + base36(number % 2_176_782_336)
    }

    /// Makes a veth pair between two namespaces, each end with `queues` RX
    /// and TX queues, IPv6 off, up and with carrier; returns what `ip` says
    /// of each end.
    static func makeVethPair(
        _ first: (namespace: String, interface: String), _ second: (namespace: String, interface: String), queues: Int
    ) throws -> (LinkInfo, LinkInfo) {
        assert(first.interface.utf8.count <= 15 && second.interface.utf8.count <= 15, "interface name too long")
        // veth offers as many queues as the machine has CPUs unless told
        // otherwise; ask for exactly `queues` so that any count works.
        let queueOptions = queues > 1 ? ["numtxqueues", String(queues), "numrxqueues", String(queues)] : []
        try runCommand(
            ["ip", "-n", first.namespace, "link", "add", "name", first.interface] + queueOptions
                + ["type", "veth", "peer", "name", second.interface, "netns", second.namespace] + queueOptions
        )
        for (namespace, interface) in [first, second] {
            try disableIPv6(namespace: namespace, interface: interface)
            if queues > 1 {
                // `combined` is refused on veth: set rx and tx separately.
                try runCommand([
                    "ip", "netns", "exec", namespace,
                    "ethtool", "-L", interface, "rx", String(queues), "tx", String(queues),
                ])
            }
            try runCommand(["ip", "-n", namespace, "link", "set", "dev", "lo", "up"])
            try runCommand(["ip", "-n", namespace, "link", "set", "dev", interface, "up"])
        }
        return (
            try waitUntilUp(namespace: first.namespace, interface: first.interface),
            try waitUntilUp(namespace: second.namespace, interface: second.interface)
        )
    }

    /// Turns IPv6 off on `interface` and on interfaces made later in the
    /// namespace, by writing /proc/sys from a thread inside the namespace
    /// (/proc/sys/net shows the writing thread's namespace).
    static func disableIPv6(namespace: String, interface: String) throws {
        try NetworkNamespace.withEntered(namespace) {
            // Without IPv6 in the kernel there is nothing to silence.
            guard access("/proc/sys/net/ipv6/conf", F_OK) == 0 else { return }
            for name in [interface, "default"] {
                try writeProcFile("/proc/sys/net/ipv6/conf/\(name)/disable_ipv6", "1\n", namespace: namespace)
            }
        }
    }

    private static func writeProcFile(_ path: String, _ text: String, namespace: String) throws {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw TestbedError(
                message: "cannot open \(path) in namespace \(namespace): \(errnoText(errno))",
                hint: TestbedError.privilegeHint
            )
        }
        defer { close(fd) }
        let written = text.withCString { write(fd, $0, strlen($0)) }
        guard written == text.utf8.count else {
            throw TestbedError(
                message: "cannot write \(path) in namespace \(namespace): \(errnoText(errno))",
                hint: TestbedError.privilegeHint
            )
        }
    }

    /// Waits (at most 5 s) until the link has carrier and operational state
    /// UP: before that the kernel drops what is sent on it.
    static func waitUntilUp(namespace: String, interface: String) throws -> LinkInfo {
        let deadline = monotonicNanoseconds() + 5_000_000_000
        while true {
            let info = try LinkInfo.read(interface: interface, namespace: namespace)
            if info.isUp {
                return info
            }
            if monotonicNanoseconds() > deadline {
                throw TestbedError(
                    message: "\(interface) in namespace \(namespace) did not come up within 5 s",
                    hint: "`ip -n \(namespace) link show dev \(interface)` shows its state")
            }
            usleep(5_000)
        }
    }

    @discardableResult
    static func deleteNamespace(_ name: String) -> Bool {
        guard NetworkNamespace.exists(name) else { return true }
        do {
            try runCommand(["ip", "netns", "delete", name])
            return true
        } catch {
            var message = "AFXDPTestbed: could not delete namespace \(name):\n\(error)\n"
            message.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
            return false
        }
    }
}

/// What `ip -o link show dev IF` says about one interface.
public struct LinkInfo: Sendable {
    public var index: Int32
    public var address: MACAddress
    public var isUp: Bool
    /// Whether an XDP program is attached (in any mode).
    public var hasXDPProgram: Bool

    /// Asks `ip` about `interface` (in `namespace`, or this one). Throws
    /// `TestbedError` if there is no such interface or it is not Ethernet.
    public static func read(interface: String, namespace: String?) throws -> LinkInfo {
        let command = ["ip"] + (namespace.map { ["-n", $0] } ?? []) + ["-o", "link", "show", "dev", interface]
        let line = try runCommand(command)
        guard let info = LinkInfo(ipLinkLine: line) else {
            throw TestbedError(
                message: "\(interface) is not an Ethernet interface, or iproute2 speaks another format",
                command: command, standardError: "output was: \(trimmed(line))")
        }
        return info
    }

    /// Parses `5: axa1-0@if4: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 ...
    /// state UP ... link/ether 7a:... brd ff:...`.
    init?(ipLinkLine line: String) {
        guard let colon = line.firstIndex(of: ":"),
              let index = Int32(trimmed(String(line[..<colon])))
        else { return nil }
        let words = line.split(whereSeparator: { $0 == " " || $0 == "\\" || $0 == "\n" || $0 == "\t" })
        guard let etherAt = words.firstIndex(of: "link/ether"), etherAt + 1 < words.count,
              let address = MACAddress(words[etherAt + 1])
        else { return nil }
        var flags: [Substring] = []
        if let open = line.firstIndex(of: "<"), let close = line[open...].firstIndex(of: ">") {
            flags = line[line.index(after: open)..<close].split(separator: ",")
        }
        var operState: Substring = ""
        if let stateAt = words.firstIndex(of: "state"), stateAt + 1 < words.count {
            operState = words[stateAt + 1]
        }
        self.index = index
        self.address = address
        self.isUp = flags.contains("UP") && flags.contains("LOWER_UP") && operState == "UP"
        // `mtu 1500 xdp qdisc ...`: xdp, xdpgeneric, xdpdrv, xdpoffload or xdpmulti.
        if let mtuAt = words.firstIndex(of: "mtu"), mtuAt + 2 < words.count {
            self.hasXDPProgram = words[mtuAt + 2].hasPrefix("xdp")
        } else {
            self.hasXDPProgram = false
        }
    }
}

private func processIsAlive(_ pid: pid_t) -> Bool {
    kill(pid, 0) == 0 || errno == EPERM
}

private func base36(_ value: Int) -> String {
    String(value, radix: 36)
}

/// A bound on a traffic loop: it has passed `seconds` after it was made.
public struct Deadline: Sendable {
    let end: ContinuousClock.Instant
    public init(seconds: Int) { end = ContinuousClock.now.advanced(by: .seconds(seconds)) }
    public init(_ duration: Duration) { end = ContinuousClock.now.advanced(by: duration) }
    public var passed: Bool { ContinuousClock.now >= end }
}
