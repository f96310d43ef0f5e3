@testable import AFXDP
import AFXDPTestbed
import Atomics
import Glibc
import Testing

/// Opens simulated ports as the layers below a driver, and keeps their
/// kernels so that a test can play them.
final class SimulatedBelow: @unchecked Sendable {
    // @unchecked: filled while the driver opens, read after.
    private(set) var kernels: [SimulatedKernel] = []
    private(set) var ports: [XDPPort] = []

    func opener(_ configuration: PortConfiguration = PortConfiguration(interface: "sim0"), umem: UMEM? = nil, loopback: Bool) -> LowerOpener {
        { [self] handlers throws(AFXDPError) in
            let (port, kernel) = try XDPPort.openSimulated(
                configuration, umem: umem, loopback: loopback, onReceive: handlers.onReceive, onSendComplete: handlers.onSendComplete)
            kernels.append(kernel)
            ports.append(port)
            return port
        }
    }

    func transmitAll() { for kernel in kernels { kernel.transmit() } }
}

/// A test frame as bytes, for `SimulatedKernel.deliver`.
func testFrameBytes(sequence: UInt64, length: Int = 64) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: length)
    bytes.withUnsafeMutableBytes { buffer in
        TestFrame.write(
            into: buffer, length: length, sequence: sequence, source: MACAddress(bytes: [2, 0, 0, 0, 0, 1]),
            destination: MACAddress(bytes: [2, 0, 0, 0, 0, 2]))
    }
    return bytes
}

/// Intermediate drivers over simulated ports: every path of the layer,
/// deterministic, no privileges.
@Suite("Intermediate layer, simulated")
struct LayerSimulatedTests {
    let a = MACAddress(bytes: [2, 0, 0, 0, 0, 1])
    let b = MACAddress(bytes: [2, 0, 0, 0, 0, 2])

    @Test("a filter with no hooks passes 20,000 frames through both ways: in order, intact, each send completed once at the top, all home after close")
    func passThrough() throws {
        let below = SimulatedBelow()
        let received = ReceiveChecker()
        let completions = CompletionChecker()
        let wrongPort = ManagedAtomic<Int>(0)
        let filter = try FilterDriver.open(
            over: below.opener(loopback: true),
            onReceive: { indication in
                if !(indication.port is FilterDriver) { wrongPort.wrappingIncrement(ordering: .relaxed) }
                received.handle(indication)
            },
            onSendComplete: { batch in
                if !(batch.port is FilterDriver) { wrongPort.wrappingIncrement(ordering: .relaxed) }
                completions.handle(batch)
            })
        var generator = Generator(port: filter, completions: completions, total: 20_000, batch: 50, from: a, to: b)
        var passes = 0
        while received.receivedCount < 20_000 {
            passes += 1
            try #require(passes < 100_000, "no progress: received \(received.receivedCount)")
            try generator.step(receivedByPeer: received.receivedCount, window: 512)
            below.transmitAll()
            filter.poll()
        }
        try generator.returnSpares()
        #expect(received.outOfOrder == 0)
        #expect(received.corrupted == 0)
        let state = completions.state.withLock { $0 }
        #expect(state.completed == 400)
        #expect(state.outOfOrder == 0)
        #expect(state.statuses == [.success: 400])
        #expect(wrongPort.load(ordering: .relaxed) == 0, "indications and completions name the filter, not the port below")
        let layer = filter.layerStatistics
        #expect(layer.upperCompletions == 400)
        #expect(layer.sendsOutstanding == 0)
        #expect(layer.receivesHeldAbove == 0 && layer.framesHeldAbove == 0)
        #expect(layer.copiedFrames == 0, "one UMEM: nothing copied")
        #expect(filter.stack.depth == 2)
        filter.close()
        #expect(filter.currentState == .closed)
        #expect(below.ports[0].currentState == .closed)
        #expect(filter.poolStatus.allFramesHome, "\(filter.poolStatus)")
    }

