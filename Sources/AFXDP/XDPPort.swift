import AFXDPSystem
import AFXDPRings
import Atomics
import CAFXDP
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Where a port is in its life.
public enum PortState: UInt8, Sendable {
    /// Open: sends go out and received lists are indicated.
    case running = 0
    /// Sends complete with `.paused`; receive goes on.
    case paused = 1
    /// A close has begun: what is queued or in flight drains (or is completed
    /// with `.closing`); new sends are accepted and complete with `.closing`
    /// until the teardown starts, then refused with `.portClosed`.
    case closing = 2
    /// The socket and program are gone; every send has completed.
    case closed = 3
}

/// A deserialized miniport over one AF_XDP socket (one interface queue).
///
/// - `send` never refuses for lack of ring slots or frames: it queues and
///   drains as the completion ring gives frames back. Every list sent is
///   completed exactly once, asynchronously, through the completion handler,
///   with a status, in the order sent within a priority.
/// - Received frames are indicated as lists pointing into the UMEM. The
///   engine does not touch them until they are returned with `returnList`;
///   only then do they go back to the fill ring.
/// - State is split into a send region, a receive region and a shared
///   region. Send and receive each have one owner at a time and share no
///   lock; only the shared region (the send pool, state changes) is locked.
/// - Every public method is safe from any thread at any time, and from
///   inside the port's own handlers.
///
/// **Where handlers run.** The receive and completion handlers run only
/// inside `poll()`, inside `pause()` and `close()` (on the calling thread,
/// while they drain), or on the port's own thread (`ownThread`). Never inside
/// `send`, `returnList`, `allocateList`, `restart` or the statistics: a
/// caller may hold its own lock across those and take it in a handler.
/// Handlers of one side never overlap, and completion batches arrive in order.
///
/// **Calling back in.** A handler may call any method of any port. `send`
/// from a completion handler queues the list, placed before `poll` returns
/// and completed by a later pass, so a handler that resends every list cannot
/// keep `poll` from returning. `close()` and `pause()` never wait when called
/// from inside any port's handler: they start, and the port's next pass (the
/// enclosing `poll` if it is this port's, the next `poll`, the port's
/// thread, or a later `close()` from outside a handler) finishes them.
///
/// Progress: call `poll()` from your own loop, or set `ownThread` to let the
/// port run a thread that does.
public final class XDPPort: @unchecked Sendable {
    // @unchecked: each region documents its own discipline; see below.

    // MARK: Immutable after open
    /// The configuration the port was opened with.
    public let configuration: PortConfiguration
    /// The memory the port's frames live in: its own, or one it shares with
    /// other ports (`open(_:umem:...)`).
    public let umem: UMEM
    /// Whether the socket runs in zero-copy mode (false: copy mode).
    public let isZeroCopy: Bool
    /// Whether the XDP program runs in the driver (native) rather than generic mode.
    public let isAttachedNatively: Bool
    /// Things the port chose on the caller's behalf (e.g. a fallback to copy mode).
    public let notes: [String]
    let table: ListTable
    /// Reads the interface's link state (nil: no way to), from any thread;
    /// the probe behind it closes with the socket.
    private let readLink: (@Sendable () -> LinkReading)?
    private let linkProbe: LinkProbe?
    /// The longest list `allocateList` can give: the send pool's size.
    public var sendFrameCount: Int { sendPool.frameCount }
    /// The UMEM frames of the port's two pools.
    var poolRanges: (receive: Range<Int>, send: Range<Int>) { (receiveContext.range.frames, sendPool.range.frames) }

    // MARK: Send region (one owner at a time; others use its mailbox)
    private let sendRegion: SendRegion
    // The region's parts, held here too: a computed property would hand back
    // a retained reference on every use.
    private let sendDoorbell: RegionDoorbell
    private let sendContext: SendContext

    // MARK: Receive region (one owner at a time; others use its mailbox).
    // It is also the port's receive pool, and outlives the port in the UMEM.
    private let receiveContext: ReceiveContext
    private let receiveDoorbell: RegionDoorbell

    // MARK: Shared region: one lock over state, device, program and the send pool
    private let shared: SharedRegion
    private let sendPool: SendPool

