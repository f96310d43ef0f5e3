@testable import AFXDP
import AFXDPRings
import AFXDPTestbed
import Testing

/// `XDPPort.openSimulated`: the whole engine over a kernel simulated in memory,
/// through the public API only; no interface, no privileges.
@Suite("Simulated port")
struct SimulatedPortTests {
    let a = MACAddress(bytes: [2, 0, 0, 0, 0, 1])
    let b = MACAddress(bytes: [2, 0, 0, 0, 0, 2])

    @Test("loopback: 20,000 frames sent, completed in order and received intact, every frame home after close")
    func loopback() throws {
        let received = ReceiveChecker()
        let completions = CompletionChecker()
        var configuration = PortConfiguration(interface: "sim0")
        configuration.transmitRingSize = 256
        configuration.completionRingSize = 256
        let (port, kernel) = try XDPPort.openSimulated(
            configuration, loopback: true, onReceive: received.handle, onSendComplete: completions.handle)
        var generator = Generator(port: port, completions: completions, total: 20_000, batch: 50, from: a, to: b)
        var passes = 0
        while received.receivedCount < 20_000 {
            passes += 1
            try #require(passes < 100_000, "no progress: received \(received.receivedCount)")
            try generator.step(receivedByPeer: received.receivedCount, window: 512)
            kernel.transmit()
            port.poll()
        }
        try generator.returnSpares()
        #expect(received.outOfOrder == 0)
        #expect(received.corrupted == 0)
        let state = completions.state.withLock { $0 }
        #expect(state.completed == 400)
        #expect(state.outOfOrder == 0)
        #expect(state.statuses == [.success: 400])
        #expect(port.statistics.send.packets == 20_000)
        #expect(port.statistics.receive.packets == 20_000)
        port.close()
        #expect(port.poolStatus.allFramesHome, "\(port.poolStatus)")
    }

    @Test("more long lists than large chunks: the rest chain inline chunks, every packet intact and in order, all home after close")
    func largeChunksRunOut() throws {
        let received = ReceiveChecker()
        received.holding.store(true, ordering: .relaxed)
        let completions = CompletionChecker()
        var configuration = PortConfiguration(interface: "sim0")
        // 256 frames a side: 8 large chunks each.
        configuration.receiveFrameCount = 256
        configuration.sendFrameCount = 256
        configuration.fillRingSize = 256
        configuration.receiveRingSize = 256
        configuration.receiveBatchSize = 16
        let (port, kernel) = try XDPPort.openSimulated(
            configuration, loopback: true, onReceive: received.handle, onSendComplete: completions.handle)
        let before = port.poolStatus
        #expect(before.totalLargeChunks == 16 && before.allLargeChunksHome)
        // 40 lists of 6 (5 or more packets take a large chunk while there is one),
        // all held at once: 8 take large chunks, 32 chain two inline chunks.
        var lists: [PacketList] = []
        for n in 0..<40 {
            let list = try #require(try port.allocateList(packetCount: 6))
            try fill(list, stream: 0, firstSequence: UInt64(6 * n), length: 60 + n, from: a, to: b)
            try CompletionChecker.tag(list, stream: 0, number: UInt64(n))
            lists.append(list)
        }
        #expect(port.poolStatus.largeChunksFree == 8, "the send side's large chunks are all lent")
        for list in lists { try port.send(list) }
        var passes = 0
        while received.receivedCount < 240 || completions.completed < 40 {
            passes += 1
            try #require(passes < 10_000, "no progress: received \(received.receivedCount)")
            kernel.transmit()
            port.poll()
        }
        // Received in lists of up to 16, all held: 8 in large chunks, the rest inline.
        #expect(received.outOfOrder == 0)
        #expect(received.corrupted == 0)
        #expect(received.heldSequences == (0..<240).map { UInt64($0) })
        #expect(port.poolStatus.largeChunksFree == 0, "both sides' large chunks are lent")
        let state = completions.state.withLock { $0 }
        #expect(state.completed == 40 && state.outOfOrder == 0 && state.statuses == [.success: 40])
        for (n, list) in completions.takeFree().enumerated() {
            #expect(try list.count == 6)
            #expect(try list.packets.lengths == Array(repeating: 60 + n, count: 6), "list \(n) kept its packets")
            try port.returnList(list)
        }
        try received.returnHeld(to: port)
        port.close()
        let after = port.poolStatus
        #expect(after.allFramesHome, "\(after)")
        #expect(after.allLargeChunksHome, "\(after)")
    }

