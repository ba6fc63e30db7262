// System V shared memory attached by a tree: a segment that still exists at
// restore is attached again; one that is gone (removed after the dump, or
// marked for removal and destroyed with the tree) is made again with its id,
// key, size, mode and contents.

import Foundation
import Glibc
import CryoSystem
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
            try selfCheckingRoundTrip("shmrefused", arguments: ["sysv"], scratch: "sysvshm-child")
        }

        /// Removes the sysvipc fixture's objects (the fixture removes them itself when it passes).
        static func removeObjects(_ ids: [Int32]) {
            shmctl(ids[0], IPC_RMID, nil)
            shmctl(ids[1], IPC_RMID, nil)
            try? SysVSem.remove(ids[2])
            msgctl(ids[3], IPC_RMID, nil)
        }

        @Test("unattached segments, semaphore sets and message queues the tree made round-trip: still there, or removed after the dump and made again",
              arguments: [false, true])
        func ownedObjects(removeAfterDump: Bool) throws {
            let scratch = try Scratch("sysvipc")
            defer { scratch.remove() }
            let fixture = try Fixture("sysvipc", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let ids = try #require(fixture.tagged("IPC")?.compactMap { Int32($0) })
            try #require(ids.count == 4)
            defer { Self.removeObjects(ids) }
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            if removeAfterDump {
                Self.removeObjects(ids)
                var ds = msqid_ds()
                #expect(msgctl(ids[3], IPC_STAT, &ds) != 0, "the queue should be gone before the restore")
            }
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore)
        }

        @Test("a process with semaphore undo entries (SEM_UNDO) is refused in one line and keeps running")
        func undoRefused() throws {
            let scratch = try Scratch("sysvipc-undo")
            defer { scratch.remove() }
            let fixture = try Fixture("sysvipc", arguments: ["undo"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let ids = try #require(fixture.tagged("IPC")?.compactMap { Int32($0) })
            try #require(ids.count == 4)
            defer { Self.removeObjects(ids) }
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", scratch.file("img")], in: scratch, reaping: fixture)
            #expect(dump.failed, "\(dump)")
            #expect(dump.stderrLines.count == 1 && dump.stderr.contains("pid \(fixture.pid)") && dump.stderr.contains("SEM_UNDO"), "\(dump)")
            #expect(fixture.pollOriginal() == nil, "the fixture should still run")
            fixture.signal(SIGTERM)
            _ = fixture.reapOriginal(timeout: 20)
            expectPass(fixture, "\(dump)")
        }

        @Test("--sysv-ipc attached with --sysv-ipc-object sem:ID takes that set only")
        func selection() throws {
            let scratch = try Scratch("sysvipc-select")
            defer { scratch.remove() }
            let fixture = try Fixture("sysvipc", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let ids = try #require(fixture.tagged("IPC")?.compactMap { Int32($0) })
            try #require(ids.count == 4)
            defer { Self.removeObjects(ids) }
            let (images, _) = try dumpAndReap(fixture, in: scratch, options: ["--sysv-ipc", "attached", "--sysv-ipc-object", "sem:\(ids[2])"])
            Self.removeObjects(ids)
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try #require(fixture.waitRestored(timeout: 60) { restore.isRunning }, "\(restore.wait(timeout: 5))")
            #expect(try SysVSem.status(ids[2]) != nil && SysVSem.values(ids[2], count: 3) == [5, 0, 7], "the named set should be made again")
            #expect(try SysVMsg.status(ids[3]) == nil, "the queue was not selected and should not be made again")
            #expect(try SysVShm.status(ids[0]) == nil, "the unattached segment was not selected and should not be made again")
            kill(fixture.pid, SIGKILL)
            _ = restore.wait(timeout: 30)
        }
    }
}
