// What the benchmark prints: a header, a line per second per direction, the
// summary tables, and (with --json) every figure as one JSON object on the
// last line.

import AFXDP
import Foundation

struct LatencyResult: Codable {
    var samples: UInt64
    var p50: Double
    var p90: Double
    var p99: Double
    var p999: Double
    var max: Double
    var mean: Double
}

struct DirectionResult: Codable {
    var name: String
    /// Packets whose send completed with success, and their bytes.
    var sentPackets = 0
    var sentBytes = 0
    /// Packets whose send completed with another status (paused, closing).
    var unsentPackets = 0
    /// Packets received at the far end, and their bytes.
    var packets = 0
    var bytes = 0
    /// sentPackets - packets.
    var lost = 0
    var lossPercent = 0.0
    /// Sequence numbers skipped on arrival.
    var gaps = 0
    /// Arrived with a sequence number below one seen before (late or duplicate).
    var reordered = 0
    /// Test frames whose payload was not as written.
    var corrupted = 0
    /// Frames that were not test frames.
    var foreign = 0
    /// false in rx-drop: frames are counted, not read.
    var checked = true
    /// Rates over the sending time: sent, received (packets and Gbit/s).
    var txMpps = 0.0
    var mpps = 0.0
    var gbps = 0.0
    /// l2fwd: packets B sent back, and those whose send failed.
    var forwardedPackets: Int?
    var unforwardedPackets: Int?
    /// Times the --window reopened after 100 ms without progress at the receiver.
    var windowResets = 0
    var latencyMicroseconds: LatencyResult?

    init(name: String) { self.name = name }
}

struct PortResult: Codable {
    var end: String
    var interface: String
    var queue: Int
    var zeroCopy: Bool
    var nativeXDP: Bool
    var sentPackets: Int
    var kicks: Int
    var kickErrors: Int
    var ringFullEvents: Int
    var sendsDropped: Int
    var queuedFrames: Int
    var receivedPackets: Int
    var indications: Int
    var lowResourceEvents: Int
    var socketReceiveDropped: Int
    var socketReceiveRingFull: Int
    var fillRingEmpty: Int
    var invalidDescriptors: Int
    var programRedirected: Int
    var programPassed: Int
    /// Of `sentPackets`: frames another port of the UMEM received (sent on without a copy).
    var forwardedPackets: Int
    var notes: [String]
}

struct RunReport: Codable {
    var tool = "afxdp-bench"
    var mode: String
    /// Measured sending time.
    var seconds: Double
    var requestedSeconds: Double
    var frameSize: Int
    var batch: Int
    var ringSize: Int
    var umemFrameSize: Int
    var queues: Int
    var zeroCopy: Bool
    var needWakeup: Bool
    var busyPoll: Bool
    var window: Int
    /// --rate: offered packets per second per direction (0: unpaced).
    var rate: Double
    var gbpsIncludesPreambleAndGap: Bool
    var stoppedEarlyBy: String?
    var directions: [DirectionResult]
    var ports: [PortResult]
    /// forward: frames F's bridge copied (it forwards lists as they are): 0.
    var copies: Int?
    /// What each end ran through, from the top down.
    var stacks: [StackReport]
    /// Per end: frames lost to an empty fill ring, put down to the
    /// scheduler (thread off CPU) or to the engine (thread busy elsewhere).
    var receiveStarvation: [ReceiveStarvation]
    /// Per interface: what its own counters say it dropped during the run
    /// (veth's, outside any socket).
    var interfaceDrops: [InterfaceDrops]
    var errors: [String]
}

/// One end's stack, as `StackDescription` tells it.
struct StackReport: Codable {
    struct Layer: Codable {
        var depth: Int
        var kind: String
        var name: String
        /// Intermediate layers: what they borrowed and how promptly it came back.
        var copiedFrames: Int?
        var forwardDroppedFrames: Int?
        var completionDelayP50Microseconds: Double?
        var completionDelayP99Microseconds: Double?
    }
    var end: String
    var depth: Int
    var layers: [Layer]

    init(end: String, stack: StackDescription) {
        self.end = end
        depth = stack.depth
        var layers: [Layer] = []
        func add(_ layer: StackDescription, _ depth: Int) {
            let statistics = layer.layerStatistics
            layers.append(Layer(
                depth: depth, kind: layer.kind.rawValue, name: layer.name, copiedFrames: statistics?.copiedFrames,
                forwardDroppedFrames: statistics?.forwardDroppedFrames,
                completionDelayP50Microseconds: statistics.map { Double($0.completionDelayP50Nanoseconds) / 1000 },
                completionDelayP99Microseconds: statistics.map { Double($0.completionDelayP99Nanoseconds) / 1000 }))
            for below in layer.lower { add(below, depth + 1) }
        }
        add(stack, 0)
        self.layers = layers
    }
}