    // MARK: Atomics any thread reads and writes
    /// Written by every `send` (a cache line of their own): the send gate,
    /// lists accepted, and whether the port's own thread has ended.
    private let senderWords = UnsafeMutablePointer<Int.AtomicRepresentation>.allocate(capacity: 8)
    /// Sends between their admission check and their mailbox push, plus
    /// `refusingSends` once the teardown has begun: the teardown waits for
    /// the count to reach 0, so no list can reach the mailbox after the
    /// teardown took it for the last time.
    private var sendGate: UnsafeAtomic<Int> { UnsafeAtomic(at: senderWords) }
    private static let refusingSends = 1 << 40
    /// When an idle pass last asked the socket whether its device is gone.
    private let lastDeviceCheck = ManagedAtomic<UInt64>(0)
    /// Lists `send` accepted; with the lists delivered, says whether any is outstanding.
    private var acceptedLists: UnsafeAtomic<Int> { UnsafeAtomic(at: senderWords + 1) }
    /// 1 while the port's own thread runs (`ownThread`).
    private var serviceThreadRunning: UnsafeAtomic<Int> { UnsafeAtomic(at: senderWords + 2) }

    /// Opens a port on one interface queue.
    ///
    /// - Parameters:
    ///   - configuration: the interface, queue, rings and options (see `PortConfiguration`).
    ///   - umem: the UMEM the port's frames come from, shared with other
    ///     ports so that lists pass between them without a copy; nil: the
    ///     port makes one of its own (`receiveFrameCount + sendFrameCount`
    ///     frames of `frameSize`).
    ///   - onReceive: called with each list of received packets (see "Where
    ///     handlers run"). Return the list with `returnList` when done, from
    ///     any thread, now or later.
    ///   - onSendComplete: called with each batch of completed sends, in order.
    ///     The lists are the caller's again: reuse, send or return them.
    public static func open(
        _ configuration: PortConfiguration,
        umem: UMEM? = nil,
        onReceive: @escaping @Sendable (ReceiveIndication) -> Void,
        onSendComplete: @escaping @Sendable (SendCompletions) -> Void
    ) throws(AFXDPError) -> XDPPort {
        try configuration.validate()
        // Without one given, a UMEM of the port's own: its two pools' frames.
        let umem: UMEM =
            if let umem { umem } else { try UMEM(frameCount: configuration.umemFrameCount, frameSize: configuration.frameSize) }
        try checkFits(configuration, umem)
        let port = try NetworkNamespaceEntry.run(in: configuration.networkNamespace) { () throws(AFXDPError) -> XDPPort in
            let ifindex = Int32(bitPattern: if_nametoindex(configuration.interface))
            guard ifindex != 0 else {
                throw .interfaceNotFound(interface: configuration.interface, namespace: configuration.networkNamespace)
            }
            let socket = try XDPSocket(configuration: configuration, ifindex: ifindex, umem: umem)
            // Made here, inside the namespace: its ioctls answer for this one.
            let linkProbe = LinkProbe(ifindex: ifindex)
            var notes: [String] = []
            if configuration.zeroCopy == .preferred && !socket.zeroCopy {
                notes.append("zero-copy is not supported on \(configuration.interface); running in copy mode")
            }
            let program: XDPProgram
            do throws(AFXDPError) {
                if let busyPoll = configuration.busyPoll {
                    try SystemCalls.setSocketOption(socket.fd, cafxdp_so_prefer_busy_poll, 1, name: "SO_PREFER_BUSY_POLL")
                    try SystemCalls.setSocketOption(socket.fd, SO_BUSY_POLL, busyPoll.timeoutMicroseconds, name: "SO_BUSY_POLL")
                    try SystemCalls.setSocketOption(socket.fd, cafxdp_so_busy_poll_budget, busyPoll.budget, name: "SO_BUSY_POLL_BUDGET")
                }
                program = try XDPProgram.acquire(
                    interface: configuration.interface, ifindex: ifindex, namespace: configuration.networkNamespace,
                    mode: configuration.attachMode, etherTypeFilter: configuration.etherTypeFilter)
            } catch {
                socket.close()
                throw error
            }
            if !program.attachedNatively && configuration.attachMode == .automatic {
                notes.append("the driver of \(configuration.interface) has no native XDP; the program runs in generic mode")
            }
            let port: XDPPort
            do throws(AFXDPError) {
                port = try XDPPort(
                    configuration: configuration, umem: umem, device: .socket(socket), program: program,
                    isZeroCopy: socket.zeroCopy, isAttachedNatively: program.attachedNatively, notes: notes,
                    linkProbe: linkProbe,
                    onReceive: onReceive, onSendComplete: onSendComplete)
            } catch {
                socket.close()  // socket, then program, as at close
                program.release(namespace: nil)  // already inside the namespace
                throw error
            }
            // Bound last, with the fill ring primed: frames redirected to the
            // socket find frames to land in. Undone by the port's own close.
            do throws(AFXDPError) {
                try program.bind(socketFD: socket.fd, queue: configuration.queue)
            } catch {
                port.close()
                throw error
            }
            if let pid = program.replacedProgramOfDeadProcess {
                port.log(.notice, "replaced the XDP program that process \(pid), now dead, left on \(configuration.interface)")
            }
            return port
        }
        for note in port.notes { port.log(.notice, "\(note)") }
        port.log(.info, "open: \(port.isZeroCopy ? "zero-copy" : "copy mode"), \(port.isAttachedNatively ? "native" : "generic") XDP, "
            + "rings fill \(configuration.fillRingSize) RX \(configuration.receiveRingSize) TX \(configuration.transmitRingSize) "
            + "completion \(configuration.completionRingSize), \(configuration.umemFrameCount) frames of \(configuration.frameSize) bytes"
            + (configuration.multiBuffer ? ", multi-buffer" : ""))
        // Started here, back in the caller's namespace: a thread inherits the
        // namespace of the thread that makes it, and the handlers it runs
        // must resolve interfaces and open sockets where the caller does.
        if configuration.ownThread { try port.startServiceThread() }
        return port
    }

