import CAFXDP
#if canImport(Glibc)
import Glibc
#endif

/// Enters a network namespace on the current thread only. Network namespaces
/// are per thread in Linux: a socket belongs to the namespace its creating
/// thread was in, so one process can run ports in several namespaces.
enum NetworkNamespaceEntry {
    static func run<R>(in name: String?, _ body: () throws(AFXDPError) -> R) throws(AFXDPError) -> R {
        guard let name else { return try body() }
        let target = open("/var/run/netns/\(name)", O_RDONLY | O_CLOEXEC)
        guard target >= 0 else {
            let error = errno
            if error == ENOENT { throw .namespaceNotFound(name) }
            throw .system(operation: "open /var/run/netns/\(name)", errno: error)
        }
        defer { close(target) }
        let original = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard original >= 0 else { throw .system(operation: "open /proc/thread-self/ns/net", errno: errno) }
        defer { close(original) }
        let entered = cafxdp_enter_network_namespace(target)
        guard entered == 0 else {
            let error = -entered
            if SystemCalls.isPermissionError(error) {
                throw .permissionDenied(operation: "entering network namespace '\(name)'", errno: error)
            }
            throw .system(operation: "setns(\(name))", errno: error)
        }
        defer {
            let restored = cafxdp_enter_network_namespace(original)
            invariant(restored == 0, "could not return the thread to its original network namespace (errno \(-restored))")
        }
        return try body()
    }
}
