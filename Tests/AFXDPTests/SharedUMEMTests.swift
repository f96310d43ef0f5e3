@testable import AFXDP
import AFXDPRings
import AFXDPTestbed
import Atomics
import Glibc
import Testing

/// A forwarder between two ports of one UMEM: what one receives, the other
/// sends, without a copy; what completes goes home by `returnList`. Counts
/// the lists it forwarded and the UMEM addresses it sent, to prove no copy.
final class TestForwarder: @unchecked Sendable {
    // @unchecked: the ports are set once before traffic; counters are atomics;
    // the address record is under a lock.
    var ports: [XDPPort] = []
    let forwarded = ManagedAtomic<Int>(0)
    let completed = ManagedAtomic<Int>(0)
    let refused = ManagedAtomic<Int>(0)
    let notFromPeer = ManagedAtomic<Int>(0)
    let failures = TestLock<[String]>([])

    /// Port `index`'s receive handler: send the list on the other port.
    func receive(on index: Int) -> @Sendable (ReceiveIndication) -> Void {
        { [unowned self] indication in
            let other = self.ports[1 - index]
            do {
                let count = try indication.list.count
                try other.send(indication.list)
                self.forwarded.wrappingIncrement(by: count, ordering: .relaxed)
            } catch {
                // The other port is closing: give the frames back now.
                self.refused.wrappingIncrement(ordering: .relaxed)
                do { try indication.port.returnList(indication.list) } catch { self.failures.withLock { $0.append("return: \(error)") } }
            }
        }
    }

    /// Port `index`'s completion handler: the lists were received on the
    /// other port; returning them here sends their frames home there.
    func complete(on index: Int) -> @Sendable (SendCompletions) -> Void {
        { [unowned self] batch in
            for list in batch {
                do {
                    try list.packets.forEach { packet in
                        // Every frame sent here was received on the other port: its pool's frames.
                        let frame = Int(try packet.frame)
                        if !self.ports[1 - index].receiveRangeForTests.contains(frame) {
                            self.notFromPeer.wrappingIncrement(ordering: .relaxed)
                        }
                    }
                    try batch.port.returnList(list)
                    self.completed.wrappingIncrement(ordering: .relaxed)
                } catch {
                    self.failures.withLock { $0.append("completion: \(error)") }
                }
            }
        }
    }
}

extension XDPPort {
    /// The frames of the port's receive pool.
    var receiveRangeForTests: Range<Int> { poolRanges.receive }
}

@Suite("Shared UMEM")
struct SharedUMEMTests {
    let macA = MACAddress(bytes: [2, 0, 0, 0, 0, 1])
    let macB = MACAddress(bytes: [2, 0, 0, 0, 0, 2])

    func smallConfiguration() -> PortConfiguration {
        var configuration = PortConfiguration(interface: "sim0")
        configuration.transmitRingSize = 64
        configuration.completionRingSize = 64
        configuration.fillRingSize = 64
        configuration.receiveRingSize = 64
        configuration.receiveBatchSize = 16
        configuration.receiveFrameCount = 128
        configuration.sendFrameCount = 128
        return configuration
    }

    /// Two simulated ports on one UMEM with a forwarder between them.
    func forwardingPair(completeOnTransmit: Bool = true) throws -> (UMEM, TestForwarder, [XDPPort], [SimulatedKernel]) {
        let umem = try UMEM(frameCount: 512, frameSize: 4096)
        let forwarder = TestForwarder()
        var ports: [XDPPort] = []
        var kernels: [SimulatedKernel] = []
        for index in 0..<2 {
            let (port, kernel) = try XDPPort.openSimulated(
                smallConfiguration(), umem: umem, onReceive: forwarder.receive(on: index),
                onSendComplete: forwarder.complete(on: index))
            kernel.completesOnTransmit = completeOnTransmit
            ports.append(port)
            kernels.append(kernel)
        }
        forwarder.ports = ports
        return (umem, forwarder, ports, kernels)
    }

    func deliver(_ count: Int, to kernel: SimulatedKernel, first: UInt64 = 0) -> Int {
        var delivered = 0
        var bytes = [UInt8](repeating: 0, count: 64)
        for n in 0..<count {
            bytes.withUnsafeMutableBytes {
                TestFrame.write(into: $0, length: 64, sequence: first + UInt64(n), source: macA, destination: macB)
            }
            if bytes.withUnsafeBytes({ kernel.deliver($0) }) { delivered += 1 }
        }
        return delivered
    }

