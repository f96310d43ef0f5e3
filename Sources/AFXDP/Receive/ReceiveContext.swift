import AFXDPRings
import Atomics

/// The receive region of a port: the RX ring, the fill ring, and its receive
/// pool, the frames, list slots and large chunks that feed the fill ring.
///
/// The pool is the home of the lists this region indicates: returned (on any
/// port of the UMEM), they come back through `door.mailbox`. The region
/// therefore outlives its port while the UMEM lives (the UMEM's pool
/// directory keeps it): after close the rings are gone (`ringsOpen` false),
/// and returned lists are taken back at once by whoever returns them.
///
/// Thread ownership: every stored property below the padding is touched only
/// by the thread that currently owns the region (`door.ownership`). Other
/// threads reach it through `door.mailbox` (returned lists).
final class ReceiveContext: @unchecked Sendable {
    // @unchecked: single owner at a time, enforced by RegionOwnership.

    private let leadingPadding: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)

    // MARK: Owner-only state
    //
    // `@exclusivity(unchecked)`: one owner at a time (see SendContext).
    /// The UMEM's list table, by value (no retain on the hot paths)...
    let table: TableLayout
    /// ...and as the object handles hold (the table outlives this region).
    unowned(unsafe) let listTable: ListTable
    /// This pool's share of the table, and its id in the UMEM's directory.
    let range: ListTable.Range
    let id: UInt16
    /// The pool's frames as UMEM addresses: from `addressBase`, `addressSpan` bytes.
    private let addressBase: UInt64
    private let addressSpan: UInt64
    @exclusivity(unchecked) var rx: ConsumerRing<XDPDescriptor>
    @exclusivity(unchecked) var fill: ProducerRing<UInt64>
    /// False once close has taken the socket (and these rings) away.
    @exclusivity(unchecked) private(set) var ringsOpen = true
    /// Receive frames that are the engine's and not in the fill ring.
    @exclusivity(unchecked) var freeFrames: IndexStack
    /// Receive list slots not in use.
    @exclusivity(unchecked) var freeSlots: IndexStack
    /// Receive large chunks not lent to a slot.
    @exclusivity(unchecked) var freeLargeChunks: IndexStack
    /// Frames submitted to the fill ring and not yet seen again on RX.
    @exclusivity(unchecked) private(set) var framesWithKernel = 0
    let batchSize: UInt32
    /// Multi-buffer (XDP_USE_SG): a packet may be a run of descriptors,
    /// which one list always holds whole.
    let multiBuffer: Bool
    /// Below this many frames with the kernel, the port is low on receive resources.
    let lowWatermark: Int
    /// Whether the last refill left the kernel fewer than `lowWatermark` frames.
    @exclusivity(unchecked) private(set) var isLowOnResources = false
    let socketFD: Int32
    /// The receive handler, in a box this region holds one reference to.
    /// Replaced only by `dropHandler` at close, which holds the region (so no
    /// pass, and no handler call from one, is running on any thread, this
    /// one included: the region's ownership is not re-entrant): a pass may
    /// therefore call it through a borrowed reference, without retaining
    /// the handler's captures for every list.
    @exclusivity(unchecked) private var onReceive: Unmanaged<ReceiveHandler>

    /// Who owns the region now, and the mailbox of returned lists: written by
    /// any thread, on lines of their own.
    let door = RegionDoorbell()
    /// Frames of this pool's lists queued or in flight on another port of
    /// the UMEM (lent for forwarding): written by that port's send region.
    let lent = LentFrames()

    // MARK: Counters (owner writes, anyone reads)
    let counters = ReceiveCounters()
    /// Receive frames held by the caller (indicated, not returned), and the
    /// engine's free frames and large chunks as of its last pass: written by
    /// the owner, read by anyone (`XDPPort.poolStatus` never waits for the region).
    private let heldStorage = UnsafeMutablePointer<Int.AtomicRepresentation>.allocate(capacity: 16)

    private let trailingPadding: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)

    init(table listTable: ListTable, range: ListTable.Range, id: UInt16, rx: RingMemory, fill: RingMemory, socketFD: Int32,
         batchSize: UInt32, multiBuffer: Bool = false, onReceive: @escaping @Sendable (ReceiveIndication) -> Void) {
        self.listTable = listTable
        table = listTable.layout
        self.range = range
        self.id = id
        addressBase = UInt64(range.firstFrame) &<< UInt64(table.frameShift)
        addressSpan = UInt64(range.frameCount) &<< UInt64(table.frameShift)
        self.rx = ConsumerRing(rx)
        self.fill = ProducerRing(fill)
        self.socketFD = socketFD
        self.batchSize = batchSize
        self.multiBuffer = multiBuffer
        self.onReceive = Unmanaged.passRetained(ReceiveHandler(onReceive))
        lowWatermark = Int(batchSize)
        freeFrames = IndexStack(capacity: range.frameCount)
        freeSlots = IndexStack(capacity: range.frameCount)
        for frame in range.frames.reversed() {
            freeFrames.push(UInt32(frame))
            freeSlots.push(UInt32(frame))
        }
        freeLargeChunks = IndexStack(capacity: range.largeChunkCount)
        for chunk in range.largeChunks.reversed() { freeLargeChunks.push(UInt32(chunk)) }
        heldStorage.initialize(repeating: .init(0), count: 16)
        _ = leadingPadding
        _ = trailingPadding
    }

    deinit {
        freeFrames.deallocate()
        freeSlots.deallocate()
        freeLargeChunks.deallocate()
        heldStorage.deallocate()
        onReceive.release()
    }

    private var held: UnsafeAtomic<Int> { UnsafeAtomic(at: heldStorage) }
    private var publishedFreeFrames: UnsafeAtomic<Int> { UnsafeAtomic(at: heldStorage + 1) }
    private var publishedFreeLargeChunks: UnsafeAtomic<Int> { UnsafeAtomic(at: heldStorage + 2) }
    /// 1 while the caller holds indications back (`holdReceive`): passes
    /// still take returns and refill, but leave the RX ring to the kernel.
    /// Written by any thread, read by the owner.
    private var indicationsHeld: UnsafeAtomic<Int> { UnsafeAtomic(at: heldStorage + 3) }
    func holdIndications(_ hold: Bool) { indicationsHeld.store(hold ? 1 : 0, ordering: .relaxed) }
    var framesHeldByCaller: Int { held.load(ordering: .relaxed) }
    /// Receive frames the engine has (free, or with the kernel), as of the last pass.
    var framesWithEngine: Int { publishedFreeFrames.load(ordering: .relaxed) + counters.framesWithKernel }
    /// Receive large chunks not lent to a list, as of the last pass.
    var largeChunksFree: Int { publishedFreeLargeChunks.load(ordering: .relaxed) }

    /// Publishes the owner-only counts that `XDPPort.poolStatus` reads.
    private func publish() {
        publishedFreeFrames.store(freeFrames.count, ordering: .relaxed)
        publishedFreeLargeChunks.store(freeLargeChunks.count, ordering: .relaxed)
    }

    // MARK: The pass

    /// One pass of the receive side: takes back returned lists, refills the
    /// fill ring, and indicates what the RX ring holds (up to `batchSize`
    /// packets per list, at most `maximumLists` lists). Returns whether
    /// anything moved. `port`, the one this region belongs to, is what the
    /// indications name: the port passes itself in (it is alive for the
    /// call), so the region keeps no reference to it.
    @discardableResult
    func service(port: XDPPort, maximumLists: Int = 4) -> Bool {
        var progress = takeReturns()
        defer { publish() }
        guard ringsOpen else { return progress }
        refill()
        guard indicationsHeld.load(ordering: .relaxed) == 0 else { return progress }
        for _ in 0..<maximumLists {
            guard indicateOnce(port: port) else { break }
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
    func takeReturns() -> Bool {
        let mailbox = door.mailbox
        guard !mailbox.isEmpty else { return false }
        defer { publish() }
        let first = mailbox.takeAll(links: table.lists)
        var returned: UInt32 = 0
        var slot = first
        while slot != noSlot {
            returned &+= table.lists[Int(slot)].count
            slot = table.lists[Int(slot)].next
        }
        var (index, room) = ringsOpen ? fill.reserve(upTo: returned) : (0, 0)
        let granted = room
        let shift = UInt64(table.frameShift)
        let frameMask = ~table.offsetMask
        // Locals, so the per-packet loop does not reload them after every store.
        let ring = fill, lists = table.lists
        slot = first
        while slot != noSlot {
            let next = lists[Int(slot)].next
            var chunk = slot
            while chunk != noSlot {
                let chunkCount = lists[Int(chunk)].chunkCount
                var packet = table.chunk(chunk)
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
                if let large = table.largeChunk(of: chunk) { freeLargeChunks.push(large) }
                freeSlots.push(chunk)
                chunk = nextChunk
            }
            table.setState(slot, .free, generation: table.generation(of: slot))
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
                let shift = UInt64(table.frameShift)
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
    private func indicateOnce(port: XDPPort) -> Bool {
        var (start, count) = rx.peek(upTo: batchSize)
        guard count > 0 else { return false }
        if multiBuffer, rx[start &+ count &- 1].options & XDPDescriptor.continues != 0 {
            count = extendToPacketEnd(start: start, count: count)
            guard count > 0 else { return false }
        }
        // A slot holds a packet or more, and there is a slot per receive
        // frame: slots never run out before frames do.
        guard let head = freeSlots.pop() else { invariantFailed("no free receive list slot", file: #file, line: #line) }
        let list = table.lists + Int(head)
        let base = addressBase, span = addressSpan
        // Locals, so the per-packet loop does not reload them after every store.
        let ring = rx, lists = table.lists
        var index = start
        let end = start &+ count
        var bytes = 0
        var chunk = head
        var capacity = table.attachChunk(to: head, remaining: count, from: &freeLargeChunks)
        var filled: UInt32 = 0
        // The descriptors are copied as they are, a slot's run at a time.
        while true {
            // A slot's run, or less where the RX ring wraps (the slot then
            // takes the rest of it on the next pass of this loop).
            let (first, run) = ring.contiguousRun(
                from: index, upTo: min(end &- index, capacity &- filled))
            // Copied whole (options included: see SendContext.stampOwners),
            // checked and counted in the same pass.
            let packets = table.chunk(chunk) + Int(filled)
            let (offsets, runBytes) = copyDescriptors(from: first, to: packets, count: Int(run), offsetBy: base)
            bytes &+= Int(runBytes)
            if offsets >= span {
                for offset in 0..<Int(run) {
                    invariant(packets[offset].address &- base < span, "the RX ring returned address \(packets[offset].address), outside the receive pool")
                }
            }
            index &+= run
            filled &+= run
            if filled < capacity && index != end { continue }
            lists[Int(chunk)].chunkCount = filled
            if index == end { break }
            guard let next = freeSlots.pop() else { invariantFailed("no free receive list slot", file: #file, line: #line) }
            capacity = table.attachChunk(to: next, remaining: end &- index, from: &freeLargeChunks)
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
        table.resetHeader(head)
        var continuations: UInt32 = 0
        if multiBuffer {
            table.forEachSlot(of: head) { _, packets in
                for packet in packets { continuations &+= packet.options & XDPDescriptor.continues }
            }
            list.pointee.continuations = continuations
        }
        let lowResources = framesWithKernel + freeFrames.count < lowWatermark
        held.store(held.load(ordering: .relaxed) &+ Int(count), ordering: .relaxed)
        counters.add(packets: Int(count &- continuations), bytes: bytes)
        let generation = table.generation(of: head)
        table.setState(head, .caller, generation: generation)
        let indication = ReceiveIndication(
            port: port, list: PacketList(table: listTable, slot: head, generation: generation), lowResources: lowResources)
        onReceive._withUnsafeGuaranteedRef { handler in HandlerContext.run { handler.call(indication) } }
        return true
    }

    /// A peeked run that ends inside a packet (multi-buffer) takes the rest
    /// of that packet's descriptors, so that one list holds it whole. The
    /// kernel publishes a packet's descriptors together; should the rest be
    /// missing anyway, the unfinished packet is left in the ring for the
    /// next pass. Returns the run's new length (0: nothing whole yet).
    private func extendToPacketEnd(start: UInt32, count: UInt32) -> UInt32 {
        var count = count
        while rx[start &+ count &- 1].options & XDPDescriptor.continues != 0 {
            let (_, more) = rx.peek(upTo: 1)
            if more == 0 {
                var whole = count
                while whole > 0, rx[start &+ whole &- 1].options & XDPDescriptor.continues != 0 { whole -= 1 }
                rx.cancel(count - whole)
                return whole
            }
            count &+= 1
        }
        return count
    }

    /// Close, once the socket is gone: the fill and RX rings are gone with it,
    /// so every receive frame the caller does not hold is the engine's again.
    func reclaimAfterSocketClosed() {
        ringsOpen = false
        // Before the last look at the mailbox: a list returned from now on is
        // taken back by its returner, or by the owner's look after letting go.
        closedFlag.store(1, ordering: .sequentiallyConsistent)
        takeReturns()
        while freeFrames.pop() != nil {}
        while freeSlots.pop() != nil {}
        while freeLargeChunks.pop() != nil {}
        // Lists still out are those whose first slot is not free; their other
        // slots and their frames stay out with them.
        let first = range.firstFrame
        var heldFrames = [Bool](repeating: false, count: range.frameCount)
        var heldSlots = [Bool](repeating: false, count: range.frameCount)
        var heldLargeChunks = [Bool](repeating: false, count: range.largeChunkCount)
        let shift = UInt64(table.frameShift)
        for head in range.frames where table.state(of: UInt32(head)) != .free {
            table.forEachSlot(of: UInt32(head)) { slot, packets in
                heldSlots[Int(slot) - first] = true
                if let large = table.largeChunk(of: slot) { heldLargeChunks[Int(large) - range.firstLargeChunk] = true }
                for packet in packets { heldFrames[Int(packet.address &>> shift) - first] = true }
            }
        }
        for frame in range.frames.reversed() where !heldFrames[frame - first] { freeFrames.push(UInt32(frame)) }
        for slot in range.frames.reversed() where !heldSlots[slot - first] { freeSlots.push(UInt32(slot)) }
        for chunk in range.largeChunks.reversed() where !heldLargeChunks[chunk - range.firstLargeChunk] {
            freeLargeChunks.push(UInt32(chunk))
        }
        counters.add(framesWithKernel: -framesWithKernel)
        framesWithKernel = 0
        publish()
    }

    /// Lets go of the receive handler once the port is closed (no pass calls
    /// it again). By the region's owner only: close's teardown, which holds
    /// the region, so the handler is not running (see `onReceive`).
    func dropHandler() {
        let dropped = onReceive
        onReceive = Unmanaged.passRetained(ReceiveHandler { _ in })
        dropped.release()
    }

    /// Set once the port's rings are gone: returned lists are then taken
    /// back by whoever returns them, since no pass runs any more.
    /// 1 once closed. In `heldStorage` (an UnsafeAtomic inlines, where a
    /// ManagedAtomic's storage lookup was a call on every return), 96 bytes
    /// past the owner's counts: on another cache line from them whatever the
    /// allocation's alignment, so returners on other threads read it
    /// without pulling in the lines the owner writes every pass.
    private var closedFlag: UnsafeAtomic<Int> { UnsafeAtomic(at: heldStorage + 12) }

    /// A list of this pool returned (its state already moved and its
    /// generation bumped), on any port of the UMEM and any thread.
    func takeBack(_ slot: UInt32) {
        door.mailbox.push(slot, links: table.lists)
        if closedFlag.load(ordering: .sequentiallyConsistent) != 0 {
            door.runIfFree(rounds: 1) { takeReturns() }
        }
    }
}

/// A receive handler in a box of its own: see `ReceiveContext.onReceive`.
final class ReceiveHandler: Sendable {
    let call: @Sendable (ReceiveIndication) -> Void
    init(_ call: @escaping @Sendable (ReceiveIndication) -> Void) { self.call = call }
}
