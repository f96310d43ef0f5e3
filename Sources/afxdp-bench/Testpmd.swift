// DPDK's testpmd as the peer that `compare --against testpmd` measures the
// engine against: the same testbed, the same modes as packet people run them
// with testpmd (Benchmarks/PEERS.md says how each was found to work here).

import AFXDPTestbed
import Foundation

struct TestpmdPeer {
    /// Which testpmd driver opens the interfaces.
    enum Driver: String, CaseIterable {
        case afXDP = "af_xdp"
        case afPacket = "af_packet"
    }

    static let binary = "/usr/bin/dpdk-testpmd"

    let driver: Driver
    let mode: String
    let seconds: Int
    let frameSize: Int
    let ends: (a: String, namespaceA: String, b: String, namespaceB: String)
    /// The cores the two ends forward on.
    let cpuA: Int
    let cpuB: Int
    /// tx-only: nothing runs at B (`compare --sink kernel`); the figure is
    /// A's transmit rate.
    var sinkIsKernel = false

    /// The metric a mode's figure is compared by, named as afxdp-bench's JSON
    /// report names it.
    static func metric(for mode: String) -> String {
        switch mode {
        case "duplex": return "total Mpps"
        case "l2fwd": return "A->B->A Mpps"
        default: return "A->B Mpps"
        }
    }

    /// What the peers call each mode: testpmd's forwarding mode at A and at B
    /// (nil: the kernel receives), and what counts.
    /// - tx-only: A txonly; B rxonly (receiving through the same driver, as
    ///   the engine's B receives through AF_XDP); what B received, and A's
    ///   transmit rate. With `sinkIsKernel`, nothing at B, and only A's
    ///   transmit rate.
    /// - rx-drop: the same pair; B's receive rate.
    /// - l2fwd: A flowgen (it sends and also receives, and frees, what comes
    ///   back, as the engine's A receives every returning frame: with txonly,
    ///   A's fill ring stays empty and the kernel drops the returning frames
    ///   before copying them, work the engine's run does and testpmd's would
    ///   not); B macswap sends each frame back; what A received back.
    /// - duplex: the peers' loop: io at both ends, 32 frames injected by A
    ///   (--tx-first) and forwarded back and forth; both receive rates added.
    private var plan: (a: [String], b: [String]?) {
        let size = "--txpkts=\(frameSize)"
        switch mode {
        case "tx-only": return (["--forward-mode=txonly", size], sinkIsKernel ? nil : ["--forward-mode=rxonly"])
        case "rx-drop": return (["--forward-mode=txonly", size], ["--forward-mode=rxonly"])
        case "l2fwd": return (["--forward-mode=flowgen", size], ["--forward-mode=macswap"])
        default: return (["--forward-mode=io", "--tx-first", size], ["--forward-mode=io"])
        }
    }

