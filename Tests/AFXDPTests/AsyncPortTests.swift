import AFXDP
import AFXDPTestbed
import Atomics
import Foundation  // on purpose: the engine's names must not clash with Foundation's (its `Port`)
import Glibc
import Testing

/// The async face (`AsyncPort`) on a real veth pair: received lists as an
/// `AsyncSequence`, awaited and forgotten sends, back-pressure, cancellation
/// and close, from tasks and actors under strict concurrency.
@Suite("AsyncPort over veth", .serialized)
struct AsyncPortTests {
    static func configuration(_ bed: VethTestbed, end: Character, _ configure: (inout PortConfiguration) -> Void = { _ in }) -> PortConfiguration {
        var configuration = PortConfiguration(
            interface: end == "a" ? bed.interfaceA : bed.interfaceB,
            networkNamespace: end == "a" ? bed.namespaceA : bed.namespaceB)
        configuration.etherTypeFilter = TestFrame.etherType
        configure(&configuration)
        return configuration
    }

    /// Fills a list with frames `first`, `first + 1`, ... of `length` bytes.
    static func fill(_ list: PacketList, first: UInt64, length: Int = 60, from: MACAddress, to: MACAddress) throws {
        var sequence = first
        try list.packets.forEach { packet throws(AFXDPError) in
            TestFrame.write(into: try packet.buffer, length: length, sequence: sequence, source: from, destination: to)
            try packet.setLength(length)
            sequence += 1
        }
    }

    /// Takes received lists until `total` frames have arrived, checking that
    /// each is intact and the next in order, and returns each list.
    static func consume(_ port: AsyncPort, total: Int, counter: ManagedAtomic<Int>) async throws -> (inOrder: Int, bad: Int) {
        var expected: UInt64 = 0
        var bad = 0
        var received = 0
        for await indication in port.received {
            try indication.list.packets.forEach { packet throws(AFXDPError) in
                let frame = UnsafeRawBufferPointer(try packet.bytes)
                if let parsed = TestFrame.parse(frame), parsed.intact, parsed.sequence == expected {
                    expected += 1
                } else {
                    bad += 1
                }
            }
            received += try indication.list.count
            try port.returnList(indication.list)
            counter.store(received, ordering: .releasing)
            if received >= total { break }
        }
        return (Int(expected), bad)
    }

    @Test("20,000 frames A to B: awaited and forgotten sends complete once, in order; every frame arrives intact, in order; every frame home")
    func traffic() async throws {
        try await VethTestbed.withVethTestbed { bed in
            let a = try AsyncPort.open(Self.configuration(bed, end: "a"))
            let b = try AsyncPort.open(Self.configuration(bed, end: "b"))
            let total = 20_000, perList = 50
            let received = ManagedAtomic<Int>(0)
            let consumer = Task { try await Self.consume(b, total: total, counter: received) }

            var sequence: UInt64 = 0
            // The first 20 lists awaited one by one: each returns its status.
            for _ in 0..<20 {
                let list = try #require(try a.allocateList(packetCount: perList))
                try Self.fill(list, first: sequence, from: bed.macAddressA, to: bed.macAddressB)
                sequence += UInt64(perList)
                #expect(try await a.send(list) == .success)
                try a.returnList(list)
            }
            // The rest fired and forgotten; completions come on their own sequence.
            let sentOrder = TestLock<[PacketList]>([])
            let forgotten = total / perList - 20
            let completionsTask = Task { () -> (count: Int, outOfOrder: Int, statuses: [SendStatus: Int]) in
                var count = 0, outOfOrder = 0
                var statuses: [SendStatus: Int] = [:]
                for await completed in a.completions {
                    let expected = sentOrder.withLock { $0[count] }
                    if completed.list != expected { outOfOrder += 1 }
                    statuses[completed.status, default: 0] += 1
                    #expect(completed.sentPacketCount == perList)
                    count += 1
                    try? a.returnList(completed.list)
                    if count == forgotten { break }
                }
                return (count, outOfOrder, statuses)
            }
            let deadline = Deadline(seconds: 120)
            for _ in 0..<forgotten {
                // A window below what veth queues for a busy peer.
                while Int(sequence) - received.load(ordering: .acquiring) > vethQueueWindow - perList {
                    try #require(!deadline.passed, "stalled at \(sequence) sent, \(received.load(ordering: .acquiring)) received")
                    try await Task.sleep(for: .microseconds(50))
                }
                var list: PacketList?
                while list == nil {
                    list = try a.allocateList(packetCount: perList)
                    if list == nil { try await Task.sleep(for: .microseconds(50)) }
                }
                try Self.fill(list!, first: sequence, from: bed.macAddressA, to: bed.macAddressB)
                sequence += UInt64(perList)
                sentOrder.withLock { $0.append(list!) }
                try a.sendAndForget(list!)
            }
            let (inOrder, bad) = try await consumer.value
            let completions = await completionsTask.value
            #expect(inOrder == total)
            #expect(bad == 0)
            #expect(completions.count == forgotten)
            #expect(completions.outOfOrder == 0)
            #expect(completions.statuses == [.success: forgotten])
            #expect(a.port.statistics.send.packets == total)
            await a.close()
            await b.close()
            #expect(a.isClosed && b.isClosed)
            #expect(a.port.poolStatus.allFramesHome, "\(a.port.poolStatus)")
            #expect(b.port.poolStatus.allFramesHome, "\(b.port.poolStatus)")
        }
    }

