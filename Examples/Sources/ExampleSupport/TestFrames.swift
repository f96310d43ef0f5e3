/// The frames the examples send and check: raw Ethernet with a local
/// experimental EtherType (no IP needed) and a sequence number.
///
///     0   destination MAC        6 bytes
///     6   source MAC             6 bytes
///     12  EtherType 0x88B5       2 bytes
///     14  sequence number        8 bytes, little endian
///     22  payload                byte i = UInt8(truncatingIfNeeded: sequence + i)
public enum TestFrames {
    public static let etherType: UInt16 = 0x88B5
    public static let headerLength = 22

    public static func write(into buffer: UnsafeMutableRawBufferPointer, length: Int, sequence: UInt64, from: [UInt8], to: [UInt8]) {
        for i in 0..<6 {
            buffer[i] = to[i]
            buffer[6 + i] = from[i]
        }
        buffer.storeBytes(of: etherType.bigEndian, toByteOffset: 12, as: UInt16.self)
        buffer.storeBytes(of: sequence.littleEndian, toByteOffset: 14, as: UInt64.self)
        for i in headerLength..<length { buffer[i] = UInt8(truncatingIfNeeded: sequence &+ UInt64(i)) }
    }

    /// The frame's sequence number, if it is a whole test frame.
    public static func check(_ frame: UnsafeRawBufferPointer) -> UInt64? {
        guard frame.count >= headerLength,
            UInt16(bigEndian: frame.loadUnaligned(fromByteOffset: 12, as: UInt16.self)) == etherType
        else { return nil }
        let sequence = UInt64(littleEndian: frame.loadUnaligned(fromByteOffset: 14, as: UInt64.self))
        for i in headerLength..<frame.count where frame[i] != UInt8(truncatingIfNeeded: sequence &+ UInt64(i)) { return nil }
        return sequence
    }
}
