// Sends `--count` test frames, numbered from 0, at no more than `--rate`
// frames per second, in lists of up to 32, and waits for every send to
// complete.
//
//   generator veth0 --namespace ns-a --to 02:00:00:00:00:0b --count 1000 --rate 100000

import AFXDP
import ExampleSupport
import Glibc
import Synchronization

let arguments = Arguments.parse(
    usage: "generator <interface> [--namespace NS] [--to MAC] [--count N] [--rate PPS] [--size BYTES] [--seconds S]")
stopOnSignals()

final class Outcome: Sendable {
    let sent = Atomic<Int>(0)
    let notSent = Atomic<Int>(0)
}
let outcome = Outcome()
let source: [UInt8] = [0x02, 0, 0, 0, 0, 0x01]
let framesPerList = 32

let port: XDPPort
do {
    port = try XDPPort.open(
        arguments.configuration,
        onReceive: { indication in try? indication.port.returnList(indication.list) },
        onSendComplete: { batch in
            for list in batch {
                let frames = (try? list.count) ?? 0
                if (try? list.status) == .success {
                    outcome.sent.add(frames, ordering: .relaxed)
                } else {
                    outcome.notSent.add(frames, ordering: .relaxed)
                }
                try? batch.port.returnList(list)
            }
        })
} catch {
    exitWith(error)
}

let start = now()
let deadline = start + arguments.seconds
var next: UInt64 = 0
do {
    while next < UInt64(arguments.count), now() < deadline, !stopRequested {
        // The rate: no more frames than the time since the start allows.
        let allowed = min(arguments.count, Int(arguments.rate * (now() - start)) + 1)
        let room = allowed - Int(next)
        guard room > 0 else {
            port.poll()
            continue
        }
        guard let list = try port.allocateList(packetCount: min(room, framesPerList)) else {
            port.poll()  // the pool is short: completions bring lists back
            continue
        }
        try list.packets.forEach { packet throws(AFXDPError) in
            TestFrames.write(into: try packet.buffer, length: arguments.size, sequence: next, from: source, to: arguments.to)
            try packet.setLength(arguments.size)
            next += 1
        }
        try port.send(list)
        port.poll()
    }
    while port.hasSendsOutstanding, now() < deadline + 2 {
        if !port.poll() { usleep(20) }
    }
} catch {
    port.close()
    exitWith(error)
}
port.close()
let sent = outcome.sent.load(ordering: .relaxed)
say("sent \(sent) frames of \(arguments.size) bytes in \(Int((now() - start) * 1000)) ms (\(outcome.notSent.load(ordering: .relaxed)) not sent)")
exit(sent == arguments.count ? 0 : 1)
