import Atomics
import CAFXDP

/// "One owner at a time" for the send region and for the receive region.
///
/// Not a lock that callers wait on: every path only *tries* to take it, and
/// a thread that finds it taken leaves its work in the region's mailbox for
/// the owner (or comes back on a later pass). The owner is recorded as its
/// thread's token (`cafxdp_thread_token`), so a thread that calls back into a
/// region it already owns, from a handler at any depth, is recognised instead
/// of waiting for itself.
/// Lives in its own padded allocation: other threads write it, so it must not
/// share a cache line with the region's owner-only fields.
struct RegionOwnership: @unchecked Sendable {
    // @unchecked: the word is an atomic in memory that lives as long as the port.
    private let owner: UnsafeAtomic<UInt>

    init(at storage: UnsafeMutablePointer<UInt.AtomicRepresentation>) {
        storage.initialize(to: .init(0))
        owner = UnsafeAtomic(at: storage)
    }

    @inline(__always)
    func tryAcquire() -> Bool {
        // Sequentially consistent (free on x86): with the mailbox push before
        // it and the mailbox check after `release`, no wake-up is lost.
        owner.compareExchange(expected: 0, desired: cafxdp_thread_token(), ordering: .sequentiallyConsistent).exchanged
    }

    /// Lets go. Sequentially consistent, because the owner checks its mailbox
    /// right after: a plain store could be reordered after that load, and a
    /// thread that pushed meanwhile and failed `tryAcquire` would be missed.
    @inline(__always)
    func release() {
        _ = owner.exchange(0, ordering: .sequentiallyConsistent)
    }

    /// Whether the calling thread owns the region (it is inside one of the
    /// region's passes, e.g. in a handler that pass called).
    var isOwnedByCurrentThread: Bool { owner.load(ordering: .relaxed) == cafxdp_thread_token() }
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

/// A single-owner region's door: who owns it now, and the mailbox where
/// other threads leave work. The atomics other threads write live in a padded
/// allocation of their own, so nothing else shares their cache lines.
///
/// `runIfFree` is the one way a region is driven: take it if no one has it,
/// run a pass, let go, and look at the mailbox again (a thread that found the
/// region taken left its work there and went on).
final class RegionDoorbell: @unchecked Sendable {
    // @unchecked: holds only atomics (see RegionOwnership, SlotMailbox).
    private let storage: UnsafeMutableRawPointer
    let ownership: RegionOwnership
    let mailbox: SlotMailbox

    init() {
        storage = .allocate(byteCount: 256, alignment: 128)
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: 256)
        ownership = RegionOwnership(at: storage.bindMemory(to: UInt.AtomicRepresentation.self, capacity: 1))
        mailbox = SlotMailbox(
            at: (storage + 128).bindMemory(to: UInt32.AtomicRepresentation.self, capacity: 1))
    }

    deinit { storage.deallocate() }

    /// Runs `pass` as the region's owner if no thread owns it, then lets go.
    /// After letting go, if the mailbox has work that arrived meanwhile and
    /// the region is free, runs `pass` again: at most `rounds` passes in all,
    /// so that no call does unbounded work for other threads. Work left in
    /// the mailbox after that is taken by the region's next pass (every
    /// `poll()`, or the port's own thread). Returns whether a pass ran.
    @inline(__always)
    @discardableResult
    func runIfFree(rounds: Int, _ pass: () -> Void) -> Bool {
        var ran = false
        var left = rounds
        while left > 0, ownership.tryAcquire() {
            pass()
            ownership.release()
            ran = true
            left -= 1
            if mailbox.isEmpty { break }
        }
        return ran
    }
}
