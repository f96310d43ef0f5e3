import AFXDPRings
import Atomics
import CAFXDP
#if canImport(Glibc)
import Glibc
#endif

/// Where a port is in its life.
public enum PortState: UInt8, Sendable {
    case running = 0
    /// Sends complete with `.paused`; receive goes on.
    case paused = 1
    case closing = 2
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
/// - Every public method is safe from any thread at any time.
///
/// Progress: call `poll()` from your own loop, or set `ownThread` to let the
/// port run a thread that does.
public final class Port: @unchecked Sendable {
    // @unchecked: each region documents its own discipline; see below.

    // MARK: Immutable after open
    public let configuration: PortConfiguration
    public let pool: PacketPool
    /// Whether the socket runs in zero-copy mode (false: copy mode).
    public let isZeroCopy: Bool
    /// Whether the XDP program runs in the driver (native) rather than generic mode.
    public let isAttachedNatively: Bool
    /// Things the port chose on the caller's behalf (e.g. a fallback to copy mode).
    public let notes: [String]

    // MARK: Send region (one owner at a time; others use its mailbox)
    private let sendDoorbell = RegionDoorbell()
    private let sendContext: SendContext

    // MARK: Receive region (one owner at a time; others use its mailbox)
    private let receiveDoorbell = RegionDoorbell()
    private let receiveContext: ReceiveContext

    // MARK: Shared region: `sharedLock` guards the device, the program and state changes
    private let sharedLock = PThreadLock()
    private let device: Device
    private var program: XDPProgram?
    /// Read lock-free by every call; written under `sharedLock`.
    private let stateStorage = UnsafeMutablePointer<UInt8.AtomicRepresentation>.allocate(capacity: 64)
    private var state: UnsafeAtomic<UInt8> { UnsafeAtomic(at: stateStorage) }
    private var serviceThread: pthread_t?
    /// Frozen at close, since the socket goes away.
    private var finalKernelStatistics: KernelSocketStatistics?

    /// What plays the NIC: a real AF_XDP socket, or a kernel simulated in memory.
    private enum Device {
        case socket(XDPSocket)
        case simulated(SimulatedKernel)

        var fd: Int32 {
            switch self {
            case .socket(let socket): return socket.fd
            case .simulated: return -1
            }
        }

        var rings: (fill: RingMemory, completion: RingMemory, rx: RingMemory, tx: RingMemory) {
            switch self {
            case .socket(let socket): return (socket.fill, socket.completion, socket.rx, socket.tx)
            case .simulated(let kernel): return (kernel.fill.memory, kernel.completion.memory, kernel.rx.memory, kernel.tx.memory)
            }
        }

        func statistics() -> KernelSocketStatistics {
            switch self {
            case .socket(let socket): return socket.statistics()
            case .simulated(let kernel): return kernel.statistics
            }
        }
    }

    /// Opens a port.
    ///
    /// - Parameters:
    ///   - onReceive: called with each list of received packets (on whichever
    ///     thread runs the receive side). Return the list with `returnList`
    ///     when done, from any thread, now or later.
    ///   - onSendComplete: called with each batch of completed sends, in order.
    ///     The lists are the caller's again: reuse, send or return them.
    public static func open(
        _ configuration: PortConfiguration,
        onReceive: @escaping @Sendable (ReceiveIndication) -> Void,
        onSendComplete: @escaping @Sendable (SendCompletions) -> Void
    ) throws(AFXDPError) -> Port {
        try configuration.validate()
        return try NetworkNamespaceEntry.run(in: configuration.networkNamespace) { () throws(AFXDPError) -> Port in
            let ifindex = Int32(bitPattern: if_nametoindex(configuration.interface))
            guard ifindex != 0 else {
                throw .interfaceNotFound(interface: configuration.interface, namespace: configuration.networkNamespace)
            }
            let area = try UMEMArea(size: configuration.umemFrameCount * configuration.frameSize)
            let socket = try XDPSocket(configuration: configuration, area: area)
            var notes: [String] = []
            if configuration.zeroCopy == .preferred && !socket.zeroCopy {
                notes.append("zero-copy is not supported on \(configuration.interface); running in copy mode")
            }
            let program: XDPProgram
            do throws(AFXDPError) {
                if let busyPoll = configuration.busyPoll {
                    try SystemCalls.setSocketOption(socket.fd, 69 /* SO_PREFER_BUSY_POLL */, 1, name: "SO_PREFER_BUSY_POLL")
                    try SystemCalls.setSocketOption(socket.fd, SO_BUSY_POLL, busyPoll.timeoutMicroseconds, name: "SO_BUSY_POLL")
                    try SystemCalls.setSocketOption(socket.fd, 70 /* SO_BUSY_POLL_BUDGET */, busyPoll.budget, name: "SO_BUSY_POLL_BUDGET")
                }
                program = try XDPProgram.acquire(
                    interface: configuration.interface, ifindex: ifindex, namespace: configuration.networkNamespace,
                    mode: configuration.attachMode, etherTypeFilter: configuration.etherTypeFilter)
                do throws(AFXDPError) {
                    try program.bind(socketFD: socket.fd, queue: configuration.queue)
                } catch {
                    socket.close()  // socket, then program, as at close
                    program.release(namespace: nil)  // already inside the namespace
                    throw error
                }
            } catch {
                socket.close()
                throw error
            }
            if !program.attachedNatively && configuration.attachMode == .automatic {
                notes.append("the driver of \(configuration.interface) has no native XDP; the program runs in generic mode")
            }
            return Port(
                configuration: configuration, area: area, device: .socket(socket), program: program,
                isZeroCopy: socket.zeroCopy, isAttachedNatively: program.attachedNatively, notes: notes,
                onReceive: onReceive, onSendComplete: onSendComplete)
        }
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
        loopback: Bool = false,
        onReceive: @escaping @Sendable (ReceiveIndication) -> Void,
        onSendComplete: @escaping @Sendable (SendCompletions) -> Void
    ) throws(AFXDPError) -> (port: Port, kernel: SimulatedKernel) {
        var configuration = configuration
        // Nothing to wake: the simulated kernel never asks for a system call.
        configuration.useNeedWakeup = true
        configuration.ownThread = false
        try configuration.validate()
        let area = try UMEMArea(size: configuration.umemFrameCount * configuration.frameSize)
        let kernel = SimulatedKernel(configuration: configuration, umem: area.base, loopback: loopback)
        let port = Port(
            configuration: configuration, area: area, device: .simulated(kernel), program: nil, isZeroCopy: false,
            isAttachedNatively: false, notes: ["simulated: no interface; a SimulatedKernel plays the kernel"],
            onReceive: onReceive, onSendComplete: onSendComplete)
        return (port, kernel)
    }

