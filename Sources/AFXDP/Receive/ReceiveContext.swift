import AFXDPRings
import Atomics

/// The receive region of a port: the RX ring, the fill ring, and the
/// receive frames and list slots not lent to the caller.
///
/// Thread ownership: every stored property below the padding is touched only
/// by the thread that currently owns the region (`doorbell.ownership`). Other
/// threads reach it through `doorbell.mailbox` (returned lists).
final class ReceiveContext: @unchecked Sendable {
    // @unchecked: single owner at a time, enforced by RegionOwnership.

    private let leadingPadding: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)

    // MARK: Owner-only state
    //
    // `@exclusivity(unchecked)`: one owner at a time (see SendContext).
    let pool: PacketPool
    @exclusivity(unchecked) var rx: ConsumerRing<XDPDescriptor>
    @exclusivity(unchecked) var fill: ProducerRing<UInt64>
    /// False once close has taken the socket (and these rings) away.
    @exclusivity(unchecked) private var ringsOpen = true
    /// Receive frames that are the engine's and not in the fill ring.
    @exclusivity(unchecked) var freeFrames: IndexStack
    /// Receive list slots not in use.
    @exclusivity(unchecked) var freeSlots: IndexStack
    /// Receive large chunks not lent to a slot.
    @exclusivity(unchecked) var freeLargeChunks: IndexStack
    /// Frames submitted to the fill ring and not yet seen again on RX.
    @exclusivity(unchecked) private(set) var framesWithKernel = 0
    let batchSize: UInt32
    /// Below this many frames with the kernel, the port is low on receive resources.
    let lowWatermark: Int
    /// Whether the last refill left the kernel fewer than `lowWatermark` frames.
    @exclusivity(unchecked) private(set) var isLowOnResources = false
    let socketFD: Int32
    let onReceive: @Sendable (ReceiveIndication) -> Void
    /// The port this region belongs to; set once, right after the port is
    /// made. The port owns this region, so it outlives every pass.
    @exclusivity(unchecked) unowned(unsafe) var port: Port!

    // MARK: Counters (owner writes, anyone reads)
    let counters = ReceiveCounters()
    /// Receive frames held by the caller (indicated, not returned), and the
    /// engine's free frames and large chunks as of its last pass: written by
    /// the owner, read by anyone (`Port.poolStatus` never waits for the region).
    private let heldStorage = UnsafeMutablePointer<Int.AtomicRepresentation>.allocate(capacity: 16)

    private let trailingPadding: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)

    init(pool: PacketPool, rx: RingMemory, fill: RingMemory, socketFD: Int32, batchSize: UInt32,
         onReceive: @escaping @Sendable (ReceiveIndication) -> Void) {
        self.pool = pool
        self.rx = ConsumerRing(rx)
        self.fill = ProducerRing(fill)
        self.socketFD = socketFD
        self.batchSize = batchSize
        self.onReceive = onReceive
        lowWatermark = Int(batchSize)
        freeFrames = IndexStack(capacity: pool.receiveFrameCount)
        freeSlots = IndexStack(capacity: pool.receiveListCount)
        for frame in (0..<pool.receiveFrameCount).reversed() { freeFrames.push(UInt32(frame)) }
        for slot in (0..<pool.receiveListCount).reversed() { freeSlots.push(UInt32(slot)) }
        freeLargeChunks = IndexStack(capacity: pool.receiveLargeChunkCount)
        for chunk in (0..<pool.receiveLargeChunkCount).reversed() { freeLargeChunks.push(UInt32(chunk)) }
        heldStorage.initialize(repeating: .init(0), count: 16)
        _ = leadingPadding
        _ = trailingPadding
    }

    deinit {
        freeFrames.deallocate()
        freeSlots.deallocate()
        freeLargeChunks.deallocate()
        heldStorage.deallocate()
    }

    private var held: UnsafeAtomic<Int> { UnsafeAtomic(at: heldStorage) }
    private var publishedFreeFrames: UnsafeAtomic<Int> { UnsafeAtomic(at: heldStorage + 1) }
    private var publishedFreeLargeChunks: UnsafeAtomic<Int> { UnsafeAtomic(at: heldStorage + 2) }
    var framesHeldByCaller: Int { held.load(ordering: .relaxed) }
    /// Receive frames the engine has (free, or with the kernel), as of the last pass.
    var framesWithEngine: Int { publishedFreeFrames.load(ordering: .relaxed) + counters.framesWithKernel }
    /// Receive large chunks not lent to a list, as of the last pass.
    var largeChunksFree: Int { publishedFreeLargeChunks.load(ordering: .relaxed) }

    /// Publishes the owner-only counts that `Port.poolStatus` reads.
    private func publish() {
        publishedFreeFrames.store(freeFrames.count, ordering: .relaxed)
        publishedFreeLargeChunks.store(freeLargeChunks.count, ordering: .relaxed)
    }

    // MARK: The pass

    /// One pass of the receive side: takes back returned lists, refills the
    /// fill ring, and indicates what the RX ring holds (up to `batchSize`
    /// packets per list, at most `maximumLists` lists). Returns whether
    /// anything moved.
    @discardableResult
    func service(mailbox: SlotMailbox, maximumLists: Int = 4) -> Bool {
        var progress = takeReturns(mailbox)
        defer { publish() }
        guard ringsOpen else { return progress }
        refill()
        for _ in 0..<maximumLists {
            guard indicateOnce() else { break }
            progress = true
        }
        if progress { refill() }
        return progress
    }

    /// Takes back every list returned since the last pass. Their frames go
    /// straight into the fill ring while it has room (one pass over them,
    /// not one into a free stack and another out of it); the rest wait in
    /// the free stack.
    @discardableResult
    func takeReturns(_ mailbox: SlotMailbox) -> Bool {
        guard !mailbox.isEmpty else { return false }
        defer { publish() }
        let first = mailbox.takeAll(links: pool.lists)
        var returned: UInt32 = 0
        var slot = first
        while slot != noSlot {
            returned &+= pool.lists[Int(slot)].count
            slot = pool.lists[Int(slot)].next
        }
        var (index, room) = ringsOpen ? fill.reserve(upTo: returned) : (0, 0)
        let granted = room
        let shift = UInt64(pool.frameShift)
        let frameMask = ~pool.offsetMask
        // Locals, so the per-packet loop does not reload them after every store.
        let ring = fill, lists = pool.lists
        slot = first
        while slot != noSlot {
            let next = lists[Int(slot)].next
            var chunk = slot
            while chunk != noSlot {
                let chunkCount = lists[Int(chunk)].chunkCount
                var packet = pool.chunk(chunk)
                let end = packet + Int(chunkCount)
                var toRing = min(room, chunkCount)
                room &-= toRing
                while toRing > 0 {
                    let (first, run) = ring.contiguousRun(from: index, upTo: toRing)
                    for offset in 0..<Int(run) {
                        first[offset] = packet.pointee.address & frameMask
                        packet += 1
                    }
                    index &+= run
                    toRing &-= run
                }
                while packet != end {
                    freeFrames.push(UInt32(truncatingIfNeeded: packet.pointee.address &>> shift))
                    packet += 1
                }
                let nextChunk = lists[Int(chunk)].chunkNext
                if let large = pool.largeChunk(of: chunk) { freeLargeChunks.push(large) }
                freeSlots.push(chunk)
                chunk = nextChunk
            }
            pool.setState(slot, .free, generation: pool.generation(of: slot))
            slot = next
        }
        if granted > 0 {
            fill.submit()
            framesWithKernel += Int(granted)
            counters.add(framesWithKernel: Int(granted))
        }
        held.store(held.load(ordering: .relaxed) &- Int(returned), ordering: .relaxed)
        return true
    }

    /// Gives the kernel its receive frames before the first frame arrives.
    /// Indicates nothing (no handler runs).
    func prime() {
        refill()
        publish()
    }

    private func refill() {
        if !freeFrames.isEmpty {
            let (start, granted) = fill.reserve(upTo: UInt32(freeFrames.count))
            if granted > 0 {
                let shift = UInt64(pool.frameShift)
                var index = start
                let end = start &+ granted
                while index != end {
                    fill[index] = UInt64(freeFrames.pop()!) &<< shift
                    index &+= 1
                }
                fill.submit()
                framesWithKernel += Int(granted)
                counters.add(framesWithKernel: Int(granted))
            }
        }
        if fill.needsWakeup { SystemCalls.wakeReceive(socketFD) }
        // Every frame not with the kernel is held by the caller: report it once per episode.
        let low = framesWithKernel < lowWatermark
        if low && !isLowOnResources { counters.noteLowResources() }
        isLowOnResources = low
    }

    /// Indicates one list of up to `batchSize` received packets.
    private func indicateOnce() -> Bool {
        let (start, count) = rx.peek(upTo: batchSize)
        guard count > 0 else { return false }
        // A slot holds a packet or more, and there is a slot per receive
        // frame: slots never run out before frames do.
        guard let head = freeSlots.pop() else { invariantFailed("no free receive list slot", file: #file, line: #line) }
        let list = pool.lists + Int(head)
        // Addresses below this are receive frames.
        let limit = UInt64(pool.receiveFrameCount) &<< UInt64(pool.frameShift)
        // Locals, so the per-packet loop does not reload them after every store.
        let ring = rx, lists = pool.lists
        var index = start
        let end = start &+ count
        var bytes = 0
        var chunk = head
        var capacity = pool.attachChunk(to: head, remaining: count, from: &freeLargeChunks)
        var filled: UInt32 = 0
        // The descriptors are copied as they are, a slot's run at a time.
        while true {
            // A slot's run, or less where the RX ring wraps (the slot then
            // takes the rest of it on the next pass of this loop).
            let (first, run) = ring.contiguousRun(
                from: index, upTo: min(end &- index, capacity &- filled))
            // Copied whole (options included: see SendContext.stampOwners),
            // then checked and counted where they now are.
            let packets = pool.chunk(chunk) + Int(filled)
            packets.update(from: first, count: Int(run))
            for offset in 0..<Int(run) {
                invariant(packets[offset].address < limit, "the RX ring returned address \(packets[offset].address), outside the receive pool")
                bytes &+= Int(truncatingIfNeeded: packets[offset].length)
            }
            index &+= run
            filled &+= run
            if filled < capacity && index != end { continue }
            lists[Int(chunk)].chunkCount = filled
            if index == end { break }
            guard let next = freeSlots.pop() else { invariantFailed("no free receive list slot", file: #file, line: #line) }
            capacity = pool.attachChunk(to: next, remaining: end &- index, from: &freeLargeChunks)
            lists[Int(chunk)].chunkNext = next
            chunk = next
            filled = 0
        }
        lists[Int(chunk)].chunkNext = noSlot
        rx.release()
        framesWithKernel -= Int(count)
        counters.add(framesWithKernel: -Int(count))
        list.pointee.count = count
        list.pointee.unsetLengths = 0
        list.pointee.ownersStamped = false
        pool.resetHeader(head)
        let lowResources = framesWithKernel + freeFrames.count < lowWatermark
        held.store(held.load(ordering: .relaxed) &+ Int(count), ordering: .relaxed)
        counters.add(packets: Int(count), bytes: bytes)
        let generation = pool.generation(of: head)
        pool.setState(head, .caller, generation: generation)
        let indication = ReceiveIndication(
            port: port, list: PacketList(pool: pool, slot: head, generation: generation), lowResources: lowResources)
        HandlerContext.run { onReceive(indication) }
        return true
    }

    /// Close, once the socket is gone: the fill and RX rings are gone with it,
    /// so every receive frame the caller does not hold is the engine's again.
    func reclaimAfterSocketClosed(_ mailbox: SlotMailbox) {
        ringsOpen = false
        takeReturns(mailbox)
        while freeFrames.pop() != nil {}
        while freeSlots.pop() != nil {}
        while freeLargeChunks.pop() != nil {}
        // Lists still out are those whose first slot is not free; their other
        // slots and their frames stay out with them.
        var heldFrames = [Bool](repeating: false, count: pool.receiveFrameCount)
        var heldSlots = [Bool](repeating: false, count: pool.receiveListCount)
        var heldLargeChunks = [Bool](repeating: false, count: pool.receiveLargeChunkCount)
        let shift = UInt64(pool.frameShift)
        for head in 0..<pool.receiveListCount where pool.state(of: UInt32(head)) != .free {
            pool.forEachSlot(of: UInt32(head)) { slot, packets in
                heldSlots[Int(slot)] = true
                if let large = pool.largeChunk(of: slot) { heldLargeChunks[Int(large)] = true }
                for packet in packets { heldFrames[Int(packet.address &>> shift)] = true }
            }
        }
        for frame in (0..<pool.receiveFrameCount).reversed() where !heldFrames[frame] { freeFrames.push(UInt32(frame)) }
        for slot in (0..<pool.receiveListCount).reversed() where !heldSlots[slot] { freeSlots.push(UInt32(slot)) }
        for chunk in (0..<pool.receiveLargeChunkCount).reversed() where !heldLargeChunks[chunk] {
            freeLargeChunks.push(UInt32(chunk))
        }
        counters.add(framesWithKernel: -framesWithKernel)
        framesWithKernel = 0
        publish()
    }
}
