@testable import AFXDP
import AFXDPTestbed
import Atomics
import Glibc
import Testing

/// The deserialized contract, held to it by callers that use handles wrongly,
/// keep them too long, and call back in from their handlers. Each test here
/// failed on the engine as it was before (73f8b30), unless it says otherwise.
@Suite("Contract")
struct ContractTests {
    let macA = MACAddress(bytes: [2, 0, 0, 0, 0, 1])
    let macB = MACAddress(bytes: [2, 0, 0, 0, 0, 2])

    func frame(_ sequence: UInt64, length: Int = 64) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: length)
        bytes.withUnsafeMutableBytes { TestFrame.write(into: $0, length: length, sequence: sequence, source: macA, destination: macB) }
        return bytes
    }

    func smallConfiguration() -> PortConfiguration {
        var configuration = PortConfiguration(interface: "sim0")
        configuration.transmitRingSize = 64
        configuration.completionRingSize = 64
        configuration.fillRingSize = 64
        configuration.receiveRingSize = 64
        configuration.receiveBatchSize = 16
        return configuration
    }

    // MARK: 1. Handles that cannot lie

    @Test("a stale list handle throws on every accessor; a packet of a list returned mid-walk refuses every use and its slot's next owner is untouched")
    func staleHandles() throws {
        let (port, kernel) = try XDPPort.openSimulated(smallConfiguration(), onReceive: { _ in }, onSendComplete: { _ in })
        defer { port.close() }
        // 40 packets: more than a slot holds inline, so the list gets a large chunk.
        let first = try #require(try port.allocateList(packetCount: 40))
        try fill(first, stream: 0, firstSequence: 0, length: 60, from: macA, to: macB)
        var successor: PacketList?
        var walked = 0
        var refused: [AFXDPError] = []
        try first.packets.forEach { packet in
            walked += 1
            if walked == 1 {
                // Returned while a packet of it is in hand, and its slot and
                // large chunk handed straight to a new list.
                try port.returnList(first)
                successor = try port.allocateList(packetCount: 40)
            }
            do { try packet.setLength(10) } catch { refused.append(error as! AFXDPError) }
            #expect(throws: AFXDPError.listAlreadyReturned) { try packet.bytes }
        }
        #expect(refused == Array(repeating: .listAlreadyReturned, count: walked), "every write after the return was refused")
        let next = try #require(successor)
        #expect(next.slot == first.slot, "the slot was reused: a write through the stale packet would land in it")
        #expect(try next.packets.lengths == Array(repeating: 0, count: 40), "the new owner's packets are untouched")
        #expect(port.table.lists[Int(next.slot)].unsetLengths == 40)
        #expect(throws: AFXDPError.emptyFrame) { try port.send(next) }

        for access: (PacketList) throws -> Any in [
            { try $0.count }, { try $0.status }, { try $0.priority }, { try $0.sentPacketCount },
            { try $0.contextArea }, { try $0.packets }, { try $0.byteCount }, { try $0.setPriority(3) },
        ] {
            #expect(throws: AFXDPError.listAlreadyReturned) { _ = try access(first) }
        }
        #expect(!first.isOwnedByCaller)

        // Queued (the kernel takes nothing): the engine's, so not the caller's to change.
        try fill(next, stream: 0, firstSequence: 0, length: 60, from: macA, to: macB)
        try port.send(next)
        #expect(throws: AFXDPError.listNotOwnedByCaller) { try next.setPriority(3) }
        #expect(throws: AFXDPError.listNotOwnedByCaller) { try next.packets }
        #expect(throws: AFXDPError.listNotOwnedByCaller) { try next.count }
        #expect(port.table.lists[Int(next.slot)].priority == 0)
        kernel.transmit()
        port.poll()
        #expect(try next.status == .success)
        #expect(port.statistics.kernel.transmitInvalidDescriptors == 0)
        try port.returnList(next)
        #expect(port.poolStatus.allFramesHome && port.poolStatus.allLargeChunksHome)
    }

    // MARK: 2. Handles and views that outlive what they point into
    // (run under AddressSanitizer by scripts/test)

    @Test("a list handle kept after its port is gone stays readable: no freed or unmapped memory is read")
    func handleOutlivesPort() throws {
        weak var weakPort: XDPPort?
        let kept: PacketList
        do {
            let (port, _) = try XDPPort.openSimulated(smallConfiguration(), onReceive: { _ in }, onSendComplete: { _ in })
            weakPort = port
            kept = try #require(try port.allocateList(packetCount: 3))
            try fill(kept, stream: 0, firstSequence: 7, length: 100, from: macA, to: macB)
            port.close()
        }
        #expect(weakPort == nil, "the port itself is gone")
        // Handles compare, hash and read as before: the pool and the UMEM live with them.
        #expect(kept == kept)
        #expect(Set([kept, kept]).count == 1)
        #expect(try kept.count == 3)
        var sequences: [UInt64] = []
        try kept.packets.forEach { packet in
            let parsed = try #require(TestFrame.parse(UnsafeRawBufferPointer(try packet.bytes)))
            #expect(parsed.intact)
            sequences.append(parsed.sequence)
        }
        #expect(sequences == [7, 8, 9])
    }

    @Test("a completion batch kept past its handler reads as empty; an indication kept past its handler stays whole")
    func viewsOutliveTheirHandler() throws {
        final class Kept: @unchecked Sendable {
            var completions: SendCompletions?
            var indication: ReceiveIndication?
        }
        let kept = Kept()
        let (port, kernel) = try XDPPort.openSimulated(
            smallConfiguration(), loopback: true,
            onReceive: { kept.indication = $0 },
            onSendComplete: { batch in
                #expect(batch.isValid && batch.count == 1)
                kept.completions = batch
            })
        let list = try #require(try port.allocateList(packetCount: 1))
        try fill(list, stream: 0, firstSequence: 0, length: 64, from: macA, to: macB)
        try port.send(list)
        kernel.transmit()
        port.poll()
        let batch = try #require(kept.completions)
        #expect(!batch.isValid)
        #expect(batch.count == 0)
        #expect(Array(batch).isEmpty, "a stale view yields nothing, and reads nothing the next delivery wrote")
        let indication = try #require(kept.indication)
        #expect(try indication.list.count == 1)
        try indication.port.returnList(indication.list)
        try port.returnList(list)
        port.close()
        #expect(port.poolStatus.allFramesHome)
        // Both views hold the port, and the port holds the handlers that hold
        // `kept`: a cycle the caller made, so the caller breaks it.
        kept.completions = nil
        kept.indication = nil
    }

    // MARK: 3. Where handlers run

    @Test("no handler runs inside send or returnList: completions wait for poll")
    func noHandlerInsideSend() throws {
        let insideCall = ManagedAtomic<Bool>(false)
        let handlerCallsInsideSend = ManagedAtomic<Int>(0)
        let deliveries = ManagedAtomic<Int>(0)
        let (port, kernel) = try XDPPort.openSimulated(
            smallConfiguration(),
            onReceive: { _ in if insideCall.load(ordering: .relaxed) { handlerCallsInsideSend.wrappingIncrement(ordering: .relaxed) } },
            onSendComplete: { batch in
                if insideCall.load(ordering: .relaxed) { handlerCallsInsideSend.wrappingIncrement(ordering: .relaxed) }
                deliveries.wrappingIncrement(ordering: .relaxed)
                for list in batch { try? batch.port.returnList(list) }
            })
        defer { port.close() }
        for n in 0..<100 {
            let list = try #require(try port.allocateList(packetCount: 2))
            try fill(list, stream: 0, firstSequence: UInt64(2 * n), length: 64, from: macA, to: macB)
            // Completions of earlier sends are waiting in the ring when this send runs.
            kernel.transmit()
            insideCall.store(true, ordering: .relaxed)
            try port.send(list)
            insideCall.store(false, ordering: .relaxed)
            if n % 8 == 7 { port.poll() }
        }
        #expect(handlerCallsInsideSend.load(ordering: .relaxed) == 0)
        kernel.transmit()
        port.poll()
        port.poll()
        #expect(deliveries.load(ordering: .relaxed) >= 1)
        #expect(port.statistics.send.completedLists == 100)
    }

    @Test("a completion handler that resends every list cannot keep poll from returning: one delivery per poll")
    func resendingHandlerIsBounded() throws {
        let deliveriesThisPoll = ManagedAtomic<Int>(0)
        let resent = ManagedAtomic<Int>(0)
        let (port, kernel) = try XDPPort.openSimulated(
            smallConfiguration(), onReceive: { _ in },
            onSendComplete: { batch in
                deliveriesThisPoll.wrappingIncrement(ordering: .relaxed)
                for list in batch {
                    if (try? batch.port.send(list)) != nil {
                        resent.wrappingIncrement(ordering: .relaxed)
                    } else {
                        try? batch.port.returnList(list)  // refused once the port closes
                    }
                }
            })
        for n in 0..<16 {
            let list = try #require(try port.allocateList(packetCount: 4))
            try fill(list, stream: 0, firstSequence: UInt64(4 * n), length: 64, from: macA, to: macB)
            try port.send(list)
        }
        // The kernel completes everything it is given, as fast as it can, on a thread of its own.
        let stop = ManagedAtomic<Bool>(false)
        let mostPerPoll = ManagedAtomic<Int>(0)
        let polls = ManagedAtomic<Int>(0)
        runThreads(2) { index in
            if index == 0 {
                while !stop.load(ordering: .relaxed) { kernel.transmit() }
                return
            }
            let deadline = Deadline(seconds: 2)
            while !deadline.passed, resent.load(ordering: .relaxed) < 200_000 {
                deliveriesThisPoll.store(0, ordering: .relaxed)
                port.poll()
                let delivered = deliveriesThisPoll.load(ordering: .relaxed)
                if delivered > mostPerPoll.load(ordering: .relaxed) { mostPerPoll.store(delivered, ordering: .relaxed) }
                polls.wrappingIncrement(ordering: .relaxed)
            }
            stop.store(true, ordering: .relaxed)
        }
        #expect(mostPerPoll.load(ordering: .relaxed) <= 1, "at most one delivery per poll, whatever the handler does")
        #expect(resent.load(ordering: .relaxed) > 1_000, "lists kept going round (\(polls.load(ordering: .relaxed)) polls)")
        port.close()
        #expect(port.poolStatus.allFramesHome)
    }

    // MARK: 4. restart ends a pause in progress

    @Test("restart during a pause that is waiting for the kernel: the pause returns, and sends after restart go out .success")
    func restartEndsPause() throws {
        final class Statuses: @unchecked Sendable {
            let lock = TestLock<[SendStatus]>([])
        }
        let statuses = Statuses()
        let (port, kernel) = try XDPPort.openSimulated(
            smallConfiguration(), onReceive: { _ in },
            onSendComplete: { batch in for list in batch { statuses.lock.withLock { $0.append((try? list.status) ?? .pending) } } })
        kernel.completesOnTransmit = false
        // 64 packets: the whole TX ring; the kernel takes them and completes nothing.
        let first = try #require(try port.allocateList(packetCount: 64))
        try fill(first, stream: 0, firstSequence: 0, length: 64, from: macA, to: macB)
        try port.send(first)
        kernel.transmit()
        let pauseTook = ManagedAtomic<Int>(-1)
        let second = try #require(try port.allocateList(packetCount: 4))
        try fill(second, stream: 0, firstSequence: 64, length: 64, from: macA, to: macB)
        runThreads(2) { index in
            if index == 0 {
                let start = ContinuousClock.now
                port.pause(timeout: .seconds(10))
                pauseTook.store(Int((ContinuousClock.now - start).components.seconds), ordering: .relaxed)
            } else {
                usleep(100_000)
                port.restart()
                // Sent after the restart, while the pause may still be draining.
                try? port.send(second)
                usleep(100_000)
            }
        }
        #expect(pauseTook.load(ordering: .relaxed) < 5, "the pause ended with the restart, not at its 10 s timeout")
        kernel.completesOnTransmit = true
        let deadline = Deadline(seconds: 10)
        while statuses.lock.withLock({ $0.count }) < 2, !deadline.passed {
            kernel.complete()
            kernel.transmit()
            port.poll()
        }
        #expect(statuses.lock.withLock { $0 } == [.success, .success])
        port.close()
    }

    // MARK: 5. No send stranded by close

    @Test("a send between its admission and its mailbox push while close tears down: completed once, or refused and kept")
    func sendRacingTeardown() throws {
        let completed = TestLock<[PacketList]>([])
        let (port, _) = try XDPPort.openSimulated(
            smallConfiguration(), onReceive: { _ in },
            onSendComplete: { batch in completed.withLock { $0.append(contentsOf: batch) } })
        let list = try #require(try port.allocateList(packetCount: 2))
        try fill(list, stream: 0, firstSequence: 0, length: 64, from: macA, to: macB)
        let slowThread = ManagedAtomic<UInt>(0)
        XDPPort.testHookBeforePush = {
            // Only the sending thread below waits here: long enough for close to begin its teardown.
            if slowThread.load(ordering: .relaxed) == UInt(pthread_self()) { usleep(200_000) }
        }
        defer { XDPPort.testHookBeforePush = nil }
        let outcome = TestLock<AFXDPError?>(nil)
        runThreads(2) { index in
            if index == 0 {
                slowThread.store(UInt(pthread_self()), ordering: .relaxed)
                do { try port.send(list) } catch { outcome.withLock { $0 = error as? AFXDPError } }
            } else {
                usleep(50_000)
                port.close(timeout: .milliseconds(10))
            }
        }
        #expect(port.currentState == .closed)
        let refused = outcome.withLock { $0 }
        let completions = completed.withLock { $0 }
        if refused == nil {
            #expect(completions == [list], "accepted: completed exactly once")
            #expect(try list.status == .closing)
        } else {
            #expect(refused == .portClosed)
            #expect(completions.isEmpty)
        }
        #expect(list.isOwnedByCaller)
        try port.returnList(list)
        #expect(port.poolStatus.allFramesHome)
    }

    // MARK: 6. What close says was sent

    @Test("close counts what the kernel took as sent, whatever order its completions came in, and what it never took as unsent")
    func closeCountsWhatTheKernelTook() throws {
        let completed = TestLock<[PacketList]>([])
        var configuration = smallConfiguration()
        configuration.transmitRingSize = 8
        configuration.completionRingSize = 16
        let (port, kernel) = try XDPPort.openSimulated(
            configuration, onReceive: { _ in },
            onSendComplete: { batch in completed.withLock { $0.append(contentsOf: batch) } })
        kernel.completesOnTransmit = false
        // A: 8 packets, all taken by the kernel; only its last 4 complete (copy mode
        // writes completions when each skb is freed, in any order).
        let a = try #require(try port.allocateList(packetCount: 8))
        try fill(a, stream: 0, firstSequence: 0, length: 64, from: macA, to: macB)
        try port.send(a)
        #expect(kernel.transmit() == 8)
        #expect(kernel.complete(maximum: 4, order: .newestFirst) == 4)
        // B: 6 packets, of which the kernel takes 2; 6 are placed (the TX ring has room again).
        let b = try #require(try port.allocateList(packetCount: 6))
        try fill(b, stream: 0, firstSequence: 8, length: 64, from: macA, to: macB)
        try port.send(b)
        port.poll()
        #expect(kernel.transmit(maximum: 2) == 2)
        port.close(timeout: .milliseconds(20))
        let lists = completed.withLock { $0 }
        #expect(lists == [a, b])
        #expect(try a.status == .closing)
        #expect(try a.sentPacketCount == 8, "the kernel took all 8: none is to be sent again")
        #expect(try b.status == .closing)
        #expect(try b.sentPacketCount == 2, "the kernel took 2; the rest never left the TX ring")
        for list in lists { try port.returnList(list) }
        #expect(port.poolStatus.allFramesHome)
    }

    // MARK: 7. Re-entrancy at any depth

    @Test("A's handler polls B and B's handler closes A: no hang; A closes when A's poll unwinds")
    func closeTwoLevelsDown() throws {
        final class Ports: @unchecked Sendable { var a: XDPPort?; var b: XDPPort? }
        let ports = Ports()
        let (a, kernelA) = try XDPPort.openSimulated(
            smallConfiguration(), onReceive: { indication in
                try? indication.port.returnList(indication.list)
                ports.b?.poll()
            }, onSendComplete: { _ in })
        let (b, kernelB) = try XDPPort.openSimulated(
            smallConfiguration(), onReceive: { indication in
                try? indication.port.returnList(indication.list)
                ports.a?.close()
            }, onSendComplete: { _ in })
        ports.a = a
        ports.b = b
        let bytes = frame(1)
        _ = bytes.withUnsafeBytes { kernelB.deliver($0) }
        _ = bytes.withUnsafeBytes { kernelA.deliver($0) }
        a.poll()
        #expect(a.currentState == .closed, "the close asked two handlers down finished before A's poll returned")
        #expect(a.poolStatus.allFramesHome)
        #expect(b.currentState == .running)
        ports.a = nil
        ports.b = nil
        b.close()
    }

    @Test("two threads, each in one port's handler, closing the other port: neither waits for the other")
    func crossedCloses() async {
        await #expect(processExitsWith: .success) {
            // A watchdog: a hang ends the child with a failure instead of hanging the run.
            detachThread { sleep(20); exit(3) }
            final class Ports: @unchecked Sendable { var a: XDPPort?; var b: XDPPort? }
            let ports = Ports()
            let entered = ManagedAtomic<Int>(0)
            func onReceive(closing other: @escaping @Sendable () -> XDPPort?) -> @Sendable (ReceiveIndication) -> Void {
                { indication in
                    try? indication.port.returnList(indication.list)
                    // Both handlers run at once, then each closes the other's port.
                    entered.wrappingIncrement(ordering: .relaxed)
                    while entered.load(ordering: .relaxed) < 2 { sched_yield() }
                    other()?.close()
                }
            }
            var configuration = PortConfiguration(interface: "sim0")
            configuration.receiveBatchSize = 1
            let (a, kernelA) = try! XDPPort.openSimulated(configuration, onReceive: onReceive { ports.b }, onSendComplete: { _ in })
            let (b, kernelB) = try! XDPPort.openSimulated(configuration, onReceive: onReceive { ports.a }, onSendComplete: { _ in })
            ports.a = a
            ports.b = b
            let bytes = [UInt8](repeating: 1, count: 64)
            _ = bytes.withUnsafeBytes { kernelA.deliver($0) }
            _ = bytes.withUnsafeBytes { kernelB.deliver($0) }
            runThreads(2) { index in
                let port = index == 0 ? a : b
                while port.currentState != .closed { port.poll() }
            }
            exit(a.currentState == .closed && b.currentState == .closed ? 0 : 4)
        }
    }

    // MARK: 9. A completion ring that lies

    @Test("completions the engine never asked for (a frame not sent, an address outside the UMEM, a duplicate) are counted and ignored")
    func unexpectedCompletions() throws {
        let completed = ManagedAtomic<Int>(0)
        let (port, kernel) = try XDPPort.openSimulated(
            smallConfiguration(), onReceive: { _ in },
            onSendComplete: { batch in
                for list in batch {
                    completed.wrappingIncrement(ordering: .relaxed)
                    try? batch.port.returnList(list)
                }
            })
        defer { port.close() }
        kernel.completesOnTransmit = false
        let list = try #require(try port.allocateList(packetCount: 2))
        try fill(list, stream: 0, firstSequence: 0, length: 64, from: macA, to: macB)
        let frames = try list.packets.frameAddresses
        try port.send(list)
        kernel.transmit()
        #expect(kernel.injectCompletion(0), "receive frame 0: never sent")
        #expect(kernel.injectCompletion(UInt64(port.umem.frameCount) * UInt64(port.umem.frameSize) + 4096), "outside the UMEM")
        #expect(kernel.injectCompletion(frames[0]), "one of the list's frames, completed before the kernel did")
        port.poll()
        #expect(completed.load(ordering: .relaxed) == 0, "the list still has a frame out")
        kernel.complete()
        port.poll()
        #expect(completed.load(ordering: .relaxed) == 1, "completed once")
        #expect(port.statistics.send.invalidCompletions == 3, "\(port.statistics.send)")
    }

    // MARK: 10. Caller mistakes throw; the process lives

    @Test("caller mistakes throw with what to do: list sizes, priority, allocating on a closed port; close and pause from a handler do not trap")
    func callerMistakesThrow() throws {
        let (port, kernel) = try XDPPort.openSimulated(
            smallConfiguration(),
            onReceive: { indication in
                try? indication.port.returnList(indication.list)
                indication.port.pause()
                indication.port.close()
            }, onSendComplete: { _ in })
        let maximum = port.sendFrameCount
        #expect(throws: AFXDPError.invalidPacketCount(requested: 0, maximum: maximum)) { try port.allocateList(packetCount: 0) }
        #expect(throws: AFXDPError.invalidPacketCount(requested: 1_000_000, maximum: maximum)) {
            try port.allocateList(packetCount: 1_000_000)
        }
        #expect("\(AFXDPError.invalidPacketCount(requested: 1_000_000, maximum: maximum))".contains("sendFrameCount"))
        let list = try #require(try port.allocateList(packetCount: 1))
        try fill(list, stream: 0, firstSequence: 0, length: 64, from: macA, to: macB)
        #expect(throws: AFXDPError.priorityOutOfRange(8)) { try list.setPriority(8) }
        #expect(throws: AFXDPError.priorityOutOfRange(-1)) { try list.setPriority(-1) }
        try list.setPriority(7)
        #expect(try list.priority == 7)
        // Close from the port's own handler: the close finishes as the poll unwinds.
        let bytes = frame(1)
        _ = bytes.withUnsafeBytes { kernel.deliver($0) }
        port.poll()
        #expect(port.currentState == .closed)
        #expect(throws: AFXDPError.portClosed) { try port.allocateList(packetCount: 1) }
        #expect(throws: AFXDPError.portClosed) { try port.send(list) }
        try port.returnList(list)
        #expect(port.poolStatus.allFramesHome)
    }
}

