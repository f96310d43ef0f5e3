import AFXDPRings
import Atomics

/// A list slot: the header of a list (the engine's NET_BUFFER_LIST; valid
/// on the list's first slot) and one chunk of packets: its own few
/// (`PacketPool.inlineCapacity`), or a large chunk (`largeChunkCapacity`)
/// lent to it while the list lives. A longer list chains more slots through
/// `chunkNext`. A packet is an `XDPDescriptor` in its chunk, in the rings'
/// own format, so receiving, returning and sending copy descriptors between
/// chunks and rings in runs instead of following one link per frame; nothing
/// is allocated per packet.
///
/// Ownership: the party that owns the list (see `ListState`) is the only one
/// touching its slots; hand-over happens through the atomic state word and
/// the region mailboxes, which order the accesses.
@usableFromInline
struct ListRecord {
    // MARK: Every slot of a list
    /// Where this slot's packets are in `PacketPool.entries`: its inline
    /// chunk, or a large chunk (at or past `PacketPool.inlineEntryCount`).
    @usableFromInline var chunkBase: UInt32
    /// The list's next slot, or `noSlot`.
    @usableFromInline var chunkNext: UInt32
    /// Packets in this slot's chunk.
    @usableFromInline var chunkCount: UInt32
    // MARK: The list's first slot only
    @usableFromInline var count: UInt32
    /// Next list in whatever queue or mailbox the list is in.
    @usableFromInline var next: UInt32
    /// Send side: the slot and index of the next packet to place into the TX
    /// ring (`placeChunk` is `noSlot` once all are placed).
    @usableFromInline var placeChunk: UInt32
    @usableFromInline var placeIndex: UInt32
    /// Send side: frames placed in the TX ring whose completion has not come back.
    @usableFromInline var outstanding: UInt32
    /// Send side: bytes of the frames placed so far (counted while placing).
    @usableFromInline var placedBytes: UInt32
    /// Send side: packets placed so far; once the list completes, those the
    /// kernel took and gave back (the first `placedPackets` of the list).
    @usableFromInline var placedPackets: UInt32
    /// Packets whose length has not been set yet: a list is sendable at 0.
    /// Kept by `Packet.setLength`, so that `send` checks in O(1).
    @usableFromInline var unsetLengths: UInt32
    @usableFromInline var status: SendStatus
    @usableFromInline var priority: UInt8
    /// Send side: whether the list is already in the in-flight FIFO.
    @usableFromInline var inFlight: Bool
    /// Whether `PacketPool.frameOwner` names this list for each of its
    /// frames: set when a send list is allocated, or when a received list is
    /// first sent. A frame stays in one list until the list is returned.
    @usableFromInline var ownersStamped: Bool
}

/// How a send ended, set on each list when it is completed.
public enum SendStatus: UInt8, Sendable, CustomStringConvertible {
    /// Not completed yet.
    case pending
    /// Every frame of the list went out and the completion ring gave it back.
    case success
    /// The port was paused: the list was not (fully) sent.
    case paused
    /// The port closed before the list was (fully) sent.
    case closing

    public var description: String {
        switch self {
        case .pending: return "pending"
        case .success: return "success"
        case .paused: return "paused"
        case .closing: return "closing"
        }
    }
}

/// Who holds a list. Stored with the list's generation in one atomic word,
/// so that one compare-and-swap checks both that the handle is current and
/// that the caller may hand it over.
@usableFromInline
enum ListState: UInt32 {
    /// In a free stack.
    case free = 0
    /// The caller's: freshly allocated, indicated on receive, or completed.
    case caller = 1
    /// The engine's: queued for send or in flight.
    case engine = 2
}

/// Which pool a frame or list slot comes home to when it is returned.
enum Home {
    case receive
    case send
}

