@testable import AFXDP
import AFXDPRings
import AFXDPTestbed
import Testing

// The send region of a port over heap rings, with the test playing the
// kernel: it consumes TX descriptors and produces completion addresses. No
// socket, no NIC: the TX ring's flags word stays 0 and the region is built
// with kickOnlyWhenAsked, so it never kicks.

// MARK: - Harness

/// What the completion handler saw, copied out of each batch (the batch is
/// valid only during the call).
final class CompletionLog: @unchecked Sendable {
    // @unchecked: every test drives the send region from one thread.
    struct Entry {
        var sequence: Int
        var status: SendStatus
        var list: PacketList
    }
    var entries: [Entry] = []
    var batches = 0
    /// Called with each batch's entries once they are logged, still inside
    /// the completion handler (where a caller may send the lists again).
    var onBatch: ((ArraySlice<Entry>) throws -> Void)?

    var sequences: [Int] { entries.map(\.sequence) }
}

/// What a packet carries so that the simulated kernel can tell which list
/// and which packet each TX descriptor is: the list's send sequence, the
/// packet's index in the list and the list's packet count.
struct PacketTag: Equatable {
    var sequence: Int
    var index: Int
    var count: Int
}

/// Mirrors how `XDPPort` drives its send region (`XDPPort.send`, `serviceSend`,
/// `poll`, `returnList`), over heap memory instead of a socket.
final class SimulatedPort {
    static let frameSize = 2048
    let memory: UMEM
    let table: ListTable
    /// The region's send pool; the receive frames before it stay unused.
    let pool: SendPool
    let receiveFrameCount: Int
    var umem: UnsafeMutableRawPointer { memory.area.base }
    let tx: HeapRing<XDPDescriptor>
    let completion: HeapRing<UInt64>
    let region: SendRegion
    var doorbell: RegionDoorbell { region.door }
    var context: SendContext { region.context }
    let log = CompletionLog()
    /// What `XDPPort.admission` would say: `.success` while running.
    var admission: SendStatus = .success
    private(set) var nextSequence = 0
    private(set) var sentPackets = 0
    private(set) var sentBytes = 0
    /// The most frames the region ever had in flight after a pass.
    private(set) var peakFramesInFlight: UInt32 = 0

    init(
        sendFrames: Int, receiveFrames: Int = 16, txSize: UInt32, completionSize: UInt32,
        startIndex: UInt32 = 0, sendHeadroom: Int = 0
    ) {
        let frameCount = receiveFrames + sendFrames
        memory = try! UMEM(frameCount: frameCount, frameSize: Self.frameSize, headroom: sendHeadroom)
        table = memory.table
        receiveFrameCount = receiveFrames
        _ = table.reserve(frameCount: receiveFrames)!
        let (range, id) = table.reserve(frameCount: sendFrames)!
        pool = SendPool(table: table, range: range, id: id, lock: PThreadLock())
        table.register(.send(pool), range: range, id: id)
        tx = HeapRing<XDPDescriptor>(size: txSize, startIndex: startIndex)
        completion = HeapRing<UInt64>(size: completionSize, startIndex: startIndex)
        let log = self.log
        region = SendRegion(context: SendContext(
            table: table, ownPools: (.max, id), tx: tx.memory, completion: completion.memory, socketFD: -1,
            kickOnlyWhenAsked: true,
            onComplete: { batch in
                log.batches += 1
                let first = log.entries.count
                do {
                    for list in batch {
                        log.entries.append(.init(
                            sequence: try list.contextArea.load(as: Int.self), status: try list.status, list: list))
                    }
                    try log.onBatch?(log.entries[first...])
                } catch {
                    Issue.record(error, "in the completion handler")
                }
            }))
    }

    deinit {
        tx.deallocate()
        completion.deallocate()
    }

    // MARK: The caller's side, as XDPPort offers it

    /// `XDPPort.send`: refuses bad input, hands the list to the region, then
    /// runs a placing pass (no handler) if no one else has the region.
    func send(_ list: PacketList) throws(AFXDPError) {
        guard list.table === table else { throw .foreignList }
        if try list.ownedRecord().pointee.unsetLengths != 0 { throw .emptyFrame }
        try table.transition(list, from: .caller, to: .engine)
        region.accept(list.slot)
        serviceSend()
    }

    /// What `XDPPort.send` runs after handing a list over.
    func serviceSend() {
        doorbell.runIfFree(rounds: 4) { region.placingPass(admit: admission) }
        notePass()
    }

    /// `XDPPort.poll`, send side only: a delivering pass.
    @discardableResult
    func poll() -> Bool {
        var progress = false
        doorbell.runIfFree(rounds: 1) { progress = region.deliveringPass(admit: admission) }
        notePass()
        return progress
    }

    /// The send side of `XDPPort.close`: drain with `.closing` (what the kernel
    /// completes in time completes with `.success`), then, the socket being
    /// gone, count what the kernel never took as unsent, abandon what is
    /// still in flight, and deliver.
    func close(drainPasses: Int) {
        admission = .closing
        for _ in 0..<drainPasses {
            var settled = false
            doorbell.runIfFree(rounds: 1) {
                region.deliveringPass(admit: .closing)
                settled = region.isSettled
            }
            if settled { break }
        }
        while !doorbell.ownership.tryAcquire() {}
        region.placingPass(admit: .closing)
        context.settleBeforeTeardown()
        context.abandonInFlight(mailbox: doorbell.mailbox)
        context.deliver()
        doorbell.ownership.release()
    }

