import AFXDP
import AFXDPTestbed
import Glibc
import Synchronization
import Testing

/// The README's intermediate-driver example (CountingFilter.swift): the README
/// shows it word for word, and it works on a veth pair as the README says.
@Suite("README example: a counting filter written outside the library", .serialized)
struct ReadmeExampleTests {
    @Test("the README shows CountingFilter.swift exactly, between its markers")
    func readmeShowsTheExample() throws {
        let here = String(#filePath)
        let directory = String(here[..<here.lastIndex(of: "/")!])
        let source = try readFile(directory + "/CountingFilter.swift")
        let readme = try readFile(directory + "/../../README.md")
        let begin = try #require(source.firstRange(of: "// README example begins\n"))
        let end = try #require(source.firstRange(of: "// README example ends"))
        let example = String(source[begin.upperBound..<end.lowerBound])
        #expect(example.count > 500)
        let shownAsItIs = readme.contains("```swift\n" + example + "```")
        #expect(shownAsItIs, "README.md must show Tests/ExampleTests/CountingFilter.swift's example as it is: copy it over")
    }

    @Test("the counting filter over a port on veth: 20,000 frames each way counted, in order and intact, every send completed once at the top, drops while dropping, every frame home after close")
    func countingFilterOnVeth() throws {
        try VethTestbed.withVethTestbed { bed in
            var configurationA = PortConfiguration(interface: bed.interfaceA, networkNamespace: bed.namespaceA)
            configurationA.etherTypeFilter = TestFrame.etherType
            var configurationB = PortConfiguration(interface: bed.interfaceB, networkNamespace: bed.namespaceB)
            configurationB.etherTypeFilter = TestFrame.etherType

            let atTop = Traffic(), atB = Traffic()
            let counter = CountingFilter()
            let top = try counter.open(
                over: XDPPort.below(configurationA), onReceive: atTop.received, onSendComplete: atTop.completed)
            let b = try XDPPort.open(configurationB, onReceive: atB.received, onSendComplete: atB.completed)
            defer {
                b.close()
                top.close()
            }
            #expect(top.stack.layers.map(\.kind) == [.intermediate, .port])
            #expect(top.stack.description.contains("layer: counting filter"))

            let total = 20_000, batch = 32, length = 64
            try exchange(from: top, to: b, sender: atTop, receiver: atB, frames: total, batch: batch, length: length, bed: bed, aToB: true)
            try exchange(from: b, to: top, sender: atB, receiver: atTop, frames: total, batch: batch, length: length, bed: bed, aToB: false)
            #expect(counter.sentFrames.load(ordering: .relaxed) == total)
            #expect(counter.sentBytes.load(ordering: .relaxed) == total * length)
            #expect(counter.receivedFrames.load(ordering: .relaxed) == total)
            for (name, traffic) in [("top", atTop), ("B", atB)] {
                let seen = traffic.snapshot()
                #expect(seen.received == total, "\(name) received")
                #expect(seen.disorderOrDamage == 0, "\(name): frames out of order or damaged")
                #expect(seen.completedLists == total / batch, "\(name): each list completed once")
                #expect(seen.completionsOutOfOrder == 0, "\(name): completions in send order")
            }

            // While dropping, what B sends never reaches the caller above.
            counter.isDropping.store(true, ordering: .relaxed)
            let receivedBefore = top.statistics.receive.packets
            try exchange(from: b, to: top, sender: atB, receiver: nil, frames: 320, batch: batch, length: length, bed: bed, aToB: false)
            let deadline = Deadline(seconds: 10)
            while top.statistics.receive.packets < receivedBefore + 320, !deadline.passed {
                top.poll()
                b.poll()
            }
            #expect(top.statistics.receive.packets == receivedBefore + 320)
            #expect(counter.droppedLists.load(ordering: .relaxed) >= 1)
            #expect(counter.receivedFrames.load(ordering: .relaxed) == total)
            #expect(atTop.snapshot().received == total, "nothing dropped reached the caller")
            #expect(top.layerStatistics.receivesHeldAbove == 0)

            b.close()
            top.close()
            #expect(top.poolStatus.allFramesHome)
            #expect(b.poolStatus.allFramesHome)
        }
    }

    /// Sends `frames` test frames from `sender`'s port to the other end, at most
    /// 256 in flight (veth's queue), polling both until each list completed
    /// and, when `receiver` is given, every frame arrived.
    func exchange(
        from: any PacketPort, to: any PacketPort, sender: Traffic, receiver: Traffic?, frames: Int, batch: Int, length: Int,
        bed: VethTestbed, aToB: Bool
    ) throws {
        let completedBefore = sender.snapshot().completedLists
        let receivedBefore = receiver?.snapshot().received ?? 0
        let (source, destination) = aToB ? (bed.macAddressA, bed.macAddressB) : (bed.macAddressB, bed.macAddressA)
        var sent = 0
        let deadline = Deadline(seconds: 60)
        while true {
            let received = (receiver?.snapshot().received ?? sent) - receivedBefore
            let completed = sender.snapshot().completedLists - completedBefore
            if sent == frames, received == frames, completed == frames / batch { return }
            if deadline.passed {
                Issue.record("stalled: sent \(sent), received \(received), \(completed) lists completed")
                return
            }
            if sent < frames, sent - received + batch <= 256, let list = try from.allocateList(packetCount: batch) {
                let first = sender.nextSequence(count: batch)
                var index: UInt64 = 0
                try list.packets.forEach { packet throws(AFXDPError) in
                    TestFrame.write(into: try packet.buffer, length: length, sequence: first + index, source: source, destination: destination)
                    try packet.setLength(length)
                    index += 1
                }
                try from.send(list)
                sent += batch
            }
            from.poll()
            to.poll()
        }
    }
}

/// What one end saw: frames received (checked for order and damage) and
/// lists completed (checked for order by their first frame's sequence).
final class Traffic: Sendable {
    struct Seen {
        var received = 0
        var nextReceived: UInt64 = 0
        var disorderOrDamage = 0
        var completedLists = 0
        var nextCompleted: UInt64 = 0
        var completionsOutOfOrder = 0
        var nextToSend: UInt64 = 0
    }
    private let seen = Mutex(Seen())

