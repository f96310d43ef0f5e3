// A fixed amount of work, one thread, no clock: the loop that
// `valgrind --tool=callgrind --toggle-collect='*InstructionLoop*run*'` counts,
// so that instructions per packet compare run to run and build to build.
// Wall-clock figures on these shared machines do not.

import AFXDP
import AFXDPTestbed
import ArgumentParser
import Glibc

struct CountInstructions: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "instruction-loop",
        abstract: "Moves a fixed number of frames A->B on one thread, for callgrind (scripts/perf-check).",
        shouldDisplay: false)

    @Option(help: "Frames to move.") var packets = 200_000
    @Option(help: "Packets per list.") var batch = 64
    @Option(help: "Frame length in bytes.") var frameSize = 64
    @Option(help: "What each end runs through: none (the bare port) or filter (a pass-through FilterDriver over it: the cost of one layer).")
    var through: Through = .none

    func validate() throws {
        if through == .classifier { throw ValidationError("instruction-loop runs through none or filter") }
    }

    func run() throws {
        let bed = try VethTestbed.create(prefix: "afxbench")
        defer { bed.destroy() }
        let result = try InstructionLoop.run(bed: bed, packets: packets, batch: batch, frameLength: frameSize, through: through)
        print("instruction-loop: \(result.received) of \(result.sent) frames received, \(result.corrupted) corrupted, \(result.outOfOrder) out of order")
        if result.received != result.sent || result.corrupted != 0 || result.outOfOrder != 0 { throw ExitCode(1) }
    }
}

/// Only touched by the one thread running the loop.
final class LoopState: @unchecked Sendable {
    // @unchecked: the loop, both ports' handlers and the completions run on one thread.
    // @exclusivity(unchecked): one thread, so the runtime's access checks on
    // these class properties (taken from the handlers) would guard nothing.
    @exclusivity(unchecked) var sent = 0
    @exclusivity(unchecked) var received = 0
    @exclusivity(unchecked) var corrupted = 0
    @exclusivity(unchecked) var outOfOrder = 0
    @exclusivity(unchecked) var next: UInt64 = 0
    @exclusivity(unchecked) var free: [PacketList] = []
}

enum InstructionLoop {
    static func run(bed: VethTestbed, packets: Int, batch: Int, frameLength: Int, through: Through) throws -> LoopState {
        let state = LoopState()
        state.free.reserveCapacity(4096)
        var a = PortConfiguration(interface: bed.interfaceA, networkNamespace: bed.namespaceA)
        a.etherTypeFilter = TestFrame.etherType
        var b = PortConfiguration(interface: bed.interfaceB, networkNamespace: bed.namespaceB)
        b.etherTypeFilter = TestFrame.etherType
        let senderHandlers = PortHandlers(onReceive: { try? $0.port.returnList($0.list) }, onSendComplete: { completed in
            for list in completed { state.free.append(list) }
        })
        let receiverHandlers = PortHandlers(onReceive: { indication in
            guard let packets = try? indication.list.packets else { state.corrupted += 1; return }
            packets.forEach { packet in
                guard let bytes = try? packet.bytes, let parsed = TestFrame.parse(UnsafeRawBufferPointer(bytes)) else {
                    state.corrupted += 1
                    return
                }
                if !parsed.intact { state.corrupted += 1 }
                if parsed.sequence != state.next { state.outOfOrder += 1 }
                state.next = parsed.sequence &+ 1
                state.received += 1
            }
            try? indication.port.returnList(indication.list)
        }, onSendComplete: { _ in })
        if through == .filter {
            // The same loop one layer up: each end a pass-through filter over its port.
            let sender = try FilterDriver.open(
                over: XDPPort.below(a), onReceive: senderHandlers.onReceive, onSendComplete: senderHandlers.onSendComplete)
            defer { sender.close() }
            let receiver = try FilterDriver.open(
                over: XDPPort.below(b), onReceive: receiverHandlers.onReceive, onSendComplete: receiverHandlers.onSendComplete)
            defer { receiver.close() }
            try prime(sender, state: state, batch: batch)
            try loop(sender: sender, receiver: receiver, state: state, packets: packets, frameLength: frameLength, bed: bed)
        } else {
            let sender = try XDPPort.open(a, onReceive: senderHandlers.onReceive, onSendComplete: senderHandlers.onSendComplete)
            defer { sender.close() }
            let receiver = try XDPPort.open(b, onReceive: receiverHandlers.onReceive, onSendComplete: receiverHandlers.onSendComplete)
            defer { receiver.close() }
            try prime(sender, state: state, batch: batch)
            try loop(sender: sender, receiver: receiver, state: state, packets: packets, frameLength: frameLength, bed: bed)
        }
        return state
    }

    /// The lists the loop sends, over and over: enough for 256 frames in flight.
    static func prime(_ sender: some PacketPort, state: LoopState, batch: Int) throws {
        for _ in 0..<(256 / batch + 1) {
            guard let list = try sender.allocateList(packetCount: batch) else { break }
            state.free.append(list)
        }
    }

    /// The measured part (specialised for each kind of end).
    @inline(never)
    static func loop<Sender: PacketPort, Receiver: PacketPort>(
        sender: Sender, receiver: Receiver, state: LoopState, packets: Int, frameLength: Int, bed: VethTestbed
    ) throws {
        var sent = 0
        var idle = 0
        defer { state.sent = sent }
        while state.received < packets {
            // At most 256 frames in flight: veth's queue for an XDP peer, so nothing is lost.
            while sent < packets, sent - state.received < 256, let list = state.free.popLast() {
                try list.packets.forEach { packet throws(AFXDPError) in
                    TestFrame.write(
                        into: try packet.buffer, length: frameLength, sequence: UInt64(sent), source: bed.macAddressA,
                        destination: bed.macAddressB)
                    try packet.setLength(frameLength)
                    sent += 1
                }
                try sender.send(list)
            }
            let senderMoved = sender.poll()
            let moved = receiver.poll() || senderMoved
            idle = moved ? 0 : idle + 1
            if idle > 1_000_000 { throw ValidationError("no progress: sent \(sent), received \(state.received)") }
        }
    }
}
