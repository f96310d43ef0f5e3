import AFXDPSystem
import AFXDPRings
import Atomics

/// A port's send pool: the frames, list slots and large chunks it hands out
/// for sends (`XDPPort.allocateList`), and takes back when such a list is
/// returned, on whichever port of the UMEM that happens.
///
/// Its free stacks are part of the owning port's shared region and guarded by
/// its lock (`lock`, the one `SharedRegion` holds). The pool outlives the
/// port while the UMEM lives, so that lists the caller returns after close
/// still come home.
final class SendPool: @unchecked Sendable {
    // @unchecked: the free stacks are touched only with `lock` held.
    let table: TableLayout
    /// The table as the object handles hold (it outlives the pool's users).
    unowned(unsafe) let listTable: ListTable
    let range: ListTable.Range
    let id: UInt16
    /// The shared region's lock.
    let lock: PThreadLock
    @exclusivity(unchecked) private var freeFrames: IndexStack
    @exclusivity(unchecked) private var freeSlots: IndexStack
    @exclusivity(unchecked) private var freeLargeChunks: IndexStack
    /// Frames of this pool's lists queued or in flight on another port of
    /// the UMEM (lent for forwarding): written by that port's send region.
    let lent = LentFrames()

    init(table listTable: ListTable, range: ListTable.Range, id: UInt16, lock: PThreadLock) {
        self.listTable = listTable
        table = listTable.layout
        self.range = range
        self.id = id
        self.lock = lock
        freeFrames = IndexStack(capacity: range.frameCount)
        freeSlots = IndexStack(capacity: range.frameCount)
        freeLargeChunks = IndexStack(capacity: range.largeChunkCount)
        // Pushed in reverse so that the lowest frames are handed out first.
        for frame in range.frames.reversed() {
            freeFrames.push(UInt32(frame))
            freeSlots.push(UInt32(frame))
        }
        for chunk in range.largeChunks.reversed() { freeLargeChunks.push(UInt32(chunk)) }
    }

    deinit {
        freeFrames.deallocate()
        freeSlots.deallocate()
        freeLargeChunks.deallocate()
    }

    /// The longest list the pool can ever give.
    var frameCount: Int { range.frameCount }

    /// Takes a list of `packetCount` frames, each empty (length 0) and ready
    /// to write. Returns nil when the pool has too few frames left.
    func allocate(packetCount: Int) -> PacketList? {
        invariant(packetCount > 0 && packetCount <= range.frameCount, "a list of \(packetCount) packets reached the pool")
        let headroom = UInt64(table.headroom)
        let shift = UInt64(table.frameShift)
        let lists = table.lists
        let slot: UInt32? = lock.withLock {
            // Each slot in use holds a frame or more: enough frames means enough slots.
            guard freeFrames.count >= packetCount, let head = freeSlots.pop() else { return nil }
            var remaining = UInt32(packetCount)
            var slot = head
            while true {
                let capacity = table.attachChunk(to: slot, remaining: remaining, from: &freeLargeChunks)
                let take = min(remaining, capacity)
                let packets = table.chunk(slot)
                for index in 0..<Int(take) {
                    guard let frame = freeFrames.pop() else { invariantFailed("send frames counted but missing", file: #file, line: #line) }
                    packets[index] = XDPDescriptor(address: UInt64(frame) &<< shift | headroom, length: 0)
                    table.frameOwner[Int(frame)] = head
                }
                lists[Int(slot)].chunkCount = take
                remaining -= take
                if remaining == 0 { break }
                guard let next = freeSlots.pop() else { invariantFailed("send list slots counted but missing", file: #file, line: #line) }
                lists[Int(slot)].chunkNext = next
                slot = next
            }
            lists[Int(slot)].chunkNext = noSlot
            lists[Int(head)].count = UInt32(packetCount)
            lists[Int(head)].unsetLengths = UInt32(packetCount)
            return head
        }
        guard let slot else { return nil }
        table.resetHeader(slot)
        lists[Int(slot)].ownersStamped = true
        table.setState(slot, .caller, generation: table.generation(of: slot))
        return listTable.handle(slot)
    }

    /// Takes back a list of this pool and its frames. The list state was
    /// already moved to `.free` (and its generation bumped).
    func release(_ head: UInt32) {
        let shift = UInt64(table.frameShift)
        lock.withLock {
            table.forEachSlot(of: head) { slot, packets in
                for packet in packets { freeFrames.push(UInt32(truncatingIfNeeded: packet.address &>> shift)) }
                if let large = table.largeChunk(of: slot) { freeLargeChunks.push(large) }
                freeSlots.push(slot)
            }
        }
    }

    /// Frames, list slots and large chunks free right now.
    var counts: (frames: Int, lists: Int, largeChunks: Int) {
        lock.withLock { (freeFrames.count, freeSlots.count, freeLargeChunks.count) }
    }
}

/// Frames of a pool lent to another port of the UMEM (queued or in flight
/// there): relaxed atomics added to by the sending port, on a line of its own.
final class LentFrames: @unchecked Sendable {
    // @unchecked: one atomic word in memory this object owns.
    private let storage = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
        .bindMemory(to: Int.AtomicRepresentation.self, capacity: 1)

    init() { storage.initialize(to: .init(0)) }
    deinit { UnsafeMutableRawPointer(storage).deallocate() }

    private var word: UnsafeAtomic<Int> { UnsafeAtomic(at: storage) }
    var count: Int { word.load(ordering: .relaxed) }
    func add(_ frames: Int) { word.wrappingIncrement(by: frames, ordering: .relaxed) }
}
