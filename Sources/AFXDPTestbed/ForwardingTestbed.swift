// Three network namespaces in a row, A — F — B, joined by two veth pairs:
// the test host for a forwarder F that sits between two interfaces.
//
//   namespaces  <prefix>-<pid>-<n>-a   <prefix>-<pid>-<n>-f   <prefix>-<pid>-<n>-b
//   interfaces  axa<s> (in A) — axc<s> (in F)        axd<s> (in F) — axb<s> (in B)
//
// Names follow VethTestbed's, so `VethTestbed.removeStale` removes the
// leftovers of a crashed run too.

import Glibc
import Synchronization

/// A — F — B: end A's interface is paired with F's `interfaceFA`, and F's
/// `interfaceFB` with end B's. Frames sent from A reach F; F may pass them
/// on to B, and back. Every link is up, with IPv6 off.
///
/// Call `destroy()`, or use `withForwardingTestbed`, which always does.
public final class ForwardingTestbed: Sendable {
    public let namespaceA: String
    public let namespaceF: String
    public let namespaceB: String
    /// A's end, facing F.
    public let interfaceA: String
    /// F's end facing A.
    public let interfaceFA: String
    /// F's end facing B.
    public let interfaceFB: String
    /// B's end, facing F.
    public let interfaceB: String
    public let macAddressA: MACAddress
    public let macAddressFA: MACAddress
    public let macAddressFB: MACAddress
    public let macAddressB: MACAddress

    private let destroyed = Atomic<Bool>(false)

    private init(namespaces: [String], interfaces: [String], addresses: [MACAddress]) {
        namespaceA = namespaces[0]
        namespaceF = namespaces[1]
        namespaceB = namespaces[2]
        interfaceA = interfaces[0]
        interfaceFA = interfaces[1]
        interfaceFB = interfaces[2]
        interfaceB = interfaces[3]
        macAddressA = addresses[0]
        macAddressFA = addresses[1]
        macAddressFB = addresses[2]
        macAddressB = addresses[3]
    }

    /// Makes the three namespaces and two veth pairs; on failure removes
    /// what it had made and throws `TestbedError`.
    public static func create(prefix: String = "afxdp", queues: Int = 1) throws -> ForwardingTestbed {
        let pid = getpid()
        let (names, number) = try VethTestbed.makeNamespaces(prefix: prefix, pid: pid, ends: ["a", "f", "b"])
        do {
            let suffix = VethTestbed.interfaceSuffix(pid: pid, number: number)
            let interfaces = ["axa", "axc", "axd", "axb"].map { $0 + suffix }
            let (a, fa) = try VethTestbed.makeVethPair((names[0], interfaces[0]), (names[1], interfaces[1]), queues: queues)
            let (fb, b) = try VethTestbed.makeVethPair((names[1], interfaces[2]), (names[2], interfaces[3]), queues: queues)
            return ForwardingTestbed(
                namespaces: names, interfaces: interfaces, addresses: [a.address, fa.address, fb.address, b.address])
        } catch {
            for name in names { VethTestbed.deleteNamespace(name) }
            throw error
        }
    }

    /// Deletes the three namespaces, and with them the veth pairs. Only the
    /// first call acts; failures are reported on standard error.
    public func destroy() {
        guard !destroyed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        for name in [namespaceA, namespaceF, namespaceB] { VethTestbed.deleteNamespace(name) }
    }

    /// Makes a testbed, runs `body` with it and destroys it afterwards, also
    /// when `body` throws.
    public static func withForwardingTestbed<R>(
        prefix: String = "afxdp", queues: Int = 1, _ body: (ForwardingTestbed) throws -> R
    ) throws -> R {
        let testbed = try create(prefix: prefix, queues: queues)
        defer { testbed.destroy() }
        return try body(testbed)
    }
}
