import AFXDP
import AFXDPTestbed
import Glibc
import Testing

/// Real AF_XDP sockets on a real veth pair, in namespaces each test makes and
/// removes. Serialized: the machines have two cores, and a traffic test
/// running beside another measures nothing but contention.
@Suite("Port traffic over veth", .serialized)
struct PortTrafficTests {
    @Test("1,000,000 frames A to B: none lost, duplicated, reordered or corrupted; every send completed once, in order")
    func millionFramesOneWay() throws {
        try VethTestbed.withVethTestbed { bed in
            let received = ReceiveChecker()
            let completions = CompletionChecker()
            let a = try openPort(bed, end: "a", onSendComplete: completions.handle)
            defer { a.close() }
            let b = try openPort(bed, end: "b", onReceive: received.handle)
            defer { b.close() }

            let total = 1_000_000
            var generator = Generator(port: a, completions: completions, total: total, batch: 64, from: bed.macAddressA, to: bed.macAddressB)
            let deadline = Deadline(seconds: 240)
            while !(generator.done && received.receivedCount >= total && completions.completed == generator.listNumber.asInt) {
                try #require(!deadline.passed, "traffic stalled: sent \(generator.sentFrames), received \(received.receivedCount)")
                try generator.step(receivedByPeer: received.receivedCount, window: vethQueueWindow)
                a.poll()
                b.poll()
            }
            try generator.returnSpares()

            #expect(received.receivedCount == total)
            #expect(received.nextExpected(stream: 0) == UInt64(total))
            #expect(received.outOfOrder == 0)
            #expect(received.corrupted == 0)
            #expect(received.foreign == 0)
            let state = completions.state.withLock { $0 }
            #expect(state.completed == total / 64)
            #expect(state.outOfOrder == 0)
            #expect(state.statuses == [.success: total / 64])
            #expect(a.statistics.send.packets == total)
            #expect(b.statistics.receive.packets == total)
            #expect(b.statistics.kernel.receiveDropped == 0)
            #expect(a.statistics.kernel.transmitInvalidDescriptors == 0)
            a.close()
            b.close()
            #expect(a.poolStatus.allFramesHome, "\(a.poolStatus)")
            #expect(b.poolStatus.allFramesHome, "\(b.poolStatus)")
        }
    }

    @Test("full duplex: 1,000,000 frames each way at once, each end on its own thread")
    func fullDuplex() throws {
        try VethTestbed.withVethTestbed { bed in
            let receivedAtA = ReceiveChecker(), receivedAtB = ReceiveChecker()
            let completionsA = CompletionChecker(), completionsB = CompletionChecker()
            let a = try openPort(bed, end: "a", onReceive: receivedAtA.handle, onSendComplete: completionsA.handle)
            defer { a.close() }
            let b = try openPort(bed, end: "b", onReceive: receivedAtB.handle, onSendComplete: completionsB.handle)
            defer { b.close() }
            let total = 1_000_000
            let failures = TestLock<[String]>([])
            let ends = [
                (a, completionsA, receivedAtB, receivedAtA, bed.macAddressA, bed.macAddressB),
                (b, completionsB, receivedAtA, receivedAtB, bed.macAddressB, bed.macAddressA),
            ]
            runThreads(2) { index in
                let (port, completions, peer, mine, from, to) = ends[index]
                var generator = Generator(port: port, completions: completions, total: total, batch: 64, from: from, to: to)
                let deadline = Deadline(seconds: 240)
                do {
                    while !(generator.done && mine.receivedCount >= total && completions.completed == generator.listNumber.asInt) {
                        if deadline.passed {
                            failures.withLock { $0.append("end \(index) stalled: sent \(generator.sentFrames), peer received \(peer.receivedCount), I received \(mine.receivedCount)") }
                            return
                        }
                        try generator.step(receivedByPeer: peer.receivedCount, window: vethQueueWindow)
                        port.poll()
                    }
                    try generator.returnSpares()
                } catch {
                    failures.withLock { $0.append("end \(index): \(error)") }
                }
            }
            #expect(failures.withLock { $0 } == [])
            for (name, checker) in [("A", receivedAtA), ("B", receivedAtB)] {
                #expect(checker.receivedCount == total, "at \(name)")
                #expect(checker.outOfOrder == 0, "at \(name)")
                #expect(checker.corrupted == 0, "at \(name)")
            }
            for completions in [completionsA, completionsB] {
                let state = completions.state.withLock { $0 }
                #expect(state.outOfOrder == 0)
                #expect(state.statuses == [.success: total / 64 + (total % 64 == 0 ? 0 : 1)])
            }
        }
    }