    @Test("multi-queue: lists of one stream spread over two queues, the second queue completing first: completions still come up in send order")
    func multiQueueReordersCompletions() throws {
        let below = SimulatedBelow()
        var configuration = PortConfiguration(interface: "sim0")
        configuration.frameSize = 2048
        let umem = try UMEM(frameCount: 2 * configuration.umemFrameCount, frameSize: 2048)
        let completions = CompletionChecker()
        let mux = try MultiQueuePort.open(
            over: [below.opener(configuration, umem: umem, loopback: false), below.opener(configuration, umem: umem, loopback: false)],
            flowHash: { list in UInt32(truncatingIfNeeded: CompletionChecker.tagOf(list).number) },  // list n on queue n % 2
            onReceive: { try? $0.port.returnList($0.list) }, onSendComplete: completions.handle)
        for kernel in below.kernels { kernel.completesOnTransmit = false }
        for n in 0..<20 {
            let list = try #require(try mux.allocateList(packetCount: 4))
            try fill(list, stream: 0, firstSequence: UInt64(4 * n), length: 64, from: a, to: b)
            try CompletionChecker.tag(list, stream: 0, number: UInt64(n))
            #expect(mux.queue(for: list) == n % 2)
            try mux.send(list)
        }
        below.transmitAll()
        below.kernels[1].complete()
        for _ in 0..<10 { mux.poll() }
        #expect(completions.completed == 0, "list 0 (queue 0) is not done: nothing behind it comes up")
        #expect(mux.layerStatistics.sendsOutstanding == 20)
        below.kernels[0].complete(maximum: 12)  // frames: lists 0, 2 and 4
        for _ in 0..<10 { mux.poll() }
        // Lists 0, 2, 4 done on queue 0, all odd ones on queue 1: 0...5 come up.
        #expect(completions.completed == 6)
        below.kernels[0].complete()
        for _ in 0..<10 { mux.poll() }
        let state = completions.state.withLock { $0 }
        #expect(state.completed == 20)
        #expect(state.outOfOrder == 0)
        #expect(state.statuses == [.success: 20])
        #expect(below.ports[0].statistics.send.completedLists == 10 && below.ports[1].statistics.send.completedLists == 10)
        for list in completions.takeFree() { try mux.returnList(list) }
        mux.close()
        #expect(mux.poolStatus.allFramesHome, "\(mux.poolStatus)")
    }

    @Test("priority classifier: VLAN PCP, IPv4 DSCP and IPv6 traffic class set the priority the lists go down with; the caller's comes back")
    func classifier() throws {
        let below = SimulatedBelow()
        let seenBelow = TestLock<[Int]>([])
        let completions = CompletionChecker()
        let classifier = try PriorityClassifier.open(
            over: FilterDriver.below(
                name: "recorder", over: below.opener(loopback: false),
                onSend: { list throws(AFXDPError) in
                    let priority = try list.priority
                    seenBelow.withLock { $0.append(priority) }
                }),
            onReceive: { try? $0.port.returnList($0.list) }, onSendComplete: completions.handle)
        #expect(classifier.stack.depth == 3)
        func frame(_ build: (UnsafeMutableRawBufferPointer) -> Void) throws -> PacketList {
            let list = try #require(try classifier.allocateList(packetCount: 1))
            try list.packets.forEach { packet in
                let buffer = try packet.buffer
                for index in 0..<64 { buffer[index] = 0 }
                build(buffer)
                try packet.setLength(64)
            }
            return list
        }
        let vlan = try frame { $0[12] = 0x81; $0[13] = 0x00; $0[14] = 5 << 5; $0[16] = 0x08; $0[17] = 0x00 }
        let ipv4 = try frame { $0[12] = 0x08; $0[13] = 0x00; $0[14] = 0x45; $0[15] = 0xB8 }  // EF: class 5... DSCP 46 >> 3 = 5
        let ipv6 = try frame { $0[12] = 0x86; $0[13] = 0xDD; $0[14] = 0x6C; $0[15] = 0x00 }  // traffic class 0xC0: class 6
        let plain = try frame { $0[12] = 0x88; $0[13] = 0xB5 }
        try plain.setPriority(2)
        for (n, list) in [vlan, ipv4, ipv6, plain].enumerated() {
            try CompletionChecker.tag(list, stream: n, number: 0)
            try classifier.send(list)
        }
        #expect(seenBelow.withLock { $0 } == [5, 5, 6, 2], "unclassifiable frames keep the caller's priority")
        below.transmitAll()
        for _ in 0..<5 { classifier.poll() }
        let done = completions.takeFree()
        #expect(done.count == 4)
        for list in done {
            let expected = CompletionChecker.tagOf(list).stream == 3 ? 2 : 0
            #expect(try list.priority == expected, "the caller's priority is back on the list")
            try classifier.returnList(list)
        }
        classifier.close()
        #expect(classifier.poolStatus.allFramesHome)
    }

