/// The engine's XDP program as a compiled BPF object (ELF), the same bytes
/// every port loads: for tools that want to inspect it (`llvm-objdump`) or
/// load it themselves (the C reference benchmark does, so that both run the
/// very same program).
public enum XDPProgramObject {
    /// The object's bytes. Decoded on each call; not for hot paths.
    public static func bytes() -> [UInt8] { EmbeddedXDPProgram.objectBytes() }
}