/// The pools of a port: UMEM frames, list slots and large chunks, made once
/// at open.
///
/// Layout: frames `0..<receiveFrameCount` feed the fill ring; the rest are
/// handed out for sends. List slots are split the same way, one per frame:
/// every slot in use holds at least one packet, so a side never runs out of
/// slots before it runs out of frames. Large chunks (one per 32 frames, split
/// the same way) let long lists sit in a few runs of 64 packets; when a side
/// has none left, its lists chain inline chunks instead, which is slower but
/// never fails. Returning a list sends its frames
/// home: receive frames go back to the fill ring through the receive
/// region's mailbox; send frames go back to the send free stacks, which are
/// in the shared region under its lock.
public final class PacketPool: @unchecked Sendable {
    // @unchecked: the tables are partitioned by list ownership (see ListRecord);
    // the send free stacks are guarded by `sharedLock`.

    // MARK: Immutable after open (any thread)
    @usableFromInline let umem: UnsafeMutableRawPointer
    /// Keeps the UMEM mapped for as long as the pool (and any handle's
    /// packets) can be reached, even past the port.
    private let umemOwner: AnyObject?
    /// log2(frameSize): 11 or 12. Hot loops shift by it with `&<<`/`&>>`,
    /// which skip the over-width check a plain `<<` pays on every use.
    @usableFromInline let frameShift: UInt32
    /// frameSize - 1: a descriptor address's offset inside its frame.
    @usableFromInline let offsetMask: UInt64
    public let frameSize: Int
    public let frameCount: Int
    public let receiveFrameCount: Int
    /// Bytes reserved at the start of each send frame before the packet.
    public let sendHeadroom: Int
    /// Packets a slot holds itself.
    @usableFromInline static let inlineCapacity: UInt32 = 4
    /// Packets in a large chunk.
    @usableFromInline static let largeChunkCapacity: UInt32 = 64
    /// Frames per large chunk made: lists of this many packets or more never run out of them.
    static let framesPerLargeChunk = 32
    @usableFromInline let lists: UnsafeMutablePointer<ListRecord>
    /// Every chunk's packets: the slots' inline chunks (`inlineCapacity`
    /// each, slot order), then the large chunks. A slot's are
    /// `entries[chunkBase ..< chunkBase + chunkCount]`.
    @usableFromInline let entries: UnsafeMutablePointer<XDPDescriptor>
    /// Entries of the inline chunks; large chunks start here.
    @usableFromInline let inlineEntryCount: UInt32
    let largeChunkCount: Int
    /// Large chunks `0..<receiveLargeChunkCount` serve receive lists, the rest send lists.
    let receiveLargeChunkCount: Int
    @usableFromInline let listWords: UnsafeMutablePointer<UInt64.AtomicRepresentation>
    /// For each frame in flight on TX: the first slot of its list, so that a
    /// completion finds its list. Written by whoever owns the frame's list.
    @usableFromInline let frameOwner: UnsafeMutablePointer<UInt32>
    let listCount: Int
    let receiveListCount: Int
    /// Bytes of caller context per list (for stacked layers).
    public static let contextAreaSize = 64
    @usableFromInline let contextAreas: UnsafeMutableRawPointer

    // MARK: Shared region: guarded by sharedLock
    let sharedLock = PThreadLock()
    @exclusivity(unchecked) private var sendFreeFrames: IndexStack
    @exclusivity(unchecked) private var sendFreeLists: IndexStack
    @exclusivity(unchecked) private var sendFreeLargeChunks: IndexStack

    /// The largest packet a send frame holds.
    public var maximumSendLength: Int { frameSize - sendHeadroom }

    /// Frames in the send pool in all: the longest list that can be allocated.
    public var sendFrameCount: Int { frameCount - receiveFrameCount }

