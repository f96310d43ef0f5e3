// Threads, locks and clocks, the one way the engine, its tests and its tools
// use them: pthreads (which ThreadSanitizer sees), CLOCK_MONOTONIC.

import CAFXDP
#if canImport(Glibc)
import Glibc
#endif

/// A mutex over pthread_mutex_t.
///
/// Chosen over `Synchronization.Mutex` because ThreadSanitizer does not see
/// that one's futex on Linux and reports false races; it intercepts pthreads.
public final class PThreadLock: @unchecked Sendable {
    // @unchecked: the mutex itself is the synchronisation.
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let error = pthread_mutex_init(mutex, nil)
        if error != 0 { fatalError("pthread_mutex_init failed: \(error)") }
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inlinable @inline(__always)
    public func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// A value that any thread may read and change, one at a time.
public final class Locked<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched with `lock` held.
    private let lock = PThreadLock()
    private var value: Value

    public init(_ value: Value) { self.value = value }

    public func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        try lock.withLock { () throws(E) -> R in try body(&value) }
    }
}

public enum Threads {
    private final class Start: @unchecked Sendable {
        // @unchecked: immutable after init; handed to exactly one new thread.
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    /// Starts a POSIX thread running `body`. A joinable thread is returned
    /// for `pthread_join`; a detached one ends on its own (nil). Throws the
    /// errno value pthread_create gave.
    @discardableResult
    public static func start(detached: Bool = false, _ body: @escaping @Sendable () -> Void) throws(ThreadStartError) -> pthread_t? {
        let start = Unmanaged.passRetained(Start(body)).toOpaque()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        if detached { pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED)) }
        var thread = pthread_t()
        let result = pthread_create(&thread, &attributes, { argument in
            Unmanaged<Start>.fromOpaque(argument!).takeRetainedValue().body()
            return nil
        }, start)
        guard result == 0 else {
            Unmanaged<Start>.fromOpaque(start).release()
            throw ThreadStartError(errno: result)
        }
        return detached ? nil : thread
    }

    /// Runs `body(i)` on `count` new threads and waits for all of them.
    public static func run(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
        var threads: [pthread_t] = []
        for index in 0..<count {
            do {
                if let thread = try start({ body(index) }) { threads.append(thread) }
            } catch {
                fatalError("cannot start a thread: errno \(error.errno)")
            }
        }
        for thread in threads { pthread_join(thread, nil) }
    }

    /// Pins `thread` to one CPU; returns 0 or an errno value.
    public static func pin(_ thread: pthread_t, toCPU cpu: Int) -> Int32 {
        cafxdp_pin_thread(thread, Int32(clamping: cpu))
    }
}

public struct ThreadStartError: Error, Sendable {
    public let errno: Int32
}

/// CLOCK_MONOTONIC in nanoseconds.
@inline(__always)
public func monotonicNanoseconds() -> UInt64 { clockNanoseconds(CLOCK_MONOTONIC) }

/// The calling thread's CPU time (user and system; not softirq work the
/// kernel does on its CPU), in nanoseconds. A system call, not the vDSO.
public func threadCPUNanoseconds() -> UInt64 { clockNanoseconds(CLOCK_THREAD_CPUTIME_ID) }

@inline(__always)
private func clockNanoseconds(_ clock: clockid_t) -> UInt64 {
    var now = timespec()
    clock_gettime(clock, &now)
    return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
}

/// Sleeps for about `nanoseconds`; a signal may cut it short.
public func sleepNanoseconds(_ nanoseconds: UInt64) {
    var request = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    var remaining = timespec()
    _ = nanosleep(&request, &remaining)
}

/// strerror's text and the number: "No such file or directory (errno 2)".
public func errnoDescription(_ code: Int32) -> String {
    "\(String(cString: strerror(code))) (errno \(code))"
}