    @Test("a list received on one port and sent on another of its UMEM leaves from the same frames and comes home to the first")
    func forwardWithoutCopy() throws {
        let (umem, forwarder, ports, kernels) = try forwardingPair(completeOnTransmit: false)
        let (a, b) = (ports[0], ports[1])
        let total = 2_000
        var delivered = 0
        let deadline = Deadline(seconds: 30)
        var sawLent = false
        while forwarder.completed.load(ordering: .relaxed) < total / 16, !deadline.passed {
            if delivered < total { delivered += deliver(min(16, total - delivered), to: kernels[0], first: UInt64(delivered)) }
            a.poll()
            // B's kernel: what it takes from B's TX ring, it records.
            let before = kernels[1].framesInFlight
            kernels[1].transmit()
            if kernels[1].framesInFlight > before { sawLent = sawLent || a.poolStatus.framesLentToOtherPorts > 0 }
            kernels[1].complete()
            b.poll()
        }
        #expect(delivered == total)
        #expect(forwarder.forwarded.load(ordering: .relaxed) == total)
        #expect(forwarder.notFromPeer.load(ordering: .relaxed) == 0, "every frame B sent was one A received: no copy")
        #expect(sawLent, "while in flight on B, A's frames count as lent")
        #expect(b.statistics.send.forwardedPackets == total)
        #expect(b.statistics.send.packets == total)
        #expect(forwarder.failures.withLock { $0 } == [])
        a.poll()
        #expect(a.poolStatus.framesLentToOtherPorts == 0)
        #expect(a.poolStatus.allFramesHome, "\(a.poolStatus)")
        #expect(b.poolStatus.allFramesHome, "\(b.poolStatus)")
        a.close()
        b.close()
        #expect(umem.allFramesHome, "\(umem.poolStatus)")
    }

    @Test("the receiving port closes first while its frames are in flight on the other: they come home to it when returned")
    func receivingPortClosesFirst() throws {
        let (umem, forwarder, ports, kernels) = try forwardingPair(completeOnTransmit: false)
        let (a, b) = (ports[0], ports[1])
        #expect(deliver(48, to: kernels[0]) == 48)
        a.poll()
        #expect(forwarder.forwarded.load(ordering: .relaxed) == 48)
        kernels[1].transmit()  // taken by B's kernel, not completed
        #expect(a.poolStatus.framesLentToOtherPorts == 48)
        a.close()
        #expect(!a.poolStatus.allFramesHome, "48 frames are still out, in flight on B")
        kernels[1].complete()
        b.poll()
        #expect(forwarder.completed.load(ordering: .relaxed) == 3)
        #expect(a.poolStatus.allFramesHome, "returned after A closed, they came home to A: \(a.poolStatus)")
        b.close()
        #expect(umem.allFramesHome, "\(umem.poolStatus)")
        #expect(forwarder.failures.withLock { $0 } == [])
    }

    @Test("the sending port closes first with borrowed lists in flight: each completes once, and their frames go home to the receiving port")
    func sendingPortClosesFirst() throws {
        let (umem, forwarder, ports, kernels) = try forwardingPair(completeOnTransmit: false)
        let (a, b) = (ports[0], ports[1])
        #expect(deliver(48, to: kernels[0]) == 48)
        a.poll()
        kernels[1].transmit(maximum: 20)  // B's kernel takes 20, completes none
        b.close(timeout: .milliseconds(10))
        #expect(forwarder.completed.load(ordering: .relaxed) == 3, "every borrowed list completed once, at B's close")
        a.poll()
        #expect(a.poolStatus.allFramesHome, "\(a.poolStatus)")
        // A goes on receiving; what it sends to the closed B is refused and returned.
        #expect(deliver(16, to: kernels[0], first: 48) == 16)
        a.poll()
        #expect(forwarder.refused.load(ordering: .relaxed) == 1)
        a.close()
        #expect(umem.allFramesHome, "\(umem.poolStatus)")
        #expect(forwarder.failures.withLock { $0 } == [])
    }

