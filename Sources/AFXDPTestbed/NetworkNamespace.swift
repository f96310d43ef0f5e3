// The testbed's way into a network namespace: AFXDPSystem's, with its
// failures said as `TestbedError`, with what to do about them.

@_exported import AFXDPSystem

extension NetworkNamespace {
    /// Runs `body` on the current thread inside the network namespace `name`,
    /// then moves the thread back; see `withEntered(_:_:orElse:)`. Throws
    /// `TestbedError` if the namespace does not exist or cannot be entered
    /// (setns needs CAP_SYS_ADMIN); rethrows what `body` throws.
    public static func withEntered<R>(_ name: String, _ body: () throws -> R) throws -> R {
        try withEntered(name, body) { failure in
            switch failure.step {
            case .openingNamespace:
                return TestbedError(
                    message: "cannot open network namespace '\(name)' at \(path(name)): \(errnoDescription(failure.errno))",
                    hint: failure.isMissing
                        ? "no such namespace: create it with `ip netns add \(name)`, or use VethTestbed.create(); `ip netns list` shows what exists"
                        : TestbedError.privilegeHint)
            case .rememberingCurrent:
                return TestbedError(
                    message: "cannot open /proc/thread-self/ns/net to remember this thread's namespace: \(errnoDescription(failure.errno))",
                    hint: "is /proc mounted?")
            case .entering:
                return TestbedError(
                    message: "setns into network namespace '\(name)' failed: \(errnoDescription(failure.errno))",
                    hint: "entering a network namespace needs CAP_SYS_ADMIN (run as root)")
            }
        }
    }
}
