/// The frames tests and benchmarks send: raw Ethernet with a local
/// experimental EtherType (no IP needed), a sequence number, a send
/// timestamp, and a payload derived from the sequence number so that every
/// byte can be checked on arrival.
///
///     0   destination MAC        6 bytes
///     6   source MAC             6 bytes
///     12  EtherType 0x88B5       2 bytes
///     14  sequence number        8 bytes, little endian
///     22  send time (ns)         8 bytes, little endian
///     30  payload                byte i = UInt8(truncatingIfNeeded: sequence &+ i)
public enum TestFrame {
    public static let etherType: UInt16 = 0x88B5
    public static let headerLength = 30
    /// The shortest frame that carries the header.
    public static let minimumLength = headerLength
    public static let maximumLength = 1514

    /// Writes a frame of `length` bytes into `buffer`.
    @inlinable
    public static func write(
        into buffer: UnsafeMutableRawBufferPointer, length: Int, sequence: UInt64, timestamp: UInt64 = 0,
        source: MACAddress, destination: MACAddress
    ) {
        precondition(length >= minimumLength && length <= buffer.count, "frame length \(length) out of range")
        let base = buffer.baseAddress!
        // Octets 0-5 destination, 6-11 source: two 4-byte and two 2-byte stores.
        base.storeBytes(of: UInt32(truncatingIfNeeded: destination.packed).littleEndian, toByteOffset: 0, as: UInt32.self)
        base.storeBytes(of: UInt16(truncatingIfNeeded: destination.packed >> 32).littleEndian, toByteOffset: 4, as: UInt16.self)
        base.storeBytes(of: UInt32(truncatingIfNeeded: source.packed).littleEndian, toByteOffset: 6, as: UInt32.self)
        base.storeBytes(of: UInt16(truncatingIfNeeded: source.packed >> 32).littleEndian, toByteOffset: 10, as: UInt16.self)
        base.storeBytes(of: etherType.bigEndian, toByteOffset: 12, as: UInt16.self)
        base.storeBytes(of: sequence.littleEndian, toByteOffset: 14, as: UInt64.self)
        base.storeBytes(of: timestamp.littleEndian, toByteOffset: 22, as: UInt64.self)
        writePayload(base + headerLength, count: length - headerLength, sequence: sequence)
    }

    @inlinable
    static func writePayload(_ pointer: UnsafeMutableRawPointer, count: Int, sequence: UInt64) {
        var value = UInt8(truncatingIfNeeded: sequence)
        for i in 0..<count {
            pointer.storeBytes(of: value, toByteOffset: i, as: UInt8.self)
            value &+= 1
        }
    }

    /// What a received frame says of itself.
    public struct Parsed: Equatable, Sendable {
        public var sequence: UInt64
        public var timestamp: UInt64
        /// Whether the EtherType and every payload byte are as written.
        public var intact: Bool
        @inlinable public init(sequence: UInt64, timestamp: UInt64, intact: Bool) {
            self.sequence = sequence
            self.timestamp = timestamp
            self.intact = intact
        }
    }

    /// Reads and checks a frame; nil if it is too short or not ours.
    @inlinable
    public static func parse(_ bytes: UnsafeRawBufferPointer) -> Parsed? {
        guard bytes.count >= headerLength, let base = bytes.baseAddress else { return nil }
        guard UInt16(bigEndian: base.loadUnaligned(fromByteOffset: 12, as: UInt16.self)) == etherType else { return nil }
        let sequence = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 14, as: UInt64.self))
        let timestamp = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 22, as: UInt64.self))
        var expected = UInt8(truncatingIfNeeded: sequence)
        var intact = true
        for i in headerLength..<bytes.count {
            if base.load(fromByteOffset: i, as: UInt8.self) != expected { intact = false; break }
            expected &+= 1
        }
        return Parsed(sequence: sequence, timestamp: timestamp, intact: intact)
    }
}
