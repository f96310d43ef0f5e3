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

/// The send region's counters.
final class SendCounters: CounterBlock, @unchecked Sendable {
    private enum Index: Int, CaseIterable {
        case packets, bytes, completedLists, queuedFrames, ringFull, kicks, kickErrors, dropped, invalidCompletions
    }
    init() { super.init(count: Index.allCases.count) }
    @inline(__always) func add(packets: Int, bytes: Int) { add(Index.packets.rawValue, packets); add(Index.bytes.rawValue, bytes) }
    @inline(__always) func add(completedLists: Int) { add(Index.completedLists.rawValue, completedLists) }
    @inline(__always) func add(queued: Int) { add(Index.queuedFrames.rawValue, queued) }
    @inline(__always) func noteRingFull() { add(Index.ringFull.rawValue, 1) }
    @inline(__always) func noteKicks(_ count: Int) { add(Index.kicks.rawValue, count) }
    @inline(__always) func noteKickError() { add(Index.kickErrors.rawValue, 1) }
    @inline(__always) func noteDropped() { add(Index.dropped.rawValue, 1) }
    @inline(__always) func add(invalidCompletions: Int) { add(Index.invalidCompletions.rawValue, invalidCompletions) }
    /// Lists completed (delivered) so far: with the lists `send` accepted, says whether any is outstanding.
    var completedLists: Int { read(Index.completedLists.rawValue) }
    func snapshot() -> Statistics.Send {
        Statistics.Send(
            packets: read(Index.packets.rawValue), bytes: read(Index.bytes.rawValue),
            completedLists: read(Index.completedLists.rawValue), queuedFrames: read(Index.queuedFrames.rawValue),
            ringFullEvents: read(Index.ringFull.rawValue), kicks: read(Index.kicks.rawValue),
            kickErrors: read(Index.kickErrors.rawValue), dropped: read(Index.dropped.rawValue),
            invalidCompletions: read(Index.invalidCompletions.rawValue))
    }
}

/// The receive region's counters.
final class ReceiveCounters: CounterBlock, @unchecked Sendable {
    private enum Index: Int, CaseIterable { case packets, bytes, indications, lowResources, framesWithKernel }
    init() { super.init(count: Index.allCases.count) }
    @inline(__always) func add(packets: Int, bytes: Int) {
        add(Index.packets.rawValue, packets)
        add(Index.bytes.rawValue, bytes)
        add(Index.indications.rawValue, 1)
    }
    @inline(__always) func noteLowResources() { add(Index.lowResources.rawValue, 1) }
    @inline(__always) func add(framesWithKernel change: Int) { add(Index.framesWithKernel.rawValue, change) }
    var framesWithKernel: Int { read(Index.framesWithKernel.rawValue) }
    func snapshot(heldByCaller: Int, kernel: KernelSocketStatistics) -> Statistics.Receive {
        Statistics.Receive(
            packets: read(Index.packets.rawValue), bytes: read(Index.bytes.rawValue),
            indications: read(Index.indications.rawValue), lowResourceEvents: read(Index.lowResources.rawValue),
            framesWithKernel: read(Index.framesWithKernel.rawValue), framesHeldByCaller: heldByCaller,
            dropped: kernel.receiveDropped + kernel.receiveRingFull)
    }
}

/// The kernel's own view of the socket (`XDP_STATISTICS`).
public struct KernelSocketStatistics: Sendable, Equatable {
    /// Frames dropped for reasons other than a full ring or an empty fill ring.
    public var receiveDropped = 0
    /// Invalid descriptors the kernel found in the fill or RX path.
    public var receiveInvalidDescriptors = 0
    /// Invalid descriptors the kernel found in the TX ring.
    public var transmitInvalidDescriptors = 0
    /// Frames dropped because the RX ring was full.
    public var receiveRingFull = 0
    /// Times the kernel found the fill ring empty.
    public var fillRingEmpty = 0
    /// Times the kernel found the TX ring empty on a kick.
    public var transmitRingEmpty = 0
}

/// A snapshot of a port's counters, per direction (the OID statistics).
public struct Statistics: Sendable {
    public struct Send: Sendable, Equatable {
        /// Packets completed with success, and their bytes.
        public var packets: Int
        public var bytes: Int
        /// Lists completed (with any status).
        public var completedLists: Int
        /// Frames queued inside the engine, not yet in the TX ring.
        public var queuedFrames: Int
        /// Passes that found the TX or completion ring full with frames waiting.
        public var ringFullEvents: Int
        /// `sendto` kicks, and those that failed for a reason other than "try later".
        public var kicks: Int
        public var kickErrors: Int
        /// Lists completed with a status other than success.
        public var dropped: Int
        /// Completion-ring entries the engine did not expect (an address
        /// outside the UMEM, or a frame it had not sent) and ignored. A
        /// correct kernel never produces one.
        public var invalidCompletions: Int
    }
    public struct Receive: Sendable, Equatable {
        public var packets: Int
        public var bytes: Int
        /// Lists indicated to the receive handler.
        public var indications: Int
        /// Times the fill ring ran dry because the caller held the frames.
        public var lowResourceEvents: Int
        /// Receive frames in the fill ring, the kernel or the RX ring.
        public var framesWithKernel: Int
        /// Receive frames indicated and not yet returned.
        public var framesHeldByCaller: Int
        /// Frames the kernel dropped on receive (ring full or other), from XDP_STATISTICS.
        public var dropped: Int
    }
    public var send: Send
    public var receive: Receive
    public var kernel: KernelSocketStatistics
    /// The XDP program's own counters (per CPU, summed): frames it redirected
    /// to a socket, and frames it passed to the kernel's stack. They count the
    /// whole interface, not only this port's queue: ports on several queues
    /// of one interface share the program.
    public var programRedirected: Int
    public var programPassed: Int
}
