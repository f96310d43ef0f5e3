/// What the receive handler is given: a list of received packets pointing
/// into the UMEM. The list is the caller's until it calls `Port.returnList`;
/// until then the engine does not touch its frames. The indication is a
/// plain value: keeping it (or its list) past the handler call is safe.
public struct ReceiveIndication {
    /// The port that received the list.
    public let port: Port
    public let list: PacketList
    /// The port was low on receive frames when it indicated this list (the
    /// caller holds most of them): return lists promptly or frames will be
    /// dropped.
    public let lowResources: Bool

    @inlinable init(port: Port, list: PacketList, lowResources: Bool) {
        self.port = port
        self.list = list
        self.lowResources = lowResources
    }
}
