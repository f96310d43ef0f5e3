import AFXDPSystem
import Glibc

/// Test bookkeeping behind AFXDPSystem's pthread lock (which ThreadSanitizer sees).
typealias TestLock = Locked

/// Runs `body` on `count` new threads and waits for all of them.
func runThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    Threads.run(count, body)
}

/// Starts `body` on a detached thread that no one joins (a watchdog).
func detachThread(_ body: @escaping @Sendable () -> Void) {
    do { try Threads.start(detached: true, body) } catch { fatalError("cannot start a thread: errno \(error.errno)") }
}