    /// Opens a port over a kernel simulated in memory: no interface, no
    /// privileges, no system calls. The returned `SimulatedKernel` plays the
    /// kernel's side of the four rings when asked (`transmit`, `deliver`), so
    /// tests and benchmarks can drive every path of the engine, including
    /// states a real kernel will not produce on demand (a stalled completion
    /// ring, an empty fill ring). The configuration's interface, namespace,
    /// zero-copy, busy-poll and attach options are ignored.
    public static func openSimulated(
        _ configuration: PortConfiguration,
        umem: UMEM? = nil,
        loopback: Bool = false,
        onReceive: @escaping @Sendable (ReceiveIndication) -> Void,
        onSendComplete: @escaping @Sendable (SendCompletions) -> Void
    ) throws(AFXDPError) -> (port: XDPPort, kernel: SimulatedKernel) {
        var configuration = configuration
        // Nothing to wake: the simulated kernel never asks for a system call.
        configuration.useNeedWakeup = true
        configuration.ownThread = false
        try configuration.validate()
        // Without one given, a UMEM of the port's own: its two pools' frames.
        let umem: UMEM =
            if let umem { umem } else { try UMEM(frameCount: configuration.umemFrameCount, frameSize: configuration.frameSize) }
        try checkFits(configuration, umem)
        guard !umem.isClosed else { throw .umemClosed }
        let kernel = SimulatedKernel(configuration: configuration, umem: umem, loopback: loopback)
        let port = try XDPPort(
            configuration: configuration, umem: umem, device: .simulated(kernel), program: nil, isZeroCopy: false,
            isAttachedNatively: false, notes: ["simulated: no interface; a SimulatedKernel plays the kernel"],
            linkProbe: nil,
            onReceive: onReceive, onSendComplete: onSendComplete)
        return (port, kernel)
    }

    /// Whether a port so configured can open on `umem`.
    private static func checkFits(_ configuration: PortConfiguration, _ umem: UMEM) throws(AFXDPError) {
        guard configuration.frameSize == umem.frameSize else {
            throw .invalidConfiguration(
                "the port's frameSize \(configuration.frameSize) differs from its UMEM's \(umem.frameSize); "
                    + "set frameSize = \(umem.frameSize)")
        }
        guard umem.framesAvailable >= configuration.umemFrameCount else {
            throw .umemExhausted(needed: configuration.umemFrameCount, available: umem.framesAvailable)
        }
    }

