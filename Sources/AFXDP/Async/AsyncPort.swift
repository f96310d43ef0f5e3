import AFXDPSystem
import Atomics
import Glibc

/// Swift concurrency over a port or a stack of intermediate drivers: received
/// lists as an `AsyncSequence` with back-pressure, sends that can be awaited
/// for their status or fired and forgotten, and a `close()` and `pause()`
/// that suspend instead of blocking a thread of the cooperative pool.
///
/// ```swift
/// let port = try AsyncPort.open(PortConfiguration(interface: "veth0"))
/// for await indication in port.received {   // a list at a time, zero copy
///     use(indication.list)
///     try port.returnList(indication.list)
/// }
/// ```
///
/// **Where the work runs.** The async port runs one thread of its own that
/// polls the stack below, so that sends complete and lists arrive whether or
/// not a task is waiting. A task that asks for the next list or completion
/// when none is ready polls the stack itself a few times before it suspends
/// (a suspension and a wake-up cost more than a poll when traffic flows);
/// while tasks do, the thread stays out of their way. Handlers of the stack
/// run on whichever of the two polled. Callers never call `poll`. The contract below is the port's (see `XDPPort`): every list
/// sent completes exactly once, with a status, in the order of the `send`
/// and `sendAndForget` calls that reached the port (calls made one after the
/// other from one task keep their order; calls from concurrent tasks reach
/// the port in whatever order the tasks run).
///
/// **Back-pressure.** At most `receiveBuffer` lists wait for the consumer
/// (a pass may add the few it had already taken); once that many wait, the
/// async port holds receive below (`PacketPort.holdReceive`), so further
/// frames wait in the kernel's RX ring and, past it, are dropped by the
/// kernel and counted (`rxRingFull`), never buffered in memory. Receive
/// resumes when the consumer has taken half of them.
///
/// **Cancellation.** A consuming task that is cancelled while it waits gets
/// `nil` (its loop ends). Lists that were waiting stay for the next consumer,
/// and `close()` returns every list still waiting; nothing leaks.
///
/// **Closing.** Call `close()` (awaited) when done. An async port let go
/// of without it closes itself from its thread, without waiting. When the
/// stack closes under it (its interface deleted: the port closes itself),
/// the sequences end as they do at `close()`, and `isClosed` turns true.
public final class AsyncPort: Sendable {
    /// The stack below: its synchronous methods (`allocateList`,
    /// `statistics`, `poolStatus`, ...) work as usual. Do not call its
    /// `poll`, `close` or `pause` (the async port's thread polls it; use the
    /// async port's own `close()` and `pause()`).
    public let port: any PacketPort
    /// Received lists, oldest first. Return each with `returnList` (now or
    /// later, from any task).
    public let received: ReceivedLists
    /// Lists sent with `sendAndForget`, as they complete, in order.
    public let completions: CompletedSends

    private let state: AsyncPortState

    /// Opens a port on one interface queue, with a thread that polls it.
    /// `configuration.ownThread` is ignored: the async port's thread is the
    /// one that polls.
    public static func open(
        _ configuration: PortConfiguration, umem: UMEM? = nil, receiveBuffer: Int = 16
    ) throws(AFXDPError) -> AsyncPort {
        var configuration = configuration
        configuration.ownThread = false
        let config = configuration
        return try open(receiveBuffer: receiveBuffer) { handlers throws(AFXDPError) in
            try XDPPort.open(config, umem: umem, onReceive: handlers.onReceive, onSendComplete: handlers.onSendComplete)
        }
    }

    /// Opens any stack (`XDPPort.below(...)`, `FilterDriver.below(...)`, a
    /// driver of the caller's own) under an async face. The lower layers
    /// must not run threads of their own (`ownThread` off): the async
    /// port's thread polls the stack.
    public static func open(receiveBuffer: Int = 16, _ opener: LowerOpener) throws(AFXDPError) -> AsyncPort {
        guard receiveBuffer >= 1 else { throw .invalidConfiguration("receiveBuffer must be at least 1 list (was \(receiveBuffer))") }
        let state = AsyncPortState(receiveBuffer: receiveBuffer)
        let handlers = PortHandlers(
            onReceive: { [state] indication in state.received(indication) },
            onSendComplete: { [state] batch in state.completed(batch) })
        let port = try opener(handlers)
        state.attach(port)
        do {
            try Threads.start(detached: true) { [state, port] in state.runPoller(port) }
        } catch {
            port.close()
            throw .system(operation: "starting the async port's thread", errno: error.errno)
        }
        return AsyncPort(port: port, state: state)
    }

