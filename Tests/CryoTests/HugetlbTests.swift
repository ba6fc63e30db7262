// hugetlb memory: private and shared MAP_HUGETLB mappings, SHM_HUGETLB
// segments and MFD_HUGETLB memfds (held, mapped shared or private) round-trip, still of huge pages, every byte in place (a page only
// the child wrote included). With the pool of huge pages too small at restore,
// the restore is refused in one line naming the mapping and the pool, nothing
// is left behind, and the same image restores once the pool is raised.
// The tests raise vm.nr_hugepages for their run and put the old value back.

import Foundation
import Glibc
import Testing

/// vm.nr_hugepages raised by `extra` for as long as the value lives; `set` changes it meanwhile.
private final class HugePagePool {
    static let path = "/proc/sys/vm/nr_hugepages"
    let old: Int
    let raised: Int
    init(extra: Int) throws {
        old = Int(readText(Self.path).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        raised = old + extra
        try set(raised)
    }
    func set(_ pages: Int) throws {
        try "\(pages)\n".write(toFile: Self.path, atomically: false, encoding: .utf8)
    }
    /// Takes back only the pages this pool added: another test run meanwhile may have raised it
    /// too. (Below `raised`, this test lowered it itself: back to where it was.)
    func restore() {
        let now = Int(readText(Self.path).trimmingCharacters(in: .whitespacesAndNewlines)) ?? raised
        try? set(now >= raised ? now - (raised - old) : old)
    }
    /// Huge pages (of the default size) taken now: HugePages_Total - HugePages_Free.
    static func inUse() -> Int {
        var total = 0, free = 0
        for line in readText("/proc/meminfo").split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2, let value = Int(fields[1]) else { continue }
            if fields[0] == "HugePages_Total:" { total = value }
            if fields[0] == "HugePages_Free:" { free = value }
        }
        return total - free
    }
}

extension EndToEnd {
    @Suite("hugetlb memory", .serialized)
    struct HugetlbTests {
        /// The hugetlb fixture in `mode`, ready, with the pids it printed (parent, child); the test
        /// is cancelled, saying why, where the machine has no huge pages.
        static func readyFixture(_ mode: String, in scratch: Scratch) throws -> (Fixture, [pid_t]) {
            let fixture = try Fixture("hugetlb", arguments: [mode], in: scratch)
            do {
                _ = waitUntil(timeout: 20) { fixture.lines.contains("READY") || fixture.tagged("NOHUGETLB") != nil }
                if let reason = fixture.tagged("NOHUGETLB") { try Test.cancel(Comment(rawValue: "no huge pages here: \(reason.joined(separator: " "))")) }
                try fixture.waitReady()
                return (fixture, (fixture.tagged("PIDS") ?? []).compactMap { pid_t($0) })
            } catch {
                fixture.cleanUp()
                throw error
            }
        }

        /// The fixture, and its child (which the fixture's own clean-up does not reach).
        static func stop(_ fixture: Fixture, _ pids: [pid_t]) {
            fixture.cleanUp()
            for pid in pids.dropFirst() { kill(pid, SIGKILL) }
        }

        @Test("private and shared MAP_HUGETLB mappings, and a SHM_HUGETLB segment only a child wrote half of, round-trip as huge pages",
              arguments: ["anon", "shm"])
        func roundTrip(_ mode: String) throws {
            let pool = try HugePagePool(extra: 24)
            defer { pool.restore() }
            let scratch = try Scratch("hugetlb-\(mode)")
            defer { scratch.remove() }
            let (fixture, pids) = try Self.readyFixture(mode, in: scratch)
            defer { Self.stop(fixture, pids) }
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore, timeout: 60)
        }

        @Test("an MFD_HUGETLB memfd, held and mapped shared, round-trips: still hugetlb, its bytes, its mapping its own")
        func memfd() throws {
            let pool = try HugePagePool(extra: 8)
            defer { pool.restore() }
            try selfCheckingRoundTrip("hugememfd", arguments: [], scratch: "hugememfd")
        }

        @Test("private mappings of an MFD_HUGETLB memfd round-trip: the memfd's pages, the process's own copies, still private")
        func memfdPrivate() throws {
            let pool = try HugePagePool(extra: 16)
            defer { pool.restore() }
            try selfCheckingRoundTrip("hugememfdpriv", arguments: [], scratch: "hugememfdpriv")
        }

        @Test("a MAP_NORESERVE hugetlb mapping of a child that nobody touched round-trips (shmrefused hugetlb, once refused)")
        func untouched() throws {
            let pool = try HugePagePool(extra: 4)
            defer { pool.restore() }
            try selfCheckingRoundTrip("shmrefused", arguments: ["hugetlb"], scratch: "hugetlb-untouched")
        }

        @Test("private and shared MAP_HUGETLB|MAP_NORESERVE mappings keep VmFlags nr, one made without it gains none")
        func noReserve() throws {
            let pool = try HugePagePool(extra: 8)
            defer { pool.restore() }
            try selfCheckingRoundTrip("noreserve", arguments: ["hugetlb"], scratch: "hugetlb-noreserve")
        }

        @Test("a SHM_HUGETLB|SHM_NORESERVE segment with a page never written is dumped with no huge page free (no SIGBUS in cryo)")
        func dumpWithEmptyPool() throws {
            let pool = try HugePagePool(extra: 24)
            defer { pool.restore() }
            let scratch = try Scratch("hugetlb-empty-pool")
            defer { scratch.remove() }
            let (fixture, pids) = try Self.readyFixture("shm", in: scratch)
            defer { Self.stop(fixture, pids) }
            // The pool shrunk to the pages in use: reading page 2 through memory would fault with none to give.
            try pool.set(HugePagePool.inUse())
            let (images, dump) = try dumpAndReap(fixture, in: scratch)
            #expect(dump.stderr.isEmpty, "\(dump)")
            try pool.set(pool.raised)
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore, timeout: 60)
        }

        @Test("with too few huge pages free, restore is refused in one line and leaves nothing; raised, the same image restores")
        func poolTooSmall() throws {
            let pool = try HugePagePool(extra: 24)
            defer { pool.restore() }
            let scratch = try Scratch("hugetlb-pool")
            defer { scratch.remove() }
            let (fixture, pids) = try Self.readyFixture("anon", in: scratch)
            defer { Self.stop(fixture, pids) }
            try #require(pids.count == 2, "no PIDS line\n\(fixture.report)")
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            #expect(waitUntil(timeout: 20) { !pids.contains(where: pidExists) }, "the dumped tree still runs")

            try pool.set(0)
            let refused = try cryo(["restore", "-D", images], in: scratch, timeout: 60)
            #expect(refused.failed, "restore with an empty pool should fail\n\(refused)")
            #expect(refused.stderrLines.count == 1, "want exactly one line on stderr\n\(refused)")
            #expect(refused.stderr.contains("hugetlb") && refused.stderr.contains("nr_hugepages"),
                    "the refusal should say hugetlb and nr_hugepages\n\(refused)")
            #expect(containsToken(refused.stderr, "\(pids[0])") || containsToken(refused.stderr, "\(pids[1])"),
                    "the refusal should name a pid of the tree\n\(refused)")
            #expect(!pids.contains(where: pidExists), "processes of the tree exist after the refused restore")

            try pool.set(pool.raised)
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore, timeout: 60)
        }
    }
}
