// The debugging aids: `restore --leave-stopped`, the report of a crashing
// parasite, `cryo show --json`, `--pages` and `--stats`, and `cryo check`.
// Each is compared with what the fixture set up or with what /proc says, not
// only with an exit status.

import Foundation
import Glibc
import Testing

/// The fixtures whose images `show --json` is checked against their sources.
let showFixtures = ["counter", "files", "pipe", "signals", "tree", "threads", "events", "seccomp", "locks", "ptimers", "unix"]

extension EndToEnd {
    @Suite("debugging aids: leave-stopped, parasite crash, show, check")
    struct DebugTests {
        @Test("restore --leave-stopped -d leaves every task stopped and untraced", arguments: ["tree", "threads"])
        func leaveStopped(_ name: String) throws {
            try leaveStoppedRoundTrip(name)
        }

        @Test("a parasite that crashes on purpose is reported in one line with registers and backtrace",
              arguments: ["counter", "signals"])
        func parasiteCrash(_ name: String) throws {
            let scratch = try Scratch("\(name)-parasite-crash")
            defer { scratch.remove() }
            let fixture = try Fixture(name, in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid

            let images = scratch.file("img")
            let dump = try cryo(["dump", "-t", "\(pid)", "-D", images], in: scratch, reaping: fixture,
                                environment: ["CRYO_TEST_PARASITE_FAULT": "10"])
            #expect(dump.failed, "a dump whose parasite crashes should fail with a non-zero exit\n\(dump)")
            #expect(dump.stderrLines.count == 1, "want exactly one line on stderr\n\(dump)")
            let message = dump.stderrLines.first ?? ""
            for part in ["SIGSEGV", "rip 0x", "backtrace:"] {
                #expect(message.contains(part), "the report should contain \"\(part)\"\n\(dump)")
            }
            #expect(containsToken(message, "\(pid)"), "the report should name pid \(pid)\n\(dump)")
            let backtrace = message.range(of: "backtrace:").map { String(message[$0.upperBound...]) } ?? ""
            let deeper = backtrace.range(of: "fault_deeper"), outer = backtrace.range(of: "fault_on_purpose")
            let inOrder = deeper.flatMap { d in outer.map { d.lowerBound < $0.lowerBound } } ?? false
            #expect(inOrder,
                    "the backtrace should name fault_deeper, then its caller fault_on_purpose: \(backtrace)")
            #expect(!FileManager.default.fileExists(atPath: images), "the failed dump left its image folder \(images)")

            // Cured and let go: it carries on and passes every check.
            if let ended = fixture.pollOriginal() {
                Issue.record("the fixture ended after the parasite crash: \(ended)\n\(fixture.report)")
                return
            }
            let running = waitUntil(timeout: 2) { ProcStatus(pid: pid).map { $0.isRunning && $0.tracerPid == 0 } ?? false }
            #expect(running, "after the failed dump the fixture should run free: \(describeProcess(pid))")
            fixture.signal(SIGTERM)
            let exit = fixture.reapOriginal(timeout: 30)
            #expect(exit == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }

        @Test("a process stopped by SIGSTOP when dumped comes back stopped, untraced, and carries on after SIGCONT")
        func stoppedStaysStopped() throws {
            let scratch = try Scratch("stopped")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            kill(pid, SIGSTOP)
            #expect(waitUntil(timeout: 10) { procState(pid) == "T" }, "counter did not stop")
            let images = try dumpAndReap(fixture, in: scratch).images
            let restore = try cryo(["restore", "-D", images, "-d"], in: scratch, timeout: 60)
            try #require(restore.succeeded, "\(restore)\n\(fixture.report)")
            #expect(waitUntil(timeout: 10) { procState(pid) == "T" }, "restored pid \(pid) is in state \(procState(pid) ?? "?"), want T")
            let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
            #expect(status.contains("TracerPid:\t0"), "restored pid \(pid) is still traced:\n\(status)")
            kill(pid, SIGCONT)
            kill(pid, SIGTERM)
            #expect(waitUntil(timeout: 60) { !pidExists(pid) }, "restored pid \(pid) did not exit after SIGCONT and SIGTERM")
            expectPass(fixture, "\(restore)")
        }

        @Test("restore -v --log-file records the parasite's own log lines with task and command")
        func parasiteLog() throws {
            let scratch = try Scratch("parasite-log")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            let images = try dumpAndReap(fixture, in: scratch).images
            let log = scratch.file("cryo.log")
            let restore = try cryo(["restore", "-D", images, "-d", "-v", "--log-file", log], in: scratch, timeout: 60)
            try #require(restore.succeeded, "\(restore)\n\(fixture.report)")
            try #require(fixture.waitRestored(timeout: 30), "pid \(pid) did not come back (\(describeProcess(pid)))")
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            #expect(text.contains("pid \(pid) parasite RESTORE_MEMORY: map 0x"), "no mapping lines from the parasite in:\n\(text.prefix(3000))")
            #expect(text.contains("pid \(pid) parasite INSTALL_FDS: install fd"), "no descriptor lines from the parasite in:\n\(text.prefix(3000))")
            #expect(!restore.stderr.contains("parasite"), "with --log-file the log goes to the file, not stderr:\n\(restore.stderr)")
            kill(pid, SIGTERM)
            #expect(waitUntil(timeout: 60) { !pidExists(pid) }, "restored pid \(pid) did not exit after SIGTERM")
            expectPass(fixture, "\(restore)")
        }

        @Test("show --json matches what the fixture set up", arguments: showFixtures)
        func showJSON(_ name: String) throws {
            try showMatchesFixture(name)
        }

        @Test("show --pages hexdumps bigmem's pattern and zeros for the untouched quarter")
        func showPages() throws {
            let scratch = try Scratch("show-pages")
            defer { scratch.remove() }
            let fixture = try Fixture("bigmem", arguments: ["16"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            let map = try #require(fixture.tagged("MAP"), "no MAP line\n\(fixture.report)")
            let start = try #require(map.first.flatMap { UInt64($0, radix: 16) }, "bad MAP line \(map)")
            let size = try #require(map.count == 2 ? UInt64(map[1]) : nil, "bad MAP line \(map)")
            try #require(size == 16 << 20, "bigmem 16 maps \(size) bytes")

            let images = scratch.file("img")
            let dump = try cryo(["dump", "--leave-running", "-t", "\(pid)", "-D", images], in: scratch, reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")

            func pages(_ address: UInt64, _ count: Int) throws -> [UInt8]? {
                let show = try cryo(["show", images, "--pages", "\(String(address, radix: 16)):\(count)", "-t", "\(pid)"], in: scratch, timeout: 60)
                guard show.succeeded else { Issue.record("\(show)"); return nil }
                return parseHexdump(show.stdout, from: address, count: count)
            }
            // The first 64 bytes: eight words of page 0.
            let first = try pages(start, 64)
            let want0 = bigmemWords(page: 0, count: 8)
            #expect(first == want0, "the first 64 bytes of the mapping are \(hexString(first)), want \(hexString(want0))")
            // A page in the middle of the written part.
            let page = UInt64(1000)
            let middle = try pages(start + page * 4096 + 64, 32)
            let wantMiddle = Array(bigmemWords(page: page, count: 12).dropFirst(64))
            #expect(middle == wantMiddle, "page 1000 at byte 64 is \(hexString(middle)), want \(hexString(wantMiddle))")
            // The never-touched last quarter reads as zeros.
            let untouched = try pages(start + size - 4096, 64)
            #expect(untouched == [UInt8](repeating: 0, count: 64), "the last page of the mapping is \(hexString(untouched)), want zeros")
            // Outside any mapping: refused.
            let outside = try cryo(["show", images, "--pages", "\(String(start + size, radix: 16)):16", "-t", "\(pid)"], in: scratch, timeout: 60)
            #expect(outside.failed && outside.stderrLines.count == 1 && outside.stderr.contains("no mapping"),
                    "--pages past the end of the mapping should fail saying so\n\(outside)")

            fixture.signal(SIGTERM)
            let exit = fixture.reapOriginal(timeout: 60)
            #expect(exit == .exited(0), "\(fixture.report)")
            expectPass(fixture)
        }

        @Test("show names each mapping's locks and advice, and mlockall's flags for later mappings")
        func showLocks() throws {
            let scratch = try Scratch("show-locks")
            defer { scratch.remove() }
            let fixture = try Fixture("mlocked", arguments: ["future-onfault"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = scratch.file("img")
            let dump = try cryo(["dump", "--leave-running", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
            let show = try cryo(["show", images], in: scratch, timeout: 60)
            #expect(show.succeeded, "\(show)")
            let lines = show.stdout.split(separator: "\n")
            #expect(lines.contains { $0.contains("mlockall MCL_FUTURE | MCL_ONFAULT") }, "\(show.stdout)")
            // The 2 MiB locked region; the 64-page one locked on fault; the stack grows down.
            #expect(lines.contains { $0.contains("(locked)") && $0.contains("[512 pages saved]") }, "\(show.stdout)")
            #expect(lines.contains { $0.contains("(locked on fault)") && $0.contains("[16 pages saved]") }, "\(show.stdout)")
            #expect(lines.contains { $0.contains(" stack ") && $0.contains("grows down") }, "\(show.stdout)")
            if fixture.tagged("NOKSM") == nil { #expect(lines.contains { $0.contains("(mergeable)") }, "\(show.stdout)") }
            fixture.signal(SIGTERM)
            #expect(fixture.reapOriginal(timeout: 30) == .exited(0), "\(fixture.report)")
            expectPass(fixture)
        }

        @Test("show --stats holds the dump's and then the restore's statistics")
        func showStats() throws {
            try statsRoundTrip()
        }

        @Test("check --json lists every feature with name, ok, required and detail")
        func checkJSON() throws {
            let scratch = try Scratch("check")
            defer { scratch.remove() }
            struct Feature: Decodable { let name: String; let ok: Bool; let required: Bool; let detail: String }

            let json = try cryo(["check", "--json"], in: scratch, timeout: 60)
            #expect(json.succeeded, "cryo check --json should exit 0 when every required feature works\n\(json)")
            let features = try #require(decodeJSON([Feature].self, json.stdout, what: "check --json"))
            #expect(features.count >= 8, "only \(features.count) features checked")
            #expect(Set(features.map(\.name)).count == features.count, "a feature is listed twice: \(features.map(\.name))")
            for f in features {
                #expect(!f.name.isEmpty && !f.detail.isEmpty, "feature with an empty name or detail: \(f)")
                if f.required { #expect(f.ok, "required feature \"\(f.name)\" is not ok: \(f.detail)") }
            }
            for name in ["clone3 with set_tid (exact pids)", "ptrace seize and interrupt", "process_vm_readv",
                         "PAGEMAP_SCAN (Linux 6.7+)", "capability CAP_SYS_PTRACE", "capability CAP_CHECKPOINT_RESTORE"] {
                let f = features.first { $0.name == name }
                #expect(f?.required == true && f?.ok == true, "\"\(name)\" should be a required feature that works here: \(f.map { "\($0)" } ?? "missing")")
            }
            // The capability entries say what this process (cryo's parent, same credentials) holds.
            let capEff = UInt64(statusFields("/proc/self/status")?["CapEff"] ?? "", radix: 16) ?? 0
            for (bit, cap) in [(19, "CAP_SYS_PTRACE"), (21, "CAP_SYS_ADMIN"), (24, "CAP_SYS_RESOURCE"), (40, "CAP_CHECKPOINT_RESTORE")] {
                let held = capEff & (UInt64(1) << UInt64(bit)) != 0
                let f = features.first { $0.name == "capability \(cap)" }
                #expect(f?.ok == held, "capability \(cap): check says ok \(f.map { "\($0.ok)" } ?? "missing"), CapEff 0x\(String(capEff, radix: 16)) says \(held)")
            }
            // The text report lists the same features with the same verdicts.
            let text = try cryo(["check"], in: scratch, timeout: 60)
            #expect(text.succeeded, "\(text)")
            let lines = text.stdout.split(separator: "\n").map(String.init)
            #expect(lines.count == features.count, "text lists \(lines.count) features, JSON \(features.count)\n\(text.stdout)")
            for f in features {
                let line = lines.first { $0.dropFirst(5).hasPrefix(f.name) }
                let mark = f.ok ? "ok" : f.required ? "FAIL" : "no"
                #expect(line?.split(separator: " ").first.map(String.init) == mark, "\"\(f.name)\" (ok \(f.ok)) in the text: \(line ?? "missing")")
            }
        }
    }
}

// MARK: - leave-stopped

/// dump (kill) → restore --leave-stopped -d → every process and thread in
/// state T, untraced, and staying so → SIGCONT → the tree as it was → PASS.
private func leaveStoppedRoundTrip(_ name: String) throws {
    let scratch = try Scratch("\(name)-leave-stopped")
    defer { scratch.remove() }
    let fixture = try Fixture(name, arguments: name == "tree" ? ["9"] : nil, in: scratch)
    let members = TreeMembers(fixture)
    defer { members.cleanUp() }
    try fixture.waitReady(timeout: 60)
    try members.load()
    let before = try members.snapshot()
    let root = fixture.pid

    let images = scratch.file("img")
    let dump = try cryo(["dump", "-t", "\(root)", "-D", images], in: scratch, reaping: fixture)
    try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
    try #require(fixture.reapOriginal(timeout: 20) != nil, "root \(root) still runs after the dump")
    try #require(waitUntil(timeout: 20) { members.pids.allSatisfy { !pidExists($0) } },
                 "processes of the tree are left after the dump: \(members.pids.filter(pidExists))")

    let restore = try cryo(["restore", "-D", images, "--leave-stopped", "-d"], in: scratch)
    try #require(restore.succeeded, "\(restore)\n\(fixture.report)")

    // Right after cryo returned: every task stopped, none traced.
    func notStopped() -> [String] {
        var problems: [String] = []
        for pid in members.pids {
            let tids = threadIDs(pid).sorted()
            if tids.isEmpty { problems.append("pid \(pid) is missing"); continue }
            for tid in tids {
                let fields = statusFields("/proc/\(pid)/task/\(tid)/status") ?? [:]
                let state = fields["State"]?.first, tracer = fields["TracerPid"]
                if state != "T" || tracer != "0" {
                    problems.append("pid \(pid) thread \(tid): state \(fields["State"] ?? "?"), tracer \(tracer ?? "?")")
                }
            }
        }
        return problems
    }
    let stopped = notStopped()
    #expect(stopped.isEmpty, "after `restore --leave-stopped -d` returned, tasks are not stopped untraced:\n\(stopped.prefix(20).joined(separator: "\n"))")
    if !members.rootThreads.isEmpty {
        #expect(threadIDs(root) == members.rootThreads, "the root's threads \(threadIDs(root).sorted()) differ from its TIDS line")
    }
    sleepSeconds(0.5)
    let stillStopped = notStopped()
    #expect(stillStopped.isEmpty, "half a second later tasks are no longer stopped:\n\(stillStopped.prefix(20).joined(separator: "\n"))")
    #expect(!fixture.lines.contains { $0 == "PASS" || $0.hasPrefix("FAIL") }, "the fixture ran its checks:\n\(fixture.report)")

    // Let them go: then the tree must be as it was.
    for pid in members.pids { kill(pid, SIGCONT) }
    var problems: [String] = []
    let settled = waitUntil(timeout: 20, interval: 0.05) {
        problems = members.compare(with: before, rootParentMayDiffer: true)
        return problems.isEmpty
    }
    #expect(settled, "after SIGCONT the tree differs from before the dump:\n\(problems.prefix(30).joined(separator: "\n"))")

    kill(root, SIGTERM)
    let gone = waitUntil(timeout: 60) { members.pids.allSatisfy { !pidExists($0) } }
    #expect(gone, "the tree did not end within 60 s of SIGTERM: \(members.pids.filter(pidExists).prefix(10).map(describeProcess))\n\(fixture.report)")
    expectPass(fixture, "\(restore)")
}

// MARK: - show --stats

/// tree 9: dump (kill) → stats-dump only → restore -d → stats-restore too →
/// SIGTERM → PASS.
private func statsRoundTrip() throws {
    let scratch = try Scratch("show-stats")
    defer { scratch.remove() }
    let fixture = try Fixture("tree", arguments: ["9"], in: scratch)
    let members = TreeMembers(fixture)
    defer { members.cleanUp() }
    try fixture.waitReady(timeout: 60)
    try members.load()
    let root = fixture.pid

    let images = scratch.file("img")
    let dump = try cryo(["dump", "-t", "\(root)", "-D", images], in: scratch, reaping: fixture)
    try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
    try #require(fixture.reapOriginal(timeout: 20) != nil, "root \(root) still runs after the dump")
    try #require(waitUntil(timeout: 20) { members.pids.allSatisfy { !pidExists($0) } }, "the tree is still there after the dump")

    let pagesFiles = try FileManager.default.contentsOfDirectory(atPath: images).filter { $0.hasPrefix("pages-") }
    let pagesBytes = pagesFiles.reduce(UInt64(0)) { total, name in
        var st = stat()
        return total + (stat(images + "/" + name, &st) == 0 ? UInt64(st.st_size) : 0)
    }
    #expect(pagesFiles.count == 9, "want one pages file per process: \(pagesFiles)")

    let afterDump = try cryo(["show", images, "--stats"], in: scratch, timeout: 60)
    try #require(afterDump.succeeded, "\(afterDump)")
    let dumpSections = statsSections(afterDump.stdout)
    let dumpStats = try #require(dumpSections["stats-dump"].flatMap(jsonObject), "no JSON under stats-dump:\n\(afterDump.stdout)")
    for key in ["processes", "frozenSeconds", "pagesWritten"] {
        #expect(afterDump.stdout.contains("\"\(key)\""), "stats-dump should show \"\(key)\"\n\(afterDump.stdout)")
    }
    #expect(number(dumpStats["processes"]) == 9, "stats-dump processes \(dumpStats["processes"] ?? "missing"), want 9")
    let frozen = number(dumpStats["frozenSeconds"]) ?? -1
    #expect(frozen > 0 && frozen < 60, "stats-dump frozenSeconds \(frozen)")
    let written = number(dumpStats["pagesWritten"]) ?? -1
    let scanned = number(dumpStats["pagesScanned"]) ?? -1
    #expect(written * 4096 == Double(pagesBytes), "stats-dump pagesWritten \(written) pages, the pages files hold \(pagesBytes) bytes")
    #expect(written > 0 && written <= scanned, "pagesWritten \(written) should be in 1...pagesScanned (\(scanned))")
    #expect(dumpSections["stats-restore"]?.contains("(none)") == true, "no restore yet, but stats-restore shows:\n\(afterDump.stdout)")

    let restore = try cryo(["restore", "-D", images, "-d"], in: scratch)
    try #require(restore.succeeded, "\(restore)\n\(fixture.report)")
    try #require(fixture.waitRestored(timeout: 30), "root \(root) did not come back: \(describeProcess(root))")

    let afterRestore = try cryo(["show", images, "--stats"], in: scratch, timeout: 60)
    try #require(afterRestore.succeeded, "\(afterRestore)")
    let restoreSections = statsSections(afterRestore.stdout)
    #expect(restoreSections["stats-dump"].flatMap(jsonObject).map { number($0["pagesWritten"]) == written } == true,
            "stats-dump changed with the restore:\n\(afterRestore.stdout)")
    let restoreStats = try #require(restoreSections["stats-restore"].flatMap(jsonObject), "no JSON under stats-restore:\n\(afterRestore.stdout)")
    for key in ["forkingSeconds", "restoreSeconds"] {
        #expect(afterRestore.stdout.contains("\"\(key)\""), "stats-restore should show \"\(key)\"\n\(afterRestore.stdout)")
        let seconds = number(restoreStats[key]) ?? -1
        #expect(seconds > 0 && seconds < 60, "stats-restore \(key) \(seconds)")
    }
    #expect(number(restoreStats["processes"]) == 9, "stats-restore processes \(restoreStats["processes"] ?? "missing"), want 9")
    if let total = number(restoreStats["totalSeconds"]), let forking = number(restoreStats["forkingSeconds"]),
       let restoring = number(restoreStats["restoreSeconds"]) {
        #expect(total >= forking + restoring, "totalSeconds \(total) < forking \(forking) + restore \(restoring)")
    }

    kill(root, SIGTERM)
    let gone = waitUntil(timeout: 60) { members.pids.allSatisfy { !pidExists($0) } }
    #expect(gone, "the tree did not end after SIGTERM\n\(fixture.report)")
    expectPass(fixture, "\(restore)")
}

/// "NAME:" lines followed by their text, as `show --stats` prints them.
private func statsSections(_ text: String) -> [String: String] {
    var sections: [String: String] = [:]
    var current: String?
    for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
        if line.hasPrefix("stats-"), line.hasSuffix(":") {
            current = String(line.dropLast())
            sections[current!] = ""
        } else if let current {
            sections[current]! += line + "\n"
        }
    }
    return sections
}

private func jsonObject(_ text: String) -> [String: Any]? {
    (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
}

private func number(_ value: Any?) -> Double? { (value as? NSNumber)?.doubleValue }

// MARK: - show --pages

/// The bytes of `count` words of bigmem's page `page`, as bigmem.c writes them.
private func bigmemWords(page: UInt64, count: Int) -> [UInt8] {
    var x = page &+ 0x9e37_79b9_7f4a_7c15
    x ^= x >> 30; x = x &* 0xbf58_476d_1ce4_e5b9
    x ^= x >> 27; x = x &* 0x94d0_49bb_1331_11eb
    x ^= x >> 31
    var bytes: [UInt8] = []
    for w in 0..<UInt64(count) {
        let value = x &+ w &* 0xd134_2543_de82_ef95
        bytes += (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
    }
    return bytes
}

/// Bytes from `show --pages` output ("ADDR  xx xx ...  text" per 16 bytes);
/// nil (with an issue) when the rows do not start at `from` and follow on.
private func parseHexdump(_ text: String, from: UInt64, count: Int) -> [UInt8]? {
    var bytes: [UInt8] = []
    for line in text.split(separator: "\n") {
        let columns = line.components(separatedBy: "  ")
        guard columns.count >= 2, let address = UInt64(columns[0], radix: 16) else {
            Issue.record("unexpected hexdump line: \(line)")
            return nil
        }
        guard address == from + UInt64(bytes.count) else {
            Issue.record("hexdump row at 0x\(String(address, radix: 16)), want 0x\(String(from + UInt64(bytes.count), radix: 16))")
            return nil
        }
        bytes += columns[1].split(separator: " ").compactMap { UInt8($0, radix: 16) }
    }
    guard bytes.count == count else {
        Issue.record("hexdump gave \(bytes.count) bytes, want \(count):\n\(text)")
        return nil
    }
    return bytes
}

private func hexString(_ bytes: [UInt8]?) -> String {
    bytes.map { $0.map { String(format: "%02x", $0) }.joined(separator: " ") } ?? "nothing"
}

// MARK: - show --json

/// dump --leave-running → show --json decoded and compared with the fixture's
/// setup → SIGTERM → PASS.
private func showMatchesFixture(_ name: String) throws {
    let scratch = try Scratch("\(name)-show-json")
    defer { scratch.remove() }
    let fixture = try Fixture(name, arguments: name == "tree" ? ["9"] : nil, in: scratch)
    let members = TreeMembers(fixture)
    defer { members.cleanUp() }
    try fixture.waitReady(timeout: 60)
    try members.load()
    let before = try members.snapshot()
    let pid = fixture.pid

    let images = scratch.file("img")
    let dump = try cryo(["dump", "--leave-running", "-t", "\(pid)", "-D", images], in: scratch, reaping: fixture)
    try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
    let show = try cryo(["show", images, "--json"], in: scratch, timeout: 60)
    try #require(show.succeeded, "\(show)")
    let image = try #require(decodeJSON(ShownImage.self, show.stdout, what: "show --json"))

    try checkCommon(image, fixture: fixture, members: members, before: before, images: images)
    let task = try #require(image.task(pid), "no task record for the root \(pid)")
    switch name {
    case "counter": try checkCounter(image, task, fixture)
    case "files": try checkFiles(image, task, images: images)
    case "pipe": try checkPipes(image, task)
    case "signals": try checkSignals(image, task, fixture, scratch: scratch)
    case "tree": try checkTree(image)
    case "threads": try checkThreads(task, members)
    default: try checkKernelObjects(name, json: show.stdout, pid: pid)
    }

    fixture.signal(SIGTERM)
    let exit = fixture.reapOriginal(timeout: 120)
    #expect(exit == .exited(0), "\(name) ended with \(exit.map(\.description) ?? "nothing: still running")\n\(fixture.report)")
    expectPass(fixture, "\(dump)")
}

/// What holds for every image: the tree, registers in mapped memory, a page
/// index that adds up to the pages file.
private func checkCommon(_ image: ShownImage, fixture: Fixture, members: TreeMembers, before: [pid_t: ProcIDs], images: String) throws {
    let pid = fixture.pid
    #expect(image.inventory.rootPid == pid, "rootPid \(image.inventory.rootPid), want \(pid)")
    #expect(image.inventory.processes.map(\.pid).sorted() == members.pids.sorted(),
            "inventory pids \(image.inventory.processes.map(\.pid).sorted()), want \(members.pids.sorted())")
    for p in image.inventory.processes {
        guard let was = before[p.pid] else { continue }
        #expect(p.ppid == was.ppid && p.pgid == was.pgid && p.sid == was.sid && p.comm == was.comm && p.zombieStatus == nil,
                "inventory has pid \(p.pid) ppid \(p.ppid) pgid \(p.pgid) sid \(p.sid) comm \(p.comm) zombie \(p.zombieStatus.map(String.init) ?? "no"), /proc said \(was.summary)")
    }
    #expect(image.tasks.map(\.core.pid).sorted() == members.pids.sorted(), "task records for \(image.tasks.map(\.core.pid).sorted())")
    let binary = try FixtureBuilder.binary(for: fixture.name)
    for task in image.tasks {
        let core = task.core
        #expect(core.exe == binary, "pid \(core.pid): exe \(core.exe), want \(binary)")
        if let entry = image.inventory.processes.first(where: { $0.pid == core.pid }) {
            #expect(core.ppid == entry.ppid && core.pgid == entry.pgid && core.sid == entry.sid && core.comm == entry.comm,
                    "pid \(core.pid): the task record and the inventory disagree")
        }
        #expect(task.threads.first?.tid == core.pid, "pid \(core.pid): first thread is \(task.threads.first?.tid ?? -1)")
        for thread in task.threads {
            let where_ = "pid \(core.pid) thread \(thread.tid)"
            guard thread.general.count == 27 else { Issue.record("\(where_): \(thread.general.count) general registers, want 27"); continue }
            let code = task.memory.mapping(containing: thread.rip)
            #expect(code?.protection.contains("x") == true, "\(where_): rip 0x\(String(thread.rip, radix: 16)) is not in an executable mapping")
            let stack = task.memory.mapping(containing: thread.rsp)
            #expect(stack?.protection.contains("w") == true, "\(where_): rsp 0x\(String(thread.rsp, radix: 16)) is not in a writable mapping")
            #expect(thread.extendedState.count >= 576, "\(where_): XSAVE area of \(thread.extendedState.count) bytes")
        }
        // Runs: in address order, inside a mapping, offsets consecutive, adding up to the pages file.
        var offset: UInt64 = 0, lastEnd: UInt64 = 0
        var runProblems: [String] = []
        for run in task.pageIndex.runs {
            guard run.count == 3 else { runProblems.append("run \(run) is not [address, length, offset]"); continue }
            if run[0] < lastEnd { runProblems.append("run at 0x\(String(run[0], radix: 16)) out of order") }
            if run[2] != offset { runProblems.append("run at 0x\(String(run[0], radix: 16)) has offset \(run[2]), want \(offset)") }
            if run[0] % 4096 != 0 || run[1] % 4096 != 0 || run[1] == 0 { runProblems.append("run \(run) is not page aligned") }
            if let m = task.memory.mapping(containing: run[0]), run[0] + run[1] <= m.end {} else {
                runProblems.append("run 0x\(String(run[0], radix: 16))+\(run[1]) is not inside one mapping")
            }
            offset += run[1]
            lastEnd = run[0] + run[1]
        }
        #expect(runProblems.isEmpty, "pid \(core.pid) page index: \(runProblems.prefix(5))")
        #expect(offset == task.pageIndex.pagesFileSize, "pid \(core.pid): runs add up to \(offset) bytes, pagesFileSize is \(task.pageIndex.pagesFileSize)")
        var st = stat()
        let pagesPath = "\(images)/pages-\(core.pid).img"
        #expect(stat(pagesPath, &st) == 0 && UInt64(st.st_size) == task.pageIndex.pagesFileSize,
                "\(pagesPath) is \(st.st_size) bytes, pagesFileSize \(task.pageIndex.pagesFileSize)")
        // Every descriptor names a description in the file table.
        for d in task.descriptors.descriptors where image.files.file(d.file) == nil {
            Issue.record("pid \(core.pid) fd \(d.fd) names file \(d.file), which is not in files")
        }
        #expect(task.descriptors.fd(0).flatMap { image.files.file($0.file)?.path } == "/dev/null", "pid \(core.pid): fd 0 is not /dev/null")
        let out = task.descriptors.fd(1), err = task.descriptors.fd(2)
        #expect(out != nil && out?.file == err?.file, "pid \(core.pid): fds 1 and 2 should share one description")
        let log = out.flatMap { image.files.file($0.file) }
        #expect(log?.path == fixture.logPath && (log?.flags ?? 0) & O_APPEND != 0,
                "pid \(core.pid): fd 1 is \(log?.path ?? "?") flags 0\(String(log?.flags ?? 0, radix: 8)), want \(fixture.logPath) with O_APPEND")
    }
}

private func checkCounter(_ image: ShownImage, _ task: ShownImage.Task, _ fixture: Fixture) throws {
    #expect(task.core.ppid == getpid(), "counter's parent is \(task.core.ppid), want the test runner \(getpid())")
    #expect(task.core.sid == fixture.pid && task.core.pgid == fixture.pid, "counter leads its session and group")
    #expect(task.threads.count == 1 && task.threads.first?.name == "counter", "threads: \(task.threads.map { "\($0.tid) \($0.name)" })")
    #expect(Set(task.descriptors.descriptors.map(\.fd)) == [0, 1, 2], "counter has fds \(task.descriptors.descriptors.map(\.fd))")
    // 4 MiB of heap buffer and 512 KiB of bss, every byte written.
    #expect(task.pageIndex.pagesFileSize >= (4 << 20) + (512 << 10),
            "only \(task.pageIndex.pagesFileSize) bytes of pages saved, counter wrote more than 4.5 MiB")
    let kinds = Set(task.memory.mappings.map(\.kind))
    #expect(kinds.isSuperset(of: ["heap", "stack", "anonymous", "file", "vdso"]), "mapping kinds \(kinds.sorted())")
    let heap = task.memory.mappings.first { $0.kind == "heap" }
    #expect(heap.map { h in task.pageIndex.runs.contains { $0[0] >= h.start && $0[0] < h.end } } == true, "no pages saved from the heap")
}

private func checkFiles(_ image: ShownImage, _ task: ShownImage.Task, images: String) throws {
    let d = task.descriptors
    #expect(Set(d.descriptors.map(\.fd)) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100], "fds \(d.descriptors.map(\.fd).sorted())")
    func file(_ fd: Int32) -> ShownImage.FileTable.File? { d.fd(fd).flatMap { image.files.file($0.file) } }
    func name(_ fd: Int32) -> String? { file(fd)?.path.map { URL(fileURLWithPath: $0).lastPathComponent } }
    let table: [(fd: Int32, name: String, position: Int64, access: Int32)] = [
        (3, "rw.dat", 4321, O_RDWR), (4, "append.log", 5, O_WRONLY), (5, "ghost.dat", 3000, O_RDWR),
        (6, "shared.dat", 1234, O_RDWR), (7, "shared.dat", 1234, O_RDWR), (8, "shared.dat", 99, O_RDONLY),
        (9, "null", 0, O_WRONLY), (10, "zero", 0, O_RDONLY), (100, "high.dat", 2222, O_RDWR),
    ]
    for want in table {
        let f = file(want.fd)
        #expect(name(want.fd) == want.name && f?.position == want.position && (f?.flags ?? -1) & O_ACCMODE == want.access,
                "fd \(want.fd): \(f.map { "\($0.path ?? "?") pos \($0.position) flags 0\(String($0.flags, radix: 8))" } ?? "missing"), want \(want.name) pos \(want.position) access \(want.access)")
    }
    #expect(d.fd(6)?.file == d.fd(7)?.file && d.fd(6) != nil, "fds 6 and 7 (dup) should name the same file id: \(d.fd(6)?.file ?? -1), \(d.fd(7)?.file ?? -1)")
    #expect(d.fd(8)?.file != d.fd(6)?.file, "fd 8 is a separate open of shared.dat and must have its own file id")
    #expect(Set([3, 4, 5, 6, 8, 9, 10, 100].compactMap { d.fd($0)?.file }).count == 8, "fds other than the dup pair share file ids")
    #expect(d.descriptors.filter(\.closeOnExec).map(\.fd) == [3], "only fd 3 is close-on-exec: \(d.descriptors.filter(\.closeOnExec).map(\.fd))")
    #expect((file(4)?.flags ?? 0) & O_APPEND != 0, "append.log has no O_APPEND: 0\(String(file(4)?.flags ?? 0, radix: 8))")
    #expect((file(10)?.flags ?? 0) & O_NONBLOCK != 0, "/dev/zero has no O_NONBLOCK")
    #expect(file(9)?.kind == "characterDevice" && file(9)?.path == "/dev/null", "fd 9: \(file(9).map { "\($0.kind) \($0.path ?? "")" } ?? "missing")")
    #expect(file(10)?.kind == "characterDevice" && file(10)?.path == "/dev/zero", "fd 10 is not /dev/zero")
    let sizes: [Int32: Int64] = [3: 10000, 5: 8192, 6: 5000, 100: 6000]
    for (fd, size) in sizes {
        #expect(file(fd)?.kind == "regular" && file(fd)?.regular?.size == size, "fd \(fd): size \(file(fd)?.regular?.size ?? -1), want \(size)")
    }
    let ghost = try #require(file(5), "no fd 5")
    #expect(ghost.regular?.unlinked == true, "ghost.dat (fd 5) should be recorded as unlinked")
    #expect([3, 4, 6, 8, 100].allSatisfy { file($0)?.regular?.unlinked == false }, "only ghost.dat is unlinked")
    // Its contents are in the image: the fixture's pattern, 8192 bytes.
    let data = FileManager.default.contents(atPath: "\(images)/filedata-\(ghost.id).img")
    let want = (0..<8192).map { i in UInt8(truncatingIfNeeded: i * 131 + 2 * 7 + (i >> 8)) }
    #expect(data.map(Array.init) == want, "filedata-\(ghost.id).img holds \(data?.count ?? -1) bytes, not ghost.dat's 8192-byte pattern")
}

private func checkPipes(_ image: ShownImage, _ task: ShownImage.Task) throws {
    let d = task.descriptors
    #expect(Set(d.descriptors.map(\.fd)) == [0, 1, 2, 3, 4, 5, 6, 7, 8], "fds \(d.descriptors.map(\.fd).sorted())")
    func file(_ fd: Int32) -> ShownImage.FileTable.File? { d.fd(fd).flatMap { image.files.file($0.file) } }
    // pipe(a) = fds 3,4; pipe(b) = 5,6; pipe(c) = 7,8 (the fixture closes every fd above 2 first).
    let pipes: [(name: String, read: Int32, write: Int32, bytes: Int, salt: Int, capacity: Int?, nonblock: Bool)] = [
        ("A", 3, 4, 3000, 1, nil, false), ("B", 5, 6, 1000, 2, nil, true), ("C", 7, 8, 100000, 3, 128 * 1024, false),
    ]
    var inodes: Set<UInt64> = []
    for p in pipes {
        guard let r = file(p.read)?.pipe, let w = file(p.write)?.pipe else {
            Issue.record("pipe \(p.name): fds \(p.read)/\(p.write) are not both pipe ends")
            continue
        }
        inodes.insert(r.inode)
        #expect(r.isReadEnd && !w.isReadEnd, "pipe \(p.name): fd \(p.read) read end \(r.isReadEnd), fd \(p.write) read end \(w.isReadEnd)")
        #expect(r.inode == w.inode, "pipe \(p.name): ends have inodes \(r.inode) and \(w.inode)")
        if let capacity = p.capacity { #expect(r.capacity == capacity, "pipe \(p.name): capacity \(r.capacity), want \(capacity)") }
        #expect(r.capacity >= p.bytes, "pipe \(p.name): capacity \(r.capacity) below its \(p.bytes) buffered bytes")
        #expect(((file(p.read)?.flags ?? 0) & O_NONBLOCK != 0) == p.nonblock, "pipe \(p.name): read end O_NONBLOCK should be \(p.nonblock)")
        let buffered = (r.buffered ?? Data()) + (w.buffered ?? Data())
        let want = (0..<p.bytes).map { i in UInt8(truncatingIfNeeded: i * 37 + p.salt * 101 + (i >> 9)) }
        #expect(buffered.count == p.bytes, "pipe \(p.name): \(buffered.count) bytes buffered, want \(p.bytes)")
        #expect(Array(buffered) == want || buffered.count != p.bytes, "pipe \(p.name): the buffered bytes are not the fixture's pattern")
    }
    #expect(inodes.count == 3, "the three pipes have inodes \(inodes)")
    let all = image.files.files.compactMap { $0.pipe?.buffered?.count }.filter { $0 > 0 }.sorted()
    #expect(all == [1000, 3000, 100000], "buffered byte counts in the file table: \(all), want 1000, 3000, 100000")
}

private func checkSignals(_ image: ShownImage, _ task: ShownImage.Task, _ fixture: Fixture, scratch: Scratch) throws {
    let pid = fixture.pid
    let symbols = try functionOffsets(try FixtureBuilder.binary(for: "signals"), scratch: scratch)
    let base = try #require(task.memory.mappings.first { $0.path == task.core.exe && $0.fileOffset == 0 }?.start,
                            "no mapping of \(task.core.exe) at offset 0 in the image")
    func address(_ function: String) -> UInt64 { base + (symbols[function] ?? 0) }
    let rt3 = sigRTMin + 3
    let s = task.signals
    #expect(s.action(SIGUSR2)?.handler == 1, "SIGUSR2 handler \(s.action(SIGUSR2).map { "\($0.handler)" } ?? "missing"), want 1 (ignored)")
    let wants: [(Int32, String, UInt64, UInt64)] = [
        (SIGTERM, "on_term", 0, sigset(SIGALRM)), (SIGUSR1, "on_usr1", saSigInfo | saRestart, sigset(SIGINT, SIGQUIT)),
        (rt3, "on_rt", saSigInfo | saRestart, 0), (SIGHUP, "on_hup", saNoDefer, sigset(SIGUSR2, SIGWINCH)),
        (SIGINT, "on_int", saOnStack | saSigInfo, sigset(SIGPIPE)), (SIGWINCH, "on_winch", saResetHand | saRestart, 0),
        (SIGALRM, "on_alarm", saRestart, 0),
    ]
    for (signal, function, flags, mask) in wants {
        let a = s.action(signal)
        #expect(a?.handler == address(function) && (a?.flags ?? 0) & ~saRestorer == flags && a?.mask == mask,
                "signal \(signal): \(a.map { "handler 0x\(String($0.handler, radix: 16)) flags 0x\(String($0.flags, radix: 16)) mask 0x\(String($0.mask, radix: 16))" } ?? "missing"), want \(function) at 0x\(String(address(function), radix: 16)) flags 0x\(String(flags, radix: 16)) mask 0x\(String(mask, radix: 16))")
    }
    let installed = Set(wants.map(\.0) + [SIGUSR2])
    // 32 and 33 are glibc's own; posix_spawn sets them to SIG_IGN in the child, the fixture leaves them.
    let others = s.actions.filter { !installed.contains($0.signal) && !(32...33).contains($0.signal) && $0.handler != 0 }
    #expect(others.isEmpty, "other signals should be at SIG_DFL: \(others.map(\.signal))")
    let real = s.timers.first { $0.which == 0 }
    // Frozen while its SIGALRM was pending, the timer stands at 0: the kernel re-arms it only when that signal is taken.
    let alarmPending = s.pending.contains { $0.signal == SIGALRM }
    #expect(real?.intervalMicroseconds == 50000 && ((alarmPending ? 0 : 1)...50000).contains(real?.valueMicroseconds ?? -1),
            "ITIMER_REAL \(real.map { "interval \($0.intervalMicroseconds) value \($0.valueMicroseconds)" } ?? "missing"), want interval 50000 µs (SIGALRM pending: \(alarmPending))")

    try #require(task.threads.count == 1)
    let thread = task.threads[0]
    #expect(thread.altstackEnabled && thread.altstackSize == 65536, "altstack flags \(thread.altstackFlags) size \(thread.altstackSize)")
    let alt = task.memory.mapping(containing: thread.altstackAddress)
    #expect(alt.map { $0.kind == "anonymous" && thread.altstackAddress + 65536 <= $0.end } == true, "the altstack is not in an anonymous mapping")
    let mustBlock = sigset(SIGUSR1, SIGXFSZ, rt3)
    #expect(thread.blockedSignals & mustBlock == mustBlock && thread.blockedSignals & sigset(SIGALRM, SIGHUP) == 0,
            "blocked mask 0x\(String(thread.blockedSignals, radix: 16))")

    // One SIGUSR1 from raise() on the thread, two SIGRTMIN+3 from sigqueue() for the process.
    func int32(_ data: Data, _ offset: Int) -> Int32 {
        data.count >= offset + 4 ? data.subdata(in: offset..<offset + 4).withUnsafeBytes { $0.loadUnaligned(as: Int32.self) } : 0
    }
    #expect(thread.pending.map(\.signal) == [SIGUSR1] && thread.pending.allSatisfy { !$0.shared }, "thread pending \(thread.pending.map(\.signal))")
    if let usr1 = thread.pending.first {
        #expect(usr1.siginfo.count == 128 && int32(usr1.siginfo, 0) == SIGUSR1 && int32(usr1.siginfo, 8) == -6 && int32(usr1.siginfo, 16) == pid,
                "SIGUSR1 siginfo: signo \(int32(usr1.siginfo, 0)) code \(int32(usr1.siginfo, 8)) pid \(int32(usr1.siginfo, 16)), want \(SIGUSR1), SI_TKILL, \(pid)")
    }
    // The 50 ms interval timer may fire while the process is frozen: a SIGALRM waiting then is right, and not checked here.
    let queued = s.pending.filter { $0.signal != SIGALRM }
    #expect(queued.map(\.signal) == [rt3, rt3] && queued.allSatisfy(\.shared), "process pending \(s.pending.map(\.signal)), want SIGRTMIN+3 twice")
    let values = queued.map { int32($0.siginfo, 24) }
    #expect(values == [0x5eed1234, 0x0badcafe], "sigqueue values \(values.map { String(UInt32(bitPattern: $0), radix: 16) }), want 5eed1234, badcafe in order")
    #expect(queued.allSatisfy { int32($0.siginfo, 8) == -1 && int32($0.siginfo, 16) == pid }, "SIGRTMIN+3 siginfo should say SI_QUEUE from pid \(pid)")
}

