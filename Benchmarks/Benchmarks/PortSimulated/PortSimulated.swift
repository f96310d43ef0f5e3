// NIC-free benchmarks of the engine itself, through its public API: a XDPPort
// opened with `XDPPort.openSimulated`, whose SimulatedKernel plays the kernel's
// side of the rings in memory. No interface, no privileges, no system calls:
// what is measured is the engine's own work per list (pool, list building,
// send queue, placement, completion mapping, receive indication, return),
// and (Layers.swift) the same through each intermediate driver stacked on
// such ports.
//
// One measured iteration is `scalingFactor` (1000) cycles; one cycle moves a
// list of 64 packets. The scaled figures are per list. Nothing here may
// allocate: the malloc thresholds are 0.

import AFXDP
import Benchmark

/// Packets per list: the batch the engine and the benchmark tool use.
let packetsPerList = 64
let frameLength = 64

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        warmupIterations: 10,
        scalingFactor: .kilo,
        maxDuration: .seconds(1),
        maxIterations: 1_000,
        thresholds: [
            .mallocCountTotal: .init(absolute: [.p90: 0]),
            // Wall clock is noisy on a shared two-core box: only a gross change fails.
            .wallClock: .init(relative: [.p90: 300]),
            .throughput: .init(relative: [.p90: 75]),
        ]
    )

    // NdisAllocateNetBufferList / free: a list of 64 frames from the send
    // pool and back.
    Benchmark("pool-allocate-return-list-of-64") { benchmark, fixture in
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let list = try fixture.port.allocateList(packetCount: packetsPerList)!
            try fixture.port.returnList(list)
        }
        benchmark.stopMeasurement()
    } setup: {
        try SimulatedFixture(loopback: false)
    }

    // Building a list: setting the length of each of its 64 packets and
    // touching its first bytes, as a sender writing headers would.
    Benchmark("list-build-64-packets") { benchmark, fixture in
        let list = try fixture.port.allocateList(packetCount: packetsPerList)!
        benchmark.startMeasurement()
        for cycle in benchmark.scaledIterations {
            try list.packets.forEach { packet throws(AFXDPError) in
                try packet.buffer.storeBytes(of: UInt64(cycle), toByteOffset: 14, as: UInt64.self)
                try packet.setLength(frameLength)
            }
        }
        benchmark.stopMeasurement()
        try fixture.port.returnList(list)
    } setup: {
        try SimulatedFixture(loopback: false)
    }

    // The send path: send a list, the kernel takes it and completes it, the
    // engine maps the completions back to the list and completes it in order.
    Benchmark("send-complete-list-of-64") { benchmark, fixture in
        var list = fixture.filledList()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            try fixture.port.send(list)
            fixture.kernel.transmit()
            fixture.port.poll()
            list = fixture.completed.take()!
        }
        benchmark.stopMeasurement()
        try fixture.port.returnList(list)
    } setup: {
        try SimulatedFixture(loopback: false)
    }

    // Both paths: the kernel loops each sent frame back in; the engine
    // indicates it as a received list, which the handler returns at once.
    Benchmark("loopback-send-receive-return-list-of-64") { benchmark, fixture in
        var list = fixture.filledList()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            try fixture.port.send(list)
            fixture.kernel.transmit()
            fixture.port.poll()
            fixture.port.poll()
            list = fixture.completed.take()!
        }
        benchmark.stopMeasurement()
        precondition(fixture.port.statistics.receive.packets >= benchmark.scaledIterations.count * packetsPerList)
        try fixture.port.returnList(list)
    } setup: {
        try SimulatedFixture(loopback: true)
    }

    // Forwarding without a copy between two ports of one UMEM: A sends a
    // list, its kernel loops it back in, A indicates it, the handler sends
    // the received list on B, B's kernel completes it, and B's completion
    // handler returns it, which sends its frames home to A's fill ring.
    Benchmark("forward-list-of-64-between-ports-of-one-umem") { benchmark, fixture in
        var list = fixture.a.filledList()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            try fixture.a.port.send(list)
            fixture.a.kernel.transmit()
            fixture.a.port.poll()  // A's completion, and the indication that B sends
            fixture.b.kernel.transmit()
            fixture.b.port.poll()  // B's completion: the list goes home to A
            list = fixture.a.completed.take()!
        }
        benchmark.stopMeasurement()
        precondition(fixture.b.port.statistics.send.forwardedPackets >= benchmark.scaledIterations.count * packetsPerList)
        try fixture.a.port.returnList(list)
    } setup: {
        try ForwardingFixture()
    }

    // The async face: a task sends a list without waiting, the kernel loops
    // it back, and the task awaits its completion and the received list
    // (polling the port itself before it would suspend), then returns the
    // received list. Per list: what `AsyncPort` adds to the callback path.
    Benchmark("async-loopback-send-await-completion-and-receive-list-of-64") { benchmark, fixture async throws in
        var list = fixture.filledList()
        var completions = fixture.asyncPort.completions.makeAsyncIterator()
        var received = fixture.asyncPort.received.makeAsyncIterator()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            try fixture.asyncPort.sendAndForget(list)
            // The wire. The list is in the TX ring now, or (when the async
            // port's thread had the send side) as soon as that pass ends.
            var taken = 0
            while taken < packetsPerList { taken += fixture.kernel.transmit() }
            guard let completed = await completions.next(), let indication = await received.next() else { break }
            try fixture.asyncPort.returnList(indication.list)
            list = completed.list
        }
        benchmark.stopMeasurement()
        precondition(fixture.asyncPort.port.statistics.receive.packets >= benchmark.scaledIterations.count * packetsPerList)
        try fixture.asyncPort.returnList(list)
    } setup: {
        try AsyncFixture()
    }

    // The same through each intermediate driver (Layers.swift).
    layerBenchmarks()
}

