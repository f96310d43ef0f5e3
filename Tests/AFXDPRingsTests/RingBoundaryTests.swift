import AFXDPRings
import Testing

@Suite("Ring boundaries: full, cancel, wakeup flag")
struct RingBoundaryTests {
    @Test("A full ring grants nothing; after the consumer moves, RESERVE refreshes and grants again",
          arguments: ringStartIndices)
    func fullProducerRing(start: UInt32) {
        let heap = HeapRing<UInt64>(size: 8, startIndex: start)
        defer { heap.deallocate() }
        var ring = ProducerRing<UInt64>(heap.memory)

        let (first, granted) = ring.reserve(upTo: 8)
        #expect(first == start)
        #expect(granted == 8)
        for i in 0..<granted { ring[first &+ i] = streamValue(Int(i)) }
        ring.submit()
        #expect(heap.producerIndex == ringIndex(start, plus: 8))

        // Full: nothing is granted, however much is asked, and nothing moves.
        #expect(ring.freeCount(wanted: 1) == 0)
        for ask: UInt32 in [1, 8, 1000, .max] {
            let refused = ring.reserve(upTo: ask)
            #expect(refused.count == 0)
            #expect(refused.start == ringIndex(start, plus: 8))
        }
        ring.submit()
        #expect(heap.producerIndex == ringIndex(start, plus: 8))
        #expect(ring.outstanding == 8)

        // The consumer takes three: the cached consumer index is stale, so
        // RESERVE must re-read it to find the room.
        for i in 0..<3 { #expect(rawEntry(heap, at: ringIndex(start, plus: i)) == streamValue(i)) }
        heap.consumerIndex = ringIndex(start, plus: 3)
        let again = ring.reserve(upTo: 5)
        #expect(again.start == ringIndex(start, plus: 8))
        #expect(again.count == 3)
        for i in 0..<again.count { ring[again.start &+ i] = streamValue(8 + Int(i)) }
        ring.submit()
        #expect(ring.outstanding == 8)
        #expect(ring.reserve(upTo: 1).count == 0)
        // The new entries landed in the slots the consumer freed (0, 1, 2 past the start).
        for i in 0..<3 { #expect(rawEntry(heap, at: ringIndex(start, plus: 8 + i)) == streamValue(8 + i)) }
    }

    @Test("freeCount re-reads the consumer index only when its cached view is not enough",
          arguments: ringStartIndices)
    func lazyConsumerRefresh(start: UInt32) {
        let heap = HeapRing<UInt64>(size: 8, startIndex: start)
        defer { heap.deallocate() }
        var ring = ProducerRing<UInt64>(heap.memory)
        #expect(ring.reserve(upTo: 6).count == 6)
        ring.submit()
        heap.consumerIndex = ringIndex(start, plus: 6)
        // Two are known free: asking for two must not touch the shared index.
        #expect(ring.freeCount(wanted: 2) == 2)
        // Asking for more re-reads it and sees all eight.
        #expect(ring.freeCount(wanted: 3) == 8)
        #expect(ring.reserve(upTo: 8).count == 8)
    }

    @Test("PEEK takes at most what was produced; CANCEL gives the tail back to be peeked again",
          arguments: ringStartIndices)
    func consumerCancel(start: UInt32) {
        let heap = HeapRing<UInt64>(size: 8, startIndex: start)
        defer { heap.deallocate() }
        var ring = ConsumerRing<UInt64>(heap.memory)

        #expect(ring.peek(upTo: 8).count == 0)
        for i in 0..<8 { heap[ringIndex(start, plus: i)] = streamValue(i) }
        heap.producerIndex = ringIndex(start, plus: 8)  // the ring is full

        let (first, got) = ring.peek(upTo: 100)
        #expect(first == start)
        #expect(got == 8)
        #expect(ring.peek(upTo: 1).count == 0)
        ring.cancel(3)
        ring.release()
        #expect(heap.consumerIndex == ringIndex(start, plus: 5))

        // The producer fills the five released slots.
        for i in 8..<13 { heap[ringIndex(start, plus: i)] = streamValue(i) }
        heap.producerIndex = ringIndex(start, plus: 13)

        // First the three given back, unchanged, from the cached view...
        let (backFirst, back) = ring.peek(upTo: 100)
        #expect(backFirst == ringIndex(start, plus: 5))
        #expect(back == 3)
        #expect((0..<back).map { ring[backFirst &+ $0] } == (5..<8).map(streamValue))
        // ...then the new ones, once that view is used up.
        let (newFirst, new) = ring.peek(upTo: 100)
        #expect(newFirst == ringIndex(start, plus: 8))
        #expect(new == 5)
        #expect((0..<new).map { ring[newFirst &+ $0] } == (8..<13).map(streamValue))

        // Cancelling everything peeked publishes nothing on release.
        ring.cancel(new)
        ring.release()
        #expect(heap.consumerIndex == ringIndex(start, plus: 8))
        #expect(ring.availableCount() == 5)
        ring.release()
        #expect(heap.consumerIndex == ringIndex(start, plus: 8))
    }

    @Test("needsWakeup follows the XDP_RING_NEED_WAKEUP bit of the flags word")
    func needsWakeup() {
        let heap = HeapRing<XDPDescriptor>(size: 8)
        defer { heap.deallocate() }
        let ring = ProducerRing<XDPDescriptor>(heap.memory)
        #expect(ringNeedsWakeupFlag == 1)
        #expect(!ring.needsWakeup)
        heap.flags = ringNeedsWakeupFlag
        #expect(ring.needsWakeup)
        heap.flags = 2  // another bit only
        #expect(!ring.needsWakeup)
        heap.flags = 0xFFFF_FFFF
        #expect(ring.needsWakeup)
        heap.flags = 0
        #expect(!ring.needsWakeup)

        // A ring without a flags word (an old kernel) always asks for a kick.
        let memory = heap.memory
        let withoutFlags = ProducerRing<XDPDescriptor>(
            RingMemory(
                producer: memory.producer, consumer: memory.consumer, flags: nil,
                entries: memory.entries, size: memory.size))
        #expect(withoutFlags.needsWakeup)
    }
}
