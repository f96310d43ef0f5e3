// One run: build (or find) the two ends, open the ports, run one thread per
// end, print a line per second, drain, and report. Teardown (ports closed,
// then the testbed removed) happens on every way out: normal end, thrown
// error, Ctrl-C / SIGTERM, and the watchdog.

import AFXDPSystem
import AFXDP
import AFXDPTestbed
import ArgumentParser
import Glibc
import Histogram

/// One end of the link (or, in forward mode, F: two interfaces).
struct Endpoint {
    let name: String
    let interface: String
    let namespace: String?
    let macAddress: MACAddress
    let cpu: Int?
    /// forward: F's interface facing B (`interface` faces A).
    var secondInterface: String? = nil
}

/// One direction of traffic. Flows: one per queue, each with its own
/// sequence numbers.
struct DirectionPlan {
    let name: String
    let senderEnd: Int
    let receiverEnd: Int
    /// l2fwd: the end that sends the frames back.
    let forwarderEnd: Int?
    /// forward: the end (F) that passes the frames on between its two ports.
    var relayEnd: Int? = nil
    var flows: [FlowPlan] = []
}

struct FlowPlan {
    let queue: Int
    /// What the flow's sender, receiver and forwarder publish.
    let counters: FlowCounters
    let sender: Owned<SenderState>
    let receiver: Owned<ReceiverState>
    let forwarder: Owned<ForwarderState>?
    let relay: Owned<RelayState>?
}

enum Benchmark {
    static let testbedPrefix = "afxbench"

    static func run(mode: Mode, options: BenchOptions) throws {
        try TestFrame.selfTest()
        installSignalHandlers()
        if options.api == .async {
            guard mode == .duplex, options.queues == 1 else {
                throw BenchError("--api async runs duplex with one queue per end (--queues 1)")
            }
        }
        let watchdog = try Watchdog.start(seconds: options.watchdogSeconds)
        defer { watchdog.finish() }

        let (testbed, endpoints) = try prepareEndpoints(mode: mode, options: options, watchdog: watchdog)
        defer { testbed?() }
        if stopRequested { throw ExitCode(exitStatus(for: stopRequest.load(ordering: .relaxed))) }

        let session = Session(mode: mode, options: options, endpoints: endpoints)
        defer { session.close() }
        try session.open()
        var report = try session.run()
        session.close()
        report.errors += leftPrograms(endpoints)
        testbed?()

        Report.printSummary(report, options: options)
        let plotted = options.plot.map { Plot.write(Plot.timelineChart(session.timeline, report: report), to: $0) } ?? true
        if options.json { print(Report.json(report)) }
        let reason = stopRequest.load(ordering: .relaxed)
        if !report.errors.isEmpty { throw ExitCode(2) }
        if reason != 0 { throw ExitCode(exitStatus(for: reason)) }
        if !plotted { throw ExitCode.failure }
    }

    /// Every interface of the run that still has an XDP program after its
    /// ports closed, said as report errors: the engine must leave none.
    static func leftPrograms(_ endpoints: [Endpoint]) -> [String] {
        var errors: [String] = []
        for endpoint in endpoints {
            for interface in [endpoint.interface] + [endpoint.secondInterface].compactMap({ $0 }) {
                if let info = try? LinkInfo.read(interface: interface, namespace: endpoint.namespace), info.hasXDPProgram {
                    errors.append("\(interface) still has an XDP program after its ports closed")
                }
            }
        }
        return errors
    }

    /// The ends to run on: the existing interfaces named in the options, or a
    /// testbed made here (after removing any a dead run left): a veth pair,
    /// or in forward mode A - F - B. Returns what removes the testbed, which
    /// the caller calls and the watchdog calls if it has to.
    static func prepareEndpoints(
        mode: Mode, options: BenchOptions, watchdog: Watchdog
    ) throws -> ((@Sendable () -> Void)?, [Endpoint]) {
        for name in VethTestbed.removeStale(prefix: testbedPrefix) {
            printError("afxdp-bench: removed namespace \(name), left by a run that died")
        }
        if mode == .forward, let interface = options.interface, let peer = options.peer {
            guard let relayA = options.relayA, let relayB = options.relayB else {
                throw BenchError("forward on existing interfaces needs F's two as well: --relay-a, --relay-b (and --relay-namespace)")
            }
            var relay = try existingEndpoint("F", relayA, options.relayNamespace, options.cpuF)
            relay.secondInterface = relayB
            return (nil, [
                try existingEndpoint("A", interface, options.namespace, options.cpuA),
                try existingEndpoint("B", peer, options.peerNamespace, options.cpuB),
                relay,
            ])
        }
        if mode == .forward {
            let bed = try ForwardingTestbed.create(prefix: testbedPrefix, queues: options.queues)
            let destroy: @Sendable () -> Void = { bed.destroy() }
            watchdog.guardTestbed(destroy)
            return (destroy, [
                Endpoint(name: "A", interface: bed.interfaceA, namespace: bed.namespaceA, macAddress: bed.macAddressA, cpu: options.cpuA),
                Endpoint(name: "B", interface: bed.interfaceB, namespace: bed.namespaceB, macAddress: bed.macAddressB, cpu: options.cpuB),
                Endpoint(
                    name: "F", interface: bed.interfaceFA, namespace: bed.namespaceF, macAddress: bed.macAddressFA, cpu: options.cpuF,
                    secondInterface: bed.interfaceFB),
            ])
        }
        if let interface = options.interface, let peer = options.peer {
            return (nil, [
                try existingEndpoint("A", interface, options.namespace, options.cpuA),
                try existingEndpoint("B", peer, options.peerNamespace, options.cpuB),
            ])
        }
        let bed = try VethTestbed.create(prefix: testbedPrefix, queues: options.queues)
        let destroy: @Sendable () -> Void = { bed.destroy() }
        watchdog.guardTestbed(destroy)
        return (destroy, [
            Endpoint(name: "A", interface: bed.interfaceA, namespace: bed.namespaceA, macAddress: bed.macAddressA, cpu: options.cpuA),
            Endpoint(name: "B", interface: bed.interfaceB, namespace: bed.namespaceB, macAddress: bed.macAddressB, cpu: options.cpuB),
        ])
    }