enum Report {
    static func printHeader(_ session: Session) {
        let options = session.options
        for endpoint in session.endpoints {
            let place = endpoint.namespace.map { " (namespace \($0))" } ?? ""
            let cpu = endpoint.cpu.map { ", thread on CPU \($0)" } ?? ""
            print("end \(endpoint.name): \(endpoint.interface)\(place) \(endpoint.macAddress)\(cpu)")
        }
        for (end, ports) in session.ports.enumerated() {
            for (queue, port) in ports.enumerated() {
                let mode = port.isZeroCopy ? "zero-copy" : "copy mode"
                let xdp = port.isAttachedNatively ? "native XDP" : "generic XDP"
                print("port \(session.endpoints[end].name)\(queue): \(mode), \(xdp)" + port.notes.map { "; \($0)" }.joined())
            }
        }
        print("""
            \(session.mode.rawValue): \(fmt(options.seconds, 1)) s, \(options.frameSize)-byte frames, \
            \(options.batch) per list, rings \(options.ringSize), UMEM frames \(options.umemFrameSize), \
            \(options.queues) queue(s), need_wakeup \(options.noNeedWakeup ? "off" : "on"), \
            busy poll \(options.busyPoll ? "on" : "off"), window \(options.window == 0 ? "unlimited" : String(options.window)), \
            rate \(options.rate == 0 ? "unpaced" : "\(fmt(options.rate / 1e6, 3)) Mpps per direction"), \
            api \(options.api.rawValue), payload \(options.payload == .checked ? "written and checked" : "not written or checked (header only)")
            """)
        let bytes = options.wireOverhead
            ? "frame bytes + 20 (preamble, inter-frame gap); no FCS"
            : "frame bytes only (no FCS, preamble or inter-frame gap)"
        let drops = session.mode == .rxDrop
            ? "drops: frames the receiving socket dropped (XDP_STATISTICS)"
            : "drops: sequence numbers missing at the receiver"
        print("rates are what arrived; Gbit/s counts \(bytes); tx: sends completed; \(drops); queue: frames queued in the engine")
    }

    static func printInterval(_ session: Session, elapsed: UInt64, interval: UInt64, previous: [DirectionSample], current: [DirectionSample]) {
        let seconds = Double(interval) / 1e9
        let overhead = session.options.wireOverhead ? 20 : 0
        for (index, direction) in session.directions.enumerated() {
            let now = current[index]
            let before = previous[index]
            let packets = now.received - before.received
            let bytes = now.receivedBytes - before.receivedBytes + packets * overhead
            let drops = session.mode == .rxDrop ? now.socketDrops - before.socketDrops : now.gaps - before.gaps
            var line = "[\(pad(fmt(Double(elapsed) / 1e9, 0), 3))s] \(pad(direction.name, -8)) "
                + "\(pad(fmt(Double(packets) / seconds / 1e6, 3), 7)) Mpps  "
                + "\(pad(fmt(Double(bytes) * 8 / seconds / 1e9, 3), 7)) Gbit/s  "
                + "tx \(pad(fmt(Double(now.sent - before.sent) / seconds / 1e6, 3), 7)) Mpps  "
            if direction.forwarderEnd != nil || direction.relayEnd != nil {
                line += "fwd \(pad(fmt(Double(now.forwarded - before.forwarded) / seconds / 1e6, 3), 7)) Mpps  "
            }
            line += "drops \(drops)  queue \(now.queued)"
            print(line)
        }
        fflush(nil)  // all streams: print() goes through C stdio, block-buffered when piped
    }

