// afxdp-bench soak: open, traffic, pause, restart, close, over and over on
// one testbed, checking each cycle and watching memory and descriptors.

import AFXDP
import AFXDPSystem
import AFXDPTestbed
import ArgumentParser
import Foundation

extension AFXDPBench {
    struct Soak: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Repeats cycles of open, duplex traffic, pause, restart and close on one testbed, for --minutes.",
            discussion: """
                Each cycle opens both ends, runs duplex traffic for --seconds (2 by default) \
                with at most --window frames in flight per direction (1024 by default: a \
                lossless run), pauses and restarts each end, and closes them. A cycle passes \
                when no frame was lost, corrupted, duplicated or reordered, every send \
                completed once (nothing outstanding after close), every frame is home in its \
                pool, and no XDP program is left. The process's resident memory and open file \
                descriptors are sampled after each cycle, its ports gone: from the third cycle \
                on (two warm up: the allocator's arenas, the runtime's caches), descriptors must \
                not grow at all and memory by at most --rss-slack MiB (a port's UMEM is 64 MiB \
                at the default rings: a leaked one shows). Exit status 2 if any check failed.
                """)

        @Option(help: "How long to go on starting cycles, in minutes.")
        var minutes = 1.0

        @Option(name: .customLong("rss-slack"), help: "Resident memory growth allowed from the third cycle to the last, in MiB.")
        var rssSlack = 32.0

        @OptionGroup var options: BenchOptions

        func validate() throws {
            guard minutes > 0, minutes <= 24 * 60 else { throw ValidationError("--minutes must be more than 0 and at most 1440, not \(minutes)") }
            guard rssSlack >= 0 else { throw ValidationError("--rss-slack must not be negative") }
            if let timeout = options.timeout, timeout <= minutes * 60 {
                throw ValidationError("--timeout (\(timeout)) bounds the whole soak and must be longer than --minutes")
            }
        }

        func run() throws { try SoakRun(minutes: minutes, rssSlackMiB: rssSlack, options: options).run() }
    }
}

/// What `soak --json` prints.
struct SoakReport: Codable {
    struct Cycle: Codable {
        var cycle: Int
        var framesEachWay: [Int]
        var mpps: Double
        var lost: Int
        var corrupted: Int
        var reorderedOrDuplicated: Int
        var sendsOutstandingAfterClose: Bool
        var framesHome: Bool
        var residentMiB: Double
        var openFileDescriptors: Int
        var errors: [String]
        var passed: Bool
    }
    var tool = "afxdp-bench"
    var command = "soak"
    var minutes: Double
    var secondsPerCycle: Double
    var cycles: [Cycle]
    var framesEachWay: [Int]
    var residentGrowthMiB: Double
    var fileDescriptorGrowth: Int
    var passed: Bool
}

struct SoakRun {
    static let defaultSeconds = 2.0
    static let defaultWindow = 1024

    let minutes: Double
    let rssSlackMiB: Double
    let options: BenchOptions

