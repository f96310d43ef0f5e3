/// The lists one delivery completed, in completion order: what the
/// completion handler is given. Each list is the caller's again: reuse it,
/// send it again or return it.
///
/// A view of the engine's delivery buffer, valid during the handler call
/// only; the buffer is reused by the next delivery. Iterate it there (copy
/// the `PacketList` handles out to keep them: they stay valid). A view kept
/// past its handler call is harmless but empty: it yields no list and
/// `isValid` is false.
public struct SendCompletions: Sequence {
    let completingPort: Port?
    let context: SendContext
    let epoch: UInt64
    let storedCount: Int

    init(port: Port?, context: SendContext, count: Int, epoch: UInt64) {
        completingPort = port
        self.context = context
        self.storedCount = count
        self.epoch = epoch
    }

    /// The port that completed them.
    public var port: Port {
        guard let completingPort else { invariantFailed("a send region driven without a port has no port to give", file: #file, line: #line) }
        return completingPort
    }

    /// Whether the view is still the delivery being made (inside its handler call).
    public var isValid: Bool { context.deliveryEpoch.load(ordering: .acquiring) == epoch }

    /// How many lists the delivery holds (0 once the handler call has returned).
    public var count: Int { isValid ? storedCount : 0 }

    public var underestimatedCount: Int { count }

    public func makeIterator() -> Iterator { Iterator(view: self) }

    public struct Iterator: IteratorProtocol {
        let view: SendCompletions
        var index = 0

        init(view: SendCompletions) { self.view = view }

        public mutating func next() -> PacketList? {
            guard index < view.storedCount, view.isValid else { return nil }
            let (slot, generation) = view.context.completed(at: index)
            index += 1
            return PacketList(table: view.context.listTable, slot: slot, generation: generation)
        }
    }
}
