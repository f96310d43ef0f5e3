// The hot-path half of the TestFrame format: rewriting a frame that already
// carries its addresses and EtherType, and checking a received one, eight
// payload bytes at a time. `selfTest()` proves that these agree with
// `write`/`parse`, which define the format (byte by byte, as the C reference
// does, so that instruction counts compare).

import AFXDP

extension TestFrame {
    @usableFromInline static let sequenceOffset = 14
    @usableFromInline static let timestampOffset = 22
    @usableFromInline static var payloadOffset: Int { headerLength }

    /// Byte j of a little-endian word is j: the payload's ramp within a word.
    @usableFromInline static let ramp: UInt64 = 0x0706_0504_0302_0100
    @usableFromInline static let ones: UInt64 = 0x0101_0101_0101_0101
    @usableFromInline static let low7: UInt64 = 0x7F7F_7F7F_7F7F_7F7F
    @usableFromInline static let high1: UInt64 = 0x8080_8080_8080_8080

    /// Payload word at byte `offset` for `sequence`: byte j is
    /// UInt8(truncatingIfNeeded: sequence + offset + j). Adds bytewise, with
    /// no carry from one byte into the next.
    @inlinable @inline(__always)
    static func payloadWord(_ sequence: UInt64, _ offset: Int) -> UInt64 {
        let start = UInt64(UInt8(truncatingIfNeeded: sequence &+ UInt64(truncatingIfNeeded: offset))) &* ones
        return ((start & low7) &+ (ramp & low7)) ^ ((start ^ ramp) & high1)
    }

    /// Rewrites sequence, timestamp and payload of a frame of `length` bytes
    /// whose first 14 bytes (addresses, EtherType) are already in place.
    @inlinable @inline(__always)
    public static func rewrite(_ base: UnsafeMutableRawPointer, length: Int, sequence: UInt64, timestamp: UInt64) {
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

    /// Rewrites only the sequence number and timestamp, as packet generators
    /// that write headers alone do (DPDK testpmd's txonly): the payload keeps
    /// whatever bytes the frame last carried, so a receiver must not check it.
    @inlinable @inline(__always)
    public static func stamp(_ base: UnsafeMutableRawPointer, sequence: UInt64, timestamp: UInt64) {
        base.storeBytes(of: sequence.littleEndian, toByteOffset: sequenceOffset, as: UInt64.self)
        base.storeBytes(of: timestamp.littleEndian, toByteOffset: timestampOffset, as: UInt64.self)
    }

    public enum Verdict: Sendable { case intact, corrupted, foreign }

    /// Reads a received frame's EtherType, sequence and timestamp, and not
    /// its payload: the check for frames written with `stamp`.
    @inlinable @inline(__always)
    public static func checkHeader(_ base: UnsafeRawPointer, length: Int) -> (verdict: Verdict, sequence: UInt64, timestamp: UInt64) {
        guard length >= payloadOffset,
              UInt16(bigEndian: base.loadUnaligned(fromByteOffset: 12, as: UInt16.self)) == TestFrame.etherType
        else { return (.foreign, 0, 0) }
        let sequence = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: sequenceOffset, as: UInt64.self))
        let timestamp = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: timestampOffset, as: UInt64.self))
        return (.intact, sequence, timestamp)
    }

    /// Reads a received frame: its sequence and timestamp, and whether the
    /// EtherType and every payload byte are as written.
    @inlinable @inline(__always)
    public static func check(_ base: UnsafeRawPointer, length: Int) -> (verdict: Verdict, sequence: UInt64, timestamp: UInt64) {
        let (verdict, sequence, timestamp) = checkHeader(base, length: length)
        guard verdict == .intact else { return (.foreign, 0, 0) }
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

    /// Checks the word-wise codec (`rewrite`, `check`, `stamp`, `checkHeader`) against the byte-wise
    /// definition (`write`, `parse`) over every length and a spread of
    /// sequence numbers; throws if they disagree anywhere.
    public static func selfTest() throws(TestbedError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: TestFrame.maximumLength, alignment: 64)
        defer { buffer.deallocate() }
        let a = MACAddress(bytes: [2, 0, 0, 0, 0, 1])
        let b = MACAddress(bytes: [2, 0, 0, 0, 0, 2])
        let sequences: [UInt64] = [0, 1, 7, 8, 255, 256, 0x1234_5678_9ABC_DEF0, .max - 3, .max]
        for length in TestFrame.minimumLength...TestFrame.maximumLength {
            for sequence in sequences where length % 97 == 0 || length < 80 || sequence == 7 {
                write(into: buffer, length: length, sequence: 0, source: a, destination: b)
                rewrite(buffer.baseAddress!, length: length, sequence: sequence, timestamp: sequence ^ 0x55)
                let view = UnsafeRawBufferPointer(start: buffer.baseAddress, count: length)
                guard let parsed = parse(view), parsed.intact, parsed.sequence == sequence,
                      parsed.timestamp == sequence ^ 0x55
                else { throw TestbedError(message: "internal: FrameCodec.rewrite disagrees with TestFrame (length \(length))") }
                let checked = check(buffer.baseAddress!, length: length)
                guard checked.verdict == .intact, checked.sequence == sequence else {
                    throw TestbedError(message: "internal: FrameCodec.check rejects a TestFrame (length \(length))")
                }
                if length > payloadOffset {
                    let last = buffer.baseAddress! + length - 1
                    last.storeBytes(of: last.load(as: UInt8.self) ^ 0x10, as: UInt8.self)
                    guard check(buffer.baseAddress!, length: length).verdict == .corrupted,
                          parse(view)?.intact == false
                    else { throw TestbedError(message: "internal: FrameCodec.check misses a corrupted byte (length \(length))") }
                }
                // Header only: a stale payload passes, the new stamp is read.
                stamp(buffer.baseAddress!, sequence: sequence &+ 1, timestamp: 9)
                let header = checkHeader(buffer.baseAddress!, length: length)
                guard header.verdict == .intact, header.sequence == sequence &+ 1, header.timestamp == 9 else {
                    throw TestbedError(message: "internal: FrameCodec.checkHeader misreads a stamped TestFrame (length \(length))")
                }
            }
        }
    }
}

