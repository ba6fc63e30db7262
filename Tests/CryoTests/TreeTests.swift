// Process trees and threads: `cryo dump` takes a fixture's root together with
// all its descendants and threads; `cryo restore` must bring every one of them
// back under the same pid/tid, with the same parent, process group and
// session, zombies as zombies. Then the fixture checks itself: PASS.
//
// The fixtures print the pids of their tree ("PIDS root ..."), and where they
// have them, their zombies ("ZOMBIES ..."), the pgid of a group whose leader
// is gone ("DEADPGID L") and their thread ids ("TIDS main ...").

import Foundation
import Glibc
import Testing

/// The tree fixtures, each a root in its own session with descendants or
/// threads; CRYO_TREE_FIXTURES=a,b runs only those (they are slow to fail).
let treeFixtures = selectedTreeFixtures(["tree", "zombie", "threads", "shared", "shmem", "user"])
let treeLeaveRunningFixtures = selectedTreeFixtures(["tree", "threads"])

private func selectedTreeFixtures(_ all: [String]) -> [String] {
    guard let only = ProcessInfo.processInfo.environment["CRYO_TREE_FIXTURES"], !only.isEmpty else { return all }
    let wanted = Set(only.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
    return all.filter { wanted.contains($0) }
}

extension EndToEnd {
    @Suite("process trees and threads")
    struct TreeTests {
        @Test("dump the whole tree, kill it, restore it in the foreground", arguments: treeFixtures)
        func foreground(_ name: String) throws {
            try treeRoundTrip(name)
        }

        @Test("dump --leave-running leaves the whole tree running", arguments: treeLeaveRunningFixtures)
        func leaveRunning(_ name: String) throws {
            try treeLeaveRunning(name)
        }
    }
}

// MARK: - The two flows

/// start → READY → dump (kills the tree) → every pid gone → restore in the
/// foreground (with `restoreArguments`) → every pid back with the same ids → SIGTERM → cryo exits 0, PASS.
func treeRoundTrip(_ name: String, restoreArguments: [String] = []) throws {
    let scratch = try Scratch("\(name)-tree")
    defer { scratch.remove() }
    let fixture = try Fixture(name, arguments: try treeArguments(name, scratch), in: scratch)
    let members = TreeMembers(fixture)
    defer { members.cleanUp() }
    try fixture.waitReady(timeout: 60)
    try members.load()
    let before = try members.snapshot()
    let root = fixture.pid
    let timeout = cryoTimeout(for: name)

    let images = scratch.file("img")
    let dump = try cryo(["dump", "-t", "\(root)", "-D", images], in: scratch, timeout: timeout, reaping: fixture)
    try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
    let original = fixture.reapOriginal(timeout: 20)
    try #require(original != nil, "root pid \(root) still runs after `cryo dump` without --leave-running (\(describeProcess(root)))")
    if case .signaled = original! {} else {
        Issue.record("the dumped root should have been killed, but ended with \(original!)\n\(fixture.report)")
    }
    let allGone = waitUntil(timeout: 20) { members.pids.allSatisfy { !pidExists($0) } }
    let left = members.pids.filter { pidExists($0) }
    let leftText = left.prefix(10).map(describeProcess).joined(separator: "; ")
    try #require(allGone, "\(left.count) of the \(members.pids.count) processes of the tree still exist after the dump: \(leftText)\n\(dump)")
    #expect(!fixture.lines.contains("PASS") && !fixture.lines.contains(where: { $0.hasPrefix("FAIL") }),
            "the fixture ran its checks before restore:\n\(fixture.report)")

    let restore = try CryoProcess(["restore", "-D", images] + restoreArguments, in: scratch)
    members.restore = restore   // cleanUp stops it, after killing what it restored
    let up = fixture.waitRestored(timeout: timeout) { restore.isRunning }
    if !up {
        members.killTree()   // while cryo still traces what it restored
        let result = restore.wait(timeout: 5)
        Issue.record("root pid \(root) did not come back running \(name) (\(describeProcess(root)))\n\(result)\n\(fixture.report)")
        return
    }

    // Every process (and thread) back, as it was.
    var problems: [String] = []
    let settled = waitUntil(timeout: 30, interval: 0.05) {
        problems = members.compare(with: before, rootParentMayDiffer: true)
        return problems.isEmpty
    }
    if !settled {
        let text = problems.prefix(40).joined(separator: "\n")
        Issue.record("after restore the tree differs from before the dump (\(problems.count) problems):\n\(text)")
    }

    kill(root, SIGTERM)
    let result = restore.wait(timeout: 120)
    #expect(result.status == .exited(0), "cryo restore should exit with the root's status 0\n\(result)\n\(fixture.report)")
    expectPass(fixture, "\(result)")
    let finished = waitUntil(timeout: 10) { members.pids.allSatisfy { !pidExists($0) } }
    let leftover = members.pids.filter { pidExists($0) }.prefix(10).map(describeProcess).joined(separator: "; ")
    #expect(finished, "processes of the tree are left after the root exited: \(leftover)")
}

