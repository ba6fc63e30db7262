// The order sessions come back in (pure code: no root, no processes).

@testable import Cryo
import Testing

@Suite("session order (no root)")
struct SessionOrderUnitTests {
    typealias P = (pid: Int32, sid: Int32, creator: Int32)
    static func plan(_ processes: [P]) throws -> SessionOrder {
        try SessionOrder.plan(processes, root: processes[0].pid, comm: { _ in "x" })
    }

    @Test("a tree without setsid after fork needs no order")
    func plain() throws {
        let order = try Self.plan([(10, 10, 1), (11, 10, 10), (12, 12, 10), (13, 12, 12)])
        #expect(order.isEmpty && order.deferred.isEmpty)
    }

    @Test("a child left in the old session, two setsids down: both parents wait with theirs")
    func chain() throws {
        // 10 root; 20 setsid after forking 21; 21 setsid after forking 22, which stayed in 10.
        let order = try Self.plan([(10, 10, 1), (20, 20, 10), (21, 21, 20), (22, 10, 21), (23, 20, 20)])
        #expect(order.early == [21, 22])
        #expect(order.deferred == [20, 21])
        // 21 (early) comes before 23 (in 20's new session); each after its creator.
        let entries: [Int32] = [20, 23, 21, 22]
        let ordered = order.cloningOrder(entries, root: 10, pid: { $0 }, creator: { [10, 20, 20, 21][entries.firstIndex(of: $0)!] })
        #expect(ordered == [20, 21, 23, 22])
    }

    @Test("what no order can rebuild is refused: a leader gone, children from two old sessions, the root's old session")
    func refused() {
        // 31 stays in session 5, which neither its parent 30 nor anyone above was in.
        #expect(throws: CryoError.self) { try Self.plan([(10, 10, 1), (30, 10, 10), (31, 5, 30)]) }
        // 20 would have had to be in sessions 10 and 15 before its setsid.
        #expect(throws: CryoError.self) { try Self.plan([(10, 10, 1), (15, 15, 10), (20, 20, 15), (21, 10, 20), (22, 15, 20)]) }
        // The root left a child in the session it had before its own setsid: outside the tree.
        #expect(throws: CryoError.self) { try Self.plan([(10, 10, 1), (11, 7, 10)]) }
    }
}