    static func printSummary(_ report: RunReport, options: BenchOptions) {
        print("")
        var title = "summary: \(report.mode), \(fmt(report.seconds, 3)) s of sending"
        if let reason = report.stoppedEarlyBy { title += " (stopped early by \(reason))" }
        title += report.gbpsIncludesPreambleAndGap ? "; Gbit/s with 20 bytes/frame of preamble and gap" : "; Gbit/s of frame bytes"
        print(title)
        let columns = ["direction", "sent", "received", "lost", "loss %", "reordered", "corrupted", "tx Mpps", "rx Mpps", "rx Gbit/s"]
        var rows: [[String]] = []
        for direction in report.directions {
            rows.append([
                direction.name, String(direction.sentPackets), String(direction.packets), String(direction.lost),
                fmt(direction.lossPercent, 3),
                direction.checked ? String(direction.reordered) : "n/a",
                direction.checked ? String(direction.corrupted + direction.foreign) : "n/a",
                fmt(direction.txMpps, 3), fmt(direction.mpps, 3), fmt(direction.gbps, 3),
            ])
        }
        printTable(columns, rows)

        print("")
        if report.directions.allSatisfy({ !$0.checked }) {
            print("latency: not measured in rx-drop (frames are not read)")
        } else {
            let what = report.mode == "l2fwd" ? "round trip, A's send timestamp to A's receive" : "send timestamp to receive"
            print("latency in microseconds (\(what)):")
            let latencyColumns = ["direction", "samples", "p50", "p90", "p99", "p99.9", "max", "mean"]
            var latencyRows: [[String]] = []
            for direction in report.directions {
                guard let latency = direction.latencyMicroseconds else {
                    latencyRows.append([direction.name, "0", "-", "-", "-", "-", "-", "-"])
                    continue
                }
                latencyRows.append([
                    direction.name, String(latency.samples), fmt(latency.p50, 1), fmt(latency.p90, 1),
                    fmt(latency.p99, 1), fmt(latency.p999, 1), fmt(latency.max, 1), fmt(latency.mean, 1),
                ])
            }
            printTable(latencyColumns, latencyRows)
        }
        for direction in report.directions {
            var extras: [String] = []
            let forwarder = report.mode == "forward" ? "F" : "B"
            if let forwarded = direction.forwardedPackets {
                extras.append(report.mode == "forward" ? "F forwarded \(forwarded)" : "B sent back \(forwarded)")
            }
            if let unforwarded = direction.unforwardedPackets, unforwarded > 0 {
                extras.append("\(forwarder)'s sends not completed with success: \(unforwarded)")
            }
            if direction.unsentPackets > 0 { extras.append("sends not completed with success: \(direction.unsentPackets)") }
            if direction.checked, direction.gaps != direction.lost { extras.append("sequence gaps \(direction.gaps)") }
            if direction.foreign > 0 { extras.append("not test frames: \(direction.foreign)") }
            if direction.windowResets > 0 {
                extras.append("window reopened \(direction.windowResets) time(s) after 100 ms without progress (frames lost, or the receiver stalled)")
            }
            if !extras.isEmpty { print("\(direction.name): " + extras.joined(separator: "; ")) }
        }

        print("")
        print("engine, per port:")
        let portColumns = [
            "port", "tx pkts", "tx drop", "kicks", "kick err", "ring full", "rx pkts", "rx lists", "low res",
            "sock drop", "rx full", "fill empty", "invalid", "xdp redir", "xdp pass",
        ]
        let portRows = report.ports.map { port in
            [
                "\(port.end)\(port.queue)", String(port.sentPackets), String(port.sendsDropped), String(port.kicks), String(port.kickErrors),
                String(port.ringFullEvents), String(port.receivedPackets), String(port.indications),
                String(port.lowResourceEvents), String(port.socketReceiveDropped), String(port.socketReceiveRingFull),
                String(port.fillRingEmpty), String(port.invalidDescriptors), String(port.programRedirected),
                String(port.programPassed),
            ]
        }
        printTable(portColumns, portRows)
        for drops in report.interfaceDrops where drops.receiveDropped > 0 || drops.transmitDropped > 0 {
            print(
                "interface \(drops.interface) (end \(drops.end)): its own counters dropped \(drops.receiveDropped) received and "
                    + "\(drops.transmitDropped) sent frames (the kernel's, outside the sockets)")
        }
        for side in report.receiveStarvation where side.dropped > 0 {
            print(
                "end \(side.end): \(side.dropped) frames dropped at the socket (fill ring empty or RX ring full): \(side.whileAway) while its thread was held off "
                    + "its CPU (softirq, hypervisor, scheduler), \(side.whileBusy) while it was busy elsewhere (its own); "
                    + "longest pass gap \(fmt(side.longestPassGapMilliseconds, 2)) ms, of it not its own CPU time "
                    + "\(fmt(side.longestAwayMilliseconds, 2)) ms")
        }
        print("")
        for stack in report.stacks {
            print("stack of end \(stack.end) (depth \(stack.depth)):")
            for layer in stack.layers {
                var line = String(repeating: "  ", count: layer.depth + 1) + "\(layer.kind): \(layer.name)"
                if let p50 = layer.completionDelayP50Microseconds, let p99 = layer.completionDelayP99Microseconds {
                    line += "; lower-to-upper completion p50 \(fmt(p50, 1)) us, p99 \(fmt(p99, 1)) us"
                }
                if let copied = layer.copiedFrames, copied > 0 { line += "; \(copied) frames copied" }
                print(line)
            }
        }
        for error in report.errors { print("ERROR: \(error)") }
    }

    /// A report (a run's, a sweep's, a search's) as one line of JSON.
    static func json(_ report: some Encodable) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(report), let text = String(data: data, encoding: .utf8) else {
            return #"{"error":"could not encode the report"}"#
        }
        return text
    }

    /// The median of `values`; nil for none.
    static func median(_ values: [Double]) -> Double? {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return nil }
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }

    // MARK: Formatting

    static func printTable(_ columns: [String], _ rows: [[String]]) {
        var widths = columns.map(\.count)
        for row in rows {
            for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == 0 ? pad(cell, -widths[index]) : pad(cell, widths[index])
            }.joined(separator: "  ")
        }
        print(line(columns))
        for row in rows { print(line(row)) }
    }

    /// Right-aligns in `width` columns; a negative width left-aligns.
    static func pad(_ text: String, _ width: Int) -> String {
        let room = abs(width) - text.count
        guard room > 0 else { return text }
        let spaces = String(repeating: " ", count: room)
        return width < 0 ? text + spaces : spaces + text
    }

    static func fmt(_ value: Double, _ decimals: Int) -> String {
        String(format: "%.\(decimals)f", value)
    }
}
