// afxdp-embed <input.o> <output.swift> [-- <compiler> <argument>...]
//
// Turns the compiled XDP object into Swift source for the AFXDP module, so that
// the engine carries its own program and `swift build` alone is enough. Run by
// the EmbedXDPProgram build-tool plugin, not by hand.
//
// With a command after `--`, runs it first (the plugin passes the clang
// invocation that writes <input.o>). Compiling and embedding are one build
// command because SwiftPM copies every declared output of a plugin command that
// is not a source file into a resource bundle: a separate clang step would give
// the engine a Bundle.module, and with it a Foundation dependency, for an
// intermediate file (swiftlang/swift-package-manager#7116).
//
// The bytes go out as one base64 string literal: the compiler takes a long
// literal in no time, where a [UInt8] literal of the same size type-checks for
// seconds. No Foundation: this runs on every rebuild of the object and should
// start fast and stay small.

// Linux only, like the engine it builds for.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

func fail(_ message: String) -> Never {
    // write(2) rather than fputs(stderr): Swift 6 rejects the global `stderr`.
    let line = Array("afxdp-embed: \(message)\n".utf8)
    _ = line.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
    exit(1)
}

func readAll(path: String) -> [UInt8] {
    guard let file = fopen(path, "rb") else {
        fail("cannot open \(path): \(String(cString: strerror(errno)))")
    }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let count = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, file) }
        bytes.append(contentsOf: chunk[..<count])
        if count < chunk.count {
            if ferror(file) != 0 { fail("cannot read \(path)") }
            return bytes
        }
    }
}

func writeAll(path: String, text: String) {
    // Write beside the target, then rename: a build interrupted midway must not
    // leave a truncated source file that looks up to date.
    let temporary = path + ".tmp"
    guard let file = fopen(temporary, "wb") else {
        fail("cannot create \(temporary): \(String(cString: strerror(errno)))")
    }
    let utf8 = Array(text.utf8)
    let written = utf8.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
    if written != utf8.count || fclose(file) != 0 {
        unlink(temporary)
        fail("cannot write \(temporary)")
    }
    if rename(temporary, path) != 0 {
        unlink(temporary)
        fail("cannot rename \(temporary) to \(path): \(String(cString: strerror(errno)))")
    }
}

/// Runs `command` (found on PATH if not a path) and fails unless it exits 0.
func run(_ command: [String]) {
    var pid: pid_t = 0
    let argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    let spawned = posix_spawnp(&pid, command[0], nil, nil, argv, environ)
    guard spawned == 0 else {
        fail("cannot run \(command[0]): \(String(cString: strerror(spawned)))")
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) == -1 {
        guard errno == EINTR else { fail("waitpid: \(String(cString: strerror(errno)))") }
    }
    // WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift cannot see: the low
    // 7 bits are the signal that ended it (0 if it exited), the next 8 the code.
    let signal = status & 0x7F
    let code = (status >> 8) & 0xFF
    if signal != 0 { fail("\(command[0]) was killed by signal \(signal)") }
    if code != 0 { fail("\(command[0]) exited with status \(code)") }
}

/// Standard base64 (RFC 4648 section 4) with `=` padding.
func base64Encode(_ bytes: [UInt8]) -> String {
    let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    var out: [UInt8] = []
    out.reserveCapacity((bytes.count + 2) / 3 * 4)
    var index = 0
    while index < bytes.count {
        let remaining = bytes.count - index
        let b0 = UInt32(bytes[index])
        let b1 = remaining > 1 ? UInt32(bytes[index + 1]) : 0
        let b2 = remaining > 2 ? UInt32(bytes[index + 2]) : 0
        let group = b0 << 16 | b1 << 8 | b2
        out.append(alphabet[Int(group >> 18 & 0x3F)])
        out.append(alphabet[Int(group >> 12 & 0x3F)])
        out.append(remaining > 1 ? alphabet[Int(group >> 6 & 0x3F)] : UInt8(ascii: "="))
        out.append(remaining > 2 ? alphabet[Int(group & 0x3F)] : UInt8(ascii: "="))
        index += 3
    }
    return String(decoding: out, as: UTF8.self)
}

let arguments = CommandLine.arguments
guard arguments.count == 3 || (arguments.count > 4 && arguments[3] == "--") else {
    fail("usage: afxdp-embed <input.o> <output.swift> [-- <compiler> <argument>...]")
}
if arguments.count > 4 {
    // Remove the old object first, so a compiler that fails without writing
    // one cannot let a stale object be embedded.
    unlink(arguments[1])
    run(Array(arguments[4...]))
}
let object = readAll(path: arguments[1])
// An ELF that is not there or not ELF means the clang step went wrong; stop
// here rather than embed something the loader will reject at run time.
guard object.count >= 4, object[0] == 0x7F, object[1] == 0x45, object[2] == 0x4C, object[3] == 0x46 else {
    fail("\(arguments[1]) is not an ELF object")
}

let source = """
    // Generated by afxdp-embed from bpf/afxdp_redirect.bpf.c. Do not edit.
    enum EmbeddedXDPProgram {
        /// The compiled XDP object (ELF for the BPF target), base64-encoded.
        static let objectBase64: StaticString = "\(base64Encode(object))"
        static let byteCount = \(object.count)
    }

    """
writeAll(path: arguments[2], text: source)
