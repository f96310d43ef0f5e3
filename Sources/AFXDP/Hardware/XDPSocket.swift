import AFXDPRings
import CAFXDP
#if canImport(Glibc)
import Glibc
#endif

/// The memory a UMEM's frames live in: an anonymous mapping, made once with
/// the UMEM and unmapped only when the last handle into it is gone, so that
/// frames a caller still holds stay readable after every port has closed.
final class UMEMArea: @unchecked Sendable {
    // @unchecked: the mapping is immutable; frames are partitioned by ownership.
    let base: UnsafeMutableRawPointer
    let size: Int

    init(size: Int) throws(AFXDPError) {
        let mapped = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0)
        guard let mapped, mapped != MAP_FAILED else {
            let code = errno
            throw code == ENOMEM
                ? .invalidConfiguration("a UMEM of \(size) bytes does not fit in memory; use fewer or smaller frames")
                : .system(operation: "mmap of a \(size)-byte UMEM", errno: code)
        }
        base = mapped
        self.size = size
    }

    deinit { munmap(base, size) }
}

/// The UMEM as the kernel knows it: registered (XDP_UMEM_REG) by libxdp
/// (`xsk_umem`) for the first socket bound to it. libxdp makes that first
/// socket on the registration's own file descriptor, so the first socket
/// (the anchor) stays open, and its queue held, until the registration goes:
/// when the last socket on the UMEM closes. Every later socket shares the
/// UMEM (XDP_SHARED_UMEM) and takes the anchor's mode: copy or zero-copy,
/// need-wakeup or not, and its fill and completion ring sizes.
///
/// Guarded by `UMEM.registrationLock`.
final class UMEMRegistration {
    let handle: OpaquePointer
    let fillRingSize: UInt32
    let completionRingSize: UInt32
    let zeroCopy: Bool
    let needWakeup: Bool
    /// The (namespace, interface index, queue) of every socket open on it.
    var bindings: Set<Binding> = []

    struct Binding: Hashable {
        var namespace: String?
        var ifindex: Int32
        var queue: UInt32
    }

    init(handle: OpaquePointer, configuration: PortConfiguration, zeroCopy: Bool) {
        self.handle = handle
        fillRingSize = configuration.fillRingSize
        completionRingSize = configuration.completionRingSize
        self.zeroCopy = zeroCopy
        needWakeup = configuration.useNeedWakeup
    }
}

/// An AF_XDP socket on one interface queue, bound to a UMEM: its four rings
/// (RX and TX its own; fill and completion those of its (interface, queue)).
/// Owned by the port's shared region; closed in order (socket, then the
/// registration if it was the last).
final class XDPSocket: @unchecked Sendable {
    // @unchecked: created and destroyed under the UMEM's registration lock.
    private let umem: UMEM
    private var socket: OpaquePointer?
    private let binding: UMEMRegistration.Binding
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

    /// Opens the socket; call inside the interface's namespace. The first
    /// socket on a UMEM registers it; with zero-copy `.preferred`, a refusal
    /// falls back to copy mode (`zeroCopy` says which). A later socket shares
    /// the UMEM and must agree with the first on what the kernel makes them share.
    init(configuration: PortConfiguration, ifindex: Int32, umem: UMEM) throws(AFXDPError) {
        // Another process on the interface holds its queues: say so, before
        // a bind that would only say "busy".
        try XDPProgram.refuseIfInUse(interface: configuration.interface, ifindex: ifindex, namespace: configuration.networkNamespace)
        let rings = UnsafeMutablePointer<cafxdp_rings>.allocate(capacity: 1)
        rings.initialize(to: cafxdp_rings())
        let binding = UMEMRegistration.Binding(
            namespace: configuration.networkNamespace, ifindex: ifindex, queue: configuration.queue)
        do throws(AFXDPError) {
            let (socket, zeroCopy) = try umem.registrationLock.withLock { () throws(AFXDPError) -> (OpaquePointer, Bool) in
                guard !umem.isClosedLocked else { throw .umemClosed }
                if let registration = umem.registration {
                    try Self.checkSharing(configuration, registration, binding)
                    let socket = try Self.openShared(configuration, registration, rings)
                    registration.bindings.insert(binding)
                    return (socket, registration.zeroCopy)
                }
                let (handle, socket, zeroCopy) = try Self.openFirst(configuration, umem, rings)
                let registration = UMEMRegistration(handle: handle, configuration: configuration, zeroCopy: zeroCopy)
                registration.bindings.insert(binding)
                umem.registration = registration
                return (socket, zeroCopy)
            }
            self.socket = socket
            self.zeroCopy = zeroCopy
            fd = xsk_socket__fd(socket)
        } catch {
            rings.deallocate()
            throw error
        }
        self.umem = umem
        self.binding = binding
        self.rings = rings
    }

