// Device benchmarks: ports on a real veth pair, in two network namespaces that
// each benchmark makes in its setup and removes in its teardown (also when it
// fails). They need root and AF_XDP; without them the suite registers nothing
// and says why on standard error.
//
// One measured iteration moves `packetsPerIteration` (1000) 64-byte frames and
// the scaling factor is `.kilo`, so every scaled figure is per packet. Each
// iteration is a whole round: everything sent is completed, received, checked
// and returned before it ends, so the next one starts from the same state.
// Warm-up iterations and the setup bring the ports to their steady state
// first. The thresholds ask for 0 allocations per iteration (hence per packet).

import AFXDP
import AFXDPTestbed
import Benchmark
#if canImport(Glibc)
import Glibc
#endif

/// Packets moved by one measured iteration: the scaling factor.
let packetsPerIteration = 1_000
/// Frame length on the wire, without the FCS.
let frameLength = 64
/// Packets per list (the last list of a round is shorter, to make the round
/// exactly `packetsPerIteration` packets).
let listSize = 64
/// A round that has not finished after this long failed (frames lost, or a
/// port stuck): the benchmark stops with an error rather than hang.
let roundTimeout: Duration = .seconds(2)

let benchmarks: @Sendable () -> Void = {
    if let reason = deviceSuiteUnavailableReason() {
        printToStandardError("PortDevice: skipped: \(reason)\n")
        return
    }

    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        warmupIterations: 50,
        scalingFactor: .kilo,
        maxDuration: .seconds(1),
        maxIterations: 10_000,
        thresholds: [
            // Exact: any allocation in a round is a regression.
            .mallocCountTotal: .init(absolute: [.p90: 0]),
            // Loose: two shared cores and a kernel copy make these noisy.
            .wallClock: .init(relative: [.p90: 300]),
            .throughput: .init(relative: [.p90: 75]),
        ]
    )

    // A sends lists of 64 to B; B receives, checks and returns every packet;
    // A's completions are copied out and the same lists are re-filled and
    // sent again next round.
    let sendFixture = FixtureSlot()
    Benchmark("send+complete-64B-lists-of-64") { benchmark in
        guard let fixture = sendFixture.fixture else { return benchmark.error("no fixture: setup did not run") }
        benchmark.startMeasurement()
        let finished = fixture.sendRound(from: fixture.a, to: fixture.b)
        benchmark.stopMeasurement()
        fixture.check(finished, benchmark)
    } setup: {
        sendFixture.fixture = try DeviceFixture(sending: .aToB)
    } teardown: {
        try sendFixture.close()
    }

    // As above, but the application allocates fresh lists for every round and
    // the completion handler returns completed lists to the pool: the
    // allocate and return paths of the send pool, under its lock.
    let allocatingFixture = FixtureSlot()
    Benchmark("allocate+send+complete+return-64B-lists-of-64") { benchmark in
        guard let fixture = allocatingFixture.fixture else { return benchmark.error("no fixture: setup did not run") }
        benchmark.startMeasurement()
        let finished = fixture.allocatingSendRound()
        benchmark.stopMeasurement()
        fixture.check(finished, benchmark)
    } setup: {
        allocatingFixture.fixture = try DeviceFixture(sending: .aToBAllocating)
    } teardown: {
        try allocatingFixture.close()
    }

    // An AF_PACKET socket on A sends; B's port indicates lists of up to 64,
    // the handler checks and returns each one. Only the receive path is AF_XDP.
    let receiveFixture = FixtureSlot()
    Benchmark("receive+return-64B") { benchmark in
        guard let fixture = receiveFixture.fixture else { return benchmark.error("no fixture: setup did not run") }
        benchmark.startMeasurement()
        let finished = fixture.receiveRound()
        benchmark.stopMeasurement()
        fixture.check(finished, benchmark)
    } setup: {
        receiveFixture.fixture = try DeviceFixture(sending: .packetSocketToB)
    } teardown: {
        try receiveFixture.close()
    }

    // Both directions at once, driven by one thread: half the packets each way.
    let duplexFixture = FixtureSlot()
    Benchmark("duplex-64B-lists-of-64") { benchmark in
        guard let fixture = duplexFixture.fixture else { return benchmark.error("no fixture: setup did not run") }
        benchmark.startMeasurement()
        let finished = fixture.duplexRound()
        benchmark.stopMeasurement()
        fixture.check(finished, benchmark)
    } setup: {
        duplexFixture.fixture = try DeviceFixture(sending: .both)
    } teardown: {
        try duplexFixture.close()
    }
}

