@testable import AFXDP
import AFXDPTestbed
import Glibc
import Testing

/// The interface deleted under an open port, with sends queued and in flight.
@Suite("Device lost under a port", .serialized)
struct DeviceLostTests {
    @Test("the interface deleted while lists are queued and in flight: every send completes once (.closing for what never went), the port closes itself, close() after it returns, every frame home")
    func interfaceDeletedUnderPort() throws {
        try VethTestbed.withVethTestbed { bed in
            let completions = CompletionChecker()
            let a = try openPort(bed, end: "a", onSendComplete: completions.handle)
            let b = try openPort(bed, end: "b")
            var sent = 0
            func send(_ count: Int) throws {
                for _ in 0..<count {
                    guard let list = try a.allocateList(packetCount: 32) else { return }
                    try fill(list, stream: 0, firstSequence: UInt64(sent * 32), length: 64, from: bed.macAddressA, to: bed.macAddressB)
                    try CompletionChecker.tag(list, stream: 0, number: UInt64(sent))
                    try a.send(list)
                    sent += 1
                }
            }
            // Traffic before: it flows.
            try send(40)
            let flowing = Deadline(seconds: 10)
            while completions.completed < 40, !flowing.passed { a.poll(); b.poll() }
            #expect(completions.completed == 40)
            for list in completions.takeFree() { try a.returnList(list) }
            // Deleting one end of a veth pair deletes both.
            _ = try runCommand(["ip", "-n", bed.namespaceA, "link", "del", "dev", bed.interfaceA])
            // Sends after it: accepted (never refused), and they can never go out.
            try send(100)
            #expect(sent == 140)
            let deadline = Deadline(seconds: 10)
            while a.currentState != .closed, !deadline.passed { a.poll() }
            #expect(a.currentState == .closed, "the port closed itself once the kernel said its device was gone")
            #expect(a.isDeviceLost)
            #expect(completions.completed == sent, "every send completed")
            let seen = completions.state.withLock { $0 }
            #expect(seen.outOfOrder == 0, "in send order")
            #expect(seen.statuses[.closing, default: 0] > 0, "what never went out completed with .closing")
            #expect(seen.statuses[.pending, default: 0] == 0)
            #expect(throws: AFXDPError.portClosed) { _ = try a.allocateList(packetCount: 1) }
            a.close()
            for list in completions.takeFree() { try a.returnList(list) }
            #expect(a.poolStatus.allFramesHome, "\(a.poolStatus)")
            b.close()
            #expect(b.poolStatus.allFramesHome)
        }
    }
}

extension DeviceLostTests {
    @Test("the interface deleted under a stack (filter over a port): the port closes itself, the stack closes with it, every send completes once at the top, every frame home")
    func interfaceDeletedUnderStack() throws {
        try VethTestbed.withVethTestbed { bed in
            var configuration = PortConfiguration(interface: bed.interfaceA, networkNamespace: bed.namespaceA)
            configuration.etherTypeFilter = TestFrame.etherType
            let completions = CompletionChecker()
            let top = try FilterDriver.open(
                over: XDPPort.below(configuration), onReceive: { try? $0.port.returnList($0.list) }, onSendComplete: completions.handle)
            _ = try runCommand(["ip", "-n", bed.namespaceA, "link", "del", "dev", bed.interfaceA])
            for number in 0..<20 {
                let list = try #require(try top.allocateList(packetCount: 8))
                try fill(list, stream: 0, firstSequence: UInt64(number * 8), length: 64, from: bed.macAddressA, to: bed.macAddressB)
                try CompletionChecker.tag(list, stream: 0, number: UInt64(number))
                try top.send(list)
            }
            let deadline = Deadline(seconds: 10)
            while top.currentState != .closed, !deadline.passed { top.poll() }
            #expect(top.currentState == .closed, "the stack closed when the port below lost its device")
            #expect((top.bindings[0] as? XDPPort)?.isDeviceLost == true)
            let state = completions.state.withLock { $0 }
            #expect(state.completed == 20, "every send came up once")
            #expect(state.outOfOrder == 0)
            #expect(state.statuses[.success] == nil && state.statuses[.closing] == 20)
            top.close()
            for list in completions.takeFree() { try top.returnList(list) }
            #expect(top.poolStatus.allFramesHome, "\(top.poolStatus)")
        }
    }
}

