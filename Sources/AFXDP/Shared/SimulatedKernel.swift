import AFXDPRings

/// The kernel's side of a port's four rings, in memory: what a port opened
/// with `Port.openSimulated` has instead of an AF_XDP socket.
///
/// It does only what it is asked: `transmit` takes descriptors off the TX
/// ring and gives their frames back on the completion ring (with `loopback`,
/// each frame is first copied into a frame from the fill ring and indicated
/// on the RX ring, like a loopback interface); `deliver` makes a frame
/// arrive. Not asking is how a test stalls the completion ring; not
/// returning received lists is how it empties the fill ring.
///
/// Thread ownership: the kernel's side has one owner, whoever calls
/// `transmit` and `deliver` (one thread at a time); the port's side runs
/// concurrently on its own threads, as with a real kernel.
public final class SimulatedKernel: @unchecked Sendable {
    // @unchecked: the ring views below have one owner (see above); the
    // counters are read by other threads under `countersLock`.
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
    /// Whether transmitted frames come back in on the RX ring.
    public let loopback: Bool
    private let countersLock = PThreadLock()
    private var counters = KernelSocketStatistics()

    init(configuration: PortConfiguration, umem: UnsafeMutableRawPointer, loopback: Bool) {
        fill = HeapRing(size: configuration.fillRingSize)
        completion = HeapRing(size: configuration.completionRingSize)
        rx = HeapRing(size: configuration.receiveRingSize)
        tx = HeapRing(size: configuration.transmitRingSize)
        fillConsumer = ConsumerRing(fill.memory)
        completionProducer = ProducerRing(completion.memory)
        rxProducer = ProducerRing(rx.memory)
        txConsumer = ConsumerRing(tx.memory)
        self.umem = umem
        frameSize = configuration.frameSize
        self.loopback = loopback
    }

    deinit {
        fill.deallocate()
        completion.deallocate()
        rx.deallocate()
        tx.deallocate()
    }

    /// What the kernel would report in `XDP_STATISTICS`.
    public var statistics: KernelSocketStatistics { countersLock.withLock { counters } }

    /// Descriptors waiting in the TX ring.
    public var pendingTransmit: Int { Int(txConsumer.availableCount()) }

    /// Sends up to `maximum` descriptors from the TX ring; returns how many.
    /// Stops early when the completion ring is full, as the kernel does (it
    /// takes a TX descriptor only once it has a completion slot for it).
    @discardableResult
    public func transmit(maximum: Int = .max) -> Int {
        let room = completionProducer.freeCount(wanted: completion.memory.size)
        let (start, count) = txConsumer.peek(upTo: UInt32(clamping: min(maximum, Int(room))))
        guard count > 0 else { return 0 }
        let (slot, granted) = completionProducer.reserve(upTo: count)
        precondition(granted == count, "completion room was checked")
        let frameMask = ~UInt64(frameSize - 1)
        var invalid = 0
        for i in 0..<count {
            let descriptor = txConsumer[start &+ i]
            if loopback { _ = arrive(at: descriptor) }
            if Int(descriptor.length) > frameSize || descriptor.length == 0 { invalid += 1 }
            completionProducer[slot &+ i] = descriptor.address & frameMask
        }
        txConsumer.release()
        completionProducer.submit()
        if invalid > 0 { countersLock.withLock { counters.transmitInvalidDescriptors += invalid } }
        return Int(count)
    }

    /// Makes `frame` arrive: copies it into a frame from the fill ring and
    /// puts it on the RX ring. Returns false, and counts a drop, when the
    /// fill ring is empty or the RX ring full.
    @discardableResult
    public func deliver(_ frame: UnsafeRawBufferPointer) -> Bool {
        guard frame.count > 0, frame.count <= frameSize else {
            countersLock.withLock { counters.receiveInvalidDescriptors += 1 }
            return false
        }
        return copyIn(from: UnsafeRawPointer(frame.baseAddress!), length: frame.count)
    }

    private func arrive(at descriptor: XDPDescriptor) -> Bool {
        copyIn(from: UnsafeRawPointer(umem + Int(descriptor.address)), length: Int(descriptor.length))
    }

    private func copyIn(from source: UnsafeRawPointer, length: Int) -> Bool {
        guard rxProducer.freeCount(wanted: 1) > 0 else {
            countersLock.withLock { counters.receiveRingFull += 1 }
            return false
        }
        let (start, count) = fillConsumer.peek(upTo: 1)
        guard count == 1 else {
            countersLock.withLock { counters.fillRingEmpty += 1 }
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
