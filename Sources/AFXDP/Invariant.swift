/// Checks one of the engine's own invariants. A failure is a bug in the
/// engine (or the kernel broke the ring protocol), never the caller's
/// mistake: those throw. Unlike `precondition`, whose message `-O` drops,
/// the message reaches the caller in release builds too.
@inline(__always)
func invariant(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String, file: StaticString = #file, line: UInt = #line) {
    if !condition() { invariantFailed(message(), file: file, line: line) }
}

@inline(never)
func invariantFailed(_ message: String, file: StaticString, line: UInt) -> Never {
    fatalError("swift-afxdp internal invariant broken: \(message). Please report this.", file: file, line: line)
}