    private init(
        configuration: PortConfiguration, umem: UMEM, device: Device, program: XDPProgram?,
        isZeroCopy: Bool, isAttachedNatively: Bool, notes: [String], linkProbe: LinkProbe?,
        onReceive: @escaping @Sendable (ReceiveIndication) -> Void,
        onSendComplete: @escaping @Sendable (SendCompletions) -> Void
    ) throws(AFXDPError) {
        let table = umem.table
        // The port's two pools: reserved together, so that a port that
        // cannot have both takes neither.
        guard let (receiveRange, receiveID) = table.reserve(frameCount: configuration.resolvedReceiveFrameCount) else {
            throw .umemExhausted(needed: configuration.umemFrameCount, available: umem.framesAvailable)
        }
        guard let (sendRange, sendID) = table.reserve(frameCount: configuration.resolvedSendFrameCount) else {
            throw .umemExhausted(needed: configuration.resolvedSendFrameCount, available: umem.framesAvailable)
        }
        self.configuration = configuration
        self.umem = umem
        self.table = table
        self.isZeroCopy = isZeroCopy
        self.isAttachedNatively = isAttachedNatively
        self.notes = notes
        self.linkProbe = linkProbe
        let readLink: (@Sendable () -> LinkReading)?
        switch device {
        case .socket:
            if let linkProbe { readLink = { linkProbe.read() } } else { readLink = nil }
        case .simulated(let kernel): readLink = { [unowned kernel] in kernel.linkUp ? .usable : .down }
        }
        self.readLink = readLink
        shared = SharedRegion(device: device, program: program)
        sendPool = SendPool(table: table, range: sendRange, id: sendID, lock: shared.lock)
        senderWords.initialize(repeating: .init(0), count: 8)
        let rings = device.rings
        sendRegion = SendRegion(context: SendContext(
            table: table, ownPools: (receiveID, sendID), tx: rings.tx, completion: rings.completion, socketFD: device.fd,
            kickOnlyWhenAsked: configuration.useNeedWakeup,
            faults: SendFaultPolicy(
                readLink: readLink, linkDownTimeout: configuration.linkDownTimeout,
                stallTimeout: configuration.completionStallTimeout, stallFailure: configuration.completionStallFailure,
                onEvent: configuration.onEvent, logger: configuration.logger),
            onComplete: onSendComplete))
        sendDoorbell = sendRegion.door
        sendContext = sendRegion.context
        receiveContext = ReceiveContext(
            table: table, range: receiveRange, id: receiveID, rx: rings.rx, fill: rings.fill, socketFD: device.fd,
            batchSize: configuration.receiveBatchSize, multiBuffer: configuration.multiBuffer, onReceive: onReceive)
        receiveDoorbell = receiveContext.door
        sendContext.port = self
        table.register(.receive(receiveContext), range: receiveRange, id: receiveID)
        table.register(.send(sendPool), range: sendRange, id: sendID)
        // Give the kernel its receive frames before the first frame arrives.
        receiveDoorbell.runIfFree(rounds: 1) { receiveContext.prime() }
    }

    deinit {
        // No other thread can be inside the port now (each would hold a
        // reference), so waiting here cannot deadlock, even inside a handler.
        requestClose(timeout: .seconds(1))
        finishClose()
        senderWords.deallocate()
    }

    // MARK: State

    /// Where the port is in its life (`PortState`). One atomic read; any thread.
    public var currentState: PortState { shared.state }

    /// The status new and queued sends get in the current state.
    private var admission: SendStatus {
        switch currentState {
        case .running: return .success
        case .paused: return .paused
        case .closing, .closed: return .closing
        }
    }

    // MARK: Send

    /// Takes a list of `packetCount` empty frames from the send pool. Write
    /// each packet through `Packet.buffer` and `setLength`. Returns nil when
    /// the pool is short of frames right now: lists come back through
    /// completions and `returnList`. Throws for a count no list can have
    /// (below 1, or above the send pool's `sendFrameCount`) and on a closed port.
    public func allocateList(packetCount: Int) throws(AFXDPError) -> PacketList? {
        guard packetCount > 0, packetCount <= sendPool.frameCount else {
            throw .invalidPacketCount(requested: packetCount, maximum: sendPool.frameCount)
        }
        guard currentState != .closed else { throw .portClosed }
        return sendPool.allocate(packetCount: packetCount)
    }

    /// Sends a list. Never refuses for lack of resources: the list is queued
    /// and completes later, through the completion handler, with a status.
    /// Throws only for bad input (a list that is not the caller's, from
    /// another port, or with a packet whose length is unset) or a port whose
    /// close has begun its teardown; then the list stays the caller's.
    /// Runs no handler.
    public func send(_ list: PacketList) throws(AFXDPError) {
        guard list.table === table else { throw .foreignList }
        // A stale or busy handle says so before anything is read through it.
        let record = try list.ownedRecord()
        guard record.pointee.unsetLengths == 0 else { throw .emptyFrame }
        if record.pointee.continuations > 0 { try checkPacketRuns(list) }
        // Through the gate: once the teardown has begun, refused; before it,
        // the teardown waits until this list is in the mailbox.
        let gate = sendGate.loadThenWrappingIncrement(ordering: .sequentiallyConsistent)
        guard gate & Self.refusingSends == 0 else {
            sendGate.wrappingDecrement(ordering: .releasing)
            throw .portClosed
        }
        do {
            try table.transition(list, from: .caller, to: .engine)
        } catch {
            sendGate.wrappingDecrement(ordering: .releasing)
            throw error
        }
        acceptedLists.wrappingIncrement(ordering: .relaxed)
        #if DEBUG
        Self.testHookBeforePush?()
        #endif
        sendRegion.accept(list.slot)
        sendGate.wrappingDecrement(ordering: .releasing)
        // Placed now if no other thread is running the send side; otherwise
        // that thread (or the next poll) takes it from the mailbox.
        sendDoorbell.runIfFree(rounds: 4) { placingPass() }
    }

