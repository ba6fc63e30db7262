// Issue #17: what a dump says and leaves when the world changes under it. A
// target that dies mid-dump is reported dead with its signal; a second cryo
// on the same pid is refused; a full disk leaves the tree running and a
// folder restore refuses. CRYO_STOP_AT=<phase> stops cryo at that phase so
// the test can act meanwhile.

import Foundation
import Glibc
import Testing

/// Dump phases where the target is killed while cryo is stopped: frozen before any parasite,
/// with the parasite running in it, and while its pages are taken.
private let deathPhases = ["seized", "running DUMP_PROCESS", "pages"]

extension EndToEnd {
    @Suite("dump safety")
    struct DumpSafetyTests {
        /// Shells and pre-forking servers fork short-lived children all the time: a dump
        /// that catches one exiting keeps it as the zombie it becomes under its frozen
        /// parent, instead of failing. Many dumps make the race likely; each must pass,
        /// and the parent must still reap every child with its own exit code after restore.
        @Test("a tree forking short-lived children all the time: every dump succeeds")
        func childrenExitingDuringDump() throws {
            let scratch = try Scratch("forker")
            defer { scratch.remove() }
            let fixture = try Fixture("forker", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            for round in 1...25 {
                let images = scratch.file("img-\(round)")
                let dump = try cryo(["dump", "-R", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
                try #require(dump.succeeded, "dump \(round) of 25 with -R: \(dump)\n\(fixture.report)")
                try? FileManager.default.removeItem(atPath: images)
            }
            try #require(fixture.pollOriginal() == nil, "forker ended during the dumps\n\(fixture.report)")
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore)
        }

        @Test("a target killed during the dump is reported dead with its signal", arguments: deathPhases)
        func targetDiesDuringDump(_ phase: String) throws {
            let scratch = try Scratch("dies-during-dump")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = scratch.file("img")
            let dump = try CryoProcess(["dump", "-t", "\(fixture.pid)", "-D", images], in: scratch,
                                       environment: ["CRYO_STOP_AT": phase])
            defer { dump.stop() }
            let stopped = waitUntil(timeout: 60) { ProcStatus(pid: dump.pid)?.state == "T" || !dump.isRunning }
            try #require(stopped && dump.isRunning, "cryo did not stop at \"\(phase)\": \(dump.wait(timeout: 1))")
            kill(fixture.pid, SIGKILL)
            kill(dump.pid, SIGCONT)
            let result = dump.wait(timeout: 60, reaping: fixture)
            expectOneLine(result, naming: ["pid \(fixture.pid) (counter) died during dump (killed by SIGKILL)"])
            #expect(!result.stderr.contains("ESRCH"), "\(result)")
            #expect(!FileManager.default.fileExists(atPath: images), "the failed dump should remove its image folder")
            #expect(fixture.reapOriginal(timeout: 10) == .signaled(SIGKILL), "\(fixture.report)")
        }

        @Test("a dump of a pid another cryo is dumping is refused in one line; the first dump finishes")
        func secondDumpRefused() throws {
            let scratch = try Scratch("second-dump")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let first = try CryoProcess(["dump", "--leave-running", "-t", "\(fixture.pid)", "-D", scratch.file("first")], in: scratch,
                                        environment: ["CRYO_STOP_AT": "locked"])
            defer { first.stop() }
            let stopped = waitUntil(timeout: 60) { ProcStatus(pid: first.pid)?.state == "T" || !first.isRunning }
            try #require(stopped && first.isRunning, "cryo did not stop at \"locked\": \(first.wait(timeout: 1))")

            for command in ["dump", "pre-dump"] {
                let second = try cryo([command, "--leave-running", "-t", "\(fixture.pid)", "-D", scratch.file(command)], in: scratch,
                                      reaping: fixture)
                expectOneLine(second, naming: ["pid \(fixture.pid) (counter) is being dumped by another cryo"])
                #expect(!FileManager.default.fileExists(atPath: scratch.file(command)), "the refused \(command) made its folder")
            }

            kill(first.pid, SIGCONT)
            let done = first.wait(timeout: 120, reaping: fixture)
            #expect(done.succeeded, "the first dump should finish\n\(done)")
            // The lock went with the first cryo.
            let third = try cryo(["dump", "--leave-running", "-t", "\(fixture.pid)", "-D", scratch.file("third")], in: scratch,
                                 reaping: fixture)
            #expect(third.succeeded, "a dump after the first one should work\n\(third)")
            expectRunsAndPasses(fixture, "\(third)")
        }

        /// 8 MiB: pages written by cryo; 64 MiB: by the task itself (InTaskPageCopy), or through a pipe.
        @Test("a full disk mid-dump leaves the tree running and a folder marked incomplete, which restore refuses",
              arguments: [(["8"], [String: String]()), (["64"], [:]), (["64"], ["CRYO_PAGE_COPY": "pipe"])])
        func diskFull(_ arguments: [String], _ environment: [String: String]) throws {
            let scratch = try Scratch("disk-full")
            defer { scratch.remove() }
            let small = try scratch.folder("small")
            // 4 MiB: the fixture's pages (6 or 48 MiB) cannot fit.
            try #require(mount("tmpfs", small, "tmpfs", 0, "size=4m,mode=0700") == 0, "mount tmpfs: \(String(cString: strerror(errno)))")
            defer { umount2(small, Int32(MNT_DETACH)) }
            let fixture = try Fixture("bigmem", arguments: arguments, in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady(timeout: 60)
            let images = small + "/img"

            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture, environment: environment)
            expectOneLine(dump, naming: ["ENOSPC"])
            let names = (try? FileManager.default.contentsOfDirectory(atPath: images)) ?? []
            #expect(names == ["dump-incomplete"], "the folder should hold only its mark: \(names)")
            #expect(readText(images + "/dump-incomplete").contains("ENOSPC"), "the mark should give the reason")

            let restore = try cryo(["restore", "-D", images], in: scratch, timeout: 60)
            expectOneLine(restore, naming: ["incomplete", "ENOSPC"])
            expectRunsAndPasses(fixture, "\(dump)")
        }

        @Test("an image folder a killed dump left behind is refused by restore in one line")
        func killedDumpRefused() throws {
            let scratch = try Scratch("killed-dump")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = scratch.file("img")
            let dump = try cryo(["dump", "--leave-running", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture,
                                environment: ["CRYO_KILL_AT": "pages"])
            try #require(dump.status == .signaled(SIGKILL), "\(dump)")
            let restore = try cryo(["restore", "-D", images], in: scratch, timeout: 60)
            expectOneLine(restore, naming: ["incomplete", "did not finish"])
            expectRunsAndPasses(fixture, "\(restore)")
        }
    }
}
