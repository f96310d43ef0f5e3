// The intermediate drivers (FilterDriver, PriorityClassifier, MultiQueuePort,
// Bridge) over ports opened with `XDPPort.openSimulated`, through their public
// API only: each driver opens its simulated ports through `LowerOpener`s, as
// it would open real ones with `XDPPort.below`. What is measured is a list's
// way down through the layer, the port's work, and its way back up
// (completion, indication, return): the layer's per-list records, in-order
// upward completion, forwarding and going home. Nothing here may allocate
// either: the malloc thresholds are 0.
//
// One measured iteration is `scalingFactor` (1000) cycles of one list of 64
// packets, as in PortSimulated.swift; the scaled figures are per list.

import AFXDP
import Benchmark

func layerBenchmarks() {
    // A filter with no hooks (the pass-through layer) over one port: send a
    // list through it, the kernel takes and completes it, the port's
    // completion goes up through the filter to the caller.
    Benchmark("filter-pass-through-send-complete-list-of-64") { benchmark, fixture in
        var list = fixture.filledList()
        let before = fixture.top.layerStatistics.upperCompletions
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            try fixture.top.send(list)
            fixture.lowers.transmitAll()
            fixture.top.poll()
            list = fixture.completed.take()!
        }
        benchmark.stopMeasurement()
        let cycles = benchmark.scaledIterations.count
        precondition(fixture.top.layerStatistics.upperCompletions == before + cycles, "a list did not complete at the top")
        precondition(fixture.top.layerStatistics.copiedFrames == 0, "one UMEM: nothing copied")
        try fixture.top.returnList(list)
    } setup: {
        try LayerFixture<FilterDriver> { lowers, handlers in
            try FilterDriver.open(
                over: lowers.opener(loopback: false), onReceive: handlers.onReceive, onSendComplete: handlers.onSendComplete)
        }
    }

    // The priority classifier over one port: each list's frames are IPv4 with
    // DSCP EF, so the classifier reads every frame and sends the list down
    // with priority 5; the caller's (1) is back on it when it completes.
    Benchmark("classifier-send-complete-list-of-64") { benchmark, fixture in
        var list = fixture.filledList { frame in writeIPv4UDPFrame(frame, flow: 1) }
        try list.setPriority(callerPriority)
        let before = fixture.top.layerStatistics.upperCompletions
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            try fixture.top.send(list)
            fixture.lowers.transmitAll()
            fixture.top.poll()
            list = fixture.completed.take()!
            let priority = try list.priority
            precondition(priority == callerPriority, "the caller's priority is not back on the list")
        }
        benchmark.stopMeasurement()
        let cycles = benchmark.scaledIterations.count
        precondition(fixture.top.layerStatistics.upperCompletions == before + cycles, "a list did not complete at the top")
        try fixture.top.returnList(list)
    } setup: {
        try classifierFixture()
    }

    // A multi-queue port over two simulated queues on one UMEM, with its
    // default flow hash: two lists of two flows, which hash to different
    // queues, sent in turn (one list per cycle), so both queues carry half.
    Benchmark("multi-queue-send-complete-list-of-64") { benchmark, fixture in
        var (list, other) = fixture.twoFlowLists()
        let before = fixture.top.bindings.map(\.statistics.send.completedLists)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            try fixture.top.send(list)
            fixture.lowers.transmitAll()
            fixture.top.poll()
            list = fixture.completed.take()!
            swap(&list, &other)
        }
        benchmark.stopMeasurement()
        let cycles = benchmark.scaledIterations.count
        let perQueue = zip(fixture.top.bindings, before).map { $0.statistics.send.completedLists - $1 }
        precondition(
            perQueue.reduce(0, +) == cycles && perQueue.min() == cycles / 2,
            "the lists did not complete half on each queue: \(perQueue) of \(cycles)")
        try fixture.top.returnList(list)
        try fixture.top.returnList(other)
    } setup: {
        try LayerFixture<MultiQueuePort> { lowers, handlers in
            let umem = try UMEM(frameCount: 2 * lowers.configuration.umemFrameCount, frameSize: lowers.configuration.frameSize)
            return try MultiQueuePort.open(
                over: [lowers.opener(umem: umem, loopback: false), lowers.opener(umem: umem, loopback: false)],
                onReceive: handlers.onReceive, onSendComplete: handlers.onSendComplete)
        }
    }

    // A bridge (forward all) between two ports of one UMEM, as the existing
    // forward benchmark's two ports: the caller sends a list on side A
    // (`sendSide: .a`), A's kernel loops it back in, A's indication goes to
    // the bridge, which forwards the received list as it is on B; B's kernel
    // completes it and the bridge sends its frames home to A's fill ring.
    // The caller gets its own list back through A's completion.
    Benchmark("bridge-forward-list-of-64") { benchmark, fixture in
        var list = fixture.filledList()
        let before = fixture.top.layerStatistics
        let forwardedBefore = fixture.top.lower(.b).statistics.send.forwardedPackets
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            try fixture.top.send(list)
            fixture.lowers.transmitAll()  // A takes, completes and loops the list back in
            fixture.top.poll()  // A's completion comes up; A's indication is forwarded on B
            fixture.lowers.transmitAll()  // B takes and completes the forwarded list
            fixture.top.poll()  // B's completion: the forwarded frames go home to A
            list = fixture.completed.take()!
        }
        benchmark.stopMeasurement()
        let cycles = benchmark.scaledIterations.count
        let after = fixture.top.layerStatistics
        let forwarded = fixture.top.lower(.b).statistics.send.forwardedPackets - forwardedBefore
        precondition(forwarded == cycles * packetsPerList, "B sent \(forwarded) of A's frames, not \(cycles * packetsPerList)")
        precondition(after.receivesConsumed == before.receivesConsumed + cycles, "a received list was not forwarded")
        precondition(after.upperCompletions == before.upperCompletions + cycles, "a list did not complete at the top")
        precondition(after.copiedFrames == 0 && after.forwardDroppedFrames == 0, "forwarded with a copy, or dropped")
        precondition(after.sendsOutstanding == 0, "a forwarded list did not go home")
        precondition(fixture.received.lists == 0, "the bridge indicated a list up")
        try fixture.top.returnList(list)
    } setup: {
        try LayerFixture<Bridge> { lowers, handlers in
            let umem = try UMEM(frameCount: 2 * lowers.configuration.umemFrameCount, frameSize: lowers.configuration.frameSize)
            return try Bridge.open(
                a: lowers.opener(umem: umem, loopback: true), b: lowers.opener(umem: umem, loopback: false), sendSide: .a,
                onReceive: handlers.onReceive, onSendComplete: handlers.onSendComplete)
        }
    }

    // Both paths through a filter with no hooks over a loopback port: the
    // kernel loops each sent frame back in, the port indicates it to the
    // filter, the filter indicates it to the caller, whose handler returns it
    // through the filter at once.
    Benchmark("filter-loopback-send-receive-return-list-of-64") { benchmark, fixture in
        var list = fixture.filledList()
        let receivedBefore = fixture.received.packets
        let before = fixture.top.layerStatistics.upperCompletions
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            try fixture.top.send(list)
            fixture.lowers.transmitAll()
            fixture.top.poll()
            fixture.top.poll()
            list = fixture.completed.take()!
        }
        benchmark.stopMeasurement()
        let cycles = benchmark.scaledIterations.count
        let received = fixture.received.packets - receivedBefore
        precondition(received == cycles * packetsPerList, "received \(received) packets at the top, not \(cycles * packetsPerList)")
        precondition(fixture.top.layerStatistics.upperCompletions == before + cycles, "a list did not complete at the top")
        precondition(fixture.top.layerStatistics.receivesHeldAbove == 0, "a received list was not returned")
        try fixture.top.returnList(list)
    } setup: {
        try LayerFixture<FilterDriver> { lowers, handlers in
            try FilterDriver.open(
                over: lowers.opener(loopback: true), onReceive: handlers.onReceive, onSendComplete: handlers.onSendComplete)
        }
    }
}

