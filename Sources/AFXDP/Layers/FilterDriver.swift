/// A filter: an intermediate driver over one layer below that sees every
/// list going down and coming up, and may change or drop it. With no hooks it
/// passes everything through (the pass-through layer the benchmarks stack).
/// It is how to write a driver of your own: give it hooks.
///
///     let counter = Counter()
///     let filter = try FilterDriver.open(
///         name: "counter", over: XDPPort.below(configuration),
///         onSend: { list in counter.sent += try list.count },
///         onReceiveFilter: { list in counter.received += (try? list.count) ?? 0; return .pass },
///         onReceive: { indication in ... }, onSendComplete: { batch in ... })
///
/// The hooks run where the layer's own work runs: `onSend` inside `send` (on
/// the caller's thread; it must not call `poll`), `onReceiveFilter` inside
/// the lower layer's receive handler. Both may read and write the list's
/// packets; neither may keep the list.
public final class FilterDriver: IntermediateDriver, @unchecked Sendable {
    /// What happens to a received list.
    public enum ReceiveVerdict: Sendable {
        /// Indicate it up.
        case pass
        /// Give it back below at once.
        case drop
    }

    /// Sees each list sent, inside `send`, before it goes down; throwing
    /// refuses the send (`send` throws it, and the list stays the caller's).
    public typealias SendHook = @Sendable (PacketList) throws(AFXDPError) -> Void
    /// Sees each list received from below, inside the lower layer's receive
    /// handler, and says whether it goes up.
    public typealias ReceiveHook = @Sendable (PacketList) -> ReceiveVerdict

    private let sendHook: SendHook?
    private let receiveHook: ReceiveHook?

    init(name: String, handlers: PortHandlers, onSend: SendHook?, onReceiveFilter: ReceiveHook?) {
        sendHook = onSend
        receiveHook = onReceiveFilter
        super.init(name: name, handlers: handlers)
    }

    /// Opens the layer below through `lower` with this filter as its caller.
    /// - Parameters:
    ///   - name: what the layer calls itself in `stack`.
    ///   - lower: opens what lies below (`XDPPort.below(...)` or another driver).
    ///   - onSend: sees each list sent, before it goes down (throw to refuse it).
    ///   - onReceiveFilter: sees each list received, and says whether it goes up.
    ///   - onReceive: the caller's receive handler, as for a port.
    ///   - onSendComplete: the caller's completion handler, as for a port.
    public static func open(
        name: String = "filter",
        over lower: @escaping LowerOpener,
        onSend: SendHook? = nil,
        onReceiveFilter: ReceiveHook? = nil,
        onReceive: @escaping @Sendable (ReceiveIndication) -> Void,
        onSendComplete: @escaping @Sendable (SendCompletions) -> Void
    ) throws(AFXDPError) -> FilterDriver {
        let driver = FilterDriver(
            name: name, handlers: PortHandlers(onReceive: onReceive, onSendComplete: onSendComplete), onSend: onSend,
            onReceiveFilter: onReceiveFilter)
        try driver.core.bind([lower])
        return driver
    }

    /// How a driver above opens this filter (stacking it further up).
    public static func below(
        name: String = "filter", over lower: @escaping LowerOpener, onSend: SendHook? = nil, onReceiveFilter: ReceiveHook? = nil
    ) -> LowerOpener {
        { handlers throws(AFXDPError) in
            try FilterDriver.open(
                name: name, over: lower, onSend: onSend, onReceiveFilter: onReceiveFilter, onReceive: handlers.onReceive,
                onSendComplete: handlers.onSendComplete)
        }
    }

    override func route(_ list: PacketList) throws(AFXDPError) -> Int {
        if let sendHook { try sendHook(list) }
        return 0
    }

    override func received(_ list: PacketList, from binding: Int) -> LayerReceiveAction {
        guard let receiveHook else { return .up }
        switch receiveHook(list) {
        case .pass: return .up
        case .drop: return .drop
        }
    }
}

/// A filter that sets each outgoing list's 802.1p priority from its frames,
/// so that a caller who sets no priority still gets the port's priority
/// ordering: the VLAN tag's PCP where a frame has one, else the IP class
/// (the top three bits of the IPv4 DSCP or IPv6 traffic class). A list
/// takes the highest priority among its frames; a list with no frame it can
/// classify keeps the caller's. The caller's priority is back on the list
/// when it completes.
public final class PriorityClassifier: IntermediateDriver, @unchecked Sendable {
    /// Opens the layer below through `lower` with this classifier as its
    /// caller; `onReceive` and `onSendComplete` are the caller's handlers,
    /// as for a port.
    public static func open(
        over lower: @escaping LowerOpener,
        onReceive: @escaping @Sendable (ReceiveIndication) -> Void,
        onSendComplete: @escaping @Sendable (SendCompletions) -> Void
    ) throws(AFXDPError) -> PriorityClassifier {
        let driver = PriorityClassifier(
            name: "priority classifier (VLAN PCP, IP DSCP)", handlers: PortHandlers(onReceive: onReceive, onSendComplete: onSendComplete))
        try driver.core.bind([lower])
        return driver
    }

    /// How a driver above opens this classifier (stacking it further up).
    public static func below(over lower: @escaping LowerOpener) -> LowerOpener {
        { handlers throws(AFXDPError) in
            try PriorityClassifier.open(over: lower, onReceive: handlers.onReceive, onSendComplete: handlers.onSendComplete)
        }
    }

    override func route(_ list: PacketList) throws(AFXDPError) -> Int {
        var highest = -1
        try list.packets.forEach { packet throws(AFXDPError) in
            if let priority = Self.priority(of: UnsafeRawBufferPointer(try packet.bytes)), priority > highest { highest = priority }
        }
        if highest >= 0 { try list.setPriority(highest) }
        return 0
    }

    /// The 802.1p priority a frame asks for, if it says.
    static func priority(of frame: UnsafeRawBufferPointer) -> Int? {
        guard frame.count >= 14 else { return nil }
        let etherType = UInt16(frame[12]) << 8 | UInt16(frame[13])
        let l3 = 14
        switch etherType {
        case 0x8100, 0x88A8:
            // Tagged: the (outer) tag's PCP decides.
            guard frame.count >= 16 else { return nil }
            return Int(frame[14] >> 5)
        case 0x0800:
            guard frame.count >= l3 + 2, frame[l3] >> 4 == 4 else { return nil }
            return Int(frame[l3 + 1] >> 5)  // the DSCP's class: TOS bits 7-5
        case 0x86DD:
            guard frame.count >= l3 + 2, frame[l3] >> 4 == 6 else { return nil }
            // The traffic class straddles the first two bytes: its top three bits.
            return Int((frame[l3] & 0x0F) >> 1)
        default:
            return nil
        }
    }
}