    private init(
        configuration: PortConfiguration, area: UMEMArea, device: Device, program: XDPProgram?,
        isZeroCopy: Bool, isAttachedNatively: Bool, notes: [String],
        onReceive: @escaping @Sendable (ReceiveIndication) -> Void,
        onSendComplete: @escaping @Sendable (SendCompletions) -> Void
    ) {
        self.configuration = configuration
        self.device = device
        self.program = program
        self.isZeroCopy = isZeroCopy
        self.isAttachedNatively = isAttachedNatively
        self.notes = notes
        pool = PacketPool(
            umem: area.base, frameSize: configuration.frameSize, frameCount: configuration.umemFrameCount,
            receiveFrameCount: configuration.resolvedReceiveFrameCount, sendHeadroom: 0, umemOwner: area)
        stateStorage.initialize(repeating: .init(PortState.running.rawValue), count: 64)
        let rings = device.rings
        sendContext = SendContext(
            pool: pool, tx: rings.tx, completion: rings.completion, socketFD: device.fd,
            kickOnlyWhenAsked: configuration.useNeedWakeup,
            onComplete: onSendComplete)
        receiveContext = ReceiveContext(
            pool: pool, rx: rings.rx, fill: rings.fill, socketFD: device.fd,
            batchSize: configuration.receiveBatchSize, onReceive: onReceive)
        receiveContext.port = self
        sendContext.port = self
        // Give the kernel its receive frames before the first frame arrives.
        _ = receiveDoorbell.ownership.withOwnership { receiveContext.service(mailbox: receiveDoorbell.mailbox) }
        if configuration.ownThread { startServiceThread() }
    }

    deinit {
        close()
        stateStorage.deallocate()
    }

    // MARK: State

    public var currentState: PortState { PortState(rawValue: state.load(ordering: .acquiring))! }

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
    /// the pool is short of frames: lists come back through completions.
    public func allocateList(packetCount: Int) -> PacketList? {
        precondition(packetCount > 0, "a list holds at least one packet")
        precondition(
            packetCount <= pool.frameCount - pool.receiveFrameCount,
            "a list of \(packetCount) packets can never be allocated: the send pool has \(pool.frameCount - pool.receiveFrameCount) frames (PortConfiguration.sendFrameCount)")
        return pool.allocate(packetCount: packetCount)
    }

    /// Sends a list. Never refuses for lack of resources: the list is queued
    /// and completes later through the completion handler with a status.
    /// Throws only for bad input (a list that is not the caller's, or from
    /// another port, or with an empty packet) or a closed port, and then the
    /// list stays the caller's.
    public func send(_ list: PacketList) throws(AFXDPError) {
        guard list.pool === pool else { throw .foreignList }
        // A stale or busy handle says so before anything is read through it.
        try pool.transition(list, from: .caller, to: .caller)
        guard list.record.pointee.unsetLengths == 0 else { throw .emptyFrame }
        guard currentState != .closed else { throw .portClosed }
        try pool.transition(list, from: .caller, to: .engine)
        sendDoorbell.mailbox.push(list.slot, links: pool.lists)
        serviceSend()
    }

