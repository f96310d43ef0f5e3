// afxdp-bench ndr: the no-drop rate (RFC 2544 throughput), or the partial-drop
// rate with --loss: a binary search over the offered rate, one paced trial per
// step, on one testbed made once.

import AFXDPTestbed
import ArgumentParser
import Foundation

extension AFXDPBench {
    struct NDR: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ndr",
            abstract: "Finds the highest offered rate with no loss (NDR), or with at most --loss (PDR), by binary search.",
            discussion: """
                The first trial is unpaced: what the ends do flat out. If it loses nothing, \
                that is the NDR (the senders, not the receivers, are the limit). Otherwise each \
                further trial offers a rate per direction (--rate, paced per list) halfway \
                between the highest that passed and the lowest that failed, until the two are \
                within --precision of each other or --trials run out. A trial passes when the \
                frames lost (sent, completed, never received) are at most --loss of those sent. \
                The figure is what the best passing trial received, per direction and in all. \
                Where a trial lost frames, the table says where: the engine's own (a fill \
                ring empty while its port's thread was busy) apart from the kernel's and veth's. \
                --seconds is per trial (default 3).
                """)

        @Option(help: "The mode: duplex, tx-only, rx-drop, l2fwd or forward (A - F - B, both directions through F).")
        var mode: Mode = .duplex

        @Option(help: "Loss allowed, as a fraction of the frames sent: 0 for the NDR, e.g. 0.001 (0.1%) for a PDR.")
        var loss = 0.0

        @Option(help: "Stop when the passing and failing rates are within this fraction of each other.")
        var precision = 0.02

        @Option(help: "Most trials, the unpaced one included.")
        var trials = 12

        @OptionGroup var options: BenchOptions

        func validate() throws {
            guard loss >= 0, loss < 1 else {
                throw ValidationError("--loss is a fraction of the frames sent, 0 (no drop) up to below 1, not \(loss)")
            }
            guard precision >= 0.001, precision <= 0.5 else { throw ValidationError("--precision must be 0.001...0.5, not \(precision)") }
            guard (2...40).contains(trials) else { throw ValidationError("--trials must be 2...40, not \(trials)") }
            guard options.rate == 0 else { throw ValidationError("ndr sets the rate of each trial itself: leave out --rate") }
            let seconds = options.secondsOption ?? NDRSearch.defaultSeconds
            if let timeout = options.timeout, timeout <= Double(trials) * seconds {
                throw ValidationError("--timeout (\(timeout)) bounds the whole search and must be longer than --trials times --seconds")
            }
        }

        func run() throws {
            try NDRSearch(mode: mode, loss: loss, precision: precision, trials: trials, options: options).run()
        }
    }
}

/// What `ndr --json` prints.
struct NDRReport: Codable {
    struct Trial: Codable {
        /// Offered packets per second per direction; 0: unpaced.
        var offeredPerDirection: Double
        var txMpps: Double
        var rxMpps: Double
        var sentPackets: Int
        var lost: Int
        var lossFraction: Double
        /// Frames dropped because a port's fill ring was empty (the engine's
        /// receive side had no frame to give the kernel).
        var fillRingEmpty: Int
        /// Other drops the kernel counted at the sockets (RX ring full, ...).
        var socketDrops: Int
        var passed: Bool
        var errors: [String]
    }

    var tool = "afxdp-bench"
    var command = "ndr"
    var mode: String
    var frameSize: Int
    var secondsPerTrial: Double
    var lossAllowed: Double
    /// Received Mpps of the best passing trial, per direction and added up (nil: none passed).
    var ndrMppsPerDirection: Double?
    var ndrMppsTotal: Double?
    /// The best passing trial was unpaced: the senders were the limit.
    var unpacedPassed: Bool
    var trials: [Trial]
}

struct NDRSearch {
    static let defaultSeconds = 3.0
    /// Watchdog allowance per trial beyond its sending time.
    static let slackPerTrial = 15.0

    let mode: Mode
    let loss: Double
    let precision: Double
    let trials: Int
    let options: BenchOptions

