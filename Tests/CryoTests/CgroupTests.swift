// cgroups: each task goes back into its cgroups (v1 hierarchies, named ones,
// and v2 with a thread alone in a threaded cgroup); missing cgroups are made
// with their recorded settings; --manage-cgroups modes and --cgroup-root as
// in CRIU. The tests make their own cgroups under a unique name.

import CryoSystem
import Foundation
import Glibc
import Testing

/// The cgroups one test makes: in each hierarchy mounted here, NAME (and below it).
final class TestCgroups {
    static let base = "/sys/fs/cgroup"
    nonisolated(unsafe) static var counter = 0
    let name: String
    /// Directories made, in order.
    private(set) var made: [String] = []
    let pids: String?, cpu: String?, named: String?, v2: String?

    init() {
        TestCgroups.counter += 1
        name = "cryo-cg-\(getpid())-\(TestCgroups.counter)"
        func mounted(_ h: String) -> String? { FileManager.default.fileExists(atPath: "\(Self.base)/\(h)/cgroup.procs") ? "\(Self.base)/\(h)" : nil }
        pids = mounted("pids")
        cpu = mounted("cpu")
        named = mounted("systemd")
        v2 = FileManager.default.fileExists(atPath: "\(Self.base)/cgroup.controllers") ? Self.base
            : FileManager.default.fileExists(atPath: "\(Self.base)/unified/cgroup.controllers") ? "\(Self.base)/unified" : nil
    }

    var available: Bool { pids != nil || cpu != nil || named != nil || v2 != nil }

    static func write(_ value: String, _ path: String) throws {
        guard let f = fopen(path, "w") else { throw HarnessError("open \(path): \(String(cString: strerror(errno)))") }
        fputs(value, f)
        guard fclose(f) == 0 else { throw HarnessError("write \(value) to \(path): \(String(cString: strerror(errno)))") }
    }

    static func read(_ path: String) -> String {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "?").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func mkdir(_ path: String) throws {
        guard Glibc.mkdir(path, 0o755) == 0 else { throw HarnessError("mkdir \(path): \(String(cString: strerror(errno)))") }
        made.append(path)
    }

    /// Makes the cgroups with their settings: pids.max 77, cpu.shares 333 (on NAME/sub),
    /// cgroup.max.descendants 5 and a threaded child NAME/t in v2.
    func make() throws {
        if let pids { try mkdir("\(pids)/\(name)"); try Self.write("77", "\(pids)/\(name)/pids.max") }
        if let cpu { try mkdir("\(cpu)/\(name)"); try mkdir("\(cpu)/\(name)/sub"); try Self.write("333", "\(cpu)/\(name)/sub/cpu.shares") }
        if let named { try mkdir("\(named)/\(name)") }
        if let v2 {
            try mkdir("\(v2)/\(name)")
            try Self.write("5", "\(v2)/\(name)/cgroup.max.descendants")
            try mkdir("\(v2)/\(name)/t")
            try Self.write("threaded", "\(v2)/\(name)/t/cgroup.type")
        }
    }

    /// Moves the process (and the thread, into NAME/t of v2) in.
    func enter(pid: pid_t, thread: pid_t) throws {
        if let pids { try Self.write("\(pid)", "\(pids)/\(name)/cgroup.procs") }
        if let cpu { try Self.write("\(pid)", "\(cpu)/\(name)/sub/cgroup.procs") }
        if let named { try Self.write("\(pid)", "\(named)/\(name)/cgroup.procs") }
        if let v2 {
            try Self.write("\(pid)", "\(v2)/\(name)/cgroup.procs")
            try Self.write("\(thread)", "\(v2)/\(name)/t/cgroup.threads")
        }
    }

    /// Settings that differ from what make() set, as "file=value".
    func wrongSettings(pidsMax: String = "77") -> [String] {
        var wrong: [String] = []
        func check(_ path: String, _ want: String) { let got = Self.read(path); if got != want { wrong.append("\(path)=\(got), not \(want)") } }
        if let pids { check("\(pids)/\(name)/pids.max", pidsMax) }
        if let cpu { check("\(cpu)/\(name)/sub/cpu.shares", "333") }
        if let v2 { check("\(v2)/\(name)/cgroup.max.descendants", "5"); check("\(v2)/\(name)/t/cgroup.type", "threaded") }
        return wrong
    }