    /// Runs the send side if no other thread is running it; whoever owns it
    /// picks up what others left in the mailbox before letting go.
    @inline(__always)
    private func serviceSend() {
        while sendDoorbell.ownership.tryAcquire() {
            runSendPass()
            sendDoorbell.ownership.release()
            if sendDoorbell.mailbox.isEmpty { return }
        }
    }

    /// One send pass, by the send region's owner. Once the port is closed
    /// the rings are gone: lists that slipped into the mailbox during close
    /// complete with `.closing` instead.
    @inline(__always)
    @discardableResult
    private func runSendPass() -> Bool {
        if currentState == .closed {
            return sendContext.completeMailboxAfterClose(sendDoorbell.mailbox)
        }
        return sendContext.service(mailbox: sendDoorbell.mailbox, admit: admission)
    }

    // MARK: Receive

    /// Gives a list back: a received list's frames go back to the fill ring, an
    /// allocated list's frames to the send pool. Each list is returned once;
    /// a second return throws `.listAlreadyReturned` and changes nothing.
    public func returnList(_ list: PacketList) throws(AFXDPError) {
        guard list.pool === pool else { throw .foreignList }
        switch pool.home(ofList: list.slot) {
        case .send:
            try pool.transition(list, from: .caller, to: .free, bumpGeneration: true)
            pool.releaseToSendPool(list.slot)
        case .receive:
            // Stale for the caller at once (generation bumped), but not free
            // until the receive side takes it out of its mailbox: close counts
            // it as still out until then.
            try pool.transition(list, from: .caller, to: .engine, bumpGeneration: true)
            receiveDoorbell.mailbox.push(list.slot, links: pool.lists)
        }
    }

    // MARK: Progress

    /// Runs one pass of each side that no other thread is running: reaps
    /// completions, places queued sends, indicates received lists. Returns
    /// whether anything moved.
    @discardableResult
    public func poll() -> Bool {
        var progress = false
        // As in serviceSend: whoever lets go checks the mailbox again, or a
        // list pushed meanwhile (its sender found the region taken) would wait.
        while sendDoorbell.ownership.tryAcquire() {
            if runSendPass() { progress = true }
            sendDoorbell.ownership.release()
            if sendDoorbell.mailbox.isEmpty { break }
        }
        if receiveDoorbell.ownership.tryAcquire() {
            // After close the receive rings are gone; returns are still taken back.
            if currentState == .closed {
                if receiveContext.takeReturns(receiveDoorbell.mailbox) { progress = true }
            } else if receiveContext.service(mailbox: receiveDoorbell.mailbox) {
                progress = true
            }
            receiveDoorbell.ownership.release()
        }
        return progress
    }

    /// Whether sends are queued or in flight.
    public var hasSendsOutstanding: Bool {
        HandlerScope.precondition(notInsideHandlerOf: self, "hasSendsOutstanding")
        return sendDoorbell.ownership.withOwnership { sendContext.hasWork } || !sendDoorbell.mailbox.isEmpty
    }

    private func startServiceThread() {
        let box = Unmanaged.passRetained(self)
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { argument in
            let port = Unmanaged<Port>.fromOpaque(argument!).takeRetainedValue()
            port.runServiceLoop()
            return nil
        }, box.toOpaque())
        precondition(result == 0, "pthread_create failed: \(result)")
        serviceThread = thread
    }

    private func runServiceLoop() {
        while currentState.rawValue < PortState.closing.rawValue {
            if !poll() {
                // Never wait for the send region here: a slow completion
                // handler on another thread would stall receive too.
                var sendsOutstanding = true
                if sendDoorbell.ownership.tryAcquire() {
                    sendsOutstanding = sendContext.hasWork
                    sendDoorbell.ownership.release()
                }
                if sendsOutstanding || device.fd < 0 {
                    usleep(20)
                } else {
                    SystemCalls.waitReadable(device.fd, milliseconds: 1)
                }
            }
        }
    }

    // MARK: Pause, restart, close

    /// Stops sending: queued lists and lists sent from now on complete with
    /// `.paused`; what the kernel already has completes as usual. Returns
    /// once nothing is in flight (or after `timeout`). Receive goes on.
    /// Not from inside a handler: the handler's side is owned by its caller.
    public func pause(timeout: Duration = .seconds(2)) {
        HandlerScope.precondition(notInsideHandlerOf: self, "pause()")
        let changed = sharedLock.withLock { () -> Bool in
            guard currentState == .running else { return false }
            state.store(PortState.paused.rawValue, ordering: .releasing)
            return true
        }
        guard changed else { return }
        drainSends(status: .paused, timeout: timeout)
    }