    init(
        umem: UnsafeMutableRawPointer, frameSize: Int, frameCount: Int, receiveFrameCount: Int, sendHeadroom: Int,
        umemOwner: AnyObject? = nil
    ) {
        self.umem = umem
        self.umemOwner = umemOwner
        self.frameSize = frameSize
        self.frameShift = UInt32(frameSize.trailingZeroBitCount)
        self.offsetMask = UInt64(frameSize - 1)
        self.frameCount = frameCount
        self.receiveFrameCount = receiveFrameCount
        self.sendHeadroom = sendHeadroom
        listCount = frameCount
        receiveListCount = receiveFrameCount
        lists = .allocate(capacity: listCount)
        lists.initialize(
            repeating: ListRecord(
                chunkBase: 0, chunkNext: noSlot, chunkCount: 0, count: 0, next: noSlot, placeChunk: noSlot, placeIndex: 0,
                outstanding: 0, placedBytes: 0, placedPackets: 0, unsetLengths: 0, status: .pending, priority: 0,
                inFlight: false, ownersStamped: false),
            count: listCount)
        for slot in 0..<listCount { lists[slot].chunkBase = UInt32(slot) * Self.inlineCapacity }
        let sendFrameCount = frameCount - receiveFrameCount
        receiveLargeChunkCount = (receiveFrameCount + Self.framesPerLargeChunk - 1) / Self.framesPerLargeChunk
        largeChunkCount =
            receiveLargeChunkCount + (sendFrameCount + Self.framesPerLargeChunk - 1) / Self.framesPerLargeChunk
        inlineEntryCount = UInt32(listCount) * Self.inlineCapacity
        let entryCount = Int(inlineEntryCount) + largeChunkCount * Int(Self.largeChunkCapacity)
        entries = .allocate(capacity: entryCount)
        entries.initialize(repeating: XDPDescriptor(address: 0, length: 0), count: entryCount)
        listWords = .allocate(capacity: listCount)
        listWords.initialize(repeating: .init(0), count: listCount)
        frameOwner = .allocate(capacity: frameCount)
        frameOwner.initialize(repeating: noSlot, count: frameCount)
        contextAreas = .allocate(byteCount: listCount * Self.contextAreaSize, alignment: 64)
        contextAreas.initializeMemory(as: UInt8.self, repeating: 0, count: listCount * Self.contextAreaSize)
        sendFreeFrames = IndexStack(capacity: frameCount - receiveFrameCount)
        sendFreeLists = IndexStack(capacity: listCount - receiveListCount)
        // Pushed in reverse so that the lowest frames are handed out first.
        for frame in (receiveFrameCount..<frameCount).reversed() { sendFreeFrames.push(UInt32(frame)) }
        for slot in (receiveListCount..<listCount).reversed() { sendFreeLists.push(UInt32(slot)) }
        sendFreeLargeChunks = IndexStack(capacity: largeChunkCount - receiveLargeChunkCount)
        for chunk in (receiveLargeChunkCount..<largeChunkCount).reversed() { sendFreeLargeChunks.push(UInt32(chunk)) }
    }

    deinit {
        lists.deallocate()
        entries.deallocate()
        listWords.deallocate()
        frameOwner.deallocate()
        contextAreas.deallocate()
        sendFreeFrames.deallocate()
        sendFreeLists.deallocate()
        sendFreeLargeChunks.deallocate()
    }

    // MARK: List state word: generation << 32 | state