    /// Removes every NAME cgroup (and `extra` ones), deepest first, once their tasks are gone.
    func remove(extra: [String] = []) {
        var dirs = made + extra
        for h in [pids, cpu, named, v2].compactMap({ $0 }) {
            for sub in ["/t", "/sub", ""] where !dirs.contains("\(h)/\(name)\(sub)") { dirs.append("\(h)/\(name)\(sub)") }
        }
        for dir in dirs.sorted(by: { $0.count > $1.count }) where FileManager.default.fileExists(atPath: dir) {
            _ = waitUntil(timeout: 5) { rmdir(dir) == 0 || errno == ENOENT }
        }
        made = []
    }
}

extension EndToEnd {
    @Suite("cgroups", .serialized)
    struct CgroupTests {
        /// A fixture in the test's cgroups, its membership snapshotted.
        static func start(_ cgroups: TestCgroups, in scratch: Scratch) throws -> Fixture {
            let fixture = try Fixture("cgroups", in: scratch)
            try fixture.waitReady()
            let thread = try #require(fixture.tagged("THREAD")?.first.flatMap { pid_t($0) })
            try cgroups.enter(pid: fixture.pid, thread: thread)
            fixture.signal(SIGUSR1)
            _ = waitUntil(timeout: 10) { fixture.lines.contains("SNAPSHOT") }
            try #require(fixture.lines.contains("SNAPSHOT"), "\(fixture.report)")
            return fixture
        }

        @Test("tasks go back into their cgroups; settings made or put back as the mode says",
              arguments: [("soft", "keep", "77"), ("soft", "remove", "77"), ("soft", "change", "99"), ("full", "change", "77"),
                          ("props", "change", "77"), ("strict", "remove", "77"), ("none", "keep", "77")])
        func roundTrip(mode: String, afterDump: String, pidsMax: String) throws {
            let cgroups = TestCgroups()
            try #require(cgroups.available, "no cgroup hierarchy is mounted under /sys/fs/cgroup")
            defer { cgroups.remove() }
            try cgroups.make()
            let scratch = try Scratch("cgroups")
            defer { scratch.remove() }
            let fixture = try Self.start(cgroups, in: scratch)
            defer { fixture.cleanUp() }
            let (images, _) = try dumpAndReap(fixture, in: scratch, options: ["--manage-cgroups", mode])
            switch afterDump {
            case "remove": cgroups.remove()
            case "change": if let pids = cgroups.pids { try TestCgroups.write("99", "\(pids)/\(cgroups.name)/pids.max") }
            default: break
            }
            let restore = try CryoProcess(["restore", "--manage-cgroups", mode, "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore, whileRunning: {
                #expect(cgroups.wrongSettings(pidsMax: cgroups.pids == nil ? "77" : pidsMax).isEmpty,
                        "\(cgroups.wrongSettings(pidsMax: pidsMax))")
            })
        }

        @Test("--manage-cgroups none refuses missing cgroups, strict existing ones, in one line, leaving no task",
              arguments: [("none", true, "does not exist"), ("strict", false, "exists already")])
        func refused(mode: String, removeAfterDump: Bool, message: String) throws {
            let cgroups = TestCgroups()
            try #require(cgroups.available, "no cgroup hierarchy is mounted under /sys/fs/cgroup")
            defer { cgroups.remove() }
            try cgroups.make()
            let scratch = try Scratch("cgroups-refused")
            defer { scratch.remove() }
            let fixture = try Self.start(cgroups, in: scratch)
            defer { fixture.cleanUp() }
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            if removeAfterDump { cgroups.remove() }
            let restore = try cryo(["restore", "--manage-cgroups", mode, "-D", images], in: scratch)
            #expect(restore.failed && restore.stderrLines.count == 1 && restore.stderr.contains(message), "\(restore)")
            #expect(!pidExists(fixture.pid) || ProcStatus(pid: fixture.pid)?.name != "cgroups", "a task of the failed restore is left")
        }

        @Test("--cgroup-root pids:/NEW puts the root task's pids cgroup at NEW, made with its settings")
        func cgroupRoot() throws {
            let cgroups = TestCgroups()
            guard let pids = cgroups.pids else { print("skipped: no cgroup v1 pids hierarchy"); return }
            let moved = "\(pids)/\(cgroups.name)-moved"
            defer { cgroups.remove(extra: [moved]) }
            try cgroups.make()
            let scratch = try Scratch("cgroups-root")
            defer { scratch.remove() }
            let fixture = try Self.start(cgroups, in: scratch)
            defer { fixture.cleanUp() }
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            let restore = try CryoProcess(["restore", "--cgroup-root", "pids:/\(cgroups.name)-moved", "-D", images], in: scratch)
            defer { restore.stop() }
            try #require(fixture.waitRestored(timeout: 60) { restore.isRunning }, "\(restore.wait(timeout: 5))")
            let membership = readText("/proc/\(fixture.pid)/cgroup")
            #expect(membership.contains("pids:/\(cgroups.name)-moved\n"), "\(membership)")
            #expect(TestCgroups.read("\(moved)/pids.max") == "77")
            kill(fixture.pid, SIGKILL)
            _ = restore.wait(timeout: 30)
        }

