@testable import AFXDP
import AFXDPTestbed
import Testing

/// The adaptive fill depth: its policy alone, then a port using it on veth.
@Suite("Fill ring depth", .serialized)
struct FillDepthTests {
    @Test("adaptive: starts at the whole ring, shrinks by a quarter per 64 calm turns, down to its minimum and no further")
    func shrinksWhenCalm() {
        var depth = FillDepth(minimum: 512, maximum: 4096, adapts: true)
        #expect(depth.target == 4096)
        var steps: [Int] = []
        for _ in 0..<100_000 {
            let before = depth.target
            // One pass: a list of 64 taken, the thread caught up, the kernel far from dry.
            if depth.received(64) { steps.append(depth.target) }
            let moved = depth.startPass(inFillRing: 100, caughtUp: true)
            #expect(!moved)
            if depth.target == before, depth.target == 512 { break }
        }
        #expect(steps == [3072, 2304, 1728, 1296, 972, 729, 547, 512])
        // Calm forever: stays at the minimum.
        for _ in 0..<100_000 {
            let moved = depth.received(64)
            #expect(!moved)
        }
        #expect(depth.target == 512)
    }

    @Test("adaptive: grows twofold when the kernel ran dry while the thread kept up, not while it lagged")
    func growsOnlyWhenAway() {
        var depth = FillDepth(minimum: 512, maximum: 4096, adapts: true)
        while depth.target > 512 { _ = depth.received(64) }
        // The thread could not keep up (RX not emptied): more depth only adds cold frames.
        let moved1 = depth.startPass(inFillRing: 0, caughtUp: false)
        #expect(!moved1)
        #expect(depth.target == 512)
        // Not dry: nothing to do.
        let moved2 = depth.startPass(inFillRing: 1, caughtUp: true)
        #expect(!moved2)
        // Dry after a pass that had caught up: the thread was away longer than the depth lasts.
        let moved3 = depth.startPass(inFillRing: 0, caughtUp: true)
        #expect(moved3)
        #expect(depth.target == 1024)
        let moved4 = depth.startPass(inFillRing: 0, caughtUp: true)
        #expect(moved4)
        let moved5 = depth.startPass(inFillRing: 0, caughtUp: true)
        #expect(moved5)
        #expect(depth.target == 4096)
        let moved6 = depth.startPass(inFillRing: 0, caughtUp: true)
        #expect(!moved6, "never past the ring")
        #expect(depth.target == 4096)
    }

    @Test("full: the whole ring, always; a minimum past the ring is the ring")
    func fullNeverMoves() {
        var depth = FillDepth(minimum: 512, maximum: 2048, adapts: false)
        for _ in 0..<100_000 {
            let moved = depth.received(64)
            #expect(!moved)
        }
        let moved7 = depth.startPass(inFillRing: 0, caughtUp: true)
        #expect(!moved7)
        #expect(depth.target == 2048)
        let small = FillDepth(minimum: 512, maximum: 256, adapts: true)
        #expect(small.minimum == 256 && small.target == 256)
    }

    @Test("a port with an adaptive fill ring on veth: 300,000 frames intact and in order, the kernel given no more than the depth, all frames home")
    func adaptivePortOnVeth() throws {
        try VethTestbed.withVethTestbed { bed in
            let received = ReceiveChecker()
            let completions = CompletionChecker()
            let a = try openPort(bed, end: "a", onSendComplete: completions.handle)
            defer { a.close() }
            let b = try openPort(bed, end: "b", configure: {
                $0.fillRingSize = 2048
                $0.receiveRingSize = 2048
                $0.fillRingDepth = .adaptive
            }, onReceive: received.handle)
            defer { b.close() }
            #expect(b.statistics.receive.fillDepth == 2048)

            let total = 300_000
            var generator = Generator(port: a, completions: completions, total: total, batch: 64, from: bed.macAddressA, to: bed.macAddressB)
            let deadline = Deadline(seconds: 120)
            while !(generator.done && received.receivedCount >= total && completions.completed == generator.listNumber.asInt) {
                try #require(!deadline.passed, "traffic stalled: sent \(generator.sentFrames), received \(received.receivedCount)")
                try generator.step(receivedByPeer: received.receivedCount, window: vethQueueWindow)
                a.poll()
                b.poll()
                // Right after a shrink the kernel may still hold the old depth's
                // frames; it is given none until it holds fewer than the new one.
                let receive = b.statistics.receive
                #expect(receive.framesWithKernel <= 2048)
            }
            try generator.returnSpares()

            #expect(received.receivedCount == total)
            #expect(received.nextExpected(stream: 0) == UInt64(total))
            #expect(received.outOfOrder == 0)
            #expect(received.corrupted == 0)
            // 64 turns of 2048 frames, then of 1536: shrunk once or twice, and
            // never grown (the window keeps fewer frames in flight than the minimum).
            let receive = b.statistics.receive
            #expect(receive.fillDepth == 1536 || receive.fillDepth == 1152, "depth \(receive.fillDepth)")
            #expect(receive.fillDepthGrowths == 0)
            #expect(receive.framesWithKernel <= receive.fillDepth, "given \(receive.framesWithKernel) frames past a depth of \(receive.fillDepth)")
            #expect(b.statistics.kernel.fillRingEmpty == 0)
            a.close()
            b.close()
            #expect(a.poolStatus.allFramesHome, "\(a.poolStatus)")
            #expect(b.poolStatus.allFramesHome, "\(b.poolStatus)")
        }
    }
}
