// What the device benchmarks drive: ports on the two ends of a veth pair, the
// handlers they run, and the fixed-size buffers those handlers use. Everything
// is made in a benchmark's setup; nothing here allocates once traffic runs.

import AFXDP
import AFXDPTestbed
#if canImport(Glibc)
import Glibc
#endif

/// A fixed-capacity FIFO of list handles, allocated once. The completion
/// handler copies completed lists into one (a `SendCompletions` batch is only
/// valid during the call); the sender takes them out to send again.
///
/// Single thread: the benchmark's loop and the handlers it runs through
/// `XDPPort.send` and `XDPPort.poll` are on one thread.
final class ListBuffer: @unchecked Sendable {
    // @unchecked: touched by one thread only (see above).
    private let storage: UnsafeMutablePointer<PacketList>
    let capacity: Int
    private(set) var count = 0

    init(capacity: Int) {
        storage = .allocate(capacity: capacity)
        self.capacity = capacity
    }

    deinit {
        storage.deinitialize(count: count)
        storage.deallocate()
    }

    @inline(__always)
    func append(_ list: PacketList) {
        precondition(count < capacity, "more lists completed than were sent")
        (storage + count).initialize(to: list)
        count += 1
    }

    @inline(__always)
    subscript(index: Int) -> PacketList {
        precondition(index >= 0 && index < count)
        return storage[index]
    }

    /// Moves every list of `other` to the end of this buffer, in order.
    func takeAll(from other: ListBuffer) {
        precondition(count + other.count <= capacity)
        (storage + count).moveInitialize(from: other.storage, count: other.count)
        count += other.count
        other.count = 0
    }

    func removeAll() {
        storage.deinitialize(count: count)
        count = 0
    }
}

/// One end of the veth pair: its port (absent for the receive benchmark's
/// sending end), and what its handlers record.
final class Endpoint: @unchecked Sendable {
    // @unchecked: the port's handlers run on the benchmark's thread, inside
    // `send` and `poll`; nothing else touches these fields while traffic runs.
    let interface: String
    let namespace: String
    let macAddress: MACAddress
    /// Set once the port is open; nil again after `close()`.
    private(set) var port: XDPPort?

    /// Lists the port has completed and not yet taken out for sending (when
    /// `keepsCompletedLists`; otherwise the handler returns them to the pool).
    let completed: ListBuffer
    let keepsCompletedLists: Bool
    /// Lists completed so far.
    private(set) var completedLists = 0
    /// Lists being sent in the current round.
    let inFlight: ListBuffer
    /// What arrived so far (every frame checked, then its list returned).
    private(set) var flow = FlowCheck()
    var receivedPackets: Int { flow.packets }
    /// The next sequence number this end sends.
    var nextSequenceToSend: UInt64 = 0

    init(interface: String, namespace: String, macAddress: MACAddress, listCapacity: Int, keepsCompletedLists: Bool = true) {
        self.interface = interface
        self.namespace = namespace
        self.macAddress = macAddress
        self.keepsCompletedLists = keepsCompletedLists
        completed = ListBuffer(capacity: listCapacity)
        inFlight = ListBuffer(capacity: listCapacity)
    }

    /// Opens the port with the test EtherType filter. The handlers are made
    /// here, once: they capture this object (unowned: the port must not keep
    /// its endpoint alive) and nothing made per call.
    func open() throws {
        var configuration = PortConfiguration(interface: interface, networkNamespace: namespace)
        configuration.etherTypeFilter = TestFrame.etherType
        port = try XDPPort.open(
            configuration,
            onReceive: { [unowned self] indication in self.receive(indication) },
            onSendComplete: { [unowned self] batch in self.complete(batch) })
    }

    /// The completion handler: copies the handles out (the batch is only
    /// valid during the call), or gives the lists back to the pool.
    @inline(__always)
    private func complete(_ batch: SendCompletions) {
        completedLists += batch.count
        if keepsCompletedLists {
            for list in batch { completed.append(list) }
        } else {
            for list in batch {
                do {
                    try batch.port.returnList(list)
                } catch {
                    fatalError("returnList failed: \(error)")
                }
            }
        }
    }

    /// The receive handler: checks each frame's sequence number and payload,
    /// then returns the list at once.
    @inline(__always)
    private func receive(_ indication: ReceiveIndication) {
        do {
            try indication.list.packets.forEach { packet throws(AFXDPError) in
                _ = flow.check(UnsafeRawBufferPointer(try packet.bytes))
            }
            try indication.port.returnList(indication.list)
        } catch {
            fatalError("an indicated list was not the caller's: \(error)")
        }
    }

    /// Allocates lists of the given sizes, sets their packets' lengths (each
    /// round writes the frames again before sending) and leaves them in
    /// `completed`, ready for the first round.
    func prepareLists(sizes: [Int], frameLength: Int, destination: MACAddress) throws {
        guard let port else { preconditionFailure("open the port first") }
        for size in sizes {
            guard let list = try port.allocateList(packetCount: size) else {
                throw BenchmarkSetupError("the send pool of \(interface) has no list of \(size) packets")
            }
            try write(list, frameLength: frameLength, destination: destination)
            completed.append(list)
        }
        nextSequenceToSend = 0
    }

    /// Writes a test frame into each packet, with this end's next sequence numbers.
    @inline(__always)
    func write(_ list: PacketList, frameLength: Int, destination: MACAddress) throws(AFXDPError) {
        try TestFrame.fill(
            list, length: frameLength, firstSequence: nextSequenceToSend,
            source: macAddress, destination: destination)
        nextSequenceToSend &+= UInt64(try list.count)
    }

    /// Closes the port. Lists still held here go back to it first.
    func close() {
        guard let port else { return }
        for index in 0..<completed.count { try? port.returnList(completed[index]) }
        completed.removeAll()
        inFlight.removeAll()
        port.close()
        self.port = nil
    }
}

struct BenchmarkSetupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
