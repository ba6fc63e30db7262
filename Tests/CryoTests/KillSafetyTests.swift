// Killing cryo in the middle of a dump must not harm the process being dumped.
// ptrace lets a task go when its tracer dies, from whatever registers it has
// then; cryo's way home (Sources/CryoInjector/ReturnPath.swift) must bring it
// back untouched from every phase. CRYO_KILL_AT=<phase> makes cryo SIGKILL
// itself at that phase; afterwards every process and thread must run free,
// with the same memory map as before, and pass its own check.

import Foundation
import Glibc
import Testing

/// Every phase cryo has a kill point for during a dump, in order.
let dumpKillPhases = [
    "seized", "entered mmap", "mapped", "loaded",
    "running PING", "stopped after PING", "running DUMP_PROCESS", "stopped after DUMP_PROCESS",
    "running DUMP_THREAD", "stopped after DUMP_THREAD", "running DUMP_TIMERS", "stopped after DUMP_TIMERS",
    "before cure", "entered munmap", "unmapped", "pages", "written",
    "running PAGE_SOCKET", "stopped after PAGE_SOCKET", "running WRITE_PAGES", "stopped after WRITE_PAGES",
    "running PAGE_PIPE", "stopped after PAGE_PIPE", "running DUMP_PAGES", "stopped after DUMP_PAGES",
]
/// Only processes with more than InTaskPageCopy.threshold of memory copy it through the parasite:
/// written by the task itself, or (CRYO_PAGE_COPY=pipe, or where the task cannot write) through a pipe.
private let writePhases = ["running PAGE_SOCKET", "stopped after PAGE_SOCKET", "running WRITE_PAGES", "stopped after WRITE_PAGES"]
private let pipePhases = ["running PAGE_PIPE", "stopped after PAGE_PIPE", "running DUMP_PAGES", "stopped after DUMP_PAGES"]
private let threadPhases = ["running DUMP_THREAD", "stopped after DUMP_THREAD"]
private let timerPhases = ["running DUMP_TIMERS", "stopped after DUMP_TIMERS"]

/// Fixtures (with small arguments) and the phases each is killed at; each must
/// reach all of them but `mayMiss`, so a renamed kill point cannot go untested.
let killSafetyCases: [(fixture: String, arguments: [String], phases: [String], mayMiss: [String], environment: [String: String])] = [
    ("counter", [], dumpKillPhases, threadPhases + timerPhases + writePhases + pipePhases, [:]),
    ("threads", ["6"], dumpKillPhases, timerPhases + writePhases + pipePhases, [:]),
    ("vector", [], ["running DUMP_PROCESS", "stopped after DUMP_PROCESS", "entered munmap", "unmapped"], [], [:]),
    ("signals", [], ["running DUMP_PROCESS", "stopped after DUMP_PROCESS", "before cure", "entered munmap", "unmapped"], [], [:]),
    ("ptimers", [], timerPhases + ["before cure"], [], [:]),
    ("tree", ["13"], ["seized", "entered mmap", "running DUMP_PROCESS", "stopped after DUMP_PROCESS", "unmapped", "pages", "written"], [], [:]),
    ("bigmem", ["64"], ["pages", "written"] + writePhases, [], [:]),
    ("bigmem", ["64"], ["pages"] + pipePhases, [], ["CRYO_PAGE_COPY": "pipe"]),
    // 23 MiB with 750 PROT_NONE mappings: the task also holds cryo's /proc/PID/mem while it writes.
    ("shapes", ["maps", "3000"], writePhases, [], [:]),
]

extension EndToEnd {
    @Suite("cryo killed during a dump")
    struct KillSafetyTests {
        @Test("the process survives a SIGKILL of cryo at every phase", arguments: killSafetyCases.indices)
        func killedAtEveryPhase(_ index: Int) throws {
            let entry = killSafetyCases[index]
            let name = entry.fixture + entry.environment.map { " \($0.key)=\($0.value)" }.sorted().joined()
            var survived = 0, reached = 0
            var missed: [String] = []
            for phase in entry.phases {
                switch try killDuring(entry.fixture, arguments: entry.arguments, at: phase, environment: entry.environment) {
                case .notReached: missed.append(phase)
                case .survived: survived += 1; reached += 1
                case .harmed: reached += 1
                }
            }
            print("kill safety: \(name): \(survived) of \(reached) kills survived")
            #expect(Set(missed).isSubset(of: entry.mayMiss), "\(name): cryo never reached \(missed.filter { !entry.mayMiss.contains($0) })")
        }
    }
}

private enum KillOutcome { case notReached, survived, harmed }