    static func exitStatus(for reason: Int32) -> Int32 {
        switch reason {
        case StopReason.watchdog: return 3
        case StopReason.failure: return 2
        default: return 128 + reason
        }
    }

    /// An interface that already exists: its MAC address from `ip -o link`.
    static func existingEndpoint(_ name: String, _ interface: String, _ namespace: String?, _ cpu: Int?) throws -> Endpoint {
        do {
            let info = try LinkInfo.read(interface: interface, namespace: namespace)
            return Endpoint(name: name, interface: interface, namespace: namespace, macAddress: info.address, cpu: cpu)
        } catch {
            let place = namespace.map { "network namespace '\($0)'" } ?? "this network namespace"
            throw BenchError("end \(name): cannot use interface '\(interface)' in \(place):\n\(error)")
        }
    }
}

/// One testbed for many sessions in a row (ndr's trials, soak's cycles):
/// the self-test, the signal handlers and the watchdog, the ends, and the
/// options each session runs with (no JSON or plot of its own).
struct RepeatedSessions {
    let options: BenchOptions
    let endpoints: [Endpoint]
    let watchdog: Watchdog
    private let removeTestbed: (@Sendable () -> Void)?

    /// `options.seconds` defaults to `defaultSeconds`; the watchdog allows
    /// what `watchdogSeconds` says for these options, unless --timeout does.
    init(mode: Mode, options given: BenchOptions, defaultSeconds: Double, watchdogSeconds: (BenchOptions) -> Double) throws {
        var options = given
        options.seconds = given.secondsOption ?? defaultSeconds
        options.json = false
        options.plot = nil
        try TestFrame.selfTest()
        installSignalHandlers()
        watchdog = try Watchdog.start(seconds: given.timeout ?? watchdogSeconds(options))
        do {
            (removeTestbed, endpoints) = try Benchmark.prepareEndpoints(mode: mode, options: options, watchdog: watchdog)
        } catch {
            watchdog.finish()
            throw error
        }
        self.options = options
    }

    /// Removes the testbed (idempotent) and stops the watchdog.
    func finish() {
        removeTestbed?()
        watchdog.finish()
    }
}

/// The ports, the per-flow state, and the threads of one run.
final class Session {
    let mode: Mode
    let options: BenchOptions
    let endpoints: [Endpoint]
    private(set) var directions: [DirectionPlan] = []
    /// What each end's thread drives: its port, or the stack on its ports
    /// (a multi-queue port, a filter or classifier above, F's bridge).
    private(set) var tops: [any PacketPort]
    /// What each end's thread polls: its top (F with `--relay bare`: its two ports).
    private var polled: [[any PacketPort]] = []
    /// The ports at the bottom of each end's stack, for the report:
    /// ports[end][queue]; F's are [facing A, facing B].
    private(set) var ports: [[XDPPort]]
    /// Per end: the senders of its flows, in queue order (multi-queue
    /// completions find their flow's generator here).
    private var senderTables: [UnsafeMutablePointer<UnsafeMutablePointer<SenderState>>] = []
    private let control = RunControl()
    /// --api async: each end's async port (nil: the callback path), and the
    /// tasks that drive them.
    private var asyncPorts: [AsyncPort?] = []
    private let asyncEnds = AsyncEnds()
    /// No header and no per-second lines (soak cycles, ndr trials after the first).
    var quiet = false
    /// The per-second rates, for --plot.
    private(set) var timeline = Timeline()
    /// Each end's fill-ring drops, second by second, and whose fault they were.
    private var starvation = StarvationTracker(ends: [], ringFrames: 0)
    /// The interfaces' own drop counters when traffic began.
    private var interfaceDropsAtStart: [InterfaceDrops] = []
    private var closed = false