    func run() throws {
        let trials = self.trials
        let bed = try RepeatedSessions(mode: mode, options: self.options, defaultSeconds: Self.defaultSeconds) {
            Double(trials) * ($0.seconds + Self.slackPerTrial) + 30
        }
        defer { bed.finish() }
        let options = bed.options, endpoints = bed.endpoints

        var results: [NDRReport.Trial] = []
        var best: NDRReport.Trial?
        var passing = 0.0, failing = 0.0  // offered rates per direction, packets/s
        for index in 0..<trials {
            if stopRequested { break }
            let offered: Double
            if index == 0 {
                offered = 0
            } else {
                offered = (passing + failing) / 2
                if failing - passing <= precision * failing { break }
            }
            var trialOptions = options
            trialOptions.rate = offered
            print("")
            print("ndr trial \(index + 1): " + (offered == 0 ? "unpaced" : "offering \(Report.fmt(offered / 1e6, 4)) Mpps per direction"))
            let session = Session(mode: mode, options: trialOptions, endpoints: endpoints)
            // The first trial's header says what runs; the table says the rest.
            session.quiet = index > 0
            defer { session.close() }
            try session.open()
            let report = try session.run()
            session.close()
            let trial = Self.trial(report, offered: offered, lossAllowed: loss)
            results.append(trial)
            print("ndr trial \(index + 1): sent \(Report.fmt(trial.txMpps, 4)), received \(Report.fmt(trial.rxMpps, 4)) Mpps per direction, "
                + "loss \(Report.fmt(trial.lossFraction * 100, 4)) % (fill ring empty \(trial.fillRingEmpty), other socket drops \(trial.socketDrops)): "
                + (trial.passed ? "pass" : "fail"))
            if !trial.errors.isEmpty {
                for error in trial.errors { print("ERROR: trial \(index + 1): \(error)") }
                break
            }
            if trial.passed, trial.rxMpps > best?.rxMpps ?? -1 { best = trial }
            let reached = trial.txMpps * 1e6
            if index == 0 {
                if trial.passed { break }
                // Offer up to a little more than the ends sent flat out.
                failing = reached * 1.05
                continue
            }
            if trial.passed {
                passing = offered
                // The senders could not offer the rate: no higher one will do better.
                if reached < 0.97 * offered { failing = offered }
            } else {
                failing = offered
            }
        }
        bed.finish()

        let directions = Double(mode == .duplex || mode == .forward ? 2 : 1)
        let report = NDRReport(
            mode: mode.rawValue, frameSize: options.frameSize, secondsPerTrial: options.seconds, lossAllowed: loss,
            ndrMppsPerDirection: best.map(\.rxMpps), ndrMppsTotal: best.map { $0.rxMpps * directions },
            unpacedPassed: best?.offeredPerDirection == 0, trials: results)
        printSummary(report)
        var plotted = true
        if let plot = self.options.plot { plotted = Plot.write(Plot.ndrChart(report), to: plot) }
        if self.options.json { print(Report.json(report)) }
        if results.contains(where: { !$0.errors.isEmpty }) { throw ExitCode(2) }
        let reason = stopRequest.load(ordering: .relaxed)
        if reason != 0 { throw ExitCode(Benchmark.exitStatus(for: reason)) }
        if !plotted { throw ExitCode.failure }
    }

    /// A run's figures as one trial: per direction (the mean over directions), with its drops.
    static func trial(_ report: RunReport, offered: Double, lossAllowed: Double) -> NDRReport.Trial {
        let directions = max(1, report.directions.count)
        let sent = report.directions.reduce(0) { $0 + $1.sentPackets }
        let lost = report.directions.reduce(0) { $0 + max(0, $1.lost) }
        let lossFraction = sent > 0 ? Double(lost) / Double(sent) : 1
        let fillEmpty = report.ports.reduce(0) { $0 + $1.fillRingEmpty }
        // The kernel counts a fill-ring-empty drop in its rx_dropped too; a full RX ring apart.
        let socketDrops = max(0, report.ports.reduce(0) { $0 + $1.socketReceiveDropped } - fillEmpty)
            + report.ports.reduce(0) { $0 + $1.socketReceiveRingFull }
        let checked = report.directions.allSatisfy { $0.corrupted == 0 && $0.reordered == 0 }
        return NDRReport.Trial(
            offeredPerDirection: offered,
            txMpps: report.directions.reduce(0) { $0 + $1.txMpps } / Double(directions),
            rxMpps: report.directions.reduce(0) { $0 + $1.mpps } / Double(directions),
            sentPackets: sent, lost: lost, lossFraction: lossFraction, fillRingEmpty: fillEmpty, socketDrops: socketDrops,
            passed: sent > 0 && checked && lossFraction <= lossAllowed && report.errors.isEmpty,
            errors: report.errors + (checked ? [] : ["frames arrived corrupted or out of order"]))
    }