    @Test("bridge between two UMEMs: forwarded frames are copied into the other side's pool, the originals go home at once; frames the verdict sends up arrive intact and in order")
    func bridgeCopyPath() throws {
        try bridgeRun(sharedUMEM: false)
    }

    @Test("bridge on one UMEM: forwarded lists go out as they are (no copy), and come home after the other side has sent them")
    func bridgeZeroCopy() throws {
        try bridgeRun(sharedUMEM: true)
    }

    func bridgeRun(sharedUMEM: Bool) throws {
        let below = SimulatedBelow()
        var configuration = PortConfiguration(interface: "sim0")
        configuration.frameSize = 2048
        let umemA = try UMEM(frameCount: 2 * configuration.umemFrameCount, frameSize: 2048)
        let umemB = sharedUMEM ? umemA : try UMEM(frameCount: configuration.umemFrameCount, frameSize: 2048)
        let received = ReceiveChecker()
        let bridge = try Bridge.open(
            a: below.opener(configuration, umem: umemA, loopback: false),
            // B hears its own sends: what the bridge forwards A -> B comes back in on B.
            b: below.opener(configuration, umem: umemB, loopback: true),
            verdict: { side, _ in side == .a ? .forward : .indicate },
            onReceive: { indication in received.handle(indication) },
            onSendComplete: { batch in for list in batch { try? batch.port.returnList(list) } })
        let total = 5_000
        var delivered = 0
        var passes = 0
        while received.receivedCount < total {
            passes += 1
            try #require(
                passes < 50_000,
                "no progress: delivered \(delivered), received \(received.receivedCount); \(bridge.layerStatistics); A \(below.ports[0].statistics); B \(below.ports[1].statistics)")
            if delivered < total, delivered - received.receivedCount < 256 {
                for _ in 0..<min(32, total - delivered) {
                    let frame = testFrameBytes(sequence: UInt64(delivered))
                    guard frame.withUnsafeBytes({ below.kernels[0].deliver($0) }) else { break }
                    delivered += 1
                }
            }
            bridge.poll()
            below.transmitAll()
            bridge.poll()
        }
        #expect(received.outOfOrder == 0)
        #expect(received.corrupted == 0)
        let layer = bridge.layerStatistics
        if sharedUMEM {
            #expect(layer.copiedFrames == 0)
            #expect(below.ports[1].statistics.send.forwardedPackets == total, "B sent A's own frames")
        } else {
            #expect(layer.copiedFrames == total)
            #expect(below.ports[1].statistics.send.forwardedPackets == 0)
        }
        #expect(layer.receivesConsumed >= 1)
        #expect(layer.forwardDroppedFrames == 0)
        bridge.close()
        #expect(bridge.poolStatus.allFramesHome, "\(bridge.poolStatus)")
        #expect(umemA.allFramesHome && umemB.allFramesHome)
    }

    @Test("bridge with mixed verdicts in one list: forwarded, indicated and dropped packets each go their way")
    func bridgeMixedVerdicts() throws {
        let below = SimulatedBelow()
        var configuration = PortConfiguration(interface: "sim0")
        configuration.frameSize = 2048
        let umem = try UMEM(frameCount: 2 * configuration.umemFrameCount, frameSize: 2048)
        let upSequences = TestLock<[UInt64]>([])
        let bridge = try Bridge.open(
            a: below.opener(configuration, umem: umem, loopback: false),
            b: below.opener(configuration, umem: umem, loopback: false),
            verdict: { _, packet in
                let sequence = ((try? packet.bytes).map { TestFrame.parse(UnsafeRawBufferPointer($0))?.sequence ?? 0 }) ?? 0
                switch sequence % 3 { case 0: return .forward; case 1: return .indicate; default: return .drop }
            },
            onReceive: { indication in
                try? indication.list.packets.forEach { packet in
                    if let frame = TestFrame.parse(UnsafeRawBufferPointer(try packet.bytes)), frame.intact {
                        upSequences.withLock { $0.append(frame.sequence) }
                    }
                }
                try? indication.port.returnList(indication.list)
            },
            onSendComplete: { batch in for list in batch { try? batch.port.returnList(list) } })
        for sequence in 0..<30 {
            let frame = testFrameBytes(sequence: UInt64(sequence))
            #expect(frame.withUnsafeBytes { below.kernels[0].deliver($0) })
        }
        for _ in 0..<10 {
            bridge.poll()
            below.transmitAll()
        }
        #expect(upSequences.withLock { $0 } == Array(stride(from: 1, to: 30, by: 3)).map(UInt64.init))
        #expect(below.ports[1].statistics.send.packets == 10, "every third frame went out on B")
        #expect(bridge.layerStatistics.copiedFrames == 20, "mixed lists are split by copying")
        bridge.close()
        #expect(bridge.poolStatus.allFramesHome, "\(bridge.poolStatus)")
    }

    @Test("a lower port closed from under the layer: every send still out comes up completed (not sent), the layer closes, later sends are refused")
    func lowerClosedUnderneath() throws {
        let below = SimulatedBelow()
        let completions = CompletionChecker()
        let filter = try FilterDriver.open(
            over: below.opener(loopback: false), onReceive: { try? $0.port.returnList($0.list) }, onSendComplete: completions.handle)
        var sent: [PacketList] = []
        for n in 0..<5 {
            let list = try #require(try filter.allocateList(packetCount: 2))
            try fill(list, stream: 0, firstSequence: UInt64(2 * n), length: 64, from: a, to: b)
            try CompletionChecker.tag(list, stream: 0, number: UInt64(n))
            try filter.send(list)
            sent.append(list)
        }
        // The kernel never transmits: all five are queued below when the port goes.
        below.ports[0].close(timeout: .milliseconds(10))
        for _ in 0..<5 { filter.poll() }
        let state = completions.state.withLock { $0 }
        #expect(state.completed == 5)
        #expect(state.outOfOrder == 0)
        #expect(state.statuses == [.closing: 5])
        #expect(filter.currentState == .closed)
        let spare = completions.takeFree()
        #expect(throws: AFXDPError.portClosed) { try filter.send(spare[0]) }
        #expect(throws: AFXDPError.portClosed) { _ = try filter.allocateList(packetCount: 1) }
        for list in spare { try filter.returnList(list) }
        #expect(filter.poolStatus.allFramesHome)
    }

    @Test("pause, restart and close at the top reach the port below; sends while paused complete with .paused")
    func lifecycleReachesBelow() throws {
        let below = SimulatedBelow()
        let completions = CompletionChecker()
        let classifier = try PriorityClassifier.open(
            over: FilterDriver.below(over: below.opener(loopback: true)),
            onReceive: { try? $0.port.returnList($0.list) }, onSendComplete: completions.handle)
        classifier.pause(timeout: .milliseconds(50))
        #expect(classifier.currentState == .paused)
        #expect(below.ports[0].currentState == .paused)
        let list = try #require(try classifier.allocateList(packetCount: 3))
        try fill(list, stream: 0, firstSequence: 0, length: 64, from: a, to: b)
        try CompletionChecker.tag(list, stream: 0, number: 0)
        try classifier.send(list)
        for _ in 0..<5 { classifier.poll() }
        #expect(completions.state.withLock { $0.statuses } == [.paused: 1])
        classifier.restart()
        #expect(below.ports[0].currentState == .running)
        let again = completions.takeFree()[0]
        try CompletionChecker.tag(again, stream: 0, number: 1)
        try classifier.send(again)
        below.transmitAll()
        for _ in 0..<5 { classifier.poll() }
        #expect(completions.state.withLock { $0.statuses } == [.paused: 1, .success: 1])
        for list in completions.takeFree() { try classifier.returnList(list) }
        classifier.close()
        #expect(classifier.currentState == .closed)
        #expect(below.ports[0].currentState == .closed)
        #expect(classifier.bindings[0].currentState == .closed)
        #expect(classifier.poolStatus.allFramesHome)
    }

    @Test("caller mistakes through a layer: a list returned twice, a list of a UMEM the stack does not use, a list sent while the layer has it")
    func badInput() throws {
        let below = SimulatedBelow()
        let filter = try FilterDriver.open(
            over: below.opener(loopback: false), onReceive: { try? $0.port.returnList($0.list) },
            onSendComplete: { batch in for list in batch { try? batch.port.returnList(list) } })
        let list = try #require(try filter.allocateList(packetCount: 2))
        try filter.returnList(list)
        #expect(throws: AFXDPError.listAlreadyReturned) { try filter.returnList(list) }
        #expect(throws: AFXDPError.listAlreadyReturned) { try filter.send(list) }
        let (other, _) = try XDPPort.openSimulated(
            PortConfiguration(interface: "sim1"), loopback: false, onReceive: { _ in }, onSendComplete: { _ in })
        let foreign = try #require(try other.allocateList(packetCount: 1))
        try foreign.packets.forEach { try $0.setLength(60) }
        #expect(throws: AFXDPError.foreignList) { try filter.send(foreign) }
        #expect(throws: AFXDPError.foreignList) { try filter.returnList(foreign) }
        try other.returnList(foreign)
        other.close()
        let inFlight = try #require(try filter.allocateList(packetCount: 1))
        try inFlight.packets.forEach { try $0.setLength(60) }
        try filter.send(inFlight)
        #expect(throws: AFXDPError.listNotOwnedByCaller) { try filter.send(inFlight) }
        #expect(throws: AFXDPError.listNotOwnedByCaller) { try filter.returnList(inFlight) }
        filter.close()
        #expect(filter.poolStatus.allFramesHome)
    }

    @Test("calling back in: a completion handler that sends again and a receive handler that sends what it received, both through the layer")
    func reentrantHandlers() throws {
        let below = SimulatedBelow()
        let completions = ManagedAtomic<Int>(0)
        let resent = ManagedAtomic<Int>(0)
        let bounced = ManagedAtomic<Int>(0)
        let failures = TestLock<[String]>([])
        let filter = try FilterDriver.open(
            over: below.opener(loopback: true),
            onReceive: { indication in
                // Received frames go straight back out through the layer, 200 times in all.
                if bounced.loadThenWrappingIncrement(ordering: .relaxed) < 200 {
                    do { try indication.port.send(indication.list) } catch { failures.withLock { $0.append("bounce: \(error)") } }
                } else {
                    try? indication.port.returnList(indication.list)
                }
            },
            onSendComplete: { batch in
                for list in batch {
                    completions.wrappingIncrement(ordering: .relaxed)
                    if resent.loadThenWrappingIncrement(ordering: .relaxed) < 100 {
                        do { try batch.port.send(list) } catch { failures.withLock { $0.append("resend: \(error)") } }
                    } else {
                        try? batch.port.returnList(list)
                    }
                }
            })
        for n in 0..<4 {
            let list = try #require(try filter.allocateList(packetCount: 8))
            try fill(list, stream: 0, firstSequence: UInt64(8 * n), length: 64, from: a, to: b)
            try filter.send(list)
        }
        for _ in 0..<2_000 {
            below.transmitAll()
            filter.poll()
        }
        #expect(failures.withLock { $0 } == [])
        // 4 sent + 100 resent + 200 bounced (each a send completing once).
        #expect(completions.load(ordering: .relaxed) == 304)
        #expect(filter.layerStatistics.sendsOutstanding == 0)
        filter.close()
        #expect(filter.poolStatus.allFramesHome, "\(filter.poolStatus)")
    }
}
