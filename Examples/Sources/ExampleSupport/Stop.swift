#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Set by SIGINT or SIGTERM: the programs stop their loop, close the port
/// (which detaches the XDP program) and exit, instead of dying with the
/// program still attached.
private let stopFlag = Atomic<Bool>(false)

public var stopRequested: Bool { stopFlag.load(ordering: .relaxed) }

public func stopOnSignals() {
    for sig in [SIGINT, SIGTERM] {
        signal(sig) { _ in stopFlag.store(true, ordering: .relaxed) }
    }
}
