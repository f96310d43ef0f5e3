import AFXDPSystem
import Atomics

/// The shared region of a port: what any thread may change, all under one
/// lock (`lock`): the port's state, the device (socket or simulated kernel)
/// and its XDP program, the close in progress and the figures frozen at
/// close, and the free stacks of the port's send pool (`SendPool`, which is
/// handed this same lock).
///
/// The send and receive regions never take this lock on their hot paths;
/// `allocateList`, `returnList` of a send list, state changes and statistics do.
final class SharedRegion: @unchecked Sendable {
    // @unchecked: every `var` below is touched only with `lock` held; the
    // state is an atomic written under the lock and read without it.
    let lock = PThreadLock()

    // MARK: Guarded by lock
    @exclusivity(unchecked) var device: Device
    @exclusivity(unchecked) var program: XDPProgram?
    /// When a close in progress stops waiting for the kernel and tears down.
    @exclusivity(unchecked) var closeDeadline: ContinuousClock.Instant?
    /// Frozen at close, since the socket and program go away.
    @exclusivity(unchecked) var finalKernelStatistics: KernelSocketStatistics?
    @exclusivity(unchecked) var finalProgramCounters: (seen: Int, redirected: Int, passed: Int)?

    // MARK: Written under lock, read by anyone
    /// On a cache line of its own: read by every call.
    private let stateStorage = UnsafeMutablePointer<UInt8.AtomicRepresentation>.allocate(capacity: 64)

    init(device: Device, program: XDPProgram?) {
        self.device = device
        self.program = program
        stateStorage.initialize(repeating: .init(PortState.running.rawValue), count: 64)
    }

    deinit { stateStorage.deallocate() }

    private var stateWord: UnsafeAtomic<UInt8> { UnsafeAtomic(at: stateStorage) }

    var state: PortState { PortState(rawValue: stateWord.load(ordering: .acquiring)) ?? .closed }

    /// With `lock` held (or by the thread that owns both regions at teardown).
    func setState(_ state: PortState) {
        stateWord.store(state.rawValue, ordering: .sequentiallyConsistent)
    }
}
