import Atomics

/// Counters written by one region's owner and read by anyone: relaxed
/// atomics, so an update is a plain load and store, not a locked RMW. The
/// block fills whole cache lines of its own.
class CounterBlock: @unchecked Sendable {
    // @unchecked: `storage` holds only atomics.
    private let storage: UnsafeMutablePointer<Int.AtomicRepresentation>

    init(count: Int) {
        let lines = (count + 7) / 8 + 1
        let raw = UnsafeMutableRawPointer.allocate(byteCount: lines * 64, alignment: 64)
        storage = raw.bindMemory(to: Int.AtomicRepresentation.self, capacity: lines * 8)
        storage.initialize(repeating: .init(0), count: lines * 8)
    }

    deinit { UnsafeMutableRawPointer(storage).deallocate() }

    @inline(__always) final func add(_ index: Int, _ amount: Int) {
        let counter = UnsafeAtomic<Int>(at: storage + index)
        counter.store(counter.load(ordering: .relaxed) &+ amount, ordering: .relaxed)
    }

    @inline(__always) final func read(_ index: Int) -> Int {
        UnsafeAtomic<Int>(at: storage + index).load(ordering: .relaxed)
    }
}