extension DeviceLostTests {
    @Test("the interface deleted under an idle port (nothing to send): its polls notice within a fraction of a second and it closes itself")
    func interfaceDeletedUnderIdlePort() throws {
        try VethTestbed.withVethTestbed { bed in
            let a = try openPort(bed, end: "a")
            for _ in 0..<10 { a.poll() }
            _ = try runCommand(["ip", "-n", bed.namespaceA, "link", "del", "dev", bed.interfaceA])
            let deadline = Deadline(seconds: 5)
            while a.currentState != .closed, !deadline.passed {
                a.poll()
                usleep(1_000)
            }
            #expect(a.currentState == .closed)
            #expect(a.isDeviceLost)
            a.close()
            #expect(a.poolStatus.allFramesHome)
        }
    }
}

extension DeviceLostTests {
    @Test("A's namespace deleted under its open port: the namespace lives on while the port's sockets do, so the port keeps sending and B keeps receiving; A's close ends it, its veth with it, and B's port, its interface gone, closes itself; nothing is left on the host")
    func namespaceDeletedUnderPort() throws {
        try VethTestbed.withVethTestbed { bed in
            let received = ReceiveChecker()
            let completions = CompletionChecker()
            let events = EventRecorder()
            let a = try openPort(bed, end: "a", onSendComplete: completions.handle)
            let b = try openPort(bed, end: "b", configure: { $0.onEvent = events.handle }, onReceive: received.handle)
            var (next, sent) = (0, 0)
            func send(_ lists: Int) throws {
                try sendLists(a, count: lists, size: 8, next: &next, lists: &sent, from: bed.macAddressA, to: bed.macAddressB)
            }
            func run(until done: () -> Bool) {
                let deadline = Deadline(seconds: 10)
                while !done(), !deadline.passed { a.poll(); b.poll() }
            }
            try send(10)
            run { received.receivedCount == 80 && completions.completed == 10 }
            _ = try runCommand(["ip", "netns", "del", bed.namespaceA])
            #expect(!(try runCommand(["ip", "netns", "list"])).contains(bed.namespaceA), "the name is gone")
            try send(10)
            run { received.receivedCount == 160 && completions.completed == 20 }
            #expect(received.receivedCount == 160, "the port still sends: its sockets keep the namespace alive")
            #expect(a.currentState == .running && a.failure == nil)

            let started = ContinuousClock.now
            a.close()
            #expect(ContinuousClock.now - started < .seconds(3), "close does not wait out a namespace that has no name")
            let state = completions.state.withLock { $0 }
            #expect(state.completed == 20 && state.outOfOrder == 0 && state.statuses == [.success: 20])
            for list in completions.takeFree() { try a.returnList(list) }
            #expect(a.poolStatus.allFramesHome, "\(a.poolStatus)")

            // The namespace ends with A's last socket, and its veth end with it: B's end goes too.
            let gone = Deadline(seconds: 10)
            while b.currentState != .closed, !gone.passed {
                b.poll()
                usleep(1_000)
            }
            #expect(b.currentState == .closed && b.failure == .deviceLost)
            #expect(events.seen == [.failed(.deviceLost)])
            #expect(!(try runCommand(["ip", "-n", bed.namespaceB, "link"])).contains(bed.interfaceB), "no veth left")
            b.close()
            #expect(b.poolStatus.allFramesHome)
            #expect(received.corrupted == 0 && received.outOfOrder == 0)
        }
    }
}