    init(mode: Mode, options: BenchOptions, endpoints: [Endpoint]) {
        self.mode = mode
        self.options = options
        self.endpoints = endpoints
        ports = endpoints.map { _ in [] }
        tops = []
        switch mode {
        case .duplex:
            directions = [
                DirectionPlan(name: "A->B", senderEnd: 0, receiverEnd: 1, forwarderEnd: nil),
                DirectionPlan(name: "B->A", senderEnd: 1, receiverEnd: 0, forwarderEnd: nil),
            ]
        case .txOnly, .rxDrop:
            directions = [DirectionPlan(name: "A->B", senderEnd: 0, receiverEnd: 1, forwarderEnd: nil)]
        case .l2fwd:
            directions = [DirectionPlan(name: "A->B->A", senderEnd: 0, receiverEnd: 0, forwarderEnd: 1)]
        case .forward:
            directions = [
                DirectionPlan(name: "A->F->B", senderEnd: 0, receiverEnd: 1, forwarderEnd: nil, relayEnd: 2),
                DirectionPlan(name: "B->F->A", senderEnd: 1, receiverEnd: 0, forwarderEnd: nil, relayEnd: 2),
            ]
        }
        let listsPerFlow = max(1, 2 * Int(options.ringSize) / options.batch)
        for index in directions.indices {
            for queue in 0..<options.queues {
                let counters = FlowCounters()
                directions[index].flows.append(FlowPlan(
                    queue: queue,
                    counters: counters,
                    sender: .make(SenderState(
                        counters: counters, capacity: listsPerFlow, frameLength: options.frameSize, window: options.window,
                        packetsPerSecond: options.rate / Double(options.queues), writesPayload: options.payload == .checked)),
                    receiver: .make(ReceiverState(counters: counters, checksPayload: options.payload == .checked)),
                    forwarder: directions[index].forwarderEnd == nil ? nil : .make(ForwarderState(counters: counters)),
                    relay: directions[index].relayEnd == nil ? nil : .make(RelayState(counters: counters))))
            }
        }
    }

    private func flow(_ direction: Int, queue: Int) -> FlowPlan { directions[direction].flows[queue] }

    // MARK: Open

    func open() throws {
        if options.frameSize > 1514 { try prepareJumboFrames() }
        for end in 0..<2 { tops.append(try openEnd(end)) }
        polled = tops.map { [$0] }
        if mode == .forward {
            if options.relay == .bare {
                let relayPorts = try openRelay(end: 2)
                tops.append(relayPorts[0])
                polled.append(relayPorts)
                ports[2] = relayPorts
            } else {
                tops.append(try openBridge(end: 2))
                polled.append([tops[2]])
            }
        }
        for (end, top) in tops.enumerated() where !(mode == .forward && end == 2 && options.relay == .bare) {
            ports[end] = Self.bottomPorts(of: top)
        }
    }

    /// forward --relay bare: F's two ports on one UMEM, each relaying what it
    /// receives to the other with the benchmark's own handlers (no driver).
    private func openRelay(end: Int) throws -> [XDPPort] {
        let endpoint = endpoints[end]
        guard let second = endpoint.secondInterface else { throw BenchError("forward: F has one interface") }
        let umem = try makeUMEM(ports: 2)
        // relays[i]: the direction whose frames port i receives (and the other sends).
        let relays = [flow(0, queue: 0).relay!, flow(1, queue: 0).relay!]
        var opened: [XDPPort] = []
        for (index, interface) in [endpoint.interface, second].enumerated() {
            let receiving = relays[index], sending = relays[1 - index]
            do {
                opened.append(try XDPPort.open(
                    configuration(interface: interface, queue: 0, namespace: endpoint.namespace), umem: umem,
                    onReceive: { Relay.receive(receiving.pointer, $0) },
                    onSendComplete: { Relay.completed(sending.pointer, $0) }))
            } catch {
                for port in opened { port.close() }
                throw BenchError("cannot open F's port on \(interface) in namespace \(endpoint.namespace ?? "-"): \(error)")
            }
        }
        // Port i's receives go out on the other port.
        relays[0].pointer.pointee.out = Unmanaged.passUnretained(opened[1])
        relays[1].pointer.pointee.out = Unmanaged.passUnretained(opened[0])
        return opened
    }

    /// The ports at the bottom of a stack, in binding order.
    static func bottomPorts(of top: any PacketPort) -> [XDPPort] {
        if let port = top as? XDPPort { return [port] }
        if let driver = top as? IntermediateDriver { return driver.bindings.flatMap { bottomPorts(of: $0) } }
        return []
    }

    /// The first multi-queue port in a stack, if any.
    static func multiQueuePort(in top: any PacketPort) -> MultiQueuePort? {
        if let mux = top as? MultiQueuePort { return mux }
        if let driver = top as? IntermediateDriver { return driver.bindings.lazy.compactMap { multiQueuePort(in: $0) }.first }
        return nil
    }

    /// The configuration every port of the run starts from.
    private func configuration(interface: String, queue: Int, namespace: String?) -> PortConfiguration {
        var configuration = PortConfiguration(interface: interface, queue: UInt32(queue), networkNamespace: namespace)
        configuration.fillRingSize = options.ringSize
        configuration.completionRingSize = options.ringSize
        configuration.receiveRingSize = options.ringSize
        configuration.transmitRingSize = options.ringSize
        configuration.frameSize = options.umemFrameSize
        configuration.receiveBatchSize = UInt32(options.batch)
        configuration.zeroCopy = options.zeroCopyMode
        configuration.useNeedWakeup = !options.noNeedWakeup
        configuration.busyPoll = options.busyPoll ? PortConfiguration.BusyPoll() : nil
        configuration.etherTypeFilter = TestFrame.etherType
        configuration.multiBuffer = options.frameSize > 1514
        return configuration
    }

