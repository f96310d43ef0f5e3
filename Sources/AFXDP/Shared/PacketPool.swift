import AFXDPRings
import Atomics

/// What the engine knows of one UMEM frame. A packet *is* a frame: frames
/// chain into lists through `next`, so nothing is allocated per packet.
///
/// Ownership: whoever owns the list the frame is in (the caller, the send
/// region or the receive region) is the only one touching its record.
@usableFromInline
struct FrameRecord {
    /// Next frame of the same list, or `noSlot`.
    @usableFromInline var next: UInt32
    /// The list slot this frame belongs to while it is in flight on TX.
    @usableFromInline var owner: UInt32
    /// Where the packet starts inside the frame.
    @usableFromInline var offset: UInt16
    /// Packet length in bytes.
    @usableFromInline var length: UInt16
}

/// Per-list bookkeeping, the engine's NET_BUFFER_LIST header.
///
/// Ownership: the party that owns the list (see `ListState`) is the only one
/// touching it; hand-over happens through the atomic state word and the
/// region mailboxes, which order the accesses.
@usableFromInline
struct ListRecord {
    @usableFromInline var head: UInt32
    @usableFromInline var tail: UInt32
    @usableFromInline var count: UInt32
    /// Next list in whatever queue or mailbox the list is in.
    @usableFromInline var next: UInt32
    /// Send side: the next frame to place into the TX ring (`noSlot` once all are placed).
    @usableFromInline var placeCursor: UInt32
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
    @usableFromInline var lowResources: Bool
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

/// The pools of a port: UMEM frames and list descriptors, made once at open.
///
/// Layout: frames `0..<receiveFrameCount` feed the fill ring; the rest are
/// handed out for sends. List slots are split the same way. Returning a list
/// sends its frames home: receive frames go back to the fill ring through the
/// receive region's mailbox; send frames go back to the send free stacks,
/// which are in the shared region under its lock.
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
    public let frameSize: Int
    public let frameCount: Int
    public let receiveFrameCount: Int
    /// Bytes reserved at the start of each send frame before the packet.
    public let sendHeadroom: Int
    @usableFromInline let frames: UnsafeMutablePointer<FrameRecord>
    @usableFromInline let lists: UnsafeMutablePointer<ListRecord>
    @usableFromInline let listWords: UnsafeMutablePointer<UInt64.AtomicRepresentation>
    let listCount: Int
    let receiveListCount: Int
    /// Bytes of caller context per list (for stacked layers).
    public static let contextAreaSize = 64
    @usableFromInline let contextAreas: UnsafeMutableRawPointer

    // MARK: Shared region: guarded by sharedLock
    let sharedLock = PThreadLock()
    @exclusivity(unchecked) private var sendFreeFrames: IndexStack
    @exclusivity(unchecked) private var sendFreeLists: IndexStack

    /// The largest packet a send frame holds.
    public var maximumSendLength: Int { frameSize - sendHeadroom }

    init(
        umem: UnsafeMutableRawPointer, frameSize: Int, frameCount: Int, receiveFrameCount: Int, sendHeadroom: Int,
        umemOwner: AnyObject? = nil
    ) {
        self.umem = umem
        self.umemOwner = umemOwner
        self.frameSize = frameSize
        self.frameShift = UInt32(frameSize.trailingZeroBitCount)
        self.frameCount = frameCount
        self.receiveFrameCount = receiveFrameCount
        self.sendHeadroom = sendHeadroom
        // Every list holds at least one frame, so one slot per frame is enough.
        listCount = frameCount
        receiveListCount = receiveFrameCount
        frames = .allocate(capacity: frameCount)
        frames.initialize(repeating: FrameRecord(next: noSlot, owner: noSlot, offset: 0, length: 0), count: frameCount)
        lists = .allocate(capacity: listCount)
        lists.initialize(
            repeating: ListRecord(
                head: noSlot, tail: noSlot, count: 0, next: noSlot, placeCursor: noSlot, outstanding: 0,
                placedBytes: 0, placedPackets: 0, unsetLengths: 0, status: .pending, priority: 0, inFlight: false, lowResources: false),
            count: listCount)
        listWords = .allocate(capacity: listCount)
        listWords.initialize(repeating: .init(0), count: listCount)
        contextAreas = .allocate(byteCount: listCount * Self.contextAreaSize, alignment: 64)
        contextAreas.initializeMemory(as: UInt8.self, repeating: 0, count: listCount * Self.contextAreaSize)
        sendFreeFrames = IndexStack(capacity: frameCount - receiveFrameCount)
        sendFreeLists = IndexStack(capacity: listCount - receiveListCount)
        // Pushed in reverse so that the lowest frames are handed out first.
        for frame in (receiveFrameCount..<frameCount).reversed() { sendFreeFrames.push(UInt32(frame)) }
        for slot in (receiveListCount..<listCount).reversed() { sendFreeLists.push(UInt32(slot)) }
    }

