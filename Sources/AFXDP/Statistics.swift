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
    /// The send side's counters, and the frames it has queued.
    public struct Send: Sendable, Equatable {
        /// Packets completed with success.
        public var packets: Int
        /// Bytes of the packets completed with success.
        public var bytes: Int
        /// Lists completed (with any status).
        public var completedLists: Int
        /// Frames queued inside the engine, not yet in the TX ring.
        public var queuedFrames: Int
        /// Passes that found the TX or completion ring full with frames waiting.
        public var ringFullEvents: Int
        /// `sendto` kicks: calls asking the kernel to process the TX ring.
        public var kicks: Int
        /// Kicks that failed for a reason other than "try later" (EAGAIN,
        /// ENOBUFS) or a link that is down (EBUSY, ENETDOWN); counted, not thrown.
        public var kickErrors: Int
        /// Lists completed with a status other than success.
        public var dropped: Int
        /// Completion-ring entries the engine did not expect (an address
        /// outside the UMEM, or a frame it had not sent) and ignored. A
        /// correct kernel never produces one.
        public var invalidCompletions: Int
        /// Of `packets`: those whose frames belong to another port of the
        /// UMEM (received there and passed on here without a copy).
        public var forwardedPackets: Int
        /// Times the engine found the link down (interface down, or no
        /// carrier) and held its sends until it was back.
        public var linkDownEvents: Int
        /// Frames the kernel took and dropped because the link had just gone
        /// down (one per loss of carrier at most: the engine then stops
        /// handing it frames); their lists still complete with `.success`.
        public var kernelDroppedFrames: Int
        /// Times the completion ring stood still for `completionStallTimeout`
        /// with frames out.
        public var completionStalls: Int
    }
    /// The receive side's counters, and where its frames are.
    public struct Receive: Sendable, Equatable {
        /// Packets indicated to the receive handler.
        public var packets: Int
        /// Bytes of the packets indicated.
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
    /// What the send side counted.
    public var send: Send
    /// What the receive side counted.
    public var receive: Receive
    /// What the kernel counted for the socket (`XDP_STATISTICS`).
    public var kernel: KernelSocketStatistics
    /// Frames the XDP program redirected to a socket (per CPU, summed).
    ///
    /// The program's counters count the whole interface, not only this
    /// port's queue: ports on several queues of one interface share the
    /// program.
    public var programRedirected: Int
    /// Frames the XDP program passed to the kernel's stack (per CPU, summed;
    /// the whole interface, as `programRedirected`).
    public var programPassed: Int
}