/// Holds one benchmark's fixture from its setup to its teardown (the teardown
/// hook is not given the setup's result).
final class FixtureSlot: @unchecked Sendable {
    // @unchecked: setup, iterations and teardown run one after another.
    var fixture: DeviceFixture?

    func close() throws {
        defer { fixture = nil }
        try fixture?.close()
    }
}

/// A veth pair in two fresh namespaces, with ports on it.
final class DeviceFixture {
    enum Traffic {
        /// A's port sends `packetsPerIteration` to B's port, in the same lists every round.
        case aToB
        /// The same in lists allocated every round and returned on completion.
        case aToBAllocating
        /// A packet socket on A sends `packetsPerIteration` to B's port.
        case packetSocketToB
        /// Each port sends half of `packetsPerIteration` to the other.
        case both
    }

    let testbed: VethTestbed
    let a: Endpoint
    let b: Endpoint
    let sender: PacketSocketSender?
    private let traffic: Traffic
    /// The sizes of the lists one round sends (per direction).
    let sizes: [Int]
    private var closed = false

    init(sending traffic: Traffic) throws {
        self.traffic = traffic
        let testbed = try VethTestbed.create()
        self.testbed = testbed
        let sizes = traffic == .both
            ? listSizes(packets: packetsPerIteration / 2)
            : listSizes(packets: packetsPerIteration)
        self.sizes = sizes
        a = Endpoint(
            interface: testbed.interfaceA, namespace: testbed.namespaceA, macAddress: testbed.macAddressA,
            listCapacity: sizes.count, keepsCompletedLists: traffic != .aToBAllocating)
        b = Endpoint(
            interface: testbed.interfaceB, namespace: testbed.namespaceB, macAddress: testbed.macAddressB,
            listCapacity: sizes.count)
        do {
            try b.open()
            switch traffic {
            case .aToB:
                try a.open()
                try a.prepareLists(sizes: sizes, frameLength: frameLength, destination: b.macAddress)
                sender = nil
            case .aToBAllocating:
                try a.open()
                sender = nil
            case .both:
                try a.open()
                try a.prepareLists(sizes: sizes, frameLength: frameLength, destination: b.macAddress)
                try b.prepareLists(sizes: sizes, frameLength: frameLength, destination: a.macAddress)
                sender = nil
            case .packetSocketToB:
                sender = try PacketSocketSender(
                    namespace: testbed.namespaceA, interfaceIndex: testbed.interfaceIndexA,
                    frameLength: frameLength, source: a.macAddress, destination: b.macAddress)
            }
        } catch {
            a.close()
            b.close()
            testbed.destroy()
            throw error
        }
    }

    /// Closes the ports (socket, UMEM, XDP program), then removes the
    /// namespaces and the veth pair with them. Throws if a closed port left
    /// its XDP program attached (the namespaces go all the same): this suite
    /// is the release build CI runs, and a detach that fails only there
    /// would otherwise go unseen until a user's interface keeps a program.
    func close() throws {
        guard !closed else { return }
        closed = true
        a.close()
        b.close()
        defer { testbed.destroy() }
        for end in [a, b] {
            if try LinkInfo.read(interface: end.interface, namespace: end.namespace).hasXDPProgram {
                throw BenchmarkSetupError("closing the port on \(end.interface) left its XDP program attached")
            }
        }
    }

    // MARK: Rounds

    /// Sends every list `from` holds to `to` and polls both ports until every
    /// list is completed and every packet received and returned.
    @inline(__always)
    func sendRound(from: Endpoint, to: Endpoint) -> Bool {
        let lists = from.completedLists + from.completed.count
        let target = to.receivedPackets + packetsPerIteration
        guard send(from, to: to) else { return false }
        return drive { from.completedLists == lists && to.receivedPackets >= target }
    }

    /// Allocates the round's lists, writes and sends them; the completion
    /// handler returns them. Polls both ports until every list is completed
    /// and every packet received and returned.
    @inline(__always)
    func allocatingSendRound() -> Bool {
        guard let port = a.port else { return false }
        let lists = a.completedLists + sizes.count
        let target = b.receivedPackets + packetsPerIteration
        do {
            for size in sizes {
                guard let list = try port.allocateList(packetCount: size) else { return false }
                try a.write(list, frameLength: frameLength, destination: b.macAddress)
                try port.send(list)
            }
        } catch {
            return false
        }
        return drive { a.completedLists == lists && b.receivedPackets >= target }
    }

