// The hot paths: the generator, the receive checker, the rx-drop counter and
// the l2fwd forwarder, and the loop each end's thread runs.
//
// Ownership: every state struct below is owned by one thread, the one that
// polls its port (the engine calls a port's handlers on the thread running
// its `poll` or `send`). The structs live in raw memory reached through
// pointers rather than in class properties: pointer accesses carry no
// dynamic exclusivity checks, and handlers may run nested inside `send`
// (a completion delivered during a send), so no access is held across a
// call into the engine. What other threads need to read is published in
// `FlowCounters`, relaxed atomics written by their one owner.
//
// Nothing here allocates per packet or per list.

import AFXDPSystem
import AFXDP
import AFXDPTestbed
import Histogram
import Glibc
import Synchronization

/// A pointer to state owned by one thread, handed to that thread's handlers.
struct Owned<State>: @unchecked Sendable {
    // @unchecked: only the owning thread dereferences it while traffic runs;
    // the main thread reads it after the traffic threads are joined.
    let pointer: UnsafeMutablePointer<State>

    /// Allocates on a cache line of its own.
    static func make(_ state: State) -> Owned {
        let bytes = (MemoryLayout<State>.stride + 127) & ~63
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        let pointer = raw.bindMemory(to: State.self, capacity: 1)
        pointer.initialize(to: state)
        return Owned(pointer: pointer)
    }

    func free() {
        pointer.deinitialize(count: 1)
        UnsafeMutableRawPointer(pointer).deallocate()
    }
}

/// 64 bytes that keep the counters of different writers off one cache line.
typealias CacheLinePad = InlineArray<8, UInt64>

/// What one flow's threads publish for the others: the per-second lines and
/// the send window read them. Each group has one writer, which stores
/// totals (a plain store, not a locked add).
final class FlowCounters: Sendable {
    private let pad0 = CacheLinePad(repeating: 0)
    // Written by the sender's thread.
    let sentPackets = Atomic<Int>(0)
    let sentBytes = Atomic<Int>(0)
    private let pad1 = CacheLinePad(repeating: 0)
    // Written by the receiver's thread.
    let receivedPackets = Atomic<Int>(0)
    let receivedBytes = Atomic<Int>(0)
    /// The next sequence number the receiver expects: everything below it
    /// has arrived or been counted lost.
    let progress = Atomic<UInt64>(0)
    let gaps = Atomic<Int>(0)
    private let pad2 = CacheLinePad(repeating: 0)
    // Written by the forwarder's thread (l2fwd).
    let forwardedPackets = Atomic<Int>(0)
    private let pad3 = CacheLinePad(repeating: 0)

    init() {
        _ = (pad0, pad1, pad2, pad3)
    }
}

// MARK: - Generator

struct SenderState {
    /// Set right after the port (or the stack on it) opens, with the lists;
    /// before any traffic. Unretained: the session holds it for longer than
    /// any traffic.
    unowned(unsafe) var port: (any PacketPort)?
    let counters: FlowCounters
    /// With a thread of its own per flow (tx-only over a multi-queue port),
    /// completions may be delivered on another flow's thread: they wait here
    /// for this flow's thread, which takes them at its next `generate`.
    var inbox: Locked<Inbox>?
    /// Lists that are ours (completed, or never sent): a stack.
    let lists: UnsafeMutablePointer<PacketList>
    let capacity: Int
    var freeLists = 0
    var totalLists = 0
    let frameLength: Int
    var nextSequence: UInt64 = 0
    var sentPackets = 0
    var failedPackets = 0
    var sendErrors = 0
    var firstError: String?
    /// 0: unlimited; else most frames in flight.
    let window: Int
    /// Sequence numbers below this count as settled for the window (lost
    /// frames never arrive; see `windowAdmits`).
    var windowBase: UInt64 = 0
    var stalledSince: UInt64 = 0
    var windowResets = 0
    /// --rate: nanoseconds between two packets of this flow (0: unpaced),
    /// when the pacing began, and packets it has let out since.
    let nanosecondsPerPacket: Double
    var pacingStart: UInt64 = 0
    var pacedPackets = 0
    /// Jumbo frames (multi-buffer): list entries per frame, and where each
    /// frame is written whole before its pieces go into its entries. 1 and
    /// nil otherwise.
    var entriesPerPacket = 1
    var scratch: UnsafeMutableRawPointer?
    /// --payload checked: every byte rewritten per send; header: sequence
    /// and timestamp only.
    let writesPayload: Bool