private func checkTree(_ image: ShownImage) throws {
    #expect(image.inventory.processes.count == 9, "inventory.processes has \(image.inventory.processes.count) entries, want 9")
    #expect(image.inventory.processes.first?.pid == image.inventory.rootPid, "the root is not listed first")
    #expect(image.inventory.processes.first?.ppid == getpid(), "the root's parent is \(image.inventory.processes.first?.ppid ?? -1), want the test runner")
    // Every child holds a pipe from its parent (16+3i unread bytes) and every parent one from each child (5+2i), i = 1...8.
    var ends: [UInt64: (read: Set<Int32>, write: Set<Int32>)] = [:]
    for task in image.tasks {
        for d in task.descriptors.descriptors {
            guard let pipe = image.files.file(d.file)?.pipe else { continue }
            var entry = ends[pipe.inode] ?? ([], [])
            if pipe.isReadEnd { entry.read.insert(task.core.pid) } else { entry.write.insert(task.core.pid) }
            ends[pipe.inode] = entry
        }
    }
    #expect(ends.count == 16, "\(ends.count) pipes in the tree, want 16 (two per child)")
    let parents = Dictionary(uniqueKeysWithValues: image.inventory.processes.map { ($0.pid, $0.ppid) })
    for (inode, e) in ends {
        let ok = e.read.count == 1 && e.write.count == 1
            && (parents[e.read.first!] == e.write.first! || parents[e.write.first!] == e.read.first!)
        #expect(ok, "pipe \(inode): read end in \(e.read.sorted()), write end in \(e.write.sorted()): want one each, parent and child")
    }
    let buffered = image.files.files.compactMap { $0.pipe?.buffered?.count }.filter { $0 > 0 }.sorted()
    let want = ((1...8).map { 16 + 3 * $0 } + (1...8).map { 5 + 2 * $0 }).sorted()
    #expect(buffered == want, "buffered byte counts \(buffered), want \(want)")
}

