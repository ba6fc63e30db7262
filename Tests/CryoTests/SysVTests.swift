// System V shared memory attached by a tree: a segment that still exists at
// restore is attached again; one that is gone (removed after the dump, or
// marked for removal and destroyed with the tree) is made again with its id,
// key, size, mode and contents.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("System V IPC")
    struct SysVTests {
        @Test("shared memory segments round-trip: still there, or removed after the dump and made again",
              arguments: [false, true])
        func sharedMemory(removeAfterDump: Bool) throws {
            let scratch = try Scratch("sysvshm")
            defer { scratch.remove() }
            let fixture = try Fixture("sysvshm", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let ids = try #require(fixture.tagged("SEGMENTS")?.compactMap { Int32($0) })
            try #require(ids.count == 2)
            defer { for id in ids { shmctl(id, IPC_RMID, nil) } }
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            // Marked for removal, the private segment died with its last attach.
            var ds = shmid_ds()
            #expect(shmctl(ids[1], IPC_STAT, &ds) != 0, "the private segment should be gone after the dump killed the tree")
            if removeAfterDump { #expect(shmctl(ids[0], IPC_RMID, nil) == 0) }
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore)
        }

        @Test("a segment that only a child wrote (shmrefused sysv, once refused) round-trips")
        func childWrittenSegment() throws {
            let scratch = try Scratch("sysvshm-child")
            defer { scratch.remove() }
            let fixture = try Fixture("shmrefused", arguments: ["sysv"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore)
        }
    }
}
