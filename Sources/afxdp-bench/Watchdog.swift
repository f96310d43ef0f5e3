// The --timeout watchdog: if the run outlives its time (or does not finish
// within a grace period after Ctrl-C), it stops the traffic; if even that
// does not end the run, it removes the testbed itself and ends the process,
// so that a hang never leaves namespaces behind.

import AFXDPSystem
import AFXDPTestbed
import Glibc
import Synchronization

final class Watchdog: Sendable {
    private let deadline: UInt64
    private let finished = Atomic<Bool>(false)
    private let testbed = Mutex<(@Sendable () -> Void)?>(nil)
    private let thread = Mutex<pthread_t?>(nil)

    /// Seconds the normal teardown may take after a stop request.
    static let graceSeconds: UInt64 = 10

    private init(seconds: Double) {
        deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
    }

    static func start(seconds: Double) throws(BenchError) -> Watchdog {
        let watchdog = Watchdog(seconds: seconds)
        let thread = try startThread { watchdog.watch(seconds: seconds) }
        watchdog.thread.withLock { $0 = thread }
        return watchdog
    }

    /// What removes the testbed, if the run hangs.
    func guardTestbed(_ destroy: (@Sendable () -> Void)?) {
        testbed.withLock { $0 = destroy }
    }

    /// The run is over (normally or not): the watchdog ends.
    func finish() {
        finished.store(true, ordering: .releasing)
        if let thread = self.thread.withLock({ t -> pthread_t? in defer { t = nil }; return t }) {
            pthread_join(thread, nil)
        }
    }

    private func watch(seconds: Double) {
        var giveUpAt: UInt64 = .max
        while !finished.load(ordering: .acquiring) {
            sleepNanoseconds(50_000_000)
            let now = monotonicNanoseconds()
            if now >= deadline && !stopRequested {
                printError("afxdp-bench: the run exceeded --timeout \(seconds) s; stopping the traffic")
                requestStop(StopReason.watchdog)
            }
            if stopRequested && giveUpAt == .max {
                giveUpAt = now + Self.graceSeconds * 1_000_000_000
            }
            if now >= giveUpAt && !finished.load(ordering: .acquiring) {
                printError("afxdp-bench: the run did not end \(Self.graceSeconds) s after being stopped; "
                    + "removing the testbed and exiting (a hang: please report it)")
                testbed.withLock { $0?() }
                _exit(3)
            }
        }
    }
}