    @Test("back-pressure: a consumer that does not read holds receive below; frames wait in the RX ring, none is lost, all arrive in order once read")
    func backPressure() async throws {
        try await VethTestbed.withVethTestbed { bed in
            let a = try AsyncPort.open(Self.configuration(bed, end: "a"))
            let buffer = 4
            let b = try AsyncPort.open(Self.configuration(bed, end: "b") { $0.receiveBatchSize = 16 }, receiveBuffer: buffer)
            // 2,000 frames, in windows small enough for veth, while B reads nothing.
            let total = 2_000, perList = 40
            var sequence: UInt64 = 0
            while Int(sequence) < total {
                let list = try #require(try a.allocateList(packetCount: perList))
                try Self.fill(list, first: sequence, from: bed.macAddressA, to: bed.macAddressB)
                sequence += UInt64(perList)
                #expect(try await a.send(list) == .success)
                try a.returnList(list)
                // Let B's side take what it will before the next list.
                try await Task.sleep(for: .milliseconds(2))
            }
            try await Task.sleep(for: .milliseconds(100))
            // What B's consumer was given is bounded by the buffer (a pass may
            // add the few lists it had already taken); the rest waits in the kernel.
            let held = b.port.poolStatus.receiveFramesHeldByCaller
            #expect(held <= (buffer + 4) * 16, "held \(held) frames")
            #expect(b.port.statistics.receive.packets < total, "receive was not held")
            // Reading now brings every frame, in order, none dropped.
            let counter = ManagedAtomic<Int>(0)
            let (inOrder, bad) = try await Self.consume(b, total: total, counter: counter)
            #expect(inOrder == total)
            #expect(bad == 0)
            #expect(b.port.statistics.kernel.receiveDropped == 0)
            await a.close()
            await b.close()
            #expect(b.port.poolStatus.allFramesHome, "\(b.port.poolStatus)")
        }
    }

    @Test("cancellation: a cancelled consumer's loop ends; lists waiting when the port closes are returned; every frame home")
    func cancellation() async throws {
        try await VethTestbed.withVethTestbed { bed in
            let a = try AsyncPort.open(Self.configuration(bed, end: "a"))
            // A buffer room for every list the 200 frames may come in.
            let b = try AsyncPort.open(Self.configuration(bed, end: "b"), receiveBuffer: 256)
            // A consumer waiting on an idle port, then cancelled.
            let waiting = Task { () -> Int in
                var lists = 0
                for await indication in b.received {
                    lists += 1
                    try? b.returnList(indication.list)
                }
                return lists
            }
            try await Task.sleep(for: .milliseconds(50))
            waiting.cancel()
            #expect(await waiting.value == 0)
            // Frames arrive with no one reading: they wait in B's buffer.
            for first in stride(from: 0, to: 200, by: 50) {
                let list = try #require(try a.allocateList(packetCount: 50))
                try Self.fill(list, first: UInt64(first), from: bed.macAddressA, to: bed.macAddressB)
                #expect(try await a.send(list) == .success)
                try a.returnList(list)
            }
            let deadline = Deadline(seconds: 10)
            while b.port.statistics.receive.packets < 200 {
                try #require(!deadline.passed, "B received \(b.port.statistics.receive.packets)")
                try await Task.sleep(for: .milliseconds(1))
            }
            #expect(b.port.poolStatus.receiveFramesHeldByCaller == 200)
            // Close gives them back, ends the sequence, and refuses sends after it.
            await b.close()
            #expect(b.port.poolStatus.allFramesHome, "\(b.port.poolStatus)")
            var iterator = b.received.makeAsyncIterator()
            #expect(await iterator.next() == nil)
            await a.close()
            await a.close()  // idempotent
            let list = try? a.port.allocateList(packetCount: 1)
            #expect(list == nil)
            #expect(a.port.poolStatus.allFramesHome)
        }
    }