    @Test("bad input on a shared UMEM: a list of another UMEM, a frame size that differs, a closed UMEM, one without room")
    func badInput() throws {
        let umem = try UMEM(frameCount: 600, frameSize: 4096)
        let (a, _) = try XDPPort.openSimulated(smallConfiguration(), umem: umem, onReceive: { _ in }, onSendComplete: { _ in })
        let (other, _) = try XDPPort.openSimulated(smallConfiguration(), onReceive: { _ in }, onSendComplete: { _ in })
        let foreign = try #require(try other.allocateList(packetCount: 1))
        try fill(foreign, stream: 0, firstSequence: 0, length: 64, from: macA, to: macB)
        #expect(throws: AFXDPError.foreignList) { try a.send(foreign) }
        #expect(throws: AFXDPError.foreignList) { try a.returnList(foreign) }
        #expect("\(AFXDPError.foreignList)".contains("umem:"))
        #expect(foreign.isOwnedByCaller, "refused, it stays the caller's")
        try other.returnList(foreign)

        var small = smallConfiguration()
        small.frameSize = 2048
        #expect {
            try XDPPort.openSimulated(small, umem: umem, onReceive: { _ in }, onSendComplete: { _ in })
        } throws: { error in
            "\(error)".contains("frameSize 2048 differs from its UMEM's 4096")
        }
        // 600 frames: A took 256; 344 left, a port needs 256; then 88.
        let (b, _) = try XDPPort.openSimulated(smallConfiguration(), umem: umem, onReceive: { _ in }, onSendComplete: { _ in })
        #expect(throws: AFXDPError.umemExhausted(needed: 256, available: 88)) {
            try XDPPort.openSimulated(smallConfiguration(), umem: umem, onReceive: { _ in }, onSendComplete: { _ in })
        }
        umem.close()
        #expect(throws: AFXDPError.umemClosed) {
            try XDPPort.openSimulated(smallConfiguration(), umem: UMEM.closedForTests(), onReceive: { _ in }, onSendComplete: { _ in })
        }
        // Ports already open go on.
        let list = try #require(try b.allocateList(packetCount: 1))
        try b.returnList(list)
        a.close()
        b.close()
        other.close()
        #expect(umem.allFramesHome)
    }
}

extension UMEM {
    static func closedForTests() throws -> UMEM {
        let umem = try UMEM(frameCount: 512)
        umem.close()
        return umem
    }
}

/// Shared UMEMs on real veth pairs.
@Suite("Shared UMEM over veth", .serialized)
struct SharedUMEMOverVethTests {
    @Test("two queues of one veth on one UMEM per end, both directions at once: every frame intact, in order")
    func twoQueuesOneUMEM() throws {
        try VethTestbed.withVethTestbed(queues: 2) { bed in
            let framesPerPort = PortConfiguration(interface: "x").umemFrameCount
            let umems = [try UMEM(frameCount: 2 * framesPerPort), try UMEM(frameCount: 2 * framesPerPort)]
            // ends[e][q]: the port of end e on queue q; streams: 2 * e + q.
            let received = (0..<2).map { _ in (0..<2).map { _ in ReceiveChecker() } }
            let completions = (0..<2).map { _ in (0..<2).map { _ in CompletionChecker() } }
            var opened: [[XDPPort]] = [[], []]
            defer { for port in opened.flatMap({ $0 }) { port.close() } }
            for end in 0..<2 {
                for queue in 0..<2 {
                    let name: Character = end == 0 ? "a" : "b"
                    opened[end].append(try openPort(
                        bed, end: name, umem: umems[end], configure: { $0.queue = UInt32(queue) },
                        onReceive: received[end][queue].handle, onSendComplete: completions[end][queue].handle))
                }
            }
            let ports = opened
            #expect(ports[0][1].notes.isEmpty || ports[0][1].isZeroCopy == ports[0][0].isZeroCopy)
            let perFlow = 50_000
            let failures = TestLock<[String]>([])
            runThreads(2) { end in
                let peer = 1 - end
                var generators = (0..<2).map { queue in
                    Generator(
                        port: ports[end][queue], completions: completions[end][queue], stream: 2 * end + queue, total: perFlow,
                        batch: 32, from: end == 0 ? bed.macAddressA : bed.macAddressB, to: end == 0 ? bed.macAddressB : bed.macAddressA)
                }
                let deadline = Deadline(seconds: 180)
                do {
                    while generators.contains(where: { !$0.done }) || received[end].contains(where: { $0.receivedCount < perFlow }) {
                        if deadline.passed {
                            failures.withLock { $0.append("end \(end) stalled: sent \(generators.map(\.sentFrames)), received \(received[end].map(\.receivedCount))") }
                            return
                        }
                        for queue in 0..<2 {
                            try generators[queue].step(receivedByPeer: received[peer][queue].receivedCount, window: vethQueueWindow / 4)
                            ports[end][queue].poll()
                        }
                    }
                    for queue in 0..<2 { try generators[queue].returnSpares() }
                } catch {
                    failures.withLock { $0.append("end \(end): \(error)") }
                }
            }
            #expect(failures.withLock { $0 } == [])
            for end in 0..<2 {
                for queue in 0..<2 {
                    // A frame sent on queue q arrives on the peer's queue q.
                    let checker = received[end][queue]
                    let stream = 2 * (1 - end) + queue
                    #expect(checker.receivedCount == perFlow, "end \(end) queue \(queue)")
                    #expect(checker.nextExpected(stream: stream) == UInt64(perFlow))
                    #expect(checker.outOfOrder == 0 && checker.corrupted == 0)
                    #expect(completions[end][queue].state.withLock { $0.outOfOrder } == 0)
                }
            }
            for port in ports.flatMap({ $0 }) { port.close() }
            for umem in umems { #expect(umem.allFramesHome, "\(umem.poolStatus)") }
        }
    }

    @Test("ports on one UMEM must agree with its first socket: ring sizes and need-wakeup; one port per queue")
    func sharingRules() throws {
        try VethTestbed.withVethTestbed(queues: 2) { bed in
            let umem = try UMEM(frameCount: 32_768)
            let first = try openPort(bed, end: "a", umem: umem)
            defer { first.close() }
            #expect {
                try openPort(bed, end: "a", umem: umem, configure: { $0.queue = 1; $0.fillRingSize = 1024 })
            } throws: { "\($0)".contains("share its fill and completion ring sizes") }
            #expect {
                try openPort(bed, end: "a", umem: umem, configure: { $0.queue = 1; $0.useNeedWakeup = false })
            } throws: { "\($0)".contains("need-wakeup") }
            #expect {
                try openPort(bed, end: "a", umem: umem)
            } throws: { "\($0)".contains("already bound to \(bed.interfaceA) queue 0") }
            let second = try openPort(bed, end: "a", umem: umem, configure: { $0.queue = 1 })
            second.close()
        }
    }
}