    private func printSummary(_ report: NDRReport) {
        print("")
        let name = report.lossAllowed == 0 ? "NDR (no loss)" : "PDR (loss at most \(Report.fmt(report.lossAllowed * 100, 3)) %)"
        print("\(name): \(report.mode), \(report.frameSize)-byte frames, \(Report.fmt(report.secondsPerTrial, 1)) s per trial")
        let columns = ["trial", "offered Mpps", "tx Mpps", "rx Mpps", "sent", "lost", "loss %", "fill empty", "other drops", "verdict"]
        let rows = report.trials.enumerated().map { index, trial in
            [
                String(index + 1), trial.offeredPerDirection == 0 ? "unpaced" : Report.fmt(trial.offeredPerDirection / 1e6, 4),
                Report.fmt(trial.txMpps, 4), Report.fmt(trial.rxMpps, 4), String(trial.sentPackets), String(trial.lost),
                Report.fmt(trial.lossFraction * 100, 4), String(trial.fillRingEmpty), String(trial.socketDrops),
                trial.passed ? "pass" : "fail",
            ]
        }
        Report.printTable(columns, rows)
        print("(Mpps per direction; fill empty: frames the kernel dropped because the engine's fill ring was empty)")
        if let perDirection = report.ndrMppsPerDirection, let total = report.ndrMppsTotal {
            print("\(name): \(Report.fmt(perDirection, 4)) Mpps per direction, \(Report.fmt(total, 4)) Mpps in all"
                + (report.unpacedPassed ? " (unpaced: the senders were the limit, nothing was lost)" : ""))
        } else {
            print("\(name): no trial passed")
        }
    }

}

extension Plot {
    /// The search, trial by trial: offered, sent and received Mpps per
    /// direction, and the loss of each trial.
    static func ndrChart(_ report: NDRReport) -> String {
        let trials = report.trials
        let x = trials.indices.map(Double.init)
        let offered = zip(x, trials).filter { $0.1.offeredPerDirection > 0 }.map { (x: $0.0, y: $0.1.offeredPerDirection / 1e6) }
        let sent = zip(x, trials).map { (x: $0.0, y: $0.1.txMpps) }
        let received = zip(x, trials).map { (x: $0.0, y: $0.1.rxMpps) }
        let loss = zip(x, trials).map { (x: $0.0, y: $0.1.lossFraction * 100) }
        let name = report.lossAllowed == 0 ? "NDR" : "PDR"
        var subtitle = "\(report.frameSize)-byte frames · \(Report.fmt(report.secondsPerTrial, 1)) s per trial · "
        if let ndr = report.ndrMppsPerDirection {
            subtitle += "\(name) \(Report.fmt(ndr, 4)) Mpps per direction"
        } else {
            subtitle += "no trial passed"
        }
        let chart = LineChart(
            title: "afxdp-bench ndr · \(report.mode) · \(dateText())",
            subtitle: subtitle,
            xLabel: "trial (first: unpaced)",
            xRange: -0.5...(Double(max(trials.count, 1)) - 0.5),
            xTicks: trials.indices.map { (Double($0), trials[$0].passed ? "\($0 + 1) ✓" : "\($0 + 1) ✗") },
            panels: [
                .init(yLabel: "Mpps per direction", series: [
                    .init(color: palette[2], dashed: true, points: offered),
                    .init(color: palette[0], dashed: true, points: sent),
                    .init(color: palette[0], dashed: false, points: received, labelValues: true),
                ]),
                .init(yLabel: "loss (% of frames sent)", series: [.init(color: palette[1], dashed: false, points: loss, labelValues: true)]),
            ],
            legend: [
                .init(label: "offered", color: palette[2], dashed: true),
                .init(label: "sent", color: palette[0], dashed: true),
                .init(label: "received", color: palette[0], dashed: false),
                .init(label: "loss", color: palette[1], dashed: false),
            ],
            panelHeight: 280,
            note: trials.isEmpty ? "no trial ran" : nil)
        return chart.svg()
    }
}
