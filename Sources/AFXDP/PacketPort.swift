/// What a caller holds, whether it is a port or a stack of intermediate
/// drivers over ports: the one interface above every layer. Code written
/// against a `PacketPort` runs unchanged over an `XDPPort`, a `Bridge` side, a
/// `MultiQueuePort`, a `PriorityClassifier` or a driver of the caller's own.
///
/// Every conforming type keeps the port's contract (see `XDPPort`):
/// - `send` never refuses for lack of resources; each list sent completes
///   exactly once, through the completion handler, with a status, in the
///   order sent within a priority;
/// - a received list is the caller's, untouched, until `returnList`;
/// - handlers run only inside `poll`, `pause`, `close` (or a thread the
///   layer or a port below runs), never inside `send`, `returnList`,
///   `allocateList` or `restart`, and may call back into any layer;
/// - every method is safe from any thread, and from inside handlers.
public protocol PacketPort: AnyObject, Sendable {
    /// Queues a list for sending; it completes through the completion handler.
    func send(_ list: PacketList) throws(AFXDPError)
    /// Gives back a list that was indicated, completed or allocated.
    func returnList(_ list: PacketList) throws(AFXDPError)
    /// Takes a list of `packetCount` empty frames from a send pool below;
    /// nil when none is free right now.
    func allocateList(packetCount: Int) throws(AFXDPError) -> PacketList?
    /// Drives every port below: completions and indications come up through
    /// the handlers. Returns whether anything moved.
    @discardableResult
    func poll() -> Bool
    /// Stops (true) or resumes (false) indicating received lists: while
    /// held, arriving frames wait in the kernel's RX ring (and beyond it are
    /// dropped by the kernel, counted in `rxRingFull`), returned lists still
    /// go back to the fill ring, and sends go on. A list already taken from
    /// the ring may still be indicated after the call. Any thread, any time,
    /// also from inside a handler; runs no handler. This is how a consumer
    /// slower than the wire pushes back (`AsyncPort` does, when its buffer
    /// of received lists is full).
    func holdReceive(_ hold: Bool)
    /// Sends complete with `.paused` until `restart`; receive goes on.
    func pause(timeout: Duration)
    /// Resumes sending after `pause`, on this layer and every port below.
    /// Runs no handler.
    func restart()
    /// Completes everything outstanding, closes every port below, and brings
    /// every frame the caller does not hold home.
    func close(timeout: Duration)
    /// Where the layer is in its life (`PortState`): running, paused,
    /// closing or closed.
    var currentState: PortState { get }
    /// Whether sends are queued, in flight, or completed and not yet delivered.
    var hasSendsOutstanding: Bool { get }
    /// Counters, summed over the ports below.
    var statistics: Statistics { get }
    /// Where the frames are, summed over the ports below.
    var poolStatus: XDPPort.PoolStatus { get }
    /// What this is and what it is made of, down to the ports.
    var stack: StackDescription { get }
    /// The UMEMs the frames of this stack live in (a port: its one).
    var umems: [UMEM] { get }
}

extension PacketPort {
    /// Pauses sending, waiting up to 2 seconds for what is in flight
    /// (`pause(timeout:)`).
    public func pause() { pause(timeout: .seconds(2)) }
    /// Closes (`close(timeout:)`), giving the kernel up to 1 second to send
    /// what it has; the rest completes with `.closing`.
    public func close() { close(timeout: .seconds(1)) }
}

/// The two handlers a caller gives the layer it opens: what a driver passes
/// down when it opens the layer below it (so that the layer below calls the
/// driver, and the driver calls its own caller).
public struct PortHandlers: Sendable {
    /// Called with each received list (see `ReceiveIndication`).
    public var onReceive: @Sendable (ReceiveIndication) -> Void
    /// Called with each batch of completed sends (see `SendCompletions`).
    public var onSendComplete: @Sendable (SendCompletions) -> Void

