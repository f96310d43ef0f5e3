/// The send region whole: its door (owner and mailbox, which any thread
/// touches) and its owner-only state, with the two kinds of pass that drive
/// it. `XDPPort` decides when each runs; tests drive a region alone the same way.
final class SendRegion: @unchecked Sendable {
    // @unchecked: `door` holds atomics; `context` is touched only by the
    // door's owner (see SendContext).
    let door = RegionDoorbell()
    let context: SendContext

    init(context: SendContext) { self.context = context }

    /// Hands a list the caller sent to the region; its owner queues it on
    /// its next pass, in the order lists arrived.
    @inline(__always)
    func accept(_ slot: UInt32) {
        door.mailbox.push(slot, links: context.table.lists)
    }

    /// A pass that calls no handler: takes the mailbox, places, kicks. It
    /// reads the completion ring only when the frames in flight leave too
    /// little room for what is queued (see `SendContext.servicePlacing`):
    /// completions wait for the next delivering pass. By the region's owner.
    @inline(__always)
    func placingPass(admit: SendStatus) {
        context.servicePlacing(mailbox: door.mailbox, admit: admit)
    }

    /// A pass that delivers what completed, then places what the handler
    /// sent (one more pass, which delivers nothing: a handler that resends
    /// every list cannot keep the pass going). By the region's owner.
    @discardableResult
    func deliveringPass(admit: SendStatus) -> Bool {
        var progress = context.service(mailbox: door.mailbox, admit: admit)
        if context.hasEvents { context.deliverEvents() }
        if context.deliver() {
            progress = true
            if !door.mailbox.isEmpty { context.service(mailbox: door.mailbox, admit: admit) }
        }
        return progress
    }

    /// Whether nothing is queued, in flight, or awaiting delivery. By the owner.
    var isSettled: Bool { !context.hasWork && !context.hasUndelivered }
}