    @Test("a burst of 100,000 lists into a 64-slot TX ring: all accepted at once, all completed in order")
    func burstLargerThanRings() throws {
        try VethTestbed.withVethTestbed { bed in
            let received = ReceiveChecker()
            let completions = CompletionChecker()
            let lists = 100_000
            let a = try openPort(bed, end: "a", configure: {
                $0.transmitRingSize = 64
                $0.completionRingSize = 64
                $0.sendFrameCount = lists
                $0.frameSize = 2048
            }, onSendComplete: completions.handle)
            defer { a.close() }
            let b = try openPort(bed, end: "b", onReceive: received.handle)
            defer { b.close() }

            // With A's link down the kernel takes nothing: every list of the
            // burst is handed over in one go and must be accepted and queued
            // (the first was placed and kicked, which is how the port learnt
            // that the link was down; from then on it holds the rest).
            try setLink(bed, end: "a", up: false)
            for n in 0..<lists {
                let list = try #require(try a.allocateList(packetCount: 1))
                try fill(list, stream: 0, firstSequence: UInt64(n), length: 60, from: bed.macAddressA, to: bed.macAddressB)
                try CompletionChecker.tag(list, stream: 0, number: UInt64(n))
                try a.send(list)
            }
            #expect(a.statistics.send.queuedFrames == lists - 1, "all but the first are queued")
            #expect(completions.completed == 0)
            try setLink(bed, end: "a", up: true)
            let deadline = Deadline(seconds: 240)
            while completions.completed < lists || received.receivedCount < lists {
                try #require(!deadline.passed, "stalled: completed \(completions.completed), received \(received.receivedCount)")
                a.poll()
                b.poll()
            }
            let state = completions.state.withLock { $0 }
            #expect(state.completed == lists)
            #expect(state.outOfOrder == 0)
            #expect(state.statuses == [.success: lists])
            #expect(received.receivedCount == lists)
            #expect(received.outOfOrder == 0)
            #expect(received.corrupted == 0)
            #expect(a.statistics.send.queuedFrames == 0)
            for list in completions.takeFree() { try a.returnList(list) }
            a.close()
            #expect(a.poolStatus.allFramesHome)
        }
    }

    @Test("holding received lists starves the fill ring: reported, nothing corrupted, reception resumes on return")
    func holdingStarvesFillRing() throws {
        try VethTestbed.withVethTestbed { bed in
            let received = ReceiveChecker()
            received.holding.store(true, ordering: .relaxed)
            let completions = CompletionChecker()
            let a = try openPort(bed, end: "a", onSendComplete: completions.handle)
            defer { a.close() }
            let b = try openPort(bed, end: "b", configure: {
                $0.fillRingSize = 64
                $0.receiveRingSize = 64
                $0.receiveFrameCount = 128
                $0.receiveBatchSize = 16
            }, onReceive: received.handle)
            defer { b.close() }

            // Far more than B has frames for, while B holds everything.
            var generator = Generator(port: a, completions: completions, total: 20_000, batch: 16, from: bed.macAddressA, to: bed.macAddressB)
            let deadline = Deadline(seconds: 60)
            while !(generator.done && completions.completed == generator.listNumber.asInt) {
                try #require(!deadline.passed)
                try generator.step(receivedByPeer: 0, window: .max)
                a.poll()
                b.poll()
            }
            for _ in 0..<100 { b.poll(); usleep(100) }
            let heldFrames = received.held.withLock { $0.reduce(0) { $0 + ((try? $1.count) ?? 0) } }
            #expect(heldFrames == 128, "B can hold at most its 128 receive frames")
            #expect(received.receivedCount == 128)
            let statistics = b.statistics
            #expect(statistics.receive.lowResourceEvents > 0)
            #expect(received.lowResourceIndications > 0)
            #expect(statistics.kernel.fillRingEmpty > 0 || statistics.receive.dropped > 0, "\(statistics.kernel)")
            #expect(b.poolStatus.receiveFramesHeldByCaller == 128)
            // The engine did not touch the held frames while traffic went on:
            // each still holds what it held on arrival, intact.
            var sequencesNow: [UInt64] = []
            for list in received.held.withLock({ $0 }) {
                try list.packets.forEach { (packet: borrowing Packet) throws in
                    let parsed = try #require(TestFrame.parse(UnsafeRawBufferPointer(try packet.bytes)))
                    #expect(parsed.intact)
                    sequencesNow.append(parsed.sequence)
                }
            }
            #expect(sequencesNow == received.heldSequences)
            #expect(received.outOfOrder > 0, "frames were dropped while B held everything")

            // Return them: reception resumes.
            received.holding.store(false, ordering: .relaxed)
            try received.returnHeld(to: b)
            // Returned frames reach the fill ring on B's next pass.
            b.poll()
            #expect(b.poolStatus.receiveFramesHeldByCaller == 0)
            var more = Generator(port: a, completions: completions, stream: 1, total: 500, batch: 16, from: bed.macAddressA, to: bed.macAddressB)
            more.listNumber = 0
            let resumed = Deadline(seconds: 60)
            var streamOneReceived: UInt64 { received.nextExpected(stream: 1) }
            while streamOneReceived < 500 {
                try #require(!resumed.passed, "reception did not resume: \(streamOneReceived) of 500; A \(a.statistics); B \(b.statistics); B pool \(b.poolStatus)")
                try more.step(receivedByPeer: Int(streamOneReceived), window: 64)
                a.poll()
                b.poll()
            }
            #expect(received.corrupted == 0)
            try generator.returnSpares()
            try more.returnSpares()
        }
    }

