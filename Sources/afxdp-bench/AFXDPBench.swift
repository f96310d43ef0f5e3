// afxdp-bench: measures the engine on a veth pair it builds itself (or on two
// existing interfaces), in the modes of the kernel's xdpsock sample plus a
// duplex mode in which both ends send and receive at once.

import AFXDP
import ArgumentParser

@main
struct AFXDPBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "afxdp-bench",
        abstract: "Packet-rate, loss and latency benchmark for the swift-afxdp engine.",
        discussion: """
            Without --interface it creates two network namespaces joined by a veth pair, \
            runs traffic between them and removes them at the end (also on Ctrl-C, \
            on an error and on the --timeout watchdog). Frames are raw Ethernet, \
            EtherType 0x88B5, each with a sequence number, a send timestamp \
            (CLOCK_MONOTONIC) and a checked payload.

            One thread per end (pin them with --cpu-a/--cpu-b); with --queues 2 each \
            end's thread serves a multi-queue port over both of its queues. Loss is \
            what was sent (completed) and never arrived; bound it with --window for a \
            lossless run. The report names the stack each end ran through.
            """,
        subcommands: [Duplex.self, TxOnly.self, RxDrop.self, L2Fwd.self, Forward.self, Sweep.self, NDR.self, Soak.self, Compare.self, CountInstructions.self],
        defaultSubcommand: Duplex.self)

    struct Duplex: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A sends to B and B sends to A at once; each end checks what it receives.")
        @OptionGroup var options: BenchOptions
        func run() throws { try Benchmark.run(mode: .duplex, options: options) }
    }

    struct TxOnly: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "tx-only",
            abstract: "A sends; B receives, counts and checks (B's count is the measure).")
        @OptionGroup var options: BenchOptions
        func run() throws { try Benchmark.run(mode: .txOnly, options: options) }
    }

    struct RxDrop: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rx-drop",
            abstract: "A generates; B receives and returns each list at once without reading it.")
        @OptionGroup var options: BenchOptions
        func run() throws { try Benchmark.run(mode: .rxDrop, options: options) }
    }

    struct L2Fwd: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "l2fwd",
            abstract: "A sends; B swaps the MAC addresses in place and sends the same lists back (no copy); A checks.")
        @OptionGroup var options: BenchOptions
        func run() throws { try Benchmark.run(mode: .l2fwd, options: options) }
    }

    struct Forward: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A sends to B and B to A through F, which forwards between its two interfaces over one UMEM, without a copy.",
            discussion: """
                Builds three namespaces in a row, A - F - B, joined by two veth pairs. F is a \
                Bridge over a port on each of its two interfaces, both on one UMEM: a list \
                received on one is sent on the other from the frames it arrived in, and goes \
                home to the first port's fill ring once sent. F runs on its own thread (pin it \
                with --cpu-f). `copies` in the report is the frames the bridge copied: 0.
                """)
        @OptionGroup var options: BenchOptions
        func run() throws { try Benchmark.run(mode: .forward, options: options) }
    }
}

/// An intermediate driver stacked on each end.
enum Through: String, Sendable, ExpressibleByArgument, CaseIterable {
    case none, filter, classifier
}

/// How the benchmark drives each end: handlers and a polling thread of its
/// own (callback), or the library's Swift concurrency face, `AsyncPort`
/// (async: tasks, and the async port's own polling thread).
enum API: String, Sendable, ExpressibleByArgument, CaseIterable {
    case callback, async
}

/// What the sender writes into each frame it sends and the receiver checks.
enum Payload: String, Sendable, ExpressibleByArgument, CaseIterable {
    /// Every byte: sequence, timestamp and a payload made from the sequence
    /// number, all checked on arrival.
    case checked
    /// Sequence and timestamp only, as DPDK testpmd's txonly writes its
    /// headers and no payload; receivers check order, not payload bytes.
    case header
}

/// forward: how F passes frames between its two ports.
enum RelayKind: String, Sendable, ExpressibleByArgument, CaseIterable {
    case bridge, bare
}

enum Mode: String, Sendable {
    case duplex
    case txOnly = "tx-only"
    case rxDrop = "rx-drop"
    case l2fwd
    case forward
}

struct BenchOptions: ParsableArguments {
    @Option(
        name: .customLong("seconds"),
        help: ArgumentHelp("How long to send, in seconds (default: 10; sweep: 3 per size).", valueName: "seconds"))
    var secondsOption: Double?
    /// --seconds, or the default of the single-run modes (sweep sets its own).
    var seconds: Double {
        get { secondsOption ?? 10 }
        set { secondsOption = newValue }
    }

