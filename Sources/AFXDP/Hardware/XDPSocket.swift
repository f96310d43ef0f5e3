import AFXDPRings
import CAFXDP
#if canImport(Glibc)
import Glibc
#endif

/// The UMEM mapping: the frames every packet lives in. Made once at open;
/// unmapped only when the port object goes away, so that frames the caller
/// still holds after close stay readable until it returns them.
final class UMEMArea: @unchecked Sendable {
    // @unchecked: the mapping is immutable; frames are partitioned by ownership.
    let base: UnsafeMutableRawPointer
    let size: Int

    init(size: Int) throws(AFXDPError) {
        let mapped = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0)
        guard let mapped, mapped != MAP_FAILED else {
            throw .system(operation: "mmap of a \(size)-byte UMEM", errno: errno)
        }
        base = mapped
        self.size = size
    }

    deinit { munmap(base, size) }
}

/// The AF_XDP socket and its UMEM registration: the four rings.
/// Owned by the port's shared region; closed in order (socket, then UMEM).
final class XDPSocket: @unchecked Sendable {
    // @unchecked: created and destroyed under the shared region's lock.
    private var umem: OpaquePointer?
    private var socket: OpaquePointer?
    let rings: UnsafeMutablePointer<cafxdp_rings>
    let fd: Int32
    let zeroCopy: Bool

    var fill: RingMemory { Self.memory(of: rings.pointee.fill) }
    var completion: RingMemory { Self.memory(of: rings.pointee.completion) }
    var rx: RingMemory { Self.memory(of: rings.pointee.rx) }
    var tx: RingMemory { Self.memory(of: rings.pointee.tx) }

    private static func memory(of ring: xsk_ring_prod) -> RingMemory {
        RingMemory(producer: ring.producer, consumer: ring.consumer, flags: ring.flags, entries: ring.ring, size: ring.size)
    }
    private static func memory(of ring: xsk_ring_cons) -> RingMemory {
        RingMemory(producer: ring.producer, consumer: ring.consumer, flags: ring.flags, entries: ring.ring, size: ring.size)
    }

    /// Opens the socket; call inside the target namespace. With zero-copy
    /// `.preferred`, a refusal falls back to copy mode (`zeroCopy` says which).
    init(configuration: PortConfiguration, area: UMEMArea) throws(AFXDPError) {
        let rings = UnsafeMutablePointer<cafxdp_rings>.allocate(capacity: 1)
        rings.initialize(to: cafxdp_rings())
        self.rings = rings
        var attempts: [UInt16]
        let wakeup: UInt16 = configuration.useNeedWakeup ? UInt16(XDP_USE_NEED_WAKEUP) : 0
        switch configuration.zeroCopy {
        case .never: attempts = [UInt16(XDP_COPY)]
        case .preferred: attempts = [UInt16(XDP_ZEROCOPY), UInt16(XDP_COPY)]
        case .required: attempts = [UInt16(XDP_ZEROCOPY)]
        }
        var lastError: Int32 = 0
        // The kernel lets go of a closed socket's queue from a workqueue, a
        // little after close: a bind right after another socket on the same
        // queue closed (a port reopened, a previous process just exited) can
        // find it still taken. Wait that out, briefly, before calling it taken.
        var busyRetriesLeft = 250
        var modes = attempts[...]
        while let mode = modes.first {
            // A failed bind leaves libxdp's UMEM half-used: start over from a fresh one.
            var umem: OpaquePointer?
            var result = cafxdp_umem_create(
                &umem, area.base, UInt64(area.size), configuration.fillRingSize, configuration.completionRingSize,
                UInt32(configuration.frameSize), 0, rings)
            if result != 0 {
                lastError = -result
                if SystemCalls.isPermissionError(lastError) || lastError == ENOBUFS && getuid() != 0 {
                    rings.deallocate()
                    throw .permissionDenied(operation: "registering the UMEM (AF_XDP socket)", errno: lastError)
                }
                rings.deallocate()
                throw .system(operation: "creating the UMEM", errno: lastError)
            }
            var socket: OpaquePointer?
            let queue = configuration.queue, rxSize = configuration.receiveRingSize
            let txSize = configuration.transmitRingSize
            result = configuration.interface.withCString { name in
                cafxdp_socket_create(
                    &socket, name, queue, umem, rxSize, txSize, mode | wakeup, rings)
            }
            if result == 0 {
                self.umem = umem
                self.socket = socket
                fd = xsk_socket__fd(socket)
                zeroCopy = mode == UInt16(XDP_ZEROCOPY)
                return
            }
            lastError = -result
            _ = xsk_umem__delete(umem)
            if SystemCalls.isPermissionError(lastError) { break }
            if lastError == EBUSY, busyRetriesLeft > 0 {
                busyRetriesLeft -= 1
                usleep(2_000)
                continue
            }
            if mode == UInt16(XDP_ZEROCOPY), lastError == EOPNOTSUPP || lastError == EINVAL || lastError == EPROTONOSUPPORT {
                modes = modes.dropFirst()
                continue
            }
            break
        }
        rings.deallocate()
        if SystemCalls.isPermissionError(lastError) {
            throw .permissionDenied(operation: "binding the AF_XDP socket", errno: lastError)
        }
        if configuration.zeroCopy == .required, lastError == EOPNOTSUPP || lastError == EINVAL || lastError == EPROTONOSUPPORT {
            throw .zeroCopyUnsupported(interface: configuration.interface)
        }
        if lastError == EBUSY {
            throw .system(
                operation: "binding to \(configuration.interface) queue \(configuration.queue) (another AF_XDP socket holds it)",
                errno: lastError)
        }
        throw .system(operation: "binding the AF_XDP socket to \(configuration.interface) queue \(configuration.queue)", errno: lastError)
    }

    func statistics() -> KernelSocketStatistics {
        var raw = xdp_statistics()
        guard socket != nil, cafxdp_statistics(fd, &raw) == 0 else { return KernelSocketStatistics() }
        return KernelSocketStatistics(
            receiveDropped: Int(raw.rx_dropped), receiveInvalidDescriptors: Int(raw.rx_invalid_descs),
            transmitInvalidDescriptors: Int(raw.tx_invalid_descs), receiveRingFull: Int(raw.rx_ring_full),
            fillRingEmpty: Int(raw.rx_fill_ring_empty_descs), transmitRingEmpty: Int(raw.tx_ring_empty_descs))
    }

    /// Socket first, then the UMEM: the socket holds the UMEM.
    func close() {
        if let socket { xsk_socket__delete(socket) }
        socket = nil
        if let umem { _ = xsk_umem__delete(umem) }
        umem = nil
    }

    deinit {
        close()
        rings.deallocate()
    }
}
