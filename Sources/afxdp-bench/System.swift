// Small pieces of the operating system the benchmark needs: a monotonic
// clock, threads, CPU pinning, and the stop flag set by signals and the
// watchdog.

import Glibc
import Synchronization

/// CLOCK_MONOTONIC in nanoseconds: the send timestamp written into each
/// frame and the clock latency is measured against. Both ends run in this
/// process, so they read the same clock.
@inline(__always)
func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
}

/// Sleeps for about `nanoseconds`; a signal may cut it short.
func sleepNanoseconds(_ nanoseconds: UInt64) {
    var request = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    var remaining = timespec()
    _ = nanosleep(&request, &remaining)
}

/// Writes to standard error without buffering (usable when the process is
/// about to end abruptly).
func printError(_ text: String) {
    var line = text
    if !line.hasSuffix("\n") { line += "\n" }
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

// MARK: - Threads

private final class ThreadStart: @unchecked Sendable {
    // @unchecked: immutable after init; handed to exactly one new thread.
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}

/// Starts a POSIX thread running `body`. Join it with `pthread_join`.
func startThread(_ body: @escaping @Sendable () -> Void) throws(BenchError) -> pthread_t {
    let start = Unmanaged.passRetained(ThreadStart(body)).toOpaque()
    var thread = pthread_t()
    let result = pthread_create(&thread, nil, { argument in
        let start = Unmanaged<ThreadStart>.fromOpaque(argument!).takeRetainedValue()
        start.body()
        return nil
    }, start)
    guard result == 0 else {
        Unmanaged<ThreadStart>.fromOpaque(start).release()
        throw BenchError("pthread_create failed: \(String(cString: strerror(result)))")
    }
    return thread
}

/// Pins `thread` to one CPU.
///
/// `pthread_setaffinity_np` and the CPU_SET macros are declared only under
/// _GNU_SOURCE, which Swift's Glibc module does not see: the function is
/// looked up at run time and the cpu_set_t bitmask (1024 bits, one per CPU,
/// in 64-bit words) is built by hand.
func pin(_ thread: pthread_t, toCPU cpu: Int) throws(BenchError) {
    typealias SetAffinity = @convention(c) (pthread_t, Int, UnsafeRawPointer) -> Int32
    let maximumCPUs = 1024
    guard cpu >= 0, cpu < maximumCPUs else {
        throw BenchError("CPU \(cpu) is out of range; use 0...\(maximumCPUs - 1)")
    }
    guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, "pthread_setaffinity_np") else {
        throw BenchError("pthread_setaffinity_np is not available in this C library; run without --cpu-a/--cpu-b")
    }
    let setAffinity = unsafeBitCast(symbol, to: SetAffinity.self)
    var mask = [UInt64](repeating: 0, count: maximumCPUs / 64)
    mask[cpu / 64] |= 1 << UInt64(cpu % 64)
    let result = mask.withUnsafeBytes { setAffinity(thread, $0.count, $0.baseAddress!) }
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