    /// `XDPPort.returnList` for a send-pool list.
    func returnList(_ list: PacketList) throws(AFXDPError) {
        try table.transition(list, from: .caller, to: .free, bumpGeneration: true)
        pool.release(list.slot)
    }

    private func notePass() {
        peakFramesInFlight = max(peakFramesInFlight, context.framesInFlight)
    }

    // MARK: Test helpers

    /// Length of packet `index` of the list sent as `sequence`: varies with
    /// both, at least a tag's size.
    static func length(sequence: Int, index: Int) -> Int { 16 + (sequence &* 7 &+ index &* 13) % 1000 }

    /// Gives the list the next send sequence (in its context area), tags each
    /// packet and sets its length. Returns the sequence.
    @discardableResult
    func prepare(_ list: PacketList, priority: UInt8 = 0) throws -> Int {
        let sequence = nextSequence
        nextSequence += 1
        try list.contextArea.storeBytes(of: sequence, as: Int.self)
        try list.setPriority(Int(priority))
        let count = try list.count
        var index = 0
        try list.packets.forEach { packet throws(AFXDPError) in
            let buffer = try packet.buffer
            buffer.storeBytes(of: UInt64(sequence), toByteOffset: 0, as: UInt64.self)
            buffer.storeBytes(of: UInt32(index), toByteOffset: 8, as: UInt32.self)
            buffer.storeBytes(of: UInt32(count), toByteOffset: 12, as: UInt32.self)
            let length = Self.length(sequence: sequence, index: index)
            try packet.setLength(length)
            sentPackets += 1
            sentBytes += length
            index += 1
        }
        return sequence
    }

    /// Allocates, prepares and sends a list; nil when the pool is short.
    @discardableResult
    func sendNew(packetCount: Int, priority: UInt8 = 0) throws -> Int? {
        guard let list = pool.allocate(packetCount: packetCount) else { return nil }
        let sequence = try prepare(list, priority: priority)
        try send(list)
        return sequence
    }

    /// Sends a completed list again under a new sequence.
    @discardableResult
    func sendAgain(_ list: PacketList, priority: UInt8 = 0) throws -> Int {
        let sequence = try prepare(list, priority: priority)
        try send(list)
        return sequence
    }

    /// Returns every list the log holds (each completed list is the caller's).
    func returnAllCompleted() throws {
        for entry in log.entries { try returnList(entry.list) }
    }

    var sendFrameCount: Int { pool.frameCount }
    var counters: Statistics.Send { context.counters.snapshot() }
}

/// How the simulated kernel orders the addresses of one completion batch.
enum CompletionOrder: Sendable, CaseIterable {
    case inOrder
    case reversed
    /// Shuffled with a seeded generator.
    case shuffled
}

/// The kernel's side of the TX and completion rings.
///
/// Like `xsk_tx_peek_desc`, it takes a TX descriptor only after reserving a
/// completion slot for it; it counts the times it found TX work while every
/// completion slot was taken (the engine must never let that happen).
struct HandPlayedKernel {
    let port: SimulatedPort
    /// Every packet taken from the TX ring, in order: the wire.
    var wire: [PacketTag] = []
    /// Descriptors that were malformed (wrong offset, wrong length, a
    /// receive frame, outside the UMEM), with a note on each.
    var malformed: [String] = []
    /// Addresses taken from TX and not yet completed, oldest first.
    var awaitingCompletion: [UInt64] = []
    var completedFrames = 0
    /// Times TX held descriptors while all completion slots were reserved.
    var completionRingOverruns = 0
    /// Times a `complete` call left the completion ring exactly full.
    var completionRingFilledExactly = 0
    var random = SeededGenerator(seed: 0x5EED)

    init(_ port: SimulatedPort) { self.port = port }

    /// Completion slots reserved: taken from TX and not yet reaped by the engine.
    var reservedCompletionSlots: Int {
        awaitingCompletion.count + Int(port.completion.producerIndex &- port.completion.consumerIndex)
    }

    /// Descriptors in the TX ring that the kernel has not taken.
    var txPending: Int { Int(port.tx.producerIndex &- port.tx.consumerIndex) }

    /// Takes up to `limit` descriptors from the TX ring; returns how many.
    @discardableResult
    mutating func transmit(limit: Int = .max) -> Int {
        let tx = port.tx
        let end = tx.producerIndex
        var index = tx.consumerIndex
        var taken = 0
        while taken < limit, index != end {
            guard reservedCompletionSlots < Int(port.completion.memory.size) else {
                completionRingOverruns += 1
                break
            }
            let descriptor = tx[index]
            inspect(descriptor)
            awaitingCompletion.append(descriptor.address)
            index &+= 1
            taken += 1
        }
        tx.consumerIndex = index
        return taken
    }

