import AFXDPRings

/// The start slots every ring test runs from: the bottom of the index space
/// and points just below `UInt32.max`, so that the free-running indices wrap
/// during the test.
let ringStartIndices: [UInt32] = [0, 1, UInt32.max - 70, UInt32.max - 1, UInt32.max]
let ringCapacities: [UInt32] = [8, 16, 64]

/// The shared index after `count` steps from `start`, computed in 64 bits and
/// then truncated: independent of the `&+` arithmetic under test.
func ringIndex(_ start: UInt32, plus count: Int) -> UInt32 {
    UInt32(truncatingIfNeeded: UInt64(start) + UInt64(count))
}

/// The entry in slot `index % size` of a heap ring, read straight from its
/// memory rather than through `HeapRing`'s subscript.
func rawEntry<Entry>(_ ring: HeapRing<Entry>, at index: UInt32, as: Entry.Type = Entry.self) -> Entry {
    ring.memory.entries.assumingMemoryBound(to: Entry.self)[Int(index % ring.memory.size)]
}

/// The value written for the `n`th entry of a test stream: distinct per
/// entry and never zero, so that an unwritten (zeroed) slot cannot pass.
func streamValue(_ n: Int) -> UInt64 { 0xA5A5_0000_0000_0000 | UInt64(n) }