    /// A UMEM for `ports` ports configured as this run's are.
    private func makeUMEM(ports: Int) throws -> UMEM {
        let perPort = configuration(interface: "x", queue: 0, namespace: nil).umemFrameCount
        do {
            return try UMEM(frameCount: ports * perPort, frameSize: options.umemFrameSize)
        } catch {
            throw BenchError("cannot make a UMEM of \(ports * perPort) frames: \(error)")
        }
    }

    /// forward: F, a bridge over a port on each of its two interfaces, both
    /// on one UMEM: what one side receives goes out on the other, no copy.
    private func openBridge(end: Int) throws -> Bridge {
        let endpoint = endpoints[end]
        guard let second = endpoint.secondInterface else { throw BenchError("forward: F has one interface") }
        let umem = try makeUMEM(ports: 2)
        do {
            return try Bridge.open(
                a: configuration(interface: endpoint.interface, queue: 0, namespace: endpoint.namespace),
                b: configuration(interface: second, queue: 0, namespace: endpoint.namespace), umem: umem,
                onReceive: { try? $0.port.returnList($0.list) }, onSendComplete: { batch in for list in batch { try? batch.port.returnList(list) } })
        } catch {
            throw BenchError("cannot open F's bridge on \(endpoint.interface) and \(second) in namespace \(endpoint.namespace ?? "-"): \(error)")
        }
    }

    /// Jumbo frames: on the benchmark's own veth pair only, in the modes
    /// that run them; raises both ends' MTU (it counts the frame without
    /// its Ethernet header; a larger one does the smaller sizes no harm).
    private func prepareJumboFrames() throws {
        guard Self.runsJumboFrames(mode) else {
            throw BenchError("jumbo frames (frames past 1514 bytes) run in duplex, tx-only and rx-drop; not in \(mode.rawValue)")
        }
        guard options.allowJumboFrames else {
            throw BenchError("jumbo frames run on the benchmark's own veth pair, one queue, no driver stacked, --payload checked")
        }
        for endpoint in endpoints {
            var command = ["ip"]
            if let namespace = endpoint.namespace { command += ["-n", namespace] }
            try runCommand(command + ["link", "set", "dev", endpoint.interface, "mtu", String(options.frameSize - 14)])
        }
    }

    static func runsJumboFrames(_ mode: Mode) -> Bool { mode == .duplex || mode == .txOnly || mode == .rxDrop }

