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
            var attachedID: UInt32 = 0
            if bpf_xdp_query_id(ifindex, 0, &attachedID) == 0, attachedID != 0 {
                throw .xdpProgramAlreadyAttached(interface: interface, programID: attachedID, namespace: namespace)
            }
            var handle = cafxdp_program()
            try load(into: &handle)
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
                    if let etherTypeFilter { program.setConfig(index: 0, value: UInt32(etherTypeFilter)) }
                    registry[key(namespace, ifindex)] = program
                    return program
                }
                lastError = -result
                if lastError == EBUSY || lastError == EEXIST { break }
            }
            cafxdp_program_close(&handle)
            if lastError == EBUSY || lastError == EEXIST {
                var id: UInt32 = 0
                _ = bpf_xdp_query_id(ifindex, 0, &id)
                throw .xdpProgramAlreadyAttached(interface: interface, programID: id, namespace: namespace)
            }
            if SystemCalls.isPermissionError(lastError) {
                throw .permissionDenied(operation: "attaching the XDP program to \(interface)", errno: lastError)
            }
            throw .system(operation: "attaching the XDP program to \(interface)", errno: lastError)
        }
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
