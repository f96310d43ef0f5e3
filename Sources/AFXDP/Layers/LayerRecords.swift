import AFXDPSystem
import Atomics

/// A layer's own per-list state: one record per list slot of every UMEM the
/// layer sees, in a table of its own. This is packet stacking's "context
/// area of its own": each layer of a stack has its own table, so no layer
/// overwrites what another keeps about the same list while the list passes
/// down and up without a fresh descriptor.
///
/// A list is named inside a layer by its `LayerListID` (UMEM table index in
/// the top bits, slot below), so that lists of several UMEMs can share the
/// layer's queues.
struct LayerListRecord {
    /// Links: the layer's mailboxes and queues each have their own, so a list
    /// can sit in one while it is being linked into another.
    var acceptedNext: UInt32
    var completedNext: UInt32
    var receivedNext: UInt32
    var queueNext: UInt32
    var role: LayerListRole
    /// The lower port completed it (set by the send side's owner).
    var done: Bool
    /// The binding (lower layer) the list went down to or came up from.
    var binding: UInt8
    /// The priority the caller gave it, restored when it completes upward.
    var callerPriority: UInt8
    /// The priority it went down with: the queue it completes in order in.
    var queuedPriority: UInt8
    /// Frames of the list (for a list held above: counted back on return).
    var frames: UInt32
    /// The list this one stands for, or stands in for (the copy path):
    /// generation << 32 | id.
    var partner: UInt64
    /// When its lower completion reached the layer (monotonic ns).
    var lowerCompletedAt: UInt64
}

/// What a list is to a layer while the layer has it.
enum LayerListRole: UInt8 {
    case none
    /// An upper send passed down as it is; completes upward.
    case upperSend
    /// An upper send waiting for (or sent through) a fresh list of the
    /// lower port's UMEM: `partner` is the fresh one once made.
    case upperSendCopied
    /// A fresh list of a lower UMEM carrying a copy: `partner` is what it stands in for.
    case freshCopy
    /// A received list the layer passed on down by itself (forwarding):
    /// goes home when the lower completes it.
    case forwarded
    /// A received list indicated upward, held by the caller above.
    case heldAbove
}

typealias LayerListID = UInt32

extension LayerListID {
    static let tableShift: UInt32 = 28
    static let slotMask: UInt32 = (1 << 28) - 1

    init(table: Int, slot: UInt32) { self = UInt32(table) << Self.tableShift | slot }
    var table: Int { Int(self >> Self.tableShift) }
    var slot: UInt32 { self & Self.slotMask }
}

/// The UMEM list tables a layer has seen, each with the layer's records for
/// its lists. A table is registered once (at open, for the UMEMs below, or
/// the first time a list of it comes by) and stays for the layer's life.
/// Lookups are lock-free: entries are published before the count.
final class LayerTables: @unchecked Sendable {
    // @unchecked: entries are written once under `lock`, before `published`
    // makes them visible; afterwards they are only read.
    static let capacity = 15
    private let identities: UnsafeMutablePointer<UInt>
    /// The tables, unretained (kept alive by `retained`), for lock-free reads.
    private let unretained: UnsafeMutablePointer<Unmanaged<ListTable>?>
    private let recordTables: UnsafeMutablePointer<UnsafeMutablePointer<LayerListRecord>?>
    private let published = ManagedAtomic<Int>(0)
    private let lock = PThreadLock()
    /// The tables themselves, kept alive by the layer (under `lock`).
    private var retained: [ListTable] = []
    private var slotCounts: [Int] = []

    init() {
        identities = .allocate(capacity: Self.capacity)
        identities.initialize(repeating: 0, count: Self.capacity)
        recordTables = .allocate(capacity: Self.capacity)
        recordTables.initialize(repeating: nil, count: Self.capacity)
        unretained = .allocate(capacity: Self.capacity)
        unretained.initialize(repeating: nil, count: Self.capacity)
    }

    deinit {
        for index in 0..<published.load(ordering: .acquiring) { recordTables[index]?.deallocate() }
        identities.deallocate()
        recordTables.deallocate()
        unretained.deallocate()
    }

    @inline(__always)
    static func identity(_ table: ListTable) -> UInt { UInt(bitPattern: Unmanaged.passUnretained(table).toOpaque()) }

    /// The table's index, registering it if it is new.
    @inline(__always)
    func index(of table: ListTable) throws(AFXDPError) -> Int {
        if let known = knownIndex(of: table) { return known }
        return try register(table)
    }

