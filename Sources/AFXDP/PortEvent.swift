import Logging

/// Something that happened to a port's link or to the kernel under it,
/// told to `PortConfiguration.onEvent` where handlers run (inside `poll`,
/// `pause`, `close`, or on the port's own thread), in the order it happened.
public enum PortEvent: Sendable, Equatable {
    /// The kernel stopped taking frames: the interface was set down or lost
    /// its carrier. Sends queue in the engine; nothing is refused.
    case linkDown
    /// The link is back: what waited goes out, in order.
    case linkUp
    /// The link stayed down past `linkDownTimeout`: the lists the engine
    /// held complete with `.linkDown`, and new ones do until the link is back.
    case linkDownTimedOut
    /// Frames were out and the completion ring did not move for
    /// `completionStallTimeout`: the engine kicks the kernel again.
    case completionStalled
    /// Completions move again after `completionStalled`.
    case completionResumed
    /// The port closed itself; every send still out completed (`.closing`).
    case failed(PortFailure)
}

/// Why a port closed itself.
public enum PortFailure: Sendable, Equatable, CustomStringConvertible {
    /// Its interface, or the interface's network namespace, was deleted.
    case deviceLost
    /// The completion ring stayed still past `completionStallFailure`
    /// with frames out: the kernel was not giving them back.
    case completionStalled

    /// As the send region keeps it in one atomic word (0: no failure).
    var code: UInt8 {
        switch self {
        case .deviceLost: return 1
        case .completionStalled: return 2
        }
    }

    init?(code: UInt8) {
        switch code {
        case 1: self = .deviceLost
        case 2: self = .completionStalled
        default: return nil
        }
    }

    /// The reason in words, e.g. "the interface was deleted".
    public var description: String {
        switch self {
        case .deviceLost: return "the interface was deleted"
        case .completionStalled: return "the kernel stopped completing sends"
        }
    }
}

/// What the send region does about links and stalls, from the configuration.
struct SendFaultPolicy: Sendable {
    /// Reads the interface's link state; nil: nothing to read (the kick's
    /// errors alone say the link is down).
    var readLink: (@Sendable () -> LinkReading)?
    var linkDownTimeout: Duration?
    var stallTimeout: Duration
    var stallFailure: Duration?
    var onEvent: (@Sendable (PortEvent) -> Void)?
    var logger: Logger? = nil

    static let none = SendFaultPolicy(readLink: nil, linkDownTimeout: nil, stallTimeout: .seconds(3600), stallFailure: nil, onEvent: nil)
}

extension PortEvent {
    /// How loud the event is in the port's log.
    var logLevel: Logger.Level {
        switch self {
        case .linkUp, .completionResumed: return .notice
        case .linkDown, .linkDownTimedOut, .completionStalled: return .warning
        case .failed: return .error
        }
    }

    var logMessage: Logger.Message {
        switch self {
        case .linkDown: return "link down: sends wait in the engine"
        case .linkUp: return "link up: what waited goes out"
        case .linkDownTimedOut: return "link down past linkDownTimeout: held sends complete with .linkDown"
        case .completionStalled: return "completion ring stalled with frames out: kicking again"
        case .completionResumed: return "completions move again"
        case .failed(let failure): return "the port closed itself: \(failure)"
        }
    }
}

extension Duration {
    /// Whole nanoseconds, for comparing with `monotonicNanoseconds`.
    var nanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        return UInt64(max(0, seconds)) &* 1_000_000_000 &+ UInt64(max(0, attoseconds) / 1_000_000_000)
    }
}
