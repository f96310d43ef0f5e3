import AFXDPSystem
import CAFXDP
#if canImport(Glibc)
import Glibc
#endif

/// The project's XDP program on one interface: it redirects each frame to
/// the socket bound at its RX queue (the XSKMAP), optionally only one
/// EtherType, and counts per CPU. Ports on different queues of the same
/// interface share it; it is detached when the last one closes.
final class XDPProgram: @unchecked Sendable {
    // @unchecked: mutated only under `registryLock`.
    let interface: String
    let ifindex: Int32
    let namespace: String?
    let attachFlags: UInt32
    let etherTypeFilter: UInt16?
    var handle = cafxdp_program()
    var users = 0
    /// One value per possible CPU, for reading the per-CPU counters.
    private let perCPUValues: UnsafeMutableBufferPointer<UInt64> = {
        let cpus = max(Int(libbpf_num_possible_cpus()), 0)
        let buffer = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: cpus)
        buffer.initialize(repeating: 0)
        return buffer
    }()

    deinit { perCPUValues.deallocate() }

    var attachedNatively: Bool { attachFlags & UInt32(XDP_FLAGS_DRV_MODE) != 0 }
    /// The PID of the dead process whose program of this engine this one
    /// replaced when it was attached, if it did.
    private(set) var replacedProgramOfDeadProcess: Int32?

    private init(interface: String, ifindex: Int32, namespace: String?, attachFlags: UInt32, etherTypeFilter: UInt16?) {
        self.etherTypeFilter = etherTypeFilter
        self.interface = interface
        self.ifindex = ifindex
        self.namespace = namespace
        self.attachFlags = attachFlags
    }

    private static let registryLock = PThreadLock()
    nonisolated(unsafe) private static var registry: [String: XDPProgram] = [:]

    private static func key(_ namespace: String?, _ ifindex: Int32) -> String { "\(namespace ?? "")/\(ifindex)" }

    /// Loads and attaches the program, or takes another reference to the one
    /// this process already attached there. Call inside the target namespace.
    static func acquire(
        interface: String, ifindex: Int32, namespace: String?, mode: PortConfiguration.AttachMode,
        etherTypeFilter: UInt16?
    ) throws(AFXDPError) -> XDPProgram {
        try registryLock.withLock { () throws(AFXDPError) -> XDPProgram in
            if let existing = registry[key(namespace, ifindex)] {
                // Ports on several queues of one interface share its program,
                // so they must agree on what the program does.
                guard existing.etherTypeFilter == etherTypeFilter else {
                    throw .invalidConfiguration(
                        "another port on \(interface) filters EtherType \(existing.etherTypeFilter.map { String($0, radix: 16) } ?? "none"); "
                            + "ports on one interface share its XDP program, so give them the same etherTypeFilter")
                }
                existing.users += 1
                return existing
            }
            var attached = cafxdp_attached_program()
            var replaced: Int32?
            if cafxdp_attached_program_query(ifindex, &attached) == 0, attached.program_id != 0 {
                try clearLeftover(attached, interface: interface, ifindex: ifindex, namespace: namespace)
                replaced = Int32(bitPattern: attached.owner_pid)
            }
            var handle = cafxdp_program()
            try load(into: &handle)
            // Who attaches it, written before it is attached: another process
            // finding it can then tell whether its owner still lives.
            Self.setConfig(handle, index: UInt32(CAFXDP_CONFIG_OWNER_PID), value: UInt32(bitPattern: getpid()))
            Self.setConfig(handle, index: UInt32(CAFXDP_CONFIG_OWNER_START), value: ProcessIdentity.startTime(of: getpid()) ?? 0)
            Self.setConfig(handle, index: UInt32(CAFXDP_CONFIG_OWNER_PID_NAMESPACE), value: ProcessIdentity.ownPIDNamespace)
            Self.setConfig(handle, index: UInt32(CAFXDP_CONFIG_OWNER_MAGIC), value: CAFXDP_OWNER_MAGIC)
            let modes: [UInt32]
            switch mode {
            case .automatic: modes = [UInt32(XDP_FLAGS_DRV_MODE), UInt32(XDP_FLAGS_SKB_MODE)]
            case .native: modes = [UInt32(XDP_FLAGS_DRV_MODE)]
            case .generic: modes = [UInt32(XDP_FLAGS_SKB_MODE)]
            }
            var lastError: Int32 = 0
            for modeFlag in modes {
                let flags = modeFlag | UInt32(XDP_FLAGS_UPDATE_IF_NOEXIST)
                let result = bpf_xdp_attach(ifindex, handle.program_fd, flags, nil)
                if result == 0 {
                    let program = XDPProgram(
                        interface: interface, ifindex: ifindex, namespace: namespace, attachFlags: modeFlag,
                        etherTypeFilter: etherTypeFilter)
                    program.handle = handle
                    program.users = 1
                    program.replacedProgramOfDeadProcess = replaced
                    if let etherTypeFilter { program.setConfig(index: 0, value: UInt32(etherTypeFilter)) }
                    registry[key(namespace, ifindex)] = program
                    return program
                }
                lastError = -result
                if lastError == EBUSY || lastError == EEXIST { break }
            }
            cafxdp_program_close(&handle)
            if lastError == EBUSY || lastError == EEXIST {
                // Attached by someone else between our look and our attach.
                var attached = cafxdp_attached_program()
                _ = cafxdp_attached_program_query(ifindex, &attached)
                try refuse(attached, interface: interface, namespace: namespace)
                throw .xdpProgramAlreadyAttached(interface: interface, programID: attached.program_id, namespace: namespace)
            }
            if SystemCalls.isPermissionError(lastError) {
                throw .permissionDenied(operation: "attaching the XDP program to \(interface)", errno: lastError)
            }
            throw .system(operation: "attaching the XDP program to \(interface)", errno: lastError)
        }
    }

    /// Refuses an interface whose program is another live process's (this
    /// engine's: `.interfaceInUse`) or not this engine's at all; one of this
    /// process's own, or one left by a dead process (replaced at `acquire`),
    /// passes. Call inside the interface's namespace.
    static func refuseIfInUse(interface: String, ifindex: Int32, namespace: String?) throws(AFXDPError) {
        try registryLock.withLock { () throws(AFXDPError) in
            guard registry[key(namespace, ifindex)] == nil else { return }
            var attached = cafxdp_attached_program()
            guard cafxdp_attached_program_query(ifindex, &attached) == 0, attached.program_id != 0 else { return }
            try refuse(attached, interface: interface, namespace: namespace)
        }
    }

    /// Throws for a program that is not this engine's (never touched) or is
    /// a live process's; returns for this engine's program left by a dead one.
    private static func refuse(_ attached: cafxdp_attached_program, interface: String, namespace: String?) throws(AFXDPError) {
        guard attached.is_engines != 0 else {
            throw .xdpProgramAlreadyAttached(interface: interface, programID: attached.program_id, namespace: namespace)
        }
        if let owner = ProcessIdentity.live(attached) {
            throw .interfaceInUse(interface: interface, namespace: namespace, pid: owner.pid, command: owner.command)
        }
    }

    /// A program already on the interface: this engine's, left by a process
    /// that died, is detached (so the open goes on); this engine's, of a live
    /// process, is refused naming that process; anything else is refused and
    /// never touched.
    private static func clearLeftover(
        _ attached: cafxdp_attached_program, interface: String, ifindex: Int32, namespace: String?
    ) throws(AFXDPError) {
        try refuse(attached, interface: interface, namespace: namespace)
        let result = cafxdp_attached_program_detach(ifindex, attached.attach_flags, attached.program_id)
        // ENOENT / EEXIST: gone or replaced meanwhile; the attach below says what is there now.
        if result != 0, -result != ENOENT, -result != EEXIST {
            throw .system(operation: "detaching the XDP program left on \(interface) by process \(attached.owner_pid), which died", errno: -result)
        }
    }

    private static func setConfig(_ handle: cafxdp_program, index: UInt32, value: UInt32) {
        var key = index
        var value = value
        _ = bpf_map_update_elem(handle.config_map_fd, &key, &value, 0)
    }

    private static func load(into handle: inout cafxdp_program) throws(AFXDPError) {
        var bytes = EmbeddedXDPProgram.objectBytes()
        var log = [CChar](repeating: 0, count: 4096)
        cafxdp_silence_libbpf()
        let result = bytes.withUnsafeMutableBytes { object in
            cafxdp_program_load(object.baseAddress, object.count, &handle, &log, log.count)
        }
        guard result == 0 else {
            let message = String(decoding: log.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if SystemCalls.isPermissionError(-result) {
                throw .permissionDenied(operation: "loading the XDP program (bpf)", errno: -result)
            }
            throw .programLoadFailed(errno: -result, log: message)
        }
    }

    /// Binds a socket to a queue: frames arriving on that RX queue go to it.
    func bind(socketFD: Int32, queue: UInt32) throws(AFXDPError) {
        var key = queue
        var value = UInt32(bitPattern: socketFD)
        if bpf_map_update_elem(handle.xsks_map_fd, &key, &value, 0) != 0 {
            throw .system(operation: "adding the socket to the XSKMAP at queue \(queue)", errno: errno)
        }
    }

    func unbind(queue: UInt32) {
        var key = queue
        _ = bpf_map_delete_elem(handle.xsks_map_fd, &key)
    }

    private func setConfig(index: UInt32, value: UInt32) {
        var key = index
        var value = value
        _ = bpf_map_update_elem(handle.config_map_fd, &key, &value, 0)
    }

    /// The program's counters summed over CPUs: (seen, redirected, passed).
    /// Reads into a buffer made once, so that statistics cost no allocation;
    /// ports on several queues share the program, so the buffer is locked.
    func counters() -> (seen: Int, redirected: Int, passed: Int) {
        Self.registryLock.withLock { readCounters() }
    }

    private func readCounters() -> (seen: Int, redirected: Int, passed: Int) {
        guard !perCPUValues.isEmpty else { return (0, 0, 0) }
        func total(_ index: UInt32) -> Int {
            var key = index
            guard bpf_map_lookup_elem(handle.counters_map_fd, &key, perCPUValues.baseAddress) == 0 else { return 0 }
            return perCPUValues.reduce(0) { $0 &+ Int(truncatingIfNeeded: $1) }
        }
        return (total(0), total(1), total(2))
    }

    /// Drops one reference; the last detaches the program from its interface
    /// (entering `namespace` for that, nil: already inside) and unloads it.
    /// If the namespace is gone, its interfaces went with it: nothing is left
    /// to detach, and the program is unloaded all the same.
    func release(namespace: String?) {
        Self.registryLock.withLock {
            users -= 1
            guard users == 0 else { return }
            let ifindex = self.ifindex, flags = attachFlags, programFD = handle.program_fd
            try? NetworkNamespaceEntry.run(in: namespace) { () throws(AFXDPError) in
                _ = cafxdp_program_detach(ifindex, flags, programFD)
            }
            cafxdp_program_close(&handle)
            Self.registry[Self.key(self.namespace, ifindex)] = nil
        }
    }
}


