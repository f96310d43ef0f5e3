/// An NDIS intermediate driver: it binds to one or more layers below (ports,
/// or other drivers) as their caller, and offers the port contract above, so
/// that code written against a `PacketPort` runs unchanged over it. The
/// drivers shipped here are `FilterDriver` (the base for filters of your
/// own), `PriorityClassifier`, `MultiQueuePort` and `Bridge`.
///
/// What every driver does, by the rules of the NDIS seed:
/// 1. It declares what it is: `stack` describes it and everything below it.
/// 2. Packet stacking: where the layers share a UMEM, a list passes down on
///    send and up on receive as the same list, no fresh descriptor; the
///    layer's own per-list state is in a table of its own, and what the
///    caller set (its priority) is restored before the list comes back up.
///    Where a lower port is on another UMEM, the layer copies the frames into
///    a fresh list of that port's pool and hands the original back when the
///    fresh one completes (chosen per list, by its UMEM).
/// 3. Borrowed resources go back promptly: an upper send completes when the
///    lower send it became completes, with that status; a received list goes
///    back down when the caller returns it; one the layer drops or passes on
///    goes back at once. `stack.layerStatistics` counts what is out.
/// 4. Deserialized inside: send, receive and shared ranges, as in a port;
///    only the shared range locks.
///
/// Drivers cannot be subclassed outside this library; write your own as a
/// `FilterDriver` with hooks (see the README).
public class IntermediateDriver: PacketPort, @unchecked Sendable {
    // @unchecked: the core's ranges are owned as LayerCore says.
    let core: LayerCore

    init(name: String, handlers: PortHandlers) {
        core = LayerCore(name: name, upper: handlers)
        core.top = self
    }

    deinit {
        // No other thread can be inside the driver now (each would hold a
        // reference): closing here cannot deadlock.
        core.close(timeout: .seconds(1))
    }

    // MARK: What subclasses decide

    /// The binding an upper send goes down to. May set the list's priority
    /// (the caller's is restored when it completes). Throws to refuse it.
    func route(_ list: PacketList) throws(AFXDPError) -> Int { 0 }

    /// What happens to a list the layer below `binding` indicated.
    func received(_ list: PacketList, from binding: Int) -> LayerReceiveAction { .up }

    /// Where `allocateList` takes a list from.
    func allocate(packetCount: Int) throws(AFXDPError) -> PacketList? {
        try core.lowers[0].allocateList(packetCount: packetCount)
    }

    /// The driver's description in `stack`.
    var layerName: String { core.name }

    // MARK: PacketPort

    public func send(_ list: PacketList) throws(AFXDPError) {
        let record = try list.ownedRecord()
        let callerPriority = record.pointee.priority
        let binding: Int
        do {
            binding = try route(list)
        } catch {
            if list.isOwnedByCaller { record.pointee.priority = callerPriority }
            throw error
        }
        try send(list, binding: binding, callerPriority: callerPriority)
    }

    /// Sends down a given binding (after `route`, or a side the caller named).
    func send(_ list: PacketList, binding: Int, callerPriority: UInt8? = nil) throws(AFXDPError) {
        let record = try list.ownedRecord()
        let callerPriority = callerPriority ?? record.pointee.priority
        do {
            try core.send(list, binding: binding, callerPriority: callerPriority)
        } catch {
            // Refused: the list stays the caller's, as the caller left it.
            if list.isOwnedByCaller { record.pointee.priority = callerPriority }
            throw error
        }
    }

    public func returnList(_ list: PacketList) throws(AFXDPError) { try core.returnList(list) }

    public func allocateList(packetCount: Int) throws(AFXDPError) -> PacketList? {
        guard core.state != .closed else { throw .portClosed }
        return try allocate(packetCount: packetCount)
    }

    @discardableResult
    public func poll() -> Bool { core.poll() }

    public func pause(timeout: Duration) { core.pause(timeout: timeout) }

    public func restart() { core.restart() }

    /// Holds (or resumes) receive on every layer below.
    public func holdReceive(_ hold: Bool) {
        for lower in core.lowers { lower.holdReceive(hold) }
    }

    public func close(timeout: Duration) { core.close(timeout: timeout) }

    public var currentState: PortState { core.state }

    public var hasSendsOutstanding: Bool { core.hasSendsOutstanding }

    public var statistics: Statistics { Statistics.sum(core.lowers.map(\.statistics)) }

