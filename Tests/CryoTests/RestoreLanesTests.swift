// RestoreLanes.split: which whole subtrees the second restore thread takes.
// Pure code: no root, no processes.

@testable import Cryo
import Testing

@Suite("restore lanes (no root)")
struct RestoreLanesTests {
    /// Process i > 0 is a child of (i - 1) / 3, as in Tests/Fixtures/tree.c; pids from 1000.
    static func ternary(_ count: Int) -> [(pid: Int32, ppid: Int32)] {
        var processes: [(pid: Int32, ppid: Int32)] = []
        for i in 0..<count {
            let parent: Int32 = i == 0 ? 1 : Int32(1000 + (i - 1) / 3)
            processes.append((pid: Int32(1000 + i), ppid: parent))
        }
        return processes
    }

    /// Every taken process's children are taken too, the root never, and at most half in all.
    static func check(_ processes: [(pid: Int32, ppid: Int32)], _ taken: [Int32: Int]) {
        let root = processes[0].pid
        #expect(taken[root] == nil)
        #expect(taken.count <= processes.count / 2)
        for p in processes where p.pid != root && taken[p.ppid] != nil { #expect(taken[p.pid] != nil, "child \(p.pid) of a taken subtree") }
    }

    @Test("127 processes: lane 1 takes close to half, in whole subtrees")
    func tree127() {
        let processes = Self.ternary(127)
        let taken = RestoreLanes.split(processes, root: 1000)
        Self.check(processes, taken)
        #expect(taken.count >= 55, "lane 1 got \(taken.count) of 127")
    }

    @Test("lane 0 clones the tops of lane 1's subtrees and their ancestors first, every parent before its children")
    func handoverFirst() {
        let processes = Self.ternary(127)
        let parents = Dictionary(uniqueKeysWithValues: processes.map { ($0.pid, $0.ppid) })
        let taken = RestoreLanes.split(processes, root: 1000)
        let tops = RestoreLanes.handedOver(taken, parents: parents)
        #expect(!tops.isEmpty)
        let first = RestoreLanes.withAncestors(tops, parents: parents, root: 1000)
        #expect(first.isSuperset(of: tops))
        #expect(!first.contains(1000))
        // What lane 0 clones: its own processes and the tops it hands over.
        let lane0 = processes.dropFirst().filter { taken[$0.pid] == nil || tops.contains($0.pid) }
        let order = RestoreLanes.cloningOrder(Array(lane0), first: first, pid: \.pid)
        #expect(order.count == lane0.count)
        var seen: Set<Int32> = [1000]
        for p in order {
            #expect(seen.contains(p.ppid), "pid \(p.pid) comes before its parent \(p.ppid)")
            seen.insert(p.pid)
        }
        // Every top is cloned before lane 0's first process that lane 1 does not wait for.
        let lastTop = order.lastIndex { tops.contains($0.pid) }!
        #expect(lastTop < first.count, "the last top is clone \(lastTop + 1) of \(order.count)")
        #expect(first.count < order.count / 2)
    }

    @Test("a chain of 200,000 processes is split without deep recursion, and fast")
    func chain() {
        var processes: [(pid: Int32, ppid: Int32)] = []
        for i in 0..<200_000 {
            let parent: Int32 = i == 0 ? 1 : Int32(9 + i)
            processes.append((pid: Int32(10 + i), ppid: parent))
        }
        let clock = ContinuousClock()
        var taken: [Int32: Int] = [:]
        let elapsed = clock.measure { taken = RestoreLanes.split(processes, root: 10) }
        Self.check(processes, taken)
        // The subtree of the 100,001st process is the deepest half.
        #expect(taken.count == 100_000)
        #expect(elapsed < .seconds(5))
    }

    @Test("a root with only leaves: half of them move")
    func flat() {
        var processes: [(pid: Int32, ppid: Int32)] = [(pid: 50, ppid: 1)]
        for i in 1...20 { processes.append((pid: Int32(50 + i), ppid: 50)) }
        let taken = RestoreLanes.split(processes, root: 50)
        Self.check(processes, taken)
        #expect(taken.count == 10)
    }
}
