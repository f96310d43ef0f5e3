import AFXDPRings

// The copy of descriptors on the hot paths (out of the RX ring into a list,
// out of a list into the TX ring), with the look at every descriptor the
// paths need folded into the same pass: one read of the run, no separate
// loop, no call to memmove for 64 descriptors.
//
// A descriptor is moved as two 64-bit lanes: the address, and the length
// with the options above it (little-endian; swapped below for big-endian).
// Summing that second lane sums the lengths in its low 32 bits: a run's
// lengths add up to far less than 2^32, and the options' bits only ever
// carry upwards. (Written one descriptor a step: the compiler unrolls it
// into better code than a hand-unrolled four, which it fills with shuffles.)

/// Copies `count` descriptors; returns the OR of their addresses less
/// `base`, and the sum of their lengths.
///
/// The receive pass checks the OR: it is no smaller than any one offset, so
/// under a pool's span, every address is in the pool. With a span that is a
/// power of two, as the default pools' are, good addresses always pass, so
/// one branch checks a run; otherwise the caller looks at each address when
/// the OR says maybe. The send pass takes the bytes alone (inlined, the
/// compiler drops the OR it does not read).
@inline(__always)
func copyDescriptors(
    from source: UnsafePointer<XDPDescriptor>, to destination: UnsafeMutablePointer<XDPDescriptor>,
    count: Int, offsetBy base: UInt64
) -> (offsets: UInt64, bytes: UInt32) {
    let from = UnsafeRawPointer(source), to = UnsafeMutableRawPointer(destination)
    let stride = MemoryLayout<XDPDescriptor>.stride  // the kernel's struct xdp_desc: 16 bytes, two lanes
    let offset = SIMD2<UInt64>(base, 0)
    var offsets = SIMD2<UInt64>(repeating: 0), sums = SIMD2<UInt64>(repeating: 0)
    for index in 0..<count {
        let descriptor = from.loadUnaligned(fromByteOffset: index &* stride, as: SIMD2<UInt64>.self)
        to.storeBytes(of: descriptor, toByteOffset: index &* stride, as: SIMD2<UInt64>.self)
        offsets |= descriptor &- offset
        sums &+= descriptor
    }
    return (offsets[0], lengths(in: sums))
}

/// The lengths' sum from the lane sums: the low 32 bits of the second lane.
@inline(__always)
private func lengths(in sums: SIMD2<UInt64>) -> UInt32 {
    #if _endian(little)
    return UInt32(truncatingIfNeeded: sums[1])
    #else
    return UInt32(truncatingIfNeeded: sums[1] &>> 32)
    #endif
}