    /// What every socket on one UMEM must agree on.
    private static func checkSharing(
        _ configuration: PortConfiguration, _ registration: UMEMRegistration, _ binding: UMEMRegistration.Binding
    ) throws(AFXDPError) {
        guard !configuration.multiBuffer else {
            throw .invalidConfiguration(
                "multiBuffer is for a port with a UMEM of its own (the kernel takes XDP_USE_SG only on the socket that "
                    + "registers the UMEM); open this port without a shared UMEM, or without multiBuffer")
        }
        guard !registration.bindings.contains(binding) else {
            throw .invalidConfiguration(
                "a port on this UMEM is already bound to \(configuration.interface) queue \(configuration.queue); "
                    + "each interface queue takes one port (the queue of a closed first port stays held until the UMEM's last port closes)")
        }
        guard configuration.fillRingSize == registration.fillRingSize,
            configuration.completionRingSize == registration.completionRingSize
        else {
            throw .invalidConfiguration(
                "ports on one UMEM share its fill and completion ring sizes: this UMEM's are \(registration.fillRingSize) "
                    + "and \(registration.completionRingSize); give this port the same fillRingSize and completionRingSize")
        }
        guard configuration.useNeedWakeup == registration.needWakeup else {
            throw .invalidConfiguration(
                "ports on one UMEM share the first port's need-wakeup mode (\(registration.needWakeup)); "
                    + "set useNeedWakeup = \(registration.needWakeup) on this port too")
        }
        if configuration.zeroCopy == .required && !registration.zeroCopy {
            throw .invalidConfiguration(
                "ports on one UMEM share the first port's mode, and it runs in copy mode; "
                    + "use zeroCopy: .preferred, or open the UMEM's first port with zero-copy")
        }
        if configuration.zeroCopy == .never && registration.zeroCopy {
            throw .invalidConfiguration(
                "ports on one UMEM share the first port's mode, and it runs in zero-copy mode; use zeroCopy: .preferred")
        }
    }

    /// The first socket: registers the UMEM (a fresh registration for each
    /// attempt: a failed bind leaves libxdp's half used) and binds it.
    private static func openFirst(
        _ configuration: PortConfiguration, _ umem: UMEM, _ rings: UnsafeMutablePointer<cafxdp_rings>
    ) throws(AFXDPError) -> (OpaquePointer, OpaquePointer, Bool) {
        let wakeup: UInt16 = configuration.useNeedWakeup ? UInt16(XDP_USE_NEED_WAKEUP) : 0
        let multiBuffer: UInt16 = configuration.multiBuffer ? UInt16(CAFXDP_BIND_USE_SG) : 0
        let attempts: [UInt16]
        switch configuration.zeroCopy {
        case .never: attempts = [UInt16(XDP_COPY)]
        case .preferred: attempts = [UInt16(XDP_ZEROCOPY), UInt16(XDP_COPY)]
        case .required: attempts = [UInt16(XDP_ZEROCOPY)]
        }
        var lastError: Int32 = 0
        var busy = BusyRetries()
        var modes = attempts[...]
        while let mode = modes.first {
            var handle: OpaquePointer?
            var result = cafxdp_umem_create(
                &handle, umem.area.base, UInt64(umem.area.size), configuration.fillRingSize, configuration.completionRingSize,
                UInt32(umem.frameSize), UInt32(umem.headroom), rings)
            if result != 0 {
                lastError = -result
                // ENOBUFS: the kernel could not lock the UMEM's pages, which
                // takes CAP_IPC_LOCK or room under RLIMIT_MEMLOCK (root too).
                if lastError == ENOBUFS {
                    throw .permissionDenied(
                        operation: "locking the UMEM's \(umem.area.size >> 20) MiB of memory (registering it with the kernel)",
                        errno: lastError)
                }
                if SystemCalls.isPermissionError(lastError) {
                    throw .permissionDenied(operation: "registering the UMEM (AF_XDP socket)", errno: lastError)
                }
                throw .system(operation: "registering the UMEM", errno: lastError)
            }
            var socket: OpaquePointer?
            let queue = configuration.queue, rxSize = configuration.receiveRingSize
            let txSize = configuration.transmitRingSize
            result = configuration.interface.withCString { name in
                cafxdp_socket_create(&socket, name, queue, handle, rxSize, txSize, mode | wakeup | multiBuffer, rings)
            }
            if result == 0, let socket, let handle {
                return (handle, socket, mode == UInt16(XDP_ZEROCOPY))
            }
            lastError = -result
            _ = xsk_umem__delete(handle)
            if SystemCalls.isPermissionError(lastError) { break }
            if lastError == EBUSY, busy.again() { continue }
            if mode == UInt16(XDP_ZEROCOPY), lastError == EOPNOTSUPP || lastError == EINVAL || lastError == EPROTONOSUPPORT {
                modes = modes.dropFirst()
                continue
            }
            break
        }
        if configuration.zeroCopy == .required, lastError == EOPNOTSUPP || lastError == EINVAL || lastError == EPROTONOSUPPORT {
            throw .zeroCopyUnsupported(interface: configuration.interface)
        }
        throw bindError(configuration, lastError)
    }