    init(counters: FlowCounters, capacity: Int, frameLength: Int, window: Int, packetsPerSecond: Double = 0, writesPayload: Bool = true) {
        self.counters = counters
        self.writesPayload = writesPayload
        self.capacity = capacity
        lists = .allocate(capacity: capacity)
        self.frameLength = frameLength
        self.window = window
        nanosecondsPerPacket = packetsPerSecond > 0 ? 1e9 / packetsPerSecond : 0
    }

    /// Gives the generator its port and its lists (already written with
    /// addresses, EtherType and length). Each list's context area says its
    /// flow (a multi-queue port's flow hash reads it; the lists stay this
    /// flow's for the whole run).
    mutating func attach(port: any PacketPort, flow: Int, lists initial: [PacketList]) throws {
        precondition(initial.count <= capacity && totalLists == 0)
        for list in initial { try list.contextArea.storeBytes(of: UInt64(flow), as: UInt64.self) }
        self.port = port
        lists.initialize(from: initial, count: initial.count)
        freeLists = initial.count
        totalLists = initial.count
    }

    /// Once the ports have closed every list is ours again: each goes home
    /// to its pool, so that the ports' frames are all home (soak checks it).
    /// While the ports are still referenced (`port` is unowned).
    func returnLists() {
        for index in 0..<freeLists { try? port?.returnList(lists[index]) }
    }

    func releaseStorage() {
        // The handles keep their pool alive: let go of them first.
        lists.deinitialize(count: totalLists)
        lists.deallocate()
        scratch?.deallocate()
    }

    /// Jumbo frames: from now on each frame spans `entries` list entries.
    mutating func useJumboFrames(entries: Int) {
        entriesPerPacket = entries
        scratch = .allocate(byteCount: frameLength, alignment: 8)
    }
}

enum Generator {
    /// The window reopens when the receiver has made no progress this long
    /// after every list has completed: frames were lost (they never arrive,
    /// and waiting would stall the flow for good) or the receiver stalled.
    static let reopenAfterNanoseconds: UInt64 = 100_000_000

    /// Sends up to `maximumLists` of the lists that are ours (as the window
    /// allows), each with fresh sequence numbers and one send timestamp.
    /// Returns how many lists it sent.
    @inline(__always) @discardableResult
    static func generate(_ state: UnsafeMutablePointer<SenderState>, maximumLists: Int) -> Int {
        guard let port = state.pointee.port else { return 0 }
        if let inbox = state.pointee.inbox { takeInbox(state, inbox) }
        let frameLength = state.pointee.frameLength
        var sent = 0
        while sent < maximumLists, state.pointee.freeLists > 0 {
            let list = state.pointee.lists[state.pointee.freeLists - 1]
            do {
                let packets = try list.packets
                // Frames, not entries (a jumbo frame spans several).
                let frames = packets.count / state.pointee.entriesPerPacket
                if state.pointee.window > 0, !windowAdmits(state, frames) { break }
                if state.pointee.nanosecondsPerPacket > 0, !paceAdmits(state, frames) { break }
                state.pointee.freeLists -= 1
                let timestamp = monotonicNanoseconds()
                var sequence = state.pointee.nextSequence
                if let scratch = state.pointee.scratch {
                    sequence = try rewriteJumbo(packets, scratch: scratch, frameLength: frameLength, sequence: sequence, timestamp: timestamp)
                } else if state.pointee.writesPayload {
                    try packets.forEach { packet throws(AFXDPError) in
                        TestFrame.rewrite(try packet.bytes.baseAddress!, length: frameLength, sequence: sequence, timestamp: timestamp)
                        sequence &+= 1
                    }
                } else {
                    try packets.forEach { packet throws(AFXDPError) in
                        TestFrame.stamp(try packet.bytes.baseAddress!, sequence: sequence, timestamp: timestamp)
                        sequence &+= 1
                    }
                }
                state.pointee.nextSequence = sequence
                // Runs no handler: completions come from this thread's poll.
                try port.send(list)
                sent += 1
            } catch {
                // The engine refuses only bad input: a bug here or there. Keep
                // the list and stop this flow's traffic.
                state.pointee.sendErrors += 1
                if state.pointee.firstError == nil { state.pointee.firstError = "\(error)" }
                state.pointee.lists[state.pointee.freeLists] = list
                state.pointee.freeLists += 1
                requestStop(StopReason.failure)
                break
            }
        }
        return sent
    }