/// The priority the classifier benchmark's caller sets (its frames ask for 5).
let callerPriority = 1

/// The classifier benchmark's fixture, once its premise is checked.
func classifierFixture() throws -> LayerFixture<PriorityClassifier> {
    try checkClassifierPremise()
    return try LayerFixture<PriorityClassifier> { lowers, handlers in
        try PriorityClassifier.open(
            over: lowers.opener(loopback: false), onReceive: handlers.onReceive, onSendComplete: handlers.onSendComplete)
    }
}

/// The classifier benchmark's premise, checked once before it runs: its
/// frames make the classifier send the list down with priority 5 (seen by a
/// filter stacked below it, which the benchmark itself does not have), and
/// the caller's priority is back on the list when it completes.
func checkClassifierPremise() throws {
    let seenBelow = PrioritySeen()
    let fixture = try LayerFixture<PriorityClassifier> { lowers, handlers in
        try PriorityClassifier.open(
            over: FilterDriver.below(
                over: lowers.opener(loopback: false),
                onSend: { list throws(AFXDPError) in seenBelow.priority = try list.priority }),
            onReceive: handlers.onReceive, onSendComplete: handlers.onSendComplete)
    }
    let list = fixture.filledList { frame in writeIPv4UDPFrame(frame, flow: 1) }
    try list.setPriority(callerPriority)
    try fixture.top.send(list)
    fixture.lowers.transmitAll()
    fixture.top.poll()
    let completed = fixture.completed.take()!
    let priority = try completed.priority
    precondition(seenBelow.priority == 5, "the classifier sent the list down with priority \(seenBelow.priority), not 5")
    precondition(priority == callerPriority, "the caller's priority is not back on the list")
    try fixture.top.returnList(completed)
}

