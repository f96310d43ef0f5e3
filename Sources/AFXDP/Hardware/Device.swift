import AFXDPRings

/// What plays the NIC for a port: a real AF_XDP socket, or a kernel
/// simulated in memory.
enum Device {
    case socket(XDPSocket)
    case simulated(SimulatedKernel)

    var fd: Int32 {
        switch self {
        case .socket(let socket): return socket.fd
        case .simulated: return -1
        }
    }

    var rings: (fill: RingMemory, completion: RingMemory, rx: RingMemory, tx: RingMemory) {
        switch self {
        case .socket(let socket): return (socket.fill, socket.completion, socket.rx, socket.tx)
        case .simulated(let kernel): return (kernel.fill.memory, kernel.completion.memory, kernel.rx.memory, kernel.tx.memory)
        }
    }

    func statistics() -> KernelSocketStatistics {
        switch self {
        case .socket(let socket): return socket.statistics()
        case .simulated(let kernel): return kernel.statistics
        }
    }
}
