import AFXDPRings
import Atomics

/// What the receive handler is given: a list of received packets pointing
/// into the UMEM. The list is the caller's until it calls `Port.returnList`;
/// until then the engine does not touch its frames.
public struct ReceiveIndication {
    public let port: Port
    public let list: PacketList
    /// The port is low on receive frames (the caller holds most of them):
    /// return lists promptly or frames will be dropped.
    public var lowResources: Bool { list.indicatedWithLowResources }
}

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
    /// Frames submitted to the fill ring and not yet seen again on RX.
    @exclusivity(unchecked) private(set) var framesWithKernel = 0
    let batchSize: UInt32
    /// Below this many frames with the kernel, the port is low on receive resources.
    let lowWatermark: Int
    /// Whether the last refill left the kernel fewer than `lowWatermark` frames.
    @exclusivity(unchecked) private(set) var isLowOnResources = false
    let socketFD: Int32
    @exclusivity(unchecked) var onReceive: @Sendable (ReceiveIndication) -> Void
    @exclusivity(unchecked) unowned(unsafe) var port: Port!

    // MARK: Counters (owner writes, anyone reads)
    let counters = ReceiveCounters()
    /// Receive frames held by the caller (indicated, not returned). Written by
    /// the owner; read by anyone.
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
        heldStorage.initialize(repeating: .init(0), count: 16)
        _ = leadingPadding
        _ = trailingPadding
    }

    deinit {
        freeFrames.deallocate()
        freeSlots.deallocate()
        heldStorage.deallocate()
    }

    private var held: UnsafeAtomic<Int> { UnsafeAtomic(at: heldStorage) }
    var framesHeldByCaller: Int { held.load(ordering: .relaxed) }

    // MARK: The pass

    /// One pass of the receive side: takes back returned lists, refills the
    /// fill ring, and indicates what the RX ring holds (up to `batchSize`
    /// packets per list, at most `maximumLists` lists). Returns whether
    /// anything moved.
    @discardableResult
    func service(mailbox: SlotMailbox, maximumLists: Int = 4) -> Bool {
        var progress = takeReturns(mailbox)
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
        // Locals, so the per-frame loop does not reload them after every store.
        let ring = fill, frames = pool.frames
        slot = first
        while slot != noSlot {
            let next = pool.lists[Int(slot)].next
            var frame = pool.lists[Int(slot)].head
            while frame != noSlot {
                let nextFrame = frames[Int(frame)].next
                if room > 0 {
                    ring[index] = UInt64(frame) &<< shift
                    index &+= 1
                    room &-= 1
                } else {
                    freeFrames.push(frame)
                }
                frame = nextFrame
            }
            pool.setState(slot, .free, generation: pool.generation(of: slot))
            freeSlots.push(slot)
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
        // A slot per list and at most one list per frame: never runs out.
        let slot = freeSlots.pop()!
        let list = pool.lists + Int(slot)
        let shift = UInt64(pool.frameShift)
        let offsetMask = UInt64(pool.frameSize - 1)
        let limit = UInt64(pool.receiveFrameCount)
        // Locals, so the per-frame loop does not reload them after every store.
        let ring = rx, frames = pool.frames
        var index = start
        var bytes = 0
        // Each frame's record is written whole; the previous one's `next` is
        // then pointed at it. The first frame is the list's head.
        var previous = noSlot
        let end = start &+ count
        // `while` on wrapping indices: no Range<UInt32> overflow checks.
        while index != end {
            let descriptor = ring[index]
            index &+= 1
            let frameIndex = descriptor.address &>> shift
            precondition(frameIndex < limit, "RX ring returned a frame outside the receive pool")
            let frame = UInt32(truncatingIfNeeded: frameIndex)
            frames[Int(frame)] = FrameRecord(
                next: noSlot, owner: slot, offset: UInt16(truncatingIfNeeded: descriptor.address & offsetMask),
                length: UInt16(truncatingIfNeeded: descriptor.length))
            bytes &+= Int(descriptor.length)
            if previous != noSlot { frames[Int(previous)].next = frame } else { list.pointee.head = frame }
            previous = frame
        }
        rx.release()
        framesWithKernel -= Int(count)
        counters.add(framesWithKernel: -Int(count))
        list.pointee.tail = previous
        list.pointee.count = count
        pool.resetHeader(slot)
        list.pointee.lowResources = framesWithKernel + freeFrames.count < lowWatermark
        held.store(held.load(ordering: .relaxed) &+ Int(count), ordering: .relaxed)
        counters.add(packets: Int(count), bytes: bytes)
        let generation = pool.generation(of: slot)
        pool.setState(slot, .caller, generation: generation)
        let indication = ReceiveIndication(port: port, list: PacketList(pool: pool, slot: slot, generation: generation))
        HandlerScope.run(for: port) { onReceive(indication) }
        return true
    }

    /// Close, once the socket is gone: the fill and RX rings are gone with it,
    /// so every receive frame the caller does not hold is the engine's again.
    func reclaimAfterSocketClosed(_ mailbox: SlotMailbox) {
        ringsOpen = false
        takeReturns(mailbox)
        while freeFrames.pop() != nil {}
        while freeSlots.pop() != nil {}
        var heldFrames = [Bool](repeating: false, count: pool.receiveFrameCount)
        for slot in 0..<pool.receiveListCount where pool.state(of: UInt32(slot)) != .free {
            var frame = pool.lists[slot].head
            while frame != noSlot { heldFrames[Int(frame)] = true; frame = pool.frames[Int(frame)].next }
        }
        for frame in (0..<pool.receiveFrameCount).reversed() where !heldFrames[frame] { freeFrames.push(UInt32(frame)) }
        for slot in (0..<pool.receiveListCount).reversed() where pool.state(of: UInt32(slot)) == .free {
            freeSlots.push(UInt32(slot))
        }
        counters.add(framesWithKernel: -framesWithKernel)
        framesWithKernel = 0
    }
}
