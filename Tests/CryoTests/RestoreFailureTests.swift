// Issue #7, "nothing lost": a restore that fails, at whatever point and for
// whatever reason (even SIGKILL of cryo itself), leaves no process with any of
// the image's pids and no helper behind, says what failed in one line, and
// leaves the image as good as before: a last restore of it passes.
//
// The tree fixture (30 processes) is used throughout: it has sessions, groups
// and a group whose leader is gone, so restore also makes a stand-in leader.
// CRYO_STOP_AT / CRYO_KILL_AT are cryo's hidden fault hooks (FaultHook.swift).

@testable import Cryo
import CryoSystem
import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("a failed restore leaves nothing behind")
    struct RestoreFailureTests {
        @Test("files gone at restore: a pages file of the image, then a file the tree has mapped")
        func missingFiles() throws {
            let tree = try TreeImage.make("missing")
            defer { tree.cleanUp() }

            // A pages file of a non-root process: refused before anything is made.
            let child = tree.pids[1]
            let pages = tree.images + "/pages-\(child).img"
            try #require(rename(pages, pages + ".away") == 0, "rename \(pages): \(String(cString: strerror(errno)))")
            let first = try tree.failingRestore()
            expectOneLine(first, naming: ["pages-\(child).img"])
            try #require(rename(pages + ".away", pages) == 0)

            // The program every process maps: found missing once the whole tree exists.
            let moved = tree.binary + ".away"
            try #require(rename(tree.binary, moved) == 0, "rename \(tree.binary): \(String(cString: strerror(errno)))")
            let second = try tree.failingRestore()
            expectOneLine(second, naming: ["\(tree.pids[0])", tree.binary, "ENOENT"])
            try #require(rename(moved, tree.binary) == 0)

            try tree.restoreAndPass()
        }

        /// With two CPUs a large dump continues the page stream in pages-PID.1.img (written alongside pages-PID.img).
        @Test("a large image's second pages file: read by show, refused grown or missing, restored once put back",
              .enabled(if: ProcessInfo.processInfo.activeProcessorCount >= 2))
        func pagesPart() throws {
            let scratch = try Scratch("nothing-lost-pages-part")
            defer { scratch.remove() }
            let fixture = try Fixture("bigmem", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            let name = "pages-\(fixture.pid).1.img"
            let part = images + "/" + name
            let size = fileSize(part)
            try #require(size > 0, "no \(name) in \(pagesFiles(images))")

            // The last written page of bigmem lies in the second file: its first word is page_seed(page).
            let map = try #require(fixture.tagged("MAP"), "no MAP line\n\(fixture.report)")
            let (start, length) = (try #require(UInt64(map[0], radix: 16)), try #require(UInt64(map[1])))
            let lastPage = length / 4096 / 4 * 3 - 1
            let show = try cryo(["show", images, "--pages", "0x\(String(start + lastPage * 4096, radix: 16)):8"], in: scratch, timeout: 60)
            let want = (0..<8).map { String(format: "%02x", (bigmemPageSeed(lastPage) >> (8 * UInt64($0))) & 0xff) }.joined(separator: " ")
            #expect(show.succeeded && show.stdout.contains(want), "show --pages of page \(lastPage) should show \(want)\n\(show)")

            // Grown by a page (and shrunk back after, so no byte is lost), then moved away.
            try #require(truncate(part, off_t(size + 4096)) == 0, "truncate \(part): \(String(cString: strerror(errno)))")
            expectOneLine(try cryo(["restore", "-D", images], in: scratch, timeout: 60),
                          naming: [name, "\(size + 4096) bytes", "expects \(size)", "truncated or replaced"])
            try #require(truncate(part, off_t(size)) == 0)
            try #require(rename(part, part + ".away") == 0)
            expectOneLine(try cryo(["restore", "-D", images], in: scratch, timeout: 60), naming: [name, "missing"])
            try #require(rename(part + ".away", part) == 0)
            #expect(!pidExists(fixture.pid), "a process with pid \(fixture.pid) is left after the refused restores")

            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore)
        }

        /// Opened read-only, the mapping would come back without VM_MAYWRITE, and the process's next
        /// mprotect(PROT_WRITE) would fail with EACCES long after the restore.
        @Test("a read-only shared mapping from a read-write descriptor whose file no longer opens read-write: one line")
        func mayWriteFileLocked() throws {
            let scratch = try Scratch("maywrite-immutable")
            defer { scratch.remove() }
            let fixture = try Fixture("memstate", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let path = try #require(fixture.tagged("MAYWRITE")?.first, "\(fixture.report)")
            defer { unlink(path) }
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            func chattr(_ flag: String) throws -> Bool {
                let pid = try spawnProcess("/usr/bin/env", ["chattr", flag, path], stdoutPath: scratch.file("chattr.log"))
                return reap(pid, timeout: 30) == .exited(0)
            }
            // Immutable: not even root opens it for writing (EPERM).
            guard try chattr("+i") else {
                try Test.cancel(Comment(rawValue: "chattr +i \(path) failed: \(readText(scratch.file("chattr.log")))"))
            }
            let refused = try cryo(["restore", "-D", images], in: scratch, timeout: 120)
            #expect(try chattr("-i"), "chattr -i \(path): \(readText(scratch.file("chattr.log")))")
            expectOneLine(refused, naming: ["\(fixture.pid)", path, "read-write", "EPERM"])
            #expect(!pidExists(fixture.pid), "pid \(fixture.pid) is left after the failed restore: \(describeProcess(fixture.pid))")
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore)
        }

        @Test("an open regular file deleted between dump and restore")
        func openFileDeleted() throws {
            let scratch = try Scratch("nothing-lost-open-file")
            defer { scratch.remove() }
            let work = try scratch.folder("files-work")
            let fixture = try Fixture("files", arguments: [work], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = scratch.file("img")
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
            try #require(fixture.reapOriginal(timeout: 20) != nil, "pid \(fixture.pid) still runs after the dump")

            let file = work + "/rw.dat"
            try #require(rename(file, file + ".away") == 0, "rename \(file): \(String(cString: strerror(errno)))")
            let restore = try cryo(["restore", "-D", images], in: scratch, timeout: 60)
            expectOneLine(restore, naming: ["pid \(fixture.pid) fd", file, "ENOENT"])
            let gone = waitUntil(timeout: 10) { !pidExists(fixture.pid) }
            #expect(gone, "a process with pid \(fixture.pid) is left after the failed restore: \(describeProcess(fixture.pid))")
            #expect(processes(running: try FixtureBuilder.binary(for: "files")).isEmpty, "a files process is left")

            // Back in place, the same image restores and passes.
            try #require(rename(file + ".away", file) == 0)
            let again = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { again.stop() }
            try #require(fixture.waitRestored(timeout: 60) { again.isRunning }, "\(again.wait(timeout: 5))")
            kill(fixture.pid, SIGTERM)
            let result = again.wait(timeout: 60)
            #expect(result.status == .exited(0), "\(result)\n\(fixture.report)")
            expectPass(fixture, "\(result)")
        }

        @Test("a pid taken by another process while restore runs (a process's, or a zombie's)", arguments: ["tree", "zombie"])
        func pidTakenMidway(_ name: String) throws {
            let tree = try TreeImage.make("pid-taken", fixture: name)
            defer { tree.cleanUp() }
            let taken = try #require(name == "zombie" ? tree.zombies.last : tree.pids[tree.pids.count / 2])

            // cryo stops itself once the root exists; the pid is taken; cryo carries on.
            let restore = try CryoProcess(["restore", "-D", tree.images], in: tree.scratch,
                                          environment: ["CRYO_STOP_AT": "root-created"])
            defer { restore.stop() }
            let stopped = waitUntil(timeout: 60) { !restore.isRunning || ProcStatus(pid: restore.pid)?.state == "T" }
            try #require(stopped && restore.isRunning, "cryo did not stop at root-created: \(describeProcess(restore.pid))")
            try #require(pidExists(tree.pids[0]), "the root is not there while cryo is stopped")
            let park = try FileObjects.pipe(object: "park")
            defer { try? park.read.close(); try? park.write.close() }
            let holder = try Processes.cloneParked(pid: taken, park: park.read)
            var holderGone = false
            defer {
                if !holderGone {
                    kill(holder, SIGKILL)
                    _ = reap(holder, timeout: 10)
                }
            }
            try #require(holder == taken)
            kill(restore.pid, SIGCONT)
            let result = restore.wait(timeout: 120)

            expectOneLine(result, naming: ["\(taken)", "in use"])
            // Everything but our placeholder is gone, and the placeholder is untouched.
            tree.expectNothingLeft(result, except: [taken])
            #expect(ProcStatus(pid: taken).map { $0.state != "Z" } == true, "the process holding pid \(taken) was harmed: \(describeProcess(taken))")
            kill(holder, SIGKILL)
            holderGone = reap(holder, timeout: 10) != nil
            try tree.restoreAndPass()
        }

        @Test("a mapping that cannot be placed: overlapping another, or above the 47-bit user limit")
        func mappingCannotBePlaced() throws {
            let tree = try TreeImage.make("mapping")
            defer { tree.cleanUp() }
            let child = tree.pids.last!
            let file = tree.images + "/task-\(child).img"
            let saved = try readBytes(file)

            // Since image version 6 the mappings are a binary record of their own.
            var mappings = try MappingTable.decode(try RecordReader(path: file).payload(.mappings), file: file)
            let i = try #require(mappings.indices.dropFirst().first { mappings[$0].kind == .anonymous },
                                 "no anonymous mapping after the first in \(file)")
            let overlapping = mappings[i - 1].end - 4096
            mappings[i].start = overlapping
            try rewriteRecord(file, .mappings, bytes: try MappingTable.encode(mappings))
            expectOneLine(try tree.failingRestore(), naming: ["task-\(child).img", "0x" + String(overlapping, radix: 16)])

            try writeBytes(file, saved)
            mappings = try MappingTable.decode(try RecordReader(path: file).payload(.mappings), file: file)
            let last = try #require(mappings.lastIndex { $0.kind != .vsyscall })
            let high: UInt64 = 0x8000_0000_0000   // 128 TiB: the first address above the 47-bit user space
            let size = mappings[last].end - mappings[last].start
            mappings[last].start = high
            mappings[last].end = high + size
            try rewriteRecord(file, .mappings, bytes: try MappingTable.encode(mappings))
            expectOneLine(try tree.failingRestore(), naming: ["task-\(child).img", "0x" + String(high, radix: 16)])

            try writeBytes(file, saved)
            try tree.restoreAndPass()
        }

        @Test("cryo killed (SIGKILL) during restore: after the root, with stand-in leaders, after the tree, mid memory, before release",
              arguments: ["tree", "zombie"])
        func cryoKilled(_ name: String) throws {
            let tree = try TreeImage.make("killed", fixture: name)
            defer { tree.cleanUp() }
            let phases = ["root-created", "stand-ins-created", "tree-created", "memory-restored", "before-release"]
            // In a new pid namespace too, where killing its init must take everything with it.
            for (phase, flags) in phases.map({ ($0, [String]()) }) + [("tree-created", ["--pidns"]), ("before-release", ["--pidns"])] {
                let result = try cryo(["restore", "-D", tree.images] + flags, in: tree.scratch, timeout: 120,
                                      environment: ["CRYO_KILL_AT": phase])
                let label = ([phase] + flags).joined(separator: " ")
                #expect(result.status == .signaled(SIGKILL), "cryo should have killed itself at \(label)\n\(result)")
                tree.expectNothingLeft(result, phase: label)
            }
            try tree.restoreAndPass()
        }
    }
}