    /// Opens one end: a port, or a multi-queue port over its queues, with
    /// the `--through` driver on top; then gives its senders their lists.
    private func openEnd(_ end: Int) throws -> any PacketPort {
        let endpoint = endpoints[end]
        let queues = options.queues
        let sending = directions.firstIndex { $0.senderEnd == end }
        let receiving = directions.firstIndex { $0.receiverEnd == end }
        let forwarding = directions.firstIndex { $0.forwarderEnd == end }
        let senders = (0..<queues).compactMap { queue in sending.map { flow($0, queue: queue).sender } }
        let receivers = (0..<queues).compactMap { queue in receiving.map { flow($0, queue: queue).receiver } }
        let forwarders = (0..<queues).compactMap { queue in forwarding.flatMap { flow($0, queue: queue).forwarder } }

        var lower: LowerOpener
        if queues > 1 {
            let umem = try makeUMEM(ports: queues)
            lower = MultiQueuePort.below(
                configuration(interface: endpoint.interface, queue: 0, namespace: endpoint.namespace), queues: queues, umem: umem,
                flowHash: { list in UInt32(truncatingIfNeeded: Generator.flow(of: list)) })
        } else {
            lower = XDPPort.below(configuration(interface: endpoint.interface, queue: 0, namespace: endpoint.namespace))
        }
        switch options.through {
        case .none: break
        case .filter: lower = FilterDriver.below(name: "filter (pass-through)", over: lower)
        case .classifier: lower = PriorityClassifier.below(over: lower)
        }

        // Which flow a received list belongs to: its queue, which only the
        // multi-queue port knows (set once it is open).
        let arrival = ArrivalQueue()
        let onReceive: @Sendable (ReceiveIndication) -> Void
        if queues == 1, let forwarder = forwarders.first {
            onReceive = { Forwarder.forward(forwarder.pointer, $0) }
        } else if queues == 1, let receiver = receivers.first {
            if mode == .rxDrop {
                let frameLength = options.frameSize
                onReceive = { Receiver.drop(receiver.pointer, $0, frameLength: frameLength) }
            } else {
                onReceive = { Receiver.check(receiver.pointer, $0) }
            }
        } else if !forwarders.isEmpty {
            onReceive = { indication in
                // Back out on the queue it came in on: the flow hash reads the list's flow.
                let queue = arrival.queue(of: indication.list)
                try? indication.list.contextArea.storeBytes(of: UInt64(queue), as: UInt64.self)
                Forwarder.forward(forwarders[queue].pointer, indication)
            }
        } else if !receivers.isEmpty {
            let drop = mode == .rxDrop
            let frameLength = options.frameSize
            onReceive = { indication in
                let receiver = receivers[arrival.queue(of: indication.list)].pointer
                if drop { Receiver.drop(receiver, indication, frameLength: frameLength) } else { Receiver.check(receiver, indication) }
            }
        } else {
            onReceive = { try? $0.port.returnList($0.list) }  // nothing is sent to this end
        }
        let onSendComplete: @Sendable (SendCompletions) -> Void
        if let forwarder = forwarders.first {
            // l2fwd: every flow's forwarded lists go back to the receive side the same way.
            onSendComplete = { Forwarder.completed(forwarder.pointer, $0) }
        } else if queues == 1, let sender = senders.first {
            onSendComplete = { Generator.completed(sender.pointer, $0) }
        } else if !senders.isEmpty {
            let table = UnsafeMutablePointer<UnsafeMutablePointer<SenderState>>.allocate(capacity: senders.count)
            table.initialize(from: senders.map(\.pointer), count: senders.count)
            senderTables.append(table)
            let flows = senders.count
            let owned = Owned(pointer: table)
            onSendComplete = { Generator.completed(UnsafePointer(owned.pointer), flows: flows, $0) }
        } else {
            onSendComplete = { _ in }
        }

        let top: any PacketPort
        do {
            if options.api == .async {
                // The async port's own handlers take the lists; the tasks in
                // `run` do what onReceive and onSendComplete do here.
                let asyncPort = try AsyncPort.open(lower)
                asyncPorts.append(asyncPort)
                top = asyncPort.port
            } else {
                top = try lower(PortHandlers(onReceive: onReceive, onSendComplete: onSendComplete))
            }
        } catch {
            let place = endpoint.namespace.map { " in namespace \($0)" } ?? ""
            throw BenchError("cannot open end \(endpoint.name) (\(endpoint.interface), \(queues) queue(s)\(place)): \(error)")
        }
        arrival.multiQueuePort = Self.multiQueuePort(in: top)
        for forwarder in forwarders { forwarder.pointer.pointee.port = top }
        // Jumbo frames: how many entries (UMEM frames) a frame spans.
        var entriesPerFrame = 1
        if options.frameSize > 1514 {
            for receiver in receivers { receiver.pointer.pointee.useJumboFrames(maximumLength: options.frameSize) }
            guard let probe = try top.allocateList(packetCount: 1) else {
                top.close()
                throw BenchError("end \(endpoint.name): the send pool is empty")
            }
            let room = try probe.packets.withPacket(at: 0) { packet throws(AFXDPError) in try packet.capacity } ?? 1
            try top.returnList(probe)
            entriesPerFrame = (options.frameSize + room - 1) / room
        }
        if let sending {
            let peer = endpoints[directions[sending].forwarderEnd ?? directions[sending].receiverEnd]
            for (queue, sender) in senders.enumerated() {
                var lists: [PacketList] = []
                if entriesPerFrame > 1 { sender.pointer.pointee.useJumboFrames(entries: entriesPerFrame) }
                while lists.count < sender.pointer.pointee.capacity,
                    let list = try top.allocateList(packetCount: options.batch * entriesPerFrame) {
                    if let scratch = sender.pointer.pointee.scratch {
                        try Generator.fillJumbo(
                            list, entries: entriesPerFrame, length: options.frameSize, scratch: scratch,
                            source: endpoint.macAddress, destination: peer.macAddress)
                    } else {
                        try TestFrame.fill(
                            list, length: options.frameSize, firstSequence: 0, source: endpoint.macAddress, destination: peer.macAddress)
                    }
                    lists.append(list)
                }
                guard !lists.isEmpty else {
                    top.close()
                    throw BenchError("end \(endpoint.name): the send pool has no room for one list of \(options.batch) packets; lower --batch")
                }
                try sender.pointer.pointee.attach(port: top, flow: queue, lists: lists)
            }
        }
        return top
    }

    // MARK: Run