/// Two simulated ports on one UMEM; A's received lists go out on B.
final class ForwardingFixture: @unchecked Sendable {
    // @unchecked: used by the benchmark's one thread.
    let a: SimulatedFixture
    let b: SimulatedFixture

    init() throws {
        var configuration = PortConfiguration(interface: "sim0")
        configuration.frameSize = 2048
        let umem = try UMEM(frameCount: 2 * configuration.umemFrameCount, frameSize: 2048)
        let forwardTo = ForwardTarget()
        a = try SimulatedFixture(loopback: true, umem: umem, onReceive: { indication in
            try! forwardTo.port!.send(indication.list)
        })
        b = try SimulatedFixture(loopback: false, umem: umem, onComplete: { batch in
            for list in batch { try! batch.port.returnList(list) }
        })
        forwardTo.port = b.port
    }
}

/// Where A's handler sends: set once, before the measurement.
final class ForwardTarget: @unchecked Sendable {
    // @unchecked: written once before any traffic, then only read.
    var port: XDPPort?
}

/// Completed lists, kept without allocating: a fixed slot the completion
/// handler fills and the benchmark empties. Touched only by the benchmark's
/// thread (the handler runs inside its `poll`).
final class CompletedSlot: @unchecked Sendable {
    // @unchecked: one thread (see above).
    private var list: PacketList?
    func put(_ completed: SendCompletions) {
        var lists = completed.makeIterator()
        list = lists.next()
        precondition(list != nil && lists.next() == nil, "one list in flight at a time")
    }
    func take() -> PacketList? {
        defer { list = nil }
        return list
    }
}

/// A simulated port and its kernel, for one benchmark.
final class SimulatedFixture: @unchecked Sendable {
    // @unchecked: used by the benchmark's one thread.
    let port: XDPPort
    let kernel: SimulatedKernel
    let completed = CompletedSlot()

    init(
        loopback: Bool, umem: UMEM? = nil,
        onReceive: (@Sendable (ReceiveIndication) -> Void)? = nil,
        onComplete: (@Sendable (SendCompletions) -> Void)? = nil
    ) throws {
        let completed = self.completed
        var configuration = PortConfiguration(interface: "sim0")
        configuration.frameSize = 2048
        let opened = try XDPPort.openSimulated(
            configuration, umem: umem, loopback: loopback,
            onReceive: onReceive ?? { indication in try! indication.port.returnList(indication.list) },
            onSendComplete: onComplete ?? { batch in completed.put(batch) })
        port = opened.port
        kernel = opened.kernel
    }

    func filledList() -> PacketList { makeFilledList(from: port) }

    deinit { port.close() }
}

/// A simulated loopback port under the async face.
final class AsyncFixture: @unchecked Sendable {
    // @unchecked: the kernel handle is set once, in init, before any use.
    var kernel: SimulatedKernel!
    var asyncPort: AsyncPort!

    init() throws {
        var configuration = PortConfiguration(interface: "sim0")
        configuration.frameSize = 2048
        let box = KernelBox()
        asyncPort = try AsyncPort.open { [configuration] handlers throws(AFXDPError) in
            let opened = try XDPPort.openSimulated(
                configuration, loopback: true, onReceive: handlers.onReceive, onSendComplete: handlers.onSendComplete)
            box.kernel = opened.kernel
            return opened.port
        }
        kernel = box.kernel
    }

    func filledList() -> PacketList { makeFilledList(from: asyncPort.port) }
}

/// Carries the simulated kernel out of the opener closure.
final class KernelBox: @unchecked Sendable {
    // @unchecked: written once inside `AsyncPort.open`, read right after it.
    var kernel: SimulatedKernel?
}

/// A list of `packetsPerList` frames from `port`'s send pool (a port's, or
/// the top of a stack's), each `frameLength` long, written by `write`
/// (0xA5 bytes unless given).
func makeFilledList(
    from port: any PacketPort,
    _ write: (UnsafeMutableRawBufferPointer) -> Void = fillWithA5
) -> PacketList {
    let list = try! port.allocateList(packetCount: packetsPerList)!
    fill(list, write)
    return list
}

/// The frames' bytes unless a benchmark needs real headers.
func fillWithA5(_ frame: UnsafeMutableRawBufferPointer) { frame.initializeMemory(as: UInt8.self, repeating: 0xA5) }

/// Writes each packet of `list` with `write` and sets its length to `frameLength`.
func fill(_ list: PacketList, _ write: (UnsafeMutableRawBufferPointer) -> Void) {
    try! list.packets.forEach { packet throws(AFXDPError) in
        write(UnsafeMutableRawBufferPointer(rebasing: try packet.buffer[..<frameLength]))
        try packet.setLength(frameLength)
    }
}
