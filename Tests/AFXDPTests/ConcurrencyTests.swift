import AFXDP
import AFXDPTestbed
import Atomics
import Glibc
import Testing

/// Every public call is safe from any thread at any time. These also run
/// under ThreadSanitizer in CI (`scripts/test` filters on "Concurrency").
@Suite("Concurrency", .serialized)
struct ConcurrencyTests {
    @Test("four threads sending, two returning received lists, one polling the receiver, at once")
    func sendersAndReturners() throws {
        try VethTestbed.withVethTestbed { bed in
            let received = ReceiveChecker(handOff: true)
            let completions = CompletionChecker()
            let a = try openPort(bed, end: "a", configure: { $0.sendFrameCount = 8192 }, onSendComplete: completions.handle)
            defer { a.close() }
            let b = try openPort(bed, end: "b", onReceive: received.handle)
            defer { b.close() }

            let senders = 4
            let perSender = 25_000
            let total = senders * perSender
            // Flow control end to end, exact across the four senders: frames
            // sent and not yet returned by B's caller. Counting only received
            // frames would let held lists starve B's fill ring; a window each
            // sender judged from a snapshot of the others' sends let 2,000 to
            // 3,400 frames into flight under ThreadSanitizer, and when the
            // polling thread was descheduled the kernel (rightly) dropped at
            // B's socket for an empty fill ring or a full RX ring.
            let window = SharedWindow(size: vethQueueWindow)
            let deepestInFlight = ManagedAtomic<Int>(0)
            let sendersDone = ManagedAtomic<Int>(0)
            let failures = TestLock<[String]>([])
            runThreads(senders + 3) { index in
                let deadline = Deadline(seconds: 240)
                switch index {
                case 0..<senders:
                    // Each sender has its own stream; lists come back to whichever thread polls.
                    let own = CompletionChecker()
                    var generator = Generator(
                        port: a, completions: own, stream: index, total: perSender, batch: 32, from: bed.macAddressA, to: bed.macAddressB)
                    defer { sendersDone.wrappingIncrement(ordering: .releasing) }
                    do {
                        while !generator.done {
                            if deadline.passed { failures.withLock { $0.append("sender \(index) stalled at \(generator.sentFrames)") }; return }
                            // Completed lists of every stream land in the shared checker; take ours back.
                            let mine = completions.state.withLock { state -> [PacketList] in
                                let (ours, others) = state.free.partitioned { CompletionChecker.tagOf($0).stream == index }
                                state.free = others
                                return ours
                            }
                            generator.spare.append(contentsOf: mine)
                            try generator.step(admit: window.admit)
                            let inFlight = window.inFlight
                            if inFlight > deepestInFlight.load(ordering: .relaxed) { deepestInFlight.store(inFlight, ordering: .relaxed) }
                            a.poll()
                        }
                        generator.spare.append(contentsOf: own.takeFree())
                        for list in generator.spare { try a.returnList(list) }
                    } catch {
                        failures.withLock { $0.append("sender \(index): \(error)") }
                    }
                case senders, senders + 1:
                    // Returners: give received lists back from threads other than the receiver's.
                    while received.receivedCount < total || !(received.handOff!.withLock { $0.isEmpty }) {
                        if deadline.passed { failures.withLock { $0.append("returner stalled") }; return }
                        let lists = received.handOff!.withLock { queue -> [PacketList] in
                            guard !queue.isEmpty else { return [] }
                            let half = max(1, queue.count / 2)
                            defer { queue.removeFirst(half) }
                            return Array(queue.prefix(half))
                        }
                        for list in lists {
                            let count = (try? list.count) ?? 0
                            do { try b.returnList(list) } catch { failures.withLock { $0.append("return: \(error)") } }
                            window.release(count)
                        }
                        if lists.isEmpty { sched_yield() }
                    }
                default:
                    while received.receivedCount < total || sendersDone.load(ordering: .acquiring) < senders {
                        if deadline.passed { failures.withLock { $0.append("receiver stalled at \(received.receivedCount)") }; return }
                        b.poll()
                        a.poll()
                    }
                }
            }
            #expect(failures.withLock { $0 } == [])
            #expect(deepestInFlight.load(ordering: .relaxed) <= vethQueueWindow, "the window held")
            let missing = total - received.receivedCount
            #expect(missing == 0, "\(lossReport(missing: missing, sender: a, receiver: b, bed: bed))")
            #expect(received.outOfOrder == 0)
            #expect(received.corrupted == 0)
            for stream in 0..<senders { #expect(received.nextExpected(stream: stream) == UInt64(perSender)) }
            let state = completions.state.withLock { $0 }
            #expect(state.outOfOrder == 0)
            let listsPerSender = (perSender + 31) / 32
            #expect(state.statuses == [.success: senders * listsPerSender])
            // Whatever completed after its sender stopped looking is still ours to return.
            for list in completions.takeFree() { try a.returnList(list) }
            a.close()
            b.close()
            #expect(a.poolStatus.allFramesHome, "\(a.poolStatus)")
            #expect(b.poolStatus.allFramesHome, "\(b.poolStatus)")
        }
    }

    @Test("close while threads send: every list completes once or is refused and stays the caller's")
    func closeWhileSending() throws {
        try VethTestbed.withVethTestbed { bed in
            let completions = CompletionChecker()
            let a = try openPort(bed, end: "a", configure: { $0.sendFrameCount = 8192 }, onSendComplete: completions.handle)
            let b = try openPort(bed, end: "b")
            defer { b.close() }
            let accepted = ManagedAtomic<Int>(0)
            let refused = TestLock<[PacketList]>([])
            let unexpected = TestLock<[String]>([])
            runThreads(3) { index in
                if index == 2 {
                    usleep(20_000)
                    a.close()
                    return
                }
                var number: UInt64 = 0
                let deadline = Deadline(seconds: 30)
                while !deadline.passed {
                    let reuse = completions.state.withLock { state -> PacketList? in
                        guard let i = state.free.firstIndex(where: { CompletionChecker.tagOf($0).stream == index }) else { return nil }
                        return state.free.remove(at: i)
                    }
                    guard let list = reuse ?? (try? a.allocateList(packetCount: 4)) else {
                        if a.currentState == .closed { return }
                        a.poll()
                        continue
                    }
                    do {
                        try fill(list, stream: index, firstSequence: number * 4, length: 64, from: bed.macAddressA, to: bed.macAddressB)
                        try CompletionChecker.tag(list, stream: index, number: number)
                        try a.send(list)
                        number += 1
                        accepted.wrappingIncrement(ordering: .relaxed)
                    } catch AFXDPError.portClosed {
                        refused.withLock { $0.append(list) }
                        return
                    } catch {
                        unexpected.withLock { $0.append("\(error)") }
                        return
                    }
                    a.poll()
                }
            }
            #expect(unexpected.withLock { $0 } == [])
            let state = completions.state.withLock { $0 }
            #expect(state.completed == accepted.load(ordering: .relaxed), "every accepted list completed exactly once")
            #expect(state.outOfOrder == 0)
            #expect(Set(state.statuses.keys).isSubset(of: [.success, .closing]))
            for list in completions.takeFree() + refused.withLock({ $0 }) { try a.returnList(list) }
            #expect(a.poolStatus.allFramesHome, "\(a.poolStatus)")
        }
    }
}

extension Array {
    func partitioned(_ belongs: (Element) -> Bool) -> ([Element], [Element]) {
        var yes: [Element] = [], no: [Element] = []
        for element in self { if belongs(element) { yes.append(element) } else { no.append(element) } }
        return (yes, no)
    }
}

extension ConcurrencyTests {
    @Test("pause, restart, close and poll racing each other while a thread sends: nothing crashes, every list completes once")
    func lifecycleRaces() throws {
        try VethTestbed.withVethTestbed { bed in
            for _ in 0..<5 {
                let completions = CompletionChecker()
                let a = try openPort(bed, end: "a", onSendComplete: completions.handle)
                let b = try openPort(bed, end: "b")
                let accepted = ManagedAtomic<Int>(0)
                let kept = TestLock<[PacketList]>([])
                runThreads(4) { index in
                    switch index {
                    case 0:
                        var number: UInt64 = 0
                        while a.currentState != .closed {
                            let reuse = completions.state.withLock { $0.free.popLast() }
                            guard let list = reuse ?? (try? a.allocateList(packetCount: 2)) else { a.poll(); continue }
                            do {
                                try fill(list, stream: 0, firstSequence: 2 * number, length: 64, from: bed.macAddressA, to: bed.macAddressB)
                                try CompletionChecker.tag(list, stream: 0, number: number)
                                try a.send(list)
                                number += 1
                                accepted.wrappingIncrement(ordering: .relaxed)
                            } catch {
                                kept.withLock { $0.append(list) }
                                return
                            }
                        }
                    case 1:
                        for _ in 0..<20 { a.pause(timeout: .milliseconds(5)); a.restart() }
                    case 2:
                        for _ in 0..<2_000 { a.poll(); b.poll() }
                    default:
                        usleep(10_000)
                        a.close()
                    }
                }
                let state = completions.state.withLock { $0 }
                #expect(state.completed == accepted.load(ordering: .relaxed))
                #expect(state.outOfOrder == 0)
                for list in completions.takeFree() + kept.withLock({ $0 }) { try a.returnList(list) }
                #expect(a.poolStatus.allFramesHome, "\(a.poolStatus)")
                b.close()
            }
        }
    }
}
