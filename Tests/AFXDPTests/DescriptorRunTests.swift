import AFXDPRings
import AFXDPSystem
import Testing

@testable import AFXDP

/// The hot paths' descriptor copy (DescriptorRuns.swift): what they copy,
/// count and flag, against a plain loop, for every run length a list can hold.
@Suite("Descriptor runs")
struct DescriptorRunTests {
    @Test("Copied whole, options included; lengths summed; the OR of the offsets flags any address outside the pool")
    func copyCheckCount() {
        var random = SeededGenerator(seed: 0xD35C)
        let frameSize: UInt64 = 4096
        let base = 2048 * frameSize, span = 2048 * frameSize  // a pool of 2048 frames after 2048 others
        let source = UnsafeMutablePointer<XDPDescriptor>.allocate(capacity: 81)
        let destination = UnsafeMutablePointer<XDPDescriptor>.allocate(capacity: 81)
        defer {
            source.deallocate()
            destination.deallocate()
        }
        for count in 0...80 {
            for outside in [nil, 0, count / 2, count - 1] where outside.map({ $0 >= 0 && $0 < count }) ?? true {
                var lengths: UInt32 = 0
                for index in 0..<count {
                    let frame = UInt64.random(in: 0..<2048, using: &random)
                    var address = base + frame * frameSize + UInt64.random(in: 0..<256, using: &random)
                    if index == outside {
                        // Below the pool, or past its end.
                        address = Bool.random(using: &random) ? frame * frameSize : base + span + frame * frameSize
                    }
                    let length = UInt32.random(in: 1...9000, using: &random)
                    let options = UInt32.random(in: 0...1, using: &random) * XDPDescriptor.continues
                    source[index] = XDPDescriptor(address: address, length: length, options: options)
                    lengths &+= length
                }
                destination.update(repeating: XDPDescriptor(address: 0, length: 0), count: 81)
                let (offsets, bytes) = copyDescriptors(from: source, to: destination, count: count, offsetBy: base)
                #expect((0..<count).allSatisfy { destination[$0] == source[$0] }, "run of \(count)")
                #expect(destination[count] == XDPDescriptor(address: 0, length: 0), "nothing past the run")
                #expect(bytes == lengths, "run of \(count)")
                #expect((offsets >= span) == (outside != nil), "run of \(count), address \(outside.map(String.init) ?? "none") outside")

                destination.update(repeating: XDPDescriptor(address: 0, length: 0), count: 81)
                // As the send pass calls it: the bytes alone.
                #expect(copyDescriptors(from: source, to: destination, count: count, offsetBy: 0).bytes == lengths)
                #expect((0..<count).allSatisfy { destination[$0] == source[$0] })
            }
        }
    }
}
