import Atomics

/// The lists one delivery completed, in completion order: what the
/// completion handler is given. Each list is the caller's again: reuse it,
/// send it again or return it.
///
/// A view of the delivering layer's buffer, valid during the handler call
/// only; the buffer is reused by the next delivery. Iterate it there (copy
/// the `PacketList` handles out to keep them: they stay valid). A view kept
/// past its handler call is harmless but empty: it yields no list and
/// `isValid` is false.
public struct SendCompletions: Sequence {
    let delivery: CompletionDelivery
    let epoch: UInt64
    let storedCount: Int

    init(delivery: CompletionDelivery, count: Int, epoch: UInt64) {
        self.delivery = delivery
        self.storedCount = count
        self.epoch = epoch
    }

    /// The port (or intermediate driver) that completed them: the one the
    /// lists were sent on.
    public var port: any PacketPort {
        guard let port = delivery.port else {
            invariantFailed("a send region driven without a port has no port to give", file: #file, line: #line)
        }
        return port
    }

    /// Whether the view is still the delivery being made (inside its handler call).
    public var isValid: Bool { delivery.epoch.load(ordering: .acquiring) == epoch }

    /// How many lists the delivery holds (0 once the handler call has returned).
    public var count: Int { isValid ? storedCount : 0 }

    /// `count`: the delivery's lists are all known up front.
    public var underestimatedCount: Int { count }

    /// An iterator over the delivery's lists, in completion order.
    public func makeIterator() -> Iterator { Iterator(view: self) }

    /// Yields the delivery's lists in completion order; nothing once the
    /// handler call has returned.
    public struct Iterator: IteratorProtocol {
        let view: SendCompletions
        var index = 0

        init(view: SendCompletions) { self.view = view }

        /// The next completed list; nil at the end or once the view is stale.
        public mutating func next() -> PacketList? {
            guard index < view.storedCount, view.isValid else { return nil }
            let list = view.delivery.list(at: index)
            index += 1
            return list
        }
    }
}

/// Where a layer collects the lists it completes until it hands them to
/// the completion handler as one `SendCompletions` batch: a port's send
/// region has one, and so has every intermediate layer.
///
/// Entries are written and delivered by the layer's send-side owner only;
/// `epoch` is read by anyone holding a view.
final class CompletionDelivery: @unchecked Sendable {
    // @unchecked: entries and count belong to the send side's owner; the
    // epoch is atomic.
    /// The UMEM list tables the entries' lists come from (index in an entry).
    let tables: [ListTable]
    /// Completed lists in delivery order: generation << 32 | table << 28 | slot.
    let entries: UnsafeMutablePointer<UInt64>
    let capacity: Int
    @exclusivity(unchecked) var count = 0
    private let epochStorage: UnsafeMutablePointer<UInt64.AtomicRepresentation>
    /// Who completes them, as the handler sees it. Set once, right after the
    /// port or layer is made; it owns this object.
    @exclusivity(unchecked) unowned(unsafe) var port: (any PacketPort)?

    static let tableShift: UInt64 = 28
    static let slotMask: UInt64 = (1 << 28) - 1

    init(tables: [ListTable], capacity: Int) {
        self.tables = tables
        self.capacity = capacity
        entries = .allocate(capacity: max(capacity, 1))
        epochStorage = .allocate(capacity: 8)
        epochStorage.initialize(repeating: .init(0), count: 8)
    }

    deinit {
        entries.deallocate()
        epochStorage.deallocate()
    }

    var epoch: UnsafeAtomic<UInt64> { UnsafeAtomic(at: epochStorage) }

    @inline(__always)
    func append(table: Int, slot: UInt32, generation: UInt32) {
        invariant(count < capacity, "more lists completed than the layer has")
        entries[count] = UInt64(generation) << 32 | UInt64(table) << Self.tableShift | UInt64(slot)
        count += 1
    }

    @inline(__always)
    func entry(at index: Int) -> (table: Int, slot: UInt32, generation: UInt32) {
        let word = entries[index]
        return (Int(truncatingIfNeeded: (word >> Self.tableShift) & 0xF), UInt32(truncatingIfNeeded: word & Self.slotMask),
                UInt32(truncatingIfNeeded: word >> 32))
    }

    @inline(__always)
    func list(at index: Int) -> PacketList {
        let (table, slot, generation) = entry(at: index)
        return PacketList(table: tables[table], slot: slot, generation: generation)
    }

    /// Hands what was collected to `handler` as one batch, then invalidates
    /// the view and empties the buffer. By the owner only.
    @inline(__always)
    func deliver(to handler: @Sendable (SendCompletions) -> Void) {
        let epochNow = epoch.load(ordering: .relaxed)
        let batch = SendCompletions(delivery: self, count: count, epoch: epochNow)
        HandlerContext.run { handler(batch) }
        // The handler cannot have run a pass of the owner's side (this
        // thread owns it), so nothing was added meanwhile.
        count = 0
        epoch.store(epochNow &+ 1, ordering: .releasing)
    }
}