/// start → READY → dump --leave-running → every process and thread still
/// there, unchanged and running free → SIGTERM → PASS.
private func treeLeaveRunning(_ name: String) throws {
    let scratch = try Scratch("\(name)-tree-leave")
    defer { scratch.remove() }
    let fixture = try Fixture(name, arguments: try treeArguments(name, scratch), in: scratch)
    let members = TreeMembers(fixture)
    defer { members.cleanUp() }
    try fixture.waitReady(timeout: 60)
    try members.load()
    let before = try members.snapshot()

    let images = scratch.file("img")
    let dump = try cryo(["dump", "--leave-running", "-t", "\(fixture.pid)", "-D", images], in: scratch,
                        timeout: cryoTimeout(for: name), reaping: fixture)
    try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
    if let ended = fixture.pollOriginal() {
        Issue.record("the root ended during `dump --leave-running`: \(ended)\n\(fixture.report)")
        return
    }
    #expect(FileManager.default.fileExists(atPath: images), "no image folder \(images)")

    var problems: [String] = []
    let unchanged = waitUntil(timeout: 5, interval: 0.05) {
        problems = members.compare(with: before, rootParentMayDiffer: false)
        return problems.isEmpty
    }
    if !unchanged {
        let text = problems.prefix(40).joined(separator: "\n")
        Issue.record("after `dump --leave-running` the tree differs from before (\(problems.count) problems):\n\(text)")
    }

    fixture.signal(SIGTERM)
    let exit = fixture.reapOriginal(timeout: 120)
    #expect(exit == .exited(0), "\(name) ended with \(exit.map(\.description) ?? "nothing: still running after 120 s") (\(describeProcess(fixture.pid)))\n\(fixture.report)")
    expectPass(fixture, "\(dump)")
}

private func treeArguments(_ name: String, _ scratch: Scratch) throws -> [String] {
    switch name {
    case "shared": return [try scratch.folder("shared-work")]
    default: return []
    }
}

// MARK: - The members of a tree

/// Name and ids of one process from /proc/PID/stat.
struct ProcIDs: Equatable {
    let comm: String
    let state: Character
    let ppid: pid_t
    let pgid: pid_t
    let sid: pid_t

    init?(pid: pid_t) {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/stat") else { return nil }
        let text = String(decoding: data, as: UTF8.self)
        guard let open = text.firstIndex(of: "("), let paren = text.lastIndex(of: ")"), open < paren else { return nil }
        comm = String(text[text.index(after: open)..<paren])
        let fields = text[text.index(after: paren)...].split(separator: " ")
        guard fields.count > 4, let state = fields[0].first, let ppid = pid_t(fields[1]),
              let pgid = pid_t(fields[2]), let sid = pid_t(fields[3]) else { return nil }
        self.state = state
        self.ppid = ppid
        self.pgid = pgid
        self.sid = sid
    }

    var isZombie: Bool { state == "Z" }

    var summary: String { "comm \(comm) state \(state) ppid \(ppid) pgid \(pgid) sid \(sid)" }
}

/// State and tracer of one thread, from /proc/PID/task/TID/status.
private func taskStatus(_ pid: pid_t, _ tid: pid_t) -> (state: Character, tracer: Int, cpus: String)? {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/task/\(tid)/status") else { return nil }
    var state: Character?
    var tracer = -1
    var cpus = ""
    for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
        if line.hasPrefix("State:") { state = line.dropFirst(6).trimmingCharacters(in: .whitespaces).first }
        if line.hasPrefix("TracerPid:") { tracer = Int(line.dropFirst(10).trimmingCharacters(in: .whitespaces)) ?? -1 }
        if line.hasPrefix("Cpus_allowed_list:") { cpus = line.dropFirst(18).trimmingCharacters(in: .whitespaces) }
    }
    return state.map { ($0, tracer, cpus) }
}

/// The CPUs this test may use, which cryo and the fixtures it starts inherit.
private let ownCPUs = taskStatus(getpid(), getpid())?.cpus ?? "?"