    /// A list with entries marked `continues` (multi-buffer): only on a port
    /// opened for it, and never with its last packet unfinished (the kernel
    /// would hold it, waiting for descriptors that never come).
    private func checkPacketRuns(_ list: PacketList) throws(AFXDPError) {
        guard configuration.multiBuffer else { throw .multiBufferNotEnabled(interface: configuration.interface) }
        var last = XDPDescriptor(address: 0, length: 0)
        table.forEachSlot(of: list.slot) { _, packets in
            if let entry = packets.last { last = entry }
        }
        guard last.options & XDPDescriptor.continues == 0 else { throw .unfinishedPacket }
    }

    #if DEBUG
    /// Tests only: runs inside `send`, between admission and the mailbox push.
    nonisolated(unsafe) static var testHookBeforePush: (() -> Void)?
    #endif

    /// `SendRegion.placingPass` in the port's state. By the send region's owner.
    @inline(__always)
    private func placingPass() {
        // After close the rings are gone, and (the gate) nothing is queued.
        guard currentState != .closed else { return }
        sendRegion.placingPass(admit: admission)
    }

    /// `SendRegion.deliveringPass` in the port's state. By the send region's owner.
    @discardableResult
    private func deliveringPass() -> Bool {
        guard currentState != .closed else { return false }
        return sendRegion.deliveringPass(admit: admission)
    }

    // MARK: Receive

    /// Gives a list back to its home pool: a received list's frames go back
    /// to the fill ring of the port that received them, an allocated list's
    /// to the send pool of the port that allocated it, whichever port of the
    /// UMEM it is returned on (or last sent on). Each list is returned once;
    /// a second return throws `.listAlreadyReturned` and changes nothing.
    /// Runs no handler.
    public func returnList(_ list: PacketList) throws(AFXDPError) {
        guard list.table === table else { throw .foreignList }
        try Self.returnHome(list, table: table)
    }

    /// `returnList`, for any list of `table`'s UMEM.
    static func returnHome(_ list: PacketList, table: ListTable) throws(AFXDPError) {
        switch table.home(of: list.slot) {
        case .send(let pool):
            try table.transition(list, from: .caller, to: .free, bumpGeneration: true)
            pool._withUnsafeGuaranteedRef { $0.release(list.slot) }
        case .receive(let context):
            // Stale for the caller at once (generation bumped), but not free
            // until the receive side takes it out of its mailbox: close counts
            // it as still out until then.
            try table.transition(list, from: .caller, to: .engine, bumpGeneration: true)
            context._withUnsafeGuaranteedRef { $0.takeBack(list.slot) }
        }
    }

    /// One pass of the receive side, by its owner: takes returned lists
    /// back, refills the fill ring, indicates what arrived (handlers run).
    private func receivePass() -> Bool {
        // After close the rings are gone; returns are still taken back.
        if currentState == .closed { return receiveContext.takeReturns() }
        return receiveContext.service(port: self)
    }

    // MARK: Progress

    /// Runs one pass of each side that no other thread is running: reaps
    /// completions, places queued sends, delivers completions, indicates
    /// received lists, and moves a close in progress along. Does a bounded
    /// amount of work whatever the handlers do. Returns whether anything moved.
    @discardableResult
    public func poll() -> Bool {
        var progress = false
        sendDoorbell.runIfFree(rounds: 1) { progress = deliveringPass() }
        // What other threads sent while this one had the side: place it now.
        if !sendDoorbell.mailbox.isEmpty { sendDoorbell.runIfFree(rounds: 2) { placingPass() } }
        receiveDoorbell.runIfFree(rounds: 1) {
            if receivePass() { progress = true } else if !progress { noticeDeviceLossWhileIdle() }
        }
        if let failure, currentState.rawValue < PortState.closing.rawValue {
            // Nothing in flight will ever complete: close now, at once.
            if requestClose(timeout: .zero) {
                let event = PortEvent.failed(failure)
                HandlerContext.run {
                    log(event.logLevel, "\(event.logMessage)")
                    configuration.onEvent?(event)
                }
            }
        }
        if currentState == .closing { driveClose() }
        return progress
    }

