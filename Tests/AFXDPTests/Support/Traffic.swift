import AFXDP
import AFXDPTestbed
import Atomics
import Glibc
import Testing

/// Several independent senders share one port in some tests: the top 16 bits
/// of a sequence number name the stream, the rest count within it.
enum Stream {
    static func sequence(stream: Int, _ n: UInt64) -> UInt64 { UInt64(stream) << 48 | n }
    static func split(_ sequence: UInt64) -> (stream: Int, n: UInt64) { (Int(sequence >> 48), sequence & 0xFFFF_FFFF_FFFF) }
    static let count = 16
}

/// Checks what a port receives: per stream, every sequence number once, in
/// order, with an intact payload (AFXDPTestbed's `FlowCheck`, one per
/// stream). Touched only by the receive handler (the receive side has one
/// owner at a time) and after traffic has stopped.
final class ReceiveChecker: @unchecked Sendable {
    // @unchecked: see above; `receivedCount` is atomic for senders' windows.
    private var flows: [FlowCheck] = (0..<Stream.count).map { stream in
        var flow = FlowCheck()
        flow.expected = Stream.sequence(stream: stream, 0)
        return flow
    }
    private(set) var lowResourceIndications = 0
    private let received = ManagedAtomic<Int>(0)
    /// When set, lists are kept (not returned) until `returnHeld`.
    let holding = ManagedAtomic<Bool>(false)
    let held = TestLock<[PacketList]>([])
    /// The sequence numbers of held packets, as read when they arrived.
    private(set) var heldSequences: [UInt64] = []
    /// When set, lists go to this queue for other threads to return.
    let handOff: TestLock<[PacketList]>?

    init(handOff: Bool = false) {
        self.handOff = handOff ? TestLock([]) : nil
    }

    var receivedCount: Int { received.load(ordering: .acquiring) }
    func nextExpected(stream: Int) -> UInt64 { flows[stream].expected - Stream.sequence(stream: stream, 0) }
    /// Frames that arrived out of their stream's order (gaps or late ones).
    var outOfOrder: Int { flows.reduce(0) { $0 + $1.gaps + $1.reordered } }
    var corrupted: Int { flows.reduce(0) { $0 + $1.corrupted } }
    /// Sequence numbers skipped (lost frames), and frames late or duplicated.
    var gaps: Int { flows.reduce(0) { $0 + $1.gaps } }
    var lateOrDuplicated: Int { flows.reduce(0) { $0 + $1.reordered } }
    var foreign: Int { flows.reduce(0) { $0 + $1.foreign } }

    func handle(_ indication: ReceiveIndication) {
        if indication.lowResources { lowResourceIndications += 1 }
        var count = 0
        do {
            try indication.list.packets.forEach { packet throws(AFXDPError) in
                let frame = UnsafeRawBufferPointer(try packet.bytes)
                // The stream is in the sequence number's top bits.
                let sequence = frame.count >= 22 ? UInt64(littleEndian: frame.loadUnaligned(fromByteOffset: 14, as: UInt64.self)) : 0
                let stream = min(Stream.split(sequence).stream, Stream.count - 1)
                if flows[stream].check(frame) != nil {
                    if holding.load(ordering: .relaxed) { heldSequences.append(sequence) }
                    count += 1
                }
            }
        } catch {
            fatalError("an indicated list was not the caller's: \(error)")
        }
        if holding.load(ordering: .relaxed) {
            held.withLock { $0.append(indication.list) }
        } else if let handOff {
            handOff.withLock { $0.append(indication.list) }
        } else {
            do { try indication.port.returnList(indication.list) } catch { fatalError("return failed: \(error)") }
        }
        // Counted once the list is where others look for it: a returner that
        // sees every frame counted must find every list in `handOff`.
        received.wrappingIncrement(by: count, ordering: .releasing)
    }

    func returnHeld(to port: XDPPort) throws {
        for list in held.withLock({ lists in defer { lists.removeAll() }; return lists }) {
            try port.returnList(list)
        }
    }
}

/// Checks what a port completes: per stream, every list exactly once, in
/// the order sent, with the expected status. Completed lists go to a free
/// queue the generator reuses. Each list's context area carries
/// (stream, list number).
final class CompletionChecker: @unchecked Sendable {
    // @unchecked: mutable state is behind `state`.
    struct State {
        var nextList = [UInt64](repeating: 0, count: Stream.count)
        var completed = 0
        var outOfOrder = 0
        var statuses: [SendStatus: Int] = [:]
        var seen = Set<PacketList>()
        var duplicates = 0
        var free: [PacketList] = []
    }
    let state = TestLock(State())
    let trackIdentity: Bool

    init(trackIdentity: Bool = false) { self.trackIdentity = trackIdentity }

    static func tag(_ list: PacketList, stream: Int, number: UInt64) throws {
        let area = try list.contextArea
        area.storeBytes(of: UInt64(stream), toByteOffset: 0, as: UInt64.self)
        area.storeBytes(of: number, toByteOffset: 8, as: UInt64.self)
    }

