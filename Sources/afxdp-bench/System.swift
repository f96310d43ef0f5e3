// Small pieces of the operating system the benchmark needs beyond
// AFXDPSystem's (clock, threads, pinning): the stop flag set by signals and
// the watchdog, and its errors.

import AFXDPSystem
import Glibc
import Synchronization

/// Writes to standard error without buffering (usable when the process is
/// about to end abruptly).
func printError(_ text: String) {
    var line = text
    if !line.hasSuffix("\n") { line += "\n" }
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

// MARK: - Threads

/// Starts a joinable POSIX thread running `body`. Join it with `pthread_join`.
func startThread(_ body: @escaping @Sendable () -> Void) throws(BenchError) -> pthread_t {
    do {
        guard let thread = try Threads.start(body) else { throw BenchError("internal: a joinable thread came back detached") }
        return thread
    } catch let error as ThreadStartError {
        throw BenchError("pthread_create failed: \(errnoDescription(error.errno))")
    } catch {
        throw error as! BenchError
    }
}

/// Pins `thread` to one CPU.
func pin(_ thread: pthread_t, toCPU cpu: Int) throws(BenchError) {
    let result = Threads.pin(thread, toCPU: cpu)
    guard result == 0 else {
        let online = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        throw BenchError(
            "cannot pin a thread to CPU \(cpu): \(String(cString: strerror(result))); "
                + "this machine has \(online) online CPUs (0...\(online - 1)), see `nproc`")
    }
}

// MARK: - Stop requests

/// Why the run is being stopped early; 0 while nobody asked.
let stopRequest = Atomic<Int32>(0)

enum StopReason {
    static let signalBase: Int32 = 0  // a signal number is stored as itself
    static let watchdog: Int32 = 1000
    static let failure: Int32 = 1001

    static func describe(_ code: Int32) -> String {
        switch code {
        case watchdog: return "the --timeout watchdog"
        case failure: return "an error in a traffic thread"
        case SIGINT: return "SIGINT"
        case SIGTERM: return "SIGTERM"
        default: return "signal \(code)"
        }
    }
}

@inline(__always) var stopRequested: Bool { stopRequest.load(ordering: .relaxed) != 0 }

/// Asks the run to stop (the first reason wins).
func requestStop(_ reason: Int32) {
    _ = stopRequest.compareExchange(expected: 0, desired: reason, ordering: .relaxed)
}

/// SIGINT and SIGTERM only set the stop flag: the traffic loops see it,
/// end, and the normal teardown closes the ports and removes the testbed.
func installSignalHandlers() {
    _ = stopRequest.load(ordering: .relaxed)  // initialise the global before a handler can touch it
    for number in [SIGINT, SIGTERM] {
        _ = signal(number) { received in
            _ = stopRequest.compareExchange(expected: 0, desired: received, ordering: .relaxed)
        }
    }
}

/// A failure to report to the user, already worded.
struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
