import Atomics

// The ordering protocol is the kernel's (net/xdp/xsk_queue.h):
//
//   producer                         consumer
//   RESERVE entries                  PEEK: load producer  (acquire)   /* C, matches B */
//   WRITE entries                    READ entries
//   SUBMIT: store producer (release) RELEASE: store consumer (release) /* D, matches A */
//   /* B, matches C */
//   RESERVE re-reads consumer (acquire) only when its cached view is not
//   enough /* A, matches D */
//
// Indices are free-running UInt32 counters: they wrap past UInt32.max, and
// all arithmetic on them is `&+` / `&-`, masked by `size - 1` to find a slot.

/// The producer side of a ring: the engine writes entries, the other side
/// (kernel) consumes them. Used for the fill ring (UInt64 frame addresses)
/// and the TX ring (`XDPDescriptor`).
///
/// Single owner: only one thread at a time may call its mutating methods.
public struct ProducerRing<Entry> {
    @usableFromInline let producer: UnsafeAtomic<UInt32>
    @usableFromInline let consumer: UnsafeAtomic<UInt32>
    @usableFromInline let flags: UnsafeAtomic<UInt32>?
    @usableFromInline let entries: UnsafeMutablePointer<Entry>
    @usableFromInline let mask: UInt32
    public let size: UInt32
    /// Next index to reserve (everything before it is reserved by us).
    @usableFromInline var cachedProducer: UInt32
    /// Our last view of the consumer index, plus `size`, so that
    /// `cachedConsumerPlusSize &- cachedProducer` is the free count.
    @usableFromInline var cachedConsumerPlusSize: UInt32

    public init(_ memory: RingMemory) {
        producer = atomicView(memory.producer)
        consumer = atomicView(memory.consumer)
        flags = memory.flags.map { atomicView($0) }
        entries = memory.entries.bindMemory(to: Entry.self, capacity: Int(memory.size))
        mask = memory.size &- 1
        size = memory.size
        cachedProducer = producer.load(ordering: .relaxed)
        cachedConsumerPlusSize = consumer.load(ordering: .acquiring) &+ memory.size
    }

    /// Free slots, re-reading the consumer index only if fewer than `wanted`
    /// are known to be free.
    @inlinable
    public mutating func freeCount(wanted: UInt32) -> UInt32 {
        let known = cachedConsumerPlusSize &- cachedProducer
        if known >= wanted { return known }
        cachedConsumerPlusSize = consumer.load(ordering: .acquiring) &+ size  // A, matches D
        return cachedConsumerPlusSize &- cachedProducer
    }

    /// Reserves up to `count` slots; returns the first index and how many were
    /// reserved (possibly 0). Write each with `self[index] = ...`, then `submit`.
    @inlinable
    public mutating func reserve(upTo count: UInt32) -> (start: UInt32, count: UInt32) {
        let granted = min(count, freeCount(wanted: count))
        let start = cachedProducer
        cachedProducer = start &+ granted
        return (start, granted)
    }

    @inlinable
    public subscript(index: UInt32) -> Entry {
        get { entries[Int(index & mask)] }
        nonmutating set { entries[Int(index & mask)] = newValue }
    }

    /// The entries from `index` on, at most `count`, that lie in one piece
    /// before the ring's end wraps: hot loops walk them with a pointer, with
    /// no masking per entry. Call again from `index + run` for the rest.
    @inlinable @inline(__always)
    public func contiguousRun(from index: UInt32, upTo count: UInt32) -> (start: UnsafeMutablePointer<Entry>, count: UInt32) {
        let offset = index & mask
        return (entries + Int(offset), min(count, size &- offset))
    }

    /// Publishes everything reserved so far to the consumer.
    @inlinable
    public func submit() {
        producer.store(cachedProducer, ordering: .releasing)  // B, matches C
    }

    /// The other side's consumer index: everything before it was consumed.
    @inlinable
    public var consumerIndex: UInt32 { consumer.load(ordering: .acquiring) }

    /// Our producer index: everything before it was reserved by us.
    @inlinable
    public var producerIndex: UInt32 { cachedProducer }

    /// Entries submitted but not yet consumed by the other side.
    @inlinable
    public var outstanding: UInt32 {
        cachedProducer &- consumer.load(ordering: .acquiring)
    }

    /// Whether the other side asked for a syscall to make progress.
    @inlinable
    public var needsWakeup: Bool {
        guard let flags else { return true }
        return flags.load(ordering: .relaxed) & ringNeedsWakeupFlag != 0
    }
}

/// The consumer side of a ring: the other side (kernel) produces entries, the
/// engine reads them. Used for the completion ring (UInt64 frame addresses)
/// and the RX ring (`XDPDescriptor`).
///
/// Single owner: only one thread at a time may call its mutating methods.
public struct ConsumerRing<Entry> {
    @usableFromInline let producer: UnsafeAtomic<UInt32>
    @usableFromInline let consumer: UnsafeAtomic<UInt32>
    @usableFromInline let flags: UnsafeAtomic<UInt32>?
    @usableFromInline let entries: UnsafeMutablePointer<Entry>
    @usableFromInline let mask: UInt32
    public let size: UInt32
    /// Next index to peek.
    @usableFromInline var cachedConsumer: UInt32
    /// Our last view of the producer index.
    @usableFromInline var cachedProducer: UInt32

    public init(_ memory: RingMemory) {
        producer = atomicView(memory.producer)
        consumer = atomicView(memory.consumer)
        flags = memory.flags.map { atomicView($0) }
        entries = memory.entries.bindMemory(to: Entry.self, capacity: Int(memory.size))
        mask = memory.size &- 1
        size = memory.size
        cachedConsumer = consumer.load(ordering: .relaxed)
        cachedProducer = producer.load(ordering: .acquiring)
    }

    /// Takes up to `count` available entries; returns the first index and how
    /// many (possibly 0). Read them with `self[index]`, then `release`.
    @inlinable
    public mutating func peek(upTo count: UInt32) -> (start: UInt32, count: UInt32) {
        var available = cachedProducer &- cachedConsumer
        if available == 0 {
            cachedProducer = producer.load(ordering: .acquiring)  // C, matches B
            available = cachedProducer &- cachedConsumer
        }
        let taken = min(available, count)
        let start = cachedConsumer
        cachedConsumer = start &+ taken
        return (start, taken)
    }

    /// Gives back the last `count` peeked entries unread.
    @inlinable
    public mutating func cancel(_ count: UInt32) {
        cachedConsumer = cachedConsumer &- count
    }

    @inlinable
    public subscript(index: UInt32) -> Entry {
        entries[Int(index & mask)]
    }

    /// The entries from `index` on, at most `count`, that lie in one piece
    /// before the ring's end wraps (see `ProducerRing.contiguousRun`).
    @inlinable @inline(__always)
    public func contiguousRun(from index: UInt32, upTo count: UInt32) -> (start: UnsafePointer<Entry>, count: UInt32) {
        let offset = index & mask
        return (UnsafePointer(entries + Int(offset)), min(count, size &- offset))
    }

    /// Hands every peeked entry back to the producer.
    @inlinable
    public func release() {
        consumer.store(cachedConsumer, ordering: .releasing)  // D, matches A
    }

    /// Entries the producer has published that we have not peeked yet.
    @inlinable
    public mutating func availableCount() -> UInt32 {
        cachedProducer = producer.load(ordering: .acquiring)
        return cachedProducer &- cachedConsumer
    }
}