    /// The table's index if it is registered.
    @inline(__always)
    func knownIndex(of table: ListTable) -> Int? {
        let identity = Self.identity(table)
        let count = published.load(ordering: .acquiring)
        for index in 0..<count where identities[index] == identity { return index }
        return nil
    }

    private func register(_ table: ListTable) throws(AFXDPError) -> Int {
        try lock.withLock { () throws(AFXDPError) -> Int in
            if let known = knownIndex(of: table) { return known }
            let index = published.load(ordering: .relaxed)
            guard index < Self.capacity else {
                throw .invalidConfiguration("a layer can see lists of at most \(Self.capacity) UMEMs")
            }
            guard table.listCount <= Int(LayerListID.slotMask) else {
                throw .invalidConfiguration("a UMEM of \(table.listCount) frames is too large for an intermediate layer")
            }
            let records = UnsafeMutablePointer<LayerListRecord>.allocate(capacity: max(table.listCount, 1))
            records.initialize(
                repeating: LayerListRecord(
                    acceptedNext: noSlot, completedNext: noSlot, receivedNext: noSlot, queueNext: noSlot, role: .none,
                    done: false, binding: 0, callerPriority: 0, queuedPriority: 0, frames: 0, partner: 0, lowerCompletedAt: 0),
                count: max(table.listCount, 1))
            recordTables[index] = records
            unretained[index] = Unmanaged.passUnretained(table)
            identities[index] = Self.identity(table)
            retained.append(table)
            slotCounts.append(table.listCount)
            published.store(index + 1, ordering: .releasing)
            return index
        }
    }

    @inline(__always)
    func record(_ id: LayerListID) -> UnsafeMutablePointer<LayerListRecord> {
        recordTables[id.table].unsafelyUnwrapped + Int(id.slot)
    }

    /// The table at `index` (registered). Lock-free.
    @inline(__always)
    func table(at index: Int) -> ListTable { unretained[index].unsafelyUnwrapped.takeUnretainedValue() }

    /// How many tables are registered.
    var count: Int { published.load(ordering: .acquiring) }

    /// The registered tables, in index order.
    var tables: [ListTable] { lock.withLock { retained } }

    /// Slots across every registered table.
    var totalSlots: Int { lock.withLock { slotCounts.reduce(0, +) } }
}

/// A lock-free stack of layer list IDs that any thread may push to and that
/// the owner of the layer's side empties all at once, linked through one of
/// the record's link fields (each mailbox its own).
struct LayerMailbox: @unchecked Sendable {
    // @unchecked: the head is atomic; links are written before the publishing
    // CAS and read after the acquiring exchange.
    enum Link { case accepted, completed, received }
    private let head: UnsafeAtomic<UInt32>
    private let link: Link

    init(at storage: UnsafeMutablePointer<UInt32.AtomicRepresentation>, link: Link) {
        storage.initialize(to: .init(noSlot))
        head = UnsafeAtomic(at: storage)
        self.link = link
    }

    @inline(__always)
    private func linkField(_ record: UnsafeMutablePointer<LayerListRecord>) -> UnsafeMutablePointer<UInt32> {
        switch link {
        case .accepted: return UnsafeMutableRawPointer(record).assumingMemoryBound(to: UInt32.self)
        case .completed: return UnsafeMutableRawPointer(record).advanced(by: 4).assumingMemoryBound(to: UInt32.self)
        case .received: return UnsafeMutableRawPointer(record).advanced(by: 8).assumingMemoryBound(to: UInt32.self)
        }
    }

    @inline(__always)
    func push(_ id: LayerListID, records: LayerTables) {
        let field = linkField(records.record(id))
        var expected = head.load(ordering: .relaxed)
        while true {
            field.pointee = expected
            // Sequentially consistent: pairs with RegionOwnership.release.
            let (done, current) = head.weakCompareExchange(expected: expected, desired: id, ordering: .sequentiallyConsistent)
            if done { return }
            expected = current
        }
    }

    /// Every ID pushed so far, oldest first, through `body`.
    @inline(__always)
    func drain(records: LayerTables, _ body: (LayerListID) -> Void) {
        var id = head.exchange(noSlot, ordering: .acquiring)
        guard id != noSlot else { return }
        // Reverse the LIFO chain into push order.
        var reversed = noSlot
        while id != noSlot {
            let field = linkField(records.record(id))
            let next = field.pointee
            field.pointee = reversed
            reversed = id
            id = next
        }
        while reversed != noSlot {
            let field = linkField(records.record(reversed))
            let next = field.pointee
            field.pointee = noSlot
            body(reversed)
            reversed = next
        }
    }

    @inline(__always)
    var isEmpty: Bool { head.load(ordering: .sequentiallyConsistent) == noSlot }
}
