// The README's example of an intermediate driver written outside the library
// (section "Writing an intermediate driver"). This file is the example, word
// for word between the markers: ReadmeExampleTests checks that the README
// shows exactly this code, and runs it on a veth pair. It uses the public API
// only (`import AFXDP`, not `@testable`), as a user's package would.

// README example begins
import AFXDP
import Synchronization

/// Counts the frames and bytes that go through it each way, and drops what
/// arrives while `isDropping` is set. A `FilterDriver` with two hooks: the
/// layer does the rest (completions in the caller's order, received lists
/// going back below when returned, pause, restart, close, statistics).
final class CountingFilter: Sendable {
    let sentFrames = Atomic<Int>(0)
    let sentBytes = Atomic<Int>(0)
    let receivedFrames = Atomic<Int>(0)
    let droppedLists = Atomic<Int>(0)
    let isDropping = Atomic<Bool>(false)

    /// Opens the filter over the layer `lower` opens: a port
    /// (`XDPPort.below(configuration)`) or another driver.
    func open(
        over lower: @escaping LowerOpener,
        onReceive: @escaping @Sendable (ReceiveIndication) -> Void,
        onSendComplete: @escaping @Sendable (SendCompletions) -> Void
    ) throws(AFXDPError) -> FilterDriver {
        try FilterDriver.open(
            name: "counting filter", over: lower,
            onSend: { list throws(AFXDPError) in
                // Inside `send`, on the sender's thread: read the list, keep nothing.
                self.sentFrames.add(try list.count, ordering: .relaxed)
                self.sentBytes.add(try list.byteCount, ordering: .relaxed)
            },
            onReceiveFilter: { list in
                // Inside the port's receive handler, before the caller sees the list.
                if self.isDropping.load(ordering: .relaxed) {
                    self.droppedLists.add(1, ordering: .relaxed)
                    return .drop  // back to the port's fill ring at once
                }
                self.receivedFrames.add((try? list.count) ?? 0, ordering: .relaxed)
                return .pass
            },
            onReceive: onReceive, onSendComplete: onSendComplete)
    }
}
// README example ends