    @Option(name: .customLong("frame-size"), help: "Ethernet frame length in bytes, without FCS (64...9000; past 1514, a jumbo frame: the veth MTU is raised and each frame spans UMEM frames, multi-buffer; duplex, tx-only and rx-drop).")
    var frameSize: Int = 64

    @Option(help: "Packets per list: per send, and most packets per receive indication.")
    var batch: Int = 64

    @Option(name: .customLong("lists-per-pass"), help: "Most lists each sending flow sends between two polls of its thread's ports.")
    var listsPerPass: Int = 4

    // 4096, not the engine's 2048: on two busy cores an end's thread can be
    // off its CPU for milliseconds while the other end keeps sending, and
    // 2048 receive frames in the fill ring did not always last (duplex flat
    // out lost 0.03-0.5% to an empty fill ring in 3 runs of 3; 4096: none).
    @Option(name: .customLong("ring-size"), help: "Size of all four rings (fill, completion, RX, TX); a power of two. The port takes twice as many receive frames and twice as many send frames.")
    var ringSize: UInt32 = 4096

    @Option(name: .customLong("umem-frame-size"), help: "UMEM frame size: 2048 or 4096.")
    var umemFrameSize: Int = 4096

    @Option(help: "Queues per end (1 or 2); with 2, a multi-queue port over one port per queue (one UMEM), and one flow with its own sequence numbers per queue and direction.")
    var queues: Int = 1

    @Option(help: "An intermediate driver stacked on each end: none, filter (pass-through) or classifier (802.1p priority from the frames).")
    var through: Through = .none

    @Option(help: ArgumentHelp(
        "What each sent frame gets written and each received one checked for: checked (every byte) or header (sequence and timestamp only).",
        discussion: "header is how DPDK testpmd's txonly writes frames (headers, no payload): compare a sender with it like for like. Frames up to 1514 bytes."))
    var payload: Payload = .checked

    @Option(help: "duplex: how each end is driven, callback (handlers, a polling thread per end) or async (AsyncPort: tasks awaiting its received lists and completions).")
    var api: API = .callback

    @Option(help: "forward: what F runs, a Bridge driver (bridge) or its own handlers relaying between two ports (bare).")
    var relay: RelayKind = .bridge

    @Flag(help: "Copy mode only (XDP_COPY).")
    var copy = false

    @Flag(name: .customLong("zero-copy"), help: "Zero-copy or fail (default: zero-copy where the driver has it, else copy mode).")
    var zeroCopy = false

    @Flag(name: .customLong("no-need-wakeup"), help: "Kick the kernel on every pass instead of only when the ring asks.")
    var noNeedWakeup = false

    @Flag(name: .customLong("busy-poll"), help: "Enable socket busy polling (SO_PREFER_BUSY_POLL, SO_BUSY_POLL 20 us, budget 64).")
    var busyPoll = false

    @Option(name: .customLong("cpu-a"), help: "Pin end A's thread to this CPU.")
    var cpuA: Int?

    @Option(name: .customLong("cpu-b"), help: "Pin end B's thread to this CPU.")
    var cpuB: Int?

    @Option(name: .customLong("cpu-f"), help: "forward: pin F's thread to this CPU.")
    var cpuF: Int?

    @Flag(help: "Print every figure as one JSON object on the last line of output.")
    var json = false

    @Option(help: "Most frames in flight per flow (sent, not yet seen by the receiver); 0: unlimited.")
    var window: Int = 0

    @Option(help: ArgumentHelp(
        "Offered rate per direction, in packets per second (0: as fast as the ends go).",
        discussion: "Spread evenly over the direction's flows and paced per list; a sender that falls behind gives up the credit rather than catch up in a burst, so the report's tx Mpps is what was really offered."))
    var rate: Double = 0

    @Flag(name: .customLong("wire-overhead"), help: "Count 20 more bytes per frame (preamble and inter-frame gap) in Gbit/s.")
    var wireOverhead = false

    @Option(help: "Use this existing interface as end A instead of building a veth testbed.")
    var interface: String?

    @Option(help: "The existing interface for end B (with --interface).")
    var peer: String?

    @Option(help: "Network namespace of --interface (a name under /var/run/netns).")
    var namespace: String?

    @Option(name: .customLong("peer-namespace"), help: "Network namespace of --peer.")
    var peerNamespace: String?

    @Option(name: .customLong("relay-a"), help: "forward, with --interface/--peer: F's existing interface facing A.")
    var relayA: String?

    @Option(name: .customLong("relay-b"), help: "forward, with --interface/--peer: F's existing interface facing B.")
    var relayB: String?

