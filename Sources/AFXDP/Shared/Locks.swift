import Atomics
import CAFXDP
#if canImport(Glibc)
import Glibc
#endif

/// A mutex over pthread_mutex_t. Used for the shared region only.
///
/// Chosen over `Synchronization.Mutex` because ThreadSanitizer does not see
/// that one's futex on Linux and reports false races; it intercepts pthreads.
final class PThreadLock: @unchecked Sendable {
    // @unchecked: the mutex itself is the synchronisation.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let error = pthread_mutex_init(mutex, nil)
        precondition(error == 0, "pthread_mutex_init failed: \(error)")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inline(__always)
    func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// "One owner at a time" for the send region and for the receive region.
///
/// Not a lock that callers wait on: the hot paths only *try* to take it, and
/// a thread that finds it taken leaves its work in the region's mailbox for
/// the owner. Only pause, restart and close wait for it.
/// Lives in its own padded allocation: other threads write it, so it must not
/// share a cache line with the region's owner-only fields.
struct RegionOwnership: @unchecked Sendable {
    // @unchecked: the flag is an atomic in memory that lives as long as the port.
    private let flag: UnsafeAtomic<Bool>

    init(at storage: UnsafeMutablePointer<Bool.AtomicRepresentation>) {
        storage.initialize(to: .init(false))
        flag = UnsafeAtomic(at: storage)
    }

    @inline(__always)
    func tryAcquire() -> Bool {
        // Sequentially consistent (free on x86): with the mailbox push before
        // it and the mailbox check after `release`, no wake-up is lost.
        flag.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged
    }

    /// Waits until this thread owns the region. Not for hot paths.
    func acquire() {
        while !tryAcquire() { sched_yield() }
    }

    /// Lets go. Sequentially consistent, because the owner checks its mailbox
    /// right after: a plain store could be reordered after that load, and a
    /// thread that pushed meanwhile and failed `tryAcquire` would be missed.
    @inline(__always)
    func release() {
        _ = flag.exchange(false, ordering: .sequentiallyConsistent)
    }

    /// Runs `body` as the owner, waiting for ownership first.
    func withOwnership<R>(_ body: () throws -> R) rethrows -> R {
        acquire()
        defer { release() }
        return try body()
    }
}

/// A lock-free stack of list slots that any thread may push to and that the
/// region's owner empties all at once (a mailbox): how work reaches a region
/// without a lock shared between regions. Pushes are linked through
/// `ListRecord.next`; taking the whole chain at once avoids ABA.
struct SlotMailbox: @unchecked Sendable {
    // @unchecked: the head is an atomic; the links are written before the
    // releasing CAS that publishes them and read after the acquiring exchange.
    private let head: UnsafeAtomic<UInt32>

    init(at storage: UnsafeMutablePointer<UInt32.AtomicRepresentation>) {
        storage.initialize(to: .init(noSlot))
        head = UnsafeAtomic(at: storage)
    }

    @inline(__always)
    func push(_ slot: UInt32, links: UnsafeMutablePointer<ListRecord>) {
        var expected = head.load(ordering: .relaxed)
        while true {
            links[Int(slot)].next = expected
            // Sequentially consistent: pairs with RegionOwnership.release (see there).
            let (done, current) = head.weakCompareExchange(
                expected: expected, desired: slot, ordering: .sequentiallyConsistent)
            if done { return }
            expected = current
        }
    }

    /// Takes every slot pushed so far, in push order (oldest first), as a
    /// chain through `ListRecord.next` ending in `noSlot`.
    @inline(__always)
    func takeAll(links: UnsafeMutablePointer<ListRecord>) -> UInt32 {
        var slot = head.exchange(noSlot, ordering: .acquiring)
        // Reverse the LIFO chain into push order.
        var reversed = noSlot
        while slot != noSlot {
            let next = links[Int(slot)].next
            links[Int(slot)].next = reversed
            reversed = slot
            slot = next
        }
        return reversed
    }

    @inline(__always)
    var isEmpty: Bool { head.load(ordering: .sequentiallyConsistent) == noSlot }
}

/// Marks the end of a chain of slots or frames.
@usableFromInline let noSlot: UInt32 = .max

/// Memory for the atomics other threads write into a region (its ownership
/// flag and mailbox), padded so nothing else shares their cache lines.
final class RegionDoorbell: @unchecked Sendable {
    // @unchecked: holds only atomics (see RegionOwnership, SlotMailbox).
    private let storage: UnsafeMutableRawPointer
    let ownership: RegionOwnership
    let mailbox: SlotMailbox

    init() {
        storage = .allocate(byteCount: 256, alignment: 128)
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: 256)
        ownership = RegionOwnership(at: storage.bindMemory(to: Bool.AtomicRepresentation.self, capacity: 1))
        mailbox = SlotMailbox(
            at: (storage + 128).bindMemory(to: UInt32.AtomicRepresentation.self, capacity: 1))
    }

    deinit { storage.deallocate() }
}

/// Which port's handler the current thread is running. A handler runs while
/// its side of the port is owned by the thread that called it, so a call
/// from the handler that waits for that side (close, pause, poolStatus)
/// would wait for ever: it traps with an explanation instead.
enum HandlerScope {
    /// `port` is the port's identity (`identity(of:)`), taken once, so
    /// that the hot path does not retain the port to compute it.
    @inline(__always)
    static func run(for port: UnsafeRawPointer?, _ body: () -> Void) {
        let previous = cafxdp_handler_scope_get()
        cafxdp_handler_scope_set(port)
        body()
        cafxdp_handler_scope_set(previous)
    }

    static func identity(of port: AnyObject) -> UnsafeRawPointer {
        UnsafeRawPointer(Unmanaged.passUnretained(port).toOpaque())
    }

    static func precondition(notInsideHandlerOf port: AnyObject, _ call: String) {
        Swift.precondition(
            cafxdp_handler_scope_get() != identity(of: port),
            "\(call) was called from this port's own receive or completion handler, where it would wait for ever "
                + "(the handler's side of the port is owned by its caller): call it from another thread")
    }
}
