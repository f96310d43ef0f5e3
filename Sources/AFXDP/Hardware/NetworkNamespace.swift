import AFXDPSystem
#if canImport(Glibc)
import Glibc
#endif

/// The engine's way into an interface's network namespace: AFXDPSystem's,
/// with its failures said as `AFXDPError`.
enum NetworkNamespaceEntry {
    static func run<R>(in name: String?, _ body: () throws(AFXDPError) -> R) throws(AFXDPError) -> R {
        guard let name else { return try body() }
        return try NetworkNamespace.withEntered(name, body) { failure in
            if failure.isMissing { return .namespaceNotFound(name) }
            switch failure.step {
            case .openingNamespace:
                return .system(operation: "open \(NetworkNamespace.path(name))", errno: failure.errno)
            case .rememberingCurrent:
                return .system(operation: "open /proc/thread-self/ns/net", errno: failure.errno)
            case .entering:
                return failure.isPermission
                    ? .permissionDenied(operation: "entering network namespace '\(name)'", errno: failure.errno)
                    : .system(operation: "setns(\(name))", errno: failure.errno)
            }
        }
    }
}