/// One fixture, one phase: dump with CRYO_KILL_AT, then check the whole tree.
private func killDuring(_ name: String, arguments: [String], at phase: String, environment: [String: String]) throws -> KillOutcome {
    let scratch = try Scratch("\(name)-kill")
    defer { scratch.remove() }
    let args = arguments.isEmpty ? try Fixture.defaultArguments(for: name, in: scratch) : arguments
    let fixture = try Fixture(name, arguments: args, in: scratch)
    let members = TreeMembers(fixture)
    defer { members.cleanUp() }
    try fixture.waitReady(timeout: 60)
    try members.load()
    let before = try members.snapshot()
    let mapsBefore = Dictionary(uniqueKeysWithValues: members.pids.map { ($0, memoryMap($0)) })
    let descriptorsBefore = Dictionary(uniqueKeysWithValues: members.pids.map { ($0, descriptorTable($0)) })
    let threadsBefore = Dictionary(uniqueKeysWithValues: members.pids.map { ($0, threadIDs($0)) })

    let dump = try cryo(["dump", "--leave-running", "-t", "\(fixture.pid)", "-D", scratch.file("img")], in: scratch,
                        timeout: cryoTimeout(for: name), reaping: fixture,
                        environment: environment.merging(["CRYO_KILL_AT": phase]) { $1 })
    if dump.succeeded { return .notReached }
    guard dump.status == .signaled(SIGKILL) else {
        Issue.record("\(name), kill at \"\(phase)\": cryo did not die by SIGKILL\n\(dump)")
        return .harmed
    }
    var problems: [String] = []
    // The way home takes a few instructions after cryo is gone.
    let settled = waitUntil(timeout: 5, interval: 0.05) {
        problems = members.compare(with: before, rootParentMayDiffer: false)
        for pid in members.pids where !(before[pid]?.isZombie ?? true) {
            let now = memoryMap(pid)
            let was = mapsBefore[pid] ?? []
            if now != was && !(phase == "entered mmap" && onlyAnEmptyMappingMore(now, than: was)) {
                let added = now.filter { !was.contains($0) }, lost = was.filter { !now.contains($0) }
                problems.append("pid \(pid): memory map changed: added \(added), lost \(lost)")
            }
            // A thread the parasite started to write pages must be gone too.
            if threadIDs(pid) != threadsBefore[pid] ?? [] {
                problems.append("pid \(pid): threads now \(threadIDs(pid).sorted()), were \((threadsBefore[pid] ?? []).sorted())")
            }
            let descriptors = descriptorTable(pid)
            if descriptors != descriptorsBefore[pid] ?? [] {
                problems.append("pid \(pid): descriptors changed: now \(descriptors), was \(descriptorsBefore[pid] ?? [])")
            }
        }
        return problems.isEmpty
    }
    if !settled {
        Issue.record("\(name), kill at \"\(phase)\": \(problems.prefix(20).joined(separator: "\n"))\n\(fixture.report)")
    }
    fixture.signal(SIGTERM)
    let exit = fixture.reapOriginal(timeout: 60)
    let passed = exit == .exited(0) && fixture.lastLine == "PASS"
    #expect(passed, "\(name), kill at \"\(phase)\": ended with \(exit.map(\.description) ?? "nothing") and last line \(fixture.lastLine ?? "none")\n\(fixture.report)")
    return settled && passed ? .survived : .harmed
}

/// "fd -> what it is" for every descriptor of the process.
private func descriptorTable(_ pid: pid_t) -> [String] {
    let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
    return fds.compactMap(Int.init).sorted().map { fd in
        "\(fd) -> \((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)")) ?? "?")"
    }
}

private func memoryMap(_ pid: pid_t) -> [String] {
    readText("/proc/\(pid)/maps").split(separator: "\n").map(String.init)
}

/// A kill while the injected mmap itself runs leaves that one mapping: empty
/// and anonymous, and nothing in the task points into it.
private func onlyAnEmptyMappingMore(_ now: [String], than was: [String]) -> Bool {
    let added = now.filter { !was.contains($0) }
    guard added.count == 1, was.allSatisfy({ now.contains($0) }) else { return false }
    let fields = added[0].split(separator: " ", omittingEmptySubsequences: true)
    let range = fields.first?.split(separator: "-").compactMap { UInt64($0, radix: 16) } ?? []
    return fields.count == 5 && fields[4] == "0" && range.count == 2 && range[1] - range[0] <= 1 << 20
}

// MARK: - Kills during a restore

