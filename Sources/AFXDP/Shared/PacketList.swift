import AFXDPRings

/// A NET_BUFFER_LIST: a handle to a list of packets, each one UMEM frame.
///
/// A list is the unit of send and of completion: `Port.send` takes one and
/// the completion handler gives it back with a `status`. Received frames are
/// indicated as lists too, pointing into the UMEM without a copy.
///
/// A handle is valid from allocation (or indication) until it is returned
/// with `Port.returnList`; after that every use is detected (the handle's
/// generation no longer matches) and refused with `.listAlreadyReturned`.
/// While a list is queued or in flight the engine owns it, and its packets
/// must not be touched. Handles never outlive their `Port` object.
public struct PacketList: Hashable, Sendable, CustomStringConvertible {
    // unowned(unsafe): a handle is a plain value on hot paths; the port keeps the pool alive.
    @usableFromInline unowned(unsafe) let pool: PacketPool
    @usableFromInline let slot: UInt32
    @usableFromInline let generation: UInt32

    @inlinable
    init(pool: PacketPool, slot: UInt32, generation: UInt32) {
        self.pool = pool
        self.slot = slot
        self.generation = generation
    }

    public static func == (lhs: PacketList, rhs: PacketList) -> Bool {
        lhs.pool === rhs.pool && lhs.slot == rhs.slot && lhs.generation == rhs.generation
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(ObjectIdentifier(pool))
        hasher.combine(slot)
        hasher.combine(generation)
    }

    public var description: String { "PacketList(slot: \(slot), generation: \(generation), packets: \(count))" }

    @inlinable @inline(__always)
    var record: UnsafeMutablePointer<ListRecord> { pool.lists + Int(slot) }

    /// Number of packets.
    @inlinable public var count: Int { Int(record.pointee.count) }

    /// How the send ended; `.pending` until the list is completed.
    @inlinable public var status: SendStatus { record.pointee.status }

    /// Once a send has completed: how many of the list's packets the kernel
    /// took and gave back, counted from the first. All of them for
    /// `.success`; for `.paused` or `.closing`, packets from this index on
    /// were not sent (resend those, not the whole list).
    @inlinable public var sentPacketCount: Int { Int(record.pointee.placedPackets) }

    /// 802.1p priority, 0 (lowest) to 7 (highest). Lists of higher priority
    /// may be sent, and completed, before lists of lower priority sent earlier;
    /// within one priority the order is always the caller's.
    @inlinable public var priority: UInt8 {
        get { record.pointee.priority }
        nonmutating set {
            precondition(newValue < 8, "802.1p priority is 0...7, got \(newValue)")
            record.pointee.priority = newValue
        }
    }

    /// Set on a received list indicated while the port was low on receive
    /// frames: return it (or copy what you need and return it) promptly.
    @inlinable public var indicatedWithLowResources: Bool { record.pointee.lowResources }

    /// Bytes the caller (or a layer stacked above) may use for its own per-list
    /// state while it holds the list, instead of allocating a descriptor.
    @inlinable public var contextArea: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(
            start: pool.contextAreas + Int(slot) * PacketPool.contextAreaSize, count: PacketPool.contextAreaSize)
    }

    /// The packets, in order.
    @inlinable public var packets: Packets { Packets(pool: pool, list: slot, count: Int(record.pointee.count)) }

    /// Total bytes of all packets.
    public var byteCount: Int { packets.reduce(0) { $0 + $1.length } }

    /// The packets of a list, as a sequence (walks the list's slots).
    public struct Packets: Sequence {
        @usableFromInline unowned(unsafe) let pool: PacketPool
        @usableFromInline let list: UInt32
        public let count: Int
        @inlinable init(pool: PacketPool, list: UInt32, count: Int) {
            self.pool = pool
            self.list = list
            self.count = count
        }
        @inlinable public var underestimatedCount: Int { count }
        @inlinable public func makeIterator() -> Iterator { Iterator(pool: pool, list: list) }

        public struct Iterator: IteratorProtocol {
            @usableFromInline unowned(unsafe) let pool: PacketPool
            @usableFromInline let list: UInt32
            /// The next packet, while `remaining` packets are left in this slot.
            @usableFromInline var entry: UnsafeMutablePointer<XDPDescriptor>
            @usableFromInline var remaining: UInt32
            /// The slot after this one, or `noSlot`.
            @usableFromInline var nextSlot: UInt32
            @inlinable init(pool: PacketPool, list: UInt32) {
                self.pool = pool
                self.list = list
                entry = pool.chunk(list)
                remaining = 0
                nextSlot = list
            }
            @inlinable @inline(__always) public mutating func next() -> Packet? {
                if remaining == 0 {
                    guard nextSlot != noSlot else { return nil }
                    entry = pool.chunk(nextSlot)
                    remaining = pool.lists[Int(nextSlot)].chunkCount
                    nextSlot = pool.lists[Int(nextSlot)].chunkNext
                }
                remaining &-= 1
                let packet = Packet(pool: pool, entry: entry, list: list)
                entry += 1
                return packet
            }
        }
    }
}

/// A NET_BUFFER: one packet, one UMEM frame. Its bytes are the UMEM itself;
/// do not keep the pointers past the time the list is yours.
public struct Packet {
    @usableFromInline unowned(unsafe) let pool: PacketPool
    /// The packet's descriptor in its list's slot.
    @usableFromInline let entry: UnsafeMutablePointer<XDPDescriptor>
    /// The first slot of the packet's list.
    @usableFromInline let list: UInt32

    @inlinable init(pool: PacketPool, entry: UnsafeMutablePointer<XDPDescriptor>, list: UInt32) {
        self.pool = pool
        self.entry = entry
        self.list = list
    }

    /// The frame's index in the UMEM.
    @inlinable public var frame: UInt32 { UInt32(truncatingIfNeeded: entry.pointee.address &>> UInt64(pool.frameShift)) }

    /// Length of the packet in bytes.
    @inlinable public var length: Int { Int(truncatingIfNeeded: entry.pointee.length) }

    /// The frame's byte offset in the UMEM (the address the rings carry, minus the data offset).
    @inlinable public var frameAddress: UInt64 { entry.pointee.address & ~pool.offsetMask }

    /// The packet's bytes (`length` of them).
    @inlinable public var bytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: data, count: length)
    }

    /// The whole room a packet may use in this frame, for writing before `setLength`.
    @inlinable public var buffer: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: data, count: capacity)
    }

    /// The most bytes this frame can hold from the packet's start.
    @inlinable public var capacity: Int { pool.frameSize &- Int(truncatingIfNeeded: entry.pointee.address & pool.offsetMask) }

    /// Where the packet starts. (Addresses are below the UMEM's size, so the
    /// conversions here and above cannot truncate; they skip the check.)
    @inlinable var data: UnsafeMutableRawPointer { pool.umem + Int(truncatingIfNeeded: entry.pointee.address) }

    /// Sets the packet's length; it must be 1...capacity.
    @inlinable @inline(__always)
    public func setLength(_ length: Int) throws(AFXDPError) {
        guard length > 0 else { throw .emptyFrame }
        guard length <= capacity else { throw .frameTooLarge(length: length, maximum: capacity) }
        if entry.pointee.length == 0 { pool.lists[Int(list)].unsetLengths -= 1 }
        entry.pointee.length = UInt32(truncatingIfNeeded: length)
    }
}
