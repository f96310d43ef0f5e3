import AFXDPRings
import Atomics

/// A NET_BUFFER_LIST: a handle to a list of packets, each one UMEM frame.
///
/// A list is the unit of send and of completion: `XDPPort.send` takes one and
/// the completion handler gives it back with a `status`. Received frames are
/// indicated as lists too, pointing into the UMEM without a copy.
///
/// **Who may use a handle.** A list is the caller's from allocation,
/// indication or completion until it is sent or returned. While it is the
/// caller's, every accessor works. Otherwise every accessor throws instead of
/// touching the list: `.listNotOwnedByCaller` while the engine has it (queued
/// or in flight: wait for its completion), `.listAlreadyReturned` once it was
/// returned (the handle is stale for good, even after the slot is reused by
/// another list). The same holds for its `Packet`s.
///
/// **Lifetime.** A handle keeps the memory it points into alive (the pool's
/// tables and the UMEM mapping), even past its port: a list the caller still
/// holds after `close()` stays readable until it is returned. Handles are
/// plain values: copy them, keep them in sets, pass them to other threads.
/// One thread at a time should use a given list (as with any value the
/// caller owns): a list returned on one thread while another writes its
/// packets is the caller's race.
public struct PacketList: Hashable, Sendable, CustomStringConvertible {
    /// Strong: a handle keeps the UMEM's list table (and through it the
    /// UMEM's memory) alive.
    @usableFromInline let table: ListTable
    @usableFromInline let slot: UInt32
    @usableFromInline let generation: UInt32

    @inlinable
    init(table: ListTable, slot: UInt32, generation: UInt32) {
        self.table = table
        self.slot = slot
        self.generation = generation
    }

    public static func == (lhs: PacketList, rhs: PacketList) -> Bool {
        lhs.table === rhs.table && lhs.slot == rhs.slot && lhs.generation == rhs.generation
    }

