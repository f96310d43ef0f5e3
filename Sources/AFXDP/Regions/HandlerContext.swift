import CAFXDP

/// Where the calling thread is with respect to the engine's handlers.
///
/// Handlers (receive, completion) run while the thread that calls them owns
/// that side of the port. A call from a handler that would wait for another
/// thread (close, pause) could wait for ever: that thread may itself be
/// waiting for a region this one holds (A's handler closing B while B's
/// handler closes A). So inside any handler those calls do not wait: they
/// start what they must and leave the rest to the port's next pass.
enum HandlerContext {
    /// Runs a handler, counting it as one level deeper.
    @inline(__always)
    static func run(_ body: () -> Void) {
        let depth = cafxdp_handler_depth_get()
        cafxdp_handler_depth_set(depth &+ 1)
        body()
        cafxdp_handler_depth_set(depth)
    }

    /// Whether the calling thread is inside a handler of any port.
    static var isInsideHandler: Bool { cafxdp_handler_depth_get() > 0 }
}