/// A dumped tree fixture, `tree` (30 processes) or `zombie`, run from its own copy of the
/// binary so that its file can be moved away, and what is needed to check a failed restore.
private final class TreeImage {
    let scratch: Scratch
    let fixture: Fixture
    let binary: String
    let images: String
    /// Every pid of the image (zombies too).
    private(set) var pids: [pid_t] = []
    private(set) var zombies: [pid_t] = []
    /// The gone group leader's pid: the stand-in's.
    private(set) var standIn: pid_t?
    let name: String
    private let wasSubreaper: Bool
    private let cryoBinary: String

    /// Starts the fixture and dumps it; on failure nothing of it is left.
    static func make(_ label: String, fixture name: String = "tree") throws -> TreeImage {
        let tree = try TreeImage(label, fixture: name)
        do { try tree.dump() } catch {
            tree.cleanUp()
            throw error
        }
        return tree
    }

    private init(_ label: String, fixture name: String) throws {
        self.name = name
        let scratch = try Scratch("nothing-lost-\(label)")
        self.scratch = scratch
        // Orphans of a failed restore come to us: we reap them and know they are dead.
        wasSubreaper = isChildSubreaper()
        setChildSubreaper(true)
        do {
            binary = try scratch.folder("bin") + "/" + name
            try FileManager.default.copyItem(atPath: try FixtureBuilder.binary(for: name), toPath: binary)
            cryoBinary = URL(fileURLWithPath: try Locations.cryoBinary()).resolvingSymlinksInPath().path
            fixture = try Fixture(name, arguments: name == "tree" ? ["30"] : [], in: scratch, binary: binary)
        } catch {
            if !wasSubreaper { setChildSubreaper(false) }
            scratch.remove()
            throw error
        }
        images = scratch.file("img")
    }