    @Test("a stalled completion ring: sends queue and none completes until the kernel moves; then all complete, in order")
    func stalledCompletions() throws {
        let completions = CompletionChecker()
        var configuration = PortConfiguration(interface: "sim0")
        configuration.transmitRingSize = 64
        configuration.completionRingSize = 64
        configuration.sendFrameCount = 4_000
        let (port, kernel) = try XDPPort.openSimulated(configuration, onReceive: { _ in }, onSendComplete: completions.handle)
        defer { port.close() }
        for n in 0..<1_000 {
            let list = try #require(try port.allocateList(packetCount: 4))
            try fill(list, stream: 0, firstSequence: UInt64(4 * n), length: 60, from: a, to: b)
            try CompletionChecker.tag(list, stream: 0, number: UInt64(n))
            try port.send(list)
        }
        for _ in 0..<10 { port.poll() }
        #expect(completions.completed == 0)
        #expect(kernel.pendingTransmit == 64, "the TX ring holds what the completion ring has room for")
        #expect(port.statistics.send.queuedFrames == 4_000 - 64)
        while completions.completed < 1_000 {
            kernel.transmit(maximum: 17)
            port.poll()
        }
        let state = completions.state.withLock { $0 }
        #expect(state.outOfOrder == 0)
        #expect(state.statuses == [.success: 1_000])
        for list in completions.takeFree() { try port.returnList(list) }
    }

    @Test("an empty fill ring: frames are dropped and counted while the caller holds everything; delivery resumes on return")
    func emptyFillRing() throws {
        let received = ReceiveChecker()
        received.holding.store(true, ordering: .relaxed)
        var configuration = PortConfiguration(interface: "sim0")
        configuration.fillRingSize = 64
        configuration.receiveRingSize = 64
        configuration.receiveFrameCount = 64
        configuration.receiveBatchSize = 16
        let (port, kernel) = try XDPPort.openSimulated(configuration, onReceive: received.handle, onSendComplete: { _ in })
        defer { port.close() }
        var frame = [UInt8](repeating: 0, count: 64)
        func deliver(_ sequence: UInt64) -> Bool {
            frame.withUnsafeMutableBytes { TestFrame.write(into: $0, length: 64, sequence: sequence, source: a, destination: b) }
            return frame.withUnsafeBytes { kernel.deliver($0) }
        }
        var delivered = 0
        for n in 0..<200 where deliver(UInt64(n)) {
            delivered += 1
            port.poll()
        }
        port.poll()
        #expect(delivered == 64)
        #expect(received.receivedCount == 64)
        #expect(kernel.statistics.fillRingEmpty == 136)
        #expect(port.statistics.receive.lowResourceEvents == 1)
        #expect(port.poolStatus.receiveFramesHeldByCaller == 64)
        received.holding.store(false, ordering: .relaxed)
        try received.returnHeld(to: port)
        port.poll()
        #expect(deliver(200))
        port.poll()
        #expect(received.receivedCount == 65)
        #expect(received.corrupted == 0)
    }

    @Test("a list paused part-way says how many of its packets went out")
    func partialSendIsReported() throws {
        let completions = CompletionChecker()
        var configuration = PortConfiguration(interface: "sim0")
        configuration.transmitRingSize = 64
        configuration.completionRingSize = 64
        let (port, kernel) = try XDPPort.openSimulated(configuration, onReceive: { _ in }, onSendComplete: completions.handle)
        defer { port.close() }
        // 100 packets: 64 fit the rings, 36 wait; pausing stops the rest.
        let list = try #require(try port.allocateList(packetCount: 100))
        try fill(list, stream: 0, firstSequence: 0, length: 60, from: a, to: b)
        try CompletionChecker.tag(list, stream: 0, number: 0)
        try port.send(list)
        port.pause(timeout: .milliseconds(1))
        while completions.completed < 1 {
            kernel.transmit()
            port.poll()
        }
        #expect(try list.status == .paused)
        #expect(try list.sentPacketCount == 64)
        port.restart()
        try port.send(list)
        while completions.completed < 2 {
            kernel.transmit()
            port.poll()
        }
        #expect(try list.status == .success)
        #expect(try list.sentPacketCount == 100)
        try port.returnList(list)
    }