    func run() throws {
        var given = self.options
        if given.window == 0 { given.window = Self.defaultWindow }
        let minutes = self.minutes
        let bed = try RepeatedSessions(mode: .duplex, options: given, defaultSeconds: Self.defaultSeconds) {
            minutes * 60 + $0.seconds + 60
        }
        defer { bed.finish() }
        let options = bed.options, endpoints = bed.endpoints

        print("soak: cycles of \(Report.fmt(options.seconds, 1)) s duplex traffic (window \(options.window)), pause, restart, close, for \(Report.fmt(minutes, 1)) min")
        print("cycle   A->B frames   B->A frames    Mpps   lost  corrupt  late/dup  outstanding  home   RSS MiB   fds  verdict")
        let end = monotonicNanoseconds() + UInt64(minutes * 60e9)
        var cycles: [SoakReport.Cycle] = []
        while monotonicNanoseconds() < end, !stopRequested {
            var cycle = try runCycle(number: cycles.count + 1, options: options, endpoints: endpoints)
            // Sampled once the cycle's ports and their UMEMs are gone.
            cycle.residentMiB = Self.residentMiB()
            cycle.openFileDescriptors = Self.openFileDescriptors()
            cycles.append(cycle)
            print(String(
                format: "%5d  %12d  %12d  %6.3f  %5d  %7d  %8d  %11@  %4@  %8.1f  %4d  %@",
                cycle.cycle, cycle.framesEachWay[0], cycle.framesEachWay[1], cycle.mpps, cycle.lost, cycle.corrupted,
                cycle.reorderedOrDuplicated, cycle.sendsOutstandingAfterClose ? "yes" : "no", cycle.framesHome ? "yes" : "no",
                cycle.residentMiB, cycle.openFileDescriptors, cycle.passed ? "pass" : "FAIL"))
            for error in cycle.errors { print("ERROR: cycle \(cycle.cycle): \(error)") }
        }
        bed.finish()

        // Two cycles warm up (the allocator's arenas for the threads, the runtime's caches).
        let warmUp = cycles.count > 3 ? 2 : 1
        let settled = cycles.dropFirst(warmUp)
        let growth = (settled.last?.residentMiB ?? 0) - (settled.first?.residentMiB ?? 0)
        let fdGrowth = (settled.last?.openFileDescriptors ?? 0) - (settled.first?.openFileDescriptors ?? 0)
        let totals = cycles.reduce([0, 0]) { [$0[0] + $1.framesEachWay[0], $0[1] + $1.framesEachWay[1]] }
        let passed = !cycles.isEmpty && cycles.allSatisfy(\.passed) && growth <= rssSlackMiB && fdGrowth == 0
        let report = SoakReport(
            minutes: minutes, secondsPerCycle: options.seconds, cycles: cycles, framesEachWay: totals,
            residentGrowthMiB: (growth * 10).rounded() / 10, fileDescriptorGrowth: fdGrowth, passed: passed)
        print("")
        print("soak: \(cycles.count) cycles, \(totals[0]) frames A->B and \(totals[1]) B->A, "
            + "\(cycles.filter { !$0.passed }.count) failed; resident memory from cycle \(warmUp + 1) to \(cycles.count): "
            + "\(Report.fmt(growth, 1)) MiB (allowed \(Report.fmt(rssSlackMiB, 1))), open descriptors: \(fdGrowth >= 0 ? "+" : "")\(fdGrowth)")
        print(passed ? "soak: pass" : "soak: FAIL")
        if self.options.json { print(Report.json(report)) }
        let reason = stopRequest.load(ordering: .relaxed)
        if !passed { throw ExitCode(2) }
        if reason != 0 { throw ExitCode(Benchmark.exitStatus(for: reason)) }
    }

    private func runCycle(number: Int, options: BenchOptions, endpoints: [Endpoint]) throws -> SoakReport.Cycle {
        let session = Session(mode: .duplex, options: options, endpoints: endpoints)
        session.quiet = true
        defer { session.close() }
        try session.open()
        let report = try session.run()
        let tops = session.tops
        let ports = session.ports.joined().map { $0 }
        // Traffic has stopped: pause and restart each end, then close.
        var errors = report.errors
        for (end, top) in tops.enumerated() {
            top.pause(timeout: .seconds(2))
            if top.currentState != .paused { errors.append("end \(endpoints[end].name) did not pause") }
            top.restart()
            if top.currentState != .running { errors.append("end \(endpoints[end].name) did not restart") }
        }
        session.close()
        errors += Benchmark.leftPrograms(endpoints)
        let outstanding = tops.contains { $0.hasSendsOutstanding }
        let home = ports.allSatisfy { $0.poolStatus.allFramesHome }
        let directions = report.directions
        let lost = directions.reduce(0) { $0 + max(0, $1.lost) }
        let corrupted = directions.reduce(0) { $0 + $1.corrupted }
        let late = directions.reduce(0) { $0 + $1.reordered }
        if outstanding { errors.append("sends still outstanding after close") }
        if !home { errors.append("frames not home after close: \(ports.map { "\($0.poolStatus)" }.joined(separator: "; "))") }
        return SoakReport.Cycle(
            cycle: number, framesEachWay: directions.map(\.packets), mpps: directions.reduce(0) { $0 + $1.mpps },
            lost: lost, corrupted: corrupted, reorderedOrDuplicated: late, sendsOutstandingAfterClose: outstanding,
            framesHome: home, residentMiB: 0, openFileDescriptors: 0,
            errors: errors,
            passed: errors.isEmpty && lost == 0 && corrupted == 0 && late == 0 && directions.allSatisfy { $0.gaps == 0 && $0.packets > 0 })
    }

    /// Resident memory of this process (/proc/self/statm), in MiB.
    static func residentMiB() -> Double {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Double(fields[1]) else { return 0 }
        return pages * Double(sysconf(Int32(_SC_PAGESIZE))) / 1_048_576
    }

    /// Open file descriptors of this process (/proc/self/fd).
    static func openFileDescriptors() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
    }
}