    /// Jumbo frames: each frame written whole into `scratch`, then copied
    /// piece by piece into its run of entries (their lengths were set when
    /// the list was first filled). Returns the next sequence number.
    static func rewriteJumbo(
        _ packets: PacketList.Packets, scratch: UnsafeMutableRawPointer, frameLength: Int, sequence first: UInt64, timestamp: UInt64
    ) throws(AFXDPError) -> UInt64 {
        var sequence = first
        var offset = 0
        try packets.forEach { packet throws(AFXDPError) in
            if offset == 0 { TestFrame.rewrite(scratch, length: frameLength, sequence: sequence, timestamp: timestamp) }
            let piece = try packet.bytes
            piece.baseAddress!.copyMemory(from: scratch + offset, byteCount: piece.count)
            offset += piece.count
            if try !packet.continues {
                offset = 0
                sequence &+= 1
            }
        }
        return sequence
    }

    /// Jumbo frames: writes test frames into a list of whole runs of
    /// `entries` entries each, and sets each entry's length and mark.
    static func fillJumbo(
        _ list: PacketList, entries: Int, length: Int, scratch: UnsafeMutableRawPointer, source: MACAddress, destination: MACAddress
    ) throws(AFXDPError) {
        TestFrame.write(
            into: UnsafeMutableRawBufferPointer(start: scratch, count: length), length: length, sequence: 0, timestamp: 0,
            source: source, destination: destination)
        var index = 0
        var offset = 0
        try list.packets.forEach { packet throws(AFXDPError) in
            let count = min(length - offset, try packet.capacity)
            try packet.buffer.baseAddress!.copyMemory(from: scratch + offset, byteCount: count)
            let last = index % entries == entries - 1
            try packet.setLength(count, continues: !last)
            offset = last ? 0 : offset + count
            index += 1
        }
    }

    /// How far a paced flow may fall behind before it gives up the credit:
    /// 2 ms of its rate, at least 8 lists. An end's pass (its sends, then
    /// polls that drain what arrived) can take a millisecond when the
    /// machine is busy; less slack would make the pacer itself the limit. A
    /// flow catching up sends at most `listsPerPass` lists per pass, each
    /// kick taking a bounded batch, so the slack is not one burst.
    static let pacingSlackNanoseconds = 2_000_000.0
    static let pacingSlackLists = 8

    /// Whether the next list of `count` packets is due at the flow's rate.
    private static func paceAdmits(_ state: UnsafeMutablePointer<SenderState>, _ count: Int) -> Bool {
        let now = monotonicNanoseconds()
        if state.pointee.pacingStart == 0 { state.pointee.pacingStart = now }
        let due = Int(Double(now &- state.pointee.pacingStart) / state.pointee.nanosecondsPerPacket)
        let slack = max(pacingSlackLists * count, Int(pacingSlackNanoseconds / state.pointee.nanosecondsPerPacket))
        if due - state.pointee.pacedPackets > slack {
            // Behind (the thread was busy or descheduled): forfeit the rest.
            state.pointee.pacedPackets = due - slack
        }
        guard state.pointee.pacedPackets < due else { return false }
        state.pointee.pacedPackets += count
        return true
    }

