import AFXDPSystem
import CAFXDP
#if canImport(Glibc)
import Glibc
#endif

/// What a look at the interface found.
enum LinkReading: Sendable, Equatable {
    /// Up, with carrier: the kernel takes frames from the TX ring.
    case usable
    /// Down, or without carrier (e.g. a veth whose peer is down).
    case down
    /// The interface no longer exists.
    case gone
    /// The look failed for another reason (errno); nothing is concluded.
    case unknown(Int32)
}

/// Reads an interface's link state: a datagram socket made in the
/// interface's namespace, through which the kernel answers device ioctls for
/// that namespace. Made when the port opens (inside the namespace), closed
/// with the port's socket: like any socket it keeps its namespace alive.
final class LinkProbe: @unchecked Sendable {
    // @unchecked: the descriptor is read and closed under `lock`, so a
    // reader on another thread never uses a number the close freed.
    private let lock = PThreadLock()
    private var fd: Int32
    let ifindex: Int32

    /// Call inside the interface's namespace. nil: no socket could be made
    /// (the port then learns of a down link from its kicks alone).
    init?(ifindex: Int32) {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        self.fd = fd
        self.ifindex = ifindex
    }

    deinit { close() }

    func read() -> LinkReading {
        lock.withLock {
            guard fd >= 0 else { return .gone }
            let result = cafxdp_link_usable(fd, ifindex)
            switch result {
            case 1: return .usable
            case 0: return .down
            case -ENODEV, -ENXIO: return .gone
            default: return .unknown(-result)
            }
        }
    }

    /// Idempotent; reads afterwards say `.gone`.
    func close() {
        lock.withLock {
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
        }
    }
}