    @Test("the simulated kernel plays the kernel's checks: invalid TX descriptors are skipped and counted, with no completion")
    func invalidDescriptorsAreSkipped() throws {
        var configuration = PortConfiguration(interface: "sim0")
        configuration.frameSize = 2048
        let (port, kernel) = try XDPPort.openSimulated(configuration, onReceive: { _ in }, onSendComplete: { _ in })
        defer { port.close() }
        let umemSize = UInt64(port.umem.frameCount * 2048)
        let send = UInt64(port.configuration.resolvedReceiveFrameCount) * 2048
        for descriptor in [
            XDPDescriptor(address: send, length: 0),  // empty
            XDPDescriptor(address: send + 100, length: 1_949),  // runs past its frame's end
            XDPDescriptor(address: umemSize, length: 64),  // outside the UMEM
            XDPDescriptor(address: send, length: 64, options: 4),  // an option this kernel does not know
            XDPDescriptor(address: send + 2048, length: 64),  // valid
        ] {
            kernel.injectTransmit(descriptor)
        }
        #expect(kernel.transmit() == 5, "every descriptor leaves the TX ring")
        #expect(kernel.statistics.transmitInvalidDescriptors == 4)
        #expect(kernel.completion.producerIndex == 1, "only the valid one is completed")
        #expect(kernel.completion[0] == send + 2048)
    }

    @Test("completions in bursts, newest first or shuffled, frames held in flight: lists still complete once, in send order")
    func completionsOutOfOrder() throws {
        let completions = CompletionChecker()
        var configuration = PortConfiguration(interface: "sim0")
        configuration.transmitRingSize = 64
        configuration.completionRingSize = 128
        let (port, kernel) = try XDPPort.openSimulated(configuration, onReceive: { _ in }, onSendComplete: completions.handle)
        kernel.completesOnTransmit = false
        kernel.seedShuffle(42)
        var random = SeededGenerator(seed: 42)
        var sent = 0
        var spare: [PacketList] = []
        let deadline = Deadline(seconds: 30)
        while completions.completed < 2_000, !deadline.passed {
            spare.append(contentsOf: completions.takeFree())
            while sent < 2_000, let list = try spare.popLast() ?? port.allocateList(packetCount: Int.random(in: 1...9, using: &random)) {
                if try list.count > 5 {
                    try port.returnList(list)
                    continue
                }
                try fill(list, stream: 0, firstSequence: 0, length: 60, from: a, to: b)
                try CompletionChecker.tag(list, stream: 0, number: UInt64(sent))
                try port.send(list)
                sent += 1
            }
            kernel.transmit(maximum: Int.random(in: 0...40, using: &random))
            let order: SimulatedKernel.CompletionOrder = [.submission, .newestFirst, .shuffled].randomElement(using: &random)!
            kernel.complete(maximum: Int.random(in: 0...50, using: &random), order: order)
            port.poll()
        }
        let state = completions.state.withLock { $0 }
        #expect(state.completed == 2_000)
        #expect(state.outOfOrder == 0)
        #expect(state.statuses == [.success: 2_000])
        for list in completions.takeFree() + spare { try port.returnList(list) }
        port.close()
        #expect(kernel.isClosed)
        #expect(kernel.transmit() == 0, "the socket is gone: the kernel does nothing more")
        #expect(port.poolStatus.allFramesHome)
    }

    @Test("a burst drains the fill ring: what finds it empty is dropped and counted, and delivery resumes once lists come back")
    func burstDrainsFillRing() throws {
        let received = ReceiveChecker()
        received.holding.store(true, ordering: .relaxed)
        var configuration = PortConfiguration(interface: "sim0")
        configuration.fillRingSize = 64
        configuration.receiveRingSize = 256
        configuration.receiveFrameCount = 64
        configuration.receiveBatchSize = 16
        let (port, kernel) = try XDPPort.openSimulated(configuration, onReceive: received.handle, onSendComplete: { _ in })
        defer { port.close() }
        var frame = [UInt8](repeating: 0, count: 64)
        frame.withUnsafeMutableBytes { TestFrame.write(into: $0, length: 64, sequence: 0, source: a, destination: b) }
        #expect(frame.withUnsafeBytes { kernel.deliver($0, count: 200) } == 64)
        #expect(kernel.statistics.fillRingEmpty == 136)
        for _ in 0..<8 { port.poll() }
        #expect(received.receivedCount == 64)
        #expect(port.statistics.receive.lowResourceEvents >= 1)
        received.holding.store(false, ordering: .relaxed)
        try received.returnHeld(to: port)
        port.poll()
        #expect(frame.withUnsafeBytes { kernel.deliver($0, count: 10) } == 10)
    }
}