    @Test("close with sends outstanding: each completes once, the pool is full again, no XDP program is left")
    func closeWithSendsOutstanding() throws {
        try VethTestbed.withVethTestbed { bed in
            let completions = CompletionChecker()
            let lists = 5_000
            let a = try openPort(bed, end: "a", configure: {
                $0.transmitRingSize = 64
                $0.completionRingSize = 64
                $0.sendFrameCount = lists * 2
                $0.frameSize = 2048
            }, onSendComplete: completions.handle)
            let b = try openPort(bed, end: "b")
            defer { b.close() }
            #expect(try hasXDPProgram(bed.interfaceA, namespace: bed.namespaceA))
            // With its interface down the kernel takes nothing from the TX
            // ring, so everything sent below is still queued or in flight at close.
            try setLink(bed, end: "a", up: false)
            for n in 0..<lists {
                let list = try #require(try a.allocateList(packetCount: 2))
                try fill(list, stream: 0, firstSequence: UInt64(2 * n), length: 64, from: bed.macAddressA, to: bed.macAddressB)
                try CompletionChecker.tag(list, stream: 0, number: UInt64(n))
                try a.send(list)
            }
            #expect(completions.completed == 0)
            #expect(a.statistics.send.queuedFrames == lists * 2 - 2, "all but the first list, whose kick found the link down")
            a.close(timeout: .milliseconds(200))
            let state = completions.state.withLock { $0 }
            #expect(state.completed == lists)
            #expect(state.outOfOrder == 0)
            #expect(state.statuses == [.closing: lists])
            #expect(state.free.allSatisfy { (try? $0.sentPacketCount) == 0 }, "the link was down: nothing went out")
            // Sending on a closed port is refused and the list stays the caller's.
            let free = completions.takeFree()
            #expect(throws: AFXDPError.portClosed) { try a.send(free[0]) }
            for list in free { try a.returnList(list) }
            #expect(a.poolStatus.allFramesHome, "\(a.poolStatus)")
            #expect(try !hasXDPProgram(bed.interfaceA, namespace: bed.namespaceA))
        }
    }

