// Copy-on-write sharing after fork: the cowtree fixture (a parent and 3
// children sharing 64 MiB of private anonymous memory, some pages rewritten
// on either side) checks every word itself after restore; the test compares
// the tree's summed Pss before the dump and after the restore. cowreshape
// does the same with a 64 MiB heap that each child reshaped after fork
// (grown, partly read-only, partly unmapped) and the parent grew.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("copy-on-write sharing after fork")
    struct CopyOnWriteTests {
        @Test("pages shared since fork stay shared after restore", arguments: ["eager", "compress"])
        func shared(_ mode: String) throws {
            let (before, after) = try cowRoundTrip(dump: mode == "compress" ? ["--compress"] : [], restore: [])
            print("cowtree \(mode): Pss before dump \(before) kB, after restore \(after) kB")
            #expect(Double(after) <= Double(before) * 1.3, "the tree's Pss grew from \(before) kB to \(after) kB: sharing was lost")
        }

        /// Each child's heap overlaps the parent's without being its mapping: shared where they overlap.
        @Test("pages stay shared when a child grew, mprotected or cut its heap after fork", arguments: ["eager", "compress", "lazy"])
        func reshaped(_ mode: String) throws {
            let (before, after) = try cowRoundTrip("cowreshape", dump: mode == "compress" ? ["--compress"] : [],
                                                   restore: mode == "lazy" ? ["--lazy-pages"] : [])
            print("cowreshape \(mode): Pss before dump \(before) kB, after restore \(after) kB")
            // Lazily nothing is shared (each process gets its own pages): only that it comes back right.
            if mode != "lazy" {
                #expect(Double(after) <= Double(before) * 1.3, "the tree's Pss grew from \(before) kB to \(after) kB: sharing was lost")
            }
        }

        @Test("after a pre-dump the tree comes back right (each process with all its pages)")
        func preCopy() throws {
            let (before, after) = try cowRoundTrip(dump: [], restore: [], preDump: true)
            print("cowtree pre-copy: Pss before dump \(before) kB, after restore \(after) kB")
        }

        /// Not shared: the parent loads lazily; each child reads the pages it left to the parent from the parent's image.
        @Test("restore --lazy-pages of an image with shared pages comes back right", arguments: [false, true])
        func lazy(compress: Bool) throws {
            let (before, after) = try cowRoundTrip(dump: compress ? ["--compress"] : [], restore: ["--lazy-pages"])
            print("cowtree lazy\(compress ? " compressed" : ""): Pss before dump \(before) kB, after restore \(after) kB")
        }
    }
}

/// The tree's Pss in kB (smaps_rollup of each pid).
private func treePss(_ pids: [pid_t]) -> Int {
    pids.reduce(0) { total, pid in
        let text = (try? String(contentsOfFile: "/proc/\(pid)/smaps_rollup", encoding: .utf8)) ?? ""
        let line = text.split(separator: "\n").first { $0.hasPrefix("Pss:") }
        return total + (line.flatMap { Int($0.split(separator: " ")[1]) } ?? 0)
    }
}

/// start → READY → (pre-dump) → dump → restore → same pids → SIGTERM → PASS; returns the Pss before and after.
private func cowRoundTrip(_ name: String = "cowtree", dump dumpArguments: [String], restore restoreArguments: [String],
                          preDump: Bool = false) throws -> (Int, Int) {
    let scratch = try Scratch(name)
    defer { scratch.remove() }
    let fixture = try Fixture(name, in: scratch)
    let members = TreeMembers(fixture)
    defer { members.cleanUp() }
    try fixture.waitReady(timeout: 60)
    try members.load()
    try #require(members.pids.count == 4, "\(name) should report 4 pids\n\(fixture.report)")
    let snapshot = try members.snapshot()
    let before = treePss(members.pids)
    let root = fixture.pid
    var previous: [String] = []
    if preDump {
        let pre = try cryo(["pre-dump", "-t", "\(root)", "-D", scratch.file("pre")], in: scratch)
        try #require(pre.succeeded, "\(pre)\n\(fixture.report)")
        previous = ["--prev-images-dir", "../pre"]
    }
    let images = scratch.file("img")
    let dump = try cryo(["dump", "-t", "\(root)", "-D", images] + previous + dumpArguments, in: scratch, timeout: 120, reaping: fixture)
    try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
    try #require(fixture.reapOriginal(timeout: 20) != nil, "root pid \(root) still runs after the dump")
    try #require(waitUntil(timeout: 20) { members.pids.allSatisfy { !pidExists($0) } }, "the tree still exists after the dump")

    let restore = try CryoProcess(["restore", "-D", images] + restoreArguments, in: scratch)
    members.restore = restore
    let up = fixture.waitRestored(timeout: 120) { restore.isRunning }
    try #require(up, "root pid \(root) did not come back\n\(restore.wait(timeout: 5))\n\(fixture.report)")
    var problems: [String] = []
    let settled = waitUntil(timeout: 30, interval: 0.05) {
        problems = members.compare(with: snapshot, rootParentMayDiffer: true)
        return problems.isEmpty
    }
    #expect(settled, "after restore the tree differs: \(problems.prefix(10).joined(separator: "; "))")
    // A lazy restore's loader may still be pushing pages: its cryo exits once all are in.
    if restoreArguments.contains("--lazy-pages") { _ = waitUntil(timeout: 30) { treePss(members.pids) > 0 } }
    let after = treePss(members.pids)

    kill(root, SIGTERM)
    let result = restore.wait(timeout: 120)
    #expect(result.status == .exited(0), "cryo restore should exit with the root's status 0\n\(result)\n\(fixture.report)")
    expectPass(fixture, "\(result)")
    return (before, after)
}
