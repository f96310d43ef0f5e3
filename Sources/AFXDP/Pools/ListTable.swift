import AFXDPSystem
import AFXDPRings
import Atomics

/// A list slot: the header of a list (the engine's NET_BUFFER_LIST; valid
/// on the list's first slot) and one chunk of packets: its own few
/// (`ListTable.inlineCapacity`), or a large chunk (`largeChunkCapacity`)
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
    /// Packets marked `continues` (multi-buffer: the packet goes on in the
    /// next entry): `send` checks them in O(1) when there are none.
    @usableFromInline var continuations: UInt32
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
    /// The link was down past `linkDownTimeout`: the list was not (fully) sent.
    case linkDown

    /// The status in words, e.g. "success" or "link down".
    public var description: String {
        switch self {
        case .pending: return "pending"
        case .success: return "success"
        case .paused: return "paused"
        case .closing: return "closing"
        case .linkDown: return "link down"
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

/// The pool a list slot (and the frame of the same index) belongs to, and
/// where a returned list goes home: a port's receive side (its frames go back
/// to the fill ring) or a port's send pool (its free stacks).
enum PoolHome {
    case receive(ReceiveContext)
    case send(SendPool)
}

/// A pool's home as the hot paths see it: unretained (the table keeps every
/// pool alive for as long as it lives), so a return costs no retain.
enum UnretainedPoolHome {
    case receive(Unmanaged<ReceiveContext>)
    case send(Unmanaged<SendPool>)
}

/// The NET_BUFFER_LIST table of one UMEM: a list slot per frame, the
/// packets' descriptors, the state word of each list, and which list each
/// frame is in; made once, with the UMEM, and shared by every port bound to it.
///
/// Frames and slots are carved into pools, one range each, when a port opens
/// (`carve`): a port's receive pool feeds its fill ring, its send pool is
/// handed out for sends. A slot's pool is its home: `home(of:)` says where a
/// returned list goes, whichever port it was last sent on, so a frame
/// received on one port and sent on another comes back to the first.
///
/// Every slot in use holds at least one packet, so a pool never runs out of
/// slots before it runs out of frames. Large chunks (one per 32 frames of a
/// pool) let long lists sit in a few runs of 64 packets; when a pool has none
/// left, its lists chain inline chunks instead, which is slower but never fails.
///
/// Ownership: the party that owns a list (see `ListState`) is the only one
/// touching its slots; hand-over happens through the atomic state word and
/// the region mailboxes, which order the accesses. The pool directory is
/// appended under `directoryLock` and read without it: an entry is written
/// before any slot of its pool can be handed out.
@usableFromInline
final class ListTable: @unchecked Sendable {
    // @unchecked: see "Ownership" above.

    // MARK: Immutable after creation (any thread)
    @usableFromInline let umem: UnsafeMutableRawPointer
    /// Keeps the UMEM mapped for as long as any handle can reach the table.
    private let umemOwner: AnyObject
    /// log2(frameSize): 11 or 12. Hot loops shift by it with `&<<`/`&>>`,
    /// which skip the over-width check a plain `<<` pays on every use.
    @usableFromInline let frameShift: UInt32
    /// frameSize - 1: a descriptor address's offset inside its frame.
    @usableFromInline let offsetMask: UInt64
    public let frameSize: Int
    public let frameCount: Int
    /// Bytes reserved at the start of each frame before the packet.
    public let headroom: Int
    /// Packets a slot holds itself.
    @usableFromInline static let inlineCapacity: UInt32 = 4
    /// Packets in a large chunk.
    @usableFromInline static let largeChunkCapacity: UInt32 = 64
    /// Frames per large chunk made: lists of this many packets or more never run out of them.
    static let framesPerLargeChunk = 32
    /// The most pools one UMEM can be carved into.
    static let maximumPools = 256
    @usableFromInline let lists: UnsafeMutablePointer<ListRecord>
    /// Every chunk's packets: the slots' inline chunks (`inlineCapacity`
    /// each, slot order), then the large chunks. A slot's are
    /// `entries[chunkBase ..< chunkBase + chunkCount]`.
    @usableFromInline let entries: UnsafeMutablePointer<XDPDescriptor>
    /// Entries of the inline chunks; large chunks start here.
    @usableFromInline let inlineEntryCount: UInt32
    /// Large chunks the table has room for (pools take theirs at carving).
    let largeChunkCapacity: Int
    @usableFromInline let listWords: UnsafeMutablePointer<UInt64.AtomicRepresentation>
    /// For each frame in flight on TX: the first slot of its list, so that a
    /// completion finds its list. Written by whoever owns the frame's list.
    @usableFromInline let frameOwner: UnsafeMutablePointer<UInt32>
    /// One slot per frame.
    var listCount: Int { frameCount }
    /// Bytes of caller context per list (for stacked layers).
    public static let contextAreaSize = 64
    @usableFromInline let contextAreas: UnsafeMutableRawPointer
    /// The pool each slot belongs to (an index into `homes`).
    private let slotHome: UnsafeMutablePointer<UInt16>
    /// The pool directory, by pool id: each entry written once, at
    /// `register`; `unretainedHomes` mirrors it for the hot paths.
    private let homes: UnsafeMutablePointer<PoolHome?>
    private let unretainedHomes: UnsafeMutablePointer<UnretainedPoolHome?>

    /// The same memory, by value, for the regions' hot loops.
    @usableFromInline let layout: TableLayout

    // MARK: Carving, under directoryLock
    private let directoryLock = PThreadLock()
    /// Pool ids handed out by `reserve`.
    @exclusivity(unchecked) private var poolCount = 0
    @exclusivity(unchecked) private var nextFrame = 0
    @exclusivity(unchecked) private var nextLargeChunk = 0

    init(umem: UnsafeMutableRawPointer, frameSize: Int, frameCount: Int, headroom: Int, umemOwner: AnyObject) {
        self.umem = umem
        self.umemOwner = umemOwner
        self.frameSize = frameSize
        self.frameShift = UInt32(frameSize.trailingZeroBitCount)
        self.offsetMask = UInt64(frameSize - 1)
        self.frameCount = frameCount
        self.headroom = headroom
        lists = .allocate(capacity: frameCount)
        lists.initialize(
            repeating: ListRecord(
                chunkBase: 0, chunkNext: noSlot, chunkCount: 0, count: 0, next: noSlot, placeChunk: noSlot, placeIndex: 0,
                outstanding: 0, placedBytes: 0, placedPackets: 0, unsetLengths: 0, continuations: 0, status: .pending, priority: 0,
                inFlight: false, ownersStamped: false),
            count: frameCount)
        for slot in 0..<frameCount { lists[slot].chunkBase = UInt32(slot) * Self.inlineCapacity }
        // Each pool rounds its share up: room for that rounding in every pool.
        largeChunkCapacity = frameCount / Self.framesPerLargeChunk + Self.maximumPools
        inlineEntryCount = UInt32(frameCount) * Self.inlineCapacity
        let entryCount = Int(inlineEntryCount) + largeChunkCapacity * Int(Self.largeChunkCapacity)
        entries = .allocate(capacity: entryCount)
        entries.initialize(repeating: XDPDescriptor(address: 0, length: 0), count: entryCount)
        listWords = .allocate(capacity: frameCount)
        listWords.initialize(repeating: .init(0), count: frameCount)
        frameOwner = .allocate(capacity: frameCount)
        frameOwner.initialize(repeating: noSlot, count: frameCount)
        contextAreas = .allocate(byteCount: frameCount * Self.contextAreaSize, alignment: 64)
        contextAreas.initializeMemory(as: UInt8.self, repeating: 0, count: frameCount * Self.contextAreaSize)
        slotHome = .allocate(capacity: frameCount)
        slotHome.initialize(repeating: UInt16.max, count: frameCount)
        homes = .allocate(capacity: Self.maximumPools)
        homes.initialize(repeating: nil, count: Self.maximumPools)
        unretainedHomes = .allocate(capacity: Self.maximumPools)
        unretainedHomes.initialize(repeating: nil, count: Self.maximumPools)
        layout = TableLayout(
            lists: lists, entries: entries, inlineEntryCount: inlineEntryCount, listWords: listWords,
            frameOwner: frameOwner, frameShift: frameShift, offsetMask: offsetMask, frameCount: frameCount,
            headroom: headroom, slotHome: slotHome, unretainedHomes: unretainedHomes)
    }

    deinit {
        homes.deinitialize(count: Self.maximumPools)
        homes.deallocate()
        unretainedHomes.deallocate()
        slotHome.deallocate()
        lists.deallocate()
        entries.deallocate()
        listWords.deallocate()
        frameOwner.deallocate()
        contextAreas.deallocate()
    }

    // MARK: Pools

    /// A pool's share of the table: frames (and the slots of the same
    /// indices) and large chunks.
    struct Range {
        var firstFrame: Int
        var frameCount: Int
        var firstLargeChunk: Int
        var largeChunkCount: Int
        var frames: Swift.Range<Int> { firstFrame..<firstFrame + frameCount }
        var largeChunks: Swift.Range<Int> { firstLargeChunk..<firstLargeChunk + largeChunkCount }
    }

    /// Frames not yet given to a pool.
    var framesLeft: Int { directoryLock.withLock { frameCount - nextFrame } }

    /// Takes the next `frameCount` frames (and their slots and large
    /// chunks) for a pool; nil when the table has too few frames or pools
    /// left. The pool has no home until `register`.
    func reserve(frameCount count: Int) -> (Range, UInt16)? {
        directoryLock.withLock { () -> (Range, UInt16)? in
            guard count > 0, count <= frameCount - nextFrame, poolCount < Self.maximumPools else { return nil }
            let chunks = (count + Self.framesPerLargeChunk - 1) / Self.framesPerLargeChunk
            invariant(nextLargeChunk + chunks <= largeChunkCapacity, "large chunks counted for every pool")
            let range = Range(firstFrame: nextFrame, frameCount: count, firstLargeChunk: nextLargeChunk, largeChunkCount: chunks)
            let id = UInt16(poolCount)
            poolCount += 1
            nextFrame += count
            nextLargeChunk += chunks
            return (range, id)
        }
    }

    /// Records `home` as the home of the reserved pool `id`'s slots. Before
    /// any of them is handed out.
    func register(_ home: PoolHome, range: Range, id: UInt16) {
        directoryLock.withLock {
            homes[Int(id)] = home
            switch home {
            case .receive(let context): unretainedHomes[Int(id)] = .receive(Unmanaged.passUnretained(context))
            case .send(let pool): unretainedHomes[Int(id)] = .send(Unmanaged.passUnretained(pool))
            }
            for slot in range.frames { slotHome[slot] = id }
        }
    }

    /// Where a list whose first slot is `slot` goes home.
    @inline(__always)
    func home(of slot: UInt32) -> UnretainedPoolHome { layout.home(of: slot) }

    /// The pool id of a slot (its index in the directory).
    @inline(__always)
    func poolID(of slot: UInt32) -> UInt16 { layout.poolID(of: slot) }

    /// Every pool, in the order they were carved.
    var allHomes: [PoolHome] {
        directoryLock.withLock { (0..<poolCount).compactMap { homes[$0] } }
    }

    // MARK: Through the layout (see `TableLayout`)

    @inlinable @inline(__always)
    func word(_ slot: UInt32) -> UnsafeAtomic<UInt64> { layout.word(slot) }

    @inlinable @inline(__always)
    static func packed(_ generation: UInt32, _ state: ListState) -> UInt64 { TableLayout.packed(generation, state) }

    @inlinable @inline(__always)
    func transition(_ list: PacketList, from: ListState, to: ListState, bumpGeneration: Bool = false) throws(AFXDPError) {
        try layout.transition(slot: list.slot, generation: list.generation, from: from, to: to, bumpGeneration: bumpGeneration)
    }

    @inline(__always)
    func setState(_ slot: UInt32, _ state: ListState, generation: UInt32) { layout.setState(slot, state, generation: generation) }

    @inlinable @inline(__always)
    func generation(of slot: UInt32) -> UInt32 { layout.generation(of: slot) }

    @inlinable @inline(__always)
    func handle(_ slot: UInt32) -> PacketList {
        PacketList(table: self, slot: slot, generation: generation(of: slot))
    }

    @inlinable @inline(__always)
    func checkOwnedByCaller(slot: UInt32, word expected: UInt64) throws(AFXDPError) {
        try layout.checkOwnedByCaller(slot: slot, word: expected)
    }

    @inlinable @inline(__always)
    func isOwnedByCaller(slot: UInt32, word expected: UInt64) -> Bool { layout.isOwnedByCaller(slot: slot, word: expected) }

    @usableFromInline
    static func ownershipError(current: UInt64, expected: UInt64) -> AFXDPError {
        TableLayout.ownershipError(current: current, expected: expected)
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

    @inlinable @inline(__always)
    func chunk(_ slot: UInt32) -> UnsafeMutablePointer<XDPDescriptor> { layout.chunk(slot) }

    @inline(__always)
    func attachChunk(to slot: UInt32, remaining: UInt32, from largeChunks: inout IndexStack) -> UInt32 {
        layout.attachChunk(to: slot, remaining: remaining, from: &largeChunks)
    }

    @inline(__always)
    func largeChunk(of slot: UInt32) -> UInt32? { layout.largeChunk(of: slot) }

    @inline(__always)
    func forEachSlot(of head: UInt32, _ body: (_ slot: UInt32, _ packets: UnsafeMutableBufferPointer<XDPDescriptor>) -> Void) {
        layout.forEachSlot(of: head, body)
    }

    func resetHeader(_ slot: UInt32) { layout.resetHeader(slot) }

    func state(of slot: UInt32) -> ListState { layout.state(of: slot) }
}

/// The table's memory, as raw pointers and constants held by value: what
/// the regions' hot loops read. A region keeps a copy, so that reaching the
/// table's memory costs no retain of the table (which the UMEM and every
/// handle keep alive for longer than any region uses it).
@usableFromInline
struct TableLayout {
    @usableFromInline let lists: UnsafeMutablePointer<ListRecord>
    @usableFromInline let entries: UnsafeMutablePointer<XDPDescriptor>
    @usableFromInline let inlineEntryCount: UInt32
    @usableFromInline let listWords: UnsafeMutablePointer<UInt64.AtomicRepresentation>
    @usableFromInline let frameOwner: UnsafeMutablePointer<UInt32>
    @usableFromInline let frameShift: UInt32
    @usableFromInline let offsetMask: UInt64
    let frameCount: Int
    let headroom: Int
    let slotHome: UnsafeMutablePointer<UInt16>
    let unretainedHomes: UnsafeMutablePointer<UnretainedPoolHome?>

    var listCount: Int { frameCount }

    /// Where a list whose first slot is `slot` goes home.
    @inline(__always)
    func home(of slot: UInt32) -> UnretainedPoolHome {
        guard let home = unretainedHomes[Int(slotHome[Int(slot)])] else {
            invariantFailed("a slot handed out has no home", file: #file, line: #line)
        }
        return home
    }

    /// The pool id of a slot (its index in the directory).
    @inline(__always)
    func poolID(of slot: UInt32) -> UInt16 { slotHome[Int(slot)] }

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
    func transition(
        slot: UInt32, generation: UInt32, from: ListState, to: ListState, bumpGeneration: Bool
    ) throws(AFXDPError) {
        let expected = Self.packed(generation, from)
        let desired = Self.packed(bumpGeneration ? generation &+ 1 : generation, to)
        let (done, current) = word(slot).compareExchange(expected: expected, desired: desired, ordering: .acquiringAndReleasing)
        if done { return }
        if UInt32(truncatingIfNeeded: current >> 32) != generation { throw .listAlreadyReturned }
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
        if remaining > ListTable.inlineCapacity, let large = largeChunks.pop() {
            lists[Int(slot)].chunkBase = inlineEntryCount &+ large &* ListTable.largeChunkCapacity
            return ListTable.largeChunkCapacity
        }
        lists[Int(slot)].chunkBase = slot &* ListTable.inlineCapacity
        return ListTable.inlineCapacity
    }

    /// The large chunk `slot` holds, if any.
    @inline(__always)
    func largeChunk(of slot: UInt32) -> UInt32? {
        let base = lists[Int(slot)].chunkBase
        return base >= inlineEntryCount ? (base &- inlineEntryCount) / ListTable.largeChunkCapacity : nil
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

    func resetHeader(_ slot: UInt32) {
        lists[Int(slot)].status = .pending
        lists[Int(slot)].priority = 0
        lists[Int(slot)].inFlight = false
        lists[Int(slot)].outstanding = 0
        lists[Int(slot)].placeChunk = noSlot
        lists[Int(slot)].placeIndex = 0
        lists[Int(slot)].placedPackets = 0
        lists[Int(slot)].continuations = 0
        lists[Int(slot)].next = noSlot
    }

    func state(of slot: UInt32) -> ListState {
        ListState(rawValue: UInt32(truncatingIfNeeded: word(slot).load(ordering: .acquiring))) ?? .free
    }
}
