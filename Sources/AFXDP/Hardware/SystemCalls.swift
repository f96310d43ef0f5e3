import CAFXDP
#if canImport(Glibc)
import Glibc
#endif

/// The few system calls the engine makes itself, each reading errno at once.
/// `@inline(never)` keeps the errno read next to the call that set it.
enum SystemCalls {
    /// What a TX kick told us.
    enum KickResult {
        /// The kernel took every descriptor it could.
        case done
        /// The kernel stopped early (its batch limit or a busy device): kick again.
        case again
        /// A transient refusal (ENOBUFS): try on a later pass.
        case later
        /// EBUSY: the kernel took a frame and dropped it (copy mode: the
        /// device is not running or has no carrier), and completed it.
        case dropped
        /// ENETDOWN: the interface is down; the kernel took nothing.
        case interfaceDown
        /// Anything else; counted, not thrown.
        case failed(Int32)
    }

    /// Asks the kernel to process the TX ring (copy mode moves only on a kick).
    @inline(never)
    static func kickTransmit(_ fd: Int32) -> KickResult {
        while true {
            if sendto(fd, nil, 0, Int32(MSG_DONTWAIT), nil, 0) >= 0 { return .done }
            switch errno {
            case EINTR: continue
            case EAGAIN: return .again
            case ENOBUFS: return .later
            case EBUSY: return .dropped
            case ENETDOWN: return .interfaceDown
            case let error: return .failed(error)
            }
        }
    }

    /// Wakes the kernel's receive side when the fill ring asks for it.
    @inline(never)
    static func wakeReceive(_ fd: Int32) {
        _ = recvfrom(fd, nil, 0, Int32(MSG_DONTWAIT), nil, nil)
    }

    /// The socket's pending error (SO_ERROR, which reading clears); 0: none.
    /// The kernel sets ENETDOWN on an AF_XDP socket whose device is unregistered.
    @inline(never)
    static func pendingError(_ fd: Int32) -> Int32 {
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 else { return 0 }
        return error
    }

    /// Waits up to `milliseconds` for the socket to become readable.
    @inline(never)
    static func waitReadable(_ fd: Int32, milliseconds: Int32) {
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        _ = poll(&descriptor, 1, milliseconds)
    }

    @inline(never)
    static func setSocketOption(_ fd: Int32, _ option: Int32, _ value: Int32, name: String) throws(AFXDPError) {
        var value = value
        if setsockopt(fd, SOL_SOCKET, option, &value, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            throw AFXDPError.system(operation: "setsockopt(\(name))", errno: errno)
        }
    }

    static func isPermissionError(_ error: Int32) -> Bool {
        error == EPERM || error == EACCES
    }
}