/// Every phase cryo has a kill point for during a restore, in order. Most are
/// passed once per process; `#n` is the n-th time (in a later process).
let restoreKillPhases = [
    "injecting mmap", "mapped", "loaded", "before PING", "after PING", "before RESTORE_MEMORY", "after RESTORE_MEMORY",
    "root-created", "injecting setsid", "injecting setpgid", "injecting clone3", "stand-ins-created", "tree-created",
    "before CONNECT", "after CONNECT", "before RECV_FDS", "after RECV_FDS", "before RESTORE_MEMORY#2", "after RESTORE_MEMORY#2",
    "before LAZY_UFFD", "after LAZY_UFFD", "memory-restored",
    "before RESTORE_STATE", "after RESTORE_STATE", "before RESTORE_THREAD", "after RESTORE_THREAD",
    "before RESTORE_TIMERS", "after RESTORE_TIMERS", "before INSTALL_FDS", "after INSTALL_FDS",
    "before RESTORE_CREDS", "after RESTORE_CREDS", "before RESTORE_SECCOMP", "after RESTORE_SECCOMP",
    "injecting munmap", "before-release",
]
/// Phases only some images pass: children and groups, threads, private anonymous memory
/// (loaded through a userfaultfd), POSIX timers, seccomp filters.
private let treePhases = ["injecting setsid", "injecting setpgid"]
private let clonePhases = ["injecting clone3"]
private let lazyUffdPhases = ["before LAZY_UFFD", "after LAZY_UFFD"]
private let restoreTimerPhases = ["before RESTORE_TIMERS", "after RESTORE_TIMERS"]
private let seccompPhases = ["before RESTORE_SECCOMP", "after RESTORE_SECCOMP"]
/// Only threads other than a leader (a leader's own thread state rides in RESTORE_STATE).
private let restoreThreadPhases = ["before RESTORE_THREAD", "after RESTORE_THREAD"]

let restoreKillCases: [(fixture: String, arguments: [String], phases: [String], mayMiss: [String])] = [
    ("counter", [], restoreKillPhases, treePhases + clonePhases + restoreTimerPhases + seccompPhases + restoreThreadPhases),
    // Small processes' memory goes in through the parasite's reads, not a userfaultfd (bigmem's does).
    ("threads", ["6"], restoreKillPhases, treePhases + restoreTimerPhases + seccompPhases + lazyUffdPhases),
    ("vector", [], ["after RESTORE_MEMORY#2", "memory-restored", "after RESTORE_STATE", "after INSTALL_FDS", "injecting munmap", "before-release"], []),
    ("ptimers", [], restoreTimerPhases + ["before-release"], []),
    ("seccomp", [], seccompPhases + ["before-release"], []),
    // 13 processes restore in two lanes: "parked" is a subtree's top between them (RestoreLanes.swift).
    ("tree", ["13"], restoreKillPhases + ["injecting clone3#3", "after RECV_FDS#4", "memory-restored#5", "after INSTALL_FDS#6",
                                          "injecting munmap#7", "parked", "after RESTORE_STATE#9"],
     restoreTimerPhases + seccompPhases + lazyUffdPhases + restoreThreadPhases),
    ("bigmem", ["64"], ["before RESTORE_MEMORY#2", "after RESTORE_MEMORY#2", "after LAZY_UFFD", "memory-restored", "before-release"], []),
]

extension EndToEnd {
    @Suite("cryo killed during a restore")
    struct RestoreKillSafetyTests {
        @Test("nothing of the half-built tree is left and the image is unchanged after a SIGKILL of cryo at every phase",
              arguments: restoreKillCases.indices)
        func killedAtEveryPhase(_ index: Int) throws {
            let entry = restoreKillCases[index]
            let scratch = try Scratch("\(entry.fixture)-restore-kill")
            defer { scratch.remove() }
            // Orphans of a killed restore come to us: reaped here, so a pid that stays is a leak.
            let wasSubreaper = isChildSubreaper()
            setChildSubreaper(true)
            defer { if !wasSubreaper { setChildSubreaper(false) } }
            let arguments = entry.arguments.isEmpty ? try Fixture.defaultArguments(for: entry.fixture, in: scratch) : entry.arguments
            let fixture = try Fixture(entry.fixture, arguments: arguments, in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady(timeout: 60)
            let ids = taskIDs(ofTreeAt: fixture.pid)
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            try #require(waitUntil(timeout: 20) { ids.allSatisfy { _ = tryReap($0); return !pidExists($0) } },
                         "the dumped tree is still there: \(ids.filter(pidExists).prefix(5).map(describeProcess))")
            var digest = try imageDigest(images)
            let linesBefore = fixture.lines.count

            var survived = 0, reached = 0
            var missed: [String] = []
            for phase in entry.phases {
                let result = try cryo(["restore", "-d", "-D", images], in: scratch, timeout: cryoTimeout(for: entry.fixture),
                                      environment: ["CRYO_KILL_AT": phase])
                var problems: [String] = []
                if result.succeeded {
                    missed.append(phase)
                } else {
                    reached += 1
                    if result.status != .signaled(SIGKILL) { problems.append("cryo did not die by SIGKILL: \(result)") }
                }
                // With the tree restored (phase not reached) its pids are taken: free them for the next run.
                if result.succeeded { for pid in ids where pidExists(pid) { kill(pid, SIGKILL) } }
                let gone = waitUntil(timeout: 20) { ids.allSatisfy { _ = tryReap($0); return !pidExists($0) } }
                if !gone && !result.succeeded {
                    problems.append("left running: \(ids.filter(pidExists).prefix(8).map(describeProcess).joined(separator: "; "))")
                    for pid in ids where pidExists(pid) { kill(pid, SIGKILL) }
                    waitUntil(timeout: 10) { ids.allSatisfy { _ = tryReap($0); return !pidExists($0) } }
                }
                if result.succeeded {
                    digest = try imageDigest(images) // a finished restore adds its statistics (stats-restore)
                } else if try imageDigest(images) != digest {
                    problems.append("the image changed")
                }
                if !result.succeeded && fixture.lines.count != linesBefore {
                    problems.append("a half-restored process ran on: \(fixture.lines.dropFirst(linesBefore))")
                }
                if result.succeeded { continue }
                if problems.isEmpty { survived += 1 } else {
                    Issue.record("\(entry.fixture), restore killed at \"\(phase)\": \(problems.joined(separator: "\n"))")
                }
            }
            print("restore kill safety: \(entry.fixture): \(survived) of \(reached) kills left nothing behind")
            #expect(Set(missed).isSubset(of: entry.mayMiss), "\(entry.fixture): restore never reached \(missed.filter { !entry.mayMiss.contains($0) })")

            // The image is as good as before: a last restore brings the tree back and it passes.
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore, timeout: cryoTimeout(for: entry.fixture))
        }
    }
}