    func snapshot() -> Seen { seen.withLock { $0 } }

    func nextSequence(count: Int) -> UInt64 {
        seen.withLock { seen in
            defer { seen.nextToSend += UInt64(count) }
            return seen.nextToSend
        }
    }

    func received(_ indication: ReceiveIndication) {
        seen.withLock { seen in
            try? indication.list.packets.forEach { packet in
                let parsed = TestFrame.parse(UnsafeRawBufferPointer(try packet.bytes))
                if parsed?.intact != true || parsed?.sequence != seen.nextReceived { seen.disorderOrDamage += 1 }
                seen.nextReceived = (parsed?.sequence ?? seen.nextReceived) &+ 1
                seen.received += 1
            }
        }
        try? indication.port.returnList(indication.list)
    }

    func completed(_ batch: SendCompletions) {
        for list in batch {
            let first = try? list.packets.withPacket(at: 0) { packet throws(AFXDPError) in
                TestFrame.parse(UnsafeRawBufferPointer(try packet.bytes))?.sequence
            }
            let count = (try? list.count) ?? 0
            seen.withLock { seen in
                if (try? list.status) != .success || first != seen.nextCompleted { seen.completionsOutOfOrder += 1 }
                seen.nextCompleted = (first.flatMap { $0 } ?? seen.nextCompleted) &+ UInt64(count)
                seen.completedLists += 1
            }
            try? batch.port.returnList(list)
        }
    }
}

func readFile(_ path: String) throws -> String {
    guard let file = fopen(path, "r") else { throw ReadError(path: path) }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = fread(&chunk, 1, chunk.count, file)
        if count == 0 { break }
        bytes += chunk[0..<count]
    }
    return String(decoding: bytes, as: UTF8.self)
}

struct ReadError: Error, CustomStringConvertible {
    let path: String
    var description: String { "cannot read \(path)" }
}