    /// A port with nothing to send never kicks, so it would not learn from
    /// a kick that its device is gone: when a pass moved nothing, at most
    /// every 100 ms, it reads the socket's pending error (ENETDOWN: the
    /// device was unregistered). Costs idle passes a clock read. Receive-side
    /// owner only: the teardown, which closes the socket, needs that side too.
    private func noticeDeviceLossWhileIdle() {
        let fd = receiveContext.socketFD
        guard fd >= 0, receiveContext.ringsOpen else { return }
        let now = monotonicNanoseconds()
        guard now &- lastDeviceCheck.load(ordering: .relaxed) >= 100_000_000 else { return }
        lastDeviceCheck.store(now, ordering: .relaxed)
        if SystemCalls.pendingError(fd) == ENETDOWN { sendContext.noteDeviceLost() }
    }

    /// The port's interface (or its network namespace) went away under it:
    /// the port closed itself, and every send still out completed with
    /// `.closing`. Lists the caller holds stay valid until returned.
    public var isDeviceLost: Bool { failure == .deviceLost }

    /// Why the port closed itself, if it did: its device is gone, or the
    /// kernel stopped completing sends (`completionStallFailure`).
    public var failure: PortFailure? { sendContext.failure }

    /// Whether the interface is up with carrier right now (asked of the
    /// kernel on each call; any thread). A simulated port: its kernel's
    /// `linkUp`. Sends made while it is false queue (see `linkDownTimeout`).
    public var isLinkUp: Bool { readLink?() == .usable }

    /// Whether sends are queued, in flight, or completed and not yet
    /// delivered to the completion handler. Never waits.
    public var hasSendsOutstanding: Bool {
        acceptedLists.load(ordering: .acquiring) != sendContext.counters.completedLists
    }

    private func startServiceThread() throws(AFXDPError) {
        serviceThreadRunning.store(1, ordering: .releasing)
        // Detached: the thread may end a close itself (one asked from a
        // handler it ran), so no one is sure to be there to join it. It
        // holds the port until it ends.
        do {
            try Threads.start(detached: true) { [self] in
                runServiceLoop()
                serviceThreadRunning.store(0, ordering: .releasing)
            }
        } catch {
            serviceThreadRunning.store(0, ordering: .releasing)
            close()
            throw .system(operation: "starting the port's own thread (ownThread)", errno: error.errno)
        }
    }

    /// The port's own thread: polls until the port is closed. It keeps the
    /// port alive until then.
    private func runServiceLoop() {
        while currentState != .closed {
            if !poll() {
                if currentState == .closing || hasSendsOutstanding || receiveContext.socketFD < 0 {
                    usleep(20)
                } else {
                    SystemCalls.waitReadable(receiveContext.socketFD, milliseconds: 1)
                }
            }
        }
    }

    // MARK: Pause, restart, close

    /// Stops sending: queued lists and lists sent from now on complete with
    /// `.paused`; what the kernel already has completes as usual. Receive
    /// goes on. Returns once nothing is in flight, after `timeout`, or as
    /// soon as another thread restarts or closes the port. From inside a
    /// handler (of any port) it does not wait: the pause takes effect at the
    /// port's next pass.
    public func pause(timeout: Duration = .seconds(2)) {
        let changed = shared.lock.withLock { () -> Bool in
            guard currentState == .running else { return false }
            shared.setState(.paused)
            return true
        }
        guard changed, !HandlerContext.isInsideHandler else { return }
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        while currentState == .paused {
            var settled = false
            sendDoorbell.runIfFree(rounds: 1) {
                deliveringPass()
                settled = sendRegion.isSettled
            }
            if settled || clock.now >= deadline { return }
            usleep(50)
        }
    }

    /// Stops (true) or resumes (false) indicating received lists; see
    /// `PacketPort.holdReceive`. One atomic store; the next pass obeys it.
    public func holdReceive(_ hold: Bool) { receiveContext.holdIndications(hold) }

    /// Resumes sending after `pause`. Runs no handler.
    public func restart() {
        shared.lock.withLock {
            if currentState == .paused { shared.setState(.running) }
        }
        sendDoorbell.runIfFree(rounds: 2) { placingPass() }
    }