    @Test("pause completes queued and new sends with .paused, in order behind those in flight; restart resumes")
    func pauseAndRestart() throws {
        try VethTestbed.withVethTestbed { bed in
            let completions = CompletionChecker()
            let received = ReceiveChecker()
            let a = try openPort(bed, end: "a", configure: {
                $0.transmitRingSize = 64
                $0.completionRingSize = 64
                $0.sendFrameCount = 2048
            }, onSendComplete: completions.handle)
            defer { a.close() }
            let b = try openPort(bed, end: "b", onReceive: received.handle)
            defer { b.close() }
            // Interface down: the first list sits in the TX ring (its kick
            // found the link down), the rest queue in the engine.
            try setLink(bed, end: "a", up: false)
            for n in 0..<200 {
                let list = try #require(try a.allocateList(packetCount: 4))
                try fill(list, stream: 0, firstSequence: UInt64(4 * n), length: 64, from: bed.macAddressA, to: bed.macAddressB)
                try CompletionChecker.tag(list, stream: 0, number: UInt64(n))
                try a.send(list)
            }
            a.pause(timeout: .milliseconds(100))
            #expect(a.currentState == .paused)
            // The queued lists are paused but wait behind the one in flight: order is kept.
            #expect(completions.completed == 0)
            #expect(a.statistics.send.queuedFrames == 0)

            // A send while paused is refused the same way: completed with .paused, not thrown.
            let late = try #require(try a.allocateList(packetCount: 1))
            try fill(late, stream: 1, firstSequence: 0, length: 64, from: bed.macAddressA, to: bed.macAddressB)
            try CompletionChecker.tag(late, stream: 1, number: 0)
            try a.send(late)

            try setLink(bed, end: "a", up: true)
            let deadline = Deadline(seconds: 30)
            while completions.completed < 201 {
                try #require(!deadline.passed, "completed \(completions.completed) of 201")
                a.poll()
                b.poll()
                usleep(100)
            }
            let state = completions.state.withLock { $0 }
            #expect(state.outOfOrder == 0)
            #expect(state.statuses == [.success: 1, .paused: 200])
            #expect(state.free.prefix(1).allSatisfy { (try? $0.status) == .success && (try? $0.sentPacketCount) == 4 })
            #expect(state.free.dropFirst(1).allSatisfy { (try? $0.status) == .paused && (try? $0.sentPacketCount) == 0 })

            a.restart()
            #expect(a.currentState == .running)
            var generator = Generator(port: a, completions: completions, stream: 2, total: 640, batch: 64, from: bed.macAddressA, to: bed.macAddressB)
            generator.spare = completions.takeFree()
            let resumed = Deadline(seconds: 60)
            let before = received.receivedCount
            while received.nextExpected(stream: 2) < 640 {
                try #require(!resumed.passed)
                try generator.step(receivedByPeer: received.receivedCount - before, window: 256)
                a.poll()
                b.poll()
            }
            #expect(received.corrupted == 0)
            try generator.returnSpares()
        }
    }

    @Test("close after the port's namespace was deleted: everything completes, the pool is whole, nothing crashes")
    func closeAfterNamespaceDeleted() throws {
        try VethTestbed.withVethTestbed { bed in
            let completions = CompletionChecker()
            let a = try openPort(bed, end: "a", onSendComplete: completions.handle)
            try setLink(bed, end: "a", up: false)
            for n in 0..<100 {
                let list = try #require(try a.allocateList(packetCount: 2))
                try fill(list, stream: 0, firstSequence: UInt64(2 * n), length: 64, from: bed.macAddressA, to: bed.macAddressB)
                try CompletionChecker.tag(list, stream: 0, number: UInt64(n))
                try a.send(list)
            }
            // A test's clean-up on failure often deletes the namespace first.
            try runCommand(["ip", "netns", "del", bed.namespaceA])
            a.close(timeout: .milliseconds(100))
            let state = completions.state.withLock { $0 }
            #expect(state.completed == 100)
            #expect(state.statuses == [.closing: 100])
            for list in completions.takeFree() { try a.returnList(list) }
            #expect(a.poolStatus.allFramesHome, "\(a.poolStatus)")
        }
    }

    @Test("busy polling on, need_wakeup off (a kick every pass): traffic still arrives intact and in order")
    func busyPollWithoutNeedWakeup() throws {
        try VethTestbed.withVethTestbed { bed in
            let received = ReceiveChecker()
            let completions = CompletionChecker()
            let options: (inout PortConfiguration) -> Void = {
                $0.busyPoll = .init(timeoutMicroseconds: 20, budget: 64)
                $0.useNeedWakeup = false
            }
            let a = try openPort(bed, end: "a", configure: options, onSendComplete: completions.handle)
            defer { a.close() }
            let b = try openPort(bed, end: "b", configure: options, onReceive: received.handle)
            defer { b.close() }
            var generator = Generator(port: a, completions: completions, total: 20_000, batch: 64, from: bed.macAddressA, to: bed.macAddressB)
            let deadline = Deadline(seconds: 60)
            while received.receivedCount < 20_000 {
                try #require(!deadline.passed, "received \(received.receivedCount)")
                try generator.step(receivedByPeer: received.receivedCount, window: vethQueueWindow)
                a.poll()
                b.poll()
            }
            try generator.returnSpares()
            #expect(received.outOfOrder == 0)
            #expect(received.corrupted == 0)
            #expect(a.statistics.send.kicks > 0)
        }
    }

