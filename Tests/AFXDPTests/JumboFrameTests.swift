import AFXDP
import AFXDPRings
import AFXDPTestbed
import Glibc
import Testing

/// Multi-buffer AF_XDP on real veth with an MTU of 9000: a jumbo frame is a
/// run of list entries, every one but the last marked `continues`.
@Suite("Jumbo frames (multi-buffer)", .serialized)
struct JumboFrameTests {
    static let jumboLength = 9000
    static let smallLength = 60

    /// The bytes of test packet `sequence` of `length` from `source` to
    /// `destination`: an Ethernet header, the sequence number, then a
    /// pattern that depends on both, so that a frame joined in the wrong
    /// order, or with a piece of another, reads wrong.
    static func frame(length: Int, sequence: UInt32, from source: MACAddress, to destination: MACAddress) -> [UInt8] {
        var bytes = destination.bytes + source.bytes + [UInt8(TestFrame.etherType >> 8), UInt8(TestFrame.etherType & 0xFF)]
        withUnsafeBytes(of: sequence.littleEndian) { bytes += $0 }
        bytes.reserveCapacity(length)
        while bytes.count < length { bytes.append(UInt8(truncatingIfNeeded: bytes.count &* 7 &+ Int(sequence))) }
        return bytes
    }

    /// What one end received, joined from its runs: touched by its receive
    /// handler only, read after traffic stops.
    final class Received: @unchecked Sendable {
        // @unchecked: one receive side, one owner at a time (see above).
        var frames: [[UInt8]] = []
        var entries = 0
        var listsEndingInsideAPacket = 0

        func handle(_ indication: ReceiveIndication) {
            var current: [UInt8] = []
            var open = false
            try? indication.list.packets.forEach { packet throws(AFXDPError) in
                current += UnsafeRawBufferPointer(try packet.bytes)
                entries += 1
                open = try packet.continues
                if !open {
                    frames.append(current)
                    current = []
                }
            }
            if open { listsEndingInsideAPacket += 1 }
            try? indication.port.returnList(indication.list)
        }
    }

    /// Each completed list once, by status.
    final class Completed: @unchecked Sendable {
        // @unchecked: one send side, one owner at a time.
        var statuses: [SendStatus] = []
        func handle(_ batch: SendCompletions) {
            for list in batch {
                statuses.append((try? list.status) ?? .pending)
                try? batch.port.returnList(list)
            }
        }
    }

    /// How many bytes one entry (one UMEM frame) of the port's lists holds.
    static func capacity(_ port: XDPPort) throws -> Int {
        let probe = try #require(try port.allocateList(packetCount: 1))
        defer { try? port.returnList(probe) }
        return try #require(try probe.packets.withPacket(at: 0) { packet throws(AFXDPError) in try packet.capacity })
    }

    /// Allocates and fills one list with `lengths`' frames, each spread over
    /// as many entries as it needs.
    static func makeList(
        _ port: XDPPort, lengths: [Int], firstSequence: UInt32, from source: MACAddress, to destination: MACAddress
    ) throws -> (PacketList, [[UInt8]])? {
        let room = try capacity(port)
        let entriesPerFrame = lengths.map { ($0 + room - 1) / room }
        guard let list = try port.allocateList(packetCount: entriesPerFrame.reduce(0, +)) else { return nil }
        var frames: [[UInt8]] = []
        var entry = 0
        for (index, length) in lengths.enumerated() {
            let bytes = frame(length: length, sequence: firstSequence &+ UInt32(index), from: source, to: destination)
            frames.append(bytes)
            var offset = 0
            for piece in 0..<entriesPerFrame[index] {
                try list.packets.withPacket(at: entry) { packet throws(AFXDPError) in
                    let buffer = try packet.buffer
                    let count = min(bytes.count - offset, buffer.count)
                    bytes.withUnsafeBytes { source in
                        buffer.baseAddress!.copyMemory(from: source.baseAddress! + offset, byteCount: count)
                    }
                    try packet.setLength(count, continues: piece < entriesPerFrame[index] - 1)
                    offset += count
                }
                entry += 1
            }
        }
        return (list, frames)
    }

