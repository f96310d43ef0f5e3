import AFXDP
#if canImport(Glibc)
import Glibc
#endif

/// The few options the examples take, read from the command line:
/// `<interface> [--namespace NS] [--count N] [--seconds S] [--rate PPS]
/// [--size BYTES] [--to MAC] [--output FILE]`. A mistake prints what is
/// expected and exits with status 2; nothing is opened before that.
public struct Arguments {
    public var interface = ""
    public var namespace: String?
    public var count = 1000
    public var seconds = 10.0
    public var rate = 100_000.0
    public var size = 60
    public var to: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
    public var output: String?

    public static func parse(usage: String) -> Arguments {
        var arguments = Arguments()
        var words = CommandLine.arguments.dropFirst()
        func fail(_ message: String) -> Never {
            say("error: \(message)\nusage: \(usage)")
            exit(2)
        }
        func value(_ name: String) -> String {
            guard let value = words.popFirst() else { fail("\(name) needs a value") }
            return value
        }
        while let word = words.popFirst() {
            switch word {
            case "--help", "-h":
                say("usage: \(usage)")
                exit(0)
            case "--namespace": arguments.namespace = value(word)
            case "--count":
                guard let count = Int(value(word)), count > 0 else { fail("--count must be a number above 0") }
                arguments.count = count
            case "--seconds":
                guard let seconds = Double(value(word)), seconds > 0 else { fail("--seconds must be a number above 0") }
                arguments.seconds = seconds
            case "--rate":
                guard let rate = Double(value(word)), rate > 0 else { fail("--rate must be packets per second, above 0") }
                arguments.rate = rate
            case "--size":
                guard let size = Int(value(word)), (TestFrames.headerLength...1514).contains(size) else {
                    fail("--size must be \(TestFrames.headerLength)...1514 bytes")
                }
                arguments.size = size
            case "--to":
                guard let mac = parseMAC(value(word)) else { fail("--to must be a MAC address such as 02:00:00:00:00:0b") }
                arguments.to = mac
            case "--output": arguments.output = value(word)
            default:
                if word.hasPrefix("-") || !arguments.interface.isEmpty { fail("unexpected \(word)") }
                arguments.interface = word
            }
        }
        if arguments.interface.isEmpty { fail("name the interface") }
        return arguments
    }

    /// The port configuration these arguments ask for: only test frames
    /// (EtherType 0x88B5) reach the socket; the rest goes to the kernel.
    public var configuration: PortConfiguration {
        var configuration = PortConfiguration(interface: interface, networkNamespace: namespace)
        configuration.etherTypeFilter = TestFrames.etherType
        return configuration
    }
}

public func parseMAC(_ text: String) -> [UInt8]? {
    let parts = text.split(separator: ":")
    guard parts.count == 6 else { return nil }
    let bytes = parts.compactMap { UInt8($0, radix: 16) }
    return bytes.count == 6 ? bytes : nil
}

/// Reports an error the way a user wants it (what, and what to do), and
/// exits with status 1.
public func exitWith(_ error: any Error) -> Never {
    say("error: \(error)")
    exit(1)
}

/// Seconds on the monotonic clock.
public func now() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
}

/// Prints a line at once, also when standard output is a file or a pipe
/// (where `print` would hold it in a buffer until exit): a script waiting
/// for "ready" sees it when it is said.
public func say(_ line: String) {
    let text = line + "\n"
    var utf8 = Array(text.utf8)
    var offset = 0
    while offset < utf8.count {
        let written = utf8.withUnsafeMutableBytes { write(STDOUT_FILENO, $0.baseAddress! + offset, $0.count - offset) }
        if written <= 0 { return }
        offset += written
    }
}
