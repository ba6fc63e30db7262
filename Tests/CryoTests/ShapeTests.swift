// Issue #16: the memory and descriptor shapes of Scripts/bench.sh round-trip.
// 10,000 mappings cycling r, rw, rx and none (two written pages each, 78 MiB:
// the task copies its own pages, and those it cannot read go through
// /proc/PID/mem), and 10,000 descriptors, more than fit as slots above them
// under RLIMIT_NOFILE (restore installs them in rounds).

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("bench shapes")
    struct ShapeTests {
        /// maps 1000 (8 MiB) is copied by cryo itself: many ranges per process_vm_readv, /proc/PID/mem for the unreadable.
        @Test("shapes round-trip", arguments: [["maps", "10000"], ["maps", "1000"], ["fds", "10000"]])
        func shapeRoundTrip(_ arguments: [String]) throws {
            let scratch = try Scratch("shapes-\(arguments[0])")
            defer { scratch.remove() }
            if arguments[0] == "fds" {
                var limit = rlimit()
                getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
                try #require(limit.rlim_max >= 10_064, "RLIMIT_NOFILE hard limit \(limit.rlim_max) is below the fixture's 10,064")
            }
            let fixture = try Fixture("shapes", arguments: arguments + (arguments[0] == "fds" ? [try scratch.folder("fds")] : []),
                                      in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady(timeout: 60)
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore)
        }
    }
}
