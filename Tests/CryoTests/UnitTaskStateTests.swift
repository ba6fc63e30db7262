// Pure pieces of task state restore, without root: which seccomp filters each
// thread installs, and how older images' filter order is read.

@testable import Cryo
import Foundation
import Testing

@Suite("task state plans (no root)")
struct TaskStatePlanTests {
    // Stand-in one-instruction filters: only identity and order matter here.
    let f1: [UInt64] = [1], f2: [UInt64] = [2], f3: [UInt64] = [3]

    @Test("seccomp: the filters all threads share are synced from the leader, each thread adds its own")
    func seccompPlan() {
        let leader = SeccompState(noNewPrivileges: true, filters: [f1, f3])
        let threads: [SeccompState?] = [SeccompState(noNewPrivileges: true, filters: [f1, f2]),
                                         SeccompState(noNewPrivileges: true, filters: [f1]), nil]
        let plan = SeccompState.restorePlan(leader: leader, threads: threads)
        #expect(plan.count == 4, "\(plan)")
        #expect(plan[0].thread == 0 && plan[0].synced && plan[0].state.filters == [f1] && plan[0].state.noNewPrivileges)
        let own = plan.dropFirst().map { "\($0.thread):\($0.state.filters):\($0.synced):\($0.state.noNewPrivileges)" }
        #expect(own == ["0:[[3]]:false:false", "1:[[2]]:false:false", "3:[[3]]:false:false"], "\(own)")
    }

    @Test("seccomp: one chain for all threads is one synced command; none is no command")
    func seccompSame() {
        let leader = SeccompState(noNewPrivileges: true, filters: [f1, f2])
        let plan = SeccompState.restorePlan(leader: leader, threads: [nil, nil])
        #expect(plan.count == 1 && plan[0].synced && plan[0].state.filters == [f1, f2])
        #expect(SeccompState.restorePlan(leader: nil, threads: [nil]).isEmpty)
    }

    @Test("seccomp: no filter in common passes no_new_privs to each thread itself")
    func seccompNothingShared() {
        let plan = SeccompState.restorePlan(leader: SeccompState(noNewPrivileges: true, filters: [f1]),
                                            threads: [SeccompState(noNewPrivileges: true, filters: [])])
        #expect(plan.map(\.thread) == [0, 1] && plan.allSatisfy { !$0.synced && $0.state.noNewPrivileges }, "\(plan)")
    }

    @Test("seccomp: strict mode goes to each thread in it, by its own command, never synced")
    func seccompStrict() {
        let strict = SeccompState(noNewPrivileges: false, filters: [], strict: true)
        // Thread 1 is as the leader (nil), thread 2 left strict mode out (it was cloned before the leader entered it).
        let plan = SeccompState.restorePlan(leader: strict, threads: [nil, SeccompState.none])
        #expect(plan.map(\.thread) == [0, 1], "\(plan)")
        #expect(plan.allSatisfy { $0.state.strict == true && !$0.synced && $0.state.filters.isEmpty }, "\(plan)")
        #expect(SeccompState.restorePlan(leader: nil, threads: [strict]).map { "\($0.thread):\($0.state.strict ?? false)" } == ["1:true"])
    }

    @Test("seccomp: an image without oldestFirst (newest first, as cryo wrote it before) is installed oldest first")
    func seccompOldImage() throws {
        let json = #"{"noNewPrivileges": false, "filters": [[2], [1]]}"#
        let old = try JSONDecoder().decode(SeccompState.self, from: Data(json.utf8))
        #expect(old.oldestFirst == nil)
        #expect(SeccompState.restorePlan(leader: old, threads: []).first?.state.filters == [f1, f2])
    }
}
