import AFXDPSystem
import Atomics
import Histogram
#if canImport(Glibc)
import Glibc
#endif

/// The machinery every intermediate driver shares: it binds to the layers
/// below as their caller (their handlers call it), offers the port contract
/// above, and keeps the NDIS rules on the way.
///
/// Regions, as in a port (rule 4, "deserialized inside the layer"):
/// - the **send range** (owner: `sendDoor`): the layer's in-order queues of
///   upper sends, the copy path's waiting lists, the delivery buffer. Upper
///   `send` and the lower completion handlers leave work in its mailboxes
///   (`accepted`, `completed`) and run a pass if no one owns it;
/// - the **receive range** (owner: `receiveDoor`): upward indications, one
///   at a time, in arrival order, from its mailbox (`received`);
/// - the **shared range** (`lock`): the layer's state and the delay
///   histogram. Only it takes a lock; the send range never waits for the
///   receive range or for the lock.
///
/// Per-list state lives in the layer's own records (`LayerTables`), never in
/// a field another layer uses: a list passes down and up the stack as the
/// same list (packet stacking), or through a fresh list of the lower UMEM
/// when it must (the copy path), chosen per list by its UMEM.
final class LayerCore: @unchecked Sendable {
    // @unchecked: each stored property is owned as its comment says.
    // @exclusivity(unchecked) on the mutable ones: their owner (a door, the
    // lock, or open) already excludes other access, so the runtime's checks
    // would guard nothing and cost ~20 instructions a packet (callgrind).

    // MARK: Set once at open, read-only after
    let name: String
    let upper: PortHandlers
    /// The driver as its caller sees it: the port given in indications and
    /// completion batches. Owns this core.
    @exclusivity(unchecked) unowned(unsafe) var top: IntermediateDriver!
    @exclusivity(unchecked) private(set) var lowers: [any PacketPort] = []
    /// For each binding: the indices (in `records`) of the UMEM tables whose
    /// lists it can send without a copy.
    @exclusivity(unchecked) private var lowerTables: [[Int]] = []
    let records = LayerTables()

    // MARK: Doors and mailboxes (any thread)
    let sendDoor = RegionDoorbell()
    let receiveDoor = RegionDoorbell()
    private let mailboxStorage: UnsafeMutablePointer<UInt32.AtomicRepresentation>
    let accepted: LayerMailbox
    let completed: LayerMailbox
    let received: LayerMailbox

    // MARK: Send range (owner of sendDoor only)
    /// Upper sends in the order they were accepted, one queue per priority
    /// they went down with, linked through `queueNext`: completions go up in
    /// this order, whatever order the lower layers complete them in.
    private let queueHeads: UnsafeMutablePointer<LayerListID>
    private let queueTails: UnsafeMutablePointer<LayerListID>
    /// Bit p set: queue p is not empty.
    @exclusivity(unchecked) private var queuesInUse: UInt8 = 0
    /// Upper sends waiting for a fresh list of the lower UMEM (copy path),
    /// in order; linked through `partner` while waiting.
    @exclusivity(unchecked) private var copyWaitingHead = noSlot
    @exclusivity(unchecked) private var copyWaitingTail = noSlot
    @exclusivity(unchecked) private var delivery: CompletionDelivery
    /// Delay of each list in the batch being delivered (ns), for the histogram.
    @exclusivity(unchecked) private var delays: UnsafeMutablePointer<UInt64>
    @exclusivity(unchecked) private var delaysCapacity: Int

    // MARK: Counters (relaxed atomics: written where they change, read anywhere)
    private let counters = LayerCounters()

