/// The reactor's descriptor registrations: slots with generations, and the backend tokens
/// that name them.
///
/// A pure value: it makes no system call (the caller passes the backend call as a closure that
/// gets the token) and runs no handler (``readyHandler(for:)`` hands it back), so it is tested
/// as plain logic.
///
/// A token packs the slot index (high 32 bits) beside an *arm* number (low 32 bits) that is
/// new for every registration and every modification: an event whose token no longer matches
/// its slot is stale and dropped. A ``Reactor/Registration`` carries the slot's generation,
/// bumped on each reuse, so a handle to a removed registration never reaches its successor.
/// The count of user registrations is kept here, where a slot is taken and freed, and nowhere
/// else.
struct RegistrationTable {
    typealias Handler = (Reactor.Readiness) -> Void

    private struct Slot {
        var fd: CInt = -1
        var generation: UInt32 = 0
        var arm: UInt32 = 0
        var interest: Reactor.Interest = []
        var trigger: Reactor.Trigger = .level
        var handler: Handler?
        /// Made by the user (counted in ``userCount``), not by the reactor for itself.
        var isUser = false
    }

    private var slots: [Slot] = []
    private var freeSlots: [UInt32] = []
    /// Descriptor number -> slot index + 1 (0: none).
    private var slotByFD: [UInt32] = []
    private var nextArm: UInt32 = 0

    /// How many live registrations the user made (the reactor's own are not counted).
    private(set) var userCount = 0

    @inline(__always)
    private static func token(_ index: Int, _ arm: UInt32) -> UInt64 { UInt64(index) << 32 | UInt64(arm) }

    /// Adds a registration of `fd`. `attach` gets the new token and makes the backend call; when
    /// it throws, the table is as it was, but for a registration of the same descriptor number
    /// (closed without deregistering): that one is dead in any case and is dropped first.
    mutating func insert<E: Error>(
        fd: CInt, interest: Reactor.Interest, trigger: Reactor.Trigger, isUser: Bool,
        handler: @escaping Handler, attach: (_ token: UInt64) throws(E) -> Void
    ) throws(E) -> Reactor.Registration {
        if let old = slotIndex(ofFD: fd) { release(Int(old)) }
        let index = slots.takeSlot(reusing: &freeSlots, else: Slot())
        nextArm &+= 1
        let arm = nextArm
        do {
            try attach(Self.token(Int(index), arm))
        } catch {
            freeSlots.append(index)
            throw error
        }
        let i = Int(index)
        slots[i].fd = fd
        slots[i].generation &+= 1
        slots[i].arm = arm
        slots[i].interest = interest
        slots[i].trigger = trigger
        slots[i].handler = handler
        slots[i].isUser = isUser
        if isUser { userCount += 1 }
        if Int(fd) >= slotByFD.count {
            slotByFD.append(contentsOf: repeatElement(0, count: Int(fd) + 1 - slotByFD.count))
        }
        slotByFD[Int(fd)] = index + 1
        return Reactor.Registration(index: index, generation: slots[i].generation)
    }

    /// The descriptor of a live registration, or `nil` when it is stale.
    func descriptor(of r: Reactor.Registration) -> CInt? {
        liveSlot(r).map { slots[$0].fd }
    }

    /// Changes the interest of a live registration; `change` gets the descriptor, the old and
    /// the new token and whether the registration is edge-triggered, and makes the backend
    /// call. Returns `false` for a stale registration. Nothing changes when `change` throws.
    mutating func modify<E: Error>(
        _ r: Reactor.Registration, interest: Reactor.Interest,
        change: (_ fd: CInt, _ old: UInt64, _ new: UInt64, _ edge: Bool) throws(E) -> Void
    ) throws(E) -> Bool {
        guard let i = liveSlot(r) else { return false }
        if slots[i].interest == interest { return true }
        let arm = nextArm &+ 1
        try change(slots[i].fd, Self.token(i, slots[i].arm), Self.token(i, arm), slots[i].trigger == .edge)
        nextArm = arm
        slots[i].arm = arm
        slots[i].interest = interest
        return true
    }

    /// Removes a live registration and returns its descriptor and token (for the backend), or
    /// `nil` when it is stale.
    mutating func remove(_ r: Reactor.Registration) -> (fd: CInt, token: UInt64)? {
        guard let i = liveSlot(r) else { return nil }
        let removed = (slots[i].fd, Self.token(i, slots[i].arm))
        release(i)
        return removed
    }

    /// The registration of descriptor `fd`, if one is live.
    func registration(ofFD fd: CInt) -> Reactor.Registration? {
        slotIndex(ofFD: fd).map { Reactor.Registration(index: $0, generation: slots[Int($0)].generation) }
    }

    /// The handler an event goes to, and what to tell it: `nil` when the token is stale or
    /// nothing the registration asks for is ready. Hangup and error are always delivered.
    @inline(__always)
    func readyHandler(for event: BackendEvent) -> (Handler, Reactor.Readiness)? {
        let i = Int(truncatingIfNeeded: event.token >> 32)
        let arm = UInt32(truncatingIfNeeded: event.token)
        guard i < slots.count, slots[i].arm == arm, let handler = slots[i].handler else { return nil }
        var allowed: Reactor.Readiness = [.hangup, .error]
        if slots[i].interest.contains(.readable) { allowed.insert(.readable) }
        if slots[i].interest.contains(.writable) { allowed.insert(.writable) }
        let ready = event.readiness.intersection(allowed)
        return ready.isEmpty ? nil : (handler, ready)
    }

    /// Drops every registration (the backend is being closed).
    mutating func removeAll() {
        self = RegistrationTable()
    }

    private func slotIndex(ofFD fd: CInt) -> UInt32? {
        guard fd >= 0, Int(fd) < slotByFD.count, slotByFD[Int(fd)] != 0 else { return nil }
        return slotByFD[Int(fd)] - 1
    }

    private func liveSlot(_ r: Reactor.Registration) -> Int? {
        let i = Int(r.index)
        guard i < slots.count, slots[i].handler != nil, slots[i].generation == r.generation else { return nil }
        return i
    }

    /// Frees a live slot: the only place, with `insert`, where ``userCount`` changes.
    private mutating func release(_ i: Int) {
        if slots[i].isUser { userCount -= 1 }
        let fd = slots[i].fd
        if Int(fd) < slotByFD.count, slotByFD[Int(fd)] == UInt32(i) + 1 { slotByFD[Int(fd)] = 0 }
        slots[i].handler = nil
        slots[i].fd = -1
        slots[i].arm = 0
        slots[i].isUser = false
        freeSlots.append(UInt32(i))
    }
}

extension Array {
    /// Empties the array and keeps its storage, element by element: `removeAll(keepingCapacity:)`
    /// goes through a generic `replaceSubrange`, about 100 instructions however few the elements,
    /// on paths that run every iteration with one or two (the loop's events and jobs, a flush's
    /// channels).
    @inlinable
    package mutating func removeAllKeepingCapacity() {
        while popLast() != nil {}
    }

    /// The index of a free slot: the last one `free` lists (taken off it), or a new one made by
    /// appending `make()`. For the slot arrays of ``RegistrationTable`` and ``TimerHeap``.
    @inline(__always)
    mutating func takeSlot(reusing free: inout [UInt32], else make: @autoclosure () -> Element) -> UInt32 {
        if let index = free.popLast() { return index }
        append(make())
        return UInt32(count - 1)
    }
}