    func run() throws -> RunReport {
        let seconds = options.seconds
        let drainLimit: UInt64 = 1_000_000_000
        var threads: [pthread_t] = []
        defer {
            control.phase.store(RunControl.stopped, ordering: .releasing)
            for thread in threads { pthread_join(thread, nil) }
        }
        control.hardDeadline.store(
            monotonicNanoseconds() + UInt64(seconds * 1e9) + drainLimit + 5_000_000_000, ordering: .relaxed)
        starvation = StarvationTracker(ends: endpoints.map(\.name), ringFrames: Int(options.ringSize))
        interfaceDropsAtStart = interfaces().compactMap { InterfaceDrops.read(end: $0.end, interface: $0.interface, namespace: $0.namespace) }
        for end in endpoints.indices {
            let ports = polled[end]
            let senders = directions.filter { $0.senderEnd == end }.flatMap { $0.flows.map(\.sender) }
            let receivers = mode == .rxDrop || mode == .txOnly && end == 1
                ? [] : directions.filter { $0.receiverEnd == end }.flatMap { $0.flows.map(\.receiver) }
            let control = self.control
            let listsPerPass = options.listsPerPass
            let timing = starvation.timings[end]
            if threadPerQueue(end), let mux = Self.multiQueuePort(in: tops[end]) {
                // tx-only over a multi-queue port: one sending thread per queue,
                // each on a core of its own, driving its queue's port.
                let cpus = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
                for (queue, sender) in senders.enumerated() {
                    var lists: [PacketList] = []
                    lists.reserveCapacity(sender.pointer.pointee.capacity)
                    sender.pointer.pointee.inbox = Locked(Inbox(lists: lists))
                    let own: [any PacketPort] = [mux.bindings[queue]]
                    let above = ports
                    let thread = try startThread {
                        EndLoop.run(
                            ports: own, nowAndThen: above, senders: [sender], receivers: [], listsPerPass: listsPerPass, control: control,
                            timing: timing)
                    }
                    threads.append(thread)
                    try pin(thread, toCPU: endpoints[end].cpu.map { ($0 + queue) % cpus } ?? queue % cpus)
                }
                continue
            }
            if let asyncPort = asyncPorts.indices.contains(end) ? asyncPorts[end] : nil {
                for sender in senders { asyncEnds.startSender(asyncPort, sender: sender, listsPerPass: listsPerPass, control: control) }
                for receiver in receivers { asyncEnds.startReceiver(asyncPort, receiver: receiver, control: control) }
                continue
            }
            let thread = try startThread {
                EndLoop.run(
                    ports: ports, senders: senders, receivers: receivers, listsPerPass: listsPerPass, control: control,
                    timing: timing)
            }
            threads.append(thread)
            if let cpu = endpoints[end].cpu { try pin(thread, toCPU: cpu) }
        }

        if !quiet { Report.printHeader(self) }
        timeline = Timeline(names: directions.map(\.name), seconds: seconds)
        var previous = sample()
        let start = monotonicNanoseconds()
        control.phase.store(RunControl.running, ordering: .releasing)
        let end = start + UInt64(seconds * 1e9)
        var nextTick = start + 1_000_000_000
        var previousTick = start
        while !stopRequested {
            let now = monotonicNanoseconds()
            if now >= end {
                // The last interval, unless it is only a sliver.
                if now - previousTick >= 500_000_000 {
                    let current = sample()
                    if !quiet { Report.printInterval(self, elapsed: now - start, interval: now - previousTick, previous: previous, current: current) }
                    timeline.record(elapsed: now - start, interval: now - previousTick, previous: previous, current: current)
                }
                break
            }
            if now >= nextTick {
                let current = sample()
                if !quiet { Report.printInterval(self, elapsed: now - start, interval: now - previousTick, previous: previous, current: current) }
                timeline.record(elapsed: now - start, interval: now - previousTick, previous: previous, current: current)
                starvation.record(intervalNanoseconds: now - previousTick, ports: ports)
                previous = current
                previousTick = now
                nextTick += 1_000_000_000
            }
            sleepNanoseconds(min(min(nextTick, end) - now, 20_000_000))
        }

        // Stop sending; let what is in flight arrive, then stop the threads.
        let stopped = monotonicNanoseconds()
        let atStop = sample()
        control.phase.store(RunControl.draining, ordering: .releasing)
        var last = atStop
        var quietSince = monotonicNanoseconds()
        while !stopRequested || stopRequest.load(ordering: .relaxed) == StopReason.failure {
            sleepNanoseconds(5_000_000)
            let now = monotonicNanoseconds()
            let current = sample()
            if current != last { last = current; quietSince = now }
            if now - quietSince >= 30_000_000 || now - stopped >= drainLimit { break }
        }
        control.phase.store(RunControl.stopped, ordering: .releasing)
        for thread in threads { pthread_join(thread, nil) }
        threads.removeAll()
        // The rest of the run, the drain included.
        starvation.record(intervalNanoseconds: monotonicNanoseconds() - previousTick, ports: ports)

        return collect(elapsed: stopped - start, atStop: atStop)
    }

    /// Every interface of the run, with its end and namespace (F has two).
    private func interfaces() -> [(end: String, interface: String, namespace: String?)] {
        endpoints.flatMap { endpoint in
            [(endpoint.name, endpoint.interface, endpoint.namespace)]
                + (endpoint.secondInterface.map { [(endpoint.name, $0, endpoint.namespace)] } ?? [])
        }
    }

    private func interfaceNamespace(_ interface: String) -> String? {
        interfaces().first { $0.interface == interface }?.namespace
    }

    /// Whether an end runs a thread per queue: the sending end of tx-only
    /// over a multi-queue port (a queue's sending is a core's work: the
    /// kernel copies each frame in the sender's kick).
    func threadPerQueue(_ end: Int) -> Bool { mode == .txOnly && end == 0 && options.queues > 1 }