    /// Hashes the handle (its table, slot and generation), as `==` compares it.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(ObjectIdentifier(table))
        hasher.combine(slot)
        hasher.combine(generation)
    }

    /// The handle's slot and generation, and who holds the list now.
    public var description: String {
        switch table.ownership(of: self) {
        case .caller: return "PacketList(slot: \(slot), generation: \(generation), packets: \(table.lists[Int(slot)].count))"
        case .engine: return "PacketList(slot: \(slot), generation: \(generation), with the engine)"
        case .stale: return "PacketList(slot: \(slot), generation: \(generation), returned)"
        }
    }

    /// Whether the list is the caller's to use right now (not sent, not returned).
    public var isOwnedByCaller: Bool { table.ownership(of: self) == .caller }

    /// The list's record, once the handle is checked to be the caller's.
    @inlinable @inline(__always)
    func ownedRecord() throws(AFXDPError) -> UnsafeMutablePointer<ListRecord> {
        try table.checkOwnedByCaller(slot: slot, word: ListTable.packed(generation, .caller))
        return table.lists + Int(slot)
    }

    /// Number of packets.
    @inlinable public var count: Int {
        get throws(AFXDPError) { Int(try ownedRecord().pointee.count) }
    }

    /// How the send ended; `.pending` until the list is completed.
    @inlinable public var status: SendStatus {
        get throws(AFXDPError) { try ownedRecord().pointee.status }
    }

    /// Once a send has completed: how many of the list's packets the kernel
    /// took from the TX ring, counted from the first. All of them for
    /// `.success`; for `.paused` or `.closing`, packets from this index on
    /// were never taken (resend those, not the whole list). A packet the
    /// kernel took is counted even if its completion had not come back when
    /// the port closed: it left the socket, and resending it would duplicate it.
    @inlinable public var sentPacketCount: Int {
        get throws(AFXDPError) { Int(try ownedRecord().pointee.placedPackets) }
    }

    /// 802.1p priority, 0 (lowest) to 7 (highest). Lists of higher priority
    /// may be sent, and completed, before lists of lower priority sent earlier;
    /// within one priority the order is always the caller's.
    @inlinable public var priority: Int {
        get throws(AFXDPError) { Int(try ownedRecord().pointee.priority) }
    }

    /// Sets the 802.1p priority (0...7) the list is sent with.
    @inlinable
    public func setPriority(_ priority: Int) throws(AFXDPError) {
        let record = try ownedRecord()
        guard (0...7).contains(priority) else { throw .priorityOutOfRange(priority) }
        record.pointee.priority = UInt8(truncatingIfNeeded: priority)
    }

    /// Bytes the caller (or a layer stacked above) may use for its own per-list
    /// state while it holds the list, instead of allocating a descriptor
    /// (`ListTable.contextAreaSize` of them). Valid while the list is the
    /// caller's; the engine never reads or writes them.
    @inlinable public var contextArea: UnsafeMutableRawBufferPointer {
        get throws(AFXDPError) {
            _ = try ownedRecord()
            return UnsafeMutableRawBufferPointer(
                start: table.contextAreas + Int(slot) * ListTable.contextAreaSize, count: ListTable.contextAreaSize)
        }
    }

    /// The packets, in order: `try list.packets.forEach { packet in ... }`.
    @inlinable public var packets: Packets {
        get throws(AFXDPError) { Packets(list: self, count: Int(try ownedRecord().pointee.count)) }
    }

    /// Total bytes of all packets.
    public var byteCount: Int {
        get throws(AFXDPError) {
            _ = try ownedRecord()
            var total = 0
            table.forEachSlot(of: slot) { _, packets in for packet in packets { total += Int(packet.length) } }
            return total
        }
    }

    /// The packets of a list. Made from a handle that was the caller's.
    ///
    /// A `Packet` is lent to a closure and cannot leave it (it is
    /// `~Copyable`, and borrowed): no packet can outlive the walk that made
    /// it, so none can point into memory that is gone. Each one still checks,
    /// when used, that its list is the caller's (it may have been returned
    /// inside the closure).
    public struct Packets {
        @usableFromInline let list: PacketList
        /// How many packets the list had when `packets` was read.
        public let count: Int

        @inlinable init(list: PacketList, count: Int) {
            self.list = list
            self.count = count
        }

        /// Calls `body` with each packet, in order. Stops early, without an
        /// error, if the list stops being the caller's meanwhile.
        @inlinable @inline(__always)
        public func forEach<E: Error>(_ body: (borrowing Packet) throws(E) -> Void) throws(E) {
            // The table's memory by value: the list (held by `self`) keeps it
            // alive for the walk, and a copy of the layout costs no retain.
            let table = list.table.layout
            let umem = list.table.umem
            let expected = TableLayout.packed(list.generation, .caller)
            let word = table.word(list.slot)
            let record = table.lists + Int(list.slot)
            let frameShift = table.frameShift
            var slot = list.slot
            while slot != noSlot, word.load(ordering: .relaxed) == expected {
                var entry = table.chunk(slot)
                let end = entry + Int(table.lists[Int(slot)].chunkCount)
                slot = table.lists[Int(slot)].chunkNext
                while entry != end {
                    try body(Packet(word: word, expected: expected, entry: entry, record: record, umem: umem, frameShift: frameShift))
                    entry += 1
                }
            }
        }

        /// Calls `body` with the packet at `index` (0 is the first) and returns
        /// what it returns; nil if `index` is outside the list, or the list
        /// stopped being the caller's. Walks the list's slots: O(index / 64).
        @inlinable
        public func withPacket<R, E: Error>(at index: Int, _ body: (borrowing Packet) throws(E) -> R) throws(E) -> R? {
            guard index >= 0, index < count else { return nil }
            // As in `forEach`: the layout by value, kept alive by the list.
            let table = list.table.layout
            let umem = list.table.umem
            let expected = TableLayout.packed(list.generation, .caller)
            let word = table.word(list.slot)
            var slot = list.slot
            var skip = index
            while slot != noSlot, word.load(ordering: .relaxed) == expected {
                let inSlot = Int(table.lists[Int(slot)].chunkCount)
                if skip < inSlot {
                    return try body(Packet(
                        word: word, expected: expected, entry: table.chunk(slot) + skip, record: table.lists + Int(list.slot),
                        umem: umem, frameShift: table.frameShift))
                }
                skip -= inSlot
                slot = table.lists[Int(slot)].chunkNext
            }
            return nil
        }

        /// The packets' lengths, in order.
        public var lengths: [Int] {
            var lengths: [Int] = []
            lengths.reserveCapacity(count)
            forEach { packet in lengths.append(Int(truncatingIfNeeded: packet.entry.pointee.length)) }
            return lengths
        }
    }
}

/// A NET_BUFFER: one packet, one UMEM frame. Its bytes are the UMEM itself.
///
/// Lent to the closure of `PacketList.Packets.forEach`, and usable there
/// only: it cannot be copied or kept. Every accessor checks that the list is
/// still the caller's and throws `.listAlreadyReturned` or
/// `.listNotOwnedByCaller` otherwise. The pointers it gives (`bytes`,
/// `buffer`) point into the UMEM, which stays mapped while any handle of the
/// pool lives; do not write through them once the list is sent or returned.
public struct Packet: ~Copyable {
    // Raw pointers only, no reference to the pool: a packet lives inside a
    // walk over its list, whose handle (strong) keeps the pool and the UMEM
    // alive for longer; touching the pool object here would cost a retain
    // and a release per packet.
    /// The list's state word, and its value while the caller owns the list.
    @usableFromInline let word: UnsafeAtomic<UInt64>
    @usableFromInline let expected: UInt64
    /// The packet's descriptor in its list's slot.
    @usableFromInline let entry: UnsafeMutablePointer<XDPDescriptor>
    /// The list's record (its first slot).
    @usableFromInline let record: UnsafeMutablePointer<ListRecord>
    @usableFromInline let umem: UnsafeMutableRawPointer
    /// log2 of the frame size.
    @usableFromInline let frameShift: UInt32