/// Every thread id of every process in the tree under `root`.
private func taskIDs(ofTreeAt root: pid_t) -> [pid_t] {
    var result: [pid_t] = []
    var queue = [root]
    while let pid = queue.popLast() {
        let tids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []).compactMap { pid_t($0) }
        result += tids
        for tid in tids {
            queue += readText("/proc/\(pid)/task/\(tid)/children").split(separator: " ").compactMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
    }
    return result
}

/// Name, size and SHA-256 of every file in the image folder.
private func imageDigest(_ folder: String) throws -> [String] {
    let names = try FileManager.default.contentsOfDirectory(atPath: folder).sorted()
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
    process.arguments = names.map { folder + "/" + $0 }
    process.currentDirectoryURL = URL(fileURLWithPath: folder)
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    let output = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: output, as: UTF8.self).split(separator: "\n").map(String.init)
}

extension EndToEnd.RestoreKillSafetyTests {
    /// A lazily restored tree runs before its memory is in: if cryo dies then, the tree must die
    /// too (LazyGuard) rather than run on with zeros where its pages were.
    @Test("lazy restore: a loader killed while pages are missing takes the tree with it", arguments: [[], ["-d"]])
    func lazyLoaderKilled(_ flags: [String]) throws {
        let scratch = try Scratch("lazy-loader-kill")
        defer { scratch.remove() }
        let wasSubreaper = isChildSubreaper()
        setChildSubreaper(true)
        defer { if !wasSubreaper { setChildSubreaper(false) } }
        let fixture = try Fixture("counter", in: scratch)
        defer { fixture.cleanUp() }
        try fixture.waitReady(timeout: 60)
        let (images, _) = try dumpAndReap(fixture, in: scratch)
        // Without background pushing the counter's untouched pages stay missing until it faults them.
        let result = try cryo(["restore", "--lazy-pages", "-D", images] + flags, in: scratch, timeout: 60,
                              environment: ["CRYO_KILL_AT": "lazy-loading", "CRYO_LAZY_NO_PUSH": "1"])
        let gone = waitUntil(timeout: 20) { _ = tryReap(fixture.pid); return !(ProcStatus(pid: fixture.pid).map { $0.state != "Z" } ?? false) }
        #expect(gone, "pid \(fixture.pid) runs on after its loader died: \(describeProcess(fixture.pid))\n\(result)")
        if !gone { kill(fixture.pid, SIGKILL) }
        #expect(!fixture.lines.contains("PASS") && !fixture.lines.contains(where: { $0.hasPrefix("FAIL") }),
                "the process ran on:\n\(fixture.report)")
        let guards = processes(commandLineContaining: "lazy-guard")
        #expect(waitUntil(timeout: 10) { processes(commandLineContaining: "lazy-guard").isEmpty }, "lazy guards left: \(guards)")
    }
}

private func processes(commandLineContaining text: String) -> [pid_t] {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { pid_t($0) }.filter {
        readText("/proc/\($0)/cmdline").replacingOccurrences(of: "\0", with: " ").contains(text)
    }
}
