// The traffic source of the receive benchmark: a plain AF_PACKET socket on
// end A. With it, the only AF_XDP code in the process is the receiving port's,
// so the allocations measured are the receive path's alone.

import AFXDPTestbed
#if canImport(Glibc)
import Glibc
#endif

/// Sends test frames out of one interface with `send(2)`, one frame per call,
/// from a buffer made once.
final class PacketSocketSender: @unchecked Sendable {
    // @unchecked: used by the benchmark's thread only.
    private let fd: Int32
    private let frame: UnsafeMutableRawBufferPointer
    let frameLength: Int
    let source: MACAddress
    let destination: MACAddress
    private(set) var nextSequence: UInt64 = 0

    /// Opens the socket inside `namespace` (it stays there) and binds it to
    /// `interfaceIndex`. Protocol 0: the socket receives nothing.
    init(namespace: String, interfaceIndex: Int32, frameLength: Int, source: MACAddress, destination: MACAddress) throws {
        let fd = try NetworkNamespace.withEntered(namespace) {
            socket(AF_PACKET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        guard fd >= 0 else {
            throw BenchmarkSetupError("socket(AF_PACKET, SOCK_RAW) failed: \(String(cString: strerror(errno)))")
        }
        // struct sockaddr_ll (linux/if_packet.h), which the Glibc module does
        // not show: family, protocol, ifindex; the rest stays zero.
        var address = [UInt8](repeating: 0, count: 20)
        address.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: UInt16(AF_PACKET), toByteOffset: 0, as: UInt16.self)
            raw.storeBytes(of: UInt16(0), toByteOffset: 2, as: UInt16.self)
            raw.storeBytes(of: interfaceIndex, toByteOffset: 4, as: Int32.self)
        }
        let bound = address.withUnsafeBytes { raw in
            bind(fd, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count))
        }
        guard bound == 0 else {
            let message = String(cString: strerror(errno))
            Glibc.close(fd)
            throw BenchmarkSetupError("bind(AF_PACKET) to interface \(interfaceIndex) failed: \(message)")
        }
        self.fd = fd
        frame = .allocate(byteCount: frameLength, alignment: 64)
        self.frameLength = frameLength
        self.source = source
        self.destination = destination
    }

    deinit {
        Glibc.close(fd)
        frame.deallocate()
    }

    /// Sends `count` frames with consecutive sequence numbers. Returns how many
    /// went out; fewer when the kernel pushes back (ENOBUFS, EAGAIN): the
    /// caller lets the receiver catch up and sends the rest.
    @inline(__always)
    func send(_ count: Int) -> Int {
        var sent = 0
        while sent < count {
            TestFrame.write(
                into: frame, length: frameLength, sequence: nextSequence, source: source, destination: destination)
            let result = Glibc.send(fd, frame.baseAddress, frameLength, Int32(MSG_DONTWAIT))
            if result < 0 {
                if errno == EINTR { continue }
                return sent
            }
            nextSequence &+= 1
            sent += 1
        }
        return sent
    }
}