private func checkThreads(_ task: ShownImage.Task, _ members: TreeMembers) throws {
    let tids = (members.fixture.tagged("TIDS") ?? []).compactMap { pid_t($0) }
    #expect(task.threads.count == 65, "\(task.threads.count) thread records, want 65")
    #expect(task.threads.map(\.tid).sorted() == tids.sorted(), "thread records for other tids than the TIDS line")
    let byTid = Dictionary(task.threads.map { ($0.tid, $0) }, uniquingKeysWith: { a, _ in a })
    var problems: [String] = []
    for (index, tid) in tids.enumerated() {
        guard let t = byTid[tid] else { continue }
        let name = index == 0 ? "threads" : String(format: "thr-%02d", index)
        if t.name != name { problems.append("thread \(index): name \(t.name), want \(name)") }
        let alt: UInt64 = index == 1 ? 65536 : index == 2 ? 131072 : 0
        if (t.altstackEnabled ? t.altstackSize : 0) != alt { problems.append("thread \(index): altstack \(t.altstackEnabled ? "\(t.altstackSize)" : "off"), want \(alt)") }
        let blocked = index == 5 ? sigset(SIGTERM, SIGUSR1, SIGUSR2) : sigset(SIGTERM)
        if index != 0 && t.blockedSignals != blocked { problems.append("thread \(index): blocked 0x\(String(t.blockedSignals, radix: 16))") }
    }
    #expect(problems.isEmpty, "\(problems.prefix(20).joined(separator: "\n"))")
}