/// A — F — B: F forwards between its two interfaces over one UMEM.
@Suite("Forwarding over one UMEM", .serialized)
struct ForwardingTests {
    /// F's two ports on one UMEM, the forwarder between them.
    func openForwarder(_ bed: ForwardingTestbed, umem: UMEM) throws -> TestForwarder {
        let forwarder = TestForwarder()
        for (index, interface) in [bed.interfaceFA, bed.interfaceFB].enumerated() {
            var configuration = PortConfiguration(interface: interface, networkNamespace: bed.namespaceF)
            configuration.etherTypeFilter = TestFrame.etherType
            forwarder.ports.append(try XDPPort.open(
                configuration, umem: umem, onReceive: forwarder.receive(on: index), onSendComplete: forwarder.complete(on: index)))
        }
        return forwarder
    }

    func openEnd(_ bed: ForwardingTestbed, a: Bool, received: ReceiveChecker, completions: CompletionChecker) throws -> XDPPort {
        var configuration = PortConfiguration(
            interface: a ? bed.interfaceA : bed.interfaceB, networkNamespace: a ? bed.namespaceA : bed.namespaceB)
        configuration.etherTypeFilter = TestFrame.etherType
        return try XDPPort.open(configuration, onReceive: received.handle, onSendComplete: completions.handle)
    }

