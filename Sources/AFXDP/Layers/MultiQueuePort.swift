import AFXDPSystem
import Atomics

/// One port above over several queues of one interface below (a MUX, or a
/// team in NDIS terms): one UMEM, one socket per queue.
///
/// - Sends are spread over the queues by a flow hash (replaceable; the
///   default hashes the first frame's IP addresses and ports, or its MAC
///   addresses and EtherType), so the frames of one flow keep their order.
/// - Completions reach the caller in its send order within a priority, even
///   when the queues complete out of order.
/// - Receives from every queue come up as one stream (one indication at a
///   time).
/// - `allocateList` takes from the queues' send pools in turn: any list can
///   go out on any queue (one UMEM).
public final class MultiQueuePort: IntermediateDriver, @unchecked Sendable {
    /// Which flow a list belongs to: lists with the same value go out on the
    /// same queue, in order.
    public typealias FlowHash = @Sendable (PacketList) -> UInt32

    private let flowHash: FlowHash
    private let queueCount: Int
    private let nextAllocation = ManagedAtomic<Int>(0)
    /// The UMEM all the queues share (nil when opened over the caller's layers).
    public let umem: UMEM?

    init(name: String, handlers: PortHandlers, queues: Int, umem: UMEM?, flowHash: @escaping FlowHash) {
        self.flowHash = flowHash
        self.queueCount = queues
        self.umem = umem
        super.init(name: name, handlers: handlers)
    }

    /// Opens a port on each of `queues` queues of `configuration.interface`,
    /// from `configuration.queue` on, all on one UMEM (`umem`, or one made
    /// for them), and this layer over them.
    public static func open(
        _ configuration: PortConfiguration,
        queues: Int,
        umem: UMEM? = nil,
        flowHash: FlowHash? = nil,
        onReceive: @escaping @Sendable (ReceiveIndication) -> Void,
        onSendComplete: @escaping @Sendable (SendCompletions) -> Void
    ) throws(AFXDPError) -> MultiQueuePort {
        guard queues >= 1, queues <= 64 else {
            throw .invalidConfiguration("a multi-queue port needs 1 to 64 queues, not \(queues)")
        }
        try configuration.validate()
        let umem = if let umem { umem } else { try UMEM(frameCount: queues * configuration.umemFrameCount, frameSize: configuration.frameSize) }
        var name = "multi-queue port over \(queues) queue\(queues == 1 ? "" : "s") of \(configuration.interface)"
        if flowHash != nil { name += " (caller's flow hash)" }
        let driver = MultiQueuePort(
            name: name, handlers: PortHandlers(onReceive: onReceive, onSendComplete: onSendComplete), queues: queues, umem: umem,
            flowHash: flowHash ?? MultiQueuePort.defaultFlowHash)
        var openers: [LowerOpener] = []
        for offset in 0..<queues {
            var queueConfiguration = configuration
            queueConfiguration.queue = configuration.queue + UInt32(offset)
            openers.append(XDPPort.below(queueConfiguration, umem: umem))
        }
        try driver.core.bind(openers)
        return driver
    }

    /// This layer over queues the caller opens (`XDPPort.below(...)` for each,
    /// on one UMEM, or simulated ports, or other drivers), in queue order.
    public static func open(
        over queues: [LowerOpener],
        name: String = "multi-queue port",
        flowHash: FlowHash? = nil,
        onReceive: @escaping @Sendable (ReceiveIndication) -> Void,
        onSendComplete: @escaping @Sendable (SendCompletions) -> Void
    ) throws(AFXDPError) -> MultiQueuePort {
        guard (1...64).contains(queues.count) else {
            throw .invalidConfiguration("a multi-queue port needs 1 to 64 queues, not \(queues.count)")
        }
        let driver = MultiQueuePort(
            name: "\(name) over \(queues.count) queues", handlers: PortHandlers(onReceive: onReceive, onSendComplete: onSendComplete),
            queues: queues.count, umem: nil, flowHash: flowHash ?? MultiQueuePort.defaultFlowHash)
        try driver.core.bind(queues)
        return driver
    }

    /// How a driver above opens a multi-queue port below it.
    public static func below(
        _ configuration: PortConfiguration, queues: Int, umem: UMEM? = nil, flowHash: FlowHash? = nil
    ) -> LowerOpener {
        { handlers throws(AFXDPError) in
            try MultiQueuePort.open(
                configuration, queues: queues, umem: umem, flowHash: flowHash, onReceive: handlers.onReceive,
                onSendComplete: handlers.onSendComplete)
        }
    }

    override func route(_ list: PacketList) throws(AFXDPError) -> Int {
        queueCount == 1 ? 0 : Int(flowHash(list) % UInt32(queueCount))
    }

    override func allocate(packetCount: Int) throws(AFXDPError) -> PacketList? {
        let first = nextAllocation.loadThenWrappingIncrement(ordering: .relaxed)
        for offset in 0..<queueCount {
            if let list = try core.lowers[(first &+ offset) % queueCount].allocateList(packetCount: packetCount) { return list }
        }
        return nil
    }

    /// The queue a list this port indicated came in on (nil if it is not
    /// one it indicated and the caller still holds). Any layer above may ask.
    public func arrivalQueue(of list: PacketList) -> Int? { core.heldAboveBinding(of: list) }

    /// The queue a list would go out on.
    public func queue(for list: PacketList) -> Int { queueCount == 1 ? 0 : Int(flowHash(list) % UInt32(queueCount)) }

    /// FNV-1a over the first frame's flow fields: IPv4 or IPv6 addresses,
    /// protocol and (TCP, UDP, SCTP) ports; otherwise its MAC addresses and
    /// EtherType. A list whose first packet cannot be read hashes to 0.
    public static let defaultFlowHash: FlowHash = { list in
        var hash: UInt32 = 2_166_136_261
        @inline(__always) func mix(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) {
            for index in range { hash = (hash ^ UInt32(bytes[index])) &* 16_777_619 }
        }
        _ = try? list.packets.withPacket(at: 0) { packet throws(AFXDPError) in
            let frame = UnsafeRawBufferPointer(try packet.bytes)
            guard frame.count >= 14 else { return }
            var l3 = 14
            var etherType = UInt16(frame[12]) << 8 | UInt16(frame[13])
            if etherType == 0x8100 || etherType == 0x88A8, frame.count >= 18 {
                etherType = UInt16(frame[16]) << 8 | UInt16(frame[17])
                l3 = 18
            }
            var transport: (protocol: UInt8, offset: Int)?
            switch etherType {
            case 0x0800 where frame.count >= l3 + 20:
                mix(frame, l3 + 12..<l3 + 20)
                transport = (frame[l3 + 9], l3 + Int(frame[l3] & 0x0F) * 4)
            case 0x86DD where frame.count >= l3 + 40:
                mix(frame, l3 + 8..<l3 + 40)
                transport = (frame[l3 + 6], l3 + 40)
            default:
                mix(frame, 0..<14)
            }
            if let transport, transport.protocol == 6 || transport.protocol == 17 || transport.protocol == 132,
               frame.count >= transport.offset + 4 {
                hash = (hash ^ UInt32(transport.protocol)) &* 16_777_619
                mix(frame, transport.offset..<transport.offset + 4)
            }
        }
        return hash
    }
}