    static func check() throws {
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw BenchError("no \(binary): install DPDK's testpmd with `scripts/install-deps --peers` (dpdk, dpdk-dev, librte-net-af-xdp23)")
        }
    }

    /// Runs testpmd at both ends for `seconds` and returns the mode's figure,
    /// in Mpps, as the median of testpmd's per-second rates (the first sample,
    /// which covers start-up, left out).
    func run() throws -> [String: Double] {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("afxdp-testpmd-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let prefix = "afxdp-testpmd-\(getpid())"
        func command(_ namespace: String, _ interface: String, core: Int, end: String, _ forwarding: [String]) -> String {
            let device = driver == .afXDP
                ? "net_af_xdp0,iface=\(interface),start_queue=0,queue_count=1"
                // af_packet's default framecnt (512) loses frames without counting them.
                : "net_af_packet0,iface=\(interface),qpairs=1,blocksz=4096,framesz=2048,framecnt=4096"
            // Two lcores: the main one (stats) and the forwarding one, `core`.
            let main = core == 0 ? 1 : 0
            return (["ip", "netns", "exec", namespace, Self.binary, "-l", "0,1", "--main-lcore", "\(main)", "--no-pci", "--no-huge",
                     "-m", "512", "--no-shconf", "--file-prefix", "\(prefix)-\(end)", "--vdev", device, "--",
                     "--total-num-mbufs=16384", "--nb-cores=1", "--port-topology=loop", "--stats-period", "1"] + forwarding)
                .map { "'\($0)'" }.joined(separator: " ")
        }
        let logA = directory.appendingPathComponent("a.log").path, logB = directory.appendingPathComponent("b.log").path
        let (forwardA, forwardB) = plan
        var script = """
            set -u
            peer=""
            cleanup() {
                [ -n "$peer" ] && kill -INT "$peer" 2>/dev/null && wait "$peer"
                rm -rf /var/run/dpdk/\(prefix)-a /var/run/dpdk/\(prefix)-b
            }
            trap cleanup EXIT

            """
        if let forwardB {
            // B first: it must be up before A sends.
            script += "timeout --preserve-status -s INT \(seconds + 15) \(command(ends.namespaceB, ends.b, core: cpuB, end: "b", forwardB)) </dev/null >'\(logB)' 2>&1 &\n"
            script += "peer=$!\nsleep 3\n"
        }
        script += "timeout --preserve-status -s INT \(seconds + 2) \(command(ends.namespaceA, ends.a, core: cpuA, end: "a", forwardA)) </dev/null >'\(logA)' 2>&1\n"
        script += "status=$?\nexit $status\n"
        let scriptPath = directory.appendingPathComponent("run.sh").path
        try script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        do {
            _ = try runCommand(["bash", scriptPath])
        } catch {
            let tail = ((try? String(contentsOfFile: logA, encoding: .utf8)) ?? "").split(separator: "\n").suffix(8).joined(separator: "\n")
            throw BenchError("testpmd (\(driver.rawValue), \(mode)) failed: \(error)\nend A's last lines:\n\(tail)")
        }
        let a = Self.rates(String(decoding: (try? Data(contentsOf: URL(fileURLWithPath: logA))) ?? Data(), as: UTF8.self))
        let b = forwardB == nil ? nil : Self.rates(String(decoding: (try? Data(contentsOf: URL(fileURLWithPath: logB))) ?? Data(), as: UTF8.self))
        if sinkIsKernel {
            guard let sent = a.tx else {
                throw BenchError("testpmd (\(driver.rawValue), \(mode)) printed no transmit rates; its log is in \(logA) while it runs")
            }
            return ["A->B tx Mpps": sent / 1e6]
        }
        // B's rate is not read from B's own per-second samples: B starts
        // before A and stops after it, so the seconds in which A starts and
        // stops are partial ones in B's samples, and with runs of a few
        // seconds they pull B's median far below what it received (a
        // lossless run read 0.33 Mpps received of 0.46 sent). B received, of
        // what A sent, the share its total says; at A's rate, measured over
        // whole seconds of A's own run.
        let received: Double? = {
            guard let b, let rate = a.tx, let arrived = b.receivedTotal, let sent = a.sentTotal else { return nil }
            return sent > 0 ? rate * arrived / sent : 0
        }()
        let figure: Double?
        switch mode {
        case "tx-only", "rx-drop": figure = received
        case "l2fwd": figure = a.rx
        default: figure = received.flatMap { received in a.rx.map { $0 + received } }
        }
        guard let figure else {
            throw BenchError("testpmd (\(driver.rawValue), \(mode)) printed no rates; its log is in \(logA) while it runs")
        }
        var figures = [Self.metric(for: mode): figure / 1e6]
        if mode == "tx-only", let sent = a.tx { figures["A->B tx Mpps"] = sent / 1e6 }
        return figures
    }

    /// The medians of testpmd's per-second receive and transmit rates (pps),
    /// the first sample left out, nil where no sample was above 0; and the
    /// packets it received and sent in all (its closing statistics).
    static func rates(_ output: String) -> (rx: Double?, tx: Double?, receivedTotal: Double?, sentTotal: Double?) {
        // testpmd redraws the screen between samples.
        let text = output.replacing(#/\x1b\[[0-9;]*[A-Za-z]/#, with: "")
        var rx: [Double] = [], tx: [Double] = []
        for match in text.matches(of: #/Rx-pps:\s+(\d+)\s+Rx-bps:\s+\d+\s+Tx-pps:\s+(\d+)/#) {
            rx.append(Double(match.output.1) ?? 0)
            tx.append(Double(match.output.2) ?? 0)
        }
        func median(_ values: [Double]) -> Double? { Report.median(values.dropFirst().filter { $0 > 0 }) }
        // "RX-packets: N  RX-dropped: N  RX-total: N", then the same for TX:
        // the accumulated forward statistics, printed last.
        let receivedTotal = text.matches(of: #/RX-packets:\s+(\d+)\s+RX-dropped:/#).last.flatMap { Double($0.output.1) }
        let sentTotal = text.matches(of: #/TX-packets:\s+(\d+)\s+TX-dropped:/#).last.flatMap { Double($0.output.1) }
        return (median(rx), median(tx), receivedTotal, sentTotal)
    }
}
