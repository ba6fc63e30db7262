// Requests cryo must turn down: a non-zero exit, exactly one line on stderr
// naming the problem, and the target (when there is one) left running.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("bad requests")
    struct BadRequestTests {
        @Test("dump of a pid that does not exist")
        func dumpMissingPid() throws {
            let scratch = try Scratch("bad-missing")
            defer { scratch.remove() }
            // A pid that just ended and was reaped is free.
            let child = try spawnProcess("/bin/true", [], stdoutPath: "/dev/null")
            _ = reap(child, timeout: 10)
            try #require(!pidExists(child))
            let images = scratch.file("img")
            let dump = try cryo(["dump", "-t", "\(child)", "-D", images], in: scratch)
            expectRefused(dump, naming: ["\(child)", "no such process"])
            #expect(!FileManager.default.fileExists(atPath: images), "a refused dump should leave no image folder")
        }

        @Test("dump of a kernel thread (kthreadd)")
        func dumpKernelThread() throws {
            let scratch = try Scratch("bad-kthread")
            defer { scratch.remove() }
            let images = scratch.file("img")
            let dump = try cryo(["dump", "-t", "2", "-D", images], in: scratch)
            expectRefused(dump, naming: ["2", "kernel thread"])
            #expect(!FileManager.default.fileExists(atPath: images), "a refused dump should leave no image folder")
            let status = ProcStatus(pid: 2)
            #expect(status?.name == "kthreadd" && status?.tracerPid == 0, "kthreadd: \(describeProcess(2))")
        }

        @Test("dump of cryo's own ancestor (the test runner)")
        func dumpOwnAncestor() throws {
            let scratch = try Scratch("bad-ancestor")
            defer { scratch.remove() }
            let images = scratch.file("img")
            let me = getpid()
            let dump = try cryo(["dump", "-t", "\(me)", "-D", images], in: scratch)
            expectRefused(dump, naming: ["\(me)", "ancestor"])
            #expect(!FileManager.default.fileExists(atPath: images), "a refused dump should leave no image folder")
            #expect(ProcStatus(pid: me)?.tracerPid == 0, "the test runner is left traced: \(describeProcess(me))")
        }

        @Test("dump of a process another tracer holds")
        func dumpTracedProcess() throws {
            let scratch = try Scratch("bad-traced")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let tracer = try Fixture("tracer", arguments: ["\(fixture.pid)"], in: scratch)
            defer { tracer.cleanUp() }
            try tracer.waitReady()
            try #require(ProcStatus(pid: fixture.pid)?.tracerPid == Int(tracer.pid), "\(describeProcess(fixture.pid))")

            let images = scratch.file("img")
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
            expectRefused(dump, naming: ["\(fixture.pid)", "traced", "\(tracer.pid)"])
            #expect(!FileManager.default.fileExists(atPath: images), "a refused dump should leave no image folder")
            // Still the other tracer's, and running.
            #expect(ProcStatus(pid: fixture.pid)?.tracerPid == Int(tracer.pid), "\(describeProcess(fixture.pid))")

            tracer.signal(SIGKILL)
            _ = tracer.reapOriginal(timeout: 10)
            #expect(waitUntil(timeout: 5) { ProcStatus(pid: fixture.pid)?.tracerPid == 0 }, "\(describeProcess(fixture.pid))")
            expectRunsAndPasses(fixture, "\(dump)")
        }

        @Test("restore from a folder that does not exist")
        func restoreMissingFolder() throws {
            let scratch = try Scratch("bad-nofolder")
            defer { scratch.remove() }
            let images = scratch.file("nothing-here")
            let restore = try cryo(["restore", "-D", images], in: scratch, timeout: 30)
            expectRefused(restore, naming: [images, "does not exist"])
            #expect(!FileManager.default.fileExists(atPath: images), "restore should not create \(images)")
        }

        @Test("restore from an empty folder")
        func restoreEmptyFolder() throws {
            let scratch = try Scratch("bad-empty")
            defer { scratch.remove() }
            let images = try scratch.folder("empty")
            let restore = try cryo(["restore", "-D", images], in: scratch, timeout: 30)
            expectRefused(restore, naming: [images, "inventory.img"])
        }

        @Test("restore from a folder holding another tool's files")
        func restoreForeignImage() throws {
            let scratch = try Scratch("bad-foreign")
            defer { scratch.remove() }
            let images = try scratch.folder("criu")
            // CRIU's image magics (common, then inventory) and a few protobuf bytes.
            let foreign: [UInt8] = [0x19, 0x43, 0x56, 0x54, 0x16, 0x31, 0x31, 0x58, 0x0c, 0x00, 0x00, 0x00,
                                    0x08, 0x02, 0x10, 0x01, 0x18, 0x2a, 0x20, 0x00, 0x28, 0x01, 0x30, 0x00]
            try writeBytes(images + "/inventory.img", foreign)
            try writeBytes(images + "/core-42.img", foreign)
            let restore = try cryo(["restore", "-D", images], in: scratch, timeout: 30)
            expectRefused(restore, naming: ["inventory.img", "not a cryo image"])
        }
    }
}

/// Failed (non-zero exit, not a signal), with one stderr line starting "cryo:" that contains every word of `words`.
private func expectRefused(_ result: CryoResult, naming words: [String], sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(result.failed, "should fail with a non-zero exit\n\(result)", sourceLocation: sourceLocation)
    #expect(result.stderrLines.count == 1 && result.stderrLines.first?.hasPrefix("cryo:") == true,
            "want exactly one \"cryo:\" line on stderr\n\(result)", sourceLocation: sourceLocation)
    for word in words {
        let found = word.allSatisfy(\.isNumber) ? containsToken(result.stderr, word) : result.stderr.contains(word)
        #expect(found, "the error should say \"\(word)\"\n\(result)", sourceLocation: sourceLocation)
    }
}

/// The fixture is still ours, running untraced, and passes its own check on SIGTERM.
func expectRunsAndPasses(_ fixture: Fixture, _ context: String, sourceLocation: SourceLocation = #_sourceLocation) {
    if let ended = fixture.pollOriginal() {
        Issue.record("the fixture ended: \(ended)\n\(fixture.report)", sourceLocation: sourceLocation)
        return
    }
    let status = ProcStatus(pid: fixture.pid)
    #expect(status?.isRunning == true && status?.tracerPid == 0,
            "the fixture should be left running untraced: \(describeProcess(fixture.pid))", sourceLocation: sourceLocation)
    fixture.signal(SIGTERM)
    let exit = fixture.reapOriginal(timeout: 30)
    #expect(exit == .exited(0), "\(fixture.report)", sourceLocation: sourceLocation)
    expectPass(fixture, context, sourceLocation: sourceLocation)
}