    // MARK: Shared range (lock)
    let lock = PThreadLock()
    private let stateWord = ManagedAtomic<UInt8>(PortState.running.rawValue)
    /// Time from a lower completion reaching the layer to the upper
    /// completion it triggered, in ns (under `lock`).
    @exclusivity(unchecked) private var completionDelay = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)

    init(name: String, upper: PortHandlers) {
        self.name = name
        self.upper = upper
        mailboxStorage = .allocate(capacity: 3 * 32)
        mailboxStorage.initialize(repeating: .init(noSlot), count: 3 * 32)
        // Each mailbox head on a cache line of its own.
        accepted = LayerMailbox(at: mailboxStorage, link: .accepted)
        completed = LayerMailbox(at: mailboxStorage + 32, link: .completed)
        received = LayerMailbox(at: mailboxStorage + 64, link: .received)
        delivery = CompletionDelivery(tables: [], capacity: 0)
        delays = .allocate(capacity: 1)
        delaysCapacity = 1
        queueHeads = .allocate(capacity: 8)
        queueHeads.initialize(repeating: noSlot, count: 8)
        queueTails = .allocate(capacity: 8)
        queueTails.initialize(repeating: noSlot, count: 8)
    }

    deinit {
        mailboxStorage.deallocate()
        delays.deallocate()
        queueHeads.deallocate()
        queueTails.deallocate()
    }

    // MARK: Binding

    /// Opens the layers below, one binding each, with handlers that call this
    /// core. On failure, closes what it opened and throws.
    func bind(_ openers: [LowerOpener]) throws(AFXDPError) {
        for (binding, open) in openers.enumerated() {
            let handlers = PortHandlers(
                onReceive: { [unowned self] indication in lowerIndicated(indication, binding: binding) },
                onSendComplete: { [unowned self] batch in lowerCompleted(batch, binding: binding) })
            do {
                let lower = try open(handlers)
                lowers.append(lower)
                var tables: [Int] = []
                for umem in lower.umems { tables.append(try records.index(of: umem.table)) }
                lowerTables.append(tables)
            } catch {
                for lower in lowers { lower.close(timeout: .milliseconds(100)) }
                lowers.removeAll()
                throw error
            }
        }
        resizeDelivery()
    }

    /// Makes the delivery buffer cover every table seen so far. By the send
    /// range's owner (or before traffic, at open).
    private func resizeDelivery() {
        let tables = records.tables
        guard tables.count != delivery.tables.count || delivery.capacity < records.totalSlots else { return }
        let capacity = records.totalSlots
        let port = delivery.port
        delivery = CompletionDelivery(tables: tables, capacity: capacity)
        delivery.port = port ?? top
        delays.deallocate()
        delays = .allocate(capacity: max(capacity, 1))
        delaysCapacity = max(capacity, 1)
    }

    // MARK: State

    var state: PortState { PortState(rawValue: stateWord.load(ordering: .acquiring))! }

    private func setState(_ new: PortState) { stateWord.store(new.rawValue, ordering: .releasing) }

    /// The binding whose UMEM holds lists of table `index`, if any.
    @inline(__always)
    private func binding(holding index: Int) -> Int? {
        for binding in 0..<lowerTables.count where lowerTables[binding].contains(index) { return binding }
        return nil
    }

    // MARK: Send (upper, any thread)

    /// Passes an upper send down to `binding`: the list itself when the
    /// binding's UMEM holds it, else (copy path) a fresh list of the lower
    /// UMEM made by the send range's next pass. Runs no handler.
    func send(_ list: PacketList, binding: Int, callerPriority: UInt8) throws(AFXDPError) {
        guard state != .closed else { throw .portClosed }
        guard let index = records.knownIndex(of: list.table) else { throw .foreignList }
        let id = LayerListID(table: index, slot: list.slot)
        let record = try list.ownedRecord()
        let layer = records.record(id)
        layer.pointee.binding = UInt8(truncatingIfNeeded: binding)
        layer.pointee.callerPriority = callerPriority
        layer.pointee.queuedPriority = record.pointee.priority
        layer.pointee.done = false
        layer.pointee.partner = 0
        if lowerTables[binding].contains(index) {
            layer.pointee.role = .upperSend
            try lowers[binding].send(list)
        } else {
            // The copy path: the layer holds the caller's list until the
            // fresh list it was copied into completes.
            guard record.pointee.unsetLengths == 0 else { throw .emptyFrame }
            guard record.pointee.continuations == 0 else {
                throw .invalidConfiguration(
                    "a packet spanning frames (multi-buffer) cannot be copied to a port on another UMEM; "
                        + "send it on a port of the list's own UMEM")
            }
            try list.table.transition(list, from: .caller, to: .engine)
            layer.pointee.role = .upperSendCopied
            layer.pointee.frames = record.pointee.count
        }
        counters.add(.sendsOutstanding, 1)
        accepted.push(id, records: records)
        runSendRange(rounds: 2, delivering: false)
    }

    // MARK: Lower completions (a lower layer's handler)

    private func lowerCompleted(_ batch: SendCompletions, binding: Int) {
        let now = monotonicNanoseconds()
        for list in batch {
            guard let index = records.knownIndex(of: list.table) else {
                invariantFailed("a lower layer completed a list of a UMEM this layer never saw", file: #file, line: #line)
            }
            let id = LayerListID(table: index, slot: list.slot)
            let layer = records.record(id)
            if layer.pointee.role == .upperSend {
                // The caller above learns of it only at the upward delivery,
                // and must not find it its own before.
                list.table.setState(list.slot, .engine, generation: list.generation)
            }
            layer.pointee.lowerCompletedAt = now
            completed.push(id, records: records)
        }
        runSendRange(rounds: 2, delivering: true)
    }

    // MARK: The send range's pass (owner only)

    /// Takes accepted sends into the in-order queues, marks what the lower
    /// layers completed, makes the copy path's fresh lists, and (when the
    /// caller may run handlers) delivers the completed prefix of every queue
    /// upward as one batch. Returns whether anything moved.
    @discardableResult
    private func sendPass(delivering: Bool) -> Bool {
        var progress = false
        if records.count != delivery.tables.count { resizeDelivery() }
        accepted.drain(records: records) { id in
            progress = true
            let layer = records.record(id)
            let priority = Int(layer.pointee.queuedPriority)
            layer.pointee.queueNext = noSlot
            if queueTails[priority] == noSlot { queueHeads[priority] = id } else { records.record(queueTails[priority]).pointee.queueNext = id }
            queueTails[priority] = id
            queuesInUse |= 1 << priority
            if layer.pointee.role == .upperSendCopied { appendCopyWaiting(id) }
        }
        completed.drain(records: records) { id in
            progress = true
            lowerDone(id)
        }
        if copyWaitingHead != noSlot, makeCopies() { progress = true }
        if delivering, deliverCompleted() { progress = true }
        return progress
    }

    /// Runs the send range's pass if no thread owns it; after letting go,
    /// again while work arrived meanwhile, at most `rounds` passes (what is
    /// left then waits for the next pass: `poll`, a send, a completion).
    /// Returns whether a pass moved anything.
    @discardableResult
    private func runSendRange(rounds: Int, delivering: Bool) -> Bool {
        var progress = false
        var left = rounds
        while left > 0, sendDoor.ownership.tryAcquire() {
            if sendPass(delivering: delivering) { progress = true }
            sendDoor.ownership.release()
            left -= 1
            if accepted.isEmpty && completed.isEmpty { break }
        }
        return progress
    }

    /// The receive range's pass, run as `runSendRange` runs the send range's.
    @discardableResult
    private func runReceiveRange(rounds: Int) -> Bool {
        var progress = false
        var left = rounds
        while left > 0, receiveDoor.ownership.tryAcquire() {
            if receivePass() { progress = true }
            receiveDoor.ownership.release()
            left -= 1
            if received.isEmpty { break }
        }
        return progress
    }

    /// One list a lower layer completed.
    private func lowerDone(_ id: LayerListID) {
        let layer = records.record(id)
        switch layer.pointee.role {
        case .upperSend:
            layer.pointee.done = true
        case .freshCopy:
            // The fresh list carried an upper send: that one completes with
            // its status, and the fresh list goes back to its pool now.
            let partnerID = LayerListID(truncatingIfNeeded: layer.pointee.partner)
            let fresh = handle(id)
            let upperRecord = records.table(at: partnerID.table).lists + Int(partnerID.slot)
            let freshRecord = fresh.table.lists + Int(fresh.slot)
            upperRecord.pointee.status = freshRecord.pointee.status
            upperRecord.pointee.placedPackets = freshRecord.pointee.placedPackets
            records.record(partnerID).pointee.lowerCompletedAt = layer.pointee.lowerCompletedAt
            records.record(partnerID).pointee.done = true
            layer.pointee.role = .none
            giveBack(fresh, binding: Int(layer.pointee.binding))
        case .forwarded:
            // Passed on by the layer itself: home at once (borrowed resources
            // go back promptly).
            layer.pointee.role = .none
            giveBack(handle(id), binding: Int(layer.pointee.binding))
        case .none, .upperSendCopied, .heldAbove:
            invariantFailed("a lower layer completed a list this layer did not send (role \(layer.pointee.role))", file: #file, line: #line)
        }
    }

    /// A list the layer owns, back to the lower layer of its UMEM.
    private func giveBack(_ list: PacketList, binding: Int) {
        let index = records.knownIndex(of: list.table) ?? 0
        let target = lowerTables[binding].contains(index) ? binding : (self.binding(holding: index) ?? binding)
        do {
            try lowers[target].returnList(list)
        } catch {
            invariantFailed("a list the layer owned could not go home: \(error)", file: #file, line: #line)
        }
    }

    @inline(__always)
    private func handle(_ id: LayerListID) -> PacketList {
        let table = records.table(at: id.table)
        return PacketList(table: table, slot: id.slot, generation: table.generation(of: id.slot))
    }

    private func appendCopyWaiting(_ id: LayerListID) {
        records.record(id).pointee.partner = UInt64(noSlot)
        if copyWaitingTail == noSlot {
            copyWaitingHead = id
        } else {
            records.record(copyWaitingTail).pointee.partner = UInt64(id)
        }
        copyWaitingTail = id
    }

    /// The copy path: for each upper send waiting, in order, a fresh list
    /// from the lower layer's pool, the frames copied into it, and sent.
    /// Stops at the first for which the pool has no list right now (the
    /// lower's completions bring lists back; the next pass goes on).
    private func makeCopies() -> Bool {
        var progress = false
        while copyWaitingHead != noSlot {
            let id = copyWaitingHead
            let layer = records.record(id)
            let binding = Int(layer.pointee.binding)
            let original = handle(id)
            let lower = lowers[binding]
            let fresh: PacketList?
            if state == .closed || lower.currentState == .closed {
                fresh = nil
            } else {
                fresh = try? lower.allocateList(packetCount: Int(layer.pointee.frames))
                if fresh == nil && lower.currentState != .closed { break }
            }
            let next = LayerListID(truncatingIfNeeded: layer.pointee.partner)
            copyWaitingHead = next
            if next == noSlot { copyWaitingTail = noSlot }
            progress = true
            guard let fresh, copyPackets(of: original, into: fresh) else {
                // The lower layer is closed (or the frames do not fit): the
                // upper send completes without going out.
                let record = original.table.lists + Int(original.slot)
                record.pointee.status = .closing
                record.pointee.placedPackets = 0
                layer.pointee.partner = 0
                layer.pointee.lowerCompletedAt = monotonicNanoseconds()
                layer.pointee.done = true
                if let fresh { try? lower.returnList(fresh) }
                continue
            }
            counters.add(.copiedLists, 1)
            counters.add(.copiedFrames, Int(layer.pointee.frames))
            guard let freshIndex = try? records.index(of: fresh.table) else { continue }
            let freshID = LayerListID(table: freshIndex, slot: fresh.slot)
            let freshLayer = records.record(freshID)
            freshLayer.pointee.role = .freshCopy
            freshLayer.pointee.partner = UInt64(id)
            freshLayer.pointee.binding = UInt8(truncatingIfNeeded: binding)
            try? fresh.setPriority(Int(layer.pointee.queuedPriority))
            layer.pointee.partner = UInt64(freshID)
            do {
                try lower.send(fresh)
            } catch {
                freshLayer.pointee.role = .none
                try? lower.returnList(fresh)
                let record = original.table.lists + Int(original.slot)
                record.pointee.status = .closing
                record.pointee.placedPackets = 0
                layer.pointee.lowerCompletedAt = monotonicNanoseconds()
                layer.pointee.done = true
            }
        }
        return progress
    }

    /// Copies every packet of `source` (the layer's or the caller's) into
    /// `destination` (a fresh list of as many packets). False if a packet
    /// does not fit its new frame.
    func copyPackets(of source: PacketList, into destination: PacketList) -> Bool {
        copyPackets(of: source, selecting: nil, into: destination)
    }

    /// Copies the packets of `source` for which `selected` is true (all, if
    /// nil) into `destination`, in order.
    func copyPackets(of source: PacketList, selecting selected: UnsafeBufferPointer<Bool>?, into destination: PacketList) -> Bool {
        let sourceTable = source.table.layout
        let sourceBase = source.table.umem
        let destinationTable = destination.table.layout
        let destinationBase = destination.table.umem
        var sourceIndex = 0
        var written = 0
        var fits = true
        var destinationSlot = destination.slot
        var destinationOffset = 0
        let frameSize = 1 << Int(destinationTable.frameShift)
        sourceTable.forEachSlot(of: source.slot) { _, packets in
            for packet in packets {
                defer { sourceIndex += 1 }
                if let selected, !selected[sourceIndex] { continue }
                while destinationOffset >= Int(destinationTable.lists[Int(destinationSlot)].chunkCount) {
                    destinationSlot = destinationTable.lists[Int(destinationSlot)].chunkNext
                    destinationOffset = 0
                    guard destinationSlot != noSlot else { fits = false; return }
                }
                let target = destinationTable.chunk(destinationSlot) + destinationOffset
                destinationOffset += 1
                let room = frameSize - Int(target.pointee.address & UInt64(frameSize - 1))
                let length = Int(packet.length)
                guard length <= room else { fits = false; continue }
                (destinationBase + Int(target.pointee.address)).copyMemory(
                    from: sourceBase + Int(packet.address), byteCount: length)
                if target.pointee.length == 0 { destinationTable.lists[Int(destination.slot)].unsetLengths &-= 1 }
                target.pointee.length = UInt32(truncatingIfNeeded: length)
                written += 1
            }
        }
        return fits && written == Int(destinationTable.lists[Int(destination.slot)].count)
    }

    /// Delivers upward, in each priority's order, every upper send whose
    /// lower completion has come, as one batch.
    private func deliverCompleted() -> Bool {
        var count = 0
        var now: UInt64 = 0
        var waiting = queuesInUse
        while waiting != 0 {
            // Highest priority first.
            let priority = 7 - waiting.leadingZeroBitCount
            waiting &= ~(1 << priority)
            while queueHeads[priority] != noSlot {
                let id = queueHeads[priority]
                let layer = records.record(id)
                guard layer.pointee.done else { break }
                if count == 0 { now = monotonicNanoseconds() }
                queueHeads[priority] = layer.pointee.queueNext
                if queueHeads[priority] == noSlot {
                    queueTails[priority] = noSlot
                    queuesInUse &= ~(1 << priority)
                }
                layer.pointee.done = false
                layer.pointee.role = .none
                let table = delivery.tables[id.table]
                let record = table.lists + Int(id.slot)
                // What the caller above expects: its own priority back.
                record.pointee.priority = layer.pointee.callerPriority
                let generation = table.generation(of: id.slot)
                delivery.append(table: id.table, slot: id.slot, generation: generation)
                table.setState(id.slot, .caller, generation: generation)
                delays[count] = now &- min(now, layer.pointee.lowerCompletedAt)
                count += 1
            }
        }
        guard count > 0 else { return false }
        counters.add(.sendsOutstanding, -count)
        counters.add(.upperCompletions, count)
        lock.withLock {
            for index in 0..<count { completionDelay.record(delays[index]) }
        }
        delivery.deliver(to: upper.onSendComplete)
        return true
    }

    // MARK: Receive (a lower layer's handler)

    private func lowerIndicated(_ indication: ReceiveIndication, binding: Int) {
        let list = indication.list
        switch top.received(list, from: binding) {
        case .drop:
            counters.add(.receivesConsumed, 1)
            do { try indication.port.returnList(list) } catch {
                invariantFailed("a dropped list could not go home: \(error)", file: #file, line: #line)
            }
        case .consumed:
            counters.add(.receivesConsumed, 1)
        case .up:
            indicateUp(list, binding: binding, lowResources: indication.lowResources)
        }
    }

    /// Indicates a list (the layer's) to the caller above, in arrival order.
    func indicateUp(_ list: PacketList, binding: Int, lowResources: Bool) {
        guard let index = try? records.index(of: list.table) else {
            invariantFailed("a list of an unknown UMEM came up", file: #file, line: #line)
        }
        let id = LayerListID(table: index, slot: list.slot)
        let layer = records.record(id)
        let frames = (try? list.count) ?? 0
        layer.pointee.role = .heldAbove
        layer.pointee.binding = UInt8(truncatingIfNeeded: binding)
        layer.pointee.frames = UInt32(truncatingIfNeeded: frames)
        layer.pointee.done = lowResources
        counters.add(.receivesHeldAbove, 1)
        counters.add(.framesHeldAbove, frames)
        received.push(id, records: records)
        runReceiveRange(rounds: 2)
    }

    /// Indicates upward what waits in the receive mailbox. Receive-range owner only.
    @discardableResult
    private func receivePass() -> Bool {
        var progress = false
        received.drain(records: records) { id in
            progress = true
            let lowResources = records.record(id).pointee.done
            let indication = ReceiveIndication(port: top, list: handle(id), lowResources: lowResources)
            HandlerContext.run { upper.onReceive(indication) }
        }
        return progress
    }

    /// Passes a received list on down `binding` without indicating it
    /// (forwarding): the list itself when that binding's UMEM holds it, else
    /// a fresh list with the frames copied (the original goes home at once).
    /// Returns whether it went; if not, its frames count as dropped. A whole
    /// list is the layer's no more afterwards; with `selected`, the caller
    /// still has the original and gives it back.
    @discardableResult
    func forward(_ list: PacketList, to binding: Int, selecting selected: UnsafeBufferPointer<Bool>? = nil, count: Int? = nil) -> Bool {
        let lower = lowers[binding]
        guard let index = try? records.index(of: list.table) else { return false }
        if selected == nil, lowerTables[binding].contains(index) {
            let layer = records.record(LayerListID(table: index, slot: list.slot))
            layer.pointee.role = .forwarded
            layer.pointee.binding = UInt8(truncatingIfNeeded: binding)
            do {
                try lower.send(list)
                return true
            } catch {
                layer.pointee.role = .none
                counters.add(.forwardDropped, (try? list.count) ?? 0)
                giveBackReceived(list)
                return false
            }
        }
        // Copied whole: the original goes home as soon as its frames are
        // copied (a selection's caller gives it back after every copy).
        defer { if selected == nil { giveBackReceived(list) } }
        let packets = count ?? ((try? list.count) ?? 0)
        guard packets > 0, let fresh = try? lower.allocateList(packetCount: packets) else {
            counters.add(.forwardDropped, packets)
            return false
        }
        guard copyPackets(of: list, selecting: selected, into: fresh), let freshIndex = try? records.index(of: fresh.table) else {
            counters.add(.forwardDropped, packets)
            try? lower.returnList(fresh)
            return false
        }
        counters.add(.copiedLists, 1)
        counters.add(.copiedFrames, packets)
        let freshLayer = records.record(LayerListID(table: freshIndex, slot: fresh.slot))
        freshLayer.pointee.role = .forwarded
        freshLayer.pointee.binding = UInt8(truncatingIfNeeded: binding)
        do {
            try lower.send(fresh)
            return true
        } catch {
            freshLayer.pointee.role = .none
            counters.add(.forwardDropped, packets)
            try? lower.returnList(fresh)
            return false
        }
    }

    /// A received list the layer consumed, back to the port it came from.
    func giveBackReceived(_ list: PacketList) {
        guard let index = records.knownIndex(of: list.table), let binding = binding(holding: index) else { return }
        try? lowers[binding].returnList(list)
    }

    /// The binding a list held above came up from, if it is one.
    func heldAboveBinding(of list: PacketList) -> Int? {
        guard let index = records.knownIndex(of: list.table) else { return nil }
        let layer = records.record(LayerListID(table: index, slot: list.slot))
        return layer.pointee.role == .heldAbove ? Int(layer.pointee.binding) : nil
    }

    /// Copies the selected packets of a received list into a fresh list of
    /// `binding`'s pool and indicates that upward; the original stays the
    /// caller's (of this layer). False if no fresh list could be had.
    @discardableResult
    func indicateCopy(of list: PacketList, selecting selected: UnsafeBufferPointer<Bool>, count: Int, binding: Int, lowResources: Bool) -> Bool {
        guard count > 0, let fresh = try? lowers[binding].allocateList(packetCount: count) else { return false }
        guard copyPackets(of: list, selecting: selected, into: fresh) else {
            try? lowers[binding].returnList(fresh)
            return false
        }
        counters.add(.copiedLists, 1)
        counters.add(.copiedFrames, count)
        indicateUp(fresh, binding: binding, lowResources: lowResources)
        return true
    }

    // MARK: Return (upper, any thread)

    func returnList(_ list: PacketList) throws(AFXDPError) {
        guard let index = records.knownIndex(of: list.table), let home = binding(holding: index) else { throw .foreignList }
        _ = try list.ownedRecord()
        let layer = records.record(LayerListID(table: index, slot: list.slot))
        let wasHeld = layer.pointee.role == .heldAbove
        let frames = Int(layer.pointee.frames)
        let binding = wasHeld ? Int(layer.pointee.binding) : home
        if wasHeld { layer.pointee.role = .none }
        do {
            try lowers[binding].returnList(list)
        } catch {
            if wasHeld { layer.pointee.role = .heldAbove }
            throw error
        }
        if wasHeld {
            counters.add(.receivesHeldAbove, -1)
            counters.add(.framesHeldAbove, -frames)
        }
    }

    // MARK: Progress

    @discardableResult
    func poll() -> Bool {
        var progress = false
        for lower in lowers where lower.poll() { progress = true }
        if runSendRange(rounds: 1, delivering: true) { progress = true }
        if !received.isEmpty, runReceiveRange(rounds: 1) { progress = true }
        noticeLowerClosed()
        if state == .closing { driveClose() }
        return progress
    }

    /// A lower layer closed under this one (its caller closed it, or its
    /// device went): the layer closes too, so that its caller sees the state
    /// change, and every send still out comes up completed.
    private func noticeLowerClosed() {
        let current = state
        guard current == .running || current == .paused else { return }
        guard lowers.contains(where: { $0.currentState.rawValue >= PortState.closing.rawValue }) else { return }
        requestClose(timeout: .milliseconds(100))
        for lower in lowers where lower.currentState.rawValue < PortState.closing.rawValue {
            lower.close(timeout: .milliseconds(100))
        }
    }

    var hasSendsOutstanding: Bool {
        counters.value(.sendsOutstanding) > 0 || lowers.contains { $0.hasSendsOutstanding }
    }

    func pause(timeout: Duration) {
        let changed = lock.withLock { () -> Bool in
            guard state == .running else { return false }
            setState(.paused)
            return true
        }
        guard changed else { return }
        for lower in lowers { lower.pause(timeout: timeout) }
        guard !HandlerContext.isInsideHandler else { return }
        // What the lower layers completed while pausing goes up now.
        runSendRange(rounds: 2, delivering: true)
    }

    func restart() {
        let changed = lock.withLock { () -> Bool in
            guard state == .paused else { return false }
            setState(.running)
            return true
        }
        guard changed else { return }
        for lower in lowers { lower.restart() }
    }

    private func requestClose(timeout: Duration) {
        lock.withLock {
            guard state.rawValue < PortState.closing.rawValue else { return }
            setState(.closing)
        }
    }

    func close(timeout: Duration) {
        requestClose(timeout: timeout)
        for lower in lowers { lower.close(timeout: timeout) }
        if HandlerContext.isInsideHandler {
            driveClose()
            return
        }
        while state != .closed {
            driveClose()
            if state != .closed { usleep(50) }
        }
    }

    /// One step of a close: drives the lower layers' closes, delivers what
    /// they completed, and once every lower layer is closed and every upper
    /// send has come up, the layer is closed.
    private func driveClose() {
        guard state == .closing else { return }
        for lower in lowers where lower.currentState != .closed { lower.poll() }
        runSendRange(rounds: 2, delivering: true)
        runReceiveRange(rounds: 1)
        guard lowers.allSatisfy({ $0.currentState == .closed }) else { return }
        // Nothing below can complete anything any more: what waits for a
        // fresh list never gets one.
        runSendRange(rounds: 1, delivering: true)
        guard counters.value(.sendsOutstanding) == 0, accepted.isEmpty, completed.isEmpty else { return }
        lock.withLock { if state == .closing { setState(.closed) } }
    }

    // MARK: Reading

    var layerStatistics: LayerStatistics {
        var statistics = LayerStatistics()
        statistics.sendsOutstanding = counters.value(.sendsOutstanding)
        statistics.receivesHeldAbove = counters.value(.receivesHeldAbove)
        statistics.framesHeldAbove = counters.value(.framesHeldAbove)
        statistics.receivesConsumed = counters.value(.receivesConsumed)
        statistics.copiedLists = counters.value(.copiedLists)
        statistics.copiedFrames = counters.value(.copiedFrames)
        statistics.upperCompletions = counters.value(.upperCompletions)
        statistics.forwardDroppedFrames = counters.value(.forwardDropped)
        lock.withLock {
            if completionDelay.totalCount > 0 {
                statistics.completionDelayP50Nanoseconds = Int(completionDelay.valueAtPercentile(50))
                statistics.completionDelayP99Nanoseconds = Int(completionDelay.valueAtPercentile(99))
                statistics.completionDelayMaxNanoseconds = Int(completionDelay.max)
            }
        }
        return statistics
    }
}

/// What a driver does with a list a lower layer indicated.
enum LayerReceiveAction {
    /// Indicate it to the caller above.
    case up
    /// Give it back to the lower layer at once.
    case drop
    /// The driver passed it on itself (forwarded it, or indicated a copy and
    /// gave it back).
    case consumed
}

/// The layer's counters: changed from several threads (a send, a lower
/// completion, a return), so each change is an atomic add.
final class LayerCounters: @unchecked Sendable {
    // @unchecked: holds only atomics.
    enum Counter: Int, CaseIterable {
        case sendsOutstanding, receivesHeldAbove, framesHeldAbove, receivesConsumed
        case copiedLists, copiedFrames, upperCompletions, forwardDropped
    }
    private let storage: UnsafeMutablePointer<Int.AtomicRepresentation>

    init() {
        // A cache line of its own per counter: senders, returners and the
        // send range's owner each write some of them.
        storage = .allocate(capacity: Counter.allCases.count * 8)
        storage.initialize(repeating: .init(0), count: Counter.allCases.count * 8)
    }

    deinit { storage.deallocate() }

    @inline(__always)
    func add(_ counter: Counter, _ amount: Int) {
        UnsafeAtomic<Int>(at: storage + counter.rawValue * 8).wrappingIncrement(by: amount, ordering: .relaxed)
    }

    @inline(__always)
    func value(_ counter: Counter) -> Int {
        UnsafeAtomic<Int>(at: storage + counter.rawValue * 8).load(ordering: .relaxed)
    }
}