        @Test("a v1 hierarchy mounted nowhere is mounted by cryo, unseen, at dump and restore; no mount is left",
              .serialized, arguments: [false, true])
        func unmountedHierarchy(removedAfterDump: Bool) throws {
            let name = "cryo-unmounted-\(getpid())-\(removedAfterDump ? "gone" : "kept")"
            let scratch = try Scratch("cgroups-unmounted")
            defer { scratch.remove() }
            let dir = try scratch.folder("hierarchy")
            func mountHierarchy() throws {
                guard mount("cgroup", dir, "cgroup", 0, "none,name=\(name)") == 0 else {
                    throw HarnessError("mount name=\(name) at \(dir): \(String(cString: strerror(errno)))")
                }
            }
            func mounted() -> Bool { readText("/proc/self/mountinfo").contains("name=\(name)") }
            func exists() -> Bool { readText("/proc/self/cgroup").contains(":name=\(name):") }
            try mountHierarchy()
            guard Glibc.mkdir("\(dir)/sub", 0o755) == 0 else { throw HarnessError("mkdir sub: \(String(cString: strerror(errno)))") }
            // Every task gone, the hierarchy is mounted once more to remove its cgroup. It ends at the
            // unmount only if no cgroup is left, one still dying included: a hierarchy left would be in
            // every process, mounted nowhere, and an older cryo would refuse every dump.
            defer {
                for _ in 0..<3 {
                    if !mounted() { try? mountHierarchy() }
                    _ = waitUntil(timeout: 5) { rmdir("\(dir)/sub") == 0 || errno == ENOENT }
                    umount2(dir, 0)
                    if waitUntil(timeout: 5, { !exists() }) { break }
                }
            }
            let fixture = try Fixture("cgroups", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            try TestCgroups.write("\(fixture.pid)", "\(dir)/sub/cgroup.procs")
            fixture.signal(SIGUSR1)
            _ = waitUntil(timeout: 10) { fixture.lines.contains("SNAPSHOT") }
            try #require(fixture.lines.contains("SNAPSHOT"), "\(fixture.report)")
            guard umount2(dir, 0) == 0 else { throw HarnessError("umount \(dir): \(String(cString: strerror(errno)))") }

            let (images, _) = try dumpAndReap(fixture, in: scratch)
            #expect(!mounted(), "the dump left name=\(name) mounted")
            if removedAfterDump {
                // The cgroup goes, and with it the hierarchy: restore makes both again.
                try mountHierarchy()
                _ = waitUntil(timeout: 5) { rmdir("\(dir)/sub") == 0 }
                umount2(dir, 0)
            }
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore, whileRunning: {
                #expect(readText("/proc/\(fixture.pid)/cgroup").contains(":name=\(name):/sub\n"), "\(readText("/proc/\(fixture.pid)/cgroup"))")
                #expect(!mounted(), "the restore left name=\(name) mounted")
            })
        }

        @Test("--manage-cgroups ignore records nothing: the restored task stays in cryo's cgroups")
        func ignored() throws {
            let cgroups = TestCgroups()
            guard cgroups.pids != nil else { print("skipped: no cgroup v1 pids hierarchy"); return }
            defer { cgroups.remove() }
            try cgroups.make()
            let scratch = try Scratch("cgroups-ignore")
            defer { scratch.remove() }
            let fixture = try Self.start(cgroups, in: scratch)
            defer { fixture.cleanUp() }
            let (images, _) = try dumpAndReap(fixture, in: scratch, options: ["--manage-cgroups", "ignore"])
            #expect(!readText(images + "/inventory.img").contains("\"cgroups\":{"), "an ignore dump should record no cgroups")
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try #require(fixture.waitRestored(timeout: 60) { restore.isRunning }, "\(restore.wait(timeout: 5))")
            let membership = readText("/proc/\(fixture.pid)/cgroup")
            #expect(!membership.contains(cgroups.name), "\(membership)")
            kill(fixture.pid, SIGKILL)
            _ = restore.wait(timeout: 30)
        }
    }
}