    private static func windowAdmits(_ state: UnsafeMutablePointer<SenderState>, _ count: Int) -> Bool {
        let settled = max(state.pointee.counters.progress.load(ordering: .relaxed), state.pointee.windowBase)
        let inFlight = Int(truncatingIfNeeded: state.pointee.nextSequence &- settled)
        if inFlight + count <= state.pointee.window {
            state.pointee.stalledSince = 0
            return true
        }
        // Every list has completed, yet the receiver has not seen them all.
        // Wait a while for the last ones, then give up on them.
        guard state.pointee.freeLists == state.pointee.totalLists else { return false }
        let now = monotonicNanoseconds()
        if state.pointee.stalledSince == 0 {
            state.pointee.stalledSince = now
        } else if now &- state.pointee.stalledSince > reopenAfterNanoseconds {
            state.pointee.windowBase = state.pointee.nextSequence
            state.pointee.windowResets += 1
            state.pointee.stalledSince = 0
            return true
        }
        return false
    }

    /// The flow a list of this run belongs to (see `attach`).
    @inline(__always)
    static func flow(of list: PacketList) -> Int {
        Int(truncatingIfNeeded: ((try? list.contextArea)?.load(as: UInt64.self)) ?? 0)
    }

    /// Completions another thread left for this flow: the lists are ours again.
    static func takeInbox(_ state: UnsafeMutablePointer<SenderState>, _ inbox: Locked<Inbox>) {
        let (sent, failed) = inbox.withLock { box -> (Int, Int) in
            for list in box.lists {
                state.pointee.lists[state.pointee.freeLists] = list
                state.pointee.freeLists += 1
            }
            box.lists.removeAll(keepingCapacity: true)
            defer { box.sent = 0; box.failed = 0 }
            return (box.sent, box.failed)
        }
        guard sent + failed > 0 else { return }
        state.pointee.sentPackets += sent
        state.pointee.failedPackets += failed
        publishSent(state)
    }

    /// A completed list is the flow's again: onto its stack. Returns its
    /// packets (frames, not the entries a jumbo frame spans).
    @inline(__always)
    static func reclaim(_ state: UnsafeMutablePointer<SenderState>, _ list: PacketList) -> Int {
        // The list is ours (just completed): this cannot throw.
        let count = ((try? list.count) ?? 0) / state.pointee.entriesPerPacket
        state.pointee.lists[state.pointee.freeLists] = list
        state.pointee.freeLists += 1
        return count
    }

    /// The packets sent so far, where the main thread samples them.
    @inline(__always)
    static func publishSent(_ state: UnsafeMutablePointer<SenderState>) {
        let total = state.pointee.sentPackets
        state.pointee.counters.sentPackets.store(total, ordering: .relaxed)
        state.pointee.counters.sentBytes.store(total &* state.pointee.frameLength, ordering: .relaxed)
    }

    /// A multi-queue end's completion handler: each list back to its flow's generator.
    @inline(__always)
    static func completed(_ states: UnsafePointer<UnsafeMutablePointer<SenderState>>, flows: Int, _ batch: SendCompletions) {
        for list in batch {
            let state = states[min(flow(of: list), flows - 1)]
            if let inbox = state.pointee.inbox {
                let count = ((try? list.count) ?? 0) / state.pointee.entriesPerPacket
                let success = (try? list.status) == .success
                inbox.withLock { box in
                    box.lists.append(list)
                    if success { box.sent += count } else { box.failed += count }
                }
                continue
            }
            let succeeded = (try? list.status) == .success
            let count = reclaim(state, list)
            if succeeded { state.pointee.sentPackets += count } else { state.pointee.failedPackets += count }
        }
        for index in 0..<flows where states[index].pointee.inbox == nil { publishSent(states[index]) }
    }