    deinit {
        frames.deallocate()
        lists.deallocate()
        listWords.deallocate()
        contextAreas.deallocate()
        sendFreeFrames.deallocate()
        sendFreeLists.deallocate()
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

    /// Whether the handle is current (not returned since it was made).
    public func isCurrent(_ list: PacketList) -> Bool {
        list.pool === self && generation(of: list.slot) == list.generation
            && ListState(rawValue: UInt32(truncatingIfNeeded: word(list.slot).load(ordering: .acquiring))) != .free
    }

    // MARK: Send pool (shared region)

    /// Takes a list of `packetCount` frames from the send pool, each empty
    /// (length 0) and ready to write. Returns nil when the pool has too few
    /// frames left: wait for completions and return completed lists.
    func allocate(packetCount: Int) -> PacketList? {
        precondition(packetCount > 0, "a list holds at least one packet")
        let slot: UInt32? = sharedLock.withLock {
            guard sendFreeFrames.count >= packetCount, let slot = sendFreeLists.pop() else { return nil }
            var previous = noSlot
            for _ in 0..<packetCount {
                let frame = sendFreeFrames.pop()!
                frames[Int(frame)] = FrameRecord(next: noSlot, owner: slot, offset: UInt16(sendHeadroom), length: 0)
                if previous == noSlot { lists[Int(slot)].head = frame } else { frames[Int(previous)].next = frame }
                previous = frame
            }
            lists[Int(slot)].tail = previous
            lists[Int(slot)].count = UInt32(packetCount)
            lists[Int(slot)].unsetLengths = UInt32(packetCount)
            return slot
        }
        guard let slot else { return nil }
        resetHeader(slot)
        setState(slot, .caller, generation: generation(of: slot))
        return handle(slot)
    }

    func resetHeader(_ slot: UInt32) {
        lists[Int(slot)].status = .pending
        lists[Int(slot)].priority = 0
        lists[Int(slot)].inFlight = false
        lists[Int(slot)].outstanding = 0
        lists[Int(slot)].placeCursor = noSlot
        lists[Int(slot)].next = noSlot
        lists[Int(slot)].lowResources = false
    }

    /// Gives a send-home list and its frames back to the send pool. The list
    /// state was already moved to `.free` (and its generation bumped).
    func releaseToSendPool(_ slot: UInt32) {
        sharedLock.withLock {
            var frame = lists[Int(slot)].head
            while frame != noSlot {
                let next = frames[Int(frame)].next
                sendFreeFrames.push(frame)
                frame = next
            }
            sendFreeLists.push(slot)
        }
    }

    /// Frames and list slots in the send pool right now.
    var sendPoolCounts: (frames: Int, lists: Int) {
        sharedLock.withLock { (sendFreeFrames.count, sendFreeLists.count) }
    }

    func state(of slot: UInt32) -> ListState {
        ListState(rawValue: UInt32(truncatingIfNeeded: word(slot).load(ordering: .acquiring)))!
    }

    @inlinable @inline(__always)
    func data(ofFrame frame: UInt32) -> UnsafeMutableRawPointer {
        umem + (Int(frame) &<< Int(frameShift)) + Int(frames[Int(frame)].offset)
    }
}
