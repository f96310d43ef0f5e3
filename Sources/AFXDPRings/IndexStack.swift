/// A fixed-capacity LIFO of 32-bit indices (free frames, free list slots),
/// allocated once. Single owner; traps on overflow, which would mean an index
/// was freed twice.
public struct IndexStack {
    @usableFromInline let storage: UnsafeMutablePointer<UInt32>
    public let capacity: Int
    @usableFromInline var top: Int

    public init(capacity: Int) {
        precondition(capacity >= 0)
        storage = .allocate(capacity: max(capacity, 1))
        self.capacity = capacity
        top = 0
    }

    /// Frees the storage. The stack must not be used afterwards.
    public func deallocate() { storage.deallocate() }

    @inlinable public var count: Int { top }
    @inlinable public var isEmpty: Bool { top == 0 }
    @inlinable public var isFull: Bool { top == capacity }
    @inlinable public var freeCapacity: Int { capacity - top }

    @inlinable
    public mutating func push(_ index: UInt32) {
        // fatalError, not precondition: the message must survive -O.
        if top >= capacity { fatalError("IndexStack overflow: an index was given back twice (swift-afxdp internal invariant)") }
        storage[top] = index
        top += 1
    }

    @inlinable
    public mutating func pop() -> UInt32? {
        guard top > 0 else { return nil }
        top -= 1
        return storage[top]
    }

    /// Whether `index` is currently held; O(n), for self-checks and tests.
    public func contains(_ index: UInt32) -> Bool {
        for i in 0..<top where storage[i] == index { return true }
        return false
    }
}