    private func dump() throws {
        try fixture.waitReady(timeout: 60)
        let tree = try #require(fixture.tagged("PIDS")?.compactMap { pid_t($0) }, "no PIDS line\n\(fixture.report)")
        standIn = fixture.tagged("DEADPGID")?.first.flatMap { pid_t($0) }
        zombies = fixture.tagged("ZOMBIES")?.compactMap { pid_t($0) } ?? []
        try #require(standIn != nil, "\(name) should have a group whose leader is gone\n\(fixture.report)")
        pids = tree
        let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
        try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
        try #require(fixture.reapOriginal(timeout: 20) != nil, "the tree's root still runs after the dump")
        // The killed tree's orphans come to us too.
        try #require(waitUntil(timeout: 20) { (pids + [standIn!]).allSatisfy { _ = tryReap($0); return !pidExists($0) } },
                     "the dumped tree is still there: \(pids.filter(pidExists).prefix(5).map(describeProcess))")
    }

    /// A restore that must fail (exit 1), without hooks.
    func failingRestore(sourceLocation: SourceLocation = #_sourceLocation) throws -> CryoResult {
        let result = try cryo(["restore", "-D", images], in: scratch, timeout: 120)
        #expect(result.failed, "the restore should have failed\n\(result)", sourceLocation: sourceLocation)
        expectNothingLeft(result, sourceLocation: sourceLocation)
        return result
    }

    /// No pid of the image (but `except`) is in use any more, and nothing runs the fixture's or
    /// cryo's program: orphans are ours (child subreaper) and reaped here; one still alive is a leak.
    func expectNothingLeft(_ result: CryoResult, except: Set<pid_t> = [], phase: String = "",
                           sourceLocation: SourceLocation = #_sourceLocation) {
        let watched = (pids + [standIn!]).filter { !except.contains($0) }
        func leftovers() -> [pid_t] {
            for pid in watched { _ = tryReap(pid) }
            for pid in processes(running: binary) + processes(running: cryoBinary) { _ = tryReap(pid) }
            return Array(Set(watched.filter(pidExists) + processes(running: binary) + processes(running: cryoBinary))).sorted()
        }
        let clean = waitUntil(timeout: 20) { leftovers().isEmpty }
        let left = leftovers()
        let where_ = phase.isEmpty ? "" : "at \(phase): "
        let described = left.prefix(8).map(describeProcess).joined(separator: "; ")
        #expect(clean, "\(where_)\(left.count) processes left after the failed restore: \(described)\n\(result)",
                sourceLocation: sourceLocation)
        if !clean {
            for pid in left { kill(pid, SIGKILL) }
            waitUntil(timeout: 10) { leftovers().isEmpty }
        }
        #expect(!fixture.lines.contains("PASS") && !fixture.lines.contains(where: { $0.hasPrefix("FAIL") }),
                "a half-restored process ran on:\n\(fixture.report)", sourceLocation: sourceLocation)
    }

    /// The image is intact and every pid free: a plain restore brings the tree back and it passes.
    func restoreAndPass(sourceLocation: SourceLocation = #_sourceLocation) throws {
        let restore = try CryoProcess(["restore", "-D", images], in: scratch)
        defer { restore.stop() }
        try expectRestoredAndPassing(fixture, by: restore, sourceLocation: sourceLocation)
    }

    func cleanUp() {
        for pid in pids + [standIn].compactMap({ $0 }) where ProcStatus(pid: pid)?.name == name { kill(pid, SIGKILL) }
        waitUntil(timeout: 10) {
            for pid in pids { _ = tryReap(pid) }
            return pids.allSatisfy { !pidExists($0) }
        }
        fixture.cleanUp()
        if !wasSubreaper { setChildSubreaper(false) }
        scratch.remove()
    }
}

