// AF_UNIX sockets beyond the plain round trip of `unix`: descriptors in
// flight, senders' credentials, connections not yet accepted, and names in
// unusual states. Each fixture checks itself after restore.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("unix sockets")
    struct UnixSocketTests {
        @Test("descriptors in flight and senders' credentials come back in their messages")
        func inFlightAndCredentials() throws {
            try unixRoundTrip("unixpass") { scratch in [try scratch.folder("work")] }
        }

        @Test("connections not yet accepted come back in order with their bytes, descriptors and ends")
        func pendingConnections() throws {
            try unixRoundTrip("unixpending") { scratch in [try scratch.folder("work")] }
        }

        @Test("with --leave-running a listener with connections not yet accepted is refused in one line")
        func pendingLeaveRunningRefused() throws {
            let scratch = try Scratch("unixpending-leave")
            defer { scratch.remove() }
            let fixture = try Fixture("unixpending", arguments: [try scratch.folder("work")], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = scratch.file("img")
            let dump = try cryo(["dump", "--leave-running", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
            #expect(dump.failed, "\(dump)")
            #expect(dump.stderrLines.count == 1, "want one line\n\(dump)")
            #expect(dump.stderr.contains("pid \(fixture.pid) fd ") && dump.stderr.contains("not yet accepted")
                    && dump.stderr.contains("--leave-running"), "\(dump)")
            fixture.signal(SIGTERM)
            #expect(fixture.reapOriginal(timeout: 30) == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }

        @Test("an epoll descriptor in flight is refused in one line, and nothing is taken from the queue")
        func epollInFlightRefused() throws {
            let scratch = try Scratch("unixpass-epoll")
            defer { scratch.remove() }
            let fixture = try Fixture("unixpass", arguments: [try scratch.folder("work"), "epoll"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = scratch.file("img")
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
            #expect(dump.failed, "\(dump)")
            #expect(dump.stderrLines.count == 1, "want one line\n\(dump)")
            #expect(dump.stderr.contains("pid \(fixture.pid) fd ") && dump.stderr.contains("epoll") && dump.stderr.contains("in flight"),
                    "\(dump)")
            fixture.signal(SIGTERM)
            #expect(fixture.reapOriginal(timeout: 30) == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }
    }
}

/// Dump (killing), check the original is gone, restore in the foreground, SIGTERM, PASS.
func unixRoundTrip(_ name: String, dumpOptions: [String] = [], arguments: (Scratch) throws -> [String],
                   sourceLocation: SourceLocation = #_sourceLocation) throws {
    let scratch = try Scratch(name)
    defer { scratch.remove() }
    let fixture = try Fixture(name, arguments: try arguments(scratch), in: scratch)
    defer { fixture.cleanUp() }
    try fixture.waitReady()
    let (images, _) = try dumpAndReap(fixture, in: scratch, options: dumpOptions, sourceLocation: sourceLocation)
    let restore = try CryoProcess(["restore", "-D", images], in: scratch)
    defer { restore.stop() }
    try expectRestoredAndPassing(fixture, by: restore, sourceLocation: sourceLocation)
}