    public var poolStatus: XDPPort.PoolStatus { XDPPort.PoolStatus.sum(core.lowers.map(\.poolStatus)) }

    public var stack: StackDescription {
        StackDescription(kind: .intermediate, name: layerName, layerStatistics: core.layerStatistics, lower: core.lowers.map(\.stack))
    }

    public var umems: [UMEM] {
        var seen: [UMEM] = []
        for umem in core.lowers.flatMap(\.umems) where !seen.contains(where: { $0 === umem }) { seen.append(umem) }
        return seen
    }

    /// What this layer has borrowed and how promptly it gives it back.
    public var layerStatistics: LayerStatistics { core.layerStatistics }

    /// The layers this one is bound to, in binding order.
    public var bindings: [any PacketPort] { core.lowers }
}

extension Statistics {
    /// Counters of several ports added together (a layer over them).
    static func sum(_ all: [Statistics]) -> Statistics {
        var total = Statistics(
            send: .init(
                packets: 0, bytes: 0, completedLists: 0, queuedFrames: 0, ringFullEvents: 0, kicks: 0, kickErrors: 0, dropped: 0,
                invalidCompletions: 0, forwardedPackets: 0, linkDownEvents: 0, kernelDroppedFrames: 0, completionStalls: 0),
            receive: .init(
                packets: 0, bytes: 0, indications: 0, lowResourceEvents: 0, framesWithKernel: 0, framesHeldByCaller: 0, dropped: 0),
            kernel: KernelSocketStatistics(), programRedirected: 0, programPassed: 0)
        for one in all {
            total.send.packets += one.send.packets
            total.send.bytes += one.send.bytes
            total.send.completedLists += one.send.completedLists
            total.send.queuedFrames += one.send.queuedFrames
            total.send.ringFullEvents += one.send.ringFullEvents
            total.send.kicks += one.send.kicks
            total.send.kickErrors += one.send.kickErrors
            total.send.dropped += one.send.dropped
            total.send.invalidCompletions += one.send.invalidCompletions
            total.send.forwardedPackets += one.send.forwardedPackets
            total.send.linkDownEvents += one.send.linkDownEvents
            total.send.kernelDroppedFrames += one.send.kernelDroppedFrames
            total.send.completionStalls += one.send.completionStalls
            total.receive.packets += one.receive.packets
            total.receive.bytes += one.receive.bytes
            total.receive.indications += one.receive.indications
            total.receive.lowResourceEvents += one.receive.lowResourceEvents
            total.receive.framesWithKernel += one.receive.framesWithKernel
            total.receive.framesHeldByCaller += one.receive.framesHeldByCaller
            total.receive.dropped += one.receive.dropped
            total.kernel.receiveDropped += one.kernel.receiveDropped
            total.kernel.receiveInvalidDescriptors += one.kernel.receiveInvalidDescriptors
            total.kernel.transmitInvalidDescriptors += one.kernel.transmitInvalidDescriptors
            total.kernel.receiveRingFull += one.kernel.receiveRingFull
            total.kernel.fillRingEmpty += one.kernel.fillRingEmpty
            total.kernel.transmitRingEmpty += one.kernel.transmitRingEmpty
            // The program is the interface's: ports on its queues share it.
            total.programRedirected = max(total.programRedirected, one.programRedirected)
            total.programPassed = max(total.programPassed, one.programPassed)
        }
        return total
    }
}

extension XDPPort.PoolStatus {
    /// Pools of several ports added together (a layer over them).
    static func sum(_ all: [XDPPort.PoolStatus]) -> XDPPort.PoolStatus {
        var total = XDPPort.PoolStatus(
            totalFrames: 0, sendFramesFree: 0, receiveFramesWithEngine: 0, receiveFramesHeldByCaller: 0,
            framesLentToOtherPorts: 0, totalLargeChunks: 0, largeChunksFree: 0)
        for one in all {
            total.totalFrames += one.totalFrames
            total.sendFramesFree += one.sendFramesFree
            total.receiveFramesWithEngine += one.receiveFramesWithEngine
            total.receiveFramesHeldByCaller += one.receiveFramesHeldByCaller
            total.framesLentToOtherPorts += one.framesLentToOtherPorts
            total.totalLargeChunks += one.totalLargeChunks
            total.largeChunksFree += one.largeChunksFree
        }
        return total
    }
}