extension PacketList.Packets {
    /// The UMEM addresses the packets' descriptors carry.
    var frameAddresses: [UInt64] {
        get throws {
            var addresses: [UInt64] = []
            try forEach { packet in addresses.append(try packet.frameAddress) }
            return addresses
        }
    }
}

/// The contract on real sockets: a veth pair in namespaces the test makes.
@Suite("Contract over veth", .serialized)
struct ContractOverVethTests {
    @Test("ownThread: the port's own thread runs its handlers in the caller's network namespace, not the interface's")
    func serviceThreadNamespace() throws {
        try VethTestbed.withVethTestbed { bed in
            let seen = TestLock<String?>(nil)
            let callers = try networkNamespaceOfThisThread()
            let a = try openPort(bed, end: "a", configure: { $0.ownThread = true }, onReceive: { indication in
                let namespace = try? networkNamespaceOfThisThread()
                seen.withLock { $0 = namespace }
                try? indication.port.returnList(indication.list)
            })
            defer { a.close() }
            let b = try openPort(bed, end: "b")
            defer { b.close() }
            let list = try #require(try b.allocateList(packetCount: 1))
            try fill(list, stream: 0, firstSequence: 0, length: 64, from: bed.macAddressB, to: bed.macAddressA)
            try b.send(list)
            let deadline = Deadline(seconds: 10)
            while seen.withLock({ $0 }) == nil, !deadline.passed {
                b.poll()
                usleep(100)
            }
            #expect(seen.withLock { $0 } == callers, "the handler ran in \(seen.withLock { $0 } ?? "no namespace"); the caller is in \(callers)")
        }
    }

