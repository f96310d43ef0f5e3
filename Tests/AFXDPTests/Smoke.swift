import AFXDP
import AFXDPTestbed
import Testing
import Glibc
import Synchronization

@Test func smokeSendAndReceive() throws {
    try VethTestbed.withVethTestbed { bed in
        let received = Mutex<[UInt64]>([])
        let completed = Mutex<Int>(0)
        var configA = PortConfiguration(interface: bed.interfaceA, networkNamespace: bed.namespaceA)
        configA.etherTypeFilter = TestFrame.etherType
        var configB = PortConfiguration(interface: bed.interfaceB, networkNamespace: bed.namespaceB)
        configB.etherTypeFilter = TestFrame.etherType
        let a = try Port.open(configA, onReceive: { try? $0.port.returnList($0.list) }, onSendComplete: { batch in
            completed.withLock { $0 += batch.count }
        })
        let b = try Port.open(configB, onReceive: { indication in
            for packet in indication.list.packets {
                if let parsed = TestFrame.parse(UnsafeRawBufferPointer(packet.bytes)) {
                    received.withLock { $0.append(parsed.sequence) }
                }
            }
            try? indication.port.returnList(indication.list)
        }, onSendComplete: { _ in })
        print("notes A:", a.notes, "B:", b.notes)
        for i in 0..<10 {
            let list = a.allocateList(packetCount: 4)!
            var seq = UInt64(i * 4)
            for packet in list.packets {
                TestFrame.write(into: packet.buffer, length: 64, sequence: seq, source: bed.macAddressA, destination: bed.macAddressB)
                try packet.setLength(64)
                seq += 1
            }
            try a.send(list)
        }
        for _ in 0..<2000 {
            a.poll(); b.poll()
            if received.withLock({ $0.count }) >= 40 { break }
            usleep(100)
        }
        print("received", received.withLock { $0 }, "completed", completed.withLock { $0 })
        print(a.statistics, b.statistics)
        a.close(); b.close()
        #expect(received.withLock { $0 } == Array(0..<40))
    }
}