    /// What the counters say now, per direction (cheap enough once a second).
    func sample() -> [DirectionSample] {
        directions.map { direction in
            var sample = DirectionSample()
            for flow in direction.flows {
                sample.sent += flow.counters.sentPackets.load(ordering: .relaxed)
                sample.sentBytes += flow.counters.sentBytes.load(ordering: .relaxed)
                sample.received += flow.counters.receivedPackets.load(ordering: .relaxed)
                sample.receivedBytes += flow.counters.receivedBytes.load(ordering: .relaxed)
                sample.gaps += flow.counters.gaps.load(ordering: .relaxed)
                sample.forwarded += flow.counters.forwardedPackets.load(ordering: .relaxed)
            }
            if let relay = direction.relayEnd, ports[relay].count == 2 {
                // forward: what F's bridge sent out of the side facing the receiver.
                sample.forwarded = ports[relay][direction.receiverEnd == 1 ? 1 : 0].statistics.send.packets
            }
            let sendingEnds = [direction.senderEnd] + [direction.forwarderEnd, direction.relayEnd].compactMap { $0 }
            let receivingEnds = [direction.receiverEnd] + [direction.forwarderEnd, direction.relayEnd].compactMap { $0 }
            for end in sendingEnds {
                for port in ports[end] { sample.queued += port.statistics.send.queuedFrames }
            }
            for end in receivingEnds {
                for port in ports[end] { sample.socketDrops += port.statistics.receive.dropped }
            }
            return sample
        }
    }

    // MARK: Results

    private func collect(elapsed: UInt64, atStop: [DirectionSample]) -> RunReport {
        let seconds = Double(elapsed) / 1e9
        let overhead = options.wireOverhead ? 20 : 0
        var errors: [String] = []
        var results: [DirectionResult] = []
        for (index, direction) in directions.enumerated() {
            var result = DirectionResult(name: direction.name)
            var latency = Histogram<UInt64>(highestTrackableValue: 10_000_000_000, numberOfSignificantValueDigits: .three)
            var windowResets = 0
            for flow in direction.flows {
                let sender = flow.sender.pointer
                let receiver = flow.receiver.pointer
                receiver.pointee.flushLatency()
                latency.add(receiver.pointee.latency)
                result.sentPackets += sender.pointee.sentPackets
                result.sentBytes += sender.pointee.sentPackets * sender.pointee.frameLength
                result.unsentPackets += sender.pointee.failedPackets
                let checked = receiver.pointee.flow
                result.packets += checked.packets
                result.bytes += checked.bytes
                result.gaps += checked.gaps
                result.reordered += checked.reordered
                result.corrupted += checked.corrupted
                result.foreign += checked.foreign
                windowResets += sender.pointee.windowResets
                if let error = sender.pointee.firstError {
                    errors.append("\(direction.name) queue \(flow.queue): send refused \(sender.pointee.sendErrors) time(s): \(error)")
                }
                if let error = receiver.pointee.firstError {
                    errors.append("\(direction.name) queue \(flow.queue): returnList refused \(receiver.pointee.returnErrors) time(s): \(error)")
                }
                if let relay = flow.relay?.pointer, let error = relay.pointee.firstError {
                    errors.append("\(direction.name): F's relay refused \(relay.pointee.sendErrors + relay.pointee.returnErrors) time(s): \(error)")
                }
                if let forwarder = flow.forwarder?.pointer {
                    result.forwardedPackets = (result.forwardedPackets ?? 0) + forwarder.pointee.forwardedPackets
                    result.unforwardedPackets = (result.unforwardedPackets ?? 0) + forwarder.pointee.failedPackets
                    if let error = forwarder.pointee.firstError {
                        errors.append("\(direction.name) queue \(flow.queue): forwarding refused "
                            + "\(forwarder.pointee.sendErrors + forwarder.pointee.returnErrors) time(s): \(error)")
                    }
                }
            }
            if let relay = direction.relayEnd, ports[relay].count == 2 {
                let side = ports[relay][direction.receiverEnd == 1 ? 1 : 0].statistics.send
                result.forwardedPackets = side.packets
                result.unforwardedPackets = side.dropped
            }
            result.lost = result.sentPackets - result.packets
            result.lossPercent = rounded(result.sentPackets > 0 ? Double(result.lost) * 100 / Double(result.sentPackets) : 0, 4)
            result.windowResets = windowResets
            let sample = atStop[index]
            result.txMpps = rounded(Double(sample.sent) / seconds / 1e6, 6)
            result.mpps = rounded(Double(sample.received) / seconds / 1e6, 6)
            result.gbps = rounded(Double(sample.receivedBytes + sample.received * overhead) * 8 / seconds / 1e9, 6)
            if mode == .rxDrop {
                result.checked = false
            } else if latency.totalCount > 0 {
                func microseconds(_ nanoseconds: UInt64) -> Double { Double(nanoseconds) / 1000 }
                result.latencyMicroseconds = LatencyResult(
                    samples: latency.totalCount,
                    p50: microseconds(latency.valueAtPercentile(50)),
                    p90: microseconds(latency.valueAtPercentile(90)),
                    p99: microseconds(latency.valueAtPercentile(99)),
                    p999: microseconds(latency.valueAtPercentile(99.9)),
                    max: microseconds(latency.max),
                    mean: rounded(latency.mean / 1000, 3))
            }
            results.append(result)
        }

        var portResults: [PortResult] = []
        for end in endpoints.indices {
            for (index, port) in ports[end].enumerated() {
                let statistics = port.statistics
                // F's two ports: named for the side each faces.
                let name = endpoints[end].secondInterface == nil ? endpoints[end].name : (index == 0 ? "FA" : "FB")
                portResults.append(PortResult(
                    end: name, interface: port.configuration.interface, queue: Int(port.configuration.queue),
                    zeroCopy: port.isZeroCopy, nativeXDP: port.isAttachedNatively,
                    sentPackets: statistics.send.packets, kicks: statistics.send.kicks,
                    kickErrors: statistics.send.kickErrors, ringFullEvents: statistics.send.ringFullEvents,
                    sendsDropped: statistics.send.dropped, queuedFrames: statistics.send.queuedFrames,
                    receivedPackets: statistics.receive.packets, indications: statistics.receive.indications,
                    lowResourceEvents: statistics.receive.lowResourceEvents,
                    socketReceiveDropped: statistics.kernel.receiveDropped,
                    socketReceiveRingFull: statistics.kernel.receiveRingFull,
                    fillRingEmpty: statistics.kernel.fillRingEmpty,
                    invalidDescriptors: statistics.kernel.receiveInvalidDescriptors + statistics.kernel.transmitInvalidDescriptors,
                    programRedirected: statistics.programRedirected, programPassed: statistics.programPassed,
                    forwardedPackets: statistics.send.forwardedPackets,
                    notes: port.notes))
            }
        }
        let reason = stopRequest.load(ordering: .relaxed)
        return RunReport(
            mode: mode.rawValue, seconds: (seconds * 1000).rounded() / 1000, requestedSeconds: options.seconds,
            frameSize: options.frameSize, batch: options.batch, ringSize: Int(options.ringSize),
            umemFrameSize: options.umemFrameSize, queues: options.queues,
            zeroCopy: ports.joined().allSatisfy(\.isZeroCopy), needWakeup: !options.noNeedWakeup,
            busyPoll: options.busyPoll, window: options.window, rate: options.rate, gbpsIncludesPreambleAndGap: options.wireOverhead,
            stoppedEarlyBy: reason == 0 ? nil : StopReason.describe(reason),
            directions: results, ports: portResults,
            copies: mode == .forward
                ? ((tops[2] as? IntermediateDriver)?.layerStatistics.copiedFrames
                    ?? ports[2].reduce(0) { $0 + $1.statistics.send.packets - $1.statistics.send.forwardedPackets })
                : nil,
            stacks: tops.enumerated().map { end, top in StackReport(end: endpoints[end].name, stack: top.stack) },
            receiveStarvation: starvation.results,
            interfaceDrops: interfaceDropsAtStart.compactMap { start in
                InterfaceDrops.read(end: start.end, interface: start.interface, namespace: interfaceNamespace(start.interface))
                    .map { $0.since(start) }
            },
            errors: errors)
    }

