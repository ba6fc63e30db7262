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
                checkPageParts(images, pid: pid, parts: ProcessInfo.processInfo.activeProcessorCount >= 2 ? 2 : 1)
                // The second writer was a thread of the task's own, gone before the task ran again.
                #expect(threadIDs(pid) == [pid], "bigmem has threads \(threadIDs(pid).sorted()) after the dump, want only \(pid)")
            }

            expectPassesOnTerm(fixture, dump)
        }

        /// The second writer of a large dump is an untraced thread of the task, which the task's
        /// seccomp filters would apply to: here one that kills the process on pwritev.
        @Test("a process with seccomp filters: its pages are written without a thread of its own, and it carries on")
        func seccompFilter() throws {
            let scratch = try Scratch("bigmem-seccomp")
            defer { scratch.remove() }
            let fixture = try Fixture("bigmem", arguments: [String(Fixture.bigmemMiB), "words", "seccomp"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            let images = scratch.file("img")
            let dump = try cryo(["dump", "--leave-running", "-t", "\(pid)", "-D", images], in: scratch,
                                timeout: cryoTimeout(for: "bigmem"), reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
            checkPageParts(images, pid: pid, parts: ProcessInfo.processInfo.activeProcessorCount >= 2 ? 2 : 1)

            expectPassesOnTerm(fixture, dump)
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
            checkPageParts(images, pid: pid, parts: 1)

            expectPassesOnTerm(fixture, dump)
        }
    }
}

/// SIGTERM to a process that `dump --leave-running` left running: it checks itself and passes.
private func expectPassesOnTerm(_ fixture: Fixture, _ dump: CryoResult, sourceLocation: SourceLocation = #_sourceLocation) {
    fixture.signal(SIGTERM)
    let exit = fixture.reapOriginal(timeout: 60)
    let ended = exit.map(\.description) ?? "nothing: still running after 60 s"
    #expect(exit == .exited(0), "\(fixture.name) ended with \(ended) (\(describeProcess(fixture.pid)))\n\(fixture.report)",
            sourceLocation: sourceLocation)
    expectPass(fixture, "\(dump)", sourceLocation: sourceLocation)
}

/// The page stream of `pid` is in `parts` files, pages-PID.img first, of equal
/// size give or take a page per region when there are two.
func checkPageParts(_ images: String, pid: pid_t, parts: Int, sourceLocation: SourceLocation = #_sourceLocation) {
    let names = pagesFiles(images).filter { $0.0.hasPrefix("pages-\(pid).") }.sorted { $0.0 < $1.0 }
    let want = ["pages-\(pid).img"] + (parts > 1 ? (1..<parts).map { "pages-\(pid).\($0).img" } : [])
    #expect(names.map(\.0).sorted() == want.sorted(), "pages files \(names), want \(want)", sourceLocation: sourceLocation)
    guard parts == 2, names.count == 2 else { return }
    let (first, second) = (Double(names.first { $0.0 == want[0] }!.1), Double(names.first { $0.0 == want[1] }!.1))
    #expect(abs(first - second) <= 0.01 * (first + second), "pages files of \(first) and \(second) bytes, want halves",
            sourceLocation: sourceLocation)
}
