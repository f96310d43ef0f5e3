// Entering a named network namespace on one thread.
//
// Linux keeps the network namespace per thread, so a process can open sockets
// in several namespaces by entering each in turn: a socket stays in the
// namespace it was created in after the thread has left it.

import CAFXDP
#if canImport(Glibc)
import Glibc
#endif

public enum NetworkNamespace {
    /// Where `ip netns add` mounts named namespaces.
    public static let directory = "/var/run/netns"

    /// The file that names `name`: `name` itself if it is an absolute path,
    /// otherwise `/var/run/netns/<name>`.
    public static func path(_ name: String) -> String {
        name.hasPrefix("/") ? name : directory + "/" + name
    }

    /// Whether a namespace called `name` exists.
    public static func exists(_ name: String) -> Bool {
        access(path(name), F_OK) == 0
    }

    /// The names in /var/run/netns, sorted.
    public static func list() -> [String] {
        guard let stream = opendir(directory) else { return [] }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." {
                names.append(name)
            }
        }
        return names.sorted()
    }

    /// Why a namespace could not be entered.
    public struct EntryError: Error, Sendable {
        public enum Step: Sendable {
            /// Opening the namespace's file: `errno` ENOENT means no such namespace.
            case openingNamespace
            /// Opening /proc/thread-self/ns/net, to come back afterwards.
            case rememberingCurrent
            /// setns(2): EPERM means CAP_SYS_ADMIN is missing.
            case entering
        }
        public let step: Step
        public let errno: Int32
        public let namespace: String
        /// Whether the namespace does not exist.
        public var isMissing: Bool { step == .openingNamespace && errno == ENOENT }
        /// Whether a privilege is missing.
        public var isPermission: Bool { errno == EPERM || errno == EACCES }
    }

    /// Runs `body` on the current thread inside the network namespace `name`
    /// (a name under /var/run/netns, or an absolute path), then moves the
    /// thread back to the namespace it was in, also when `body` throws.
    /// `body` must not suspend or hop threads. If the thread cannot be moved
    /// back the process stops: a thread left in the wrong namespace would
    /// silently misdirect everything it does later.
    public static func withEntered<R, E: Error>(
        _ name: String, _ body: () throws(E) -> R, orElse failure: (EntryError) -> E
    ) throws(E) -> R {
        let target = open(path(name), O_RDONLY | O_CLOEXEC)
        guard target >= 0 else { throw failure(EntryError(step: .openingNamespace, errno: errno, namespace: name)) }
        defer { close(target) }
        let original = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard original >= 0 else { throw failure(EntryError(step: .rememberingCurrent, errno: errno, namespace: name)) }
        defer { close(original) }
        let entered = cafxdp_enter_network_namespace(target)
        guard entered == 0 else { throw failure(EntryError(step: .entering, errno: -entered, namespace: name)) }
        defer {
            let restored = cafxdp_enter_network_namespace(original)
            if restored != 0 {
                fatalError("swift-afxdp: cannot return this thread from network namespace '\(name)' (errno \(-restored))")
            }
        }
        return try body()
    }
}