    /// The tag of a list the caller holds (a completed one).
    static func tagOf(_ list: PacketList) -> (stream: Int, number: UInt64) {
        guard let area = try? list.contextArea else { fatalError("a completed list was not the caller's") }
        return (Int(area.load(fromByteOffset: 0, as: UInt64.self)), area.load(fromByteOffset: 8, as: UInt64.self))
    }

    func handle(_ batch: SendCompletions) {
        state.withLock { state in
            for list in batch {
                let (stream, number) = Self.tagOf(list)
                if number != state.nextList[stream] { state.outOfOrder += 1 }
                state.nextList[stream] = number &+ 1
                state.completed += 1
                state.statuses[(try? list.status) ?? .pending, default: 0] += 1
                state.free.append(list)
            }
        }
    }

    var completed: Int { state.withLock { $0.completed } }
    func takeFree() -> [PacketList] { state.withLock { s in defer { s.free.removeAll(keepingCapacity: true) }; return s.free } }
}

/// The most frames a test keeps in flight for a lossless run. A veth whose
/// peer runs XDP queues at most 256 frames for it (its ptr_ring) and drops
/// past that without pushing back on an AF_XDP sender: when both ends compete
/// for two cores, a larger window can lose frames in the kernel.
let vethQueueWindow = 256

/// A window of frames in flight that several sending threads share: each
/// list takes its room before it is sent, and gets it back only when the
/// receiving side has returned its frames. Exact, unlike a snapshot of what
/// the others sent: the kernel drops past what the path queues.
final class SharedWindow: Sendable {
    let size: Int
    /// Frames admitted so far, by every sender.
    private let admitted = ManagedAtomic<Int>(0)
    /// Frames received and returned so far.
    private let returned = ManagedAtomic<Int>(0)

    init(size: Int) { self.size = size }

    /// Takes room for `count` frames if the window has it.
    func admit(_ count: Int) -> Bool {
        while true {
            let current = admitted.load(ordering: .acquiring)
            // `returned` only grows: a stale read errs on the safe side.
            guard current + count - returned.load(ordering: .acquiring) <= size else { return false }
            if admitted.compareExchange(expected: current, desired: current + count, ordering: .acquiringAndReleasing).exchanged {
                return true
            }
        }
    }

    /// The receiving side has given `count` frames back.
    func release(_ count: Int) { returned.wrappingIncrement(by: count, ordering: .releasing) }

    var returnedFrames: Int { returned.load(ordering: .acquiring) }
    var inFlight: Int { admitted.load(ordering: .acquiring) - returned.load(ordering: .acquiring) }
}

/// Where frames that did not arrive went, for a failure message: what the
/// kernel counted as dropped (at the receiving socket, in the veth queues)
/// against what is missing. Frames missing beyond the kernel's count are
/// the engine's.
func lossReport(missing: Int, sender: XDPPort, receiver: XDPPort, bed: VethTestbed) -> String {
    let kernel = receiver.statistics.kernel
    // A frame the peer's veth queue had no room for is dropped in the
    // sender's veth_xmit and counted as its interface's tx_dropped.
    let vethQueueDrops = (try? runCommand(
        ["ip", "netns", "exec", bed.namespaceA, "cat", "/sys/class/net/\(bed.interfaceA)/statistics/tx_dropped"]))
        .flatMap { Int(String($0.filter(\.isNumber))) } ?? 0
    let socketDrops = kernel.receiveDropped + kernel.receiveRingFull
    let kernelDrops = socketDrops + vethQueueDrops
    var report = "\(missing) frames missing. Receiving socket: \(kernel.receiveDropped) dropped for an empty fill ring, "
        + "\(kernel.receiveRingFull) for a full RX ring (the engine counted \(receiver.statistics.receive.dropped)); "
        + "\(vethQueueDrops) dropped by \(bed.interfaceA)'s veth for a full peer queue. "
    for (interface, namespace) in [(bed.interfaceA, bed.namespaceA), (bed.interfaceB, bed.namespaceB)] {
        let counters = (try? runCommand(["ip", "netns", "exec", namespace, "ethtool", "-S", interface])) ?? "(ethtool -S failed)"
        let drops = counters.split(separator: "\n").filter { $0.contains("drop") || $0.contains("err") }
            .map { String($0.drop(while: { $0 == " " || $0 == "\t" })) }
        report += "\(interface): \(drops.joined(separator: ", ")). "
    }
    report += missing > kernelDrops
        ? "\(missing - kernelDrops) missing frames are not in the kernel's counts: the engine lost them."
        : "Every missing frame was dropped by the kernel: the sender kept more in flight than the path holds."
    report += " Sender: \(sender.statistics.send)."
    return report
}

/// Writes test frames into a list: packet k gets sequence `first + k` of `stream`.
func fill(_ list: PacketList, stream: Int, firstSequence: UInt64, length: Int, from: MACAddress, to: MACAddress) throws {
    try TestFrame.fill(
        list, length: length, firstSequence: Stream.sequence(stream: stream, firstSequence), source: from, destination: to)
}

