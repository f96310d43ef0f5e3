// Whose fault an empty fill ring was.
//
// The kernel drops an arriving frame, and counts it under "fill ring empty",
// when the port has posted no free frame for it. A port posts its frames
// back on every pass of its thread, so the ring runs dry only while that
// thread stays away from the port longer than the posted frames last at
// the arriving rate (ring size / rate: about 12 ms at 0.35 Mpps with rings
// of 4096, 6 ms with the engine's default 2048). The thread can be away
// for two reasons:
//
// - its own long pass, on CPU: the engine's send side (or the handlers it
//   runs) keeping receive waiting. That is the engine starving its own
//   receive side, and must be 0;
// - time the thread did not get: on veth in copy mode the kernel's receive
//   path (NET_RX softirq: veth's NAPI, the XDP program, the copy into the
//   UMEM) runs on the end threads' CPUs, and took 54% of each CPU in a
//   measured duplex run, in bursts that add up to 5-10 ms inside one pass;
//   the kernel does not charge it to the thread. The hypervisor and the
//   scheduler take time the same way. No user-space engine posts frames
//   while it is not running; a bigger fill and RX ring rides it out.
//
// Each end's thread publishes its longest gap between passes and the time
// across it that was not its own CPU time (`PassTiming`); once a second the
// main thread takes those with the fill-empty counters. A second's drops
// are the thread's own when its own share of its longest absence (gap -
// time away) alone lasted at least half as long as the ring does; else
// they are put down to time the thread did not get.

import AFXDP
import AFXDPTestbed
import Foundation
import Synchronization

/// Each end's receive side over the run, second by second. (RX-ring-full
/// drops have the same cause as fill-ring-empty ones, the thread not back
/// in time, and are counted with them: which comes first depends only on
/// how many frames were posted when the thread left.)
struct StarvationTracker {
    /// The frames a port keeps posted in its fill ring.
    let ringFrames: Int
    let ends: [String]
    let timings: [PassTiming]
    private var previousFillEmpty: [Int]
    private var previousDropped: [Int]
    private var previousArrived: [Int]
    private(set) var results: [ReceiveStarvation]

    init(ends: [String], ringFrames: Int) {
        self.ringFrames = ringFrames
        self.ends = ends
        timings = ends.map { _ in PassTiming() }
        previousFillEmpty = ends.map { _ in 0 }
        previousDropped = ends.map { _ in 0 }
        previousArrived = ends.map { _ in 0 }
        results = ends.map { ReceiveStarvation(end: $0) }
    }

    /// Takes one interval's figures: what the kernel counted at each end's
    /// ports since the last call, and how long each end's thread was away.
    mutating func record(intervalNanoseconds: UInt64, ports: [[XDPPort]]) {
        let seconds = max(Double(intervalNanoseconds) / 1e9, 1e-3)
        for end in ends.indices where end < ports.count {
            var fillEmpty = 0
            var ringFull = 0
            var arrived = 0
            for port in ports[end] {
                let statistics = port.statistics
                fillEmpty += statistics.kernel.fillRingEmpty
                ringFull += statistics.kernel.receiveRingFull
                arrived += statistics.receive.packets + statistics.kernel.receiveDropped + statistics.kernel.receiveRingFull
            }
            let gap = timings[end].longestGap.exchange(0, ordering: .relaxed)
            let away = timings[end].longestAway.exchange(0, ordering: .relaxed)
            let dropped = fillEmpty + ringFull - previousDropped[end]
            let droppedFillEmpty = fillEmpty - previousFillEmpty[end]
            let rate = Double(arrived - previousArrived[end]) / seconds
            previousFillEmpty[end] = fillEmpty
            previousDropped[end] = fillEmpty + ringFull
            previousArrived[end] = arrived

            var result = results[end]
            result.longestPassGapMilliseconds = max(result.longestPassGapMilliseconds, Self.milliseconds(gap))
            result.longestAwayMilliseconds = max(result.longestAwayMilliseconds, Self.milliseconds(away))
            if dropped > 0 {
                // How long the posted frames last at this interval's arriving rate.
                let lasts = rate > 0 ? Double(ringFrames) / rate * 1e3 : .infinity
                result.dropped += dropped
                result.fillRingEmpty += droppedFillEmpty
                // The thread's own share of its longest absence: had it
                // used half the ring's time by itself, the drops are its own.
                let onCPU = gap > away ? gap - away : 0
                if Self.milliseconds(onCPU) < lasts / 2 {
                    result.whileAway += dropped
                } else {
                    result.whileBusy += dropped
                }
                result.intervals.append(.init(
                    dropped: dropped, ringLastsMilliseconds: lasts.isFinite ? Self.rounded(lasts) : nil,
                    longestPassGapMilliseconds: Self.milliseconds(gap), longestAwayMilliseconds: Self.milliseconds(away)))
            }
            results[end] = result
        }
    }

