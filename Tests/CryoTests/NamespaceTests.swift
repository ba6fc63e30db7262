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
        @Test("a child in another pid namespace than the root (unshare -pf) is refused in one line; both run on untraced")
        func pidNamespaceChildRefused() throws {
            let scratch = try Scratch("ns-pid-child")
            defer { scratch.remove() }
            // unshare(1) stays in cryo's namespace and forks the fixture as pid 1 of a new one.
            let fixture = try Fixture("counter", in: scratch, launcher: ["/usr/bin/unshare", "-pf"])
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let child = try #require(readText("/proc/\(fixture.pid)/task/\(fixture.pid)/children").split(separator: " ").compactMap { pid_t($0) }.first)
            defer { kill(child, SIGKILL) }
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", scratch.file("img")], in: scratch, reaping: fixture)
            #expect(dump.failed && dump.stderrLines.count == 1, "\(dump)")
            #expect(dump.stderr.contains("pid \(child)") && dump.stderr.contains("pid namespace"), "\(dump)")
            for pid in [fixture.pid, child] {
                let status = ProcStatus(pid: pid)
                #expect(status?.isRunning == true && status?.tracerPid == 0, "pid \(pid) should run on untraced: \(describeProcess(pid))")
            }
        }

        /// The image would hold the pids cryo sees, not those the tree knows (1 for this root): refused
        /// before any parasite goes in, until the image records the tree's own pids.
        @Test("dump of a root that is pid 1 of its own pid namespace is refused in one line; it runs on and passes")
        func pidNamespaceRoot() throws {
            let scratch = try Scratch("ns-pid-root")
            defer { scratch.remove() }
            // setsid(1) in the new namespace makes the fixture (pid 1 there) lead its session.
            let fixture = try Fixture("counter", in: scratch, launcher: ["/usr/bin/unshare", "-pf", "/usr/bin/setsid"])
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let root = try #require(readText("/proc/\(fixture.pid)/task/\(fixture.pid)/children").split(separator: " ").compactMap { pid_t($0) }.first)
            defer { kill(root, SIGKILL) }
            let dump = try cryo(["dump", "--leave-running", "-t", "\(root)", "-D", scratch.file("img")], in: scratch, timeout: 60)
            #expect(dump.failed && dump.stderrLines.count == 1 && dump.stderr.contains("nested pid namespace")
                    && dump.stderr.contains("pid \(root)"), "\(dump)")
            let status = ProcStatus(pid: root)
            #expect(status?.isRunning == true && status?.tracerPid == 0, "pid \(root) should run on untraced: \(describeProcess(root))")
            // unshare ignores SIGTERM and exits with its child's status.
            kill(root, SIGTERM)
            #expect(fixture.reapOriginal(timeout: 30) == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }
    }
}
