// duplex --api async: each end through `AsyncPort`, the library's Swift
// concurrency face, instead of handlers and a polling thread of the
// benchmark's own. Per end, one task sends and takes its lists back from
// `completions`, one task checks what `received` yields; the async port's
// own thread polls. Same frames, same checks, same counters as the
// callback path, so the two compare one for one.

import AFXDP
import AFXDPSystem
import Dispatch

/// The tasks of the async ends, and a way for the synchronous session to
/// wait for them to end.
final class AsyncEnds: Sendable {
    private let finished = DispatchSemaphore(value: 0)
    private let started = Locked(0)

    /// The sending task of one end: sends what the generator lets it (as
    /// the callback path's thread does each pass), then waits for a list to
    /// come back. Ends when the run stops or the port's sequences end.
    func startSender(_ port: AsyncPort, sender: Owned<SenderState>, listsPerPass: Int, control: RunControl) {
        started.withLock { $0 += 1 }
        Task.detached { [finished] in
            await Self.waitForStart(control)
            let state = sender.pointer
            var completions = port.completions.makeAsyncIterator()
            while control.phase.load(ordering: .acquiring) < RunControl.stopped {
                if control.phase.load(ordering: .relaxed) == RunControl.running {
                    Generator.generate(state, maximumLists: listsPerPass)
                    // The receiving tasks' turn (two cooperative threads for
                    // four tasks here): a sender that did not yield overran
                    // its peer's receiver (up to 60% lost; with it, 0-0.2%).
                    await Task.yield()
                }
                // Nothing out: nothing will come back to wait for.
                if state.pointee.freeLists == state.pointee.totalLists {
                    try? await Task.sleep(for: .microseconds(100))
                    continue
                }
                guard let completed = await completions.next() else { break }
                Self.takeBack(state, completed)
            }
            finished.signal()
        }
    }

    /// The receiving task of one end: checks every list `received` yields
    /// (and returns it), until the port closes.
    func startReceiver(_ port: AsyncPort, receiver: Owned<ReceiverState>, control: RunControl) {
        started.withLock { $0 += 1 }
        Task.detached { [finished] in
            await Self.waitForStart(control)
            for await indication in port.received {
                Receiver.check(receiver.pointer, indication)
            }
            finished.signal()
        }
    }

    /// Waits for every task started to end (the ports must be closing, or
    /// the receivers would wait for lists forever).
    func waitForAll() {
        let count = started.withLock { count in defer { count = 0 }; return count }
        for _ in 0..<count { finished.wait() }
    }

    private static func waitForStart(_ control: RunControl) async {
        while control.phase.load(ordering: .acquiring) == RunControl.setup {
            try? await Task.sleep(for: .microseconds(50))
        }
    }

    /// A completed list is the sender's again (`Generator.completed`, one list).
    private static func takeBack(_ state: UnsafeMutablePointer<SenderState>, _ completed: CompletedSend) {
        let count = Generator.reclaim(state, completed.list)
        if completed.status == .success { state.pointee.sentPackets += count } else { state.pointee.failedPackets += count }
        Generator.publishSent(state)
    }

    /// Closes an async port from synchronous code (the session's main
    /// thread, never a thread of the cooperative pool): waits for its close.
    static func closeBlocking(_ port: AsyncPort) {
        let done = DispatchSemaphore(value: 0)
        Task.detached {
            await port.close()
            done.signal()
        }
        done.wait()
    }
}
