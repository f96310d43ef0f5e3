@testable import AFXDP
import AFXDPTestbed
import Glibc
import Testing

/// What a port's event handler was told, in order.
final class EventRecorder: @unchecked Sendable {
    // @unchecked: behind the lock.
    let events = TestLock<[PortEvent]>([])
    func handle(_ event: PortEvent) { events.withLock { $0.append(event) } }
    var seen: [PortEvent] { events.withLock { $0 } }
}

/// A link that goes down and comes back under ports with traffic both ways.
@Suite("Link down and up", .serialized)
struct LinkStateTests {
    @Test("B set down with sends queued both ways: each side holds its sends (A: no carrier, B: down), stops kicking, reports .linkDown; back up, everything goes out in order, every send completes once with .success, and the only frames missing are the one A's kernel dropped as the carrier went")
    func linkDownAndUpBothWays() throws {
        try VethTestbed.withVethTestbed { bed in
            let (eventsA, eventsB) = (EventRecorder(), EventRecorder())
            let (completionsA, completionsB) = (CompletionChecker(), CompletionChecker())
            let (receivedA, receivedB) = (ReceiveChecker(), ReceiveChecker())
            let configure: (EventRecorder) -> (inout PortConfiguration) -> Void = { recorder in
                { $0.onEvent = recorder.handle; $0.transmitRingSize = 64; $0.completionRingSize = 64; $0.sendFrameCount = 4096 }
            }
            let a = try openPort(bed, end: "a", configure: configure(eventsA), onReceive: receivedA.handle, onSendComplete: completionsA.handle)
            let b = try openPort(bed, end: "b", configure: configure(eventsB), onReceive: receivedB.handle, onSendComplete: completionsB.handle)
            var (nextA, nextB, listsA, listsB) = (0, 0, 0, 0)
            func drain(until done: () -> Bool, for duration: Duration) {
                let deadline = Deadline(duration)
                while !done(), !deadline.passed { a.poll(); b.poll() }
            }
            func recycle() throws {
                for list in completionsA.takeFree() { try a.returnList(list) }
                for list in completionsB.takeFree() { try b.returnList(list) }
            }
            // Both ways flowing, then quiet: nothing on the wire when the link goes.
            try sendLists(a, count: 20, size: 8, next: &nextA, lists: &listsA, from: bed.macAddressA, to: bed.macAddressB)
            try sendLists(b, count: 20, size: 8, next: &nextB, lists: &listsB, from: bed.macAddressB, to: bed.macAddressA)
            drain(until: { receivedA.receivedCount == 160 && receivedB.receivedCount == 160 && completionsA.completed == 20 && completionsB.completed == 20 }, for: .seconds(10))
            #expect(receivedA.receivedCount == 160 && receivedB.receivedCount == 160)
            try recycle()
            #expect(a.isLinkUp && b.isLinkUp)

            try setLink(bed, end: "b", up: false)
            #expect(!a.isLinkUp, "A's carrier went with B")
            #expect(!b.isLinkUp)
            // Sends while down: accepted, never refused.
            try sendLists(a, count: 50, size: 8, next: &nextA, lists: &listsA, from: bed.macAddressA, to: bed.macAddressB)
            try sendLists(b, count: 50, size: 8, next: &nextB, lists: &listsB, from: bed.macAddressB, to: bed.macAddressA)
            drain(until: { false }, for: .milliseconds(200))
            let kicksA = a.statistics.send.kicks, kicksB = b.statistics.send.kicks
            drain(until: { false }, for: .milliseconds(200))
            #expect(a.statistics.send.kicks == kicksA, "A stopped kicking a link without carrier (each kick would lose a frame)")
            #expect(b.statistics.send.kicks == kicksB)
            #expect(a.statistics.send.linkDownEvents == 1 && b.statistics.send.linkDownEvents == 1)
            #expect(a.statistics.send.queuedFrames > 0 && b.statistics.send.queuedFrames > 0, "the sends wait in the engine")
            #expect(eventsA.seen == [.linkDown] && eventsB.seen == [.linkDown])
            #expect(a.currentState == .running && b.currentState == .running)

            try setLink(bed, end: "b", up: true)
            let dropped = a.statistics.send.kernelDroppedFrames
            #expect(dropped <= 1, "at most the frame the kernel had in hand as the carrier went")
            drain(until: {
                completionsA.completed == 70 && completionsB.completed == 70
                    && receivedB.receivedCount == 560 - dropped && receivedA.receivedCount == 560
            }, for: .seconds(20))
            #expect(eventsA.seen == [.linkDown, .linkUp] && eventsB.seen == [.linkDown, .linkUp])
            for (name, completions) in [("A", completionsA), ("B", completionsB)] {
                let state = completions.state.withLock { $0 }
                #expect(state.completed == 70, "\(name): every send completed once")
                #expect(state.outOfOrder == 0, "\(name): in send order")
                #expect(state.statuses == [.success: 70], "\(name): \(state.statuses)")
            }
            #expect(receivedA.receivedCount == 560, "B's kernel took nothing while B was down: all of it arrived")
            #expect(receivedB.receivedCount == 560 - dropped)
            #expect(receivedB.gaps == dropped && receivedA.gaps == 0)
            #expect(receivedA.lateOrDuplicated == 0 && receivedB.lateOrDuplicated == 0)
            #expect(receivedA.corrupted == 0 && receivedB.corrupted == 0)
            try recycle()
            a.close()
            b.close()
            #expect(a.poolStatus.allFramesHome && b.poolStatus.allFramesHome)
            // The program's own counters outlive the port (frozen at close).
            #expect(a.statistics.programRedirected == 560 && b.statistics.programRedirected == 560 - dropped,
                "\(a.statistics.programRedirected), \(b.statistics.programRedirected)")
        }
    }

    @Test("a link down past linkDownTimeout: what the engine holds completes with .linkDown, behind (in order) what the kernel's TX ring had, which goes out when the link is back; sends while still down complete so too")
    func linkDownTimeout() throws {
        try VethTestbed.withVethTestbed { bed in
            let events = EventRecorder()
            let completions = CompletionChecker()
            let received = ReceiveChecker()
            let a = try openPort(bed, end: "a", configure: {
                $0.onEvent = events.handle
                $0.linkDownTimeout = .milliseconds(200)
                // Short stall bounds: the watchdog runs on a real socket, with
                // frames out and no completion, and must see the down link first.
                $0.completionStallTimeout = .milliseconds(50)
                $0.completionStallFailure = .milliseconds(150)
                $0.transmitRingSize = 64
                $0.completionRingSize = 64
                $0.sendFrameCount = 1024
            }, onSendComplete: completions.handle)
            let b = try openPort(bed, end: "b", onReceive: received.handle)
            try setLink(bed, end: "a", up: false)
            var (next, lists) = (0, 0)
            try sendLists(a, count: 30, size: 4, next: &next, lists: &lists, from: bed.macAddressA, to: bed.macAddressB)
            var deadline = Deadline(seconds: 5)
            while !events.seen.contains(.linkDownTimedOut), !deadline.passed { a.poll(); usleep(1_000) }
            #expect(events.seen == [.linkDown, .linkDownTimedOut])
            // Sent after the timeout, link still down.
            try sendLists(a, count: 5, size: 4, next: &next, lists: &lists, from: bed.macAddressA, to: bed.macAddressB)
            for _ in 0..<10 { a.poll() }
            // The first send placed its list and kicked, and the kernel said
            // the interface was down: that list waits in the TX ring, first in
            // line; the others waited in the engine and timed out behind it.
            #expect(completions.completed == 0)
            #expect(a.statistics.send.queuedFrames == 0, "what the engine held has completed, waiting for delivery behind the first list")
            try setLink(bed, end: "a", up: true)
            deadline = Deadline(seconds: 10)
            while completions.completed < 35, !deadline.passed { a.poll(); b.poll() }
            let state = completions.state.withLock { $0 }
            #expect(state.completed == 35)
            #expect(state.outOfOrder == 0)
            #expect(state.statuses == [.success: 1, .linkDown: 34], "\(state.statuses)")
            #expect(received.receivedCount == 4, "what the TX ring held went out when the link came back")
            #expect(received.gaps == 0 && received.corrupted == 0)
            #expect(events.seen == [.linkDown, .linkDownTimedOut, .linkUp], "no stall reported, the port never gave up")
            #expect(a.statistics.send.completionStalls == 0 && a.failure == nil)
            // And sending works again.
            for list in completions.takeFree() { try a.returnList(list) }
            try sendLists(a, count: 1, size: 4, next: &next, lists: &lists, from: bed.macAddressA, to: bed.macAddressB)
            deadline = Deadline(seconds: 10)
            while completions.completed < 36, !deadline.passed { a.poll(); b.poll() }
            #expect(completions.state.withLock { $0.statuses[.success] } == 2)
            for list in completions.takeFree() { try a.returnList(list) }
            a.close()
            b.close()
            #expect(a.poolStatus.allFramesHome)
        }
    }
}

