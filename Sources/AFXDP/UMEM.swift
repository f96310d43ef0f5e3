import AFXDPSystem

/// The memory every frame lives in: the NIC's memory, in NDIS terms. Made
/// once (frame count, frame size, headroom), it outlives every port bound to
/// it and is unmapped only when the last port and the last list handle into
/// it are gone.
///
/// Any number of ports open over one UMEM (`XDPPort.open(_:umem:...)`): queues
/// of one interface, and different interfaces. Each port takes its own
/// frames from it (its receive pool and its send pool), and a list received
/// on one port can be sent on another without a copy: its frames go out from
/// where they are, and once sent and returned they go home to the port that
/// received them. A port opened without a UMEM makes one of its own.
///
/// What the kernel makes the ports of one UMEM share: the first port bound
/// to it sets the copy or zero-copy mode, need-wakeup, and the fill and
/// completion ring sizes for all; a later port must agree (it is told how if
/// not). The first port's socket registers the UMEM with the kernel and
/// stays open, its interface queue held, until the UMEM's last port closes.
public final class UMEM: @unchecked Sendable {
    // @unchecked: immutable but for `registration` and `isClosed`, which are
    // guarded by `registrationLock`.
    /// How many frames the UMEM holds, shared out among its ports' pools.
    public let frameCount: Int
    /// 2048 or 4096 bytes.
    public let frameSize: Int
    /// Bytes kept free at the start of every frame, before the packet.
    public let headroom: Int
    let area: UMEMArea
    let table: ListTable

    // MARK: The kernel's registration, under registrationLock
    let registrationLock = PThreadLock()
    /// Made by the first socket bound, gone with the last.
    var registration: UMEMRegistration?
    @exclusivity(unchecked) private var closed = false

    /// Makes a UMEM of `frameCount` frames of `frameSize` bytes.
    public init(frameCount: Int, frameSize: Int = 4096, headroom: Int = 0) throws(AFXDPError) {
        guard frameSize == 2048 || frameSize == 4096 else {
            throw .invalidConfiguration("frameSize \(frameSize) is not supported; use 2048 or 4096")
        }
        guard frameCount >= 1, frameCount <= 1 << 22 else {
            throw .invalidConfiguration("a UMEM holds 1 to 4194304 frames, not \(frameCount)")
        }
        guard headroom >= 0, headroom <= frameSize / 2 else {
            throw .invalidConfiguration("headroom \(headroom) must be 0...\(frameSize / 2) bytes")
        }
        self.frameCount = frameCount
        self.frameSize = frameSize
        self.headroom = headroom
        area = try UMEMArea(size: frameCount * frameSize)
        table = ListTable(umem: area.base, frameSize: frameSize, frameCount: frameCount, headroom: headroom, umemOwner: area)
    }

    /// No port may open on the UMEM any more; ports already open go on. The
    /// memory is unmapped when the last port and handle are gone.
    public func close() {
        registrationLock.withLock { closed = true }
    }

    /// Whether `close()` was called.
    public var isClosed: Bool { registrationLock.withLock { closed } }

    /// Frames not yet taken by a port.
    public var framesAvailable: Int { table.framesLeft }

    /// Where the frames of one pool of the UMEM are.
    public struct PoolStatus: Sendable, Equatable {
        /// Which of its port's two pools a pool is.
        public enum Kind: Sendable, Equatable {
            /// A port's receive pool: feeds its fill ring.
            case receive
            /// A port's send pool: `allocateList`.
            case send
        }
        /// Whether the pool receives or sends.
        public var kind: Kind
        /// The pool's first frame, as an index into the UMEM's frames.
        public var firstFrame: Int
        /// How many frames the pool has, from `firstFrame` on.
        public var frameCount: Int
        /// Frames the pool has: free, or (receive) with the kernel.
        public var framesHome: Int
        /// Frames of the pool's lists held by a caller (indicated or
        /// allocated, completed, not yet returned), lent ones included.
        public var framesOut: Int { frameCount - framesHome }
        /// Frames of the pool's lists queued or in flight on another port
        /// of the UMEM: lent for forwarding.
        public var framesLent: Int
        /// Whether every frame of the pool is home (`framesHome == frameCount`).
        public var allFramesHome: Bool { framesHome == frameCount }
    }

    /// Every pool carved from the UMEM, in the order ports took them. A
    /// snapshot, exact when the ports are quiet.
    public var poolStatus: [PoolStatus] {
        table.allHomes.map { home in
            switch home {
            case .receive(let context):
                return PoolStatus(
                    kind: .receive, firstFrame: context.range.firstFrame, frameCount: context.range.frameCount,
                    framesHome: context.framesWithEngine, framesLent: context.lent.count)
            case .send(let pool):
                return PoolStatus(
                    kind: .send, firstFrame: pool.range.firstFrame, frameCount: pool.range.frameCount,
                    framesHome: pool.counts.frames, framesLent: pool.lent.count)
            }
        }
    }

    /// Whether every frame of every pool is home.
    public var allFramesHome: Bool { poolStatus.allSatisfy(\.allFramesHome) }

    // Internal: closed, read under the lock by XDPSocket.
    var isClosedLocked: Bool { closed }
}