    /// The completion handler: the lists are ours again.
    @inline(__always)
    static func completed(_ state: UnsafeMutablePointer<SenderState>, _ batch: SendCompletions) {
        var sent = 0
        var failed = 0
        for list in batch {
            let succeeded = (try? list.status) == .success
            let count = reclaim(state, list)
            if succeeded { sent += count } else { failed += count }
        }
        state.pointee.sentPackets += sent
        state.pointee.failedPackets += failed
        publishSent(state)
    }
}

/// Completed lists waiting for their flow's thread.
struct Inbox {
    var lists: [PacketList]
    var sent = 0
    var failed = 0
}

// MARK: - Receivers

struct ReceiverState {
    let counters: FlowCounters
    /// Every frame checked: in order, gaps, late, corrupted, foreign.
    var flow: FlowCheck
    var returnErrors = 0
    var firstError: AFXDPError?
    /// Send-to-receive time in nanoseconds. Equal values come in runs (a
    /// list shares one send timestamp and one receive time), recorded as one.
    var latency = Histogram<UInt64>(highestTrackableValue: 10_000_000_000, numberOfSignificantValueDigits: .three)
    var runValue: UInt64 = 0
    var runCount: UInt64 = 0
    /// Jumbo frames: where a frame's run of entries is joined to be checked
    /// whole (a copy the engine does not make; the benchmark's own).
    var scratch: UnsafeMutableRawPointer?
    var scratchCapacity = 0

    init(counters: FlowCounters, checksPayload: Bool = true) {
        self.counters = counters
        flow = FlowCheck(checksPayload: checksPayload)
    }

    mutating func useJumboFrames(maximumLength: Int) {
        scratch = .allocate(byteCount: maximumLength, alignment: 8)
        scratchCapacity = maximumLength
    }

    func releaseStorage() { scratch?.deallocate() }

    /// Records the pending run; call once traffic has stopped.
    mutating func flushLatency() {
        if runCount > 0 { latency.record(runValue, count: runCount) }
        runCount = 0
    }
}

enum Receiver {
    /// Checks every frame of a received list, then returns the list.
    @inline(__always)
    static func check(_ state: UnsafeMutablePointer<ReceiverState>, _ indication: ReceiveIndication) {
        let list = indication.list
        let now = monotonicNanoseconds()
        var flow = state.pointee.flow
        var runValue = state.pointee.runValue
        var runCount = state.pointee.runCount
        // An indicated list is ours until returned: the accessors cannot
        // throw here; if one did, the engine broke its contract: stop.
        let scratch = state.pointee.scratch, capacity = state.pointee.scratchCapacity
        var joined = 0
        do {
            try list.packets.forEach { packet throws(AFXDPError) in
                var frame = UnsafeRawBufferPointer(try packet.bytes)
                if let scratch {
                    // Jumbo: join the run, then check the frame whole.
                    let count = max(0, min(frame.count, capacity - joined))
                    (scratch + joined).copyMemory(from: frame.baseAddress!, byteCount: count)
                    joined += frame.count
                    if try packet.continues { return }
                    frame = UnsafeRawBufferPointer(start: scratch, count: min(joined, capacity))
                    joined = 0
                }
                guard let timestamp = flow.check(frame) else { return }
                let latency = now > timestamp ? now &- timestamp : 0
                if latency == runValue {
                    runCount &+= 1
                } else {
                    if runCount > 0 { state.pointee.latency.record(runValue, count: runCount) }
                    runValue = latency
                    runCount = 1
                }
            }
        } catch {
            state.pointee.returnErrors += 1
            if state.pointee.firstError == nil { state.pointee.firstError = error }
            requestStop(StopReason.failure)
        }
        state.pointee.flow = flow
        state.pointee.runValue = runValue
        state.pointee.runCount = runCount
        publish(state)
        giveBack(state, indication)
    }

    /// rx-drop: counts the list and returns it without reading a byte. Bytes
    /// are counted as packets times the frame length sent (the XDP program
    /// lets only test frames through).
    @inline(__always)
    static func drop(_ state: UnsafeMutablePointer<ReceiverState>, _ indication: ReceiveIndication, frameLength: Int) {
        var count = (try? indication.list.count) ?? 0
        if state.pointee.scratch != nil {
            // Jumbo: frames, not the entries they span.
            try? indication.list.packets.forEach { packet throws(AFXDPError) in if try packet.continues { count -= 1 } }
        }
        state.pointee.flow.packets &+= count
        state.pointee.flow.bytes &+= count &* frameLength
        publish(state)
        giveBack(state, indication)
    }

