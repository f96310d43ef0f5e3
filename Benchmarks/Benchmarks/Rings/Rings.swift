// NIC-free benchmarks of the AFXDPRings types, through their public API only:
// a ring over heap memory laid out like the kernel's, with the benchmark
// playing both sides (producer and consumer), and the free-index stack.
//
// One measured iteration is `scalingFactor` (1000) cycles; one cycle moves 64
// entries, the batch size the engine uses. The scaled figures are per cycle.
// Nothing here may allocate: the malloc thresholds are 0.
//
// The packet pool and the send queue are in the PortSimulated suite.

import AFXDPRings
import Benchmark

/// Entries per cycle: one ring batch.
let batch: UInt32 = 64
/// A power of two larger than a batch, as small as the kernel's smallest
/// useful rings, so that indices wrap around the entry array often.
let ringSize: UInt32 = 512

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        warmupIterations: 10,
        scalingFactor: .kilo,
        maxDuration: .seconds(1),
        maxIterations: 1_000,
        thresholds: [
            .mallocCountTotal: .init(absolute: [.p90: 0]),
            // Wall clock is noisy on a shared two-core box: only a gross change fails.
            .wallClock: .init(relative: [.p90: 300]),
            .throughput: .init(relative: [.p90: 75]),
        ]
    )

    // The TX and RX rings' cycle: the producer reserves, writes and submits
    // 64 descriptors; the consumer peeks, reads and releases them.
    Benchmark("descriptor-ring-cycle-of-64") { benchmark, state in
        var producer = ProducerRing<XDPDescriptor>(state.ring.memory)
        var consumer = ConsumerRing<XDPDescriptor>(state.ring.memory)
        var checksum: UInt64 = 0
        benchmark.startMeasurement()
        for cycle in benchmark.scaledIterations {
            let (start, reserved) = producer.reserve(upTo: batch)
            precondition(reserved == batch, "the consumer released everything; the ring cannot be full")
            var index = start
            let base = UInt64(cycle) << 12
            for k in 0..<reserved {
                producer[index] = XDPDescriptor(address: base | UInt64(k) << 6, length: 64)
                index &+= 1
            }
            producer.submit()

            let (first, available) = consumer.peek(upTo: batch)
            var read = first
            for _ in 0..<available {
                let descriptor = consumer[read]
                checksum &+= descriptor.address &+ UInt64(descriptor.length)
                read &+= 1
            }
            consumer.release()
        }
        benchmark.stopMeasurement()
        blackHole(checksum)
    } setup: {
        RingFixture<XDPDescriptor>()
    }

    // The fill and completion rings' cycle: the same with frame addresses.
    Benchmark("address-ring-cycle-of-64") { benchmark, state in
        var producer = ProducerRing<UInt64>(state.ring.memory)
        var consumer = ConsumerRing<UInt64>(state.ring.memory)
        var checksum: UInt64 = 0
        benchmark.startMeasurement()
        for cycle in benchmark.scaledIterations {
            let (start, reserved) = producer.reserve(upTo: batch)
            precondition(reserved == batch, "the consumer released everything; the ring cannot be full")
            var index = start
            let base = UInt64(cycle) << 20
            for k in 0..<reserved {
                producer[index] = base | UInt64(k) << 12
                index &+= 1
            }
            producer.submit()

            let (first, available) = consumer.peek(upTo: batch)
            var read = first
            for _ in 0..<available {
                checksum &+= consumer[read]
                read &+= 1
            }
            consumer.release()
        }
        benchmark.stopMeasurement()
        blackHole(checksum)
    } setup: {
        RingFixture<UInt64>()
    }

    // The engine's free frame and free slot stacks: 64 pushes, then 64 pops.
    Benchmark("IndexStack-push-64-pop-64") { benchmark, fixture in
        var stack = fixture.stack
        var checksum: UInt32 = 0
        benchmark.startMeasurement()
        for cycle in benchmark.scaledIterations {
            let base = UInt32(truncatingIfNeeded: cycle) &* batch
            for k in 0..<batch {
                stack.push(base &+ k)
            }
            while let index = stack.pop() {
                checksum &+= index
            }
        }
        benchmark.stopMeasurement()
        fixture.stack = stack
        blackHole(checksum)
    } setup: {
        StackFixture()
    }
}

/// A heap ring that lives as long as the benchmark keeps its setup state.
/// Each iteration makes fresh producer and consumer views of it: they start
/// from the shared indices, where the previous iteration left them.
final class RingFixture<Entry>: @unchecked Sendable {
    // @unchecked: used by one benchmark thread at a time.
    let ring = HeapRing<Entry>(size: ringSize)
    deinit { ring.deallocate() }
}

final class StackFixture: @unchecked Sendable {
    // @unchecked: used by one benchmark thread at a time.
    var stack = IndexStack(capacity: Int(batch))
    deinit { stack.deallocate() }
}
