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
    }
}