    /// A later socket: shares the registered UMEM.
    private static func openShared(
        _ configuration: PortConfiguration, _ registration: UMEMRegistration, _ rings: UnsafeMutablePointer<cafxdp_rings>
    ) throws(AFXDPError) -> OpaquePointer {
        var busy = BusyRetries()
        while true {
            var socket: OpaquePointer?
            let queue = configuration.queue, rxSize = configuration.receiveRingSize
            let txSize = configuration.transmitRingSize
            let result = configuration.interface.withCString { name in
                cafxdp_socket_create_shared(&socket, name, queue, registration.handle, rxSize, txSize, rings)
            }
            if result == 0, let socket { return socket }
            if -result == EBUSY, busy.again() { continue }
            throw bindError(configuration, -result)
        }
    }

    private static func bindError(_ configuration: PortConfiguration, _ error: Int32) -> AFXDPError {
        if SystemCalls.isPermissionError(error) {
            return .permissionDenied(operation: "binding the AF_XDP socket", errno: error)
        }
        if error == EBUSY {
            return .system(
                operation: "binding to \(configuration.interface) queue \(configuration.queue) (another AF_XDP socket holds it)",
                errno: error)
        }
        if error == EINVAL {
            let count = configuration.interface.withCString { cafxdp_queue_count($0) }
            if count > 0, configuration.queue >= UInt32(count) {
                return .invalidConfiguration(
                    "queue \(configuration.queue) does not exist on \(configuration.interface), which has \(count) queue(s): "
                        + "use a queue from 0 to \(count - 1), or give the interface more (`ethtool -L \(configuration.interface) ...`)")
            }
        }
        return .system(operation: "binding the AF_XDP socket to \(configuration.interface) queue \(configuration.queue)", errno: error)
    }

    /// The kernel lets go of a closed socket's queue from a workqueue, a
    /// little after close: a bind right after another socket on the same
    /// queue closed (a port reopened, a previous process just exited) can
    /// find it still taken. Waits that out, briefly, before calling it taken.
    private struct BusyRetries {
        var left = 250
        mutating func again() -> Bool {
            guard left > 0 else { return false }
            left -= 1
            usleep(2_000)
            return true
        }
    }

    func statistics() -> KernelSocketStatistics {
        var raw = xdp_statistics()
        guard socket != nil, cafxdp_statistics(fd, &raw) == 0 else { return KernelSocketStatistics() }
        return KernelSocketStatistics(
            receiveDropped: Int(raw.rx_dropped), receiveInvalidDescriptors: Int(raw.rx_invalid_descs),
            transmitInvalidDescriptors: Int(raw.tx_invalid_descs), receiveRingFull: Int(raw.rx_ring_full),
            fillRingEmpty: Int(raw.rx_fill_ring_empty_descs), transmitRingEmpty: Int(raw.tx_ring_empty_descs))
    }

    /// Socket first, then the registration if this was its last socket.
    func close() {
        umem.registrationLock.withLock {
            guard let socket else { return }
            xsk_socket__delete(socket)
            self.socket = nil
            guard let registration = umem.registration else { return }
            registration.bindings.remove(binding)
            if registration.bindings.isEmpty {
                _ = xsk_umem__delete(registration.handle)
                umem.registration = nil
            }
        }
    }

    deinit {
        close()
        rings.deallocate()
    }
}