    @Test("A to B and B to A through F, 1,000,000 frames each way: F copies nothing, nothing is lost, duplicated, reordered or corrupted")
    func millionFramesEachWay() throws {
        try ForwardingTestbed.withForwardingTestbed { bed in
            let umem = try UMEM(frameCount: 32_768)
            let forwarder = try openForwarder(bed, umem: umem)
            let receivedAtA = ReceiveChecker(), receivedAtB = ReceiveChecker()
            let completionsA = CompletionChecker(), completionsB = CompletionChecker()
            let a = try openEnd(bed, a: true, received: receivedAtA, completions: completionsA)
            let b = try openEnd(bed, a: false, received: receivedAtB, completions: completionsB)
            defer { for port in [a, b] + forwarder.ports { port.close() } }
            let total = 1_000_000
            let stop = ManagedAtomic<Bool>(false)
            let failures = TestLock<[String]>([])
            runThreads(3) { index in
                let deadline = Deadline(seconds: 400)
                if index == 2 {
                    // F: one thread polls both of its ports.
                    while !stop.load(ordering: .relaxed) {
                        if deadline.passed { failures.withLock { $0.append("F ran past its deadline") }; return }
                        for port in forwarder.ports { port.poll() }
                    }
                    return
                }
                let (port, completions, peer, mine, from, to) = index == 0
                    ? (a, completionsA, receivedAtB, receivedAtA, bed.macAddressA, bed.macAddressB)
                    : (b, completionsB, receivedAtA, receivedAtB, bed.macAddressB, bed.macAddressA)
                var generator = Generator(port: port, completions: completions, stream: index, total: total, batch: 32, from: from, to: to)
                do {
                    while !(generator.done && mine.receivedCount >= total && completions.completed == Int(generator.listNumber)) {
                        if deadline.passed {
                            failures.withLock {
                                $0.append("end \(index) stalled: sent \(generator.sentFrames), peer received \(peer.receivedCount), received \(mine.receivedCount)")
                            }
                            break
                        }
                        // Each hop's veth queue holds 256: a window of 256 end to end overruns neither.
                        try generator.step(receivedByPeer: peer.receivedCount, window: vethQueueWindow)
                        port.poll()
                    }
                    try generator.returnSpares()
                } catch {
                    failures.withLock { $0.append("end \(index): \(error)") }
                }
                if index == 0 {
                    while receivedAtB.receivedCount < total || receivedAtA.receivedCount < total {
                        if deadline.passed { break }
                        usleep(1_000)
                    }
                    stop.store(true, ordering: .relaxed)
                }
            }
            #expect(failures.withLock { $0 } == [])
            for (name, checker, stream) in [("A", receivedAtA, 1), ("B", receivedAtB, 0)] {
                #expect(checker.receivedCount == total, "at \(name)")
                #expect(checker.nextExpected(stream: stream) == UInt64(total), "at \(name)")
                #expect(checker.outOfOrder == 0 && checker.corrupted == 0 && checker.foreign == 0, "at \(name)")
            }
            for completions in [completionsA, completionsB] {
                let state = completions.state.withLock { $0 }
                #expect(state.outOfOrder == 0)
                #expect(state.statuses == [.success: total / 32])
            }
            // F: every frame it sent on one side was a frame it received on the other.
            #expect(forwarder.forwarded.load(ordering: .relaxed) == 2 * total)
            #expect(forwarder.notFromPeer.load(ordering: .relaxed) == 0)
            let fStatistics = forwarder.ports.map(\.statistics)
            #expect(fStatistics.map(\.send.forwardedPackets) == fStatistics.map(\.send.packets), "copies: 0")
            #expect(fStatistics.map(\.send.packets).reduce(0, +) == 2 * total)
            #expect(forwarder.failures.withLock { $0 } == [])
            for port in [a, b] + forwarder.ports { port.close() }
            #expect(umem.allFramesHome, "\(umem.poolStatus)")
            #expect(a.poolStatus.allFramesHome && b.poolStatus.allFramesHome)
        }
    }

    @Test("either of F's ports closes first while the other has its frames in flight: everything completes once and comes home", arguments: [0, 1])
    func closeOneSideFirst(first: Int) throws {
        try ForwardingTestbed.withForwardingTestbed { bed in
            let umem = try UMEM(frameCount: 32_768)
            let forwarder = try openForwarder(bed, umem: umem)
            let receivedAtB = ReceiveChecker()
            let completionsA = CompletionChecker()
            let a = try openEnd(bed, a: true, received: ReceiveChecker(), completions: completionsA)
            let b = try openEnd(bed, a: false, received: receivedAtB, completions: CompletionChecker())
            defer { for port in [a, b] + forwarder.ports { port.close() } }
            var generator = Generator(port: a, completions: completionsA, total: 200_000, batch: 32, from: bed.macAddressA, to: bed.macAddressB)
            let deadline = Deadline(seconds: 60)
            // Traffic A to B through F, unwindowed: F's lists pile up in flight.
            while receivedAtB.receivedCount < 20_000, !deadline.passed {
                try generator.step(receivedByPeer: receivedAtB.receivedCount, window: 4096)
                a.poll()
                for port in forwarder.ports { port.poll() }
                b.poll()
            }
            #expect(receivedAtB.receivedCount >= 20_000)
            forwarder.ports[first].close(timeout: .milliseconds(50))
            // The other goes on a little, then closes too.
            for _ in 0..<200 {
                try generator.step(receivedByPeer: receivedAtB.receivedCount, window: 4096)
                a.poll()
                forwarder.ports[1 - first].poll()
                b.poll()
            }
            forwarder.ports[1 - first].close(timeout: .milliseconds(50))
            #expect(forwarder.failures.withLock { $0 } == [])
            #expect(forwarder.completed.load(ordering: .relaxed) + forwarder.refused.load(ordering: .relaxed) > 0)
            for port in forwarder.ports { #expect(port.poolStatus.allFramesHome, "\(port.poolStatus)") }
            #expect(umem.allFramesHome, "\(umem.poolStatus)")
            a.close()
            try generator.returnSpares()
        }
    }
}
