// Writes the test frames it receives to a pcapng file that tcpdump, tshark
// and Wireshark read: a section header, one Ethernet interface, and an
// enhanced packet block per frame with its arrival time in microseconds.
// Each list goes back to the port as soon as its frames are written.
//
//   capture veth1 --namespace ns-b --output frames.pcapng --count 1000
//   tcpdump -r frames.pcapng

import AFXDP
import ExampleSupport
import Foundation  // beside AFXDP on purpose: no name clashes (the engine's port is XDPPort)
import Synchronization

let arguments = Arguments.parse(usage: "capture <interface> --output FILE [--namespace NS] [--count N] [--seconds S]")
guard let path = arguments.output else {
    say("error: name the file to write with --output FILE\nusage: capture <interface> --output FILE [--namespace NS] [--count N] [--seconds S]")
    exit(2)
}
stopOnSignals()

/// A pcapng file being written (little endian, as the blocks say with
/// their byte-order magic).
struct PcapngFile: ~Copyable {
    let file: UnsafeMutablePointer<FILE>
    var frames = 0
    var bytes: [UInt8] = []

    init(path: String) throws {
        guard let file = fopen(path, "wb") else {
            throw CaptureError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
        self.file = file
        bytes.reserveCapacity(2048)
        // Section header block: type, length, byte-order magic, version 1.0, section length unknown.
        block(type: 0x0A0D_0D0A) { body in
            body.append32(0x1A2B_3C4D)
            body.append16(1)
            body.append16(0)
            body.append64(UInt64.max)
        }
        // Interface description block: Ethernet (link type 1), no snap length limit.
        block(type: 1) { body in
            body.append16(1)
            body.append16(0)
            body.append32(0)
        }
    }

    /// One frame, stamped with the time it was written (microseconds since 1970).
    mutating func write(_ frame: UnsafeRawBufferPointer, microseconds: UInt64) {
        block(type: 6) { body in
            body.append32(0)  // interface 0
            body.append32(UInt32(truncatingIfNeeded: microseconds >> 32))
            body.append32(UInt32(truncatingIfNeeded: microseconds))
            body.append32(UInt32(frame.count))  // captured
            body.append32(UInt32(frame.count))  // on the wire
            body.append(contentsOf: frame)
            while body.count % 4 != 0 { body.append(0) }
        }
        frames += 1
    }

    /// type, total length, body, total length again.
    private mutating func block(type: UInt32, _ body: (inout [UInt8]) -> Void) {
        bytes.removeAll(keepingCapacity: true)
        bytes.append32(type)
        bytes.append32(0)
        body(&bytes)
        let total = UInt32(bytes.count + 4)
        bytes.append32(total)
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: total.littleEndian, toByteOffset: 4, as: UInt32.self) }
        _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
    }

    consuming func close() -> Bool {
        fclose(file) == 0
    }
}

struct CaptureError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

extension [UInt8] {
    mutating func append16(_ value: UInt16) { Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) } }
    mutating func append32(_ value: UInt32) { Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) } }
    mutating func append64(_ value: UInt64) { Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) } }
}

let capture: Mutex<PcapngFile>
do {
    capture = Mutex(try PcapngFile(path: path))
} catch {
    exitWith(error)
}
let captured = Atomic<Int>(0)

let port: XDPPort
do {
    port = try XDPPort.open(
        arguments.configuration,
        onReceive: { indication in
            var time = timespec()
            clock_gettime(CLOCK_REALTIME, &time)
            let microseconds = UInt64(time.tv_sec) * 1_000_000 + UInt64(time.tv_nsec) / 1000
            capture.withLock { file in
                try? indication.list.packets.forEach { packet throws(AFXDPError) in
                    file.write(UnsafeRawBufferPointer(try packet.bytes), microseconds: microseconds)
                }
                captured.store(file.frames, ordering: .relaxed)
            }
            try? indication.port.returnList(indication.list)  // written: the frames go back to the fill ring
        },
        onSendComplete: { batch in for list in batch { try? batch.port.returnList(list) } })
} catch {
    exitWith(error)
}

say("ready: capturing test frames on \(arguments.interface) to \(path)")
let deadline = now() + arguments.seconds
while captured.load(ordering: .relaxed) < arguments.count, now() < deadline, !stopRequested {
    if !port.poll() { usleep(20) }
}
port.close()
let frames = captured.load(ordering: .relaxed)
let closed = capture.withLock { file in fflush(file.file) == 0 }
say("captured \(frames) frames to \(path)")
exit(frames >= arguments.count && closed ? 0 : 1)