    @Option(name: .customLong("relay-namespace"), help: "Network namespace of --relay-a and --relay-b.")
    var relayNamespace: String?

    @Option(help: ArgumentHelp(
        "After the run, draw packets/s over time (sweep: by frame size) into this .svg file; "
            + "a .png name also writes the .svg and needs rsvg-convert (librsvg2-bin) or ImageMagick.", valueName: "file"))
    var plot: String?

    @Option(help: "Watchdog: stop and clean up after this many seconds in all (default: --seconds + 30).")
    var timeout: Double?

    /// Whether these options can carry jumbo frames: on the benchmark's own
    /// veth pair, one queue, no driver stacked, payloads checked (the mode is
    /// `Session`'s say).
    var allowJumboFrames: Bool { queues == 1 && through == .none && interface == nil && payload == .checked }

    func validate() throws {
        guard seconds > 0, seconds <= 86_400 else {
            throw ValidationError("--seconds must be more than 0 and at most 86400, not \(seconds)")
        }
        guard (64...9000).contains(frameSize) else {
            throw ValidationError("--frame-size must be 64...9000 (an Ethernet frame without FCS), not \(frameSize)")
        }
        if frameSize > 1514, !allowJumboFrames {
            throw ValidationError(
                "jumbo frames (--frame-size past 1514) run on the benchmark's own veth pair, one queue, no driver stacked, --payload checked")
        }
        guard ringSize >= 8, ringSize <= 1 << 16 else {
            throw ValidationError("--ring-size must be a power of two from 8 to 65536, not \(ringSize)")
        }
        guard ringSize & (ringSize - 1) == 0 else {
            let lower = UInt32(1) << (31 - ringSize.leadingZeroBitCount)
            throw ValidationError("--ring-size \(ringSize) is not a power of two; the kernel's rings need one, e.g. \(lower) or \(lower * 2)")
        }
        guard batch >= 1, batch <= Int(ringSize) else {
            throw ValidationError("--batch must be 1...--ring-size (\(ringSize)), not \(batch)")
        }
        guard listsPerPass >= 1, listsPerPass <= 1 << 16 else {
            throw ValidationError("--lists-per-pass must be 1...65536, not \(listsPerPass)")
        }
        guard umemFrameSize == 2048 || umemFrameSize == 4096 else {
            throw ValidationError("--umem-frame-size must be 2048 or 4096, not \(umemFrameSize)")
        }
        guard queues == 1 || queues == 2 else {
            throw ValidationError("--queues must be 1 or 2, not \(queues)")
        }
        guard !(copy && zeroCopy) else {
            throw ValidationError("--copy and --zero-copy exclude each other; give at most one")
        }
        guard window >= 0 else {
            throw ValidationError("--window must be 0 (unlimited) or a number of frames, not \(window)")
        }
        guard window == 0 || window >= batch else {
            throw ValidationError("--window \(window) is smaller than --batch \(batch); a whole list must fit in the window")
        }
        guard rate >= 0, rate <= 1e9, rate.isFinite else {
            throw ValidationError("--rate must be 0 (unlimited) or packets per second up to 1e9, not \(rate)")
        }
        for (name, cpu) in [("--cpu-a", cpuA), ("--cpu-b", cpuB), ("--cpu-f", cpuF)] {
            if let cpu, cpu < 0 || cpu >= 1024 {
                throw ValidationError("\(name) must be a CPU number 0...1023, not \(cpu)")
            }
        }
        if let timeout, timeout <= seconds {
            throw ValidationError("--timeout (\(timeout)) must be longer than --seconds (\(seconds))")
        }
        guard (interface == nil) == (peer == nil) else {
            throw ValidationError("--interface and --peer go together: give both (existing interfaces) or neither (a veth testbed)")
        }
        if interface == nil, namespace != nil || peerNamespace != nil {
            throw ValidationError("--namespace and --peer-namespace apply only with --interface and --peer")
        }
        guard (relayA == nil) == (relayB == nil), relayA == nil || interface != nil else {
            throw ValidationError("--relay-a and --relay-b go together, and with --interface and --peer (F's two interfaces between them)")
        }
        if let plot, let problem = Plot.problem(with: plot) { throw ValidationError(problem) }
        for name in [interface, peer, relayA, relayB].compactMap({ $0 }) where name.isEmpty || name.utf8.count > 15 {
            throw ValidationError("interface name '\(name)' must be 1 to 15 characters")
        }
    }

    var zeroCopyMode: PortConfiguration.ZeroCopy { copy ? .never : zeroCopy ? .required : .preferred }
    var watchdogSeconds: Double { timeout ?? seconds + 30 }
}