    private init(port: any PacketPort, state: AsyncPortState) {
        self.port = port
        self.state = state
        received = ReceivedLists(state: state)
        completions = CompletedSends(state: state)
    }

    deinit {
        // Closed from the poller's thread, without waiting here.
        state.requestCommand(.close(.seconds(1)), waiter: nil)
    }

    /// Takes a list of `packetCount` empty frames from a send pool below;
    /// nil when none is free right now (completions bring lists back).
    public func allocateList(packetCount: Int) throws(AFXDPError) -> PacketList? {
        try port.allocateList(packetCount: packetCount)
    }

    /// Sends a list and waits for its completion: the status it completed
    /// with (`.success`, `.paused`, `.closing`, `.linkDown`). The list is
    /// the caller's again when this returns: send it again or return it.
    /// Throws, and leaves the list the caller's, for what `send` refuses.
    /// The task waits; the thread does not.
    public func send(_ list: PacketList) async throws(AFXDPError) -> SendStatus {
        let result = await withUnsafeContinuation { (continuation: UnsafeContinuation<Result<SendStatus, AFXDPError>, Never>) in
            guard state.awaitCompletion(of: list, continuation) else { return }
            do throws(AFXDPError) {
                try port.send(list)
            } catch {
                // Refused: the list never went in, so no completion will come.
                state.cancelAwait(of: list)?.resume(returning: .failure(error))
            }
        }
        return try result.get()
    }

    /// Sends a list without waiting: it completes on `completions`, in order
    /// with every other list sent so. Throws only for what `send` refuses.
    public func sendAndForget(_ list: PacketList) throws(AFXDPError) {
        try port.send(list)
    }

    /// Gives back a list that was received, completed or allocated.
    public func returnList(_ list: PacketList) throws(AFXDPError) {
        try port.returnList(list)
    }

    /// Pauses sending (see `XDPPort.pause`): returns once nothing is in
    /// flight or `timeout` has passed. Suspends the task; the wait happens
    /// on the async port's own thread.
    public func pause(timeout: Duration = .seconds(2)) async {
        await withUnsafeContinuation { continuation in state.requestCommand(.pause(timeout), waiter: continuation) }
    }

    /// Resumes sending after `pause`.
    public func restart() { port.restart() }

    /// Closes the stack: every send completes (awaited sends return their
    /// status, forgotten ones arrive on `completions`), every list still
    /// waiting in `received` is returned, both sequences end, and the
    /// async port's thread ends. Idempotent.
    public func close(timeout: Duration = .seconds(1)) async {
        await withUnsafeContinuation { continuation in state.requestCommand(.close(timeout), waiter: continuation) }
    }

    /// Whether the async port has closed (its sequences have ended).
    public var isClosed: Bool { state.isClosed }

    // MARK: The sequences

    /// Received lists, as an `AsyncSequence`. Several tasks may iterate it:
    /// each list goes to one of them.
    public struct ReceivedLists: AsyncSequence, Sendable {
        /// A received list, with the layer to return it to.
        public typealias Element = ReceiveIndication
        let state: AsyncPortState

        /// An iterator over the received lists, for one consuming task.
        public func makeAsyncIterator() -> Iterator { Iterator(state: state) }

        /// Takes received lists for one task; with several tasks iterating,
        /// each list goes to one of them.
        public struct Iterator: AsyncIteratorProtocol {
            let state: AsyncPortState
            /// Where this iterator's task waits (made once per iterator, not per list).
            let token = WaiterToken()
            init(state: AsyncPortState) { self.state = state }
            /// The next received list; nil once the port has closed or the
            /// waiting task is cancelled.
            public mutating func next() async -> ReceiveIndication? { await state.nextReceived(token) }
            /// The next received list, as `next()`.
            public mutating func next(isolation actor: isolated (any Actor)?) async -> ReceiveIndication? {
                await state.nextReceived(token)
            }
        }
    }

    /// Lists sent with `sendAndForget`, as they complete, oldest first. Each
    /// is the caller's again: send it again or return it.
    public struct CompletedSends: AsyncSequence, Sendable {
        /// A list whose send completed, with its status.
        public typealias Element = CompletedSend
        let state: AsyncPortState

