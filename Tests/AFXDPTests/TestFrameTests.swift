import AFXDPTestbed
import Testing

/// The test frames every traffic test and afxdp-bench check: the codec and
/// the per-flow checker, in both of its modes.
@Suite("Test frames")
struct TestFrameTests {
    @Test("the word-wise codec agrees with the byte-wise definition")
    func codec() throws {
        try TestFrame.selfTest()
    }

    @Test("a header-only check counts order and gaps, and ignores a payload it was told not to check")
    func headerOnly() {
        let a = MACAddress(bytes: [2, 0, 0, 0, 0, 1]), b = MACAddress(bytes: [2, 0, 0, 0, 0, 2])
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256, alignment: 8)
        defer { buffer.deallocate() }
        TestFrame.write(into: buffer, length: 256, sequence: 0, source: a, destination: b)
        let frame = UnsafeRawBufferPointer(buffer)
        var checked = FlowCheck(), headers = FlowCheck(checksPayload: false)
        for sequence: UInt64 in [0, 1, 3, 2] {  // 2 is missed, then arrives late
            TestFrame.stamp(buffer.baseAddress!, sequence: sequence, timestamp: 100 + sequence)
            #expect(headers.check(frame) == 100 + sequence)
            #expect(checked.check(frame) == (sequence == 0 ? 100 : nil))  // a stale payload from 1 on
        }
        #expect(headers.packets == 4 && headers.gaps == 1 && headers.reordered == 1 && headers.corrupted == 0)
        #expect(checked.corrupted == 3 && checked.expected == 1)
        buffer.storeBytes(of: 0x0800 as UInt16, toByteOffset: 12, as: UInt16.self)  // not a test frame's EtherType
        #expect(headers.check(frame) == nil && headers.foreign == 1)
    }
}
