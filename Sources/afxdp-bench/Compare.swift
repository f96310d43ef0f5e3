// afxdp-bench compare: the engine against the C reference (afxdp-ref), the
// bare libxdp ring loop doing the same work, alternately on one veth
// testbed, several rounds in one run. Each figure is printed as a ratio
// engine / reference with its spread across rounds: on these shared, noisy
// machines only ratios inside one run mean anything.

import AFXDP
import AFXDPTestbed
import ArgumentParser
import Foundation

struct Compare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Runs the engine and the C reference (afxdp-ref) alternately and prints engine / reference ratios.")

    @Option(help: "duplex, tx-only, rx-drop, l2fwd or forward.") var mode = "duplex"
    @Option(help: "Rounds; each runs the engine once and the reference once.") var rounds = 3
    @Option(help: "Seconds per run.") var seconds = 5
    @Option(name: .customLong("frame-size"), help: "Frame length in bytes (64...1514).") var frameSize = 64
    @Option(help: "Packets per list (engine) and per burst (reference).") var batch = 64
    @Option(name: .customLong("ring-size"), help: "All four rings, a power of two (both sides).") var ringSize = 4096
    @Option(help: "The reference binary; default: afxdp-ref beside this binary.") var reference: String?
    @Option(help: "What the engine is compared with: reference (afxdp-ref), engine (the engine itself, with --baseline-extra) or testpmd (DPDK's, with --pmd; scripts/install-deps --peers).")
    var against = "reference"
    @Option(help: "With --against testpmd: the DPDK driver, af_xdp or af_packet.") var pmd = "af_xdp"
    @Option(name: .customLong("engine-extra"), help: "More afxdp-bench options for the engine's runs, written with = since they start with dashes: --engine-extra=\"--through filter\".")
    var engineExtra = ""
    @Option(name: .customLong("baseline-extra"), help: "With --against engine: more afxdp-bench options for the baseline's runs, written with =: --baseline-extra=\"--relay bare\".")
    var baselineExtra = ""
    @Option(name: .customLong("cpu-a"), help: "Pin end A's thread to this CPU (both sides).") var cpuA: Int?
    @Option(name: .customLong("cpu-b"), help: "Pin end B's thread to this CPU (both sides).") var cpuB: Int?
    @Option(name: .customLong("cpu-f"), help: "forward: pin F's thread to this CPU (both sides).") var cpuF: Int?
    @Option(help: ArgumentHelp(
        "tx-only: where A's frames go: receiver (B receives them through the tool measured) or kernel (nothing at B; the figure is A's transmit rate).",
        discussion: """
            kernel compares senders alone: on veth, B's receive work (its XDP program and the copy into its \
            frames) runs on A's core, so a receiver that falls behind and drops frames before that copy \
            makes its sender look faster. With kernel, A's frames meet no XDP program at B and the kernel \
            drops them, the same work for every tool. Against testpmd's txonly, which writes headers and no \
            payload, add --engine-extra="--payload header".
            """))
    var sink: Sink = .receiver
    @Flag(help: "Print every figure as one JSON object on the last line.") var json = false

    enum Sink: String, ExpressibleByArgument, CaseIterable {
        case receiver, kernel
    }

    func validate() throws {
        guard ["duplex", "tx-only", "rx-drop", "l2fwd", "forward"].contains(mode) else {
            throw ValidationError("--mode must be duplex, tx-only, rx-drop, l2fwd or forward")
        }
        guard rounds >= 1, rounds <= 50 else { throw ValidationError("--rounds must be 1...50") }
        guard seconds >= 1, seconds <= 600 else { throw ValidationError("--seconds must be 1...600") }
        guard (64...1514).contains(frameSize) else { throw ValidationError("--frame-size must be 64...1514") }
        if cpuF != nil && mode != "forward" { throw ValidationError("--cpu-f is for --mode forward") }
        guard ["reference", "engine", "testpmd"].contains(against) else { throw ValidationError("--against must be reference, engine or testpmd") }
        if against == "testpmd" {
            guard mode != "forward" else { throw ValidationError("--against testpmd runs duplex, tx-only, rx-drop or l2fwd") }
            guard TestpmdPeer.Driver(rawValue: pmd) != nil else { throw ValidationError("--pmd must be af_xdp or af_packet, not \(pmd)") }
            guard baselineExtra.isEmpty else { throw ValidationError("--baseline-extra goes with --against engine") }
            guard (0...1).contains(cpuA ?? 0), (0...1).contains(cpuB ?? 1) else {
                throw ValidationError("--against testpmd: testpmd runs on cores 0 and 1, so --cpu-a and --cpu-b must be 0 or 1")
            }
        }
        if sink == .kernel && mode != "tx-only" {
            throw ValidationError("--sink kernel goes with --mode tx-only (every other mode receives at B)")
        }
        if against == "reference" && !baselineExtra.isEmpty {
            throw ValidationError("--baseline-extra goes with --against engine (the reference takes no engine options)")
        }
        guard ringSize >= 64, ringSize & (ringSize - 1) == 0 else {
            throw ValidationError("--ring-size must be a power of two, at least 64")
        }
    }

    /// The N of "--queues N" (or "--queues=N") in extra options; 1 without.
    static func queues(in extra: String) -> Int {
        let words = extra.split(separator: " ").map(String.init)
        for (index, word) in words.enumerated() {
            if word == "--queues", index + 1 < words.count, let count = Int(words[index + 1]) { return count }
            if word.hasPrefix("--queues="), let count = Int(word.dropFirst("--queues=".count)) { return count }
        }
        return 1
    }

    func run() throws {
        let me = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        let engine = me.path
        let referencePath = reference ?? me.deletingLastPathComponent().appendingPathComponent("afxdp-ref").path
        if against == "testpmd" { try TestpmdPeer.check() }
        guard against != "reference" || FileManager.default.isExecutableFile(atPath: referencePath) else {
            throw ValidationError(
                "no reference binary at \(referencePath); build it with `swift build -c release --product afxdp-ref` or pass --reference")
        }
        // The reference loads the very program the engine embeds.
        let object = FileManager.default.temporaryDirectory.appendingPathComponent("afxdp-compare-\(getpid()).bpf.o")
        try Data(XDPProgramObject.bytes()).write(to: object)
        defer { try? FileManager.default.removeItem(at: object) }

        // The ends (A and B), and in forward mode F's two interfaces between them.
        let ends: (a: String, namespaceA: String, b: String, namespaceB: String)
        var relay: (a: String, b: String, namespace: String)?
        let destroy: () -> Void
        if mode == "forward" {
            let bed = try ForwardingTestbed.create(prefix: "afxbench")
            destroy = bed.destroy
            ends = (bed.interfaceA, bed.namespaceA, bed.interfaceB, bed.namespaceB)
            relay = (bed.interfaceFA, bed.interfaceFB, bed.namespaceF)
        } else {
            // As many queues as either side's extra options ask for (--queues N).
            let queues = [engineExtra, baselineExtra].map(Self.queues(in:)).max() ?? 1
            let bed = try VethTestbed.create(prefix: "afxbench", queues: queues)
            destroy = bed.destroy
            ends = (bed.interfaceA, bed.namespaceA, bed.interfaceB, bed.namespaceB)
        }
        defer { destroy() }
        // --sink kernel: the engine and the reference open B on a veth pair of
        // its own, which A's frames never reach; they arrive at the testbed's
        // B, where no program runs, and the kernel drops them.
        let spare = sink == .kernel ? try VethTestbed.create(prefix: "afxbench") : nil
        defer { spare?.destroy() }
        let receiving: (interface: String, namespace: String) = spare.map { ($0.interfaceB, $0.namespaceB) } ?? (ends.b, ends.namespaceB)
        // Against testpmd, which forwards each end on a core of its own, the
        // engine's ends are pinned alike: A on 0, B on 1 unless told.
        let (cpuA, cpuB) = against == "testpmd" ? (self.cpuA ?? 0, self.cpuB ?? 1) : (self.cpuA, self.cpuB)
        let pinning = [("--cpu-a", cpuA), ("--cpu-b", cpuB), ("--cpu-f", cpuF)].flatMap { name, cpu in cpu.map { [name, "\($0)"] } ?? [] }
        let common = ["--seconds", "\(seconds)", "--frame-size", "\(frameSize)", "--batch", "\(batch)", "--ring-size", "\(ringSize)", "--json"]
            + pinning
        let engineBase = [engine, mode, "--interface", ends.a, "--namespace", ends.namespaceA,
                               "--peer", receiving.interface, "--peer-namespace", receiving.namespace]
            + (relay.map { ["--relay-a", $0.a, "--relay-b", $0.b, "--relay-namespace", $0.namespace] } ?? []) + common
        let extra = { (text: String) in text.split(separator: " ").map(String.init) }
        let baselineArguments = engineBase + extra(baselineExtra)
        let engineArguments = engineBase + extra(engineExtra)
        let referenceArguments = against == "engine" ? baselineArguments : [referencePath, mode, "--interface-a", ends.a, "--namespace-a", ends.namespaceA,
                                  "--interface-b", receiving.interface, "--namespace-b", receiving.namespace]
            + (relay.map { ["--interface-fa", $0.a, "--interface-fb", $0.b, "--namespace-f", $0.namespace] } ?? [])
            + ["--xdp-object", object.path] + common

        let peer = against == "testpmd"
            ? TestpmdPeer(driver: TestpmdPeer.Driver(rawValue: pmd)!, mode: mode, seconds: seconds, frameSize: frameSize,
                          ends: ends, cpuA: cpuA ?? 0, cpuB: cpuB ?? 1, sinkIsKernel: sink == .kernel)
            : nil
        let versus = against == "engine" ? "the engine with \(baselineExtra.isEmpty ? "no extra options" : baselineExtra)"
            : against == "testpmd" ? "DPDK testpmd, \(pmd) driver\(mode == "duplex" ? ", duplex as the peers run it: 32 frames looped by both ends" : "")"
            : "the C reference"
        if sink == .kernel { print("compare: nothing receives at B: A's frames meet no program there and the kernel drops them; the figure is A's transmit rate") }
        print("compare: \(mode), \(frameSize)-byte frames, \(seconds) s per run, \(rounds) rounds, "
              + "engine\(engineExtra.isEmpty ? "" : " with \(engineExtra)") and reference (\(versus)) alternating")
        var samples: [String: [(engine: Double, reference: Double)]] = [:]
        var order: [String] = []
        for round in 1...rounds {
            // Alternate who goes first, so neither always runs on a warmer machine.
            let runs = round % 2 == 1 ? [("engine", engineArguments), ("reference", referenceArguments)]
                                      : [("reference", referenceArguments), ("engine", engineArguments)]
            var figures: [String: [String: Double]] = [:]
            for (who, arguments) in runs {
                if who == "reference", let peer {
                    let byMetric = try peer.run()
                    figures[who] = byMetric
                    print("  round \(round) \(who.padding(toLength: 9, withPad: " ", startingAt: 0)) "
                          + byMetric.keys.sorted().map { "\($0) \(String(format: "%.3f", byMetric[$0]!))" }.joined(separator: "  "))
                    continue
                }
                let output = try runCommand(arguments)
                guard let last = output.split(separator: "\n").last,
                      let report = try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any],
                      let directions = report["directions"] as? [[String: Any]]
                else { throw ValidationError("\(who) printed no JSON report:\n\(output)") }
                var byMetric: [String: Double] = [:]
                var total = 0.0
                for direction in directions {
                    let name = direction["name"] as? String ?? "?"
                    if mode == "tx-only", let tx = (direction["txMpps"] as? NSNumber)?.doubleValue { byMetric["\(name) tx Mpps"] = tx }
                    if sink == .kernel { continue }  // nothing is received
                    let mpps = (direction["mpps"] as? NSNumber)?.doubleValue ?? 0
                    byMetric["\(name) Mpps"] = mpps
                    total += mpps
                    if let latency = direction["latencyMicroseconds"] as? [String: Any],
                       let p50 = (latency["p50"] as? NSNumber)?.doubleValue {
                        byMetric["\(name) p50 µs"] = p50
                    }
                }
                if directions.count > 1 { byMetric["total Mpps"] = total }
                figures[who] = byMetric
                print("  round \(round) \(who.padding(toLength: 9, withPad: " ", startingAt: 0)) "
                      + byMetric.keys.sorted().map { "\($0) \(String(format: "%.3f", byMetric[$0]!))" }.joined(separator: "  "))
            }
            for (metric, value) in figures["engine"] ?? [:] {
                guard let referenceValue = figures["reference"]?[metric] else { continue }
                if samples[metric] == nil { order.append(metric) }
                samples[metric, default: []].append((value, referenceValue))
            }
        }

        print("\nmetric               engine (median)  reference (median)  engine/reference  spread (min...max)")
        var rows: [[String: Any]] = []
        for metric in order.sorted() {
            let pairs = samples[metric]!
            let ratios = pairs.map { $0.reference > 0 ? $0.engine / $0.reference : 0 }.sorted()
            let engineMedian = Report.median(pairs.map(\.engine)) ?? 0, referenceMedian = Report.median(pairs.map(\.reference)) ?? 0
            let ratio = Report.median(ratios) ?? 0
            print(metric.padding(toLength: 20, withPad: " ", startingAt: 0)
                  + String(format: " %16.3f  %18.3f  %16.3f  %.3f...%.3f", engineMedian, referenceMedian, ratio, ratios.first!, ratios.last!))
            rows.append(["metric": metric, "engine": engineMedian, "reference": referenceMedian,
                         "ratio": ratio, "ratioMin": ratios.first!, "ratioMax": ratios.last!])
        }
        print("(Mpps: higher is better; latency: lower is better. Ratios are per round, then the median.)")
        if json {
            let report: [String: Any] = ["tool": "afxdp-bench compare", "mode": mode, "rounds": rounds, "seconds": seconds,
                                         "frameSize": frameSize, "batch": batch, "ringSize": ringSize, "sink": sink.rawValue,
                                         "metrics": rows]
            print(String(decoding: try JSONSerialization.data(withJSONObject: report, options: [.sortedKeys]), as: UTF8.self))
        }
    }

}