    @Test("the interface deleted under an async port: the waiting consumer's loop ends, the async port reads closed, close returns, every frame home")
    func deviceLost() async throws {
        try await VethTestbed.withVethTestbed { bed in
            let b = try AsyncPort.open(Self.configuration(bed, end: "b"))
            let consumer = Task { () -> Int in
                var lists = 0
                for await indication in b.received {
                    lists += 1
                    try? b.returnList(indication.list)
                }
                return lists
            }
            try await Task.sleep(for: .milliseconds(50))
            _ = try runCommand(["ip", "-n", bed.namespaceB, "link", "del", "dev", bed.interfaceB])
            // The port notices within about 100 ms; the sequence then ends.
            let deadline = Deadline(seconds: 10)
            while !b.isClosed {
                try #require(!deadline.passed, "the async port did not close after its interface went")
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(await consumer.value == 0)
            #expect((b.port as? XDPPort)?.failure == .deviceLost)
            let late = try? b.allocateList(packetCount: 1)
            #expect(late == nil)
            await b.close()  // returns at once
            #expect(b.port.poolStatus.allFramesHome, "\(b.port.poolStatus)")
        }
    }

    @Test("bad input through the async face: refused with the port's error, nothing lost")
    func badInput() async throws {
        try await VethTestbed.withVethTestbed { bed in
            let a = try AsyncPort.open(Self.configuration(bed, end: "a"))
            #expect(throws: AFXDPError.invalidConfiguration("receiveBuffer must be at least 1 list (was 0)")) {
                _ = try AsyncPort.open(Self.configuration(bed, end: "b"), receiveBuffer: 0)
            }
            let list = try #require(try a.allocateList(packetCount: 2))
            // Lengths unset: refused, the list stays the caller's.
            await #expect(throws: AFXDPError.emptyFrame) { _ = try await a.send(list) }
            #expect(list.isOwnedByCaller)
            try a.returnList(list)
            #expect(throws: AFXDPError.listAlreadyReturned) { try a.sendAndForget(list) }
            await #expect(throws: AFXDPError.listAlreadyReturned) { _ = try await a.send(list) }
            await a.close()
            let late = try? a.port.allocateList(packetCount: 1)
            #expect(late == nil)
            #expect(a.port.poolStatus.allFramesHome)
        }
    }

    @Test("from an actor: the async port is used across isolation domains with no unchecked code")
    func fromActor() async throws {
        try await VethTestbed.withVethTestbed { bed in
            let b = try AsyncPort.open(Self.configuration(bed, end: "b"))
            let sender = try Sender(port: AsyncPort.open(Self.configuration(bed, end: "a")), from: bed.macAddressA, to: bed.macAddressB)
            let counter = ManagedAtomic<Int>(0)
            let consumer = Task { try await Self.consume(b, total: 500, counter: counter) }
            let statuses = try await sender.send(lists: 10, of: 50)
            #expect(statuses == Array(repeating: .success, count: 10))
            let (inOrder, bad) = try await consumer.value
            #expect(inOrder == 500 && bad == 0)
            await sender.close()
            await b.close()
            #expect(b.port.poolStatus.allFramesHome)
        }
    }
}

/// An actor owning a port, as an application would write one.
actor Sender {
    let port: AsyncPort
    let from: MACAddress, to: MACAddress
    var next: UInt64 = 0

    init(port: AsyncPort, from: MACAddress, to: MACAddress) {
        self.port = port
        self.from = from
        self.to = to
    }

    func send(lists: Int, of count: Int) async throws -> [SendStatus] {
        var statuses: [SendStatus] = []
        for _ in 0..<lists {
            guard let list = try port.allocateList(packetCount: count) else { break }
            try AsyncPortTests.fill(list, first: next, from: from, to: to)
            next += UInt64(count)
            statuses.append(try await port.send(list))
            try port.returnList(list)
        }
        return statuses
    }

    func close() async { await port.close() }
}

/// Names a file that imports Foundation writes as types (the clash that
/// `Port` had with Foundation's `Port`): this compiles only while none clashes.
private func namesCompileBesideFoundation(
    _ port: XDPPort, _ asyncPort: AsyncPort, _ any: any PacketPort, _ list: PacketList, _ statistics: Statistics,
    _ indication: ReceiveIndication, _ configuration: PortConfiguration, _ umem: UMEM, _ error: AFXDPError
) {}
