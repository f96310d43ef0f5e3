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
    var packetsSoFar: Int { read(Index.packets.rawValue) }
    func snapshot(heldByCaller: Int, kernel: KernelSocketStatistics) -> Statistics.Receive {
        Statistics.Receive(
            packets: read(Index.packets.rawValue), bytes: read(Index.bytes.rawValue),
            indications: read(Index.indications.rawValue), lowResourceEvents: read(Index.lowResources.rawValue),
            framesWithKernel: read(Index.framesWithKernel.rawValue), framesHeldByCaller: heldByCaller,
            dropped: kernel.receiveDropped + kernel.receiveRingFull)
    }
}
