@testable import LPMReactor
import Testing

/// The registration table as plain logic: no descriptor is opened, the backend is a closure.
@Suite("RegistrationTable")
struct RegistrationTableTests {
    struct Refused: Error {}

    /// Inserts `fd`, recording the token the backend would get.
    private func insert(
        _ table: inout RegistrationTable, _ fd: CInt, _ interest: Reactor.Interest = .readable,
        user: Bool = true, seen: @escaping (Reactor.Readiness) -> Void = { _ in }
    ) -> (Reactor.Registration, UInt64) {
        var token: UInt64 = 0
        let r = table.insert(fd: fd, interest: interest, trigger: .level, isUser: user, handler: seen) { (t) throws(Never) in token = t }
        return (r, token)
    }

    private func delivered(_ table: RegistrationTable, _ token: UInt64, _ readiness: Reactor.Readiness) -> Reactor.Readiness? {
        guard let (handler, ready) = table.readyHandler(for: BackendEvent(token: token, readiness: readiness)) else { return nil }
        handler(ready)
        return ready
    }

    @Test("an event reaches its registration with only what it asked for, plus hangup and error")
    func delivery() {
        var table = RegistrationTable()
        let (_, token) = insert(&table, 5, .readable)
        #expect(delivered(table, token, [.readable, .writable]) == .readable)
        #expect(delivered(table, token, .writable) == nil)
        #expect(delivered(table, token, [.writable, .hangup]) == .hangup)
        #expect(delivered(table, token, .error) == .error)
    }

    @Test("after remove, events and handles of the old registration are stale")
    func removeMakesStale() {
        var table = RegistrationTable()
        let (r, token) = insert(&table, 7)
        let r11 = table.remove(r)
        #expect(r11?.fd == 7)
        let r12 = table.remove(r)
        #expect(r12 == nil)
        #expect(table.descriptor(of: r) == nil)
        #expect(delivered(table, token, .readable) == nil)
        // The slot is reused for the same number: a new generation and a new token.
        let (r2, token2) = insert(&table, 7)
        #expect(r2.index == r.index)
        #expect(r2.generation != r.generation)
        #expect(token2 != token)
        #expect(delivered(table, token, .readable) == nil)
        #expect(delivered(table, token2, .readable) == .readable)
        let r13 = table.remove(r)
        #expect(r13 == nil)
        #expect(table.descriptor(of: r2) == 7)
    }

    @Test("a number registered again without remove takes over; the old one goes stale")
    func numberReuse() {
        var table = RegistrationTable()
        let (old, oldToken) = insert(&table, 3)
        let (new, newToken) = insert(&table, 3)
        #expect(table.userCount == 1)
        #expect(table.descriptor(of: old) == nil)
        #expect(table.registration(ofFD: 3) == new)
        #expect(delivered(table, oldToken, .readable) == nil)
        #expect(delivered(table, newToken, .readable) == .readable)
    }

    @Test("modify gives a new token: events carrying the old one are dropped")
    func modify() throws {
        var table = RegistrationTable()
        let (r, token) = insert(&table, 4, .readable)
        var change: (UInt64, UInt64)?
        let known = table.modify(r, interest: .writable) { (_, old, new, _) throws(Never) in change = (old, new) }
        #expect(known)
        let (old, new) = try #require(change)
        #expect(old == token && new != token)
        #expect(delivered(table, token, .writable) == nil)
        #expect(delivered(table, new, [.readable, .writable]) == .writable)
        // A refused change leaves it as it was.
        var refused = false
        do {
            _ = try table.modify(r, interest: .readable) { (_, _, _, _) throws(Refused) in throw Refused() }
        } catch { refused = true }
        #expect(refused)
        #expect(delivered(table, new, [.readable, .writable]) == .writable)
        let r14 = table.remove(r)
        #expect(r14 != nil)
        let stale = table.modify(r, interest: .readable) { (_, _, _, _) throws(Never) in }
        #expect(!stale)
    }

    @Test("a refused insert leaves no registration behind")
    func refusedInsert() {
        var table = RegistrationTable()
        var refused = false
        do {
            _ = try table.insert(fd: 9, interest: .readable, trigger: .edge, isUser: true, handler: { _ in }) { (_) throws(Refused) in
                throw Refused()
            }
        } catch { refused = true }
        #expect(refused)
        #expect(table.userCount == 0)
        #expect(table.registration(ofFD: 9) == nil)
    }

    @Test("the user count follows inserts and removes of user registrations only")
    func userCount() {
        var table = RegistrationTable()
        let (a, _) = insert(&table, 10)
        let (b, _) = insert(&table, 11, user: false)
        let (c, _) = insert(&table, 12)
        #expect(table.userCount == 2)
        _ = table.remove(b)
        #expect(table.userCount == 2)
        _ = table.remove(a)
        _ = table.remove(c)
        #expect(table.userCount == 0)
        _ = insert(&table, 13)
        table.removeAll()
        #expect(table.userCount == 0)
    }
}