    private mutating func inspect(_ descriptor: XDPDescriptor) {
        let frameSize = UInt64(SimulatedPort.frameSize)
        let frame = Int(descriptor.address / frameSize)
        let offset = Int(descriptor.address % frameSize)
        guard port.pool.range.frames.contains(frame) else {
            malformed.append("address \(descriptor.address) is not a send frame")
            return
        }
        guard offset == port.table.headroom else {
            malformed.append("address \(descriptor.address) has offset \(offset), headroom is \(port.table.headroom)")
            return
        }
        let bytes = UnsafeRawPointer(port.umem + Int(descriptor.address))
        let tag = PacketTag(
            sequence: Int(bytes.loadUnaligned(as: UInt64.self)),
            index: Int(bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
            count: Int(bytes.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
        let expected = SimulatedPort.length(sequence: tag.sequence, index: tag.index)
        if Int(descriptor.length) != expected {
            malformed.append("packet \(tag) has length \(descriptor.length), sent with \(expected)")
        }
        wire.append(tag)
    }

    /// Produces up to `limit` completions (oldest taken first), ordering the
    /// addresses of the batch as asked; `maskOffset` gives back the frame
    /// address rather than the descriptor's address. Returns how many.
    @discardableResult
    mutating func complete(limit: Int = .max, order: CompletionOrder = .inOrder, maskOffset: Bool = false) -> Int {
        let ring = port.completion
        let room = Int(ring.memory.size) - Int(ring.producerIndex &- ring.consumerIndex)
        let count = min(limit, room, awaitingCompletion.count)
        guard count > 0 else { return 0 }
        var batch = Array(awaitingCompletion.prefix(count))
        awaitingCompletion.removeFirst(count)
        switch order {
        case .inOrder: break
        case .reversed: batch.reverse()
        case .shuffled: batch.shuffle(using: &random)
        }
        let frameMask = ~UInt64(SimulatedPort.frameSize - 1)
        var index = ring.producerIndex
        for address in batch {
            ring[index] = maskOffset ? address & frameMask : address
            index &+= 1
        }
        ring.producerIndex = index
        completedFrames += count
        if index &- ring.consumerIndex == ring.memory.size { completionRingFilledExactly += 1 }
        return count
    }

    /// Completes the `count` most recently taken frames, newest first,
    /// leaving older ones waiting: a later list finishes before an earlier one.
    @discardableResult
    mutating func completeNewest(_ count: Int) -> Int {
        let ring = port.completion
        let room = Int(ring.memory.size) - Int(ring.producerIndex &- ring.consumerIndex)
        let count = min(count, room, awaitingCompletion.count)
        var index = ring.producerIndex
        for _ in 0..<count {
            ring[index] = awaitingCompletion.removeLast()
            index &+= 1
        }
        ring.producerIndex = index
        completedFrames += count
        return count
    }

    /// Transmits and completes everything it can.
    mutating func runToIdle(order: CompletionOrder = .inOrder) {
        transmit()
        complete(order: order)
    }

    /// The wire, as the sequence of list sequences (one entry per list, in
    /// the order each list's first packet went out).
    var listsOnWire: [Int] {
        var result: [Int] = []
        for tag in wire where tag.index == 0 { result.append(tag.sequence) }
        return result
    }
}

/// The packets of lists `sequences`, each `0..<count`, in that order.
func expectedWire(_ lists: [(sequence: Int, count: Int)]) -> [PacketTag] {
    lists.flatMap { list in (0..<list.count).map { PacketTag(sequence: list.sequence, index: $0, count: list.count) } }
}

/// Drives port and kernel until `done` holds or a bound is hit.
func drive(
    _ port: SimulatedPort, _ kernel: inout HandPlayedKernel, order: CompletionOrder = .inOrder,
    until done: () -> Bool
) {
    var rounds = 0
    while !done() {
        rounds += 1
        guard rounds < 100_000 else {
            Issue.record("no progress after \(rounds) rounds")
            return
        }
        kernel.runToIdle(order: order)
        port.poll()
    }
}

/// The shared ring index `count` steps after `start`, computed in 64 bits.
func ringIndex(_ start: UInt32, plus count: Int) -> UInt32 {
    UInt32(truncatingIfNeeded: UInt64(start) + UInt64(count))
}

/// What holds after everything sent has completed and been given back:
/// nothing queued or in flight, every frame and list slot home.
func expectAllHome(_ port: SimulatedPort, _ kernel: HandPlayedKernel, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(port.context.framesInFlight == 0, sourceLocation: sourceLocation)
    #expect(!port.context.hasWork, sourceLocation: sourceLocation)
    #expect(kernel.awaitingCompletion.isEmpty, sourceLocation: sourceLocation)
    #expect(kernel.txPending == 0, sourceLocation: sourceLocation)
    #expect(port.counters.queuedFrames == 0, sourceLocation: sourceLocation)
    let home = port.pool.counts
    #expect(home.frames == port.sendFrameCount, "send frames in the pool", sourceLocation: sourceLocation)
    #expect(home.lists == port.sendFrameCount, "send list slots in the pool", sourceLocation: sourceLocation)
}

// MARK: - Tests

@Suite("Send region over a simulated kernel")
struct SimulatedKernelTests {
    @Test("TX and completion indices wrap past UInt32.max; 1,000 lists complete once, in order")
    func indexWrapInSendPath() throws {
        let start = UInt32.max - 20
        let port = SimulatedPort(
            sendFrames: 256, txSize: 32, completionSize: 64, startIndex: start, sendHeadroom: 64)
        var kernel = HandPlayedKernel(port)
        var random = SeededGenerator(seed: 5)
        var sent: [(sequence: Int, count: Int)] = []
        var returned = 0

        func returnNewlyCompleted() throws {
            while returned < port.log.entries.count {
                try port.returnList(port.log.entries[returned].list)
                returned += 1
            }
        }

        while sent.count < 1000 {
            if Int.random(in: 0..<3, using: &random) == 0 {
                kernel.transmit(limit: Int.random(in: 0...40, using: &random))
                kernel.complete(limit: Int.random(in: 0...40, using: &random))
                port.poll()
                try returnNewlyCompleted()
            }
            let count = Int.random(in: 1...4, using: &random)
            if let sequence = try port.sendNew(packetCount: count) {
                sent.append((sequence, count))
            } else {
                kernel.runToIdle()
                port.poll()
                try returnNewlyCompleted()
            }
        }
        drive(port, &kernel) { port.log.entries.count == sent.count }
        try returnNewlyCompleted()

        #expect(port.log.sequences == Array(0..<1000))
        #expect(port.log.entries.allSatisfy { $0.status == .success })
        #expect(kernel.malformed == [])
        #expect(kernel.wire == expectedWire(sent))
        #expect(kernel.completionRingOverruns == 0)
        #expect(port.peakFramesInFlight <= 64)

        let frames = sent.reduce(0) { $0 + $1.count }
        #expect(port.tx.producerIndex == ringIndex(start, plus: frames))
        #expect(port.tx.consumerIndex == ringIndex(start, plus: frames))
        #expect(port.completion.producerIndex == ringIndex(start, plus: frames))
        #expect(port.completion.consumerIndex == ringIndex(start, plus: frames))
        #expect(port.tx.producerIndex < start, "the indices went past UInt32.max")

        let counters = port.counters
        #expect(counters.completedLists == 1000)
        #expect(counters.packets == port.sentPackets)
        #expect(counters.bytes == port.sentBytes)
        #expect(counters.dropped == 0)
        expectAllHome(port, kernel)
        #expect(port.log.entries.allSatisfy { !$0.list.isOwnedByCaller })
    }

    @Test("A completion ring filled to capacity: never more in flight than it holds; 100,000 lists complete once, in order")
    func fullCompletionRing() throws {
        let port = SimulatedPort(sendFrames: 512, txSize: 64, completionSize: 64)
        var kernel = HandPlayedKernel(port)
        var random = SeededGenerator(seed: 6)
        let total = 100_000
        var sent: [(sequence: Int, count: Int)] = []
        sent.reserveCapacity(total)
        // Completed lists at log indices nextReusable... are the caller's: reuse them or return them.
        var nextReusable = 0
        var reused = 0

        while sent.count < total {
            for _ in 0..<Int.random(in: 1...48, using: &random) where sent.count < total {
                let reusable = port.log.entries.count - nextReusable
                if reusable > 0 && (Bool.random(using: &random) || reusable > 128) {
                    let list = port.log.entries[nextReusable].list
                    nextReusable += 1
                    if reusable > 128 {
                        try port.returnList(list)
                        continue
                    }
                    let count = try list.count
                        sent.append((try port.sendAgain(list), count))
                    reused += 1
                } else {
                    let count = Int.random(in: 1...4, using: &random)
                    if let sequence = try port.sendNew(packetCount: count) {
                        sent.append((sequence, count))
                    } else if reusable > 0 {
                        let list = port.log.entries[nextReusable].list
                        nextReusable += 1
                        let count = try list.count
                        sent.append((try port.sendAgain(list), count))
                        reused += 1
                    } else {
                        break
                    }
                }
            }
            // The kernel takes all it may and completes all of it before the
            // engine's next pass reaps: with 64 frames in flight that fills
            // the completion ring exactly.
            kernel.transmit()
            kernel.complete()
            if Bool.random(using: &random) { port.poll() }
        }
        drive(port, &kernel) { port.log.entries.count == total }
        while nextReusable < port.log.entries.count {
            try port.returnList(port.log.entries[nextReusable].list)
            nextReusable += 1
        }

        #expect(reused > total / 4, "completed lists were sent again")
        #expect(kernel.completionRingFilledExactly > 100, "the kernel filled the completion ring to capacity")
        #expect(kernel.completionRingOverruns == 0)
        #expect(port.peakFramesInFlight == 64)
        #expect(kernel.malformed == [])
        #expect(kernel.wire.count == sent.reduce(0) { $0 + $1.count })
        #expect(kernel.wire == expectedWire(sent))
        #expect(port.log.sequences == Array(0..<total))
        #expect(port.log.entries.allSatisfy { $0.status == .success })
        let counters = port.counters
        #expect(counters.completedLists == total)
        #expect(counters.packets == port.sentPackets, "every packet counted as sent")
        #expect(counters.bytes == port.sentBytes)
        #expect(counters.dropped == 0, "no list counted as dropped")
        expectAllHome(port, kernel)
    }

    @Test("A stalled completion ring: sends queue, nothing past its capacity is placed, then all complete in order")
    func stalledCompletion() throws {
        let port = SimulatedPort(sendFrames: 1024, txSize: 64, completionSize: 64)
        var kernel = HandPlayedKernel(port)
        var random = SeededGenerator(seed: 7)
        var sent: [(sequence: Int, count: Int)] = []
        var frames = 0
        var lastQueued = 0

        // Stall: the kernel takes what is in the TX ring but completes nothing.
        for _ in 0..<250 {
            let count = Int.random(in: 1...4, using: &random)
            let sequence = try #require(try port.sendNew(packetCount: count))
            sent.append((sequence, count))
            frames += count
            kernel.transmit()
            if Bool.random(using: &random) { port.poll() }

            let placed = min(frames, 64)
            #expect(Int(port.context.framesInFlight) == placed)
            #expect(kernel.wire.count == placed, "nothing placed beyond the completion ring's capacity")
            let queued = port.counters.queuedFrames
            #expect(queued == frames - placed)
            #expect(queued >= lastQueued)
            lastQueued = queued
        }
        #expect(lastQueued == frames - 64)
        // More passes change nothing while the stall lasts.
        let ringFullBefore = port.counters.ringFullEvents
        for _ in 0..<10 {
            port.poll()
            kernel.transmit()
        }
        #expect(port.counters.ringFullEvents > ringFullBefore, "the passes saw the completion budget used up")
        #expect(port.counters.queuedFrames == frames - 64)
        #expect(kernel.wire.count == 64)
        #expect(port.log.entries.isEmpty, "nothing completes during the stall")
        #expect(kernel.completionRingOverruns == 0)

        // Resume, completing in chunks of varying size.
        var rounds = 0
        while port.log.entries.count < sent.count && rounds < 10_000 {
            rounds += 1
            kernel.complete(limit: Int.random(in: 1...64, using: &random))
            port.poll()
            kernel.transmit()
        }
        #expect(port.log.sequences == sent.map(\.sequence))
        #expect(port.log.entries.allSatisfy { $0.status == .success })
        #expect(kernel.wire == expectedWire(sent))
        #expect(kernel.completionRingOverruns == 0)
        #expect(port.peakFramesInFlight == 64)
        #expect(port.counters.packets == frames)
        try port.returnAllCompleted()
        expectAllHome(port, kernel)
    }

    @Test("A send's own pass reads the completion ring only when the frames in flight leave too little room; nothing is delivered before a poll")
    func sendPassReapsOnlyForRoom() throws {
        let port = SimulatedPort(sendFrames: 256, txSize: 64, completionSize: 64)
        var kernel = HandPlayedKernel(port)
        // 48 frames sent, taken and completed: the completions sit in the
        // ring, unread, while 16 slots of room remain.
        for _ in 0..<12 { _ = try #require(try port.sendNew(packetCount: 4)) }
        #expect(kernel.transmit() == 48)
        #expect(kernel.complete() == 48)
        // A send that fits the room: placed, and the completion ring left unread.
        let fits = try #require(try port.sendNew(packetCount: 16))
        #expect(port.context.framesInFlight == 64)
        #expect(port.completion.consumerIndex == 0, "a send that fits does not read completions")
        #expect(kernel.transmit() == 16)
        // A send beyond the room: its pass reads the completion ring and places it at once.
        let beyond = try #require(try port.sendNew(packetCount: 8))
        #expect(port.completion.consumerIndex == 48, "the send's pass read what had completed")
        #expect(port.context.framesInFlight == 24)
        #expect(port.counters.queuedFrames == 0, "placed in the send's own pass")
        #expect(kernel.transmit() == 8)
        #expect(port.log.entries.isEmpty, "a send's pass calls no handler")
        // The next poll delivers the twelve that completed, in order.
        port.poll()
        #expect(port.log.sequences == Array(0..<12))
        kernel.complete()
        port.poll()
        #expect(port.log.sequences == Array(0..<12) + [fits, beyond])
        #expect(port.log.entries.allSatisfy { $0.status == .success })
        #expect(kernel.completionRingOverruns == 0)
        try port.returnAllCompleted()
        expectAllHome(port, kernel)
    }

    @Test("Completion addresses out of order: lists still complete in the caller's order",
          arguments: CompletionOrder.allCases, [false, true])
    func outOfOrderCompletions(order: CompletionOrder, maskOffset: Bool) throws {
        let port = SimulatedPort(sendFrames: 256, txSize: 32, completionSize: 32, sendHeadroom: 128)
        var kernel = HandPlayedKernel(port)
        var random = SeededGenerator(seed: 8)
        var sent: [(sequence: Int, count: Int)] = []
        var returned = 0
        while sent.count < 500 {
            let count = Int.random(in: 1...4, using: &random)
            if let sequence = try port.sendNew(packetCount: count) {
                sent.append((sequence, count))
                continue
            }
            kernel.transmit(limit: Int.random(in: 1...32, using: &random))
            kernel.complete(limit: Int.random(in: 1...32, using: &random), order: order, maskOffset: maskOffset)
            port.poll()
            while returned < port.log.entries.count {
                try port.returnList(port.log.entries[returned].list)
                returned += 1
            }
        }
        drive(port, &kernel, order: order) { port.log.entries.count == sent.count }
        for entry in port.log.entries[returned...] { try port.returnList(entry.list) }

        #expect(port.log.sequences == Array(0..<500))
        #expect(port.log.entries.allSatisfy { $0.status == .success })
        #expect(kernel.wire == expectedWire(sent))
        #expect(port.counters.packets == port.sentPackets)
        expectAllHome(port, kernel)
    }

    @Test("A later list whose frames complete first waits for the earlier one")
    func laterListCompletesFirst() throws {
        let port = SimulatedPort(sendFrames: 64, txSize: 16, completionSize: 16, sendHeadroom: 256)
        var kernel = HandPlayedKernel(port)
        let a = try #require(try port.sendNew(packetCount: 3))
        let b = try #require(try port.sendNew(packetCount: 1))
        let c = try #require(try port.sendNew(packetCount: 2))
        #expect(kernel.transmit() == 6)

        // The kernel gives back c's and b's frames (newest first), not a's.
        #expect(kernel.completeNewest(3) == 3)
        port.poll()
        #expect(port.log.entries.isEmpty, "b and c are done but a, sent first, is not")
        #expect(port.context.framesInFlight == 3, "the three completions were reaped")

        #expect(kernel.complete(order: .reversed) == 3)
        port.poll()
        #expect(port.log.sequences == [a, b, c])
        #expect(port.log.batches == 1, "one batch for everything one pass completed")
        #expect(port.log.entries.allSatisfy { $0.status == .success })
        try port.returnAllCompleted()
        expectAllHome(port, kernel)
    }

    @Test("Priority 7 lists queued behind priority 0 lists while the TX ring is full are placed first")
    func priorityOvertakes() throws {
        let port = SimulatedPort(sendFrames: 64, txSize: 8, completionSize: 64)
        var kernel = HandPlayedKernel(port)
        let low = try (0..<12).map { _ in try #require(try port.sendNew(packetCount: 1, priority: 0)) }
        // The TX ring holds the first eight; four low-priority frames wait.
        #expect(port.counters.queuedFrames == 4)
        let high = try (0..<6).map { _ in try #require(try port.sendNew(packetCount: 1, priority: 7)) }
        #expect(port.counters.queuedFrames == 10)
        #expect(kernel.wire.isEmpty)

        // The kernel drains the TX ring; the next pass fills it, high priority first.
        #expect(kernel.transmit() == 8)
        port.poll()
        #expect(kernel.transmit() == 8)
        #expect(kernel.listsOnWire == Array(low[0..<8]) + high + Array(low[8..<10]))

        drive(port, &kernel) { port.log.entries.count == 18 }
        #expect(kernel.listsOnWire == Array(low[0..<8]) + high + Array(low[8..<12]))
        let completed = port.log.sequences
        #expect(completed.filter { low.contains($0) } == low, "priority 0 completes in send order")
        #expect(completed.filter { high.contains($0) } == high, "priority 7 completes in send order")
        #expect(completed == Array(low[0..<8]) + high + Array(low[8..<12]))
        #expect(port.log.entries.allSatisfy { $0.status == .success })
        try port.returnAllCompleted()
        expectAllHome(port, kernel)
    }

    @Test("Mixed priorities under a random kernel: within each priority, wire and completion order are the send order")
    func priorityOrderStress() throws {
        let port = SimulatedPort(sendFrames: 256, txSize: 16, completionSize: 32)
        var kernel = HandPlayedKernel(port)
        var random = SeededGenerator(seed: 9)
        var sentByPriority = [[Int]](repeating: [], count: 8)
        var sentCount = 0
        var returned = 0
        while sentCount < 3000 {
            let count = Int.random(in: 1...4, using: &random)
            let priority = UInt8.random(in: 0...7, using: &random)
            if let sequence = try port.sendNew(packetCount: count, priority: priority) {
                sentByPriority[Int(priority)].append(sequence)
                sentCount += 1
                if Int.random(in: 0..<4, using: &random) != 0 { continue }
            }
            kernel.transmit(limit: Int.random(in: 0...16, using: &random))
            kernel.complete(limit: Int.random(in: 0...32, using: &random), order: .shuffled)
            port.poll()
            while returned < port.log.entries.count {
                try port.returnList(port.log.entries[returned].list)
                returned += 1
            }
        }
        drive(port, &kernel) { port.log.entries.count == sentCount }
        for entry in port.log.entries[returned...] { try port.returnList(entry.list) }

        var priorityOf = [Int: Int]()
        for (priority, sequences) in sentByPriority.enumerated() { for s in sequences { priorityOf[s] = priority } }
        let completed = port.log.sequences
        #expect(Set(completed).count == sentCount, "each list completed exactly once")
        for priority in 0..<8 {
            #expect(completed.filter { priorityOf[$0] == priority } == sentByPriority[priority], "priority \(priority)")
            #expect(kernel.listsOnWire.filter { priorityOf[$0] == priority } == sentByPriority[priority])
        }
        #expect(kernel.malformed == [])
        #expect(kernel.completionRingOverruns == 0)
        #expect(port.log.entries.allSatisfy { $0.status == .success })
        expectAllHome(port, kernel)
    }

    @Test("Lists sent again from inside the completion handler go out and complete in send order")
    func resendFromCompletionHandler() throws {
        let port = SimulatedPort(sendFrames: 128, txSize: 16, completionSize: 32)
        var kernel = HandPlayedKernel(port)
        var random = SeededGenerator(seed: 10)
        var sent: [(sequence: Int, count: Int)] = []
        let rounds = 5
        // Each list goes round `rounds` times; the handler sends it again
        // while the send region is still busy delivering the batch.
        port.log.onBatch = { [unowned port] batch in
            for entry in batch where port.nextSequence < 40 * rounds {
                let count = try entry.list.count
                sent.append((try port.sendAgain(entry.list), count))
            }
        }
        for _ in 0..<40 {
            let count = Int.random(in: 1...4, using: &random)
            sent.append((try #require(try port.sendNew(packetCount: count)), count))
        }
        var passes = 0
        while port.log.entries.count < 40 * rounds && passes < 100_000 {
            passes += 1
            kernel.transmit(limit: Int.random(in: 0...16, using: &random))
            kernel.complete(limit: Int.random(in: 0...32, using: &random), order: .shuffled)
            if Bool.random(using: &random) { port.poll() } else { port.serviceSend() }
        }
        #expect(sent.count == 40 * rounds)
        #expect(port.log.sequences == sent.map(\.sequence))
        #expect(kernel.wire == expectedWire(sent))
        #expect(port.log.entries.allSatisfy { $0.status == .success })
        #expect(port.doorbell.mailbox.isEmpty)
        port.log.onBatch = nil
        for entry in port.log.entries.suffix(40) { try port.returnList(entry.list) }
        expectAllHome(port, kernel)
    }

    @Test("Lists left in the mailbox while another thread owns the region keep their send order")
    func mailboxKeepsOrder() throws {
        let port = SimulatedPort(sendFrames: 64, txSize: 64, completionSize: 64)
        var kernel = HandPlayedKernel(port)
        #expect(port.doorbell.ownership.tryAcquire())  // someone else is running the send side
        let sequences = try (0..<10).map { n in try #require(try port.sendNew(packetCount: 1 + n % 3)) }
        #expect(port.tx.producerIndex == 0, "the senders only left their lists in the mailbox")
        port.doorbell.ownership.release()
        port.poll()
        kernel.transmit()
        #expect(kernel.listsOnWire == sequences)
        drive(port, &kernel) { port.log.entries.count == 10 }
        #expect(port.log.sequences == sequences)
    }

    @Test("Pause: in-flight lists complete with .success, then queued ones with .paused, in order")
    func pauseCompletesQueuedAsPaused() throws {
        let port = SimulatedPort(sendFrames: 64, txSize: 8, completionSize: 64)
        var kernel = HandPlayedKernel(port)
        // Lists of three packets: 0 and 1 fit the TX ring, 2 only partly (two of three frames).
        let lists = try (0..<6).map { _ in try #require(try port.sendNew(packetCount: 3)) }
        #expect(port.counters.queuedFrames == 10)
        let placedBeforePause = port.tx.producerIndex

        port.admission = .paused
        port.poll()
        #expect(port.counters.queuedFrames == 0, "queued frames left the queues")
        #expect(port.log.entries.isEmpty, "nothing completes before the lists ahead of it")
        // A list sent while paused is taken and completes the same way.
        let late = try #require(try port.sendNew(packetCount: 2))
        #expect(port.log.entries.isEmpty)

        // The kernel sends what it had; nothing more was placed.
        #expect(kernel.transmit() == 8)
        #expect(port.tx.producerIndex == placedBeforePause)
        // First only list 0's frames come back.
        #expect(kernel.complete(limit: 3) == 3)
        port.poll()
        #expect(port.log.sequences == [lists[0]])
        #expect(port.log.entries.map(\.status) == [.success])
        // Then the rest: 1 went out whole, 2 only in part, the others not at all.
        kernel.complete()
        port.poll()
        #expect(port.log.sequences == lists + [late])
        #expect(port.log.entries.map(\.status) == [.success, .success, .paused, .paused, .paused, .paused, .paused])
        #expect(kernel.wire == expectedWire([(lists[0], 3), (lists[1], 3)]) + expectedWire([(lists[2], 3)]).prefix(2))

        let counters = port.counters
        #expect(counters.completedLists == 7)
        #expect(counters.dropped == 5)
        #expect(counters.packets == 6)
        #expect(counters.queuedFrames == 0)
        // Passes while paused move nothing.
        port.poll()
        #expect(port.log.entries.count == 7)
        #expect(port.tx.producerIndex == placedBeforePause)

        // Restart: new lists go out again.
        port.admission = .success
        let fresh = try #require(try port.sendNew(packetCount: 2))
        drive(port, &kernel) { port.log.entries.count == 8 }
        #expect(port.log.entries.last?.sequence == fresh)
        #expect(port.log.entries.last?.status == .success)
        try port.returnAllCompleted()
        expectAllHome(port, kernel)
    }

    @Test("Bad input is refused at the pool: stale handles, engine-owned lists, empty and oversized packets")
    func badInput() throws {
        let port = SimulatedPort(sendFrames: 16, txSize: 8, completionSize: 8, sendHeadroom: 256)
        var kernel = HandPlayedKernel(port)
        let pool = port.pool

        // Lengths.
        let list = try #require(pool.allocate(packetCount: 2))
        try list.packets.withPacket(at: 0) { (packet: borrowing Packet) throws in
            #expect(try packet.capacity == SimulatedPort.frameSize - 256)
            #expect(throws: AFXDPError.invalidFrameLength(0)) { try packet.setLength(0) }
            #expect(throws: AFXDPError.invalidFrameLength(-1)) { try packet.setLength(-1) }
            #expect(throws: AFXDPError.frameTooLarge(length: 1793, maximum: 1792)) { try packet.setLength(1793) }
            #expect(throws: AFXDPError.frameTooLarge(length: 2049, maximum: 1792)) {
                try packet.setLength(SimulatedPort.frameSize + 1)
            }
            #expect(try packet.length == 0, "a refused length changes nothing")
            try packet.setLength(1792)
            #expect(try packet.length == 1792)
        }
        // A list with an empty packet is refused and stays the caller's.
        #expect(throws: AFXDPError.emptyFrame) { try port.send(list) }
        #expect(list.isOwnedByCaller)

        // A returned handle is stale, even once its slot is handed out again.
        try port.returnList(list)
        #expect(!list.isOwnedByCaller)
        #expect(throws: AFXDPError.listAlreadyReturned) { try port.returnList(list) }
        #expect(throws: AFXDPError.listAlreadyReturned) { try port.table.transition(list, from: .caller, to: .engine) }
        let successor = try #require(pool.allocate(packetCount: 1))
        #expect(successor.slot == list.slot, "the slot was reused")
        #expect(throws: AFXDPError.listAlreadyReturned) { try port.table.transition(list, from: .caller, to: .engine) }
        #expect(throws: AFXDPError.listAlreadyReturned) { try port.returnList(list) }
        #expect(successor.isOwnedByCaller, "the stale handle did not disturb the new owner")

        // A list the engine owns (queued or in flight) is not the caller's to send or return.
        try port.prepare(successor)
        try port.send(successor)
        #expect(throws: AFXDPError.listNotOwnedByCaller) { try port.send(successor) }
        #expect(throws: AFXDPError.listNotOwnedByCaller) { try port.returnList(successor) }
        #expect(throws: AFXDPError.listNotOwnedByCaller) { try port.table.transition(successor, from: .caller, to: .engine) }
        drive(port, &kernel) { port.log.entries.count == 1 }
        #expect(port.log.entries.map(\.status) == [.success])
        // Completed, it is the caller's again.
        try port.returnList(successor)
        #expect(throws: AFXDPError.listAlreadyReturned) { try port.returnList(successor) }
        expectAllHome(port, kernel)
    }
}

/// Completed lists are the caller's again and may be sent again without
/// being returned (`XDPPort` documents this). The engine does not reset a list's
/// status when it takes it back, so a list sent a second time carries its
/// first completion's status through the whole second send.
@Suite("Sending a completed list again")
struct ResendTests {
    @Test("A completed list sent again is .pending until it completes, and is counted as sent")
    func resentListIsCountedAsSent() throws {
        let port = SimulatedPort(sendFrames: 16, txSize: 8, completionSize: 8)
        var kernel = HandPlayedKernel(port)
        try #require(try port.sendNew(packetCount: 2) != nil)
        drive(port, &kernel) { port.log.entries.count == 1 }
        let list = try #require(port.log.entries.first).list
        #expect(try list.status == .success)

        try port.sendAgain(list)
        // Sent again and not completed yet: the engine's, so the caller may not read it.
        #expect(throws: AFXDPError.listNotOwnedByCaller) { try list.status }
        #expect(port.table.lists[Int(list.slot)].status == .pending)
        drive(port, &kernel) { port.log.entries.count == 2 }
        #expect(port.log.entries.map(\.status) == [.success, .success])
        #expect(kernel.wire.count == 4)
        let counters = port.counters
        #expect(counters.packets == 4, "both sends counted")
        #expect(counters.bytes == port.sentBytes)
        #expect(counters.dropped == 0, "nothing was dropped")
        try port.returnList(list)
        expectAllHome(port, kernel)
    }

    @Test("A list completed with .paused and sent again after restart goes out and completes with .success")
    func resentAfterPauseCompletesWithSuccess() throws {
        let port = SimulatedPort(sendFrames: 16, txSize: 8, completionSize: 8)
        var kernel = HandPlayedKernel(port)
        port.admission = .paused
        try #require(try port.sendNew(packetCount: 2) != nil)
        #expect(port.log.entries.isEmpty, "send calls no handler")
        port.poll()
        #expect(port.log.entries.map(\.status) == [.paused])
        #expect(kernel.transmit() == 0, "nothing went out while paused")
        let list = try #require(port.log.entries.first).list

        port.admission = .success
        try port.sendAgain(list)
        drive(port, &kernel) { port.log.entries.count == 2 }
        #expect(kernel.wire.count == 2, "the second send went out whole")
        #expect(port.log.entries.map(\.status) == [.paused, .success])
        #expect(port.counters.dropped == 1)
        #expect(port.counters.packets == 2)
        try port.returnList(list)
        expectAllHome(port, kernel)
    }
}

@Suite("Closing the send region")
struct CloseTests {
    @Test("Close with a stalled kernel: lists it finished complete .success, every other list .closing, once, in order; every frame comes home")
    func closeWithStalledKernel() throws {
        let port = SimulatedPort(sendFrames: 64, txSize: 8, completionSize: 64)
        var kernel = HandPlayedKernel(port)
        // Lists of three: 0 and 1 fill six TX slots, 2 takes the last two.
        let lists = try (0..<8).map { _ in try #require(try port.sendNew(packetCount: 3)) }
        #expect(kernel.transmit() == 8)
        // The kernel finishes list 0 only, and the engine has not reaped it yet.
        #expect(kernel.complete(limit: 3) == 3)
        // Held by the caller across the close: allocated, never sent.
        let unsent = try #require(port.pool.allocate(packetCount: 2))

        port.close(drainPasses: 5)
        #expect(port.log.sequences == lists)
        #expect(port.log.entries.map(\.status) == [.success] + Array(repeating: .closing, count: 7))
        #expect(port.context.framesInFlight == 0)
        #expect(!port.context.hasWork)
        let counters = port.counters
        #expect(counters.completedLists == 8)
        #expect(counters.dropped == 7)
        #expect(counters.packets == 3)
        #expect(counters.queuedFrames == 0)
        #expect(kernel.wire.count == 8, "nothing was placed once closing began")

        // The caller's lists are still the caller's: returning them brings every frame home.
        #expect(unsent.isOwnedByCaller)
        try port.returnList(unsent)
        try port.returnAllCompleted()
        let home = port.pool.counts
        #expect(home.frames == port.sendFrameCount)
        #expect(home.lists == port.sendFrameCount)
    }

    /// `XDPPort.close` drains, then takes the send region for good
    /// (`sendDoorbell.ownership.acquire()`), closes the socket, calls
    /// `abandonInFlight()`. A `XDPPort.send` racing with
    /// it (allowed: any call, any thread, any time) passes the `!= .closed`
    /// check, moves its list to `.engine` and pushes it into the mailbox; its
    /// `tryAcquire` fails because close owns the region, so it returns.
    @Test("A list left in the mailbox while close owns the send region completes once, and its frames stay its own")
    func listInMailboxAtClose() throws {
        let port = SimulatedPort(sendFrames: 16, txSize: 8, completionSize: 8)
        port.close(drainPasses: 5)  // nothing outstanding: the drain ends at once

        // The racing send, landing after the drain while close owns the region.
        let list = try #require(port.pool.allocate(packetCount: 2))
        let sequence = try port.prepare(list)
        #expect(port.doorbell.ownership.tryAcquire())
        try port.send(list)
        #expect(!port.doorbell.mailbox.isEmpty, "the list waits in the mailbox for the region's owner")
        port.context.abandonInFlight(mailbox: port.doorbell.mailbox)
        port.context.deliver()
        port.doorbell.ownership.release()

        #expect(port.log.sequences == [sequence], "every list sent completes exactly once")
        #expect(port.log.entries.map(\.status) == [.closing])
        #expect(
            port.pool.counts.frames == port.sendFrameCount - 2,
            "the frames of a list that is not back with the caller are not in the free pool")
    }
}