/// Sends `count` lists of `size` frames of stream 0, numbered on from
/// `next`, each tagged `lists` (counted on) for the completion checker.
func sendLists(
    _ port: XDPPort, count: Int, size: Int, next: inout Int, lists: inout Int, from: MACAddress, to: MACAddress
) throws {
    for _ in 0..<count {
        let list = try #require(try port.allocateList(packetCount: size))
        try fill(list, stream: 0, firstSequence: UInt64(next), length: 64, from: from, to: to)
        try CompletionChecker.tag(list, stream: 0, number: UInt64(lists))
        try port.send(list)
        next += size
        lists += 1
    }
}

/// Sends `total` frames from `port` in lists of `batch`, reusing completed
/// lists, keeping at most `window` frames sent and not yet received by
/// `receiver`. Each list is tagged for the completion checker.
struct Generator {
    let port: any PacketPort
    let completions: CompletionChecker
    let stream: Int
    let total: Int
    let batch: Int
    let length: Int
    let from: MACAddress
    let to: MACAddress
    var sentFrames = 0
    var listNumber: UInt64 = 0
    var spare: [PacketList] = []

    init(port: any PacketPort, completions: CompletionChecker, stream: Int = 0, total: Int, batch: Int, length: Int = 64, from: MACAddress, to: MACAddress) {
        self.port = port
        self.completions = completions
        self.stream = stream
        self.total = total
        self.batch = batch
        self.length = length
        self.from = from
        self.to = to
    }

    var done: Bool { sentFrames >= total }

    /// Sends what the window allows; returns how many frames it sent.
    @discardableResult
    mutating func step(receivedByPeer: Int, window: Int) throws -> Int {
        var inFlight = sentFrames - receivedByPeer
        return try step { count in
            guard inFlight < window else { return false }
            inFlight += count
            return true
        }
    }

    /// Sends list after list while `admit(count)` grants each one room, and
    /// it is asked just before the send: a window several senders share
    /// (`SharedWindow`) stays exact. Returns how many frames it sent.
    @discardableResult
    mutating func step(admit: (Int) -> Bool) throws -> Int {
        var sent = 0
        spare.append(contentsOf: completions.takeFree())
        while sentFrames < total {
            let count = min(batch, total - sentFrames)
            let list: PacketList
            if let reuse = spare.popLast() {
                if try reuse.count == count {
                    list = reuse
                } else {
                    try port.returnList(reuse)
                    guard let fresh = try port.allocateList(packetCount: count) else { break }
                    list = fresh
                }
            } else {
                guard let fresh = try port.allocateList(packetCount: count) else { break }
                list = fresh
            }
            guard admit(count) else {
                spare.append(list)
                break
            }
            try fill(list, stream: stream, firstSequence: UInt64(sentFrames), length: length, from: from, to: to)
            try CompletionChecker.tag(list, stream: stream, number: listNumber)
            listNumber += 1
            try port.send(list)
            sentFrames += count
            sent += count
        }
        return sent
    }

    /// Returns every spare list to the pool.
    mutating func returnSpares() throws {
        spare.append(contentsOf: completions.takeFree())
        for list in spare { try port.returnList(list) }
        spare.removeAll()
    }
}

/// Whether the interface (in its namespace) has an XDP program attached.
func hasXDPProgram(_ interface: String, namespace: String) throws -> Bool {
    try LinkInfo.read(interface: interface, namespace: namespace).hasXDPProgram
}

/// Opens a port on one end of the testbed with the test filter.
func openPort(
    _ bed: VethTestbed, end: Character, umem: UMEM? = nil, configure: (inout PortConfiguration) -> Void = { _ in },
    onReceive: @escaping @Sendable (ReceiveIndication) -> Void = { try? $0.port.returnList($0.list) },
    onSendComplete: @escaping @Sendable (SendCompletions) -> Void = { batch in for list in batch { try? batch.port.returnList(list) } }
) throws -> XDPPort {
    var configuration = PortConfiguration(
        interface: end == "a" ? bed.interfaceA : bed.interfaceB,
        networkNamespace: end == "a" ? bed.namespaceA : bed.namespaceB)
    configuration.etherTypeFilter = TestFrame.etherType
    configure(&configuration)
    return try XDPPort.open(configuration, umem: umem, onReceive: onReceive, onSendComplete: onSendComplete)
}

/// Takes one end's link down (the kernel then takes nothing from that end's
/// TX ring) or up again, waiting until both ends have carrier: frames sent
/// before that would be dropped by the kernel.
func setLink(_ bed: VethTestbed, end: Character, up: Bool) throws {
    let (namespace, interface) = end == "a" ? (bed.namespaceA, bed.interfaceA) : (bed.namespaceB, bed.interfaceB)
    try runCommand(["ip", "-n", namespace, "link", "set", "dev", interface, up ? "up" : "down"])
    guard up else { return }
    let deadline = Deadline(seconds: 5)
    for (ns, name) in [(bed.namespaceA, bed.interfaceA), (bed.namespaceB, bed.interfaceB)] {
        while !(try runCommand(["ip", "-n", ns, "-o", "link", "show", "dev", name])).contains("LOWER_UP") {
            if deadline.passed { throw TestbedError(message: "\(name) did not come up") }
            usleep(1_000)
        }
    }
}
