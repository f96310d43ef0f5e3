@testable import AFXDP
import AFXDPTestbed
import Glibc
import Testing

/// A process of this engine that dies leaves its XDP program on the
/// interface; another that lives keeps it. Both on real veth, with a real
/// process: afxdp-bench, built beside this test bundle.
@Suite("Programs left by other processes", .serialized)
struct LeftoverProgramTests {
    @Test("a process of this engine killed with SIGKILL mid-run leaves its program on both ends; the next open replaces it, and traffic flows")
    func killedProcessIsReplaced() throws {
        try VethTestbed.withVethTestbed { bed in
            let bench = try startBench(on: bed)
            try waitForPrograms(on: bed, present: true)
            kill(bench, SIGKILL)
            var status: Int32 = 0
            waitpid(bench, &status, 0)
            #expect(try hasXDPProgram(bed.interfaceA, namespace: bed.namespaceA), "the killed process left its program")
            #expect(try hasXDPProgram(bed.interfaceB, namespace: bed.namespaceB))

            let received = ReceiveChecker()
            let a = try openPort(bed, end: "a")
            let b = try openPort(bed, end: "b", onReceive: received.handle)
            var sent = 0
            let deadline = Deadline(seconds: 20)
            while received.receivedCount < 3_200, !deadline.passed {
                if sent < 3_200, sent - received.receivedCount < 256, let list = try a.allocateList(packetCount: 32) {
                    try fill(list, stream: 0, firstSequence: UInt64(sent), length: 64, from: bed.macAddressA, to: bed.macAddressB)
                    try a.send(list)
                    sent += 32
                }
                a.poll()
                b.poll()
            }
            #expect(received.receivedCount == 3_200)
            #expect(received.outOfOrder == 0 && received.corrupted == 0)
            a.close()
            b.close()
            #expect(try !hasXDPProgram(bed.interfaceA, namespace: bed.namespaceA), "closing removed the program that replaced the leftover")
            #expect(try !hasXDPProgram(bed.interfaceB, namespace: bed.namespaceB))
        }
    }

    @Test("a live process of this engine on the interface: the open is refused naming its PID and command, and it goes on undisturbed")
    func liveProcessIsRefused() throws {
        try VethTestbed.withVethTestbed { bed in
            let bench = try startBench(on: bed)
            defer {
                kill(bench, SIGKILL)
                var status: Int32 = 0
                waitpid(bench, &status, 0)
            }
            try waitForPrograms(on: bed, present: true)
            let before = try LinkInfo.read(interface: bed.interfaceA, namespace: bed.namespaceA)
            #expect {
                try openPort(bed, end: "a")
            } throws: { error in
                guard case .interfaceInUse(let interface, let namespace, let pid, let command)? = error as? AFXDPError else { return false }
                return interface == bed.interfaceA && namespace == bed.namespaceA && pid == bench && command == "afxdp-bench"
                    && "\(error)".contains("kill \(bench)")
            }
            // Undisturbed: still running, its program still there.
            #expect(kill(bench, 0) == 0)
            #expect(try LinkInfo.read(interface: bed.interfaceA, namespace: bed.namespaceA).hasXDPProgram == before.hasXDPProgram)
            // Stopped the way the error says, it takes its program away, and the open succeeds.
            kill(bench, SIGTERM)
            var status: Int32 = 0
            waitpid(bench, &status, 0)
            let port = try openPort(bed, end: "a")
            port.close()
            #expect(try !hasXDPProgram(bed.interfaceA, namespace: bed.namespaceA))
        }
    }

    /// Starts afxdp-bench sending A to B on the testbed for up to 30 s; its
    /// output goes to /dev/null.
    func startBench(on bed: VethTestbed) throws -> pid_t {
        let exe = try #require(try? readLink("/proc/self/exe"))
        let bench = String(exe[..<exe.lastIndex(of: "/")!]) + "/afxdp-bench"
        #expect(access(bench, X_OK) == 0, "afxdp-bench is built beside the test bundle (swift build --build-tests builds it)")
        let arguments = [
            bench, "tx-only", "--interface", bed.interfaceA, "--namespace", bed.namespaceA, "--peer", bed.interfaceB,
            "--peer-namespace", bed.namespaceB, "--seconds", "30", "--timeout", "40",
        ]
        return try spawnInBackground(arguments)
    }

    func waitForPrograms(on bed: VethTestbed, present: Bool) throws {
        let deadline = Deadline(seconds: 30)
        while !deadline.passed {
            if try hasXDPProgram(bed.interfaceA, namespace: bed.namespaceA) == present,
               try hasXDPProgram(bed.interfaceB, namespace: bed.namespaceB) == present {
                // The bench attaches before it binds its sockets: let it get going.
                usleep(300_000)
                return
            }
            usleep(20_000)
        }
        throw TestFailure("afxdp-bench did not attach its programs within 30 s")
    }

    func readLink(_ path: String) throws -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink(path, &buffer, buffer.count - 1)
        guard count > 0 else { throw TestFailure("readlink \(path) failed") }
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
