// The hot-path half of the TestFrame format: rewriting a frame that already
// carries its addresses and EtherType, and checking a received one, eight
// payload bytes at a time. `selfTest()` proves at every start that these
// agree with AFXDPTestbed's TestFrame.write/parse, which define the format.

import AFXDPTestbed

enum FrameCodec {
    static let sequenceOffset = 14
    static let timestampOffset = 22
    static let payloadOffset = TestFrame.headerLength

    /// Byte j of a little-endian word is j: the payload's ramp within a word.
    private static let ramp: UInt64 = 0x0706_0504_0302_0100
    private static let ones: UInt64 = 0x0101_0101_0101_0101
    private static let low7: UInt64 = 0x7F7F_7F7F_7F7F_7F7F
    private static let high1: UInt64 = 0x8080_8080_8080_8080

    /// Payload word at byte `offset` for `sequence`: byte j is
    /// UInt8(truncatingIfNeeded: sequence + offset + j). Adds bytewise, with
    /// no carry from one byte into the next.
    @inline(__always)
    private static func payloadWord(_ sequence: UInt64, _ offset: Int) -> UInt64 {
        let start = UInt64(UInt8(truncatingIfNeeded: sequence &+ UInt64(truncatingIfNeeded: offset))) &* ones
        return ((start & low7) &+ (ramp & low7)) ^ ((start ^ ramp) & high1)
    }

    /// Rewrites sequence, timestamp and payload of a frame of `length` bytes
    /// whose first 14 bytes (addresses, EtherType) are already in place.
    @inline(__always)
    static func rewrite(_ base: UnsafeMutableRawPointer, length: Int, sequence: UInt64, timestamp: UInt64) {
        base.storeBytes(of: sequence.littleEndian, toByteOffset: sequenceOffset, as: UInt64.self)
        base.storeBytes(of: timestamp.littleEndian, toByteOffset: timestampOffset, as: UInt64.self)
        let payload = base + payloadOffset
        let count = length - payloadOffset
        var offset = 0
        while offset + 8 <= count {
            payload.storeBytes(of: payloadWord(sequence, offset).littleEndian, toByteOffset: offset, as: UInt64.self)
            offset += 8
        }
        var value = UInt8(truncatingIfNeeded: sequence &+ UInt64(truncatingIfNeeded: offset))
        while offset < count {
            payload.storeBytes(of: value, toByteOffset: offset, as: UInt8.self)
            value &+= 1
            offset += 1
        }
    }

    enum Verdict { case intact, corrupted, foreign }

    /// Reads a received frame: its sequence and timestamp, and whether the
    /// EtherType and every payload byte are as written.
    @inline(__always)
    static func check(_ base: UnsafeRawPointer, length: Int) -> (verdict: Verdict, sequence: UInt64, timestamp: UInt64) {
        guard length >= payloadOffset,
              UInt16(bigEndian: base.loadUnaligned(fromByteOffset: 12, as: UInt16.self)) == TestFrame.etherType
        else { return (.foreign, 0, 0) }
        let sequence = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: sequenceOffset, as: UInt64.self))
        let timestamp = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: timestampOffset, as: UInt64.self))
        let payload = base + payloadOffset
        let count = length - payloadOffset
        var offset = 0
        var difference: UInt64 = 0
        while offset + 8 <= count {
            difference |= UInt64(littleEndian: payload.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
                ^ payloadWord(sequence, offset)
            offset += 8
        }
        var value = UInt8(truncatingIfNeeded: sequence &+ UInt64(truncatingIfNeeded: offset))
        while offset < count {
            difference |= UInt64(payload.load(fromByteOffset: offset, as: UInt8.self) ^ value)
            value &+= 1
            offset += 1
        }
        return (difference == 0 ? .intact : .corrupted, sequence, timestamp)
    }

    /// Checks this codec against TestFrame over every length and a spread of
    /// sequence numbers; throws if they disagree anywhere.
    static func selfTest() throws(BenchError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: TestFrame.maximumLength, alignment: 64)
        defer { buffer.deallocate() }
        let a = MACAddress(bytes: [2, 0, 0, 0, 0, 1])
        let b = MACAddress(bytes: [2, 0, 0, 0, 0, 2])
        let sequences: [UInt64] = [0, 1, 7, 8, 255, 256, 0x1234_5678_9ABC_DEF0, .max - 3, .max]
        for length in TestFrame.minimumLength...TestFrame.maximumLength {
            for sequence in sequences where length % 97 == 0 || length < 80 || sequence == 7 {
                TestFrame.write(into: buffer, length: length, sequence: 0, source: a, destination: b)
                rewrite(buffer.baseAddress!, length: length, sequence: sequence, timestamp: sequence ^ 0x55)
                let view = UnsafeRawBufferPointer(start: buffer.baseAddress, count: length)
                guard let parsed = TestFrame.parse(view), parsed.intact, parsed.sequence == sequence,
                      parsed.timestamp == sequence ^ 0x55
                else { throw BenchError("internal: FrameCodec.rewrite disagrees with TestFrame (length \(length))") }
                let checked = check(buffer.baseAddress!, length: length)
                guard checked.verdict == .intact, checked.sequence == sequence else {
                    throw BenchError("internal: FrameCodec.check rejects a TestFrame (length \(length))")
                }
                if length > payloadOffset {
                    let last = buffer.baseAddress! + length - 1
                    last.storeBytes(of: last.load(as: UInt8.self) ^ 0x10, as: UInt8.self)
                    guard check(buffer.baseAddress!, length: length).verdict == .corrupted,
                          TestFrame.parse(view)?.intact == false
                    else { throw BenchError("internal: FrameCodec.check misses a corrupted byte (length \(length))") }
                }
            }
        }
    }
}
