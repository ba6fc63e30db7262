// POSIX message queue descriptors: a queue that still exists at restore is
// used as it is; one removed after the dump, or unlinked before it, is made
// again with its limits, mode and messages in priority order.

import CryoSystem
import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("POSIX message queues")
    struct MqueueTests {
        @Test("queues round-trip: still there, or unlinked after the dump and made again", arguments: [false, true])
        func roundTrip(removeAfterDump: Bool) throws {
            let scratch = try Scratch("mqueue")
            defer { scratch.remove() }
            let fixture = try Fixture("mqueue", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let name = try #require(fixture.tagged("MQ")?.first)
            defer { try? PosixMqueue.remove(name, object: "test") }
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            if removeAfterDump { try PosixMqueue.remove(name, object: "test") }
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore)
        }

        @Test("a queue with an mq_notify registration is refused in one line; the process keeps running")
        func notifyRefused() throws {
            let scratch = try Scratch("mqueue-notify")
            defer { scratch.remove() }
            let fixture = try Fixture("mqueue", arguments: ["notify"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let name = try #require(fixture.tagged("MQ")?.first)
            defer { try? PosixMqueue.remove(name, object: "test") }
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", scratch.file("img")], in: scratch, reaping: fixture)
            #expect(dump.failed && dump.stderrLines.count == 1 && dump.stderr.contains("pid \(fixture.pid) fd")
                    && dump.stderr.contains("mq_notify"), "\(dump)")
            #expect(fixture.pollOriginal() == nil, "the fixture should still run")
            fixture.signal(SIGTERM)
            _ = fixture.reapOriginal(timeout: 20)
            expectPass(fixture, "\(dump)")
        }
    }
}