    @inlinable @inline(__always)
    init(
        word: UnsafeAtomic<UInt64>, expected: UInt64, entry: UnsafeMutablePointer<XDPDescriptor>,
        record: UnsafeMutablePointer<ListRecord>, umem: UnsafeMutableRawPointer, frameShift: UInt32
    ) {
        self.word = word
        self.expected = expected
        self.entry = entry
        self.record = record
        self.umem = umem
        self.frameShift = frameShift
    }

    @inlinable @inline(__always)
    func check() throws(AFXDPError) {
        let current = word.load(ordering: .relaxed)
        if current != expected { throw ListTable.ownershipError(current: current, expected: expected) }
    }

    @inlinable var offsetMask: UInt64 { (1 &<< UInt64(frameShift)) &- 1 }

    /// The frame's index in the UMEM.
    @inlinable public var frame: UInt32 {
        get throws(AFXDPError) {
            try check()
            return UInt32(truncatingIfNeeded: entry.pointee.address &>> UInt64(frameShift))
        }
    }

    /// Length of the packet in bytes.
    @inlinable public var length: Int {
        get throws(AFXDPError) {
            try check()
            return Int(truncatingIfNeeded: entry.pointee.length)
        }
    }

    /// The frame's byte offset in the UMEM (the address the rings carry, minus the data offset).
    @inlinable public var frameAddress: UInt64 {
        get throws(AFXDPError) {
            try check()
            return entry.pointee.address & ~offsetMask
        }
    }

    /// The packet's bytes (`length` of them).
    @inlinable public var bytes: UnsafeMutableRawBufferPointer {
        get throws(AFXDPError) {
            try check()
            return UnsafeMutableRawBufferPointer(start: data, count: Int(truncatingIfNeeded: entry.pointee.length))
        }
    }

    /// The whole room a packet may use in this frame, for writing before `setLength`.
    @inlinable public var buffer: UnsafeMutableRawBufferPointer {
        get throws(AFXDPError) {
            try check()
            return UnsafeMutableRawBufferPointer(start: data, count: room)
        }
    }

    /// The most bytes this frame can hold from the packet's start.
    @inlinable public var capacity: Int {
        get throws(AFXDPError) {
            try check()
            return room
        }
    }

    @inlinable var room: Int {
        (1 &<< Int(frameShift)) &- Int(truncatingIfNeeded: entry.pointee.address & offsetMask)
    }

    /// Where the packet starts. (Addresses are below the UMEM's size, so the
    /// conversions here and above cannot truncate; they skip the check.)
    @inlinable var data: UnsafeMutableRawPointer { umem + Int(truncatingIfNeeded: entry.pointee.address) }

    /// Sets the packet's length; it must be 1...capacity.
    @inlinable @inline(__always)
    public func setLength(_ length: Int) throws(AFXDPError) {
        try check()
        guard length > 0 else { throw .invalidFrameLength(length) }
        let room = self.room
        guard length <= room else { throw .frameTooLarge(length: length, maximum: room) }
        // A packet of length 0 is counted in `unsetLengths`: it cannot go below 0.
        if entry.pointee.length == 0 { record.pointee.unsetLengths &-= 1 }
        entry.pointee.length = UInt32(truncatingIfNeeded: length)
        if entry.pointee.options != 0 { setContinues(false) }
    }

    /// Multi-buffer (`PortConfiguration.multiBuffer`): whether the packet
    /// goes on in the list's next entry. A packet longer than a frame is a
    /// run of entries, every one but the last marked so; received lists
    /// come marked by the kernel, and a run never spans two lists.
    @inlinable public var continues: Bool {
        get throws(AFXDPError) {
            try check()
            return entry.pointee.options & XDPDescriptor.continues != 0
        }
    }

    /// Sets this entry's length and marks whether the packet goes on in the
    /// list's next entry (multi-buffer): the packet's bytes are its entries'
    /// bytes, in order. `send` refuses a list whose last entry continues, or
    /// one with a marked entry on a port without `multiBuffer`.
    @inlinable
    public func setLength(_ length: Int, continues: Bool) throws(AFXDPError) {
        try setLength(length)
        if continues { setContinues(true) }
    }

    @inlinable @inline(__always)
    func setContinues(_ continues: Bool) {
        let was = entry.pointee.options & XDPDescriptor.continues != 0
        guard was != continues else { return }
        if continues {
            entry.pointee.options |= XDPDescriptor.continues
            record.pointee.continuations &+= 1
        } else {
            entry.pointee.options &= ~XDPDescriptor.continues
            record.pointee.continuations &-= 1
        }
    }
}