/// The kernel objects of the issue-4 fixtures, from the raw JSON (field names as Docs/IMAGE-FORMAT.md gives them).
private func checkKernelObjects(_ name: String, json: String, pid: pid_t) throws {
    let root = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
    let files = ((root["files"] as? [String: Any])?["files"] as? [[String: Any]]) ?? []
    let tasks = (root["tasks"] as? [[String: Any]]) ?? []
    let task = try #require(tasks.first { (($0["core"] as? [String: Any])?["pid"] as? Int) == Int(pid) }, "no task \(pid)")
    let descriptors = ((task["descriptors"] as? [String: Any])?["descriptors"] as? [[String: Any]]) ?? []
    let usedIDs = Set(descriptors.compactMap { $0["file"] as? Int })
    let used = files.filter { usedIDs.contains(($0["id"] as? Int) ?? -1) }
    func kinds(_ kind: String) -> [[String: Any]] { used.filter { ($0["kind"] as? String) == kind } }
    switch name {
    case "events":
        let counts = kinds("eventfd").compactMap { ($0["eventfd"] as? [String: Any])?["count"] as? UInt64 }.sorted()
        #expect(counts == [3, 5_000_000_000], "eventfd counts \(counts), want 3 and 5000000000")
        let semaphores = kinds("eventfd").filter { (($0["eventfd"] as? [String: Any])?["semaphore"] as? Bool) == true }
        #expect(semaphores.count == 1, "one semaphore eventfd, found \(semaphores.count)")
        let mask = (kinds("signalfd").first?["signalfd"] as? [String: Any])?["mask"] as? UInt64
        #expect(mask == 1 << (UInt64(SIGUSR1) - 1), "signalfd mask \(String(describing: mask)), want SIGUSR1's bit")
        let intervals = kinds("timerfd").compactMap { ($0["timerfd"] as? [String: Any])?["intervalNanoseconds"] as? Int }.sorted()
        #expect(intervals == [0, 20_000_000], "timerfd intervals \(intervals)")
        let targets = (kinds("epoll").first?["epoll"] as? [String: Any])?["targets"] as? [[String: Any]] ?? []
        #expect(Set(targets.compactMap { $0["data"] as? Int }) == [0x1111, 0x2222, 0x3333], "epoll targets \(targets)")
        let memfd = kinds("memfd").first?["memfd"] as? [String: Any]
        #expect(memfd?["name"] as? String == "cryo-events" && memfd?["size"] as? Int == 10000 && memfd?["seals"] as? Int == 6,
                "memfd \(String(describing: memfd))")
        let fifoBytes = kinds("fifo").compactMap { ($0["pipe"] as? [String: Any])?["buffered"] as? String }
            .compactMap { Data(base64Encoded: $0) }
        #expect(fifoBytes.map { String(decoding: $0, as: UTF8.self) } == ["fifo-bytes-still-here"], "FIFO bytes \(fifoBytes)")
    case "seccomp":
        let seccomp = (task["core"] as? [String: Any])?["seccomp"] as? [String: Any]
        #expect(seccomp?["noNewPrivileges"] as? Bool == true, "no_new_privs not recorded")
        #expect((seccomp?["filters"] as? [[Int]])?.count == 2, "want two filters: \(String(describing: seccomp))")
    case "locks":
        let locks = descriptors.flatMap { ($0["locks"] as? [[String: Any]]) ?? [] }
        let summary = Set(locks.map { lock in
            "\(lock["kind"] as? String ?? "?") \((lock["write"] as? Bool).map { $0 ? "true" : "false" } ?? "?") \(lock["start"] as? Int ?? -1) \((lock["end"] as? Int).map(String.init) ?? "EOF")"
        })
        #expect(summary == ["flock true 0 EOF", "posix true 10 29", "ofd false 0 EOF", "lease true 0 EOF", "lease false 0 EOF"],
                "locks \(summary)")
    case "ptimers":
        let timers = ((task["signals"] as? [String: Any])?["posixTimers"] as? [[String: Any]]) ?? []
        #expect(Set(timers.compactMap { $0["id"] as? Int }) == [0, 1, 2], "timer ids \(timers)")
        let periodic = timers.first { ($0["id"] as? Int) == 0 }
        #expect(periodic?["intervalNanoseconds"] as? Int == 30_000_000 && periodic?["value"] as? Int == 7
                && periodic?["signal"] as? Int == Int(SIGUSR1), "timer 0 \(String(describing: periodic))")
        #expect(timers.contains { ($0["notify"] as? String) == "thread" }, "no SIGEV_THREAD_ID timer in \(timers)")
    case "unix":
        let sockets = kinds("unixSocket")
        #expect(sockets.count >= 8, "only \(sockets.count) unix sockets recorded")
        let types = Set(sockets.compactMap { ($0["unixSocket"] as? [String: Any])?["type"] as? String })
        #expect(types == ["stream", "dgram", "seqpacket"], "socket types \(types)")
        #expect(sockets.contains { (($0["unixSocket"] as? [String: Any])?["state"] as? String) == "listening" }, "no listener")
    default:
        Issue.record("no checks for \(name)")
    }
}

/// The one-letter state in /proc/PID/status, nil when the process is gone.
private func procState(_ pid: pid_t) -> Character? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix("State:") {
        return line.dropFirst(6).trimmingCharacters(in: .whitespaces).first
    }
    return nil
}
