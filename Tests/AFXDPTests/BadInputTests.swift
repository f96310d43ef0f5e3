@testable import AFXDP
import AFXDPTestbed
import CTestSupport
import Glibc
import Testing

/// Bad input gets a clear error that says what to do, and nothing is lost.
@Suite("Bad input", .serialized)
struct BadInputTests {
    @Test("configuration errors are caught before anything is opened")
    func configuration() throws {
        var configuration = PortConfiguration(interface: "eth0")
        configuration.transmitRingSize = 1000
        #expect {
            try XDPPort.open(configuration, onReceive: { _ in }, onSendComplete: { _ in })
        } throws: { error in
            let description = "\(error)"
            return description.contains("transmitRingSize 1000 is not a power of two") && description.contains("512 or 1024")
        }
        configuration.transmitRingSize = 1024
        configuration.frameSize = 3000
        #expect(throws: AFXDPError.invalidConfiguration("frameSize 3000 is not supported; use 2048 or 4096")) {
            try XDPPort.open(configuration, onReceive: { _ in }, onSendComplete: { _ in })
        }
        configuration.frameSize = 2048
        configuration.interface = "a-name-far-too-long-for-linux"
        #expect(throws: AFXDPError.self) { try XDPPort.open(configuration, onReceive: { _ in }, onSendComplete: { _ in }) }
    }

    @Test("errors say whose doing they were: the environment's, the caller's, or a closed port's")
    func errorOrigins() throws {
        var configuration = PortConfiguration(interface: "lo")
        configuration.fillRingSize = 1000
        #expect {
            try XDPPort.open(configuration, onReceive: { _ in }, onSendComplete: { _ in })
        } throws: { error in (error as? AFXDPError)?.origin == .caller }
        let (port, _) = try XDPPort.openSimulated(PortConfiguration(interface: "sim0"), loopback: true, onReceive: { _ in }, onSendComplete: { _ in })
        let list = try #require(try port.allocateList(packetCount: 1))
        try port.returnList(list)
        #expect { try port.returnList(list) } throws: { error in
            error as? AFXDPError == .listAlreadyReturned && (error as? AFXDPError)?.origin == .caller
        }
        port.close()
        #expect { _ = try port.allocateList(packetCount: 1) } throws: { error in (error as? AFXDPError)?.origin == .closed }
        #expect(AFXDPError.permissionDenied(operation: "bind", errno: EPERM).origin == .environment)
    }

    @Test("a missing interface and a missing namespace say how to find the right name")
    func missingInterfaceAndNamespace() throws {
        try VethTestbed.withVethTestbed { bed in
            let missing = PortConfiguration(interface: "nosuch0", networkNamespace: bed.namespaceA)
            #expect {
                try XDPPort.open(missing, onReceive: { _ in }, onSendComplete: { _ in })
            } throws: { error in
                error as? AFXDPError == .interfaceNotFound(interface: "nosuch0", namespace: bed.namespaceA)
                    && "\(error)".contains("ip -n \(bed.namespaceA) link")
                    && (error as? AFXDPError)?.origin == .environment
            }
            let noNamespace = PortConfiguration(interface: bed.interfaceA, networkNamespace: "afxdp-no-such-namespace")
            #expect {
                try XDPPort.open(noNamespace, onReceive: { _ in }, onSendComplete: { _ in })
            } throws: { error in
                error as? AFXDPError == .namespaceNotFound("afxdp-no-such-namespace") && "\(error)".contains("ip netns list")
            }
            let attached = try hasXDPProgram(bed.interfaceA, namespace: bed.namespaceA)
            #expect(!attached)
        }
    }

    @Test("a queue the interface does not have says how many it has; nothing is left attached, and queue 0 then opens")
    func queueBeyondTheInterface() throws {
        try VethTestbed.withVethTestbed { bed in
            var configuration = PortConfiguration(interface: bed.interfaceA, queue: 99, networkNamespace: bed.namespaceA)
            configuration.etherTypeFilter = TestFrame.etherType
            #expect {
                try XDPPort.open(configuration, onReceive: { _ in }, onSendComplete: { _ in })
            } throws: { error in
                "\(error)".contains("queue 99 does not exist on \(bed.interfaceA), which has 1 queue(s): use a queue from 0 to 0")
            }
            #expect(try !hasXDPProgram(bed.interfaceA, namespace: bed.namespaceA))
            configuration.queue = 0
            let port = try XDPPort.open(configuration, onReceive: { _ in }, onSendComplete: { _ in })
            port.close()
        }
    }

    @Test("lengths out of range say what is allowed: below 1, and past the frame's room (without advising a frame size larger than allowed)")
    func lengthMessages() throws {
        var configuration = PortConfiguration(interface: "sim0")
        configuration.frameSize = 4096
        let (port, _) = try XDPPort.openSimulated(configuration, onReceive: { _ in }, onSendComplete: { _ in })
        defer { port.close() }
        let list = try #require(try port.allocateList(packetCount: 1))
        var errors: [AFXDPError] = []
        _ = try list.packets.withPacket(at: 0) { packet in
            for length in [-1, 4097] {
                do throws(AFXDPError) { try packet.setLength(length) } catch { errors.append(error) }
            }
        }
        try #require(errors.count == 2)
        #expect(errors[0] == .invalidFrameLength(-1) && "\(errors[0])".contains("-1 bytes"))
        let text = "\(errors[1])"
        #expect(text.contains("4097") && !text.contains("use frameSize 4096") && text.contains("split the data"), "\(text)")
        try port.returnList(list)
    }

    @Test("without the capabilities, opening fails with what to grant, and leaves nothing attached")
    func noPrivilege() throws {
        try VethTestbed.withVethTestbed { bed in
            let error = try openWithCapabilitiesDropped(bed) { ctest_drop_effective_capabilities() }
            #expect("\(error)".contains("CAP_NET_RAW") && "\(error)".contains("setcap"))
            #expect(try !hasXDPProgram(bed.interfaceA, namespace: bed.namespaceA))
        }
    }

    @Test("without CAP_IPC_LOCK and with a memory-lock limit below the UMEM, opening says so (not a bare 'No buffer space'), and leaves nothing attached")
    func noMemoryLock() throws {
        try VethTestbed.withVethTestbed { bed in
            // The limit binds only a thread without CAP_IPC_LOCK: lowered for
            // the process for this test, it leaves every other thread alone.
            var previous: UInt64 = 0
            try #require(ctest_set_memlock_soft_limit(4 << 20, &previous) == 0)
            defer { var ignored: UInt64 = 0; _ = ctest_set_memlock_soft_limit(previous, &ignored) }
            // The default port: 48 MiB of UMEM (12288 frames of 4096), past the 4 MiB limit.
            let error = try openWithCapabilitiesDropped(bed) { ctest_drop_effective_capability(14) }  // CAP_IPC_LOCK
            let text = "\(error)"
            #expect(text.contains("CAP_IPC_LOCK") && text.contains("ulimit -l") && text.contains("48 MiB"), "\(text)")
            #expect(try !hasXDPProgram(bed.interfaceA, namespace: bed.namespaceA))
        }
    }

    /// Opens a default port on A's interface from a thread of its own, inside
    /// A's namespace, with the capabilities `drop` clears (capabilities are
    /// per thread: only this one loses them); returns the permission error
    /// the open must throw.
    private func openWithCapabilitiesDropped(_ bed: VethTestbed, drop: @escaping @Sendable () -> Int32) throws -> AFXDPError {
        let outcome = TestLock<Result<Void, AFXDPError>?>(nil)
        runThreads(1) { _ in
            do {
                try NetworkNamespace.withEntered(bed.namespaceA) {
                    precondition(drop() == 0)
                    defer { precondition(ctest_restore_effective_capabilities() == 0) }
                    do {
                        let port = try XDPPort.open(PortConfiguration(interface: bed.interfaceA), onReceive: { _ in }, onSendComplete: { _ in })
                        port.close()
                        outcome.withLock { $0 = .success(()) }
                    } catch let error as AFXDPError {
                        outcome.withLock { $0 = .failure(error) }
                    } catch {
                        Issue.record("unexpected \(error)")
                    }
                }
            } catch {
                Issue.record("could not enter the namespace: \(error)")
            }
        }
        let result = try #require(outcome.withLock { $0 })
        guard case .failure(let error) = result, case .permissionDenied = error else {
            throw TestbedError(message: "expected permissionDenied, got \(result)")
        }
        return error
    }

    @Test("a leftover XDP program is explained with how to remove it; after removing it, opening works")
    func leftoverProgram() throws {
        try VethTestbed.withVethTestbed { bed in
            // Play a process that died with its program attached.
            let path = "/tmp/afxdp-leftover-\(getpid()).o"
            let bytes = EmbeddedXDPProgram.objectBytes()
            let file = try #require(fopen(path, "w"))
            _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
            fclose(file)
            defer { unlink(path) }
            try runCommand(["ip", "-n", bed.namespaceA, "link", "set", "dev", bed.interfaceA, "xdpgeneric", "obj", path, "sec", "xdp.frags"])
            #expect(try hasXDPProgram(bed.interfaceA, namespace: bed.namespaceA))

            var message = ""
            #expect {
                try openPort(bed, end: "a")
            } throws: { error in
                guard case .xdpProgramAlreadyAttached(let interface, let id, let namespace)? = error as? AFXDPError else { return false }
                message = "\(error)"
                return interface == bed.interfaceA && id != 0 && namespace == bed.namespaceA
            }
            // The program that was there is still there: the failed open changed nothing.
            #expect(try hasXDPProgram(bed.interfaceA, namespace: bed.namespaceA))

            // The commands the error gives work as printed (pasted into a
            // shell in this test's own namespace, not the interface's).
            let commands = message.split(separator: "`").enumerated().filter { $0.offset % 2 == 1 }.map { String($0.element) }
            let inspect = try #require(commands.first { $0.contains("link show") })
            let remove = try #require(commands.first { $0.hasSuffix("xdpgeneric off") })
            try runCommand(["sh", "-c", inspect])
            try runCommand(["sh", "-c", remove])
            let port = try openPort(bed, end: "a")
            port.close()
            #expect(try !hasXDPProgram(bed.interfaceA, namespace: bed.namespaceA))
        }
    }

    @Test("zero-copy required on veth (which has none) is refused with what to do; preferred falls back and says so")
    func zeroCopyRequired() throws {
        try VethTestbed.withVethTestbed { bed in
            #expect {
                try openPort(bed, end: "a", configure: { $0.zeroCopy = .required })
            } throws: { error in
                error as? AFXDPError == .zeroCopyUnsupported(interface: bed.interfaceA) && "\(error)".contains(".preferred")
            }
            let attached = try hasXDPProgram(bed.interfaceA, namespace: bed.namespaceA)
            #expect(!attached, "the refused open left nothing attached")
            let port = try openPort(bed, end: "a", configure: { $0.zeroCopy = .preferred })
            #expect(!port.isZeroCopy)
            #expect(port.notes.contains { $0.contains("copy mode") })
            port.close()
        }
    }

    @Test("bad lists: oversized or empty frames, double returns, foreign lists, lists in flight; nothing is lost")
    func badLists() throws {
        try VethTestbed.withVethTestbed { bed in
            let completions = CompletionChecker()
            let a = try openPort(bed, end: "a", configure: { $0.frameSize = 2048 }, onSendComplete: completions.handle)
            defer { a.close() }
            let b = try openPort(bed, end: "b")
            defer { b.close() }
            let freeAtStart = a.poolStatus.sendFramesFree

            // Oversized frame: refused, the packet keeps its length.
            let list = try #require(try a.allocateList(packetCount: 2))
            try list.packets.withPacket(at: 0) { (first: borrowing Packet) throws in
                #expect(throws: AFXDPError.frameTooLarge(length: 2049, maximum: 2048)) { try first.setLength(2049) }
                #expect(try first.length == 0)
                // Lengths below 1: refused, and say which length.
                #expect(throws: AFXDPError.invalidFrameLength(0)) { try first.setLength(0) }
                #expect(throws: AFXDPError.invalidFrameLength(-1)) { try first.setLength(-1) }
            }
            #expect("\(AFXDPError.frameTooLarge(length: 2049, maximum: 2048))".contains("4096"))
            #expect("\(AFXDPError.frameTooLarge(length: 4097, maximum: 4096))".contains("split"))
            #expect("\(AFXDPError.invalidFrameLength(-1))".contains("-1"))
            // A packet without a length: the list is refused at send and stays the caller's.
            #expect(throws: AFXDPError.emptyFrame) { try a.send(list) }
            try fill(list, stream: 0, firstSequence: 0, length: 64, from: bed.macAddressA, to: bed.macAddressB)

            // Foreign list: refused by the other port, for send and for return.
            #expect(throws: AFXDPError.foreignList) { try b.send(list) }
            #expect(throws: AFXDPError.foreignList) { try b.returnList(list) }

            // In flight: the engine's until completed. Interface down keeps it in flight.
            try setLink(bed, end: "a", up: false)
            try CompletionChecker.tag(list, stream: 0, number: 0)
            try a.send(list)
            #expect(throws: AFXDPError.listNotOwnedByCaller) { try a.send(list) }
            #expect(throws: AFXDPError.listNotOwnedByCaller) { try a.returnList(list) }
            try setLink(bed, end: "a", up: true)
            let deadline = Deadline(seconds: 10)
            while completions.completed < 1 {
                try #require(!deadline.passed)
                a.poll()
                usleep(100)
            }
            #expect(completions.takeFree() == [list])
            #expect(try list.status == .success)

            // Returned twice: the second is refused and frees nothing twice.
            try a.returnList(list)
            #expect(a.poolStatus.sendFramesFree == freeAtStart)
            #expect(throws: AFXDPError.listAlreadyReturned) { try a.returnList(list) }
            #expect(throws: AFXDPError.listAlreadyReturned) { try a.send(list) }
            #expect(a.poolStatus.sendFramesFree == freeAtStart)
            // The slot's next owner is not disturbed by the stale handle.
            let next = try #require(try a.allocateList(packetCount: 1))
            #expect(throws: AFXDPError.listAlreadyReturned) { try a.returnList(list) }
            try a.returnList(next)
            #expect(a.poolStatus.sendFramesFree == freeAtStart)
        }
    }
}