    @Test("a completion handler that resends every list keeps A busy sending, and A still receives, in order, every frame B sends it")
    func resendingHandlerStillReceives() throws {
        try VethTestbed.withVethTestbed { bed in
            let fromB = ReceiveChecker()
            let keepResending = ManagedAtomic<Bool>(true)
            let resent = ManagedAtomic<Int>(0)
            let deliveriesThisPoll = ManagedAtomic<Int>(0)
            let a = try openPort(bed, end: "a", onReceive: fromB.handle, onSendComplete: { batch in
                deliveriesThisPoll.wrappingIncrement(ordering: .relaxed)
                for list in batch {
                    if keepResending.load(ordering: .relaxed), (try? batch.port.send(list)) != nil {
                        resent.wrappingIncrement(ordering: .relaxed)
                    } else {
                        try? batch.port.returnList(list)
                    }
                }
            })
            defer { a.close() }
            let completionsB = CompletionChecker()
            let b = try openPort(bed, end: "b", onSendComplete: completionsB.handle)
            defer { b.close() }
            // A's flood: 32 lists of 64 going round for as long as B sends.
            for n in 0..<32 {
                let list = try #require(try a.allocateList(packetCount: 64))
                try fill(list, stream: 1, firstSequence: UInt64(64 * n), length: 64, from: bed.macAddressA, to: bed.macAddressB)
                try a.send(list)
            }
            let total = 100_000
            let failures = TestLock<[String]>([])
            let mostPerPoll = ManagedAtomic<Int>(0)
            runThreads(2) { index in
                let deadline = Deadline(seconds: 120)
                if index == 0 {
                    while fromB.receivedCount < total {
                        if deadline.passed { failures.withLock { $0.append("A received \(fromB.receivedCount) of \(total)") }; break }
                        deliveriesThisPoll.store(0, ordering: .relaxed)
                        a.poll()
                        let delivered = deliveriesThisPoll.load(ordering: .relaxed)
                        if delivered > mostPerPoll.load(ordering: .relaxed) { mostPerPoll.store(delivered, ordering: .relaxed) }
                    }
                    keepResending.store(false, ordering: .relaxed)
                    return
                }
                var generator = Generator(port: b, completions: completionsB, total: total, batch: 32, from: bed.macAddressB, to: bed.macAddressA)
                do {
                    while !generator.done || completionsB.completed < Int(generator.listNumber) {
                        if deadline.passed { failures.withLock { $0.append("B stalled at \(generator.sentFrames)") }; break }
                        try generator.step(receivedByPeer: fromB.receivedCount, window: vethQueueWindow)
                        b.poll()
                    }
                    try generator.returnSpares()
                } catch {
                    failures.withLock { $0.append("B: \(error)") }
                }
            }
            #expect(failures.withLock { $0 } == [])
            #expect(mostPerPoll.load(ordering: .relaxed) <= 1, "one delivery per poll")
            #expect(resent.load(ordering: .relaxed) > 0)
            #expect(fromB.receivedCount == total)
            #expect(fromB.outOfOrder == 0)
            #expect(fromB.corrupted == 0)
            #expect(fromB.nextExpected(stream: 0) == UInt64(total))
            // A's lists still going round are completed and returned by its close.
            a.close()
            #expect(a.poolStatus.allFramesHome, "\(a.poolStatus)")
        }
    }
}

/// The network namespace the calling thread is in, as the kernel names it ("net:[4026531840]").
func networkNamespaceOfThisThread() throws -> String {
    var buffer = [CChar](repeating: 0, count: 64)
    let length = readlink("/proc/thread-self/ns/net", &buffer, buffer.count - 1)
    guard length > 0 else { throw TestbedError(message: "readlink /proc/thread-self/ns/net: errno \(errno)") }
    return String(decoding: buffer.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