    @Test("9000-byte frames both ways at once, mixed with small ones: each arrives whole, in order, intact; each list completes once; every frame home")
    func jumboBothWays() throws {
        try VethTestbed.withVethTestbed { bed in
            for (namespace, interface) in [(bed.namespaceA, bed.interfaceA), (bed.namespaceB, bed.interfaceB)] {
                try runCommand(["ip", "-n", namespace, "link", "set", "dev", interface, "mtu", "9000"])
            }
            let receivedA = Received(), receivedB = Received()
            let completedA = Completed(), completedB = Completed()
            let a = try openPort(bed, end: "a", configure: { $0.multiBuffer = true },
                                 onReceive: receivedA.handle, onSendComplete: completedA.handle)
            let b = try openPort(bed, end: "b", configure: { $0.multiBuffer = true },
                                 onReceive: receivedB.handle, onSendComplete: completedB.handle)
            defer { a.close(); b.close() }

            // Per list: two jumbo frames and a small one; 40 lists each way.
            let lists = 40
            // One bound for the whole exchange: a broken path fails in seconds.
            let deadline = Deadline(seconds: 20)
            let lengths = [Self.jumboLength, Self.smallLength, Self.jumboLength]
            var sentByA: [[UInt8]] = [], sentByB: [[UInt8]] = []
            var sentEntries = 0
            for index in 0..<lists {
                let first = UInt32(index * lengths.count)
                for (port, source, destination) in [(a, bed.macAddressA, bed.macAddressB), (b, bed.macAddressB, bed.macAddressA)] {
                    var made = try Self.makeList(port, lengths: lengths, firstSequence: first, from: source, to: destination)
                    while made == nil, !deadline.passed {
                        a.poll(); b.poll()
                        made = try Self.makeList(port, lengths: lengths, firstSequence: first, from: source, to: destination)
                    }
                    let (list, frames) = try #require(made)
                    sentEntries += try list.count
                    try port.send(list)
                    if port === a { sentByA += frames } else { sentByB += frames }
                }
                // A window: at most a few lists ahead of what arrived (veth
                // queues 256 buffers and drops the rest without telling).
                while receivedB.frames.count + 4 * lengths.count < sentByA.count
                    || receivedA.frames.count + 4 * lengths.count < sentByB.count, !deadline.passed {
                    a.poll(); b.poll()
                }
            }
            while receivedB.frames.count < sentByA.count || receivedA.frames.count < sentByB.count
                || completedA.statuses.count < lists || completedB.statuses.count < lists, !deadline.passed {
                a.poll(); b.poll()
            }

            #expect(receivedB.frames.count == sentByA.count, "B received \(receivedB.frames.count) of \(sentByA.count): \(b.statistics.kernel)")
            #expect(receivedA.frames.count == sentByB.count, "A received \(receivedA.frames.count) of \(sentByB.count): \(a.statistics.kernel)")
            #expect(receivedB.frames == sentByA, "A->B: a frame arrived out of order, cut or joined wrong")
            #expect(receivedA.frames == sentByB, "B->A: a frame arrived out of order, cut or joined wrong")
            #expect(receivedA.listsEndingInsideAPacket == 0 && receivedB.listsEndingInsideAPacket == 0)
            // A jumbo frame took three entries (4096-byte UMEM frames).
            #expect(receivedA.entries + receivedB.entries == sentEntries)
            #expect(receivedA.entries > receivedA.frames.count)
            #expect(completedA.statuses == Array(repeating: .success, count: lists))
            #expect(completedB.statuses == Array(repeating: .success, count: lists))
            // Statistics count packets, not the frames they span.
            #expect(b.statistics.receive.packets == sentByA.count)
            #expect(a.statistics.receive.packets == sentByB.count)
            #expect(a.statistics.send.packets == sentByA.count)
            #expect(b.statistics.send.packets == sentByB.count)
            a.close(); b.close()
            #expect(a.poolStatus.allFramesHome, "\(a.poolStatus)")
            #expect(b.poolStatus.allFramesHome, "\(b.poolStatus)")
        }
    }

    @Test("caller mistakes with runs: a last entry marked to continue, or runs on a port without multiBuffer, throw and keep the list")
    func runMistakes() throws {
        try VethTestbed.withVethTestbed { bed in
            let plain = try openPort(bed, end: "a")
            defer { plain.close() }
            let list = try #require(try plain.allocateList(packetCount: 2))
            try list.packets.withPacket(at: 0) { packet throws(AFXDPError) in try packet.setLength(100, continues: true) }
            try list.packets.withPacket(at: 1) { packet throws(AFXDPError) in try packet.setLength(100) }
            #expect(throws: AFXDPError.multiBufferNotEnabled(interface: bed.interfaceA)) { try plain.send(list) }
            // Still the caller's: unmarking makes it two plain frames.
            try list.packets.withPacket(at: 0) { packet throws(AFXDPError) in try packet.setLength(100) }
            #expect(try list.packets.withPacket(at: 0) { packet throws(AFXDPError) in try packet.continues } == false)
            try plain.returnList(list)

            let jumbo = try openPort(bed, end: "b", configure: { $0.multiBuffer = true })
            defer { jumbo.close() }
            let unfinished = try #require(try jumbo.allocateList(packetCount: 2))
            try unfinished.packets.withPacket(at: 0) { packet throws(AFXDPError) in try packet.setLength(100, continues: true) }
            try unfinished.packets.withPacket(at: 1) { packet throws(AFXDPError) in try packet.setLength(100, continues: true) }
            #expect(throws: AFXDPError.unfinishedPacket) { try jumbo.send(unfinished) }
            try jumbo.returnList(unfinished)
            plain.close(); jumbo.close()
            #expect(plain.poolStatus.allFramesHome && jumbo.poolStatus.allFramesHome)
        }
    }

    @Test("multiBuffer on a port sharing another port's UMEM is refused with what to do")
    func multiBufferOnSharedUMEM() throws {
        try VethTestbed.withVethTestbed { bed in
            let umem = try UMEM(frameCount: 2 * PortConfiguration(interface: "x").umemFrameCount, frameSize: 4096)
            let first = try openPort(bed, end: "a", umem: umem)
            defer { first.close() }
            #expect {
                _ = try openPort(bed, end: "b", umem: umem, configure: { $0.multiBuffer = true })
            } throws: { error in
                "\(error)".contains("multiBuffer") && "\(error)".contains("UMEM of its own")
            }
        }
    }
}
