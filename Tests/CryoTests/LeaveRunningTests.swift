// `cryo dump --leave-running`: the image is written and the process carries
// on untouched; its own checks must still pass afterwards.

import CryoSystem
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

        /// The task writes its own pages into the image; past its RLIMIT_FSIZE that write would
        /// raise SIGXFSZ (a core dump) once the task runs again, so they go through a pipe instead.
        @Test("a file size limit below the memory: the pages go through a pipe and the process gets no SIGXFSZ")
        func fileSizeLimit() throws {
            let scratch = try Scratch("bigmem-fsize")
            defer { scratch.remove() }
            let fixture = try Fixture("bigmem", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            let hard = try Processes.resourceLimit(pid, Int32(RLIMIT_FSIZE.rawValue)).hard
            try Processes.setResourceLimit(pid, Int32(RLIMIT_FSIZE.rawValue), soft: 1 << 20, hard: hard)

            let images = scratch.file("img")
            let dump = try cryo(["dump", "--leave-running", "-v", "-t", "\(pid)", "-D", images], in: scratch,
                                timeout: cryoTimeout(for: "bigmem"), reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
            #expect(dump.stderr.contains("WRITE_PAGES") && dump.stderr.contains("through a pipe"),
                    "the task's own write should have been refused (EFBIG) and the pipe taken\n\(dump)")
            checkBigmemImageSize(images, fixture: fixture)

            fixture.signal(SIGTERM)
            let exit = fixture.reapOriginal(timeout: 60)
            #expect(exit == .exited(0), "bigmem ended with \(exit.map(\.description) ?? "nothing") (\(describeProcess(pid)))\n\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }
    }
}