    /// Closes the port: every list queued or in flight completes once (with
    /// `.success` if the kernel sent it within `timeout`, else `.closing`),
    /// the XDP program is detached (when the last port on the interface
    /// closes), and every frame the caller does not hold is back in the pool.
    /// Lists the caller still holds stay valid, and may be returned afterwards.
    /// Idempotent; safe from any thread.
    ///
    /// From inside a handler (of any port) it does not wait: the port moves
    /// to `.closing` at once and the close finishes at the port's next pass
    /// (the enclosing `poll()` when it is this port's handler, the port's own
    /// thread, a later `poll()`, or a `close()` from outside a handler).
    public func close(timeout: Duration = .seconds(1)) {
        requestClose(timeout: timeout)
        if HandlerContext.isInsideHandler {
            driveClose()
            return
        }
        finishClose()
    }

    /// Moves a running or paused port to `.closing`. Never waits. Returns
    /// whether this call did.
    @discardableResult
    private func requestClose(timeout: Duration) -> Bool {
        shared.lock.withLock {
            guard currentState.rawValue < PortState.closing.rawValue else { return false }
            shared.closeDeadline = ContinuousClock.now.advanced(by: timeout)
            shared.setState(.closing)
            return true
        }
    }

    /// Drives the close until the port is closed and its thread has ended.
    /// Only where waiting cannot deadlock: outside every handler.
    private func finishClose() {
        while currentState != .closed {
            driveClose()
            if currentState != .closed { usleep(50) }
        }
        while serviceThreadRunning.load(ordering: .acquiring) != 0 { usleep(100) }
    }

    /// One step of a close in progress, by whichever thread calls: a
    /// delivering send pass (completions keep coming while the kernel sends
    /// what it took), then, once nothing is outstanding or the deadline has
    /// passed, the teardown. Never waits for a region another thread owns:
    /// that thread's pass, or a later step, goes on.
    private func driveClose() {
        guard currentState == .closing else { return }
        var drained = false
        sendDoorbell.runIfFree(rounds: 1) {
            deliveringPass()
            drained = sendRegion.isSettled
        }
        // A lost device completes nothing more: no deadline to wait out.
        if !drained, failure == nil {
            let deadline = shared.lock.withLock { shared.closeDeadline }
            guard let deadline, ContinuousClock.now >= deadline else { return }
        }
        tearDown()
    }

    /// The end of a close, by the thread that owns both regions: no send
    /// gets in any more; the kernel's last completions are read and what it
    /// never took is counted unsent; the socket and program go; every list
    /// still out completes with `.closing`, delivered here in order; every
    /// receive frame the caller does not hold comes home.
    private func tearDown() {
        guard sendDoorbell.ownership.tryAcquire() else { return }
        defer { sendDoorbell.ownership.release() }
        guard receiveDoorbell.ownership.tryAcquire() else { return }
        guard currentState == .closing else {
            receiveDoorbell.ownership.release()
            return
        }
        _ = sendGate.loadThenBitwiseOr(with: Self.refusingSends, ordering: .sequentiallyConsistent)
        // Sends inside the gate only push to the mailbox: they never wait.
        while sendGate.load(ordering: .acquiring) & ~Self.refusingSends != 0 { sched_yield() }
        sendRegion.placingPass(admit: .closing)
        sendContext.settleBeforeTeardown()
        shared.lock.withLock {
            shared.finalKernelStatistics = shared.device.statistics()
            shared.finalProgramCounters = shared.program?.counters()
            let program = shared.program
            shared.program = nil
            switch shared.device {
            case .socket(let socket):
                // Map updates and closes work on file descriptors from any
                // namespace; only the detach needs the interface's namespace.
                program?.unbind(queue: configuration.queue)
                socket.close()
                linkProbe?.close()
                program?.release(namespace: configuration.networkNamespace)
            case .simulated(let kernel):
                kernel.tearDown()
            }
        }
        sendContext.abandonInFlight(mailbox: sendDoorbell.mailbox)
        // Send frames need no reclaiming: in-flight lists just completed with
        // their frames, and the free stacks only ever held free frames.
        receiveContext.reclaimAfterSocketClosed()
        receiveDoorbell.ownership.release()
        // A list returned while this thread had the receive side waits in its
        // mailbox, and no pass will run again: take it back now.
        if !receiveDoorbell.mailbox.isEmpty { receiveDoorbell.runIfFree(rounds: 2) { receiveContext.takeReturns() } }
        sendContext.deliver()
        // Handlers may keep what they capture alive: let go of them now that
        // none can run again (the receive side lives on in the UMEM).
        receiveContext.dropHandler()
        shared.setState(.closed)
        let counters = sendContext.counters.snapshot()
        log(.info, "closed: \(counters.packets) packets sent, \(receiveContext.counters.packetsSoFar) received"
            + (failure.map { "; it closed itself: \($0)" } ?? ""))
    }