/// Failed with exactly one "cryo:" line on stderr that names every one of `words`.
func expectOneLine(_ result: CryoResult, naming words: [String], sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(result.failed, "should fail with a non-zero exit\n\(result)", sourceLocation: sourceLocation)
    #expect(result.stderrLines.count == 1 && result.stderrLines.first?.hasPrefix("cryo:") == true,
            "want exactly one \"cryo:\" line on stderr\n\(result)", sourceLocation: sourceLocation)
    for word in words {
        let found = word.allSatisfy(\.isNumber) ? containsToken(result.stderr, word) : result.stderr.contains(word)
        #expect(found, "the error should say \"\(word)\"\n\(result)", sourceLocation: sourceLocation)
    }
}

// MARK: - Editing records (checksums kept valid)

/// The record of `kind` in a record file, decoded.
func readRecord<T: Decodable>(_ path: String, _ kind: RecordKind, as type: T.Type) throws -> T {
    try RecordReader(path: path).one(kind, as: type)
}

/// Replaces the payload of the record of `kind` with `value` (JSON, sorted keys), fixing length and CRC.
func rewriteRecord<T: Encodable>(_ path: String, _ kind: RecordKind, _ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    try rewriteRecord(path, kind, bytes: [UInt8](try encoder.encode(value)))
}

