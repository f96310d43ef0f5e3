import AFXDPSystem
import AFXDPRings
import Atomics

/// The kernel's side of a port's four rings, in memory: what a port opened
/// with `XDPPort.openSimulated` has instead of an AF_XDP socket.
///
/// It does only what it is asked, and it does it the way the kernel does,
/// unkind parts included:
/// - `transmit` takes descriptors off the TX ring. It takes one only when it
///   has a completion slot for it (the kernel's back-pressure). It skips an
///   invalid descriptor (length 0, past its frame's end, outside the UMEM,
///   unknown option bits) and counts it in `transmitInvalidDescriptors`,
///   with no completion, as the kernel does. With `loopback`, each frame it
///   takes is copied into a frame from the fill ring and indicated on the RX
///   ring, like a loopback interface.
/// - What it takes completes at once (`completesOnTransmit`, the default),
///   or stays in flight, as copy mode's frames do until their skb is freed,
///   until `complete` writes the completions, in submission order, newest
///   first, or shuffled.
/// - `deliver` makes a frame arrive; many calls in a row drain the fill ring
///   as a burst would, and what finds it empty is dropped and counted.
/// - Not asking is how a test stalls the completion ring; not returning
///   received lists is how it empties the fill ring.
/// - `tearDown` (called by the port's close) is the socket going away:
///   frames still in flight are forgotten, and the kernel does nothing more.
///
/// Thread ownership: the kernel's side has one driver at a time, whoever
/// calls `transmit`, `complete` and `deliver`; the port's side runs
/// concurrently on its own threads, as with a real kernel. `kernelLock`
/// orders each of those calls with the teardown and the statistics.
public final class SimulatedKernel: @unchecked Sendable {
    // @unchecked: the ring views and the in-flight list are touched only under
    // `kernelLock`.
    let fill: HeapRing<UInt64>
    let completion: HeapRing<UInt64>
    let rx: HeapRing<XDPDescriptor>
    let tx: HeapRing<XDPDescriptor>
    /// The same memory, seen from the kernel's side.
    @exclusivity(unchecked) private var fillConsumer: ConsumerRing<UInt64>
    @exclusivity(unchecked) private var completionProducer: ProducerRing<UInt64>
    @exclusivity(unchecked) private var rxProducer: ProducerRing<XDPDescriptor>
    @exclusivity(unchecked) private var txConsumer: ConsumerRing<XDPDescriptor>
    private let umem: UnsafeMutableRawPointer
    private let frameSize: Int
    private let umemSize: UInt64
    /// Whether transmitted frames come back in on the RX ring.
    public let loopback: Bool
    private let kernelLock = PThreadLock()
    private var counters = KernelSocketStatistics()
    /// Addresses taken from the TX ring whose completion is not written yet,
    /// oldest first. Each holds a completion slot the kernel reserved.
    @exclusivity(unchecked) private var inFlight: [UInt64] = []
    @exclusivity(unchecked) private var isTornDown = false
    @exclusivity(unchecked) private var completesImmediately = true
    /// For `.shuffled` completions.
    @exclusivity(unchecked) private var shuffleState: UInt64 = 0x5DEE_CE66_D1CE_4E5B

    init(configuration: PortConfiguration, umem: UMEM, loopback: Bool) {
        fill = HeapRing(size: configuration.fillRingSize)
        completion = HeapRing(size: configuration.completionRingSize)
        rx = HeapRing(size: configuration.receiveRingSize)
        tx = HeapRing(size: configuration.transmitRingSize)
        fillConsumer = ConsumerRing(fill.memory)
        completionProducer = ProducerRing(completion.memory)
        rxProducer = ProducerRing(rx.memory)
        txConsumer = ConsumerRing(tx.memory)
        self.umem = umem.area.base
        frameSize = umem.frameSize
        umemSize = UInt64(umem.frameCount * umem.frameSize)
        self.loopback = loopback
        inFlight.reserveCapacity(Int(configuration.completionRingSize))
    }