    @inline(__always)
    private static func publish(_ state: UnsafeMutablePointer<ReceiverState>) {
        let counters = state.pointee.counters
        counters.receivedPackets.store(state.pointee.flow.packets, ordering: .relaxed)
        counters.receivedBytes.store(state.pointee.flow.bytes, ordering: .relaxed)
        counters.progress.store(state.pointee.flow.expected, ordering: .relaxed)
        counters.gaps.store(state.pointee.flow.gaps, ordering: .relaxed)
    }

    @inline(__always)
    private static func giveBack(_ state: UnsafeMutablePointer<ReceiverState>, _ indication: ReceiveIndication) {
        do {
            try indication.port.returnList(indication.list)
        } catch {
            state.pointee.returnErrors += 1
            if state.pointee.firstError == nil { state.pointee.firstError = error }
            requestStop(StopReason.failure)
        }
    }
}

// MARK: - Forwarder (l2fwd)

struct ForwarderState {
    let counters: FlowCounters
    /// Set right after the port (or stack) opens, before any traffic.
    unowned(unsafe) var port: (any PacketPort)?
    var forwardedPackets = 0
    var failedPackets = 0
    var sendErrors = 0
    var returnErrors = 0
    var firstError: AFXDPError?

    init(counters: FlowCounters) { self.counters = counters }
}

enum Forwarder {
    /// Swaps the MAC addresses of every frame in place and sends the same
    /// list back out of the port it came in on.
    @inline(__always)
    static func forward(_ state: UnsafeMutablePointer<ForwarderState>, _ indication: ReceiveIndication) {
        try? indication.list.packets.forEach { packet in
            guard let bytes = try? packet.bytes, bytes.count >= 12 else { return }
            let base = bytes.baseAddress!
            let destination = (base.loadUnaligned(as: UInt32.self), base.loadUnaligned(fromByteOffset: 4, as: UInt16.self))
            let source = (base.loadUnaligned(fromByteOffset: 6, as: UInt32.self), base.loadUnaligned(fromByteOffset: 10, as: UInt16.self))
            base.storeBytes(of: source.0, as: UInt32.self)
            base.storeBytes(of: source.1, toByteOffset: 4, as: UInt16.self)
            base.storeBytes(of: destination.0, toByteOffset: 6, as: UInt32.self)
            base.storeBytes(of: destination.1, toByteOffset: 10, as: UInt16.self)
        }
        do {
            try indication.port.send(indication.list)
        } catch {
            state.pointee.sendErrors += 1
            if state.pointee.firstError == nil { state.pointee.firstError = error }
            try? indication.port.returnList(indication.list)
            requestStop(StopReason.failure)
        }
    }

    /// The forwarded lists are done: give them back to the receive side.
    @inline(__always)
    static func completed(_ state: UnsafeMutablePointer<ForwarderState>, _ batch: SendCompletions) {
        guard let port = state.pointee.port else { return }
        for list in batch {
            let count = (try? list.count) ?? 0
            if (try? list.status) == .success {
                state.pointee.forwardedPackets += count
            } else {
                state.pointee.failedPackets += count
            }
            do {
                try port.returnList(list)
            } catch {
                state.pointee.returnErrors += 1
                if state.pointee.firstError == nil { state.pointee.firstError = error }
                requestStop(StopReason.failure)
            }
        }
        state.pointee.counters.forwardedPackets.store(state.pointee.forwardedPackets, ordering: .relaxed)
    }
}

// MARK: - Relay (forward --relay bare: F without a driver)

