import Logging

/// How to open an `XDPPort`.
public struct PortConfiguration: Sendable {
    /// The interface to open, e.g. "eth0" or one end of a veth pair.
    public var interface: String
    /// The interface queue to bind to (its RX queue is what the socket sees).
    public var queue: UInt32 = 0
    /// Open the port inside this network namespace (a name under
    /// /var/run/netns, as `ip netns` makes). nil: the caller's namespace.
    public var networkNamespace: String?

    /// Fill ring: free frames the engine posts for the kernel to receive
    /// into. 4096.
    ///
    /// Ring sizes are in descriptors, each a power of two from 8 to 1048576.
    /// The receive side's two are 4096: while the port's thread is away,
    /// arriving frames wait in the RX ring on frames posted to the fill
    /// ring, and past either ring's size the kernel drops them. On veth in
    /// copy mode the kernel's receive softirq holds a thread off for 5 to
    /// 10 ms at a time; at 0.35 Mpps a ring of 2048 lasts 6 ms (socket
    /// drops in 9 duplex runs of 10), one of 4096 about 12 ms (1 of 18).
    public var fillRingSize: UInt32 = 4096
    /// Completion ring: frames the kernel has sent, back to the engine. 2048.
    public var completionRingSize: UInt32 = 2048
    /// RX ring: received frames, from the kernel to the engine. 4096 (why:
    /// see `fillRingSize`).
    public var receiveRingSize: UInt32 = 4096
    /// TX ring: frames handed to the kernel to send. 2048; sends beyond it
    /// wait in the engine, never refused.
    public var transmitRingSize: UInt32 = 2048
    /// UMEM frame size: 2048 or 4096 bytes.
    public var frameSize: Int = 4096
    /// UMEM frames for receiving; nil: twice the fill ring.
    public var receiveFrameCount: Int?
    /// UMEM frames for sending; nil: twice the TX ring.
    public var sendFrameCount: Int?
    /// Most packets indicated in one received list.
    public var receiveBatchSize: UInt32 = 64
    /// Multi-buffer AF_XDP (XDP_USE_SG, Linux 6.6): a packet longer than a
    /// frame (a jumbo frame) arrives, and is sent, as a run of entries of
    /// one list, each a frame, every one but the last marked
    /// `Packet.continues`. Off: such packets are dropped by the kernel. A
    /// port on a shared UMEM takes the UMEM's first port's setting.
    public var multiBuffer = false

    /// Whether the socket binds in zero-copy mode (XDP_ZEROCOPY), where the
    /// NIC reads and writes the UMEM itself, or copy mode (XDP_COPY).
    public enum ZeroCopy: Sendable {
        /// Copy mode always.
        case never
        /// Zero-copy if the driver supports it, else copy mode (and the port says so).
        case preferred
        /// Zero-copy or fail.
        case required
    }
    /// Zero-copy or copy mode; `.preferred` by default. `XDPPort.isZeroCopy`
    /// says which the port got. Ports on one UMEM share its first port's mode.
    public var zeroCopy: ZeroCopy = .preferred

    /// Only kick the kernel when a ring's need_wakeup flag asks for it.
    public var useNeedWakeup = true

    /// Busy polling (SO_PREFER_BUSY_POLL, SO_BUSY_POLL, SO_BUSY_POLL_BUDGET); nil: off.
    public struct BusyPoll: Sendable {
        /// How long a busy poll may spin for packets (SO_BUSY_POLL), in
        /// microseconds; 20 by default.
        public var timeoutMicroseconds: Int32 = 20
        /// Most packets the driver processes in one busy poll
        /// (SO_BUSY_POLL_BUDGET); 64 by default.
        public var budget: Int32 = 64
        /// Busy polling with the given timeout (microseconds) and budget (packets).
        public init(timeoutMicroseconds: Int32 = 20, budget: Int32 = 64) {
            self.timeoutMicroseconds = timeoutMicroseconds
            self.budget = budget
        }
    }
    /// Busy-poll settings for the socket; nil (the default): no busy polling.
    public var busyPoll: BusyPoll?

    /// How the XDP program attaches to the interface.
    public enum AttachMode: Sendable {
        /// Native (driver) mode where the driver has it, else generic.
        case automatic
        /// Native (driver) mode (XDP_FLAGS_DRV_MODE) or fail: the driver
        /// runs the program before it makes a socket buffer.
        case native
        /// Generic mode (XDP_FLAGS_SKB_MODE): any interface, but the kernel
        /// runs the program after making a socket buffer, so slower.
        case generic
    }
    /// How the XDP program attaches; `.automatic` by default.
    /// `XDPPort.isAttachedNatively` says which mode it got.
    public var attachMode: AttachMode = .automatic

    /// Only frames of this EtherType reach the socket; the rest go to the
    /// kernel's stack. nil: every frame.
    public var etherTypeFilter: UInt16?

    /// Run a thread of the port's own that polls both directions, so that
    /// completions and indications arrive without the caller calling `poll`.
    /// The thread keeps the port alive until `close()`: call it.
    public var ownThread = false