/// A process as /proc shows it: whether the one that attached a program is
/// still the one running under its PID (PIDs are reused; start times are not).
enum ProcessIdentity {
    /// The process's start time in clock ticks since boot (low 32 bits), from
    /// /proc/PID/stat field 22; nil if there is no such process.
    static func startTime(of pid: Int32) -> UInt32? {
        guard let stat = read("/proc/\(pid)/stat") else { return nil }
        // The command (field 2) is in parentheses and may hold spaces: count
        // fields from the last ')'.
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state); field 22 is fields[19].
        guard fields.count > 19, let ticks = UInt64(fields[19]) else { return nil }
        return UInt32(truncatingIfNeeded: ticks)
    }

    /// This process's PID namespace (the inode of /proc/self/ns/pid, low 32 bits).
    static let ownPIDNamespace: UInt32 = {
        var status = stat()
        guard stat("/proc/self/ns/pid", &status) == 0 else { return 0 }
        return UInt32(truncatingIfNeeded: status.st_ino)
    }()

    /// The process that attached `program`, if it may still be alive: it
    /// runs under its PID and started when recorded, or it is in another PID
    /// namespace, where its PID means nothing here (then it counts as alive:
    /// a program that may be someone else's is never taken away).
    static func live(_ program: cafxdp_attached_program) -> (pid: Int32, command: String)? {
        let pid = Int32(bitPattern: program.owner_pid)
        if program.owner_pid_namespace != 0, program.owner_pid_namespace != ownPIDNamespace {
            return (pid, "a process in another PID namespace")
        }
        let start = program.owner_start
        guard pid > 0, let started = startTime(of: pid), start == 0 || started == start else { return nil }
        let command = read("/proc/\(pid)/comm").map { String($0.prefix { $0 != "\n" }) } ?? "?"
        return (pid, command)
    }

    private static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 1024)
        let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        return String(decoding: buffer[0..<count], as: UTF8.self)
    }
}
