// pre-dump, then dump --prev-images-dir: the dirty fixture keeps writing
// memory (and changes more of it on SIGUSR1) and checks all of it itself
// after the restore.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("pre-dump and dump --prev-images-dir")
    struct PreCopyTests {
        @Test("pre-dump, writes, dump --prev-images-dir, kill, restore: every page is right and the holder is gone",
              arguments: [false, true])
        func roundTrip(compress: Bool) throws {
            let scratch = try Scratch("precopy")
            defer { scratch.remove() }
            let fixture = try Fixture("dirty", arguments: ["64"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            let descriptors = openDescriptors(pid)

            let pre = try cryo(["pre-dump", "-t", "\(pid)", "-D", scratch.file("pre")], in: scratch)
            try #require(pre.succeeded, "\(pre)\n\(fixture.report)")
            #expect(holderListening(pid), "no pre-dump holder listens for pid \(pid) after pre-dump")
            #expect(openDescriptors(pid) == descriptors, "pre-dump left descriptors in pid \(pid): \(openDescriptors(pid)) vs \(descriptors)")
            try change(fixture)

            let images = scratch.file("img")
            let dump = try cryo(["dump", "-t", "\(pid)", "-D", images, "--prev-images-dir", "../pre"] + (compress ? ["--compress"] : []),
                                in: scratch, reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
            try #require(fixture.reapOriginal(timeout: 20) != nil, "pid \(pid) still runs after the dump")
            if compress {
                let files = ((try? FileManager.default.contentsOfDirectory(atPath: images)) ?? []).sorted()
                #expect(!files.contains { $0.hasSuffix(".raw") }, "a raw pages file was left in the image: \(files)")
                let show = try cryo(["show", images], in: scratch, timeout: 60)
                #expect(show.stdout.contains("zstd"), "the pages should be compressed\n\(show)")
            }
            let stats = dumpStatistics(images)
            let fromPreDump = stats["pagesFromPreDump"] ?? 0, copied = stats["pagesWritten"] ?? 0
            // 64 MiB cold memory, an eighth of it rewritten: most must come from the pre-dump.
            #expect(fromPreDump > 8192 && copied < fromPreDump, "pages: \(fromPreDump) from the pre-dump, \(copied) copied while frozen")
            #expect(waitUntil(timeout: 5) { !holderListening(pid) }, "the pre-dump holder of pid \(pid) still runs after the dump")

            try restoreAndCheck(fixture, images: images, in: scratch)
        }

        @Test("an abandoned pre-dump leaves the process running correctly, and its holder exits with it")
        func abandoned() throws {
            let scratch = try Scratch("precopy-abandoned")
            defer { scratch.remove() }
            let fixture = try Fixture("dirty", arguments: ["16"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            let descriptors = openDescriptors(pid)
            let pre = try cryo(["pre-dump", "-t", "\(pid)", "-D", scratch.file("pre")], in: scratch)
            try #require(pre.succeeded, "\(pre)\n\(fixture.report)")
            #expect(openDescriptors(pid) == descriptors, "pre-dump left descriptors in pid \(pid)")
            #expect(ProcStatus(pid: pid)?.tracerPid == 0, "pid \(pid) is still traced after pre-dump")
            let again = try cryo(["pre-dump", "-t", "\(pid)", "-D", scratch.file("pre")], in: scratch)
            #expect(again.failed && again.stderrLines.count == 1 && again.stderr.contains("pre-dump"),
                    "a second pre-dump into the same folder should fail with one line\n\(again)")
            try change(fixture)
            sleepSeconds(0.3)
            fixture.signal(SIGTERM)
            let exit = fixture.reapOriginal(timeout: 30)
            #expect(exit == .exited(0), "\(fixture.report)")
            expectPass(fixture)
            #expect(waitUntil(timeout: 5) { !holderListening(pid) }, "the pre-dump holder of pid \(pid) outlived it")
        }

        @Test("dump --prev-images-dir after the holder was killed copies every page and restores correctly")
        func holderKilled() throws {
            let scratch = try Scratch("precopy-noholder")
            defer { scratch.remove() }
            let fixture = try Fixture("dirty", arguments: ["16"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            let preDir = scratch.file("pre")
            let pre = try cryo(["pre-dump", "-t", "\(pid)", "-D", preDir], in: scratch)
            try #require(pre.succeeded, "\(pre)\n\(fixture.report)")
            let holders = holderPids(preDir)
            try #require(holders.count == 1, "expected one holder for \(preDir), found \(holders)")
            kill(holders[0], SIGKILL)
            #expect(waitUntil(timeout: 5) { !holderListening(pid) }, "the killed holder still listens")
            try change(fixture)

            let images = scratch.file("img")
            let dump = try cryo(["dump", "-t", "\(pid)", "-D", images, "--prev-images-dir", preDir], in: scratch, reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
            #expect(dump.stderr.contains("holder"), "the dump should warn that the holder is gone\n\(dump)")
            try #require(fixture.reapOriginal(timeout: 20) != nil, "pid \(pid) still runs after the dump")
            #expect((dumpStatistics(images)["pagesFromPreDump"] ?? 0) == 0, "pages were taken from an untracked pre-dump")
            try restoreAndCheck(fixture, images: images, in: scratch)
        }
    }
}

/// SIGUSR1: the fixture rewrites, drops and replaces memory, then says CHANGED.
private func change(_ fixture: Fixture) throws {
    sleepSeconds(0.2)
    fixture.signal(SIGUSR1)
    let changed = waitUntil(timeout: 20) { fixture.lines.contains { $0.hasPrefix("CHANGED") } }
    try #require(changed, "the fixture did not report CHANGED\n\(fixture.report)")
    sleepSeconds(0.2)
}

private func restoreAndCheck(_ fixture: Fixture, images: String, in scratch: Scratch) throws {
    let restore = try CryoProcess(["restore", "-D", images], in: scratch)
    defer { restore.stop() }
    try expectRestoredAndPassing(fixture, by: restore, timeout: 60, whileRunning: { sleepSeconds(0.3) })  // it writes on after the restore too
}

/// Is a pre-dump holder's socket for `pid` bound (abstract, in /proc/net/unix)?
func holderListening(_ pid: pid_t) -> Bool {
    readText("/proc/net/unix").contains("@cryo-predump-\(pid)-")
}

/// Processes running `cryo pre-dump-holder` for the folder `directory`.
func holderPids(_ directory: String) -> [pid_t] {
    let name = (directory as NSString).lastPathComponent
    let parent = ((directory as NSString).deletingLastPathComponent as NSString).lastPathComponent
    return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { entry -> pid_t? in
        guard let pid = pid_t(entry) else { return nil }
        let words = readText("/proc/\(pid)/cmdline").split(separator: "\0").map(String.init)
        guard words.contains("pre-dump-holder"), let i = words.firstIndex(of: "--directory"), i + 1 < words.count,
              words[i + 1].hasSuffix("/\(parent)/\(name)") else { return nil }
        return pid
    }
}

func openDescriptors(_ pid: pid_t) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).sorted()
}

/// The integer figures of an image's stats-dump.
func dumpStatistics(_ images: String) -> [String: UInt64] {
    guard let data = FileManager.default.contents(atPath: images + "/stats-dump"),
          let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return [:] }
    return object.compactMapValues { ($0 as? NSNumber)?.uint64Value }
}