/// Replaces the payload of the record of `kind` with `payload` as it is (a binary record), fixing length and CRC.
func rewriteRecord(_ path: String, _ kind: RecordKind, bytes payload: [UInt8]) throws {
    var bytes = try readBytes(path)
    var offset = ImageFormat.fileHeaderSize
    func word<W: FixedWidthInteger>(_ at: Int, _: W.Type) -> W {
        var v: W = 0
        for i in 0..<MemoryLayout<W>.size { v |= W(bytes[at + i]) << (8 * i) }
        return v
    }
    func le<W: FixedWidthInteger>(_ v: W) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    while offset + ImageFormat.recordHeaderSize <= bytes.count {
        let length = Int(word(offset + 8, UInt64.self))
        let start = offset + ImageFormat.recordHeaderSize
        if word(offset, UInt32.self) == kind.rawValue {
            bytes.replaceSubrange(start..<(start + length), with: payload)
            bytes.replaceSubrange((offset + 8)..<(offset + 16), with: le(UInt64(payload.count)))
            bytes.replaceSubrange((offset + 16)..<(offset + 20), with: le(Cryo.crc32(payload)))
            try writeBytes(path, bytes)
            return
        }
        offset = start + length
    }
    throw HarnessError("\(path) holds no \(kind) record")
}