    deinit {
        fill.deallocate()
        completion.deallocate()
        rx.deallocate()
        tx.deallocate()
    }

    /// What the kernel would report in `XDP_STATISTICS`.
    public var statistics: KernelSocketStatistics { kernelLock.withLock { counters } }

    /// The simulated interface's link: while false, `transmit` takes nothing
    /// (as the kernel does for an interface that is down) and the port finds
    /// its link down when it looks. Any thread.
    public var linkUp: Bool {
        get { linkIsUp.load(ordering: .acquiring) }
        set { linkIsUp.store(newValue, ordering: .releasing) }
    }
    private let linkIsUp = ManagedAtomic<Bool>(true)

    /// Descriptors waiting in the TX ring.
    public var pendingTransmit: Int { kernelLock.withLock { Int(txConsumer.availableCount()) } }

    /// Frames taken from the TX ring whose completion is not written yet.
    public var framesInFlight: Int { kernelLock.withLock { inFlight.count } }

    /// Whether `transmit` completes what it takes at once (true, the
    /// default), or leaves it in flight until `complete` is called.
    public var completesOnTransmit: Bool {
        get { kernelLock.withLock { completesImmediately } }
        set { kernelLock.withLock { completesImmediately = newValue } }
    }

    /// Whether the port's close has torn the socket down.
    public var isClosed: Bool { kernelLock.withLock { isTornDown } }

    /// Takes up to `maximum` descriptors from the TX ring; returns how many it
    /// took (invalid ones included, which it skips without a completion).
    /// Stops early when every completion slot is spoken for, as the kernel
    /// does (it takes a TX descriptor only once it has a completion slot for it).
    @discardableResult
    public func transmit(maximum: Int = .max) -> Int {
        guard linkUp else { return 0 }
        return kernelLock.withLock {
            guard !isTornDown else { return 0 }
            let room = completionProducer.freeCount(wanted: completion.memory.size) &- UInt32(inFlight.count)
            let (start, count) = txConsumer.peek(upTo: UInt32(clamping: min(maximum, Int(room))))
            guard count > 0 else { return 0 }
            var invalid = 0
            for i in 0..<count {
                let descriptor = txConsumer[start &+ i]
                guard isValid(descriptor) else {
                    invalid += 1
                    continue
                }
                if loopback { _ = arrive(at: descriptor) }
                inFlight.append(descriptor.address)
            }
            txConsumer.release()
            counters.transmitInvalidDescriptors += invalid
            if completesImmediately { writeCompletions(inFlight.count, order: .submission) }
            return Int(count)
        }
    }

    /// The kernel's check of a TX descriptor (aligned mode).
    private func isValid(_ descriptor: XDPDescriptor) -> Bool {
        let offset = Int(descriptor.address & UInt64(frameSize - 1))
        return descriptor.length > 0 && offset + Int(descriptor.length) <= frameSize
            && descriptor.address < umemSize && descriptor.options == 0
    }

    /// In which order `complete` gives frames back.
    public enum CompletionOrder: Sendable {
        /// Oldest first, as they were taken.
        case submission
        /// Newest first.
        case newestFirst
        /// Any of those in flight, in a pseudo-random order (see `seedShuffle`).
        case shuffled
    }

    /// Writes the completions of up to `maximum` frames in flight; returns how many.
    @discardableResult
    public func complete(maximum: Int = .max, order: CompletionOrder = .submission) -> Int {
        kernelLock.withLock {
            guard !isTornDown else { return 0 }
            return writeCompletions(min(maximum, inFlight.count), order: order)
        }
    }

    /// Seeds the order `.shuffled` completions come in, for a reproducible run.
    public func seedShuffle(_ seed: UInt64) {
        kernelLock.withLock { shuffleState = seed | 1 }
    }