        /// An iterator over the completed sends, for one consuming task.
        public func makeAsyncIterator() -> Iterator { Iterator(state: state) }

        /// Takes completed sends for one task; with several tasks iterating,
        /// each completion goes to one of them.
        public struct Iterator: AsyncIteratorProtocol {
            let state: AsyncPortState
            let token = WaiterToken()
            init(state: AsyncPortState) { self.state = state }
            /// The next completed send; nil once the port has closed or the
            /// waiting task is cancelled.
            public mutating func next() async -> CompletedSend? { await state.nextCompleted(token) }
            /// The next completed send, as `next()`.
            public mutating func next(isolation actor: isolated (any Actor)?) async -> CompletedSend? {
                await state.nextCompleted(token)
            }
        }
    }
}

/// A list whose send completed, and how.
public struct CompletedSend: Sendable {
    /// The list sent: the caller's again, to send again or return.
    public let list: PacketList
    /// How the send ended (`.success`, `.paused`, `.closing`, `.linkDown`).
    public let status: SendStatus
    /// How many of its packets the kernel took, counted from the first.
    public let sentPacketCount: Int
}

/// What the async port's sequences, waiting tasks and thread share: one
/// mutex over all of it. Handlers (on the poller's thread) fill it; tasks
/// take from it.
final class AsyncPortState: Sendable {
    enum Command {
        case pause(Duration)
        case close(Duration)
    }

    struct Inner {
        var receivedLists = FIFO<ReceiveIndication>()
        var receiveWaiters = FIFO<UnsafeContinuation<ReceiveIndication?, Never>>()
        var holding = false
        var completedSends = FIFO<CompletedSend>()
        var completionWaiters = FIFO<UnsafeContinuation<CompletedSend?, Never>>()
        /// Sends awaited by `send`, by list.
        var awaited: [PacketList: UnsafeContinuation<Result<SendStatus, AFXDPError>, Never>] = [:]
        var commands: [(Command, UnsafeContinuation<Void, Never>?)] = []
        var closed = false
        /// The stack, to hold and resume its receive; nil once closed.
        var port: (any PacketPort)?
    }

    let receiveBuffer: Int
    private let inner = Locked(Inner())
    /// When a task last polled the stack itself (monotonic ns): the thread
    /// polls only when no task has for a while.
    private let lastTaskPoll = ManagedAtomic<UInt64>(0)
    /// Polls a task makes before it suspends.
    static let pollsBeforeSuspending = 16
    /// How long after a task's poll the thread leaves the stack to the tasks.
    static let taskPollingGrace: UInt64 = 200_000

    init(receiveBuffer: Int) {
        self.receiveBuffer = receiveBuffer
        inner.withLock {
            $0.awaited.reserveCapacity(256)
            $0.receivedLists.reserve(receiveBuffer + 8)
            $0.commands.reserveCapacity(4)
        }
    }

    func attach(_ port: any PacketPort) { inner.withLock { $0.port = port } }

    var isClosed: Bool { inner.withLock { $0.closed } }

    // MARK: From the poller's thread (handlers)

    /// The receive handler: to a waiting task, else into the buffer; a full
    /// buffer holds receive below.
    func received(_ indication: ReceiveIndication) {
        let hold: (any PacketPort)? = inner.withLock { inner in
            if let waiter = inner.receiveWaiters.popFirst() {
                waiter.resume(returning: indication)
                return nil
            }
            inner.receivedLists.append(indication)
            guard !inner.holding, inner.receivedLists.count >= receiveBuffer else { return nil }
            inner.holding = true
            return inner.port
        }
        hold?.holdReceive(true)
    }

    /// The completion handler: each list to the task awaiting it, else onto
    /// `completions`.
    func completed(_ batch: SendCompletions) {
        inner.withLock { inner in
            for list in batch {
                let status = (try? list.status) ?? .closing
                if let waiter = inner.awaited.removeValue(forKey: list) {
                    waiter.resume(returning: .success(status))
                    continue
                }
                let completed = CompletedSend(list: list, status: status, sentPacketCount: (try? list.sentPacketCount) ?? 0)
                if let waiter = inner.completionWaiters.popFirst() {
                    waiter.resume(returning: completed)
                } else {
                    inner.completedSends.append(completed)
                }
            }
        }
    }

