// Sends every test frame it receives back where it came from: swaps the two
// MAC addresses in place and sends the very list it was given (zero copy:
// the frames never leave the UMEM, and no list is allocated). When a list's
// send completes, returning it puts its frames back in the fill ring.
//
//   reflector veth1 --namespace ns-b --count 1000 --seconds 10

import AFXDP
import ExampleSupport
import Glibc
import Synchronization

let arguments = Arguments.parse(usage: "reflector <interface> [--namespace NS] [--count N] [--seconds S]")
stopOnSignals()

/// Written by the handlers (they run inside `poll`, on this thread), read by the loop.
final class Counts: Sendable {
    let reflected = Atomic<Int>(0)
    let notSent = Atomic<Int>(0)
}
let counts = Counts()

let port: XDPPort
do {
    port = try XDPPort.open(
        arguments.configuration,
        onReceive: { indication in
            do {
                try indication.list.packets.forEach { packet throws(AFXDPError) in
                    let frame = try packet.bytes
                    guard frame.count >= 12 else { return }
                    for i in 0..<6 { frame.swapAt(i, 6 + i) }
                }
                try indication.port.send(indication.list)  // the same frames, back out
            } catch {
                try? indication.port.returnList(indication.list)
            }
        },
        onSendComplete: { batch in
            for list in batch {
                let packets = (try? list.count) ?? 0
                if (try? list.status) == .success {
                    counts.reflected.add(packets, ordering: .relaxed)
                } else {
                    counts.notSent.add(packets, ordering: .relaxed)
                }
                try? batch.port.returnList(list)  // the frames go home to the fill ring
            }
        })
} catch {
    exitWith(error)
}

say("ready: reflecting test frames on \(arguments.interface)")
let deadline = now() + arguments.seconds
while counts.reflected.load(ordering: .relaxed) < arguments.count, now() < deadline, !stopRequested {
    if !port.poll() { usleep(20) }
}
port.close()
let reflected = counts.reflected.load(ordering: .relaxed)
say("reflected \(reflected) frames (\(counts.notSent.load(ordering: .relaxed)) not sent)")
exit(reflected >= arguments.count ? 0 : 1)