    @discardableResult
    private func writeCompletions(_ count: Int, order: CompletionOrder) -> Int {
        guard count > 0 else { return 0 }
        let (slot, granted) = completionProducer.reserve(upTo: UInt32(count))
        invariant(granted == UInt32(count), "the simulated kernel reserved a completion slot for every frame it took")
        for i in 0..<count {
            let index: Int
            switch order {
            case .submission: index = 0
            case .newestFirst: index = inFlight.count - 1
            case .shuffled: index = Int(nextRandom() % UInt64(inFlight.count))
            }
            completionProducer[slot &+ UInt32(i)] = inFlight.remove(at: index)
        }
        completionProducer.submit()
        return count
    }

    private func nextRandom() -> UInt64 {
        // SplitMix64: small, and reproducible from its seed.
        shuffleState &+= 0x9E37_79B9_7F4A_7C15
        var z = shuffleState
        z = (z ^ (z &>> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z &>> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z &>> 31)
    }

    /// Makes `frame` arrive: copies it into a frame from the fill ring and
    /// puts it on the RX ring. Returns false, and counts a drop, when the
    /// fill ring is empty or the RX ring full (or the frame does not fit).
    @discardableResult
    public func deliver(_ frame: UnsafeRawBufferPointer) -> Bool {
        kernelLock.withLock {
            guard !isTornDown else { return false }
            guard frame.count > 0, frame.count <= frameSize else {
                counters.receiveInvalidDescriptors += 1
                return false
            }
            return copyIn(from: UnsafeRawPointer(frame.baseAddress!), length: frame.count)
        }
    }

    /// Makes `count` copies of `frame` arrive back to back, as a burst does;
    /// returns how many found a fill-ring frame (the rest are dropped and counted).
    @discardableResult
    public func deliver(_ frame: UnsafeRawBufferPointer, count: Int) -> Int {
        var delivered = 0
        for _ in 0..<count where deliver(frame) { delivered += 1 }
        return delivered
    }

    /// Writes a completion for `address` that no transmit produced: what a
    /// misbehaving kernel would do. Tests only (the engine must count and
    /// ignore it). Returns false when the completion ring is full.
    @discardableResult
    func injectCompletion(_ address: UInt64) -> Bool {
        kernelLock.withLock {
            guard completionProducer.freeCount(wanted: 1) &- UInt32(inFlight.count) > 0 else { return false }
            let (slot, granted) = completionProducer.reserve(upTo: 1)
            guard granted == 1 else { return false }
            completionProducer[slot] = address
            completionProducer.submit()
            return true
        }
    }

    /// Writes a TX descriptor as if the engine had placed it: tests of the
    /// kernel's own checks only.
    func injectTransmit(_ descriptor: XDPDescriptor) {
        var producer = ProducerRing<XDPDescriptor>(tx.memory)
        let (slot, granted) = producer.reserve(upTo: 1)
        invariant(granted == 1, "the test's TX ring has room")
        producer[slot] = descriptor
        producer.submit()
    }

    /// The socket goes away (the port's close): frames in flight are
    /// forgotten, and the kernel touches no ring from now on.
    func tearDown() {
        kernelLock.withLock {
            isTornDown = true
            inFlight.removeAll()
        }
    }

    private func arrive(at descriptor: XDPDescriptor) -> Bool {
        copyIn(from: UnsafeRawPointer(umem + Int(descriptor.address)), length: Int(descriptor.length))
    }

    private func copyIn(from source: UnsafeRawPointer, length: Int) -> Bool {
        guard rxProducer.freeCount(wanted: 1) > 0 else {
            counters.receiveRingFull += 1
            return false
        }
        let (start, count) = fillConsumer.peek(upTo: 1)
        guard count == 1 else {
            counters.fillRingEmpty += 1
            return false
        }
        let address = fillConsumer[start]
        fillConsumer.release()
        (umem + Int(address)).copyMemory(from: source, byteCount: length)
        let (slot, _) = rxProducer.reserve(upTo: 1)
        rxProducer[slot] = XDPDescriptor(address: address, length: UInt32(length))
        rxProducer.submit()
        return true
    }
}