    /// The thread: polls until a close has finished, runs the commands tasks
    /// asked for, and sleeps a little when nothing moves.
    func runPoller(_ port: any PacketPort) {
        var idlePasses = 0
        while true {
            let commands = inner.withLock { inner -> [(Command, UnsafeContinuation<Void, Never>?)] in
                guard !inner.commands.isEmpty else { return [] }
                let taken = inner.commands
                inner.commands.removeAll(keepingCapacity: true)
                return taken
            }
            for (command, waiter) in commands {
                switch command {
                case .pause(let timeout):
                    port.pause(timeout: timeout)
                    waiter?.resume()
                case .close(let timeout):
                    port.close(timeout: timeout)
                    finish(port)
                    waiter?.resume()
                    return
                }
            }
            if monotonicNanoseconds() &- lastTaskPoll.load(ordering: .relaxed) < Self.taskPollingGrace {
                // Tasks are driving the stack: stay out of their way.
                usleep(50)
                continue
            }
            if port.poll() {
                idlePasses = 0
            } else {
                // The stack closed under the async port (its device went away,
                // or someone closed `port` directly): end the sequences too,
                // so that no task waits for lists that cannot come.
                if port.currentState == .closed {
                    port.close()
                    finish(port)
                    return
                }
                idlePasses += 1
                // A few passes spinning, then short sleeps: an idle port costs
                // little, and wakes within some 50 µs.
                if idlePasses > 64 { usleep(idlePasses > 4096 ? 50 : 10) }
            }
        }
    }

    /// After the stack closed: lists still waiting go back, awaited sends
    /// that never completed (none should) get `.closing`, waiting tasks get
    /// nil, the sequences end, and tasks that asked for a pause or close
    /// meanwhile return.
    private func finish(_ port: any PacketPort) {
        let (lists, receiveWaiters, completionWaiters, awaited, commands) = inner.withLock { inner in
            inner.closed = true
            var lists: [PacketList] = []
            while let indication = inner.receivedLists.popFirst() { lists.append(indication.list) }
            var receiveWaiters: [UnsafeContinuation<ReceiveIndication?, Never>] = []
            while let waiter = inner.receiveWaiters.popFirst() { receiveWaiters.append(waiter) }
            var completionWaiters: [UnsafeContinuation<CompletedSend?, Never>] = []
            while let waiter = inner.completionWaiters.popFirst() { completionWaiters.append(waiter) }
            let awaited = Array(inner.awaited.values)
            inner.awaited.removeAll()
            let commands = inner.commands
            inner.commands.removeAll()
            inner.port = nil
            return (lists, receiveWaiters, completionWaiters, awaited, commands)
        }
        for list in lists { try? port.returnList(list) }
        for waiter in receiveWaiters { waiter.resume(returning: nil) }
        for waiter in completionWaiters { waiter.resume(returning: nil) }
        for waiter in awaited { waiter.resume(returning: .success(.closing)) }
        for (_, waiter) in commands { waiter?.resume() }
    }

    // MARK: From tasks

    func requestCommand(_ command: Command, waiter: UnsafeContinuation<Void, Never>?) {
        let finished = inner.withLock { inner -> Bool in
            if inner.closed { return true }
            inner.commands.append((command, waiter))
            return false
        }
        if finished { waiter?.resume() }
    }

    /// Registers the task awaiting `list`'s completion; false (the task
    /// resumed with `.portClosed`) once the async port has closed.
    func awaitCompletion(of list: PacketList, _ continuation: UnsafeContinuation<Result<SendStatus, AFXDPError>, Never>) -> Bool {
        let refused = inner.withLock { inner -> Bool in
            if inner.closed { return true }
            inner.awaited[list] = continuation
            return false
        }
        if refused { continuation.resume(returning: .failure(.portClosed)) }
        return !refused
    }

    func cancelAwait(of list: PacketList) -> UnsafeContinuation<Result<SendStatus, AFXDPError>, Never>? {
        inner.withLock { $0.awaited.removeValue(forKey: list) }
    }

    /// The stack, while open, for a task to poll.
    private var openPort: (any PacketPort)? { inner.withLock { $0.closed ? nil : $0.port } }

    /// A waiting list, if any (resuming receive below when the buffer is half drained).
    private func takeReceivedNow() -> ReceiveIndication? {
        let (ready, resume): (ReceiveIndication?, (any PacketPort)?) = inner.withLock { inner in takeReceived(&inner) }
        resume?.holdReceive(false)
        return ready
    }