/// One direction's relay through F: the lists one of F's ports receives are
/// sent on its other port, from the frames they arrived in (both ports are on
/// one UMEM), and once sent they go back to the receiving port's fill ring.
struct RelayState {
    let counters: FlowCounters
    /// The port the relay sends on. Set right after both of F's ports open,
    /// before any traffic; the session holds the ports for longer.
    var out: Unmanaged<XDPPort>?
    var forwardedPackets = 0
    var failedPackets = 0
    var sendErrors = 0
    var returnErrors = 0
    var firstError: AFXDPError?

    init(counters: FlowCounters) { self.counters = counters }
}

enum Relay {
    /// The receiving port's handler: the list goes out on the other port as it is.
    @inline(__always)
    static func receive(_ state: UnsafeMutablePointer<RelayState>, _ indication: ReceiveIndication) {
        guard let out = state.pointee.out else {
            try? indication.port.returnList(indication.list)
            return
        }
        do {
            try out._withUnsafeGuaranteedRef { try $0.send(indication.list) }
        } catch {
            // Refused only once the other port closes (the run is ending).
            state.pointee.sendErrors += 1
            if state.pointee.firstError == nil, let error = error as? AFXDPError, error != .portClosed { state.pointee.firstError = error }
            try? indication.port.returnList(indication.list)
        }
    }

    /// The sending port's completion handler: the lists were received on the
    /// other port; returning them sends their frames home to its fill ring.
    @inline(__always)
    static func completed(_ state: UnsafeMutablePointer<RelayState>, _ batch: SendCompletions) {
        for list in batch {
            let count = (try? list.count) ?? 0
            if (try? list.status) == .success {
                state.pointee.forwardedPackets += count
            } else {
                state.pointee.failedPackets += count
            }
            do {
                try batch.port.returnList(list)
            } catch {
                state.pointee.returnErrors += 1
                if state.pointee.firstError == nil { state.pointee.firstError = error }
                requestStop(StopReason.failure)
            }
        }
        state.pointee.counters.forwardedPackets.store(state.pointee.forwardedPackets, ordering: .relaxed)
    }
}

// MARK: - The loop of one end

/// Where the run is; the main thread moves it forward, the traffic threads
/// follow.
final class RunControl: Sendable {
    static let setup = 0, running = 1, draining = 2, stopped = 3
    private let pad0 = CacheLinePad(repeating: 0)
    let phase = Atomic<Int>(RunControl.setup)
    /// No traffic loop runs past this (CLOCK_MONOTONIC ns), whatever the main thread does.
    let hardDeadline = Atomic<UInt64>(.max)
    private let pad1 = CacheLinePad(repeating: 0)
    init() { _ = (pad0, pad1) }
}

/// How long an end's thread stayed away from its ports, published by that
/// thread for the main thread's per-second sample: the longest gap between
/// two passes, and the most time across such a gap that was not the
/// thread's own CPU time (wall time less CLOCK_THREAD_CPUTIME_ID: softirq
/// work done on its CPU, which the kernel does not charge to the thread,
/// the hypervisor, or the scheduler running something else). A port's fill
/// ring runs dry only while its thread is away longer than the ring lasts
/// at the arriving rate; these two tell the thread's own long passes from
/// the time the kernel or the machine took from it.
///
/// Ownership: the end's thread writes (atomic max); the main thread takes
/// and resets each interval's figures with `exchange`.
final class PassTiming: Sendable {
    private let pad0 = CacheLinePad(repeating: 0)
    /// Longest wall-clock gap between two pass starts this interval, ns.
    let longestGap = Atomic<UInt64>(0)
    /// The most time across one long gap that was not the thread's CPU time, ns.
    let longestAway = Atomic<UInt64>(0)
    private let pad1 = CacheLinePad(repeating: 0)
    init() { _ = (pad0, pad1) }

    /// A gap at least this long is looked at (a thread CPU-time read, a
    /// system call): rare enough to cost nothing per pass.
    static let gapWorthMeasuring: UInt64 = 500_000
    /// Passes between two CPU-time checkpoints.
    static let checkpointEvery: UInt32 = 256
}