    /// Resumes sending after `pause`.
    public func restart() {
        sharedLock.withLock {
            if currentState == .paused { state.store(PortState.running.rawValue, ordering: .releasing) }
        }
        serviceSend()
    }

    /// Drives the send side until nothing is in flight or `timeout` passes.
    private func drainSends(status: SendStatus, timeout: Duration) {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        while true {
            let busy = sendDoorbell.ownership.withOwnership { () -> Bool in
                // A close that ran meanwhile took the rings: nothing left to drive.
                guard currentState != .closed else { return false }
                sendContext.service(mailbox: sendDoorbell.mailbox, admit: status)
                return sendContext.hasWork
            } || !sendDoorbell.mailbox.isEmpty
            if !busy || clock.now >= deadline { return }
            usleep(50)
        }
    }

    /// Closes the port: every list queued or in flight completes once (with
    /// `.success` if the kernel sent it in time, else `.closing`), the XDP
    /// program is detached (when the last port on the interface closes), and
    /// every frame the caller does not hold is back in the pool. Lists the
    /// caller still holds may be returned afterwards. Idempotent. Not from
    /// inside a handler (the handler's side is owned by its caller).
    public func close(timeout: Duration = .seconds(1)) {
        HandlerScope.precondition(notInsideHandlerOf: self, "close()")
        let proceed = sharedLock.withLock { () -> Bool in
            guard currentState.rawValue < PortState.closing.rawValue else { return false }
            state.store(PortState.closing.rawValue, ordering: .sequentiallyConsistent)
            return true
        }
        guard proceed else {
            // Another thread is closing: return when it is done, as it will.
            while currentState != .closed { usleep(100) }
            return
        }
        if let thread = serviceThread {
            pthread_join(thread, nil)
            serviceThread = nil
        }
        drainSends(status: .closing, timeout: timeout)
        sendDoorbell.ownership.acquire()
        receiveDoorbell.ownership.acquire()
        sharedLock.withLock {
            finalKernelStatistics = device.statistics()
            let program = self.program
            self.program = nil
            if case .socket(let socket) = device {
                // Map updates and closes work on file descriptors from any
                // namespace; only the detach needs the interface's namespace.
                program?.unbind(queue: configuration.queue)
                socket.close()
                program?.release(namespace: configuration.networkNamespace)
            }
        }
        sendContext.abandonInFlight(mailbox: sendDoorbell.mailbox)
        // Send frames need no reclaiming: in-flight lists just completed with
        // their frames, and the free stacks only ever held free frames.
        receiveContext.reclaimAfterSocketClosed(receiveDoorbell.mailbox)
        state.store(PortState.closed.rawValue, ordering: .sequentiallyConsistent)
        receiveDoorbell.ownership.release()
        sendDoorbell.ownership.release()
        // A send that raced with close may have left its list in the mailbox.
        serviceSend()
    }

    // MARK: Statistics

    /// Counters per direction, the kernel's socket statistics and the XDP
    /// program's counters.
    public var statistics: Statistics {
        let kernel = sharedLock.withLock { finalKernelStatistics ?? device.statistics() }
        let programCounters = sharedLock.withLock { program?.counters() } ?? (seen: 0, redirected: 0, passed: 0)
        return Statistics(
            send: sendContext.counters.snapshot(),
            receive: receiveContext.counters.snapshot(heldByCaller: receiveContext.framesHeldByCaller, kernel: kernel),
            kernel: kernel, programRedirected: programCounters.redirected, programPassed: programCounters.passed)
    }

    /// Where every UMEM frame is.
    public struct PoolStatus: Sendable, Equatable {
        public var totalFrames: Int
        /// Send frames in the send pool.
        public var sendFramesFree: Int
        /// Receive frames the engine holds (free, or in the fill ring / kernel while open).
        public var receiveFramesWithEngine: Int
        /// Receive frames indicated and not returned.
        public var receiveFramesHeldByCaller: Int
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

    /// Where the frames are. Takes back returned lists first. Not for hot paths.
    public var poolStatus: PoolStatus {
        HandlerScope.precondition(notInsideHandlerOf: self, "poolStatus")
        return receiveDoorbell.ownership.withOwnership {
            receiveContext.takeReturns(receiveDoorbell.mailbox)
            let withEngine = receiveContext.freeFrames.count + receiveContext.framesWithKernel
            let send = pool.sendPoolCounts
            return PoolStatus(
                totalFrames: pool.frameCount, sendFramesFree: send.frames,
                receiveFramesWithEngine: withEngine, receiveFramesHeldByCaller: receiveContext.framesHeldByCaller,
                totalLargeChunks: pool.largeChunkCount,
                largeChunksFree: send.largeChunks + receiveContext.freeLargeChunks.count)
        }
    }
}
