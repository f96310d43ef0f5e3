#if canImport(Glibc)
import Glibc
#endif

/// Everything the engine can refuse, each with what to do about it
/// (`description`), and whose doing it was (`origin`).
///
/// Errors caused by the environment (a missing interface, missing privileges,
/// the kernel refusing) and by the caller (a ring size that is not a power of
/// two, an oversized frame, a list returned twice) are thrown; either way
/// nothing was changed and nothing is lost. The engine never throws for lack
/// of ring slots or frames on the send path: it queues instead.
public enum AFXDPError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A configuration value is out of range; the message says which and why.
    case invalidConfiguration(String)
    /// No interface of that name in the namespace the port opens in.
    case interfaceNotFound(interface: String, namespace: String?)
    /// The network namespace named in the configuration does not exist.
    case namespaceNotFound(String)
    /// The process lacks a capability the operation needs.
    case permissionDenied(operation: String, errno: Int32)
    /// Another XDP program (not this engine's) is attached to the interface.
    /// The engine never touches it. (This engine's own program, left by a
    /// process that died, is replaced without asking.)
    case xdpProgramAlreadyAttached(interface: String, programID: UInt32, namespace: String?)
    /// Another live process of this engine has its XDP program on the
    /// interface: an interface's ports share one program, so they live in
    /// one process.
    case interfaceInUse(interface: String, namespace: String?, pid: Int32, command: String)
    /// Zero-copy was required but the driver cannot do it.
    case zeroCopyUnsupported(interface: String)
    /// A system or library call failed; `operation` names it.
    case system(operation: String, errno: Int32)
    /// The XDP program failed to load; `log` holds libbpf's explanation.
    case programLoadFailed(errno: Int32, log: String)
    /// A frame's length exceeds what one UMEM frame can hold.
    case frameTooLarge(length: Int, maximum: Int)
    /// A list with a packet whose length was never set cannot be sent.
    case emptyFrame
    /// A packet length below 1 byte.
    case invalidFrameLength(Int)
    /// A list of this many packets can never be allocated (below 1, or more
    /// than the send pool holds).
    case invalidPacketCount(requested: Int, maximum: Int)
    /// An 802.1p priority outside 0...7.
    case priorityOutOfRange(Int)
    /// The list handle is stale: it was returned (or freed) already.
    case listAlreadyReturned
    /// The list is in the engine's hands (queued or in flight), not the caller's.
    case listNotOwnedByCaller
    /// The list belongs to a port on another UMEM.
    case foreignList
    /// The UMEM was closed: no port may open on it any more.
    case umemClosed
    /// The UMEM has too few frames left for the port.
    case umemExhausted(needed: Int, available: Int)
    /// The port is closed.
    case portClosed
    /// The list's last entry is marked `continues`: its packet never ends.
    case unfinishedPacket
    /// A packet of the list spans frames (multi-buffer) on a port opened without `multiBuffer`.
    case multiBufferNotEnabled(interface: String)

    /// Whose doing an error was, and so who can fix it.
    public enum Origin: Sendable, Equatable {
        /// The system the engine runs on: an interface, a namespace or a
        /// privilege missing, the kernel or the driver refusing, another
        /// program in the way. The same call fails the same way until the
        /// environment changes (or the configuration is made to fit it).
        case environment
        /// The caller: a value out of range, or a handle used against the
        /// contract (returned twice, sent while in flight, on another UMEM).
        /// Fix the call; the engine changed nothing.
        case caller
        /// The port or UMEM was closed (by the caller, or by the port itself
        /// when its device went away): open a new one.
        case closed
    }

    /// Whose doing the error was.
    public var origin: Origin {
        switch self {
        case .interfaceNotFound, .namespaceNotFound, .permissionDenied, .xdpProgramAlreadyAttached, .interfaceInUse,
            .zeroCopyUnsupported, .system, .programLoadFailed:
            return .environment
        case .invalidConfiguration, .frameTooLarge, .emptyFrame, .invalidFrameLength, .invalidPacketCount, .priorityOutOfRange,
            .listAlreadyReturned, .listNotOwnedByCaller, .foreignList, .umemExhausted, .unfinishedPacket, .multiBufferNotEnabled:
            return .caller
        case .portClosed, .umemClosed:
            return .closed
        }
    }

    /// What went wrong and, where there is one, what to do about it.
    public var description: String {
        switch self {
        case .invalidConfiguration(let message):
            return "invalid configuration: \(message)"
        case .interfaceNotFound(let interface, let namespace):
            let place = namespace.map { "network namespace '\($0)'" } ?? "this network namespace"
            return "no interface named '\(interface)' in \(place); list interfaces with `ip link`"
                + (namespace.map { " (or `ip -n \($0) link`)" } ?? "") + " and check the name"
        case .namespaceNotFound(let name):
            return "no network namespace named '\(name)'; list them with `ip netns list`"
        case .permissionDenied(let operation, let errno):
            // Entering another network namespace (setns) takes CAP_SYS_ADMIN as well.
            let namespace = operation.hasPrefix("entering network namespace")
            if errno == ENOBUFS {
                return "\(operation) was refused (\(String(cString: strerror(errno)))): the UMEM's memory stays locked, "
                    + "which needs CAP_IPC_LOCK, or a memory-lock limit (`ulimit -l`, RLIMIT_MEMLOCK) larger than the UMEM; "
                    + "run as root with CAP_IPC_LOCK, grant it with `setcap cap_net_raw,cap_net_admin,cap_bpf,cap_ipc_lock+ep <binary>`, "
                    + "raise the limit, or make the UMEM smaller (fewer or smaller frames)"
            }
            return "\(operation) was refused (\(String(cString: strerror(errno)))): AF_XDP needs "
                + "CAP_NET_RAW, CAP_NET_ADMIN, CAP_BPF and CAP_IPC_LOCK (or CAP_SYS_ADMIN)"
                + (namespace ? ", and entering a network namespace CAP_SYS_ADMIN" : "") + "; run as root, "
                + "or grant them with `setcap cap_net_raw,cap_net_admin,cap_bpf,cap_ipc_lock"
                + (namespace ? ",cap_sys_admin" : "") + "+ep <binary>`"
        case .xdpProgramAlreadyAttached(let interface, let id, let namespace):
            // The commands as they can be pasted: in the interface's namespace.
            let ip = namespace.map { "ip -n \($0)" } ?? "ip"
            let bpftool = namespace.map { "ip netns exec \($0) bpftool" } ?? "bpftool"
            let place = namespace.map { " in network namespace '\($0)'" } ?? ""
            return "interface '\(interface)'\(place) already has an XDP program attached (id \(id)) that is not "
                + "this engine's (or not recorded as one), so it is left alone; inspect it with `\(ip) link show dev \(interface)` and `\(bpftool) prog show id \(id)`, "
                + "and remove it with `\(ip) link set dev \(interface) xdp off` (native) or "
                + "`\(ip) link set dev \(interface) xdpgeneric off` (generic)"
        case .interfaceInUse(let interface, let namespace, let pid, let command):
            let place = namespace.map { " in network namespace '\($0)'" } ?? ""
            return "interface '\(interface)'\(place) is in use by process \(pid) (\(command)), which has this engine's XDP "
                + "program attached there; the ports of one interface share its program and so live in one process: "
                + "open this port from that process, or stop it (`kill \(pid)`) and open again"
        case .zeroCopyUnsupported(let interface):
            return "interface '\(interface)' does not support zero-copy AF_XDP; allow copy mode with "
                + "`zeroCopy: .preferred` (veth never supports zero-copy)"
        case .system(let operation, let errno):
            return "\(operation) failed: \(String(cString: strerror(errno))) (errno \(errno))"
        case .programLoadFailed(let errno, let log):
            return "loading the XDP program failed: \(String(cString: strerror(errno))) (errno \(errno))"
                + (log.isEmpty ? "" : "\nlibbpf said:\n\(log)")
        case .frameTooLarge(let length, let maximum):
            return "frame of \(length) bytes does not fit a UMEM frame (at most \(maximum) bytes here); "
                + (maximum <= 2048 ? "use frameSize 4096, or split the data" : "split the data into frames of at most \(maximum) bytes")
                + " (a jumbo frame: open the port with multiBuffer and spread it over entries marked setLength(_:continues: true))"
        case .emptyFrame:
            return "a packet of this list has no length set (a frame of length 0 cannot be sent); "
                + "call setLength with 1 byte or more on every packet before sending"
        case .invalidFrameLength(let length):
            return "a packet length of \(length) bytes is not valid; give each packet a length of at least 1 byte"
        case .invalidPacketCount(let requested, let maximum):
            return "a list of \(requested) packets can never be allocated: a list holds 1 to \(maximum) packets here "
                + "(the send pool's size; raise PortConfiguration.sendFrameCount for longer lists)"
        case .priorityOutOfRange(let priority):
            return "802.1p priority \(priority) is out of range; use 0 (lowest) to 7 (highest)"
        case .listAlreadyReturned:
            return "this packet list was already returned to its pool; a list handle is valid only from "
                + "allocation or indication until it is returned, and must be returned exactly once"
        case .listNotOwnedByCaller:
            return "this packet list is queued or in flight: the engine owns it until its send completes; "
                + "wait for the completion before using, sending or returning it again"
        case .foreignList:
            return "this packet list belongs to a port on another UMEM; send or return it on a port of its own UMEM "
                + "(open ports on one UMEM with XDPPort.open(_:umem:...) to pass lists between them without a copy)"
        case .umemClosed:
            return "the UMEM was closed; no port may open on it any more: make a new UMEM"
        case .umemExhausted(let needed, let available):
            return "the UMEM has \(available) frames not taken by other ports, and this port needs \(needed) "
                + "(receiveFrameCount + sendFrameCount): make the UMEM larger or give the port fewer frames"
        case .portClosed:
            return "the port is closed; open a new one"
        case .unfinishedPacket:
            return "the last packet of this list is marked to continue in a next entry that does not exist; "
                + "set the last entry of every packet with setLength(_:continues: false) (or setLength(_:))"
        case .multiBufferNotEnabled(let interface):
            return "a packet of this list continues across frames (setLength(_:continues: true)), but the port on "
                + "\(interface) was opened without multi-buffer; open it with PortConfiguration.multiBuffer = true"
        }
    }
}