    func nextReceived(_ token: WaiterToken) async -> ReceiveIndication? {
        // Fast path: a list is waiting (no cancellation handler needed).
        if let ready = takeReceivedNow() { return ready }
        // Drive the stack from this task before suspending.
        if !Task.isCancelled, let port = openPort {
            for _ in 0..<Self.pollsBeforeSuspending {
                lastTaskPoll.store(monotonicNanoseconds(), ordering: .relaxed)
                port.poll()
                if let ready = takeReceivedNow() { return ready }
            }
        }
        return await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<ReceiveIndication?, Never>) in
                let (ready, resume): (ReceiveIndication??, (any PacketPort)?) = inner.withLock { inner in
                    let (indication, resume) = takeReceived(&inner)
                    if let indication { return (.some(indication), resume) }
                    if inner.closed || Task.isCancelled { return (.some(nil), nil) }
                    token.index = inner.receiveWaiters.append(continuation)
                    return (nil, nil)
                }
                resume?.holdReceive(false)
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            let waiter = inner.withLock { inner in inner.receiveWaiters.remove(at: token.index) }
            waiter?.resume(returning: nil)
        }
    }

    /// The oldest waiting list, and the stack to resume receive on when the
    /// consumer has taken the buffer down to half.
    private func takeReceived(_ inner: inout Inner) -> (ReceiveIndication?, (any PacketPort)?) {
        guard let indication = inner.receivedLists.popFirst() else { return (nil, nil) }
        if inner.holding, inner.receivedLists.count <= receiveBuffer / 2 {
            inner.holding = false
            return (indication, inner.port)
        }
        return (indication, nil)
    }

    func nextCompleted(_ token: WaiterToken) async -> CompletedSend? {
        if let ready = inner.withLock({ $0.completedSends.popFirst() }) { return ready }
        if !Task.isCancelled, let port = openPort {
            for _ in 0..<Self.pollsBeforeSuspending {
                lastTaskPoll.store(monotonicNanoseconds(), ordering: .relaxed)
                port.poll()
                if let ready = inner.withLock({ $0.completedSends.popFirst() }) { return ready }
            }
        }
        return await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<CompletedSend?, Never>) in
                let ready: CompletedSend?? = inner.withLock { inner in
                    if let completed = inner.completedSends.popFirst() { return .some(completed) }
                    if inner.closed || Task.isCancelled { return .some(nil) }
                    token.index = inner.completionWaiters.append(continuation)
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            let waiter = inner.withLock { inner in inner.completionWaiters.remove(at: token.index) }
            waiter?.resume(returning: nil)
        }
    }
}

/// Where a waiting task's continuation sits in its queue, so a cancellation
/// can take exactly that one out. Written and read under the state's mutex.
final class WaiterToken: @unchecked Sendable {
    var index: UInt64 = .max
}

/// A first-in first-out queue that keeps its storage: appends and pops do
/// not allocate once it has grown to its working size. Each element gets a
/// sequence number, by which one can be taken out early (a cancelled waiter).
struct FIFO<Element> {
    private var items: [Element?] = []
    private var head = 0
    /// The sequence number of `items[head]`.
    private var firstNumber: UInt64 = 0

    var count: Int { items.count - head }

    mutating func reserve(_ capacity: Int) { items.reserveCapacity(capacity) }

    /// Appends and returns the element's sequence number.
    @discardableResult
    mutating func append(_ element: Element) -> UInt64 {
        if head > 0, head == items.count {
            // Empty: start over at the front, keeping the storage.
            firstNumber &+= UInt64(head)
            items.removeAll(keepingCapacity: true)
            head = 0
        }
        items.append(element)
        return firstNumber &+ UInt64(items.count - 1)
    }

    mutating func popFirst() -> Element? {
        while head < items.count {
            let element = items[head]
            items[head] = nil
            head += 1
            if head >= 64, head * 2 >= items.count {
                // Never empty for long: move the rest to the front, in place.
                firstNumber &+= UInt64(head)
                items.removeSubrange(0..<head)
                head = 0
            }
            if let element { return element }
        }
        return nil
    }

    /// Takes out the element with sequence number `number`, if still there.
    mutating func remove(at number: UInt64) -> Element? {
        guard number >= firstNumber &+ UInt64(head), number < firstNumber &+ UInt64(items.count) else { return nil }
        let index = Int(number &- firstNumber)
        let element = items[index]
        items[index] = nil
        return element
    }
}
