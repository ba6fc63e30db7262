// CPU lists and affinity masks (pure code: no root, no processes).

@testable import Cryo
import Testing

@Suite("CPU affinity masks (no root)")
struct AffinityUnitTests {
    @Test("a kernel CPU list becomes a mask; a malformed one or one past 1024 CPUs is refused")
    func cpuLists() {
        #expect(ThreadScheduling.cpuList("0-1\n").map { Array($0.prefix(2)) } == [0b11, 0])
        #expect(ThreadScheduling.cpuList("0,2-4,64,127").map { Array($0.prefix(3)) } == [0b11101, 1 | UInt64(1) << 63, 0])
        #expect(ThreadScheduling.cpuList("1023")?[15] == UInt64(1) << 63)
        for bad in ["", "1024", "3-1", "a", "1-2-3", "-1", " "] {
            #expect(ThreadScheduling.cpuList(bad) == nil, "\(bad)")
        }
    }

    @Test("a thread on every online CPU is saved as unrestricted; any other keeps its mask, trimmed")
    func restricted() {
        let online = ThreadScheduling.cpuList("0-3")!
        #expect(ThreadScheduling.restrictedCPUs([0b1111] + Array(repeating: 0, count: 15), online: online) == nil)
        // More than online (a CPU offline now) is unrestricted too.
        #expect(ThreadScheduling.restrictedCPUs([0b11111], online: online) == nil)
        #expect(ThreadScheduling.restrictedCPUs([0b0110] + Array(repeating: 0, count: 15), online: online) == [0b0110])
        #expect(ThreadScheduling.restrictedCPUs([0, 1], online: ThreadScheduling.cpuList("0-64")) == [0, 1])
        #expect(ThreadScheduling.restrictedCPUs([0b1], online: nil) == nil)
    }

    @Test("masks print as kernel CPU lists")
    func describe() {
        #expect(ThreadScheduling.describe([0b1011_0111]) == "0-2,4-5,7")
        #expect(ThreadScheduling.describe([1 << 63, 1]) == "63-64")
        #expect(ThreadScheduling.describe([0, 0]) == "none")
    }

    @Test("an image's CPUs must be a non-empty mask of at most 1024 CPUs")
    func validation() {
        var scheduling = ThreadScheduling(policy: 0, flags: 0, nice: 0, priority: 0)
        scheduling.cpus = [0b10]
        #expect(throws: Never.self) { try scheduling.validate(file: "task-1.img", tid: 1) }
        for bad: [UInt64] in [[0], [], Array(repeating: 1, count: 17)] {
            scheduling.cpus = bad
            #expect(throws: (any Error).self) { try scheduling.validate(file: "task-1.img", tid: 1) }
        }
    }
}