    private static func milliseconds(_ nanoseconds: UInt64) -> Double { rounded(Double(nanoseconds) / 1e6) }
    private static func rounded(_ value: Double) -> Double { (value * 100).rounded() / 100 }
}

/// Frames an end's ports lost because its thread did not come back in time
/// (fill ring empty, or RX ring full), and whose fault.
struct ReceiveStarvation: Codable, Equatable {
    struct Interval: Codable, Equatable {
        var dropped: Int
        /// How long the posted fill frames last at that interval's arriving rate.
        var ringLastsMilliseconds: Double?
        var longestPassGapMilliseconds: Double
        var longestAwayMilliseconds: Double
    }

    var end: String
    /// Fill ring empty and RX ring full together.
    var dropped = 0
    /// Of `dropped`: fill ring empty.
    var fillRingEmpty = 0
    /// Lost while the end's thread was held off its CPU (softirq, hypervisor, scheduler).
    var whileAway = 0
    /// Lost while the end's thread was on CPU elsewhere (its own: the engine, or the handlers it runs).
    var whileBusy = 0
    /// Over the run: the longest gap between two passes of the end's thread
    /// (0 when none reached 0.5 ms), and the most time across one that was
    /// not the thread's own.
    var longestPassGapMilliseconds = 0.0
    var longestAwayMilliseconds = 0.0
    /// The intervals (about a second each) in which frames were lost.
    var intervals: [Interval] = []

    init(end: String) { self.end = end }
}

/// What an interface's own counters say it dropped (`ip -s link`: for veth,
/// frames its peer's queue had no room for, and XDP's own drops), apart
/// from what any socket dropped.
struct InterfaceDrops: Codable, Equatable {
    var end: String
    var interface: String
    var receiveDropped: Int
    var transmitDropped: Int

    /// The counters now; nil when `ip` cannot say (they are a report's
    /// extra, never a reason to fail a run).
    static func read(end: String, interface: String, namespace: String?) -> InterfaceDrops? {
        var command = ["ip"]
        if let namespace { command += ["-n", namespace] }
        command += ["-s", "-j", "link", "show", "dev", interface]
        guard let text = try? runCommand(command), let data = text.data(using: .utf8),
            let links = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]],
            let stats = links.first?["stats64"] as? [String: Any],
            let rx = stats["rx"] as? [String: Any], let tx = stats["tx"] as? [String: Any]
        else { return nil }
        return InterfaceDrops(
            end: end, interface: interface,
            receiveDropped: (rx["dropped"] as? Int) ?? 0, transmitDropped: (tx["dropped"] as? Int) ?? 0)
    }

    /// What was dropped between `earlier` and these counts.
    func since(_ earlier: InterfaceDrops) -> InterfaceDrops {
        InterfaceDrops(
            end: end, interface: interface, receiveDropped: receiveDropped - earlier.receiveDropped,
            transmitDropped: transmitDropped - earlier.transmitDropped)
    }
}
