// afxdp-bench sweep: one mode at each of a list of frame sizes, on one
// testbed made once; a table of rates and loss by size, a chart (--plot) and
// one JSON object (--json) with every size's full report.

import AFXDPTestbed
import ArgumentParser
import Foundation

extension AFXDPBench {
    struct Sweep: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Runs one mode at each of a list of frame sizes and tabulates the rates by size.",
            discussion: """
                One testbed serves every size (or the --interface/--peer pair): the ports are \
                opened for each size and closed after it, and the testbed is removed at the end \
                (also on Ctrl-C, on an error and on the watchdog). --seconds is per size \
                (default 3 here); --timeout, if given, bounds the whole sweep (default: \
                --seconds + 15 per size, plus 30). --frame-size does not apply: the sizes come \
                from --sizes. --plot draws Mpps and Gbit/s by frame size; --json prints one \
                object, on the last line, with every size's figures and full report.
                """)

        @Option(help: "The mode to run at each size.")
        var mode: Mode = .txOnly

        @Option(help: "Frame sizes in bytes, comma-separated, each 64...9000 (without FCS; past 1514 jumbo frames, multi-buffer).")
        var sizes: String = "64,128,256,512,1024,1514,9000"

        @OptionGroup var options: BenchOptions

        func validate() throws {
            _ = try frameSizes()
            guard options.frameSize == 64 else {
                throw ValidationError("sweep takes its frame sizes from --sizes, not --frame-size")
            }
            let seconds = options.secondsOption ?? SweepRun.defaultSeconds
            if let timeout = options.timeout, timeout <= Double(try frameSizes().count) * seconds {
                throw ValidationError("--timeout (\(timeout)) bounds the whole sweep and must be longer than "
                    + "the sizes times --seconds (\(Report.fmt(Double(try frameSizes().count) * seconds, 1)) s)")
            }
        }

        func run() throws {
            try SweepRun.run(mode: mode, sizes: try frameSizes(), options: options)
        }

        private func frameSizes() throws -> [Int] {
            var list: [Int] = []
            for word in sizes.split(separator: ",") {
                let text = word.trimmingCharacters(in: .whitespaces)
                guard let size = Int(text), (64...9000).contains(size) else {
                    throw ValidationError("--sizes: '\(text)' is not a frame size of 64...9000 bytes")
                }
                list.append(size)
            }
            guard !list.isEmpty, list.count <= 64 else {
                throw ValidationError("--sizes takes 1 to 64 comma-separated frame sizes, e.g. 64,512,1514")
            }
            return list
        }
    }
}

extension Mode: ExpressibleByArgument {
    static var allValueStrings: [String] { ["duplex", "tx-only", "rx-drop", "l2fwd"] }
}

/// What `sweep --json` prints.
struct SweepReport: Codable {
    struct Row: Codable {
        var frameSize: Int
        /// Measured sending time (shorter than asked if the sweep was stopped).
        var seconds: Double
        var direction: String
        var txMpps: Double
        var mpps: Double
        var gbps: Double
        var sentPackets: Int
        var packets: Int
        var lost: Int
        var lossPercent: Double
    }

    var tool = "afxdp-bench"
    var command = "sweep"
    var mode: String
    var secondsPerSize: Double
    var sizes: [Int]
    var gbpsIncludesPreambleAndGap: Bool
    var stoppedEarlyBy: String?
    /// One row per size and direction: the table.
    var results: [Row]
    /// Each size's full report, as a single run's --json prints it.
    var runs: [RunReport]
}

enum SweepRun {
    static let defaultSeconds = 3.0
    /// Watchdog allowance per size beyond its sending time: opening the
    /// ports, draining (at most 1 s) and closing.
    static let slackPerSize = 15.0

    static func run(mode: Mode, sizes: [Int], options given: BenchOptions) throws {
        let bed = try RepeatedSessions(mode: mode, options: given, defaultSeconds: defaultSeconds) {
            Double(sizes.count) * ($0.seconds + slackPerSize) + 30
        }
        defer { bed.finish() }
        let options = bed.options, endpoints = bed.endpoints

        var runs: [RunReport] = []
        for (index, size) in sizes.enumerated() {
            if stopRequested { break }
            if size > 1514, !Session.runsJumboFrames(mode) || !options.allowJumboFrames {
                print("sweep: \(size)-byte frames skipped: jumbo frames run in duplex, tx-only and rx-drop, one queue, on the benchmark's own veth pair, --payload checked")
                continue
            }
            var sizeOptions = options
            sizeOptions.frameSize = size
            print("")
            print("sweep \(index + 1)/\(sizes.count): \(size)-byte frames")
            let session = Session(mode: mode, options: sizeOptions, endpoints: endpoints)
            defer { session.close() }
            try session.open()
            let report = try session.run()
            session.close()
            runs.append(report)
            for direction in report.directions {
                print("sweep \(size) bytes, \(direction.name): \(Report.fmt(direction.mpps, 3)) Mpps, "
                    + "\(Report.fmt(direction.gbps, 3)) Gbit/s, loss \(Report.fmt(direction.lossPercent, 3)) %")
            }
            for error in report.errors { print("ERROR: \(size) bytes: \(error)") }
        }
        bed.finish()

        let reason = stopRequest.load(ordering: .relaxed)
        let sweep = SweepReport(
            mode: mode.rawValue, secondsPerSize: options.seconds, sizes: sizes,
            gbpsIncludesPreambleAndGap: options.wireOverhead,
            stoppedEarlyBy: reason == 0 ? nil : StopReason.describe(reason),
            results: runs.flatMap { run in
                run.directions.map { direction in
                    SweepReport.Row(
                        frameSize: run.frameSize, seconds: run.seconds, direction: direction.name, txMpps: direction.txMpps,
                        mpps: direction.mpps, gbps: direction.gbps, sentPackets: direction.sentPackets,
                        packets: direction.packets, lost: direction.lost, lossPercent: direction.lossPercent)
                }
            },
            runs: runs)
        printTable(sweep, runs: runs)
        var plotted = true
        if let plot = given.plot { plotted = Plot.write(Plot.sweepChart(sweep), to: plot) }
        if given.json { print(Report.json(sweep)) }

        if runs.contains(where: { !$0.errors.isEmpty }) { throw ExitCode(2) }
        if reason != 0 { throw ExitCode(Benchmark.exitStatus(for: reason)) }
        if !plotted { throw ExitCode.failure }
    }

    private static func printTable(_ sweep: SweepReport, runs: [RunReport]) {
        print("")
        var title = "sweep: \(sweep.mode), \(Report.fmt(sweep.secondsPerSize, 1)) s per size"
        if let first = runs.first { title += first.zeroCopy ? ", zero-copy" : ", copy mode" }
        if let reason = sweep.stoppedEarlyBy { title += " (stopped early by \(reason); \(runs.count) of \(sweep.sizes.count) sizes)" }
        title += sweep.gbpsIncludesPreambleAndGap ? "; Gbit/s with 20 bytes/frame of preamble and gap" : "; Gbit/s of frame bytes"
        print(title)
        let columns = ["size", "seconds", "direction", "tx Mpps", "rx Mpps", "rx Gbit/s", "sent", "received", "lost", "loss %"]
        let rows = sweep.results.map { row in
            [
                String(row.frameSize), Report.fmt(row.seconds, 2), row.direction, Report.fmt(row.txMpps, 3), Report.fmt(row.mpps, 3),
                Report.fmt(row.gbps, 3), String(row.sentPackets), String(row.packets), String(row.lost),
                Report.fmt(row.lossPercent, 3),
            ]
        }
        Report.printTable(columns, rows)
    }
}
