import Atomics

/// One AF_XDP descriptor ring entry for RX and TX: a frame address in the
/// UMEM, a length and option bits. Same layout as the kernel's `struct xdp_desc`
/// (the C shim asserts its size).
@frozen
public struct XDPDescriptor: Equatable, Sendable {
    public var address: UInt64
    public var length: UInt32
    public var options: UInt32

    /// The option bit (XDP_PKT_CONTD) saying the packet goes on in the next
    /// descriptor: multi-buffer AF_XDP, sockets bound with XDP_USE_SG.
    public static let continues: UInt32 = 1 << 0

    @inlinable
    public init(address: UInt64, length: UInt32, options: UInt32 = 0) {
        self.address = address
        self.length = length
        self.options = options
    }
}

/// Where one ring lives: the two shared indices, the flags word and the entry
/// array. For a real socket all four point into memory the kernel mapped; a
/// test can point them into heap memory and play the kernel's side itself.
///
/// All pointers reference memory shared with the other side of the ring.
/// Only the side that owns an index writes it: the producer writes
/// `producer`, the consumer writes `consumer`.
public struct RingMemory: @unchecked Sendable {
    // @unchecked: raw pointers into shared ring memory; each index has exactly one writer.
    public let producer: UnsafeMutablePointer<UInt32>
    public let consumer: UnsafeMutablePointer<UInt32>
    public let flags: UnsafeMutablePointer<UInt32>?
    public let entries: UnsafeMutableRawPointer
    /// Number of entries; a power of two.
    public let size: UInt32

    public init(
        producer: UnsafeMutablePointer<UInt32>,
        consumer: UnsafeMutablePointer<UInt32>,
        flags: UnsafeMutablePointer<UInt32>?,
        entries: UnsafeMutableRawPointer,
        size: UInt32
    ) {
        precondition(size > 0 && size & (size - 1) == 0, "ring size \(size) is not a power of two")
        self.producer = producer
        self.consumer = consumer
        self.flags = flags
        self.entries = entries
        self.size = size
    }
}

/// The kernel sets this bit in a ring's flags word when it wants a syscall
/// to make progress (`XDP_RING_NEED_WAKEUP`).
public let ringNeedsWakeupFlag: UInt32 = 1

/// Heap memory laid out like a kernel ring, for tests and benchmarks that
/// play the kernel's side. Deallocate with `deallocate()`.
public struct HeapRing<Entry>: @unchecked Sendable {
    // @unchecked: owns raw heap memory; the test decides who touches it.
    public let memory: RingMemory
    private let header: UnsafeMutablePointer<UInt32>

    /// Makes a ring of `size` entries whose indices both start at `startIndex`
    /// (to test wrap-around just below `UInt32.max`).
    public init(size: UInt32, startIndex: UInt32 = 0) {
        // producer, consumer, flags, each on its own cache line as the kernel lays them out.
        header = UnsafeMutablePointer<UInt32>.allocate(capacity: 48)
        header.initialize(repeating: 0, count: 48)
        header[0] = startIndex
        header[16] = startIndex
        let entries = UnsafeMutableRawPointer.allocate(
            byteCount: Int(size) * MemoryLayout<Entry>.stride, alignment: 64)
        entries.initializeMemory(as: UInt8.self, repeating: 0, count: Int(size) * MemoryLayout<Entry>.stride)
        memory = RingMemory(
            producer: header, consumer: header + 16, flags: header + 32,
            entries: entries, size: size)
    }

    public func deallocate() {
        memory.entries.deallocate()
        header.deallocate()
    }

    /// The other side's view, for the test playing the kernel.
    public var producerIndex: UInt32 {
        get { atomicView(memory.producer).load(ordering: .acquiring) }
        nonmutating set { atomicView(memory.producer).store(newValue, ordering: .releasing) }
    }
    public var consumerIndex: UInt32 {
        get { atomicView(memory.consumer).load(ordering: .acquiring) }
        nonmutating set { atomicView(memory.consumer).store(newValue, ordering: .releasing) }
    }
    public var flags: UInt32 {
        get { atomicView(memory.flags!).load(ordering: .acquiring) }
        nonmutating set { atomicView(memory.flags!).store(newValue, ordering: .releasing) }
    }
    public subscript(index: UInt32) -> Entry {
        get { memory.entries.assumingMemoryBound(to: Entry.self)[Int(index & (memory.size - 1))] }
        nonmutating set { memory.entries.assumingMemoryBound(to: Entry.self)[Int(index & (memory.size - 1))] = newValue }
    }
}

/// The shared ring words as atomics. The kernel's indices are plain `__u32`s
/// which it accesses with atomic loads and stores; UInt32's atomic
/// representation has the same layout.
@inlinable
func atomicView(_ word: UnsafeMutablePointer<UInt32>) -> UnsafeAtomic<UInt32> {
    UnsafeAtomic(at: UnsafeMutableRawPointer(word).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
}
