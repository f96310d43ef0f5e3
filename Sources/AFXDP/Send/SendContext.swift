import AFXDPRings
import AFXDPSystem
import Atomics
import Logging
#if canImport(Glibc)
import Glibc
#endif

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
    /// The UMEM's list table, by value (no retain on the hot paths)...
    let table: TableLayout
    /// ...and as the object handles hold (the table outlives this region).
    unowned(unsafe) let listTable: ListTable
    /// The port's own pools: a list from any other pool of the UMEM is lent
    /// to this region while queued or in flight (forwarding without a copy).
    let ownPools: (receive: UInt16, send: UInt16)
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
    /// Lists completed and not yet delivered, in completion order. Passes
    /// that may not run handlers (`send`'s) collect into it; the next pass
    /// that may delivers it as one batch. A list is in it at most once, so
    /// `listCount` entries suffice.
    let delivery: CompletionDelivery
    let socketFD: Int32
    let kickOnlyWhenAsked: Bool
    let onComplete: @Sendable (SendCompletions) -> Void
    /// The port this region belongs to; set once, right after the port is
    /// made (never in tests that drive a send region alone). The port owns
    /// this region, so it outlives every pass.
    @exclusivity(unchecked) unowned(unsafe) var port: XDPPort? {
        didSet { delivery.port = port }
    }

    // MARK: Counters (owner writes, anyone reads)
    let counters: SendCounters
    /// Why the port must close itself, as `PortFailure.code` (0: it need
    /// not): its device is gone (ENXIO, ENODEV on a kick, the link probe, or
    /// ENETDOWN pending on an idle socket), or the completion ring stood
    /// still past `stallFailure`. A lost device outranks a stall. Written by
    /// the owner (and the idle check), read by the port's passes, which then
    /// close the port. One word, so `poll` reads it once.
    let failureCode = ManagedAtomic<UInt8>(0)

    /// The device is gone: nothing in flight will ever complete.
    func noteDeviceLost() { failureCode.store(PortFailure.deviceLost.code, ordering: .releasing) }

    var failure: PortFailure? { PortFailure(code: failureCode.load(ordering: .acquiring)) }

    // MARK: Link and stall watch (owner-only, like the state above)
    let faults: SendFaultPolicy
    private let linkDownTimeout: UInt64?
    private let stallTimeout: UInt64
    private let stallFailure: UInt64?
    /// When the engine found the link down (monotonic ns); 0: up as far as
    /// it knows. While down nothing is placed or kicked: the lists wait in
    /// their queues, where a timeout can still complete them.
    @exclusivity(unchecked) private var linkDownSince: UInt64 = 0
    @exclusivity(unchecked) private var lastLinkLook: UInt64 = 0
    @exclusivity(unchecked) private var linkTimedOut = false
    /// Passes in a row that found no completion with frames out, and when
    /// the watch first looked at the clock during them (0: not yet).
    @exclusivity(unchecked) private var quietPasses: UInt32 = 0
    @exclusivity(unchecked) private var quietSince: UInt64 = 0
    @exclusivity(unchecked) private var stalled = false
    /// Events for `faults.onEvent`, handed over by the next delivering pass.
    @exclusivity(unchecked) private var events: [PortEvent] = []

    private let trailingPadding: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)

    init(
        table listTable: ListTable, ownPools: (receive: UInt16, send: UInt16), tx: RingMemory, completion: RingMemory, socketFD: Int32,
        kickOnlyWhenAsked: Bool, faults: SendFaultPolicy = .none, onComplete: @escaping @Sendable (SendCompletions) -> Void
    ) {
        self.faults = faults
        linkDownTimeout = faults.linkDownTimeout?.nanoseconds
        stallTimeout = max(1, faults.stallTimeout.nanoseconds)
        stallFailure = faults.stallFailure?.nanoseconds
        events.reserveCapacity(8)
        self.listTable = listTable
        table = listTable.layout
        self.ownPools = ownPools
        self.tx = ProducerRing(tx)
        self.completion = ConsumerRing(completion)
        self.socketFD = socketFD
        self.kickOnlyWhenAsked = kickOnlyWhenAsked
        self.onComplete = onComplete
        queueHeads = .allocate(capacity: 8)
        queueHeads.initialize(repeating: noSlot, count: 8)
        queueTails = .allocate(capacity: 8)
        queueTails.initialize(repeating: noSlot, count: 8)
        inFlightNext = .allocate(capacity: table.listCount)
        inFlightNext.initialize(repeating: noSlot, count: table.listCount)
        delivery = CompletionDelivery(tables: [listTable], capacity: table.listCount)
        counters = SendCounters()
        _ = leadingPadding
        _ = trailingPadding
    }

    deinit {
        queueHeads.deallocate()
        queueTails.deallocate()
        inFlightNext.deallocate()
    }

    /// Lists queued or in flight (not counting completed ones awaiting delivery).
    var hasWork: Bool { inFlightHead != noSlot || hasQueued }

    /// Completed lists not yet delivered to the handler.
    var hasUndelivered: Bool { delivery.count > 0 }

    // MARK: The pass

    /// One pass of the send side: takes what the mailbox holds, reaps the
    /// completion ring, places queued frames into the TX ring, kicks the
    /// kernel and collects the lists that completed. It calls no handler:
    /// `deliver` does, and only from the passes allowed to (poll, pause,
    /// close, the port's thread), never from `send`. Returns whether anything
    /// moved. `admit` is `.success` while the port runs; otherwise new and
    /// queued lists complete with that status instead of being sent.
    @discardableResult
    func service(mailbox: SlotMailbox, admit: SendStatus) -> Bool {
        var progress = takeMailbox(mailbox)
        if admit != .success { stopPlacing(status: admit) }
        if reap() {
            progress = true
        } else if framesInFlight > 0 {
            // The clock only now and then: a stall is seconds, a pass microseconds.
            quietPasses &+= 1
            if quietPasses & 127 == 0 { watchQuietCompletions() }
        }
        if linkDownSince != 0 { watchLinkWhileDown() }
        if linkDownSince == 0 {
            if admit == .success, place() { progress = true }
            if kick() { progress = true }
        } else if linkTimedOut, admit == .success {
            stopPlacing(status: .linkDown)
        }
        if collectCompleted() { progress = true }
        return progress
    }

    /// The pass a send runs (no delivery follows it): takes the mailbox,
    /// places, kicks. Reading the completion ring serves delivery, which
    /// is the delivering pass's, and room: so this pass reads it only when
    /// the frames in flight leave the completion ring too little room for
    /// what is queued. A send thus costs no reap of its own, and the next
    /// poll reaps the completions of every list sent since in one go. The
    /// watches (link, quiet completion ring) stay with `service`, as does
    /// any pass that does not admit sends.
    @discardableResult
    func servicePlacing(mailbox: SlotMailbox, admit: SendStatus) -> Bool {
        guard admit == .success, linkDownSince == 0 else { return service(mailbox: mailbox, admit: admit) }
        var progress = takeMailbox(mailbox)
        if queuedFrames > completion.size &- framesInFlight, reap() { progress = true }
        if place() { progress = true }
        if kick() { progress = true }
        return progress
    }

    /// Reads the completion ring; completions that move end a quiet stretch
    /// (see `watchQuietCompletions`). Returns whether any were read.
    private func reap() -> Bool {
        guard reapCompletions() else { return false }
        if quietPasses != 0 { completionsMoved() }
        return true
    }

    // MARK: Link and stall watch

    /// The kernel would not take frames (a kick said so), or the completion
    /// ring stood still: look at the link. Down: hold every send in its
    /// queue until it is back.
    private func noteLinkMayBeDown() {
        guard linkDownSince == 0, let readLink = faults.readLink else { return }
        let now = monotonicNanoseconds()
        lastLinkLook = now
        switch readLink() {
        case .down:
            linkDownSince = now
            linkTimedOut = false
            counters.noteLinkDown()
            post(.linkDown)
        case .gone:
            noteDeviceLost()
        case .usable, .unknown:
            break
        }
    }

    /// While the link is down: look again every 10 ms; back up, sending
    /// resumes; down past `linkDownTimeout`, the queued lists complete with
    /// `.linkDown` (what is already in the TX ring is the kernel's: it goes
    /// out when the link is back, or completes at close).
    private func watchLinkWhileDown() {
        let now = monotonicNanoseconds()
        guard now &- lastLinkLook >= 10_000_000 else { return }
        lastLinkLook = now
        switch faults.readLink?() ?? .usable {
        case .usable:
            linkDownSince = 0
            linkTimedOut = false
            quietPasses = 0
            quietSince = 0
            post(.linkUp)
        case .gone:
            noteDeviceLost()
        case .down, .unknown:
            if !linkTimedOut, let linkDownTimeout, now &- linkDownSince >= linkDownTimeout {
                linkTimedOut = true
                post(.linkDownTimedOut)
            }
        }
    }

    /// Frames are out and many passes in a row found no completion: past
    /// `stallTimeout` the stall is reported and the kernel kicked again
    /// (need-wakeup or not); past `stallFailure` the port gives up on it.
    /// A link that is down explains the silence: no stall then.
    private func watchQuietCompletions() {
        let now = monotonicNanoseconds()
        if quietSince == 0 {
            quietSince = now
            return
        }
        let quiet = now &- quietSince
        guard quiet >= stallTimeout else { return }
        noteLinkMayBeDown()
        guard linkDownSince == 0 else { return }
        if !stalled {
            stalled = true
            counters.noteStall()
            post(.completionStalled)
        }
        if tx.outstanding > 0 { _ = SystemCalls.kickTransmit(socketFD) }
        if let stallFailure, quiet >= stallFailure {
            _ = failureCode.compareExchange(expected: 0, desired: PortFailure.completionStalled.code, ordering: .releasing)
        }
    }

    private func completionsMoved() {
        quietPasses = 0
        quietSince = 0
        if stalled {
            stalled = false
            post(.completionResumed)
        }
    }

    private func post(_ event: PortEvent) {
        guard faults.onEvent != nil || faults.logger != nil else { return }
        // Bounded: a handler that never runs (no delivering pass) cannot grow it.
        if events.count >= 64 { events.removeFirst() }
        events.append(event)
    }

    /// Tells the event handler what happened since the last delivering pass.
    /// By the owner, where handlers may run.
    func deliverEvents() {
        guard !events.isEmpty else { return }
        let happened = events
        events.removeAll(keepingCapacity: true)
        HandlerContext.run {
            for event in happened {
                faults.logger?.log(level: event.logLevel, event.logMessage)
                faults.onEvent?(event)
            }
        }
    }

    var hasEvents: Bool { !events.isEmpty }

    /// Moves what other threads sent into the priority queues, in send order.
    @discardableResult
    private func takeMailbox(_ mailbox: SlotMailbox) -> Bool {
        guard !mailbox.isEmpty else { return false }
        var slot = mailbox.takeAll(links: table.lists)
        while slot != noSlot {
            let next = table.lists[Int(slot)].next
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
        return true
    }

    private func enqueue(_ slot: UInt32) {
        let record = table.lists + Int(slot)
        record.pointee.next = noSlot
        record.pointee.status = .pending
        record.pointee.placedBytes = 0
        record.pointee.placedPackets = 0
        record.pointee.placeChunk = slot
        record.pointee.placeIndex = 0
        if !record.pointee.ownersStamped { stampOwners(slot) }
        noteLent(slot, Int(record.pointee.count))
        let priority = Int(record.pointee.priority)
        if queueTails[priority] == noSlot {
            queueHeads[priority] = slot
            queuedPriorities |= 1 << priority
        } else {
            table.lists[Int(queueTails[priority])].next = slot
        }
        queueTails[priority] = slot
        queuedFrames += record.pointee.count
        counters.add(queued: Int(record.pointee.count))
    }

    /// Counts a list of another port's pool (on the same UMEM) as lent to
    /// this region (`frames` > 0) or back from it (< 0), in its home's figures.
    /// Returns whether the list is another port's.
    @inline(__always)
    @discardableResult
    private func noteLent(_ slot: UInt32, _ frames: Int) -> Bool {
        let pool = table.poolID(of: slot)
        guard pool != ownPools.receive, pool != ownPools.send else { return false }
        switch table.home(of: slot) {
        case .receive(let context): context._withUnsafeGuaranteedRef { $0.lent.add(frames) }
        case .send(let sendPool): sendPool._withUnsafeGuaranteedRef { $0.lent.add(frames) }
        }
        return true
    }

    /// Names the list in `frameOwner` for each of its frames, so that
    /// completions find it. Once per list: a frame stays in its list until
    /// the list is returned (a send list is stamped when allocated; a
    /// received list when it is first sent).
    private func stampOwners(_ list: UInt32) {
        let shift = UInt64(table.frameShift)
        let frameCount = UInt64(table.frameCount)
        table.forEachSlot(of: list) { _, packets in
            for packet in packets {
                let frame = packet.address &>> shift
                invariant(frame < frameCount, "a packet's address \(packet.address) is outside the UMEM")
                // Received descriptors are kept as the kernel wrote them: their
                // only option is multi-buffer's continuation mark, and a TX
                // descriptor with other bits would be refused.
                invariant(packet.options & ~XDPDescriptor.continues == 0, "a descriptor carries options \(packet.options)")
                table.frameOwner[Int(truncatingIfNeeded: frame)] = list
            }
        }
        table.lists[Int(list)].ownersStamped = true
    }

    /// Pause or close: nothing more goes into the TX ring. Every queued list
    /// joins the in-flight FIFO with `status`, behind the lists sent before
    /// it, so completion order stays the caller's.
    private func stopPlacing(status: SendStatus) {
        for priority in (0..<8).reversed() {
            var slot = queueHeads[priority]
            while slot != noSlot {
                let record = table.lists + Int(slot)
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
        table.lists[Int(slot)].inFlight = true
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
        let lists = table.lists
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
                    let source = table.chunk(chunk) + Int(at)
                    let (destination, run) = ring.contiguousRun(
                        from: index &+ placed, upTo: min(chunkCount &- at, budget &- placed))
                    bytes &+= copyDescriptors(from: source, to: destination, count: Int(run), offsetBy: 0).bytes
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
        invariant(placed == granted, "placed \(placed) of \(granted) reserved TX slots")
        guard placed > 0 else { return false }
        tx.submit()
        framesInFlight &+= placed
        queuedFrames -= placed
        counters.add(queued: -Int(placed))
        return true
    }

    private var hasQueued: Bool { queuedPriorities != 0 }

    /// Most kicks in one pass. Copy mode transmits inside the kick, 32
    /// descriptors each (the kernel's batch), and the thread that kicks is
    /// the one that refills its receive side: a pass that kicked a whole
    /// ring of 4096 away would keep receive waiting some 6 ms while the peer
    /// fills the RX ring from the fill ring. 8 kicks, 256 frames, then the
    /// next pass (the receive side's turn comes between). Measured (duplex,
    /// 8 s runs, alternating): fill-ring-empty drops in 1 run of 14 against
    /// 3 of 14 kicking the ring empty, throughput level (1.03 on the means).
    static let maximumKicksPerPass = 8

    /// Copy mode moves TX only on a kick, 32 descriptors at a time: kick
    /// until the kernel has taken the ring, says to come back later, or the
    /// pass has kicked its share (`maximumKicksPerPass`).
    private func kick() -> Bool {
        guard tx.outstanding > 0 else { return false }
        if kickOnlyWhenAsked && !tx.needsWakeup { return false }
        var kicks = 0
        let maximumKicks = min(Int(tx.size / 32) + 2, Self.maximumKicksPerPass)
        while kicks < maximumKicks {
            kicks += 1
            switch SystemCalls.kickTransmit(socketFD) {
            case .done: counters.noteKicks(kicks); return true
            case .again: if tx.outstanding == 0 { counters.noteKicks(kicks); return true }
            // The kernel took nothing (link down, no buffers): no progress, so
            // a polling loop may sleep instead of spinning on the syscall.
            case .later: counters.noteKicks(kicks); return false
            // The kernel took a frame and dropped it (no carrier), or the
            // interface is down and it took nothing: is the link down?
            case .dropped:
                counters.noteKicks(kicks)
                counters.noteKernelDrop()
                noteLinkMayBeDown()
                return false
            case .interfaceDown:
                counters.noteKicks(kicks)
                noteLinkMayBeDown()
                return false
            case .failed(let error):
                counters.noteKicks(kicks)
                counters.noteKickError()
                if error == ENXIO || error == ENODEV { noteDeviceLost() }
                return false
            }
        }
        counters.noteKicks(kicks)
        return true
    }

    /// Reads the completion ring: each address names a frame, each frame
    /// names its list (`frameOwner`); a list is done when none of its frames is out.
    /// Consecutive completions mostly belong to one list, so they are counted
    /// in runs and each run is subtracted once. A completion the engine did
    /// not expect (an address outside the UMEM, a frame whose list is not in
    /// flight, more completions than a list has out) is counted in
    /// `invalidCompletions` and otherwise ignored: the table is not trusted
    /// blindly, since the kernel's side of the ring is not ours.
    @discardableResult
    private func reapCompletions() -> Bool {
        let (start, count) = completion.peek(upTo: completion.size)
        guard count > 0 else { return false }
        let shift = UInt64(table.frameShift)
        let frameCount = UInt64(table.frameCount)
        let owners = table.frameOwner
        var runOwner = noSlot
        var runLength: UInt32 = 0
        var invalid: UInt32 = 0
        var index = start
        var remaining = count
        // At most two pieces: up to the ring's end, then from its start.
        while remaining > 0 {
            let (first, length) = completion.contiguousRun(from: index, upTo: remaining)
            var address = first
            let end = first + Int(length)
            while address != end {
                // Four at a time while all belong to the current run (the
                // common case: a list's frames come back together)...
                while end - address >= 4 {
                    let frame0 = address[0] &>> shift, frame1 = address[1] &>> shift
                    let frame2 = address[2] &>> shift, frame3 = address[3] &>> shift
                    // The OR is no smaller than any of the four: under the
                    // frame count, all are (one compare, not four). With a
                    // frame count that is not a power of two it may say no
                    // to good frames: they then go one at a time below.
                    guard frame0 | frame1 | frame2 | frame3 < frameCount,
                        owners[Int(truncatingIfNeeded: frame0)] == runOwner,
                        owners[Int(truncatingIfNeeded: frame1)] == runOwner,
                        owners[Int(truncatingIfNeeded: frame2)] == runOwner,
                        owners[Int(truncatingIfNeeded: frame3)] == runOwner
                    else { break }
                    runLength &+= 4
                    address += 4
                }
                // ...then the four that did not pass (or the last few), one
                // at a time: one of them starts the next run. Trying four
                // again after each would try a group that fails up to four
                // times at every run's start.
                let stop = min(address + 4, end)
                while address != stop {
                    let frame = address.pointee &>> shift
                    address += 1
                    guard frame < frameCount else {
                        invalid &+= 1
                        continue
                    }
                    let owner = owners[Int(truncatingIfNeeded: frame)]
                    if owner == runOwner {
                        runLength &+= 1
                    } else {
                        invalid &+= settle(runOwner, runLength)
                        runOwner = owner
                        runLength = 1
                    }
                }
            }
            index &+= length
            remaining &-= length
        }
        invalid &+= settle(runOwner, runLength)
        completion.release()
        framesInFlight &-= count &- invalid
        if invalid > 0 { counters.add(invalidCompletions: Int(invalid)) }
        return true
    }

    /// Counts a run of `length` completions against list `owner`; returns
    /// how many of them the list did not have out (invalid).
    @inline(__always)
    private func settle(_ owner: UInt32, _ length: UInt32) -> UInt32 {
        guard length > 0 else { return 0 }
        guard Int(owner) < table.listCount, table.lists[Int(owner)].inFlight else { return length }
        let outstanding = table.lists[Int(owner)].outstanding
        let valid = min(outstanding, length)
        table.lists[Int(owner)].outstanding = outstanding &- valid
        return length &- valid
    }

    /// Pops finished lists off the in-flight FIFO's head into the batch.
    @discardableResult
    private func collectCompleted() -> Bool {
        var packets = 0
        var bytes = 0
        let before = delivery.count
        while inFlightHead != noSlot {
            let slot = inFlightHead
            let record = table.lists + Int(slot)
            guard record.pointee.outstanding == 0, record.pointee.placeChunk == noSlot else { break }
            inFlightHead = inFlightNext[Int(slot)]
            if inFlightHead == noSlot { inFlightTail = noSlot }
            record.pointee.inFlight = false
            let borrowed = noteLent(slot, -Int(record.pointee.count))
            if record.pointee.status != .pending {
                counters.noteDropped()
            } else {
                record.pointee.status = .success
                // Packets, not the frames they span (multi-buffer runs).
                let sent = Int(record.pointee.count &- record.pointee.continuations)
                packets += sent
                bytes += Int(record.pointee.placedBytes)
                if borrowed { counters.add(forwarded: sent) }
            }
            // Still the engine's until delivered: the caller learns of it
            // only then, and must not find it sendable before.
            delivery.append(table: 0, slot: slot, generation: table.generation(of: slot))
        }
        if packets > 0 { counters.add(packets: packets, bytes: bytes) }
        return delivery.count > before
    }

    /// Hands the completed lists to the completion handler as one batch, in
    /// completion order. Only from the passes allowed to call handlers, by
    /// the region's owner: deliveries never overlap, so batches keep their
    /// order. Returns whether there was anything to deliver.
    @discardableResult
    func deliver() -> Bool {
        let count = delivery.count
        guard count > 0 else { return false }
        counters.add(completedLists: count)
        // The lists become the caller's as they are handed over.
        for index in 0..<count {
            let (_, slot, generation) = delivery.entry(at: index)
            table.setState(slot, .caller, generation: generation)
        }
        delivery.deliver(to: onComplete)
        return true
    }

    /// Close, right before the socket goes: one last look at the completion
    /// ring, then the descriptors the kernel never took out of the TX ring
    /// (from its consumer index to ours) are counted as not sent. The TX
    /// ring is first in, first out and a list's packets are placed in order,
    /// so what a list has there is the end of what it placed:
    /// `placedPackets` then counts exactly the packets the kernel took.
    func settleBeforeTeardown() {
        defer { collectCompleted() }
        reapCompletions()
        let shift = UInt64(table.frameShift)
        var index = tx.consumerIndex
        let end = tx.producerIndex
        // The kernel's index past ours, or a ring's worth behind: not a state
        // the ring protocol allows. Count nothing rather than trust it.
        guard end &- index <= tx.size else { return }
        while index != end {
            let frame = tx[index].address &>> shift
            index &+= 1
            guard frame < UInt64(table.frameCount) else { continue }
            let owner = table.frameOwner[Int(truncatingIfNeeded: frame)]
            guard Int(owner) < table.listCount, table.lists[Int(owner)].outstanding > 0 else { continue }
            table.lists[Int(owner)].outstanding -= 1
            table.lists[Int(owner)].placedPackets -= 1
            // Not all of it went out: it cannot complete as a success.
            if table.lists[Int(owner)].status == .pending { table.lists[Int(owner)].status = .closing }
            framesInFlight &-= 1
        }
    }

    /// Close, once the socket is gone: every list still queued, in flight or
    /// in the mailbox completes with `.closing`. Frames the kernel took and
    /// never completed stay counted as sent (see `settleBeforeTeardown`);
    /// the kernel no longer holds any frame. Collects; `deliver` hands them over.
    func abandonInFlight(mailbox: SlotMailbox) {
        takeMailbox(mailbox)
        stopPlacing(status: .closing)
        var slot = inFlightHead
        while slot != noSlot {
            table.lists[Int(slot)].outstanding = 0
            if table.lists[Int(slot)].status == .pending { table.lists[Int(slot)].status = .closing }
            slot = inFlightNext[Int(slot)]
        }
        framesInFlight = 0
        collectCompleted()
    }
}
