// Processes that share a descriptor table (CLONE_FILES) or cwd, root and umask
// (CLONE_FS) without being threads: shared with the parent they come back
// shared (the fixture checks with kcmp, and that an fd one opens is seen by
// the other, that a chdir or umask of one changes the other's); so does a
// table and fs context two siblings share and their parent does not. Sharing
// between processes that are neither parent and child nor siblings, and a
// vfork child, are refused at once in one line naming both pids and the
// kind, the tree running on.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("processes that share a descriptor table or fs context")
    struct SharedContextTests {
        @Test("a table shared with parent and grandparent, an fs context shared with the parent, both shared by two siblings round-trip shared",
              arguments: ["files", "fs", "siblings"])
        func roundTrip(_ mode: String) throws {
            let scratch = try Scratch("sharing-\(mode)")
            defer { scratch.remove() }
            let directory = try scratch.folder("cwd")
            let fixture = try Fixture("sharing", arguments: mode == "fs" ? [mode, directory] : [mode], in: scratch)
            var pids: [pid_t] = []
            defer {
                fixture.cleanUp()
                for pid in pids.dropFirst() { kill(pid, SIGKILL) }
            }
            try fixture.waitReady()
            pids = try #require(fixture.tagged("PIDS"), "\(fixture.report)").compactMap { pid_t($0) }
            try #require(pids.count == (mode == "fs" ? 2 : 3), "\(fixture.report)")
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            #expect(waitUntil(timeout: 20) { !pids.contains(where: pidExists) }, "the dumped tree still runs")
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore, timeout: 60)
        }

        @Test("a root and grandchild sharing a table (not with the child between) and a vfork child are refused in one line; the tree runs on",
              arguments: [("apart", "descriptor table (CLONE_FILES)"), ("vfork", "CLONE_VM")])
        func refused(mode: String, kind: String) throws {
            let scratch = try Scratch("sharing-\(mode)")
            defer { scratch.remove() }
            let fixture = try Fixture("sharing", arguments: [mode], in: scratch)
            var pids: [pid_t] = []
            defer {
                for pid in pids.dropFirst() { kill(pid, SIGKILL) }
                fixture.cleanUp()
            }
            try fixture.waitReady()
            pids = try #require(fixture.tagged("PIDS"), "\(fixture.report)").compactMap { pid_t($0) }
            try #require(pids.count == (mode == "apart" ? 3 : 2), "\(fixture.report)")
            // The pair the refusal must name: root and grandchild, or the vfork parent and child.
            let pair = mode == "apart" ? [pids[0], pids[2]] : [pids[0], pids[1]]

            let images = scratch.file("img")
            let started = monotonicNow()
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", images], in: scratch, timeout: 30, reaping: fixture)
            let took = monotonicNow() - started
            #expect(dump.failed, "the dump should be refused\n\(dump)")
            #expect(took < 10, "the refusal took \(took) s")
            #expect(dump.stderrLines.count == 1, "want exactly one line on stderr\n\(dump)")
            for pid in pair { #expect(containsToken(dump.stderr, "\(pid)"), "the refusal should name pid \(pid)\n\(dump)") }
            #expect(dump.stderr.contains(kind), "the refusal should name the kind \(kind)\n\(dump)")
            #expect(!FileManager.default.fileExists(atPath: images), "a refused dump should leave no image folder")

            #expect(fixture.pollOriginal() == nil, "the fixture ended during the refused dump\n\(fixture.report)")
            // The vfork child ends on SIGTERM, and its parent goes on; the root of "apart" checks its grandchild.
            kill(mode == "vfork" ? pids[1] : fixture.pid, SIGTERM)
            let exit = fixture.reapOriginal(timeout: 30)
            #expect(exit == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }
    }
}