/// The priority a list went down with, as a filter below saw it.
final class PrioritySeen: @unchecked Sendable {
    // @unchecked: written inside the one thread's `send`, read after.
    var priority = -1
}

/// Simulated ports opened as the layers below a driver, and their kernels,
/// which the benchmark plays. Filled while the driver opens, read after.
final class SimulatedLowers: @unchecked Sendable {
    // @unchecked: used by the benchmark's one thread.
    private(set) var kernels: [SimulatedKernel] = []
    let configuration: PortConfiguration = {
        var configuration = PortConfiguration(interface: "sim0")
        configuration.frameSize = 2048
        return configuration
    }()

    /// How a driver opens a simulated port below it (on `umem`, or one of its own).
    func opener(umem: UMEM? = nil, loopback: Bool) -> LowerOpener {
        { [self] handlers throws(AFXDPError) in
            let (port, kernel) = try XDPPort.openSimulated(
                configuration, umem: umem, loopback: loopback, onReceive: handlers.onReceive,
                onSendComplete: handlers.onSendComplete)
            kernels.append(kernel)
            return port
        }
    }

    /// Every kernel takes (and completes, and loops back) what is on its TX ring.
    func transmitAll() {
        for kernel in kernels { kernel.transmit() }
    }
}

/// What came up at the top of a stack through its receive handler.
final class ReceivedCount: @unchecked Sendable {
    // @unchecked: touched only inside the benchmark thread's `poll`.
    private(set) var lists = 0
    private(set) var packets = 0
    func add(_ indication: ReceiveIndication) {
        lists += 1
        packets += try! indication.list.count
    }
}

/// A driver over simulated ports, for one benchmark: its caller's handlers
/// keep completed lists in a `CompletedSlot` and return received lists at
/// once, through the driver (`indication.port`), counting them.
final class LayerFixture<Top: PacketPort>: @unchecked Sendable {
    // @unchecked: used by the benchmark's one thread.
    let top: Top
    let lowers = SimulatedLowers()
    let completed = CompletedSlot()
    let received = ReceivedCount()

    init(open: (SimulatedLowers, PortHandlers) throws -> Top) throws {
        let completed = self.completed
        let received = self.received
        top = try open(
            lowers,
            PortHandlers(
                onReceive: { indication in
                    received.add(indication)
                    try! indication.port.returnList(indication.list)
                },
                onSendComplete: { batch in completed.put(batch) }))
    }

    /// A list of 64 frames from the top's pool, written by `write` (0xA5
    /// bytes unless given), each `frameLength` long.
    func filledList(_ write: (UnsafeMutableRawBufferPointer) -> Void = fillWithA5)
        -> PacketList
    {
        makeFilledList(from: top, write)
    }

    deinit { top.close() }
}

extension LayerFixture where Top == MultiQueuePort {
    /// Two lists of IPv4/UDP frames of two flows that the default flow hash
    /// puts on different queues.
    func twoFlowLists() -> (PacketList, PacketList) {
        let first = filledList { writeIPv4UDPFrame($0, flow: 1) }
        let second = filledList { writeIPv4UDPFrame($0, flow: 2) }
        var flow: UInt8 = 2
        while top.queue(for: second) == top.queue(for: first) {
            flow += 1
            fill(second) { writeIPv4UDPFrame($0, flow: flow) }
        }
        return (first, second)
    }
}

/// An Ethernet frame carrying IPv4 (DSCP EF: 802.1p class 5) and UDP, from
/// 10.0.0.`flow` to 10.0.0.254, filling `frame` (zero-padded).
func writeIPv4UDPFrame(_ frame: UnsafeMutableRawBufferPointer, flow: UInt8) {
    frame.initializeMemory(as: UInt8.self, repeating: 0)
    let header: [UInt8] = [
        2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00,  // Ethernet: destination, source, IPv4
        0x45, 0xB8, 0, UInt8(frame.count - 14), 0, 0, 0, 0, 64, 17, 0, 0,  // IPv4: version/IHL, TOS (EF), length, TTL, UDP
        10, 0, 0, flow, 10, 0, 0, 254,  // addresses
        0x10, 0x00, 0x10, 0x01, 0, UInt8(frame.count - 34), 0, 0,  // UDP: ports, length
    ]
    frame.copyBytes(from: header)
}