/// The thread ids of a process (empty when it is gone).
func threadIDs(_ pid: pid_t) -> Set<pid_t> {
    Set(((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []).compactMap { pid_t($0) })
}

/// The processes (and the root's threads) a tree fixture reported.
final class TreeMembers {
    let fixture: Fixture
    private(set) var pids: [pid_t] = []
    private(set) var zombies: Set<pid_t> = []
    private(set) var deadGroup: pid_t?
    private(set) var rootThreads: Set<pid_t> = []
    /// A `cryo restore` of this tree, stopped by `cleanUp`.
    var restore: CryoProcess?

    init(_ fixture: Fixture) { self.fixture = fixture }

    /// Reads the PIDS/ZOMBIES/DEADPGID/TIDS lines (after READY).
    func load() throws {
        let root = fixture.pid
        if let words = fixture.tagged("PIDS") {
            pids = words.compactMap { pid_t($0) }
            try #require(pids.count == words.count && pids.first == root,
                         "bad PIDS line (root \(root)): \(words.prefix(5))...\n\(fixture.report)")
            try #require(Set(pids).count == pids.count, "PIDS lists a pid twice\n\(fixture.report)")
        } else {
            pids = [root]
        }
        zombies = Set((fixture.tagged("ZOMBIES") ?? []).compactMap { pid_t($0) })
        deadGroup = fixture.tagged("DEADPGID")?.first.flatMap { pid_t($0) }
        rootThreads = Set((fixture.tagged("TIDS") ?? []).compactMap { pid_t($0) })
    }

    /// The ids of every member now; each must exist, zombies must be zombies.
    func snapshot() throws -> [pid_t: ProcIDs] {
        var result: [pid_t: ProcIDs] = [:]
        for pid in pids {
            let ids = try #require(ProcIDs(pid: pid), "pid \(pid) of the tree does not exist at READY\n\(fixture.report)")
            try #require(ids.isZombie == zombies.contains(pid),
                         "pid \(pid) is in state \(ids.state) at READY (zombie expected: \(zombies.contains(pid)))")
            result[pid] = ids
        }
        if !rootThreads.isEmpty {
            let now = threadIDs(fixture.pid)
            try #require(now == rootThreads, "the root's threads \(now.sorted()) differ from its TIDS line")
        }
        if let dead = deadGroup {
            try #require(!pidExists(dead), "the dead group leader \(dead) exists at READY")
            try #require(result.values.contains { $0.pgid == dead }, "no process is in the leaderless group \(dead) at READY")
        }
        return result
    }

    /// What differs from `before`: missing pids, other ids or states, traced or
    /// stopped threads, other thread ids, a dead group leader that exists.
    func compare(with before: [pid_t: ProcIDs], rootParentMayDiffer: Bool) -> [String] {
        var problems: [String] = []
        for pid in pids {
            guard let was = before[pid] else { continue }
            guard let now = ProcIDs(pid: pid) else {
                problems.append("pid \(pid) is missing (was \(was.summary))")
                continue
            }
            var diffs: [String] = []
            if was.isZombie {
                if !now.isZombie { diffs.append("state \(now.state), want Z (zombie)") }
            } else if !"RSD".contains(now.state) {
                diffs.append("state \(now.state), want running or sleeping")
            }
            if now.ppid != was.ppid && !(pid == fixture.pid && rootParentMayDiffer) {
                diffs.append("ppid \(now.ppid), was \(was.ppid)")
            }
            if now.comm != was.comm { diffs.append("comm \"\(now.comm)\", was \"\(was.comm)\"") }
            if now.pgid != was.pgid { diffs.append("pgid \(now.pgid), was \(was.pgid)") }
            if now.sid != was.sid { diffs.append("sid \(now.sid), was \(was.sid)") }
            if !now.isZombie {
                for tid in threadIDs(pid).sorted() {
                    guard let task = taskStatus(pid, tid) else { continue }
                    if task.tracer != 0 { diffs.append("thread \(tid) traced by \(task.tracer)") }
                    // A restore pins its lanes' tasks to CPUs (RestoreLanes.pin): none may stay pinned.
                    if task.cpus != ownCPUs { diffs.append("thread \(tid) may run on CPUs \(task.cpus), not \(ownCPUs) as it inherited") }
                    if !"RSD".contains(task.state) { diffs.append("thread \(tid) in state \(task.state)") }
                }
            }
            if !diffs.isEmpty { problems.append("pid \(pid): " + diffs.joined(separator: ", ")) }
        }
        if !rootThreads.isEmpty {
            let now = threadIDs(fixture.pid)
            if now != rootThreads {
                let missing = rootThreads.subtracting(now).sorted(), extra = now.subtracting(rootThreads).sorted()
                problems.append("root \(fixture.pid): threads missing \(missing), unexpected \(extra)")
            }
        }
        if let dead = deadGroup, pidExists(dead) {
            problems.append("the dead group leader \(dead) exists: \(describeProcess(dead))")
        }
        return problems
    }

    /// Kills whatever of the tree still runs under its pids: processes with
    /// the fixture's name, and half-restored ones that our `cryo restore`
    /// still traces; then stops that cryo and cleans up the root.
    func cleanUp() {
        killTree()
        restore?.stop()
        fixture.cleanUp()
    }

    /// Kills the members other than the root that run the fixture, and any
    /// member (the root too) that our running `cryo restore` traces.
    func killTree() {
        let comm = String(fixture.name.prefix(15))
        let tracer = restore.flatMap { $0.isRunning ? Int($0.pid) : nil }
        for pid in pids.reversed() {
            guard let status = ProcStatus(pid: pid), status.state != "Z" else { continue }
            if (status.name == comm && pid != fixture.pid) || (tracer != nil && status.tracerPid == tracer) {
                kill(pid, SIGKILL)
            }
        }
    }
}
