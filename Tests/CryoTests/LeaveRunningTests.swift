// `cryo dump --leave-running`: the image is written and the process carries
// on untouched; its own checks must still pass afterwards.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("dump --leave-running")
    struct LeaveRunningTests {
        @Test("the process keeps running and passes", arguments: roundTripFixtures)
        func leaveRunning(_ name: String) throws {
            let scratch = try Scratch("\(name)-leave")
            defer { scratch.remove() }
            let fixture = try Fixture(name, in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid

            let images = scratch.file("img")
            let dump = try cryo(["dump", "--leave-running", "-t", "\(pid)", "-D", images], in: scratch,
                                timeout: cryoTimeout(for: name), reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")

            if let ended = fixture.pollOriginal() {
                Issue.record("the process ended during `dump --leave-running`: \(ended)\n\(fixture.report)")
                return
            }
            let status = ProcStatus(pid: pid)
            #expect(status?.isRunning == true && status?.tracerPid == 0,
                    "after `dump --leave-running` the process should run free: \(describeProcess(pid))")
            #expect(FileManager.default.fileExists(atPath: images), "no image folder \(images)")

            if name == "bigmem" {
                checkBigmemImageSize(images, fixture: fixture)
            }

            fixture.signal(SIGTERM)
            let exit = fixture.reapOriginal(timeout: 60)
            #expect(exit == .exited(0), "\(name) ended with \(exit.map(\.description) ?? "nothing: still running after 60 s") (\(describeProcess(pid)))\n\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }
    }
}