/// The completion-stall watchdog and a down link, over the simulated kernel,
/// which can hold completions back (a real one will not on demand).
@Suite("Completion stall watchdog")
struct StallWatchdogTests {
    let a = MACAddress(bytes: [2, 0, 0, 0, 0, 1])
    let b = MACAddress(bytes: [2, 0, 0, 0, 0, 2])

    @Test("completions stand still with frames out: reported once past the first bound, resumed when they move; still past the second bound, the port closes itself and every send completes once, in order")
    func stallReportedThenFails() throws {
        let events = EventRecorder()
        let completions = CompletionChecker()
        var configuration = PortConfiguration(interface: "sim0")
        configuration.completionStallTimeout = .milliseconds(50)
        configuration.completionStallFailure = .milliseconds(400)
        configuration.onEvent = events.handle
        let (port, kernel) = try XDPPort.openSimulated(
            configuration, onReceive: { try? $0.port.returnList($0.list) }, onSendComplete: completions.handle)
        kernel.completesOnTransmit = false
        var (next, lists) = (0, 0)
        try sendLists(port, count: 10, size: 4, next: &next, lists: &lists, from: a, to: b)
        #expect(kernel.transmit() == 40)
        var deadline = Deadline(seconds: 5)
        while !events.seen.contains(.completionStalled), !deadline.passed { port.poll(); usleep(200) }
        #expect(events.seen == [.completionStalled])
        #expect(port.statistics.send.completionStalls == 1)
        #expect(port.currentState == .running && port.failure == nil)
        // Two lists' worth come back: the stall is over.
        #expect(kernel.complete(maximum: 8) == 8)
        port.poll()
        #expect(events.seen == [.completionStalled, .completionResumed])
        #expect(completions.completed == 2)
        // The rest never come: past the second bound the port gives up.
        deadline = Deadline(seconds: 5)
        while port.currentState != .closed, !deadline.passed { port.poll(); usleep(200) }
        #expect(port.currentState == .closed)
        #expect(port.failure == .completionStalled)
        #expect(events.seen == [.completionStalled, .completionResumed, .completionStalled, .failed(.completionStalled)])
        let state = completions.state.withLock { $0 }
        #expect(state.completed == 10 && state.outOfOrder == 0)
        #expect(state.statuses == [.success: 2, .closing: 8], "\(state.statuses)")
        port.close()
        for list in completions.takeFree() { try port.returnList(list) }
        #expect(port.poolStatus.allFramesHome, "\(port.poolStatus)")
    }