    /// Each port sends every list it holds to the other; both are polled until
    /// both directions are done.
    @inline(__always)
    func duplexRound() -> Bool {
        let listsA = a.completedLists + a.completed.count
        let listsB = b.completedLists + b.completed.count
        let targetA = a.receivedPackets + packetsPerIteration / 2
        let targetB = b.receivedPackets + packetsPerIteration / 2
        guard send(a, to: b), send(b, to: a) else { return false }
        return drive {
            a.completedLists == listsA && b.completedLists == listsB
                && a.receivedPackets >= targetA && b.receivedPackets >= targetB
        }
    }

    /// The packet socket sends `packetsPerIteration` frames to B, a list's
    /// worth at a time, polling B in between; then B is polled until it has
    /// received and returned them all.
    @inline(__always)
    func receiveRound() -> Bool {
        guard let sender, let port = b.port else { return false }
        let target = b.receivedPackets + packetsPerIteration
        var remaining = packetsPerIteration
        let deadline = ContinuousClock.now.advanced(by: roundTimeout)
        while remaining > 0 {
            remaining -= sender.send(min(listSize, remaining))
            port.poll()
            if ContinuousClock.now > deadline { return false }
        }
        return drive { b.receivedPackets >= target }
    }

    /// Re-fills and sends the lists `end` holds (all of its lists, completed
    /// last round).
    @inline(__always)
    private func send(_ end: Endpoint, to peer: Endpoint) -> Bool {
        guard let port = end.port else { return false }
        end.inFlight.takeAll(from: end.completed)
        defer { end.inFlight.removeAll() }
        do {
            for index in 0..<end.inFlight.count {
                let list = end.inFlight[index]
                try end.write(list, frameLength: frameLength, destination: peer.macAddress)
                try port.send(list)
            }
        } catch {
            return false
        }
        return true
    }

    /// Polls both ports until `done`, or until the round times out.
    @inline(__always)
    private func drive(until done: () -> Bool) -> Bool {
        let portA = a.port
        let portB = b.port
        let deadline = ContinuousClock.now.advanced(by: roundTimeout)
        var passes = 0
        while !done() {
            portA?.poll()
            portB?.poll()
            passes &+= 1
            if passes & 63 == 0, ContinuousClock.now > deadline { return false }
        }
        return true
    }

    /// Outside the measured region: stops the benchmark with an explanation
    /// if the round did not finish or a frame arrived out of order or damaged.
    func check(_ finished: Bool, _ benchmark: Benchmark) {
        if finished && a.flow.isClean && b.flow.isClean { return }
        var report = finished ? "frames arrived out of order or damaged" : "a round did not finish within \(roundTimeout)"
        for end in [a, b] {
            report += "; \(end.interface): received \(end.receivedPackets), gaps \(end.flow.gaps), reordered \(end.flow.reordered)"
            report += ", damaged \(end.flow.corrupted), foreign \(end.flow.foreign), lists completed \(end.completedLists)"
            if let port = end.port { report += ", \(port.statistics)" }
        }
        benchmark.error(report)
    }
}

/// List sizes for a round of `packets`: lists of `listSize`, the last one
/// shorter if `packets` is not a multiple of it.
func listSizes(packets: Int) -> [Int] {
    var sizes = [Int](repeating: listSize, count: packets / listSize)
    if packets % listSize != 0 { sizes.append(packets % listSize) }
    return sizes
}

/// Why the device suite cannot run here, or nil if it can.
func deviceSuiteUnavailableReason() -> String? {
    guard geteuid() == 0 else {
        return "needs root (it makes network namespaces and a veth pair and attaches XDP programs); run as root, e.g. sudo scripts/benchmarks"
    }
    let fd = socket(44 /* AF_XDP */, Int32(SOCK_RAW.rawValue), 0)
    guard fd >= 0 else {
        return "this kernel gives no AF_XDP socket (socket(AF_XDP) failed: \(String(cString: strerror(errno))))"
    }
    close(fd)
    return nil
}

func printToStandardError(_ text: String) {
    var text = text
    text.withUTF8 { bytes in _ = write(STDERR_FILENO, bytes.baseAddress, bytes.count) }
}
