// --plot: charts written as hand-made SVG: a run's per-second rates over
// time, a sweep's rates by frame size. A name ending in .png also gets the
// SVG (beside it, same name) converted by rsvg-convert (librsvg2-bin) or
// ImageMagick's convert, whichever is installed.

import AFXDPTestbed
import Foundation

// MARK: - The per-second samples of a run

/// What the per-second lines print, kept for the chart: the rates of each
/// interval, per direction. Recorded by the main thread; room for every
/// interval of the run is reserved before the traffic starts.
final class Timeline {
    struct Point {
        /// Seconds since sending started, at the end of the interval.
        var seconds: Double
        var receivedMpps: Double
        var sentMpps: Double
    }

    let names: [String]
    private(set) var points: [[Point]]

    init(names: [String] = [], seconds: Double = 0) {
        self.names = names
        // One interval a second, and a last shorter one.
        let capacity = Int(seconds.rounded(.up)) + 2
        points = names.map { _ in
            var points: [Point] = []
            points.reserveCapacity(capacity)
            return points
        }
    }

    func record(elapsed: UInt64, interval: UInt64, previous: [DirectionSample], current: [DirectionSample]) {
        let seconds = Double(interval) / 1e9
        guard seconds > 0 else { return }
        for index in points.indices where index < current.count && index < previous.count {
            points[index].append(Point(
                seconds: Double(elapsed) / 1e9,
                receivedMpps: Double(current[index].received - previous[index].received) / seconds / 1e6,
                sentMpps: Double(current[index].sent - previous[index].sent) / seconds / 1e6))
        }
    }
}

// MARK: - Charts of the benchmark

