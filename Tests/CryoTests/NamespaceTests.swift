// Namespaces of a dumped tree: a UTS namespace of its own comes back with its
// names; a namespace cryo cannot rebuild is refused in one line at dump, with
// the tree left running, never restored into cryo's namespace silently.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("namespaces")
    struct NamespaceTests {
        @Test("a tree in a UTS namespace of its own comes back in a new one with its host and domain names")
        func utsRoundTrip() throws {
            let scratch = try Scratch("ns-uts")
            defer { scratch.remove() }
            let fixture = try Fixture("uts", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            let show = try cryo(["show", "--json", images], in: scratch)
            #expect(show.stdout.contains("cryo-uts-fixture"), "the inventory should hold the host name\n\(show)")
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore)
        }

        @Test("a child in another UTS namespace than the root is refused; the tree runs on")
        func utsMixedRefused() throws {
            let scratch = try Scratch("ns-uts-other")
            defer { scratch.remove() }
            let fixture = try Fixture("uts", arguments: ["other"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let child = try #require(fixture.tagged("CHILD")?.first)
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", scratch.file("img")], in: scratch, reaping: fixture)
            #expect(dump.failed && dump.stderrLines.count == 1, "\(dump)")
            #expect(dump.stderr.contains("pid \(child)") && dump.stderr.contains("UTS"), "\(dump)")
            expectRunsAndPasses(fixture, "\(dump)")
        }

        @Test("a process in a network namespace of its own is refused in one line; it runs on")
        func networkNamespaceRefused() throws {
            let scratch = try Scratch("ns-net")
            defer { scratch.remove() }
            // unshare(1) execs the fixture in the new namespace, keeping the pid.
            let fixture = try Fixture("counter", in: scratch, launcher: ["/usr/bin/unshare", "--net"])
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", scratch.file("img")], in: scratch, reaping: fixture)
            #expect(dump.failed && dump.stderrLines.count == 1, "\(dump)")
            #expect(dump.stderr.contains("pid \(fixture.pid)") && dump.stderr.contains("network namespace"), "\(dump)")
            #expect(!FileManager.default.fileExists(atPath: scratch.file("img")), "a refused dump leaves no image folder")
            expectRunsAndPasses(fixture, "\(dump)")
        }
    }
}
