import AFXDP
import AFXDPTestbed
import Glibc
import Logging
import MetricsTestKit
import Testing

/// A swift-log handler that keeps every line, for the tests to read.
final class CapturedLog: @unchecked Sendable {
    // @unchecked: the lines are behind a lock.
    struct Line: Equatable {
        var level: Logger.Level
        var message: String
        var interface: String?
    }

    let lines = TestLock<[Line]>([])

    var logger: Logger {
        Logger(label: "test") { _ in Handler(log: self) }
    }

    func contains(_ level: Logger.Level, _ fragment: String) -> Bool {
        lines.withLock { $0.contains { $0.level == level && $0.message.contains(fragment) } }
    }

    struct Handler: LogHandler {
        let log: CapturedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let interface = (event.metadata?["interface"] ?? metadata["interface"]).map { "\($0)" }
            log.lines.withLock { $0.append(Line(level: event.level, message: "\(event.message)", interface: interface)) }
        }
    }
}

@Suite("Logging", .serialized)
struct LoggingTests {
    @Test("open and close on veth are logged with the interface, the copy-mode fallback at notice; nothing is logged without a logger")
    func openAndClose() throws {
        try VethTestbed.withVethTestbed { bed in
            let log = CapturedLog()
            let port = try openPort(bed, end: "a", configure: { $0.logger = log.logger })
            #expect(log.contains(.notice, "zero-copy is not supported"), "\(log.lines.withLock { $0 })")
            #expect(log.contains(.info, "open: copy mode"))
            #expect(log.lines.withLock { $0.allSatisfy { $0.interface == bed.interfaceA } })
            port.close()
            #expect(log.contains(.info, "closed: 0 packets sent"))
            // The default logger is silent: a port without one opens and closes as before.
            let quiet = try openPort(bed, end: "b")
            quiet.close()
        }
    }

    @Test("a completion stall and the port's failure are logged at warning and error, where handlers run, with no event handler set")
    func stallIsLogged() throws {
        let log = CapturedLog()
        var configuration = PortConfiguration(interface: "sim0")
        configuration.completionStallTimeout = .milliseconds(30)
        configuration.completionStallFailure = .milliseconds(200)
        configuration.logger = log.logger
        let (port, kernel) = try XDPPort.openSimulated(
            configuration, onReceive: { try? $0.port.returnList($0.list) },
            onSendComplete: { batch in for list in batch { try? batch.port.returnList(list) } })
        kernel.completesOnTransmit = false
        let list = try #require(try port.allocateList(packetCount: 4))
        try list.packets.forEach { packet throws(AFXDPError) in try packet.setLength(64) }
        try port.send(list)
        #expect(kernel.transmit() == 4)
        let deadline = Deadline(seconds: 5)
        while port.currentState != .closed, !deadline.passed { port.poll(); usleep(200) }
        #expect(log.contains(.warning, "completion ring stalled"), "\(log.lines.withLock { $0 })")
        #expect(log.contains(.error, "the port closed itself: the kernel stopped completing sends"))
        #expect(log.contains(.info, "it closed itself"))
        port.close()
        #expect(port.poolStatus.allFramesHome)
    }
}

@Suite("Metrics")
struct MetricsTests {
    let a = MACAddress(bytes: [2, 0, 0, 0, 0, 1])
    let b = MACAddress(bytes: [2, 0, 0, 0, 0, 2])

    @Test("PortMetrics publishes the port's counters by their increase and its gauges by their value, under stable names with interface and queue")
    func countersAndGauges() throws {
        let metrics = TestMetrics()
        let (port, kernel) = try XDPPort.openSimulated(
            PortConfiguration(interface: "sim0"), onReceive: { try? $0.port.returnList($0.list) },
            onSendComplete: { batch in for list in batch { try? batch.port.returnList(list) } })
        defer { port.close() }
        let published = PortMetrics(port: port, factory: metrics)
        let dimensions = [("interface", "sim0"), ("queue", "0")]
        var (next, lists) = (0, 0)
        try sendLists(port, count: 10, size: 4, next: &next, lists: &lists, from: a, to: b)
        // Queued, not yet placed: the gauge says so before the kernel moves.
        published.update()
        #expect(try metrics.expectGauge("afxdp_queued_frames", dimensions).lastValue ?? -1 >= 0)
        _ = kernel.transmit()
        port.poll()
        published.update()
        #expect(try metrics.expectCounter("afxdp_sent_packets", dimensions).totalValue == 40)
        #expect(try metrics.expectCounter("afxdp_completed_lists", dimensions).totalValue == 10)
        // A second update adds only what happened since the first.
        try sendLists(port, count: 5, size: 4, next: &next, lists: &lists, from: a, to: b)
        _ = kernel.transmit()
        port.poll()
        published.update()
        published.update()
        #expect(try metrics.expectCounter("afxdp_sent_packets", dimensions).totalValue == 60)
        #expect(try metrics.expectGauge("afxdp_queued_frames", dimensions).lastValue == 0)
        #expect(Set(PortMetrics.counterNames).count == PortMetrics.counterNames.count)
    }
}
