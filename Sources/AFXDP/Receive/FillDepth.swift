/// How many receive frames the kernel may hold at once: frames in the fill
/// ring plus received frames not yet indicated.
///
/// Why not all of them: in copy mode the kernel writes each arriving frame
/// into the next frame of the fill ring, which is a FIFO. A fill ring kept
/// full cycles every receive frame through it, so each frame the kernel
/// writes, and the kernel's per-frame state for it, is cold in the cache
/// and in the TLB by the time it comes round (a frame is a page). Kept
/// shallow, the same few hundred frames come round while still hot. On the
/// l2fwd forwarder's core that took the kernel's `memcpy` from 7.8% to 4.5%
/// of the samples and `xp_alloc` from 5.0% to 2.5%.
///
/// Why not few: while the port's thread is away (on veth the receive
/// softirq holds it off for milliseconds), arriving frames need frames in
/// the fill ring, or the kernel drops them. So the depth adapts: it starts
/// at the whole ring, grows fourfold as soon as the kernel is found to have
/// run dry while the thread was keeping up (an absence longer than the
/// depth lasts), and shrinks by a quarter each time the frames have gone
/// round it 16 times with no such sign, down to `minimum`. A thread that
/// cannot keep up (more arrives than it handles) does not grow it: more
/// depth only adds latency and cold frames there.
///
/// Owned by the receive region's owner; no locking.
struct FillDepth {
    /// The kernel is never given fewer than this (if the port has them).
    let minimum: Int
    /// Nor more than this: the fill ring's size.
    let maximum: Int
    /// False: always `maximum` (`PortConfiguration.FillRingDepth.full`).
    let adapts: Bool
    /// The current bound on frames with the kernel.
    private(set) var target: Int
    /// Frames received since the depth last changed or the kernel last ran dry.
    private var calmFrames = 0
    /// The bound before the last change.
    private(set) var previousTarget: Int

    init(minimum: Int, maximum: Int, adapts: Bool) {
        self.maximum = maximum
        self.minimum = min(minimum, maximum)
        self.adapts = adapts
        target = maximum
        previousTarget = maximum
    }

    /// At the start of a pass. `inFillRing`: frames the kernel has not yet
    /// taken from the fill ring (as far as it has published); `caughtUp`:
    /// whether the previous pass left the RX ring empty.
    /// Returns whether the depth grew.
    @inline(__always)
    mutating func startPass(inFillRing: Int, caughtUp: Bool) -> Bool {
        guard adapts, caughtUp, inFillRing == 0, target < maximum else { return false }
        previousTarget = target
        target = min(maximum, target &* 2)
        calmFrames = 0
        return true
    }

    /// After `count` frames were taken from the RX ring.
    /// Returns whether the depth shrank.
    @inline(__always)
    mutating func received(_ count: Int) -> Bool {
        guard adapts else { return false }
        calmFrames &+= count
        guard calmFrames >= target &* 64, target > minimum else { return false }
        previousTarget = target
        target = max(minimum, target &- target / 4)
        calmFrames = 0
        return true
    }
}
