/// A bridge (forwarder / filter) between two layers below, side A and side
/// B: what is received on one side is sent on the other, as it is, without
/// a copy when both sides share a UMEM. A verdict function, given each
/// packet, may instead drop it or indicate it up to the bridge's caller.
///
/// - A received list whose packets all get one verdict moves as a whole:
///   forwarded as the same list (zero-copy on a shared UMEM; it goes home
///   when the other side has sent it), given back at once (drop), or
///   indicated up. A list with mixed verdicts is split by copying: the
///   packets to forward into a fresh list of the other side's pool, those to
///   indicate into a fresh list of the arrival side's pool; the original
///   goes home at once.
/// - The bridge's caller sends through it like through a port: to side B
///   unless it says otherwise (`sendSide`, or `send(_:on:)`); lists come
///   from that side's pool.
/// - Forwarding is driven by `poll()` (which polls both sides), like all of
///   a port's work.
public final class Bridge: IntermediateDriver, @unchecked Sendable {
    /// One of the bridge's two sides: the layer bound through `a` or `b` at `open`.
    public enum Side: Int, Sendable, CustomStringConvertible {
        /// Side A, the layer bound first (`a:`), and side B, the one bound
        /// second (`b:`); the caller's sends go to B unless it says otherwise.
        case a = 0, b = 1
        /// The opposite side: where a packet received on this one is forwarded.
        public var other: Side { self == .a ? .b : .a }
        /// "A" or "B".
        public var description: String { self == .a ? "A" : "B" }
    }

    /// What happens to one received packet.
    public enum Verdict: Sendable {
        /// Out on the other side.
        case forward
        /// Given back: it goes no further.
        case drop
        /// Up to the bridge's caller, through its receive handler.
        case indicate
    }

    /// Decides for each packet received on `side`. Runs inside the arrival
    /// side's receive pass; must not keep the packet.
    public typealias VerdictFunction = @Sendable (_ side: Side, _ packet: borrowing Packet) -> Verdict

    private let verdict: VerdictFunction?
    /// Where the caller's sends go, and where `allocateList` takes from.
    public let sendSide: Side
    /// Per side: scratch for one list's verdicts (the side's receive pass
    /// owns its own; grown, rarely, to the longest list seen).
    private let scratch: [VerdictScratch]

    init(name: String, handlers: PortHandlers, verdict: VerdictFunction?, sendSide: Side) {
        self.verdict = verdict
        self.sendSide = sendSide
        scratch = [VerdictScratch(), VerdictScratch()]
        super.init(name: name, handlers: handlers)
    }

    /// Opens both sides through the given openers, with this bridge as their caller.
    public static func open(
        a: @escaping LowerOpener,
        b: @escaping LowerOpener,
        verdict: VerdictFunction? = nil,
        sendSide: Side = .b,
        onReceive: @escaping @Sendable (ReceiveIndication) -> Void,
        onSendComplete: @escaping @Sendable (SendCompletions) -> Void
    ) throws(AFXDPError) -> Bridge {
        let bridge = Bridge(
            name: "bridge" + (verdict == nil ? " (forward all)" : " (caller's verdicts)"),
            handlers: PortHandlers(onReceive: onReceive, onSendComplete: onSendComplete), verdict: verdict, sendSide: sendSide)
        try bridge.core.bind([a, b])
        return bridge
    }

    /// Opens a port on each interface, both on one UMEM (`umem`, or one made
    /// for the two: forwarding without a copy), and the bridge over them.
    public static func open(
        a: PortConfiguration,
        b: PortConfiguration,
        umem: UMEM? = nil,
        verdict: VerdictFunction? = nil,
        sendSide: Side = .b,
        onReceive: @escaping @Sendable (ReceiveIndication) -> Void,
        onSendComplete: @escaping @Sendable (SendCompletions) -> Void
    ) throws(AFXDPError) -> Bridge {
        try a.validate()
        try b.validate()
        guard a.frameSize == b.frameSize else {
            throw .invalidConfiguration(
                "the two sides of a bridge on one UMEM need one frame size (A: \(a.frameSize), B: \(b.frameSize))")
        }
        let umem = if let umem { umem } else { try UMEM(frameCount: a.umemFrameCount + b.umemFrameCount, frameSize: a.frameSize) }
        return try open(
            a: XDPPort.below(a, umem: umem), b: XDPPort.below(b, umem: umem), verdict: verdict, sendSide: sendSide,
            onReceive: onReceive, onSendComplete: onSendComplete)
    }

    /// Sends on the given side.
    public func send(_ list: PacketList, on side: Side) throws(AFXDPError) {
        try send(list, binding: side.rawValue)
    }

    /// The side a list indicated by this bridge arrived on (nil if it is not
    /// one the bridge indicated and the caller still holds).
    public func arrivalSide(of list: PacketList) -> Side? {
        guard list.isOwnedByCaller, let binding = core.heldAboveBinding(of: list) else { return nil }
        return Side(rawValue: binding)
    }

    /// The port (or layer) on one side.
    public func lower(_ side: Side) -> any PacketPort { core.lowers[side.rawValue] }

    override func route(_ list: PacketList) throws(AFXDPError) -> Int { sendSide.rawValue }

    override func allocate(packetCount: Int) throws(AFXDPError) -> PacketList? {
        try core.lowers[sendSide.rawValue].allocateList(packetCount: packetCount)
    }

    override func received(_ list: PacketList, from binding: Int) -> LayerReceiveAction {
        let side = Side(rawValue: binding)!
        let other = side.other.rawValue
        guard let verdict else {
            core.forward(list, to: other)
            return .consumed
        }
        guard let count = try? list.count else { return .drop }
        let scratch = scratch[binding]
        scratch.reserve(count)
        var forwards = 0
        var indications = 0
        var index = 0
        do {
            try list.packets.forEach { packet throws(AFXDPError) in
                let decision = verdict(side, packet)
                scratch.forward[index] = decision == .forward
                scratch.indicate[index] = decision == .indicate
                if decision == .forward { forwards += 1 }
                if decision == .indicate { indications += 1 }
                index += 1
            }
        } catch {
            return .drop
        }
        if forwards == count {
            core.forward(list, to: other)
            return .consumed
        }
        if indications == count { return .up }
        // Mixed (or all dropped): what goes on is copied out, the original goes home.
        if forwards > 0 {
            core.forward(
                list, to: other, selecting: UnsafeBufferPointer(start: scratch.forward, count: count), count: forwards)
        }
        if indications > 0 {
            core.indicateCopy(
                of: list, selecting: UnsafeBufferPointer(start: scratch.indicate, count: count), count: indications,
                binding: binding, lowResources: false)
        }
        return .drop
    }
}

/// One side's verdicts for the list being decided.
final class VerdictScratch: @unchecked Sendable {
    // @unchecked: used only by its side's receive pass, one at a time.
    private(set) var forward = UnsafeMutablePointer<Bool>.allocate(capacity: 64)
    private(set) var indicate = UnsafeMutablePointer<Bool>.allocate(capacity: 64)
    private var capacity = 64

    func reserve(_ count: Int) {
        guard count > capacity else { return }
        forward.deallocate()
        indicate.deallocate()
        capacity = max(count, 2 * capacity)
        forward = .allocate(capacity: capacity)
        indicate = .allocate(capacity: capacity)
    }

    deinit {
        forward.deallocate()
        indicate.deallocate()
    }
}