    @Test("a link down is not a stall: sends wait (one sent from the event handler too), no stall is reported and the port stays open past both bounds; back up, all complete in order")
    func linkDownIsNotAStall() throws {
        let events = EventRecorder()
        let completions = CompletionChecker()
        let portBox = TestLock<XDPPort?>(nil)
        var configuration = PortConfiguration(interface: "sim0")
        configuration.completionStallTimeout = .milliseconds(30)
        configuration.completionStallFailure = .milliseconds(100)
        configuration.linkDownTimeout = nil
        let mac = a, peer = b
        configuration.onEvent = { event in
            events.handle(event)
            // Calling back in from the event handler: a send, queued like any.
            guard event == .linkDown, let port = portBox.withLock({ $0 }) else { return }
            guard let list = try? port.allocateList(packetCount: 4) else { return }
            try? fill(list, stream: 0, firstSequence: 1_000, length: 64, from: mac, to: peer)
            try? CompletionChecker.tag(list, stream: 1, number: 0)
            try? port.send(list)
        }
        let (port, kernel) = try XDPPort.openSimulated(
            configuration, onReceive: { try? $0.port.returnList($0.list) }, onSendComplete: completions.handle)
        portBox.withLock { $0 = port }
        defer { portBox.withLock { $0 = nil } }
        kernel.linkUp = false
        var (next, lists) = (0, 0)
        try sendLists(port, count: 10, size: 4, next: &next, lists: &lists, from: a, to: b)
        let deadline = Deadline(.milliseconds(400))
        while !deadline.passed {
            kernel.transmit()
            port.poll()
            usleep(200)
        }
        #expect(events.seen == [.linkDown], "the silence was the link's: no stall")
        #expect(port.currentState == .running && port.failure == nil)
        #expect(port.statistics.send.completionStalls == 0 && port.statistics.send.linkDownEvents == 1)
        #expect(completions.completed == 0)
        kernel.linkUp = true
        let done = Deadline(seconds: 5)
        while completions.completed < 11, !done.passed {
            kernel.transmit()
            port.poll()
            usleep(200)
        }
        #expect(events.seen == [.linkDown, .linkUp])
        let state = completions.state.withLock { $0 }
        #expect(state.completed == 11 && state.outOfOrder == 0 && state.statuses == [.success: 11])
        for list in completions.takeFree() { try port.returnList(list) }
        port.close()
        #expect(port.poolStatus.allFramesHome)
    }
}