    /// One line in the caller's log (`PortConfiguration.logger`), with the
    /// port's interface, queue and namespace as metadata. Never on a hot path.
    func log(_ level: Logger.Level, _ message: @autoclosure () -> String) {
        var logger = configuration.logger
        logger[metadataKey: "interface"] = "\(configuration.interface)"
        logger[metadataKey: "queue"] = "\(configuration.queue)"
        if let namespace = configuration.networkNamespace { logger[metadataKey: "namespace"] = "\(namespace)" }
        logger.log(level: level, "\(message())")
    }

    // MARK: Statistics

    /// Counters per direction, the kernel's socket statistics and the XDP
    /// program's counters (frozen at close). Never waits for a region.
    public var statistics: Statistics {
        let (kernel, programCounters) = shared.lock.withLock {
            (shared.finalKernelStatistics ?? shared.device.statistics(),
             shared.finalProgramCounters ?? shared.program?.counters() ?? (0, 0, 0))
        }
        return Statistics(
            send: sendContext.counters.snapshot(),
            receive: receiveContext.counters.snapshot(heldByCaller: receiveContext.framesHeldByCaller, kernel: kernel),
            kernel: kernel, programRedirected: programCounters.redirected, programPassed: programCounters.passed)
    }

    /// Where the port's frames are: its send pool and its receive pool.
    public struct PoolStatus: Sendable, Equatable {
        /// Frames of the two pools together.
        public var totalFrames: Int
        /// Send frames in the send pool.
        public var sendFramesFree: Int
        /// Receive frames the engine holds (free, or in the fill ring / kernel while open).
        public var receiveFramesWithEngine: Int
        /// Receive frames indicated and not returned (or returned and not yet taken back).
        public var receiveFramesHeldByCaller: Int
        /// Frames of the port's pools queued or in flight on another port of
        /// the UMEM (lent for forwarding): part of what the caller holds.
        public var framesLentToOtherPorts: Int
        /// Large chunks (the storage of long lists' packets) in all.
        public var totalLargeChunks: Int
        /// Large chunks not lent to a list, on both sides.
        public var largeChunksFree: Int
        /// Whether every frame is back in its pool.
        public var allFramesHome: Bool {
            sendFramesFree + receiveFramesWithEngine == totalFrames
        }
        /// Whether every large chunk is back too (no list holds one).
        public var allLargeChunksHome: Bool { largeChunksFree == totalLargeChunks }
    }

    /// Where the frames are: a snapshot, exact when the port is quiet (e.g.
    /// after close). Takes back returned lists first when no other thread is
    /// running the receive side. Never waits; not for hot paths.
    public var poolStatus: PoolStatus {
        receiveDoorbell.runIfFree(rounds: 1) { receiveContext.takeReturns() }
        let send = sendPool.counts
        return PoolStatus(
            totalFrames: receiveContext.range.frameCount + sendPool.range.frameCount, sendFramesFree: send.frames,
            receiveFramesWithEngine: receiveContext.framesWithEngine,
            receiveFramesHeldByCaller: receiveContext.framesHeldByCaller,
            framesLentToOtherPorts: receiveContext.lent.count + sendPool.lent.count,
            totalLargeChunks: receiveContext.range.largeChunkCount + sendPool.range.largeChunkCount,
            largeChunksFree: send.largeChunks + receiveContext.largeChunksFree)
    }
}

extension XDPPort: PacketPort {
    /// A port is the bottom of every stack.
    public var stack: StackDescription {
        var name = "port \(configuration.interface) queue \(configuration.queue)"
        if let namespace = configuration.networkNamespace { name += " in \(namespace)" }
        name += isZeroCopy ? ", zero-copy" : ", copy mode"
        return StackDescription(kind: .port, name: name)
    }

    public var umems: [UMEM] { [umem] }

    /// How a driver opens a port below it: `XDPPort.below(configuration)` is
    /// the `LowerOpener` that opens this port with the driver's handlers.
    public static func below(_ configuration: PortConfiguration, umem: UMEM? = nil) -> LowerOpener {
        { handlers throws(AFXDPError) in
            try XDPPort.open(configuration, umem: umem, onReceive: handlers.onReceive, onSendComplete: handlers.onSendComplete)
        }
    }
}

