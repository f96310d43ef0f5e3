@testable import AFXDP
import AFXDPTestbed
import Atomics
import Glibc
import Testing

/// The flow a test frame belongs to: its stream (the sequence number's top
/// bits), so that a multi-queue port keeps each stream on one queue.
let streamFlowHash: MultiQueuePort.FlowHash = { list in
    var stream: UInt32 = 0
    _ = try? list.packets.withPacket(at: 0) { packet throws(AFXDPError) in
        let frame = UnsafeRawBufferPointer(try packet.bytes)
        if frame.count >= 22 {
            stream = UInt32(truncatingIfNeeded: Stream.split(UInt64(littleEndian: frame.loadUnaligned(fromByteOffset: 14, as: UInt64.self))).stream)
        }
    }
    return stream
}

/// Intermediate drivers on real veth pairs.
@Suite("Intermediate layer over veth", .serialized)
struct LayerVethTests {
    func configuration(_ interface: String, _ namespace: String) -> PortConfiguration {
        var configuration = PortConfiguration(interface: interface, networkNamespace: namespace)
        configuration.etherTypeFilter = TestFrame.etherType
        return configuration
    }

    @Test("bridge between two interfaces: A to B and B to A through F, 1,000,000 frames each way, zero-copy, none lost, duplicated, reordered or corrupted")
    func bridgeMillionFramesEachWay() throws {
        try ForwardingTestbed.withForwardingTestbed { bed in
            let bridge = try Bridge.open(
                a: configuration(bed.interfaceFA, bed.namespaceF), b: configuration(bed.interfaceFB, bed.namespaceF),
                onReceive: { try? $0.port.returnList($0.list) },
                onSendComplete: { batch in for list in batch { try? batch.port.returnList(list) } })
            let receivedAtA = ReceiveChecker(), receivedAtB = ReceiveChecker()
            let completionsA = CompletionChecker(), completionsB = CompletionChecker()
            let a = try XDPPort.open(
                configuration(bed.interfaceA, bed.namespaceA), onReceive: receivedAtA.handle, onSendComplete: completionsA.handle)
            let b = try XDPPort.open(
                configuration(bed.interfaceB, bed.namespaceB), onReceive: receivedAtB.handle, onSendComplete: completionsB.handle)
            defer {
                for port in [a, b] { port.close() }
                bridge.close()
            }
            #expect(bridge.stack.depth == 2)
            #expect(bridge.stack.layers.map(\.kind) == [.intermediate, .port, .port])
            let total = 1_000_000
            let stop = ManagedAtomic<Bool>(false)
            let failures = TestLock<[String]>([])
            runThreads(3) { index in
                let deadline = Deadline(seconds: 400)
                if index == 2 {
                    while !stop.load(ordering: .relaxed) {
                        if deadline.passed { failures.withLock { $0.append("F ran past its deadline") }; return }
                        bridge.poll()
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
            let layer = bridge.layerStatistics
            #expect(layer.copiedFrames == 0, "one UMEM under both sides: nothing copied")
            #expect(layer.forwardDroppedFrames == 0)
            let sides = [bridge.lower(.a).statistics, bridge.lower(.b).statistics]
            #expect(sides.map(\.send.forwardedPackets) == sides.map(\.send.packets), "every frame F sent was one it received")
            #expect(sides.map(\.send.packets).reduce(0, +) == 2 * total)
            for port in [a, b] { port.close() }
            bridge.close()
            #expect(bridge.poolStatus.allFramesHome, "\(bridge.poolStatus)")
            let umemsHome = bridge.umems.allSatisfy { $0.allFramesHome }
            #expect(umemsHome)
            #expect(a.poolStatus.allFramesHome && b.poolStatus.allFramesHome)
        }
    }

    @Test("a stack of depth 3 on each end (priority classifier over a multi-queue port over two queues): 1,000,000 frames each way in two flows, each flow in order, every send completed once at the top")
    func depthThreeStack() throws {
        try VethTestbed.withVethTestbed(queues: 2) { bed in
            let received = [ReceiveChecker(), ReceiveChecker()]
            let completions = [CompletionChecker(), CompletionChecker()]
            var tops: [PriorityClassifier] = []
            defer { for top in tops { top.close() } }
            for end in 0..<2 {
                let (interface, namespace) = end == 0 ? (bed.interfaceA, bed.namespaceA) : (bed.interfaceB, bed.namespaceB)
                tops.append(try PriorityClassifier.open(
                    over: MultiQueuePort.below(configuration(interface, namespace), queues: 2, flowHash: streamFlowHash),
                    onReceive: received[end].handle, onSendComplete: completions[end].handle))
            }
            let ends = tops
            for top in ends {
                #expect(top.stack.depth == 3)
                #expect(top.stack.layers.map(\.kind) == [.intermediate, .intermediate, .port, .port])
            }
            let perFlow = 500_000
            let failures = TestLock<[String]>([])
            runThreads(2) { end in
                let peer = 1 - end
                // End e sends streams 2e and 2e + 1, one per queue. Both
                // complete into one checker (the stack's handler); each
                // generator takes back its own stream's lists.
                var generators = (0..<2).map { flow in
                    Generator(
                        port: ends[end], completions: CompletionChecker(), stream: 2 * end + flow, total: perFlow, batch: 32,
                        from: end == 0 ? bed.macAddressA : bed.macAddressB, to: end == 0 ? bed.macAddressB : bed.macAddressA)
                }
                let deadline = Deadline(seconds: 300)
                do {
                    while generators.contains(where: { !$0.done }) || received[end].receivedCount < 2 * perFlow
                        || completions[end].completed < 2 * ((perFlow + 31) / 32)
                    {
                        if deadline.passed {
                            failures.withLock { $0.append("end \(end) stalled: sent \(generators.map(\.sentFrames)), received \(received[end].receivedCount)") }
                            return
                        }
                        let (first, second) = completions[end].takeFree().partitioned { CompletionChecker.tagOf($0).stream == 2 * end }
                        generators[0].spare.append(contentsOf: first)
                        generators[1].spare.append(contentsOf: second)
                        for flow in 0..<2 {
                            // Each queue's veth ring holds 256: half the window per flow.
                            let peerSaw = Int(received[peer].nextExpected(stream: 2 * end + flow))
                            try generators[flow].step(receivedByPeer: peerSaw, window: vethQueueWindow / 2)
                        }
                        ends[end].poll()
                    }
                    for flow in 0..<2 { try generators[flow].returnSpares() }
                    for list in completions[end].takeFree() { try ends[end].returnList(list) }
                } catch {
                    failures.withLock { $0.append("end \(end): \(error)") }
                }
            }
            #expect(failures.withLock { $0 } == [])
            for end in 0..<2 {
                let checker = received[end]
                #expect(checker.receivedCount == 2 * perFlow, "end \(end)")
                for flow in 0..<2 {
                    #expect(checker.nextExpected(stream: 2 * (1 - end) + flow) == UInt64(perFlow), "end \(end) flow \(flow)")
                }
                #expect(checker.outOfOrder == 0 && checker.corrupted == 0 && checker.foreign == 0, "end \(end)")
                let state = completions[end].state.withLock { $0 }
                #expect(state.outOfOrder == 0, "completions in send order per flow at end \(end)")
                #expect(state.statuses == [.success: 2 * ((perFlow + 31) / 32)])
                // Both queues carried traffic: the flows went to one queue each.
                let queues = (ends[end].bindings[0] as! MultiQueuePort).bindings.map(\.statistics.send.packets)
                #expect(queues == [perFlow, perFlow], "end \(end): frames per queue")
                #expect(ends[end].layerStatistics.sendsOutstanding == 0 && ends[end].layerStatistics.receivesHeldAbove == 0)
            }
            for top in ends { top.close() }
            for top in ends {
                #expect(top.currentState == .closed)
                #expect(top.stack.layers.count == 4)
                #expect(top.poolStatus.allFramesHome, "\(top.poolStatus)")
            }
        }
    }

    @Test("pause, restart and close at the top of a stack reach every port below it; a port closed from under the stack closes it, with every send completed")
    func lifecycleThroughTheStack() throws {
        try VethTestbed.withVethTestbed(queues: 2) { bed in
            let completions = CompletionChecker()
            let top = try PriorityClassifier.open(
                over: MultiQueuePort.below(configuration(bed.interfaceA, bed.namespaceA), queues: 2, flowHash: streamFlowHash),
                onReceive: { try? $0.port.returnList($0.list) }, onSendComplete: completions.handle)
            let mux = top.bindings[0] as! MultiQueuePort
            top.pause(timeout: .milliseconds(100))
            #expect(mux.currentState == .paused)
            #expect(mux.bindings.allSatisfy { $0.currentState == .paused })
            top.restart()
            #expect(mux.bindings.allSatisfy { $0.currentState == .running })
            // The link goes down: sends queue below; then one queue's port is closed under the stack.
            try setLink(bed, end: "a", up: false)
            for n in 0..<8 {
                let list = try #require(try top.allocateList(packetCount: 4))
                try fill(list, stream: n % 2, firstSequence: UInt64(4 * (n / 2)), length: 64, from: bed.macAddressA, to: bed.macAddressB)
                try CompletionChecker.tag(list, stream: n % 2, number: UInt64(n / 2))
                try top.send(list)
            }
            mux.bindings[1].close(timeout: .milliseconds(20))
            let deadline = Deadline(seconds: 10)
            while top.currentState != .closed && !deadline.passed { top.poll() }
            #expect(top.currentState == .closed, "the stack closed when a port below it did")
            #expect(mux.currentState == .closed && mux.bindings.allSatisfy { $0.currentState == .closed })
            let state = completions.state.withLock { $0 }
            #expect(state.completed == 8, "every send came up once")
            #expect(state.outOfOrder == 0)
            #expect(state.statuses[.success] == nil, "the link was down: nothing went out")
            for list in completions.takeFree() { try top.returnList(list) }
            #expect(top.poolStatus.allFramesHome, "\(top.poolStatus)")
            try setLink(bed, end: "a", up: true)
        }
    }
}

/// Threads against a stack: run under ThreadSanitizer by `scripts/test`.
@Suite("Layer concurrency", .serialized)
struct LayerConcurrencyTests {
    @Test("three threads sending through a multi-queue port, two returning received lists to the stack above B, one polling both")
    func sendersThroughAStack() throws {
        try VethTestbed.withVethTestbed(queues: 2) { bed in
            var configurationA = PortConfiguration(interface: bed.interfaceA, networkNamespace: bed.namespaceA)
            configurationA.etherTypeFilter = TestFrame.etherType
            var configurationB = PortConfiguration(interface: bed.interfaceB, networkNamespace: bed.namespaceB)
            configurationB.etherTypeFilter = TestFrame.etherType
            let received = ReceiveChecker(handOff: true)
            let completions = CompletionChecker()
            let a = try MultiQueuePort.open(
                configurationA, queues: 2, flowHash: streamFlowHash, onReceive: { try? $0.port.returnList($0.list) },
                onSendComplete: completions.handle)
            let b = try FilterDriver.open(
                over: MultiQueuePort.below(configurationB, queues: 2, flowHash: streamFlowHash), onReceive: received.handle,
                onSendComplete: { _ in })
            defer {
                a.close()
                b.close()
            }
            let senders = 3
            let perSender = 20_000
            let total = senders * perSender
            let window = SharedWindow(size: vethQueueWindow)
            let sendersDone = ManagedAtomic<Int>(0)
            let failures = TestLock<[String]>([])
            runThreads(senders + 3) { index in
                let deadline = Deadline(seconds: 240)
                switch index {
                case 0..<senders:
                    var generator = Generator(
                        port: a, completions: CompletionChecker(), stream: index, total: perSender, batch: 32, from: bed.macAddressA,
                        to: bed.macAddressB)
                    defer { sendersDone.wrappingIncrement(ordering: .releasing) }
                    do {
                        while !generator.done {
                            if deadline.passed { failures.withLock { $0.append("sender \(index) stalled at \(generator.sentFrames)") }; return }
                            let mine = completions.state.withLock { state -> [PacketList] in
                                let (ours, others) = state.free.partitioned { CompletionChecker.tagOf($0).stream == index }
                                state.free = others
                                return ours
                            }
                            generator.spare.append(contentsOf: mine)
                            try generator.step(admit: window.admit)
                            a.poll()
                        }
                        for list in generator.spare { try a.returnList(list) }
                    } catch {
                        failures.withLock { $0.append("sender \(index): \(error)") }
                    }
                case senders, senders + 1:
                    while received.receivedCount < total || !(received.handOff!.withLock { $0.isEmpty }) {
                        if deadline.passed { failures.withLock { $0.append("returner stalled") }; return }
                        let lists = received.handOff!.withLock { queue -> [PacketList] in
                            defer { queue.removeAll() }
                            return queue
                        }
                        for list in lists {
                            let count = (try? list.count) ?? 0
                            do { try b.returnList(list) } catch { failures.withLock { $0.append("return: \(error)") } }
                            window.release(count)
                        }
                        if lists.isEmpty { sched_yield() }
                    }
                default:
                    while received.receivedCount < total || sendersDone.load(ordering: .acquiring) < senders {
                        if deadline.passed { failures.withLock { $0.append("poller stalled at \(received.receivedCount)") }; return }
                        b.poll()
                        a.poll()
                    }
                }
            }
            #expect(failures.withLock { $0 } == [])
            let missing = total - received.receivedCount
            #expect(missing == 0)
            #expect(received.outOfOrder == 0 && received.corrupted == 0)
            for stream in 0..<senders { #expect(received.nextExpected(stream: stream) == UInt64(perSender)) }
            let state = completions.state.withLock { $0 }
            #expect(state.outOfOrder == 0)
            #expect(state.statuses == [.success: senders * ((perSender + 31) / 32)])
            for list in completions.takeFree() { try a.returnList(list) }
            a.close()
            b.close()
            #expect(a.poolStatus.allFramesHome, "\(a.poolStatus)")
            #expect(b.poolStatus.allFramesHome, "\(b.poolStatus)")
        }
    }
}
