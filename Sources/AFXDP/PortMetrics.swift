import AFXDPSystem
import CoreMetrics

/// Publishes a port's `statistics` through swift-metrics, under stable
/// names, with the port's interface and queue as dimensions: counters for
/// what only grows (packets, bytes, kicks, drops, events), gauges for what
/// goes up and down (frames queued in the engine, frames the caller holds).
///
/// The engine counts in its own per-region counters, which cost the hot
/// paths nothing; this reads them when asked. Call `update()` as often as
/// the metrics should move (once a second is plenty): it records each
/// counter's increase since the last call and each gauge's value. Any
/// thread; calls are serialised. Never called by the engine itself.
public final class PortMetrics: @unchecked Sendable {
    // @unchecked: `last` is guarded by `lock`; the metric objects are Sendable.
    /// The counters' names, without the prefix given at `init` (default "afxdp_").
    public static let counterNames = [
        "sent_packets", "sent_bytes", "completed_lists", "send_ring_full", "kicks", "kick_errors", "sends_not_successful",
        "received_packets", "received_bytes", "receive_indications", "receive_low_resources",
        "socket_receive_dropped", "socket_receive_ring_full", "socket_fill_ring_empty",
        "link_down_events", "kernel_dropped_frames", "completion_stalls",
    ]
    /// The gauges' names, without the prefix, as `counterNames`.
    public static let gaugeNames = ["queued_frames", "frames_held_by_caller", "frames_with_kernel"]

    private let port: XDPPort
    private let counters: [Counter]
    private let gauges: [Gauge]
    private let lock = PThreadLock()
    private var last: [Int]

    /// Makes the port's counters and gauges in `factory`; nothing is
    /// recorded until the first `update()`.
    ///
    /// - Parameters:
    ///   - port: the port whose statistics `update()` publishes.
    ///   - prefix: put before every name, e.g. "afxdp_" gives "afxdp_sent_packets".
    ///   - factory: where the metrics go; the process's bootstrapped backend by default.
    public init(port: XDPPort, prefix: String = "afxdp_", factory: MetricsFactory = MetricsSystem.factory) {
        self.port = port
        let dimensions = [("interface", port.configuration.interface), ("queue", String(port.configuration.queue))]
        counters = Self.counterNames.map { Counter(label: prefix + $0, dimensions: dimensions, factory: factory) }
        gauges = Self.gaugeNames.map { Gauge(label: prefix + $0, dimensions: dimensions, factory: factory) }
        last = Array(repeating: 0, count: Self.counterNames.count)
    }

    /// Reads the port's statistics once and records them.
    public func update() {
        let statistics = port.statistics
        let send = statistics.send, receive = statistics.receive, kernel = statistics.kernel
        // In `counterNames` order.
        let totals = [
            send.packets, send.bytes, send.completedLists, send.ringFullEvents, send.kicks, send.kickErrors, send.dropped,
            receive.packets, receive.bytes, receive.indications, receive.lowResourceEvents,
            kernel.receiveDropped, kernel.receiveRingFull, kernel.fillRingEmpty,
            send.linkDownEvents, send.kernelDroppedFrames, send.completionStalls,
        ]
        let levels = [send.queuedFrames, receive.framesHeldByCaller, receive.framesWithKernel]
        lock.withLock {
            for (index, total) in totals.enumerated() where total > last[index] {
                counters[index].increment(by: Int64(total - last[index]))
                last[index] = total
            }
            for (index, level) in levels.enumerated() { gauges[index].record(Int64(level)) }
        }
    }
}
