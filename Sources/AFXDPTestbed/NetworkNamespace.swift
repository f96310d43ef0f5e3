// Entering a named network namespace on one thread.
//
// Linux keeps the network namespace per thread, so a process can open sockets
// in two namespaces by entering each in turn: sockets stay in the namespace
// they were created in after the thread has left it.

import Glibc

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

    /// Runs `body` on the current thread inside the network namespace `name`
    /// (a name under /var/run/netns, or an absolute path to a namespace file),
    /// then moves the thread back to the namespace it was in, also when `body`
    /// throws.
    ///
    /// `body` must not suspend or hop threads: call it from synchronous code.
    /// Sockets created in `body` stay in `name` for their whole life.
    ///
    /// Throws `TestbedError` if the namespace does not exist or cannot be
    /// entered (setns needs CAP_SYS_ADMIN); rethrows what `body` throws. If the
    /// thread cannot be moved back the process stops, since a thread left in
    /// the wrong namespace would silently misdirect everything it does later.
    public static func withEntered<R>(_ name: String, _ body: () throws -> R) throws -> R {
        let target = path(name)
        let targetFD = open(target, O_RDONLY | O_CLOEXEC)
        guard targetFD >= 0 else {
            let code = errno
            throw TestbedError(
                message: "cannot open network namespace '\(name)' at \(target): \(errnoText(code))",
                hint: code == ENOENT
                    ? "no such namespace: create it with `ip netns add \(name)`, or use VethTestbed.create(); `ip netns list` shows what exists"
                    : TestbedError.privilegeHint
            )
        }
        defer { close(targetFD) }

        let originalFD = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard originalFD >= 0 else {
            throw TestbedError(
                message: "cannot open /proc/thread-self/ns/net to remember this thread's namespace: \(errnoText(errno))",
                hint: "is /proc mounted?"
            )
        }
        defer { close(originalFD) }

        guard libc.setns(targetFD, libc.CLONE_NEWNET) == 0 else {
            throw TestbedError(
                message: "setns into network namespace '\(name)' failed: \(errnoText(errno))",
                hint: "entering a network namespace needs CAP_SYS_ADMIN (run as root)"
            )
        }
        defer {
            if libc.setns(originalFD, libc.CLONE_NEWNET) != 0 {
                fatalError("AFXDPTestbed: cannot return this thread from network namespace '\(name)': \(errnoText(errno))")
            }
        }
        return try body()
    }
}
