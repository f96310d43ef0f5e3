import AFXDPRings
import Atomics

/// The send region of a port: the TX ring, the completion ring and the
/// queues of lists waiting for them.
///
/// Thread ownership: every stored property below the padding is touched only
/// by the thread that currently owns the region (`doorbell.ownership`);
/// other threads reach it through `doorbell.mailbox`. Counters are relaxed
/// atomics so that statistics can be read from anywhere.
final class SendContext: @unchecked Sendable {
    // @unchecked: single owner at a time, enforced by RegionOwnership.

    private let leadingPadding: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)

    // MARK: Owner-only state
    //
    // `@exclusivity(unchecked)`: the region has one owner at a time, so the
    // runtime's dynamic exclusivity checks guard nothing here; callgrind put
    // them at half of the engine's user-space instructions per packet.
    let pool: PacketPool
    @exclusivity(unchecked) var tx: ProducerRing<XDPDescriptor>
    @exclusivity(unchecked) var completion: ConsumerRing<UInt64>
    /// Lists waiting to be placed into the TX ring, one FIFO per priority
    /// (head, tail), linked through `ListRecord.next`.
    private let queueHeads: UnsafeMutablePointer<UInt32>
    private let queueTails: UnsafeMutablePointer<UInt32>
    /// Bit p set while priority p's queue is not empty: a pass finds the
    /// queues with work without looking at all eight.
    @exclusivity(unchecked) private var queuedPriorities: UInt8 = 0
    /// Lists with frames in the TX ring, in the order their first frame was
    /// placed: completions are delivered from its head, so they come back in
    /// the caller's order within a priority. Linked through `inFlightNext`.
    @exclusivity(unchecked) private var inFlightHead = noSlot
    @exclusivity(unchecked) private var inFlightTail = noSlot
    private let inFlightNext: UnsafeMutablePointer<UInt32>
    /// Frames placed and not yet reaped from the completion ring. Never more
    /// than the completion ring holds, so the kernel never finds it full.
    @exclusivity(unchecked) private(set) var framesInFlight: UInt32 = 0
    /// Frames in the priority queues, not yet placed.
    @exclusivity(unchecked) private var queuedFrames: UInt32 = 0
    /// Lists completed by the current pass, delivered as one batch.
    private let completedBatch: UnsafeMutablePointer<PacketList>
    @exclusivity(unchecked) private var completedCount = 0
    let socketFD: Int32
    let kickOnlyWhenAsked: Bool
    let onComplete: @Sendable (SendCompletions) -> Void
    /// The port this region belongs to, and its identity for `HandlerScope`;
    /// set once, right after the port is made (never in tests that drive a
    /// send region alone).
    @exclusivity(unchecked) unowned(unsafe) var port: Port? {
        didSet { portIdentity = port.map { HandlerScope.identity(of: $0) } }
    }
    @exclusivity(unchecked) private var portIdentity: UnsafeRawPointer?

    // MARK: Counters (owner writes, anyone reads)
    let counters: SendCounters

    private let trailingPadding: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)

    init(
        pool: PacketPool, tx: RingMemory, completion: RingMemory, socketFD: Int32,
        kickOnlyWhenAsked: Bool, onComplete: @escaping @Sendable (SendCompletions) -> Void
    ) {
        self.pool = pool
        self.tx = ProducerRing(tx)
        self.completion = ConsumerRing(completion)
        self.socketFD = socketFD
        self.kickOnlyWhenAsked = kickOnlyWhenAsked
        self.onComplete = onComplete
        queueHeads = .allocate(capacity: 8)
        queueHeads.initialize(repeating: noSlot, count: 8)
        queueTails = .allocate(capacity: 8)
        queueTails.initialize(repeating: noSlot, count: 8)
        inFlightNext = .allocate(capacity: pool.listCount)
        inFlightNext.initialize(repeating: noSlot, count: pool.listCount)
        completedBatch = .allocate(capacity: pool.listCount)
        counters = SendCounters()
        _ = leadingPadding
        _ = trailingPadding
    }

    deinit {
        queueHeads.deallocate()
        queueTails.deallocate()
        inFlightNext.deallocate()
        completedBatch.deallocate()
    }

    var hasWork: Bool { inFlightHead != noSlot || hasQueued }

    // MARK: The pass

    /// One pass of the send side: takes what the mailbox holds, reaps the
    /// completion ring, places queued frames into the TX ring, kicks the
    /// kernel and delivers the completed lists in one batch. Returns whether
    /// anything moved. `admit` is `.success` while the port runs; otherwise
    /// new and queued lists complete with that status instead of being sent.
    @discardableResult
    func service(mailbox: SlotMailbox, admit: SendStatus) -> Bool {
        var progress = takeMailbox(mailbox)
        if admit != .success { stopPlacing(status: admit) }
        if reapCompletions() { progress = true }
        if admit == .success, place() { progress = true }
        if kick() { progress = true }
        collectCompleted()
        deliver()
        return progress || completedCount > 0
    }

    /// Moves what other threads sent into the priority queues, in send order.
    @discardableResult
    private func takeMailbox(_ mailbox: SlotMailbox) -> Bool {
        guard !mailbox.isEmpty else { return false }
        var slot = mailbox.takeAll(links: pool.lists)
        while slot != noSlot {
            let next = pool.lists[Int(slot)].next
            enqueue(slot)
            slot = next
        }
        return true
    }

    /// After close: lists sent while the port was closing complete with
    /// `.closing`, in order; nothing touches the (gone) rings.
    func completeMailboxAfterClose(_ mailbox: SlotMailbox) -> Bool {
        guard takeMailbox(mailbox) else { return false }
        stopPlacing(status: .closing)
        collectCompleted()
        deliver()
        return true
    }

    private func enqueue(_ slot: UInt32) {
        let record = pool.lists + Int(slot)
        record.pointee.next = noSlot
        record.pointee.status = .pending
        record.pointee.placedBytes = 0
        record.pointee.placedPackets = 0
        record.pointee.placeChunk = slot
        record.pointee.placeIndex = 0
        if !record.pointee.ownersStamped { stampOwners(slot) }
        let priority = Int(record.pointee.priority)
        if queueTails[priority] == noSlot {
            queueHeads[priority] = slot
            queuedPriorities |= 1 << priority
        } else {
            pool.lists[Int(queueTails[priority])].next = slot
        }
        queueTails[priority] = slot
        queuedFrames += record.pointee.count
        counters.add(queued: Int(record.pointee.count))
    }

    /// Names the list in `frameOwner` for each of its frames, so that
    /// completions find it. Once per list: a frame stays in its list until
    /// the list is returned (a send list is stamped when allocated; a
    /// received list when it is first sent).
    private func stampOwners(_ list: UInt32) {
        let shift = UInt64(pool.frameShift)
        let frameCount = UInt64(pool.frameCount)
        pool.forEachSlot(of: list) { _, packets in
            for packet in packets {
                let frame = packet.address &>> shift
                precondition(frame < frameCount, "a packet's address is outside the UMEM")
                // Received descriptors are kept as the kernel wrote them; their
                // options are 0 without multi-buffer (XDP_USE_SG, never set
                // here), and a TX descriptor with other bits would be refused.
                precondition(packet.options == 0, "a received descriptor carries options: multi-buffer is not supported")
                pool.frameOwner[Int(truncatingIfNeeded: frame)] = list
            }
        }
        pool.lists[Int(list)].ownersStamped = true
    }

    /// Pause or close: nothing more goes into the TX ring. Every queued list
    /// joins the in-flight FIFO with `status`, behind the lists sent before
    /// it, so completion order stays the caller's.
    private func stopPlacing(status: SendStatus) {
        for priority in (0..<8).reversed() {
            var slot = queueHeads[priority]
            while slot != noSlot {
                let record = pool.lists + Int(slot)
                let next = record.pointee.next
                // A queued list is placed in order, from placedPackets on
                // (a fully placed one has already left the queue).
                let unplaced = Int(record.pointee.count &- record.pointee.placedPackets)
                counters.add(queued: -unplaced)
                queuedFrames -= UInt32(unplaced)
                record.pointee.placeChunk = noSlot
                record.pointee.status = status
                if !record.pointee.inFlight { appendInFlight(slot) }
                slot = next
            }
            queueHeads[priority] = noSlot
            queueTails[priority] = noSlot
        }
        queuedPriorities = 0
    }

    private func appendInFlight(_ slot: UInt32) {
        pool.lists[Int(slot)].inFlight = true
        inFlightNext[Int(slot)] = noSlot
        if inFlightTail == noSlot { inFlightHead = slot } else { inFlightNext[Int(inFlightTail)] = slot }
        inFlightTail = slot
    }

    /// Moves queued frames into the TX ring, highest priority first, as far as
    /// the TX ring and the completion ring allow.
    private func place() -> Bool {
        guard queuedFrames > 0 else { return false }
        let wanted = min(completion.size &- framesInFlight, queuedFrames)
        var budget = min(wanted, tx.freeCount(wanted: wanted))
        guard budget > 0 else {
            counters.noteRingFull()
            return false
        }
        let (start, granted) = tx.reserve(upTo: budget)
        budget = granted
        var index = start
        // Locals, so the per-packet loop does not reload them after every store
        // (the compiler cannot tell that the stores leave them alone).
        let ring = tx
        let lists = pool.lists
        // Highest priority first.
        while budget > 0, queuedPriorities != 0 {
            let priority = 7 &- queuedPriorities.leadingZeroBitCount
            while budget > 0, queueHeads[priority] != noSlot {
                let slot = queueHeads[priority]
                let record = lists + Int(slot)
                if !record.pointee.inFlight { appendInFlight(slot) }
                var chunk = record.pointee.placeChunk
                var at = record.pointee.placeIndex
                var bytes: UInt32 = 0
                var placed: UInt32 = 0
                // Packets are already in the TX ring's format: copied a slot's run at a time.
                while chunk != noSlot, placed < budget {
                    let chunkCount = lists[Int(chunk)].chunkCount
                    let source = pool.chunk(chunk) + Int(at)
                    let (destination, run) = ring.contiguousRun(
                        from: index &+ placed, upTo: min(chunkCount &- at, budget &- placed))
                    destination.update(from: source, count: Int(run))
                    for offset in 0..<Int(run) { bytes &+= source[offset].length }
                    placed &+= run
                    at &+= run
                    if at == chunkCount {
                        chunk = lists[Int(chunk)].chunkNext
                        at = 0
                    }
                }
                index &+= placed
                budget -= placed
                record.pointee.outstanding += placed
                record.pointee.placedPackets &+= placed
                record.pointee.placedBytes &+= bytes
                record.pointee.placeChunk = chunk
                record.pointee.placeIndex = at
                if chunk == noSlot {
                    queueHeads[priority] = record.pointee.next
                    if queueHeads[priority] == noSlot {
                        queueTails[priority] = noSlot
                        queuedPriorities &= ~(1 << priority)
                    }
                }
            }
        }
        let placed = index &- start
        precondition(placed == granted, "placed \(placed) of \(granted) reserved TX slots")
        guard placed > 0 else { return false }
        tx.submit()
        framesInFlight &+= placed
        queuedFrames -= placed
        counters.add(queued: -Int(placed))
        return true
    }

    private var hasQueued: Bool { queuedPriorities != 0 }

    /// Copy mode moves TX only on a kick, 32 descriptors at a time: kick
    /// until the kernel has taken the ring or says to come back later.
    private func kick() -> Bool {
        guard tx.outstanding > 0 else { return false }
        if kickOnlyWhenAsked && !tx.needsWakeup { return false }
        var kicks = 0
        let maximumKicks = Int(tx.size / 32) + 2
        while kicks < maximumKicks {
            kicks += 1
            switch SystemCalls.kickTransmit(socketFD) {
            case .done: counters.noteKicks(kicks); return true
            case .again: if tx.outstanding == 0 { counters.noteKicks(kicks); return true }
            // The kernel took nothing (link down, no buffers): no progress, so
            // a polling loop may sleep instead of spinning on the syscall.
            case .later: counters.noteKicks(kicks); return false
            case .failed: counters.noteKicks(kicks); counters.noteKickError(); return false
            }
        }
        counters.noteKicks(kicks)
        return true
    }

    /// Reads the completion ring: each address names a frame, each frame
    /// names its list (`frameOwner`); a list is done when none of its frames is out.
    /// Consecutive completions mostly belong to one list, so they are counted
    /// in runs and each run is subtracted once.
    private func reapCompletions() -> Bool {
        let (start, count) = completion.peek(upTo: completion.size)
        guard count > 0 else { return false }
        let shift = UInt64(pool.frameShift)
        let frameCount = UInt64(pool.frameCount)
        let owners = pool.frameOwner, lists = pool.lists
        var runOwner = noSlot
        var runLength: UInt32 = 0
        var index = start
        var remaining = count
        // At most two pieces: up to the ring's end, then from its start.
        while remaining > 0 {
            let (first, length) = completion.contiguousRun(from: index, upTo: remaining)
            var address = first
            let end = first + Int(length)
            while address != end {
                // Two at a time while both belong to the current run (the
                // common case: a list's frames come back together)...
                while end - address >= 2 {
                    let frame0 = address[0] &>> shift, frame1 = address[1] &>> shift
                    precondition(max(frame0, frame1) < frameCount, "completion ring returned an address outside the UMEM")
                    guard owners[Int(truncatingIfNeeded: frame0)] == runOwner,
                        owners[Int(truncatingIfNeeded: frame1)] == runOwner
                    else { break }
                    runLength &+= 2
                    address += 2
                }
                guard address != end else { break }
                // ...then one, which may start the next run.
                let frame = address.pointee &>> shift
                precondition(frame < frameCount, "completion ring returned an address outside the UMEM")
                let owner = owners[Int(truncatingIfNeeded: frame)]
                if owner == runOwner {
                    runLength &+= 1
                } else {
                    if runLength > 0 { lists[Int(runOwner)].outstanding -= runLength }
                    runOwner = owner
                    runLength = 1
                }
                address += 1
            }
            index &+= length
            remaining &-= length
        }
        lists[Int(runOwner)].outstanding -= runLength
        completion.release()
        framesInFlight &-= count
        return true
    }

    /// Pops finished lists off the in-flight FIFO's head into the batch.
    private func collectCompleted() {
        var packets = 0
        var bytes = 0
        while inFlightHead != noSlot {
            let slot = inFlightHead
            let record = pool.lists + Int(slot)
            guard record.pointee.outstanding == 0, record.pointee.placeChunk == noSlot else { break }
            inFlightHead = inFlightNext[Int(slot)]
            if inFlightHead == noSlot { inFlightTail = noSlot }
            record.pointee.inFlight = false
            if record.pointee.status != .pending {
                counters.noteDropped()
            } else {
                record.pointee.status = .success
                packets += Int(record.pointee.count)
                bytes += Int(record.pointee.placedBytes)
            }
            let generation = pool.generation(of: slot)
            pool.setState(slot, .caller, generation: generation)
            completedBatch[completedCount] = PacketList(pool: pool, slot: slot, generation: generation)
            completedCount += 1
        }
        if packets > 0 { counters.add(packets: packets, bytes: bytes) }
    }

    private func deliver() {
        guard completedCount > 0 else { return }
        let batch = SendCompletions(port: port, lists: UnsafeBufferPointer(start: completedBatch, count: completedCount))
        counters.add(completedLists: completedCount)
        completedCount = 0
        HandlerScope.run(for: portIdentity) { onComplete(batch) }
    }

    /// Close, once the socket is gone: every list still queued, in flight or
    /// in the mailbox completes with `.closing`; the kernel no longer holds
    /// its frames.
    func abandonInFlight(mailbox: SlotMailbox) {
        takeMailbox(mailbox)
        stopPlacing(status: .closing)
        var slot = inFlightHead
        while slot != noSlot {
            // Frames whose completion never came back are not counted as sent.
            pool.lists[Int(slot)].placedPackets -= pool.lists[Int(slot)].outstanding
            pool.lists[Int(slot)].outstanding = 0
            if pool.lists[Int(slot)].status == .pending { pool.lists[Int(slot)].status = .closing }
            slot = inFlightNext[Int(slot)]
        }
        framesInFlight = 0
        collectCompleted()
        deliver()
    }
}

/// The lists one send pass completed, in completion order. Valid only during
/// the completion handler call: copy the handles out if you keep them.
public struct SendCompletions: RandomAccessCollection {
    /// The port that completed them (nil only in tests that drive a send region alone).
    public var port: Port! { completingPort }
    // unowned(unsafe): valid for the handler call only, while the port runs
    // it; a strong reference would cost a retain and a release per batch.
    @usableFromInline unowned(unsafe) let completingPort: Port?
    public let lists: UnsafeBufferPointer<PacketList>

    init(port: Port?, lists: UnsafeBufferPointer<PacketList>) {
        completingPort = port
        self.lists = lists
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { lists.count }
    public subscript(position: Int) -> PacketList { lists[position] }
}