    private func rounded(_ value: Double, _ decimals: Int) -> Double {
        let scale = pow(10, Double(decimals))
        return (value * scale).rounded() / scale
    }

    // MARK: Close

    /// Closes every port, then frees the per-flow state. Idempotent.
    func close() {
        guard !closed else { return }
        closed = true
        control.phase.store(RunControl.stopped, ordering: .releasing)
        // Async ends: their close ends the sequences, so the tasks end.
        for asyncPort in asyncPorts.compactMap({ $0 }) { AsyncEnds.closeBlocking(asyncPort) }
        asyncEnds.waitForAll()
        asyncPorts = []
        for top in polled.joined() { top.close() }
        for flow in directions.flatMap(\.flows) {
            if let inbox = flow.sender.pointer.pointee.inbox { Generator.takeInbox(flow.sender.pointer, inbox) }
            flow.sender.pointer.pointee.returnLists()
        }
        tops = []
        polled = []
        ports = ports.map { _ in [] }
        for table in senderTables { table.deallocate() }
        senderTables = []
        for direction in directions {
            for flow in direction.flows {
                flow.sender.pointer.pointee.releaseStorage()
                flow.receiver.pointer.pointee.releaseStorage()
                flow.sender.free()
                flow.receiver.free()
                flow.forwarder?.free()
                flow.relay?.free()
            }
        }
        directions = []
    }
}

struct DirectionSample: Equatable {
    var sent = 0
    var sentBytes = 0
    var received = 0
    var receivedBytes = 0
    var gaps = 0
    var forwarded = 0
    var queued = 0
    var socketDrops = 0
}

/// Which queue a received list came in on: what a multi-queue end's receive
/// handler dispatches on (each queue has its own flow). Set once the end is
/// open, before any traffic; read by that end's thread only.
final class ArrivalQueue: @unchecked Sendable {
    // @unchecked: written once before traffic starts, then only read.
    unowned(unsafe) var multiQueuePort: MultiQueuePort?

    @inline(__always)
    func queue(of list: PacketList) -> Int { multiQueuePort?.arrivalQueue(of: list) ?? 0 }
}

