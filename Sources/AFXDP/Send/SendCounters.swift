/// The send region's counters.
final class SendCounters: CounterBlock, @unchecked Sendable {
    private enum Index: Int, CaseIterable {
        case packets, bytes, completedLists, queuedFrames, ringFull, kicks, kickErrors, dropped, invalidCompletions, forwarded
        case linkDowns, kernelDrops, stalls
    }
    init() { super.init(count: Index.allCases.count) }
    @inline(__always) func add(packets: Int, bytes: Int) { add(Index.packets.rawValue, packets); add(Index.bytes.rawValue, bytes) }
    @inline(__always) func add(completedLists: Int) { add(Index.completedLists.rawValue, completedLists) }
    @inline(__always) func add(queued: Int) { add(Index.queuedFrames.rawValue, queued) }
    @inline(__always) func noteRingFull() { add(Index.ringFull.rawValue, 1) }
    @inline(__always) func noteKicks(_ count: Int) { add(Index.kicks.rawValue, count) }
    @inline(__always) func noteKickError() { add(Index.kickErrors.rawValue, 1) }
    @inline(__always) func noteDropped() { add(Index.dropped.rawValue, 1) }
    @inline(__always) func add(forwarded: Int) { add(Index.forwarded.rawValue, forwarded) }
    func noteLinkDown() { add(Index.linkDowns.rawValue, 1) }
    func noteKernelDrop() { add(Index.kernelDrops.rawValue, 1) }
    func noteStall() { add(Index.stalls.rawValue, 1) }
    @inline(__always) func add(invalidCompletions: Int) { add(Index.invalidCompletions.rawValue, invalidCompletions) }
    /// Lists completed (delivered) so far: with the lists `send` accepted, says whether any is outstanding.
    var completedLists: Int { read(Index.completedLists.rawValue) }
    func snapshot() -> Statistics.Send {
        Statistics.Send(
            packets: read(Index.packets.rawValue), bytes: read(Index.bytes.rawValue),
            completedLists: read(Index.completedLists.rawValue), queuedFrames: read(Index.queuedFrames.rawValue),
            ringFullEvents: read(Index.ringFull.rawValue), kicks: read(Index.kicks.rawValue),
            kickErrors: read(Index.kickErrors.rawValue), dropped: read(Index.dropped.rawValue),
            invalidCompletions: read(Index.invalidCompletions.rawValue), forwardedPackets: read(Index.forwarded.rawValue),
            linkDownEvents: read(Index.linkDowns.rawValue), kernelDroppedFrames: read(Index.kernelDrops.rawValue),
            completionStalls: read(Index.stalls.rawValue))
    }
}