enum EndLoop {
    /// Idle passes in a row after which the thread yields its CPU once (the
    /// two ends may share a core with each other or with other work).
    static let idlePassesBeforeYield = 64
    /// Most extra polls per pass while they keep bringing received packets.
    static let drainRoundsPerPass = 16

    /// One end's thread: send up to `listsPerPass` lists per flow (while
    /// running), then poll each of its ports, again while that brings
    /// received packets (bounded), until the main thread says stop or the
    /// hard deadline passes.
    ///
    /// Sending is bounded per pass because in copy mode the kernel does the
    /// receiving end's work inside the sender's kick: a thread that sent
    /// everything it could before polling would starve its own receive side
    /// (one `poll` indicates at most a few lists).
    ///
    /// `now and then` ports are polled every 16th pass and on idle passes
    /// only: a thread driving one queue of a multi-queue port polls its own
    /// queue always and the port above (which polls every queue) now and
    /// then, for what the other queues' threads left it, so that two
    /// threads on two cores do not poll each other's queues every pass.
    static func run(
        ports: [any PacketPort], nowAndThen: [any PacketPort] = [], senders: [Owned<SenderState>],
        receivers: [Owned<ReceiverState>], listsPerPass: Int, control: RunControl, timing: PassTiming? = nil
    ) {
        while control.phase.load(ordering: .acquiring) == RunControl.setup {
            if monotonicNanoseconds() > control.hardDeadline.load(ordering: .relaxed) { return }
            sleepNanoseconds(50_000)
        }
        let senders = senders.map(\.pointer)
        let receivers = receivers.map(\.pointer)
        @inline(__always) func received() -> Int {
            var total = 0
            for receiver in receivers { total &+= receiver.pointee.flow.packets }
            return total
        }
        var iteration: UInt32 = 0
        var idlePasses = 0
        // Pass timing: one clock read a pass; a CPU-time checkpoint every
        // 256 passes, so that a long gap's time away is (wall - CPU) since
        // the last checkpoint, whose window the gap ends.
        var passStart = monotonicNanoseconds()
        var checkpointWall = passStart
        var checkpointCPU = threadCPUNanoseconds()
        while true {
            let phase = control.phase.load(ordering: .relaxed)
            if phase >= RunControl.stopped { break }
            if let timing {
                let now = monotonicNanoseconds()
                let gap = now &- passStart
                passStart = now
                if gap >= PassTiming.gapWorthMeasuring || iteration % PassTiming.checkpointEvery == 0 {
                    let cpu = threadCPUNanoseconds()
                    if gap >= PassTiming.gapWorthMeasuring {
                        let wall = now &- checkpointWall
                        let onCPU = cpu &- checkpointCPU
                        timing.longestGap.max(gap, ordering: .relaxed)
                        timing.longestAway.max(wall > onCPU ? wall - onCPU : 0, ordering: .relaxed)
                    }
                    checkpointWall = now
                    checkpointCPU = cpu
                }
            }
            var progress = false
            if phase == RunControl.running {
                for sender in senders where Generator.generate(sender, maximumLists: listsPerPass) > 0 { progress = true }
            }
            for port in ports where port.poll() { progress = true }
            if !nowAndThen.isEmpty, iteration & 15 == 0 || !progress {
                for port in nowAndThen where port.poll() { progress = true }
            }
            // Drain what has arrived before sending more: one poll indicates
            // only a few lists, and a receiver that takes no more per pass
            // than its peer sends never works off a backlog.
            if !receivers.isEmpty {
                var rounds = 0
                var before = received()
                while rounds < drainRoundsPerPass {
                    for port in ports { port.poll() }
                    let after = received()
                    if after == before { break }
                    before = after
                    rounds += 1
                }
            }
            if progress {
                idlePasses = 0
            } else {
                idlePasses += 1
                if idlePasses >= idlePassesBeforeYield {
                    idlePasses = 0
                    sched_yield()
                }
            }
            iteration &+= 1
            if iteration & 1023 == 0, monotonicNanoseconds() > control.hardDeadline.load(ordering: .relaxed) { break }
        }
    }
}