/// What one flow's receiver saw: every frame checked for its sequence number
/// (in order, a gap, or late) and its payload. The one checker the tests, the
/// benchmark suites and afxdp-bench share.
public struct FlowCheck: Sendable {
    /// The next sequence number expected: everything below it arrived or was
    /// counted lost.
    public var expected: UInt64 = 0
    public var packets = 0
    public var bytes = 0
    /// Sequence numbers skipped when a later one arrived.
    public var gaps = 0
    /// Frames with a sequence number below one seen before: late or duplicated.
    public var reordered = 0
    /// Test frames whose payload is not as written.
    public var corrupted = 0
    /// Frames that are not test frames.
    public var foreign = 0
    /// Whether payloads are checked (frames written with `rewrite`), or only
    /// EtherType and sequence (frames written with `stamp`; `corrupted` then
    /// stays 0).
    public let checksPayload: Bool

    public init(checksPayload: Bool = true) { self.checksPayload = checksPayload }

    /// Checks one frame; returns its send timestamp if it is intact.
    @inlinable @inline(__always)
    public mutating func check(_ frame: UnsafeRawBufferPointer) -> UInt64? {
        packets &+= 1
        bytes &+= frame.count
        let (verdict, sequence, timestamp) = checksPayload
            ? TestFrame.check(frame.baseAddress!, length: frame.count)
            : TestFrame.checkHeader(frame.baseAddress!, length: frame.count)
        switch verdict {
        case .foreign:
            foreign &+= 1
            return nil
        case .corrupted:
            corrupted &+= 1  // its sequence number cannot be trusted
            return nil
        case .intact:
            break
        }
        if sequence == expected {
            expected &+= 1
        } else if sequence > expected {
            gaps &+= Int(truncatingIfNeeded: sequence &- expected)
            expected = sequence &+ 1
        } else {
            reordered &+= 1
        }
        return timestamp
    }

    /// Whether every frame so far came intact and in order.
    public var isClean: Bool { gaps == 0 && reordered == 0 && corrupted == 0 && foreign == 0 }
}

extension TestFrame {
    /// Writes test frames into every packet of a list the caller holds and
    /// sets their lengths: packet k gets sequence `firstSequence + k`.
    public static func fill(
        _ list: PacketList, length: Int, firstSequence: UInt64, timestamp: UInt64 = 0,
        source: MACAddress, destination: MACAddress
    ) throws(AFXDPError) {
        var sequence = firstSequence
        try list.packets.forEach { packet throws(AFXDPError) in
            write(into: try packet.buffer, length: length, sequence: sequence, timestamp: timestamp, source: source, destination: destination)
            try packet.setLength(length)
            sequence &+= 1
        }
    }
}