enum Plot {
    /// Colours per direction (received solid, sent dashed in the same colour).
    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]

    /// The per-second chart of one run.
    static func timelineChart(_ timeline: Timeline, report: RunReport) -> String {
        var maximumTime = 1.0
        var series: [LineChart.Series] = []
        var legend: [LineChart.LegendEntry] = []
        for (index, name) in timeline.names.enumerated() {
            let color = palette[index % palette.count]
            let points = timeline.points[index]
            maximumTime = max(maximumTime, points.last?.seconds ?? 0)
            let result = report.directions.first { $0.name == name }
            let received = result.map { " — \(Report.fmt($0.mpps, 3)) Mpps, \(Report.fmt($0.gbps, 3)) Gbit/s overall" } ?? ""
            let sent = result.map { " — \(Report.fmt($0.txMpps, 3)) Mpps" } ?? ""
            series.append(.init(color: color, dashed: true, points: points.map { ($0.seconds, $0.sentMpps) }))
            series.append(.init(color: color, dashed: false, points: points.map { ($0.seconds, $0.receivedMpps) }))
            legend.append(.init(label: "\(arrows(name)) received\(received)", color: color, dashed: false))
            legend.append(.init(label: "\(arrows(name)) sent\(sent)", color: color, dashed: true))
        }
        // The last tick: the whole second at or just after the last point (a point at 3.0004 s belongs to 3).
        let upper = max(1, (maximumTime - 0.05).rounded(.up))
        // At most 12 ticks, at whole seconds, minutes or hours.
        let steps: [Double] = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14_400]
        let step = steps.first { upper / $0 <= 12 } ?? 21_600
        let last = (upper / step).rounded(.up) * step
        let ticks = stride(from: 0.0, through: last + step / 2, by: step).map { ($0, Report.fmt($0, 0)) }
        let chart = LineChart(
            title: "afxdp-bench \(report.mode) · \(report.frameSize)-byte frames · \(dateText())",
            subtitle: describe(report) + (report.stoppedEarlyBy.map { " · stopped early by \($0)" } ?? ""),
            xLabel: "time since sending started (s); each point: the rate over the interval before it",
            xRange: 0...(ticks.last?.0 ?? upper),
            xTicks: ticks,
            panels: [.init(yLabel: "packets/s (Mpps)", series: series)],
            legend: legend,
            note: series.allSatisfy { $0.points.isEmpty } ? "no per-second sample: the run was shorter than 0.5 s" : nil)
        return chart.svg()
    }

    /// A sweep's rates by frame size: Mpps above, Gbit/s below.
    static func sweepChart(_ sweep: SweepReport) -> String {
        let sizes = sweep.runs.map(\.frameSize)
        let overhead = sweep.gbpsIncludesPreambleAndGap ? 20.0 : 0
        var names: [String] = []
        for run in sweep.runs {
            for direction in run.directions where !names.contains(direction.name) { names.append(direction.name) }
        }
        var mpps: [LineChart.Series] = []
        var gbps: [LineChart.Series] = []
        var legend: [LineChart.LegendEntry] = []
        for (index, name) in names.enumerated() {
            let color = palette[index % palette.count]
            var sentMpps: [(x: Double, y: Double)] = []
            var receivedMpps: [(x: Double, y: Double)] = []
            var sentGbps: [(x: Double, y: Double)] = []
            var receivedGbps: [(x: Double, y: Double)] = []
            for (position, run) in sweep.runs.enumerated() {
                guard let direction = run.directions.first(where: { $0.name == name }) else { continue }
                let x = Double(position)
                sentMpps.append((x, direction.txMpps))
                receivedMpps.append((x, direction.mpps))
                sentGbps.append((x, direction.txMpps * (Double(run.frameSize) + overhead) * 8 / 1000))
                receivedGbps.append((x, direction.gbps))
            }
            mpps.append(.init(color: color, dashed: true, points: sentMpps))
            mpps.append(.init(color: color, dashed: false, points: receivedMpps, labelValues: true))
            gbps.append(.init(color: color, dashed: true, points: sentGbps))
            gbps.append(.init(color: color, dashed: false, points: receivedGbps, labelValues: true))
            legend.append(.init(label: "\(arrows(name)) received", color: color, dashed: false))
            legend.append(.init(label: "\(arrows(name)) sent", color: color, dashed: true))
        }
        let bytes = sweep.gbpsIncludesPreambleAndGap ? "frame + 20 bytes" : "frame bytes"
        var subtitle = "\(Report.fmt(sweep.secondsPerSize, 1)) s per size"
        if let first = sweep.runs.first { subtitle += " · " + describe(first, withSeconds: false) }
        if let reason = sweep.stoppedEarlyBy { subtitle += " · stopped early by \(reason)" }
        let chart = LineChart(
            title: "afxdp-bench sweep · \(sweep.mode) · \(dateText())",
            subtitle: subtitle,
            xLabel: "frame size (bytes, without FCS)",
            xRange: -0.5...(Double(max(sizes.count, 1)) - 0.5),
            xTicks: sizes.enumerated().map { (Double($0.offset), String($0.element)) },
            panels: [
                .init(yLabel: "packets/s (Mpps)", series: mpps),
                .init(yLabel: "throughput (Gbit/s, \(bytes))", series: gbps),
            ],
            legend: legend,
            panelHeight: 300,
            note: sizes.isEmpty ? "no frame size finished" : nil)
        return chart.svg()
    }

    private static func describe(_ report: RunReport, withSeconds: Bool = true) -> String {
        var parts: [String] = []
        if withSeconds { parts.append("\(Report.fmt(report.seconds, 1)) s") }
        parts.append(report.zeroCopy ? "zero-copy" : "copy mode")
        parts.append("\(report.queues) queue\(report.queues == 1 ? "" : "s")")
        parts.append("batch \(report.batch)")
        parts.append("rings \(report.ringSize)")
        if report.window > 0 { parts.append("window \(report.window)") }
        if report.busyPoll { parts.append("busy poll") }
        parts.append("host \(hostName())")
        return parts.joined(separator: " · ")
    }

    private static func arrows(_ name: String) -> String {
        name.replacingOccurrences(of: "->", with: "→")
    }

    static func dateText() -> String {
        var now = time(nil)
        var parts = tm()
        localtime_r(&now, &parts)
        var buffer = [CChar](repeating: 0, count: 64)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%d %H:%M %Z", &parts)
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "?" }
        let length = buffer.firstIndex(of: 0) ?? buffer.count
        return String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: Files

    /// Why `path` cannot take a chart, or nil if it can: checked before the
    /// run, so that a typo does not cost a whole run.
    static func problem(with path: String) -> String? {
        let lower = path.lowercased()
        guard lower.hasSuffix(".svg") || lower.hasSuffix(".png"), path.count > 4 else {
            return "--plot takes a file name ending in .svg or .png, not '\(path)'"
        }
        let directory = (path as NSString).deletingLastPathComponent
        let place = directory.isEmpty ? "." : directory
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: place, isDirectory: &isDirectory), isDirectory.boolValue else {
            return "--plot \(path): directory '\(place)' does not exist"
        }
        guard access(place, W_OK) == 0 else {
            return "--plot \(path): directory '\(place)' is not writable"
        }
        return nil
    }

    /// Writes `svg` to `path`; for a .png name, writes the SVG beside it and
    /// converts it. Prints what it wrote. On failure prints why on standard
    /// error and returns false.
    static func write(_ svg: String, to path: String) -> Bool {
        let isPNG = path.lowercased().hasSuffix(".png")
        let svgPath = isPNG ? String(path.dropLast(4)) + ".svg" : path
        do {
            try svg.write(toFile: svgPath, atomically: true, encoding: .utf8)
        } catch {
            printError("afxdp-bench: error: cannot write the chart to \(svgPath): \(error.localizedDescription)")
            return false
        }
        print("plot: wrote \(svgPath)")
        guard isPNG else { return true }

        let command: [String]
        if let rsvg = findExecutable("rsvg-convert") {
            command = [rsvg, "--format=png", "--background-color=white", "--output=\(path)", svgPath]
        } else if let convert = imageMagickConvert() {
            command = [convert, "-background", "white", "-density", "96", svgPath, path]
        } else {
            printError("""
                afxdp-bench: error: cannot make \(path): no SVG-to-PNG converter is installed. \
                Install librsvg2-bin (rsvg-convert): apt-get install librsvg2-bin \
                (ImageMagick's convert also works: apt-get install imagemagick). \
                The chart is in \(svgPath).
                """)
            return false
        }
        do {
            try runCommand(command)
        } catch {
            printError("afxdp-bench: error: converting \(svgPath) to PNG failed (the SVG is there):\n\(error)")
            return false
        }
        print("plot: wrote \(path) (\((command[0] as NSString).lastPathComponent))")
        return true
    }

    /// A program on PATH (or in the usual directories), by absolute path.
    static func findExecutable(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let directories = path.split(separator: ":").map(String.init) + ["/usr/local/bin", "/usr/bin", "/bin"]
        for directory in directories where !directory.isEmpty {
            let candidate = directory + "/" + name
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    /// ImageMagick's `convert`, if that is what `convert` is (other
    /// programs share the name).
    private static func imageMagickConvert() -> String? {
        guard let convert = findExecutable("convert"),
            let version = try? runCommand([convert, "-version"]),
            version.contains("ImageMagick")
        else { return nil }
        return convert
    }
}

// MARK: - A line chart in SVG

/// One or more panels stacked over a shared x axis, a title, a subtitle
/// and a legend, written out as SVG text.
struct LineChart {
    struct Series {
        var color: String
        var dashed: Bool
        var points: [(x: Double, y: Double)]
        /// Print each point's value next to it (solid lines only).
        var labelValues = false
    }

    struct Panel {
        var yLabel: String
        var series: [Series]
    }

    struct LegendEntry {
        var label: String
        var color: String
        var dashed: Bool
    }

    var title: String
    var subtitle: String
    var xLabel: String
    var xRange: ClosedRange<Double>
    var xTicks: [(Double, String)]
    var panels: [Panel]
    var legend: [LegendEntry]
    var width = 960.0
    var panelHeight = 360.0
    /// Shown in the middle of the first panel (e.g. when there is nothing to draw).
    var note: String?

    private let left = 84.0
    private let right = 36.0
    private let font = "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif"

    func svg() -> String {
        var body = ""
        let plotRight = width - right
        body += text(left, 34, title, size: 20, weight: "bold", color: "#222")
        body += text(left, 58, subtitle, size: 13, color: "#555")

        // Legend, wrapped to the width.
        var x = left
        var y = 88.0
        for entry in legend {
            let entryWidth = 34 + textWidth(entry.label, size: 13) + 26
            if x > left, x + entryWidth > plotRight {
                x = left
                y += 22
            }
            body += line(x, y - 4.5, x + 26, y - 4.5, color: entry.color, width: entry.dashed ? 2 : 2.5, dashed: entry.dashed)
            if !entry.dashed { body += marker(x + 13, y - 4.5, color: entry.color) }
            body += text(x + 34, y, entry.label, size: 13, color: "#222")
            x += entryWidth
        }

        var top = y + 26
        var bottom = top
        for (index, panel) in panels.enumerated() {
            bottom = top + panelHeight
            body += drawPanel(panel, top: top, bottom: bottom, plotRight: plotRight, note: index == 0 ? note : nil)
            top = bottom + 58
        }
        body += text((left + plotRight) / 2, bottom + 48, xLabel, size: 14, anchor: "middle", color: "#333")
        let height = (bottom + 68).rounded()

        return """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" \
            viewBox="0 0 \(Int(width)) \(Int(height))" font-family="\(font)">
            <rect x="0" y="0" width="\(Int(width))" height="\(Int(height))" fill="#ffffff"/>

            """ + body + "</svg>\n"
    }

    private func drawPanel(_ panel: Panel, top: Double, bottom: Double, plotRight: Double, note: String?) -> String {
        var body = ""
        let highest = panel.series.flatMap { $0.points.map(\.y) }.filter(\.isFinite).max() ?? 0
        // Room above the highest point for its value label.
        let step = niceStep(max(highest * 1.12, 1e-9), count: 5)
        let upper = highest > 0 ? (highest * 1.12 / step).rounded(.up) * step : 1
        let yStep = highest > 0 ? step : 0.2
        func px(_ x: Double) -> Double {
            left + (x - xRange.lowerBound) / (xRange.upperBound - xRange.lowerBound) * (plotRight - left)
        }
        func py(_ y: Double) -> Double { bottom - y / upper * (bottom - top) }

        body += "<rect x=\"\(n(left))\" y=\"\(n(top))\" width=\"\(n(plotRight - left))\" height=\"\(n(bottom - top))\" fill=\"#fbfbfc\"/>\n"
        // Grid and y ticks.
        let decimals = decimalsFor(yStep)
        var value = 0.0
        while value <= upper + yStep / 2 {
            let y = py(value)
            if value > 0 { body += line(left, y, plotRight, y, color: "#e3e3e6", width: 1) }
            body += text(left - 9, y + 4.5, Report.fmt(value, decimals), size: 13, anchor: "end", color: "#444")
            value += yStep
        }
        for (x, label) in xTicks {
            let position = px(x)
            if position > left + 0.5 { body += line(position, top, position, bottom, color: "#ececef", width: 1) }
            body += line(position, bottom, position, bottom + 5, color: "#444", width: 1)
            body += text(position, bottom + 21, label, size: 13, anchor: "middle", color: "#444")
        }
        // Axes.
        body += line(left, top, left, bottom, color: "#444", width: 1.2)
        body += line(left, bottom, plotRight, bottom, color: "#444", width: 1.2)
        let middle = (top + bottom) / 2
        body += "<text x=\"26\" y=\"\(n(middle))\" font-size=\"14\" fill=\"#333\" text-anchor=\"middle\" "
            + "transform=\"rotate(-90 26 \(n(middle)))\">\(escape(panel.yLabel))</text>\n"

        // Dashed (sent) lines first, so the received lines and markers lie on top.
        for series in panel.series.sorted(by: { $0.dashed && !$1.dashed }) where !series.points.isEmpty {
            let coordinates = series.points.map { "\(n(px($0.x))),\(n(py($0.y)))" }.joined(separator: " ")
            let dash = series.dashed ? " stroke-dasharray=\"7 5\" stroke-opacity=\"0.75\"" : ""
            body += "<polyline points=\"\(coordinates)\" fill=\"none\" stroke=\"\(series.color)\" "
                + "stroke-width=\"\(series.dashed ? 2 : 2.5)\" stroke-linejoin=\"round\" stroke-linecap=\"round\"\(dash)/>\n"
            guard !series.dashed else { continue }
            for point in series.points { body += marker(px(point.x), py(point.y), color: series.color) }
        }
        // Value labels, per x: the highest value's above its point, the next one's below
        // its point, or, if that would run into the axis, both above, stacked.
        let labelled = panel.series.filter { $0.labelValues && !$0.dashed }
        var xs: [Double] = []
        for series in labelled { for point in series.points where !xs.contains(point.x) { xs.append(point.x) } }
        for x in xs {
            var group: [(y: Double, color: String)] = []
            for series in labelled { for point in series.points where point.x == x { group.append((point.y, series.color)) } }
            group.sort { $0.y > $1.y }  // stable: ties keep the series order
            var offsets = group.indices.map { $0 == 0 ? -10.0 : 20.0 * Double($0) }
            if group.count > 1, let last = group.last, py(last.y) + offsets[group.count - 1] > bottom - 3 {
                offsets = group.indices.map { -10.0 - 14.0 * Double(group.count - 1 - $0) }
            }
            for (entry, offset) in zip(group, offsets) {
                // Three significant digits.
                let label = Report.fmt(entry.y, entry.y >= 100 ? 0 : entry.y >= 10 ? 1 : entry.y >= 1 ? 2 : 3)
                body += text(px(x), py(entry.y) + offset, label, size: 12, anchor: "middle", color: entry.color, halo: true)
            }
        }
        if let note {
            body += text((left + plotRight) / 2, middle, note, size: 15, anchor: "middle", color: "#888")
        }
        return body
    }

    // MARK: Elements

    private func text(
        _ x: Double, _ y: Double, _ content: String, size: Double, weight: String? = nil, anchor: String = "start",
        color: String, halo: Bool = false
    ) -> String {
        var attributes = "x=\"\(n(x))\" y=\"\(n(y))\" font-size=\"\(n(size))\" fill=\"\(color)\""
        if anchor != "start" { attributes += " text-anchor=\"\(anchor)\"" }
        if let weight { attributes += " font-weight=\"\(weight)\"" }
        if halo { attributes += " stroke=\"#ffffff\" stroke-width=\"3\" stroke-linejoin=\"round\" paint-order=\"stroke\"" }
        return "<text \(attributes)>\(escape(content))</text>\n"
    }

    private func line(_ x1: Double, _ y1: Double, _ x2: Double, _ y2: Double, color: String, width: Double, dashed: Bool = false) -> String {
        let dash = dashed ? " stroke-dasharray=\"7 5\"" : ""
        return "<line x1=\"\(n(x1))\" y1=\"\(n(y1))\" x2=\"\(n(x2))\" y2=\"\(n(y2))\" stroke=\"\(color)\" stroke-width=\"\(n(width))\"\(dash)/>\n"
    }

    private func marker(_ x: Double, _ y: Double, color: String) -> String {
        "<circle cx=\"\(n(x))\" cy=\"\(n(y))\" r=\"4\" fill=\"\(color)\" stroke=\"#ffffff\" stroke-width=\"1.5\"/>\n"
    }

    /// About how wide DejaVu Sans sets `text`.
    private func textWidth(_ text: String, size: Double) -> Double {
        Double(text.count) * size * 0.6
    }

    private func n(_ value: Double) -> String { Report.fmt(value, 1) }

    private func escape(_ text: String) -> String {
        var escaped = ""
        for character in text {
            switch character {
            case "&": escaped += "&amp;"
            case "<": escaped += "&lt;"
            case ">": escaped += "&gt;"
            case "\"": escaped += "&quot;"
            default: escaped.append(character)
            }
        }
        return escaped
    }
}

/// A round step (1, 2, 2.5 or 5 times a power of ten) that cuts
/// 0...`span` into about `count` parts.
func niceStep(_ span: Double, count: Int) -> Double {
    guard span > 0, span.isFinite else { return 1 }
    let raw = span / Double(count)
    let magnitude = pow(10, (log10(raw)).rounded(.down))
    let residual = raw / magnitude
    let nice: Double = residual <= 1 ? 1 : residual <= 2 ? 2 : residual <= 2.5 ? 2.5 : residual <= 5 ? 5 : 10
    return nice * magnitude
}

/// Decimals enough to print multiples of `step` exactly (at most 4).
private func decimalsFor(_ step: Double) -> Int {
    var decimals = 0
    var scaled = step
    while decimals < 4, abs(scaled - scaled.rounded()) > 1e-9 * max(1, abs(scaled)) {
        scaled *= 10
        decimals += 1
    }
    return decimals
}