    @Test("close and reopen at once on the same queue, 20 times: the kernel's late release of the queue is waited out")
    func reopenRightAfterClose() throws {
        try VethTestbed.withVethTestbed { bed in
            for _ in 0..<20 {
                let port = try openPort(bed, end: "a")
                port.close()
            }
            let attached = try hasXDPProgram(bed.interfaceA, namespace: bed.namespaceA)
            #expect(!attached)
        }
    }

    @Test("ownThread: completions and indications arrive without the caller polling")
    func ownServiceThread() throws {
        try VethTestbed.withVethTestbed { bed in
            let received = ReceiveChecker()
            let completions = CompletionChecker()
            let a = try openPort(bed, end: "a", configure: { $0.ownThread = true }, onSendComplete: completions.handle)
            defer { a.close() }
            let b = try openPort(bed, end: "b", configure: { $0.ownThread = true }, onReceive: received.handle)
            defer { b.close() }
            let total = 50_000
            var generator = Generator(port: a, completions: completions, total: total, batch: 64, from: bed.macAddressA, to: bed.macAddressB)
            let deadline = Deadline(seconds: 120)
            while !(generator.done && received.receivedCount >= total && completions.completed == generator.listNumber.asInt) {
                try #require(!deadline.passed, "sent \(generator.sentFrames), received \(received.receivedCount)")
                if try generator.step(receivedByPeer: received.receivedCount, window: vethQueueWindow) == 0 { usleep(50) }
            }
            try generator.returnSpares()
            #expect(received.outOfOrder == 0)
            #expect(received.corrupted == 0)
            #expect(completions.state.withLock { $0.outOfOrder } == 0)
            a.close()
            b.close()
            #expect(a.poolStatus.allFramesHome)
            #expect(b.poolStatus.allFramesHome)
        }
    }

    @Test("two queues: a port per queue on each end, sharing one XDP program; each queue's frames reach its own socket")
    func twoQueues() throws {
        try VethTestbed.withVethTestbed(queues: 2) { bed in
            let receivedOn = [ReceiveChecker(), ReceiveChecker()]
            let completions = [CompletionChecker(), CompletionChecker()]
            var senders: [XDPPort] = []
            var receivers: [XDPPort] = []
            defer {
                for port in senders + receivers { port.close() }
            }
            for queue in 0..<2 {
                senders.append(try openPort(bed, end: "a", configure: { $0.queue = UInt32(queue) }, onSendComplete: completions[queue].handle))
                receivers.append(try openPort(bed, end: "b", configure: { $0.queue = UInt32(queue) }, onReceive: receivedOn[queue].handle))
            }
            let perQueue = 20_000
            var generators = (0..<2).map {
                Generator(port: senders[$0], completions: completions[$0], stream: $0, total: perQueue, batch: 32, from: bed.macAddressA, to: bed.macAddressB)
            }
            let deadline = Deadline(seconds: 120)
            while receivedOn.map(\.receivedCount).reduce(0, +) < 2 * perQueue {
                try #require(!deadline.passed, "received \(receivedOn.map(\.receivedCount))")
                for queue in 0..<2 {
                    try generators[queue].step(receivedByPeer: receivedOn[queue].receivedCount, window: vethQueueWindow / 2)
                    senders[queue].poll()
                    receivers[queue].poll()
                }
            }
            // A frame sent on queue q arrives on the peer's RX queue q, so each socket sees only its own stream.
            for queue in 0..<2 {
                #expect(receivedOn[queue].receivedCount == perQueue)
                #expect(receivedOn[queue].nextExpected(stream: queue) == UInt64(perQueue))
                #expect(receivedOn[queue].outOfOrder == 0)
                #expect(receivedOn[queue].corrupted == 0)
                try generators[queue].returnSpares()
            }
            #expect(try hasXDPProgram(bed.interfaceB, namespace: bed.namespaceB))
            receivers[0].close()
            #expect(try hasXDPProgram(bed.interfaceB, namespace: bed.namespaceB), "the other queue's port still uses the program")
            receivers[1].close()
            #expect(try !hasXDPProgram(bed.interfaceB, namespace: bed.namespaceB))
        }
    }
}

extension UInt64 {
    var asInt: Int { Int(self) }
}
