import AFXDPRings
import AFXDPSystem
import Testing

/// Every capacity × start slot × count, in chunks of varying size, with the
/// test playing the other side of the ring over heap memory. Start slots just
/// below `UInt32.max` make the free-running indices wrap mid-stream.
@Suite("Ring wraparound")
struct RingWraparoundTests {
    static func counts(for capacity: UInt32) -> [Int] {
        let c = Int(capacity)
        return [1, c - 1, c, 3 * c + 5]
    }

    @Test("ProducerRing: every entry reaches the consumer once, in order", arguments: ringCapacities, ringStartIndices)
    func producerStream(capacity: UInt32, start: UInt32) throws {
        for count in Self.counts(for: capacity) {
            for seed in UInt64(1)...3 {
                try checkProducerStream(capacity: capacity, start: start, count: count, seed: seed)
            }
        }
    }

    @Test("ConsumerRing: every entry is read once, in order", arguments: ringCapacities, ringStartIndices)
    func consumerStream(capacity: UInt32, start: UInt32) throws {
        for count in Self.counts(for: capacity) {
            for seed in UInt64(1)...3 {
                try checkConsumerStream(capacity: capacity, start: start, count: count, seed: seed)
            }
        }
    }

    /// The engine produces with `ProducerRing` (reserving chunks that are
    /// sometimes larger than the free space, sometimes submitting later); the
    /// test consumes on the heap side in chunks of its own.
    func checkProducerStream(capacity: UInt32, start: UInt32, count: Int, seed: UInt64) throws {
        let heap = HeapRing<UInt64>(size: capacity, startIndex: start)
        defer { heap.deallocate() }
        var ring = ProducerRing<UInt64>(heap.memory)
        var random = SeededGenerator(seed: seed)
        let size = Int(capacity)
        var reserved = 0  // entries reserved and written by the producer
        var submitted = 0  // of those, published
        var consumed = 0
        var received: [UInt64] = []
        var steps = 0
        let context: Comment = "capacity \(capacity), start \(start), count \(count), seed \(seed)"

        while consumed < count {
            steps += 1
            guard steps < 10_000 else {
                Issue.record("no progress: \(context)")
                return
            }
            // Producer side.
            let free = size - (reserved - consumed)
            try #require(Int(ring.outstanding) == reserved - consumed, context)
            let wanted = min(Int.random(in: 0...(size + 3), using: &random), count - reserved)
            let (first, granted) = ring.reserve(upTo: UInt32(wanted))
            try #require(first == ringIndex(start, plus: reserved), context)
            try #require(Int(granted) == min(wanted, free), context)
            for i in 0..<Int(granted) {
                ring[first &+ UInt32(i)] = streamValue(reserved + i)
            }
            reserved += Int(granted)
            if reserved == count || Bool.random(using: &random) {
                ring.submit()
                submitted = reserved
            }
            try #require(heap.producerIndex == ringIndex(start, plus: submitted), context)
            try #require(Int(ring.freeCount(wanted: capacity)) == size - (reserved - consumed), context)

            // Consumer side (the test).
            let available = Int(heap.producerIndex &- heap.consumerIndex)
            try #require(available == submitted - consumed, context)
            let take = available == 0 ? 0 : Int.random(in: 0...available, using: &random)
            for i in 0..<take {
                let index = ringIndex(start, plus: consumed + i)
                let entry = rawEntry(heap, at: index)
                try #require(heap[index] == entry, context)
                received.append(entry)
            }
            consumed += take
            heap.consumerIndex = ringIndex(start, plus: consumed)
        }

        #expect(received == (0..<count).map(streamValue), context)
        #expect(heap.producerIndex == ringIndex(start, plus: count), context)
        #expect(heap.consumerIndex == ringIndex(start, plus: count), context)
        #expect(ring.outstanding == 0, context)
        #expect(ring.freeCount(wanted: capacity) == capacity, context)
        if UInt64(start) + UInt64(count) > UInt64(UInt32.max) {
            // The shared index really went past UInt32.max and wrapped to the bottom.
            #expect(heap.producerIndex < start, context)
        }
    }

    /// The test produces on the heap side; the engine reads with
    /// `ConsumerRing`, sometimes cancelling the tail of what it peeked and
    /// releasing only now and then.
    func checkConsumerStream(capacity: UInt32, start: UInt32, count: Int, seed: UInt64) throws {
        let heap = HeapRing<UInt64>(size: capacity, startIndex: start)
        defer { heap.deallocate() }
        var ring = ConsumerRing<UInt64>(heap.memory)
        var random = SeededGenerator(seed: seed)
        let size = Int(capacity)
        var produced = 0
        var peeked = 0  // the consumer's private cursor
        var released = 0  // what it has published
        // The consumer's last view of the producer index: PEEK re-reads it
        // only when that view shows nothing available (as the kernel does).
        var viewOfProducer = 0
        var readNotReleased: [UInt64] = []
        var received: [UInt64] = []
        var steps = 0
        let context: Comment = "capacity \(capacity), start \(start), count \(count), seed \(seed)"

        while released < count {
            steps += 1
            guard steps < 10_000 else {
                Issue.record("no progress: \(context)")
                return
            }
            // Producer side (the test).
            try #require(Int(heap.producerIndex &- heap.consumerIndex) == produced - released, context)
            let free = size - (produced - released)
            let put = min(Int.random(in: 0...free, using: &random), count - produced)
            for i in 0..<put {
                heap[ringIndex(start, plus: produced + i)] = streamValue(produced + i)
            }
            produced += put
            heap.producerIndex = ringIndex(start, plus: produced)

            // Consumer side.
            if Bool.random(using: &random) {
                try #require(Int(ring.availableCount()) == produced - peeked, context)
                viewOfProducer = produced
            }
            let wanted = Int.random(in: 0...(size + 3), using: &random)
            if viewOfProducer == peeked { viewOfProducer = produced }
            let (first, got) = ring.peek(upTo: UInt32(wanted))
            try #require(first == ringIndex(start, plus: peeked), context)
            try #require(Int(got) == min(wanted, viewOfProducer - peeked), context)
            for i in 0..<Int(got) {
                let index = first &+ UInt32(i)
                try #require(ring[index] == rawEntry(heap, at: ringIndex(start, plus: peeked + i)), context)
                readNotReleased.append(ring[index])
            }
            peeked += Int(got)
            if got > 0 && Int.random(in: 0..<4, using: &random) == 0 {
                let back = Int.random(in: 1...Int(got), using: &random)
                ring.cancel(UInt32(back))
                peeked -= back
                readNotReleased.removeLast(back)
            }
            if produced == count || Bool.random(using: &random) {
                ring.release()
                released = peeked
                received += readNotReleased
                readNotReleased.removeAll()
            }
            try #require(heap.consumerIndex == ringIndex(start, plus: released), context)
        }

        #expect(received == (0..<count).map(streamValue), context)
        #expect(heap.producerIndex == ringIndex(start, plus: count), context)
        #expect(heap.consumerIndex == ringIndex(start, plus: count), context)
        #expect(ring.availableCount() == 0, context)
        if UInt64(start) + UInt64(count) > UInt64(UInt32.max) {
            #expect(heap.consumerIndex < start, context)
        }
    }
}
