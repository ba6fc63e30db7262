// Task state that is neither memory nor descriptors: how zombies ended,
// stopped processes, scheduling and other per-task attributes. Each fixture
// checks itself after a dump (kill) and restore.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("task state: zombies, stopped tasks, attributes")
    struct TaskStateTests {
        @Test("zombies of every kind keep their wait status: exit codes, each fatal signal, core dumps")
        func zombies() throws {
            try dumpRestoreAndPass("deaths")
        }
    }
}

/// start → READY → dump (kills) → foreground restore → SIGTERM → PASS.
private func dumpRestoreAndPass(_ name: String, arguments: [String]? = nil,
                                sourceLocation: SourceLocation = #_sourceLocation) throws {
    let scratch = try Scratch("\(name)-task-state")
    defer { scratch.remove() }
    let fixture = try Fixture(name, arguments: arguments, in: scratch)
    defer { fixture.cleanUp() }
    try fixture.waitReady()
    let images = try dumpAndReap(fixture, in: scratch, sourceLocation: sourceLocation).images
    let restore = try CryoProcess(["restore", "-D", images], in: scratch)
    defer { restore.stop() }
    try expectRestoredAndPassing(fixture, by: restore, sourceLocation: sourceLocation)
}
