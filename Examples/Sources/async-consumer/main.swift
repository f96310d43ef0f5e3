// Takes received lists through AsyncPort, the library's Swift concurrency
// face: a task awaits each list, checks its frames (whole, numbered in
// order), and returns it. The run ends after `--count` frames, after
// `--seconds` (the consuming task is cancelled: its loop ends and close()
// gives back anything not yet taken), or on SIGINT.
//
//   async-consumer veth1 --namespace ns-b --count 1000

import AFXDP
import ExampleSupport
import Glibc

let arguments = Arguments.parse(usage: "async-consumer <interface> [--namespace NS] [--count N] [--seconds S]")
stopOnSignals()

struct Tally: Sendable {
    var frames = 0
    var damaged = 0
    var outOfOrder = 0
}

let port: AsyncPort
do {
    port = try AsyncPort.open(arguments.configuration)
} catch {
    exitWith(error)
}
say("ready: consuming test frames on \(arguments.interface)")

let consumer = Task { () -> Tally in
    var tally = Tally()
    var expected: UInt64 = 0
    for await indication in port.received {
        try? indication.list.packets.forEach { packet throws(AFXDPError) in
            guard let sequence = TestFrames.check(UnsafeRawBufferPointer(try packet.bytes)) else {
                tally.damaged += 1
                return
            }
            if sequence != expected { tally.outOfOrder += 1 }
            expected = sequence + 1
            tally.frames += 1
        }
        try? port.returnList(indication.list)
        if tally.frames >= arguments.count { break }
    }
    return tally
}
// The time limit and the signals: cancelling the consumer ends its loop.
let watcher = Task {
    let deadline = now() + arguments.seconds
    while now() < deadline, !stopRequested { try await Task.sleep(for: .milliseconds(10)) }
    consumer.cancel()
}

let tally = await consumer.value
watcher.cancel()
await port.close()
say("received \(tally.frames) frames: \(tally.damaged) damaged, \(tally.outOfOrder) out of order")
exit(tally.frames >= arguments.count && tally.damaged == 0 && tally.outOfOrder == 0 ? 0 : 1)