    /// How long sends wait for a link that is down (the interface set down,
    /// or without carrier, as a veth whose peer is down) before the lists
    /// the engine still holds complete with `.linkDown`; new sends then
    /// complete so too until the link is back. What the kernel already has in
    /// the TX ring (at most `transmitRingSize` frames) waits for the link or
    /// for close. nil: sends wait for the link however long it takes.
    public var linkDownTimeout: Duration? = .seconds(5)

    /// Frames out and the completion ring still for this long: the port
    /// reports a stall (`PortEvent.completionStalled`,
    /// `statistics.send.completionStalls`) and kicks the kernel again.
    public var completionStallTimeout: Duration = .seconds(1)

    /// ...and still so after this long: the port gives up on the kernel and
    /// closes itself, every send still out completing with `.closing`
    /// (`failure` says `.completionStalled`). nil: it waits for ever.
    /// Not counted while the link is down: that silence has its own timeout.
    public var completionStallFailure: Duration? = .seconds(30)

    /// Told what happens to the port's link and kernel (`PortEvent`), where
    /// and as handlers are (see `XDPPort`): a link going down or up, a stall,
    /// the port closing itself.
    public var onEvent: (@Sendable (PortEvent) -> Void)?
    /// Where the port says what it chose or saw (swift-log): at `.notice`,
    /// fallbacks (copy mode, generic XDP) and a dead process's program
    /// replaced; at `.warning` and `.error`, the events of `onEvent` and a
    /// fill ring running low because the caller holds the frames; at
    /// `.info`, open and close. Never from a hot path, and only where
    /// handlers may run (so a log handler may call back into the port).
    /// Silent by default.
    public var logger = Logger(label: "swift-afxdp", factory: { _ in SwiftLogNoOpLogHandler() })

    /// A configuration for `queue` of `interface` (in `networkNamespace`,
    /// if given), every other setting at its default.
    public init(interface: String, queue: UInt32 = 0, networkNamespace: String? = nil) {
        self.interface = interface
        self.queue = queue
        self.networkNamespace = networkNamespace
    }

    var resolvedReceiveFrameCount: Int { receiveFrameCount ?? Int(fillRingSize) * 2 }
    var resolvedSendFrameCount: Int { sendFrameCount ?? Int(transmitRingSize) * 2 }
    /// The UMEM frames a port so configured takes: `receiveFrameCount` plus
    /// `sendFrameCount` (their defaults resolved). Size a shared UMEM with it.
    public var umemFrameCount: Int { resolvedReceiveFrameCount + resolvedSendFrameCount }

    /// Checks every value, with a message that says what to change.
    func validate() throws(AFXDPError) {
        for (name, size) in [
            ("fillRingSize", fillRingSize), ("completionRingSize", completionRingSize),
            ("receiveRingSize", receiveRingSize), ("transmitRingSize", transmitRingSize),
        ] {
            guard size >= 8, size <= 1 << 20 else {
                throw .invalidConfiguration("\(name) \(size) is out of range; use a power of two from 8 to 1048576")
            }
            guard size & (size - 1) == 0 else {
                let lower = UInt32(1) << (31 - size.leadingZeroBitCount)
                throw .invalidConfiguration(
                    "\(name) \(size) is not a power of two; the kernel's rings need one, e.g. \(lower) or \(lower * 2)")
            }
        }
        guard frameSize == 2048 || frameSize == 4096 else {
            throw .invalidConfiguration("frameSize \(frameSize) is not supported; use 2048 or 4096")
        }
        guard interface.utf8.count > 0, interface.utf8.count < 16 else {
            throw .invalidConfiguration("interface name '\(interface)' must be 1 to 15 characters")
        }
        guard resolvedReceiveFrameCount >= Int(receiveBatchSize), resolvedSendFrameCount >= 1 else {
            throw .invalidConfiguration(
                "receiveFrameCount must be at least receiveBatchSize (\(receiveBatchSize)) and sendFrameCount at least 1")
        }
        guard receiveBatchSize >= 1, receiveBatchSize <= receiveRingSize else {
            throw .invalidConfiguration("receiveBatchSize \(receiveBatchSize) must be 1...receiveRingSize (\(receiveRingSize))")
        }
        guard completionStallTimeout > .zero else {
            throw .invalidConfiguration("completionStallTimeout must be longer than zero, e.g. .seconds(1)")
        }
        if let completionStallFailure, completionStallFailure < completionStallTimeout {
            throw .invalidConfiguration(
                "completionStallFailure (\(completionStallFailure)) must be at least completionStallTimeout (\(completionStallTimeout)), or nil for never")
        }
        if let linkDownTimeout, linkDownTimeout < .zero {
            throw .invalidConfiguration("linkDownTimeout must not be negative; nil waits for the link however long it takes")
        }
        let total = resolvedReceiveFrameCount + resolvedSendFrameCount
        guard total <= 1 << 22 else {
            throw .invalidConfiguration("\(total) UMEM frames is too many; at most 4194304")
        }
    }
}
