/// What the receive handler is given: a list of received packets pointing
/// into the UMEM. The list is the caller's until it calls `returnList`;
/// until then the engine does not touch its frames. The indication is a
/// plain value: keeping it (or its list) past the handler call is safe.
public struct ReceiveIndication: Sendable {
    /// The port that received the list, or the intermediate driver that
    /// passed it up: the one to return it to.
    public let port: any PacketPort
    /// The received packets, in arrival order: the caller's until returned.
    public let list: PacketList
    /// The port was low on receive frames when it indicated this list (the
    /// caller holds most of them): return lists promptly or frames will be
    /// dropped.
    public let lowResources: Bool

    @inlinable init(port: any PacketPort, list: PacketList, lowResources: Bool) {
        self.port = port
        self.list = list
        self.lowResources = lowResources
    }
}