    /// The two handlers, to pass to a `LowerOpener`.
    public init(
        onReceive: @escaping @Sendable (ReceiveIndication) -> Void,
        onSendComplete: @escaping @Sendable (SendCompletions) -> Void
    ) {
        self.onReceive = onReceive
        self.onSendComplete = onSendComplete
    }
}

/// How a driver opens what lies below it: given the handlers the driver
/// wants called, open a port (or another driver) and return it. Made by
/// `XDPPort.below(_:umem:)`, `MultiQueuePort.below(...)`, and so on.
public typealias LowerOpener = @Sendable (PortHandlers) throws(AFXDPError) -> any PacketPort

/// A stack, as a tree from the layer the caller holds down to the ports
/// (NDIS's binding list): each layer says what it is and what it binds to.
public struct StackDescription: Sendable, CustomStringConvertible {
    /// Whether a layer is a port or an intermediate driver.
    public enum Kind: String, Sendable {
        /// A port over one AF_XDP socket (the miniport).
        case port
        /// An intermediate driver over the layers in `lower`.
        case intermediate
    }
    /// Whether the layer is a port or an intermediate driver.
    public var kind: Kind
    /// The layer's name and what distinguishes it ("port veth0 queue 1",
    /// "multi-queue port over 2 queues", ...).
    public var name: String
    /// For an intermediate layer: lists and frames it has borrowed from the
    /// layers below and not given back, and the time from a lower completion
    /// to the upper completion it triggers.
    public var layerStatistics: LayerStatistics?
    /// What the layer binds to, in binding order.
    public var lower: [StackDescription]

    /// Describes one layer, with the descriptions of the layers it binds to
    /// (their `stack`) as `lower`.
    public init(kind: Kind, name: String, layerStatistics: LayerStatistics? = nil, lower: [StackDescription] = []) {
        self.kind = kind
        self.name = name
        self.layerStatistics = layerStatistics
        self.lower = lower
    }

    /// Layers from the top, depth first.
    public var layers: [StackDescription] { [self] + lower.flatMap(\.layers) }

    /// How many layers deep the stack is (a port alone: 1).
    public var depth: Int { 1 + (lower.map(\.depth).max() ?? 0) }

    /// One line per layer, indented by depth.
    public var description: String {
        var lines: [String] = []
        func add(_ layer: StackDescription, _ indent: String) {
            lines.append(indent + "\(layer.kind == .port ? "port" : "layer"): \(layer.name)")
            for below in layer.lower { add(below, indent + "  ") }
        }
        add(self, "")
        return lines.joined(separator: "\n")
    }
}

/// What an intermediate layer has borrowed and how promptly it gives it
/// back (the seed's "borrowed resources go back promptly").
public struct LayerStatistics: Sendable, Equatable {
    /// Upper sends passed down and not yet completed upward.
    public var sendsOutstanding = 0
    /// Received lists indicated upward and not yet returned by the caller.
    public var receivesHeldAbove = 0
    /// Frames of those lists.
    public var framesHeldAbove = 0
    /// Received lists the layer consumed itself (dropped, or forwarded on).
    public var receivesConsumed = 0
    /// Lists sent through a fresh descriptor, frames copied (the lower port
    /// is on another UMEM).
    public var copiedLists = 0
    /// Frames copied that way.
    public var copiedFrames = 0
    /// Frames the layer meant to pass on (forwarding) but dropped: the
    /// lower layer was closed, or its pool had no list for a copy.
    public var forwardDroppedFrames = 0
    /// Upper completions made.
    public var upperCompletions = 0
    /// Median time from a lower completion reaching the layer to the upper
    /// completion it triggered, in nanoseconds, over the layer's life; 0
    /// before the first.
    public var completionDelayP50Nanoseconds = 0
    /// 99th percentile of that time, in nanoseconds; 0 before the first.
    public var completionDelayP99Nanoseconds = 0
    /// Longest that time has been, in nanoseconds; 0 before the first.
    public var completionDelayMaxNanoseconds = 0

    /// Every count and time zero.
    public init() {}
}