    @inlinable @inline(__always)
    func word(_ slot: UInt32) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: listWords + Int(slot))
    }

    @inlinable @inline(__always)
    static func packed(_ generation: UInt32, _ state: ListState) -> UInt64 {
        UInt64(generation) << 32 | UInt64(state.rawValue)
    }

    /// Moves a list from `from` to `to` if the handle is current; throws the
    /// error that says what the caller got wrong otherwise.
    @inlinable @inline(__always)
    func transition(_ list: PacketList, from: ListState, to: ListState, bumpGeneration: Bool = false) throws(AFXDPError) {
        let expected = Self.packed(list.generation, from)
        let desired = Self.packed(bumpGeneration ? list.generation &+ 1 : list.generation, to)
        let (done, current) = word(list.slot).compareExchange(
            expected: expected, desired: desired, ordering: .acquiringAndReleasing)
        if done { return }
        if UInt32(truncatingIfNeeded: current >> 32) != list.generation { throw .listAlreadyReturned }
        throw .listNotOwnedByCaller
    }

    /// Engine-internal transitions that cannot fail (the engine owns the list).
    @inline(__always)
    func setState(_ slot: UInt32, _ state: ListState, generation: UInt32) {
        word(slot).store(Self.packed(generation, state), ordering: .releasing)
    }

    @inlinable @inline(__always)
    func generation(of slot: UInt32) -> UInt32 {
        UInt32(truncatingIfNeeded: word(slot).load(ordering: .relaxed) >> 32)
    }

    @inlinable @inline(__always)
    func handle(_ slot: UInt32) -> PacketList {
        PacketList(pool: self, slot: slot, generation: generation(of: slot))
    }

    func home(ofList slot: UInt32) -> Home { Int(slot) < receiveListCount ? .receive : .send }

    /// Throws unless the list at `slot` is the caller's under the handle whose
    /// state word (generation, `.caller`) is `word`: the check every handle
    /// accessor makes. A relaxed load: the caller got the handle through a
    /// call that already ordered its accesses; this catches stale handles.
    @inlinable @inline(__always)
    func checkOwnedByCaller(slot: UInt32, word expected: UInt64) throws(AFXDPError) {
        let current = word(slot).load(ordering: .relaxed)
        if current == expected { return }
        throw Self.ownershipError(current: current, expected: expected)
    }

    @inlinable @inline(__always)
    func isOwnedByCaller(slot: UInt32, word expected: UInt64) -> Bool {
        word(slot).load(ordering: .relaxed) == expected
    }

    @usableFromInline
    static func ownershipError(current: UInt64, expected: UInt64) -> AFXDPError {
        current >> 32 != expected >> 32 ? .listAlreadyReturned : .listNotOwnedByCaller
    }

    /// Who may use a handle now.
    enum HandleOwnership { case caller, engine, stale }

    func ownership(of list: PacketList) -> HandleOwnership {
        let current = word(list.slot).load(ordering: .acquiring)
        if UInt32(truncatingIfNeeded: current >> 32) != list.generation { return .stale }
        switch ListState(rawValue: UInt32(truncatingIfNeeded: current)) {
        case .caller: return .caller
        case .engine: return .engine
        case .free, nil: return .stale
        }
    }

    /// The first packet of slot `slot`'s chunk.
    @inlinable @inline(__always)
    func chunk(_ slot: UInt32) -> UnsafeMutablePointer<XDPDescriptor> {
        entries + Int(lists[Int(slot)].chunkBase)
    }

    /// Gives `slot` the storage for the next `remaining` packets of a list
    /// being built: a large chunk from `largeChunks` if more than fit inline
    /// and one is free, else its inline chunk. Returns its capacity.
    @inline(__always)
    func attachChunk(to slot: UInt32, remaining: UInt32, from largeChunks: inout IndexStack) -> UInt32 {
        if remaining > Self.inlineCapacity, let large = largeChunks.pop() {
            lists[Int(slot)].chunkBase = inlineEntryCount &+ large &* Self.largeChunkCapacity
            return Self.largeChunkCapacity
        }
        lists[Int(slot)].chunkBase = slot &* Self.inlineCapacity
        return Self.inlineCapacity
    }

    /// The large chunk `slot` holds, if any.
    @inline(__always)
    func largeChunk(of slot: UInt32) -> UInt32? {
        let base = lists[Int(slot)].chunkBase
        return base >= inlineEntryCount ? (base &- inlineEntryCount) / Self.largeChunkCapacity : nil
    }

    /// Calls `body` with each slot of the list that starts at `head`, in
    /// order, and the packets in it. For the paths off the hot loops, which
    /// walk a list's chunks with pointers instead.
    @inline(__always)
    func forEachSlot(of head: UInt32, _ body: (_ slot: UInt32, _ packets: UnsafeMutableBufferPointer<XDPDescriptor>) -> Void) {
        var slot = head
        while slot != noSlot {
            let next = lists[Int(slot)].chunkNext
            body(slot, UnsafeMutableBufferPointer(start: chunk(slot), count: Int(lists[Int(slot)].chunkCount)))
            slot = next
        }
    }

    // MARK: Send pool (shared region)

    /// Takes a list of `packetCount` frames from the send pool, each empty
    /// (length 0) and ready to write. Returns nil when the pool has too few
    /// frames left: wait for completions and return completed lists.
    func allocate(packetCount: Int) -> PacketList? {
        invariant(packetCount > 0 && packetCount <= sendFrameCount, "a list of \(packetCount) packets reached the pool")
        let headroom = UInt64(sendHeadroom)
        let shift = UInt64(frameShift)
        let slot: UInt32? = sharedLock.withLock {
            // Each slot in use holds a frame or more: enough frames means enough slots.
            guard sendFreeFrames.count >= packetCount, let head = sendFreeLists.pop() else { return nil }
            var remaining = UInt32(packetCount)
            var slot = head
            while true {
                let capacity = attachChunk(to: slot, remaining: remaining, from: &sendFreeLargeChunks)
                let take = min(remaining, capacity)
                let packets = chunk(slot)
                for index in 0..<Int(take) {
                    guard let frame = sendFreeFrames.pop() else { invariantFailed("send frames counted but missing", file: #file, line: #line) }
                    packets[index] = XDPDescriptor(address: UInt64(frame) &<< shift | headroom, length: 0)
                    frameOwner[Int(frame)] = head
                }
                lists[Int(slot)].chunkCount = take
                remaining -= take
                if remaining == 0 { break }
                guard let next = sendFreeLists.pop() else { invariantFailed("send list slots counted but missing", file: #file, line: #line) }
                lists[Int(slot)].chunkNext = next
                slot = next
            }
            lists[Int(slot)].chunkNext = noSlot
            lists[Int(head)].count = UInt32(packetCount)
            lists[Int(head)].unsetLengths = UInt32(packetCount)
            return head
        }
        guard let slot else { return nil }
        resetHeader(slot)
        lists[Int(slot)].ownersStamped = true
        setState(slot, .caller, generation: generation(of: slot))
        return handle(slot)
    }

    func resetHeader(_ slot: UInt32) {
        lists[Int(slot)].status = .pending
        lists[Int(slot)].priority = 0
        lists[Int(slot)].inFlight = false
        lists[Int(slot)].outstanding = 0
        lists[Int(slot)].placeChunk = noSlot
        lists[Int(slot)].placeIndex = 0
        lists[Int(slot)].placedPackets = 0
        lists[Int(slot)].next = noSlot
    }

    /// Gives a send-home list and its frames back to the send pool. The list
    /// state was already moved to `.free` (and its generation bumped).
    func releaseToSendPool(_ slot: UInt32) {
        let shift = UInt64(frameShift)
        sharedLock.withLock {
            forEachSlot(of: slot) { slot, packets in
                for packet in packets { sendFreeFrames.push(UInt32(truncatingIfNeeded: packet.address &>> shift)) }
                if let large = largeChunk(of: slot) { sendFreeLargeChunks.push(large) }
                sendFreeLists.push(slot)
            }
        }
    }

    /// Frames, list slots and large chunks in the send pool right now.
    var sendPoolCounts: (frames: Int, lists: Int, largeChunks: Int) {
        sharedLock.withLock { (sendFreeFrames.count, sendFreeLists.count, sendFreeLargeChunks.count) }
    }

    func state(of slot: UInt32) -> ListState {
        ListState(rawValue: UInt32(truncatingIfNeeded: word(slot).load(ordering: .acquiring))) ?? .free
    }
}
