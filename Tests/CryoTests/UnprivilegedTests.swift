// Issue #7, unprivileged use: an ordinary user dumps and restores their own
// processes with a copy of cryo that holds only the file capabilities
// cap_checkpoint_restore,cap_sys_ptrace+ep. The restored processes must have
// exactly the credentials, capabilities and dumpable flag they had (not
// cryo's), and such a cryo must never make a process with credentials or
// capabilities the user does not hold, nor read another user's process.
//
// Set up as root: a system user `cryotest` (useradd, once), a fresh 0755
// folder under /tmp with the copied cryo (setcap, from libcap2-bin, which
// Scripts/setup.sh installs) and fixture, and a work folder the user owns.
// Everything the user runs goes through setpriv, which execs in place.

import Cryo
import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("unprivileged use")
    struct UnprivilegedTests {
        @Test("an ordinary user dumps and restores their own tree with a file-capability cryo; images with others' credentials are refused")
        func ownTreeRoundTrip() throws {
            let setup = try UnprivilegedSetup("own")
            defer { setup.remove() }
            let fixture = try setup.fixture("ownuser")
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pids = try #require(fixture.tagged("PIDS")?.compactMap { pid_t($0) }, "no PIDS line\n\(fixture.report)")
            try #require(pids.count == 2)
            let before = pids.map { credentialLines($0) }
            try #require(before.allSatisfy { $0["Uid"]?.hasPrefix("\(setup.uid)\t") == true }, "not run as \(setup.uid): \(before)")

            let images = setup.work + "/img"
            let dump = try setup.cryo(["dump", "-t", "\(fixture.pid)", "-D", images], reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
            try #require(fixture.reapOriginal(timeout: 20) != nil, "pid \(fixture.pid) still runs after the dump")
            try #require(waitUntil(timeout: 20) { pids.allSatisfy { !pidExists($0) } })

            // Images saying what the user does not hold: refused before anything is made.
            let taskFile = images + "/task-\(pids[1]).img"
            let saved = try readBytes(taskFile)
            let core = try readRecord(taskFile, .task, as: TaskCore.self)
            let edits: [(String, [String], (inout TaskCore) -> Void)] = [
                ("uid 0", ["uid", "0"], { $0.credentials.uids = [0, 0, 0, 0] }),
                ("saved gid 0", ["gid", "0"], { $0.credentials.gids[2] = 0 }),
                ("group 0", ["supplementary groups"], { $0.credentials.groups.append(0) }),
                ("CAP_SYS_ADMIN permitted", ["permitted capabilities"], { $0.credentials.capPermitted |= 1 << 21 }),
                ("CAP_CHECKPOINT_RESTORE effective", ["effective capabilities"], { $0.credentials.capEffective |= 1 << 40 }),
                ("CAP_NET_ADMIN ambient", ["ambient capabilities"], { $0.credentials.capAmbient |= 1 << 12 }),
                // cryo's own file capability: the kernel would let cryo's clones keep it, only cryo's check stops it.
                ("CAP_SYS_PTRACE permitted and effective", ["permitted capabilities"],
                 { $0.credentials.capPermitted |= 1 << 19; $0.credentials.capEffective |= 1 << 19 }),
            ]
            for (what, words, edit) in edits {
                var edited = core
                edit(&edited)
                try rewriteRecord(taskFile, .task, edited)
                let refused = try setup.cryo(["restore", "-D", images])
                expectOneLine(refused, naming: ["pid \(pids[1])"] + words)
                #expect(!refused.stderr.contains("EPERM"), "\(what): refused by the kernel, not by cryo's own check first\n\(refused)")
                #expect(pids.allSatisfy { !pidExists($0) }, "\(what): a process was made: \(pids.map(describeProcess))")
                try writeBytes(taskFile, saved)
            }

            // A new pid namespace needs CAP_SYS_ADMIN: said so, and nothing is left.
            let pidns = try setup.cryo(["restore", "--pidns", "-D", images])
            expectOneLine(pidns, naming: ["EPERM", "--pidns needs CAP_SYS_ADMIN"])
            #expect(processes(running: setup.folder + "/ownuser").isEmpty && pids.allSatisfy { !pidExists($0) },
                    "restore --pidns left processes: \(processes(running: setup.folder + "/ownuser"))")

            let restore = try setup.cryoProcess(["restore", "-D", images])
            defer { restore.stop() }
            // Credentials, capability sets and dumpable as before: not cryo's file capabilities, not root-owned /proc.
            try expectRestoredAndPassing(fixture, by: restore, whileRunning: { expectCredentials(pids, as: before, owner: setup.uid) })
        }

        /// bigmem: 48 MiB touched, so the task writes its own pages into the user's image (InTaskPageCopy).
        @Test("an ordinary user's tree of 30 processes (sessions, groups, a stand-in leader), threads, or large memory round-trips with a file-capability cryo",
              arguments: ["tree", "threads", "bigmem"])
        func ownBigTree(_ name: String) throws {
            let setup = try UnprivilegedSetup(name)
            defer { setup.remove() }
            let fixture = try setup.fixture(name, arguments: ["tree": ["30"], "bigmem": ["64"]][name] ?? [])
            defer { fixture.cleanUp() }
            try fixture.waitReady(timeout: 60)
            // Processes (tree) or threads (threads): each has its own credentials.
            let ids = name == "bigmem" ? [fixture.pid]
                : try #require(fixture.tagged(name == "tree" ? "PIDS" : "TIDS")?.compactMap { pid_t($0) }, "no ids\n\(fixture.report)")
            let pids = name == "tree" ? ids : [fixture.pid]
            let tasks = ids.map { name == "tree" ? "/proc/\($0)" : "/proc/\(fixture.pid)/task/\($0)" }
            if name == "tree" { try #require(fixture.tagged("DEADPGID") != nil, "no group without its leader\n\(fixture.report)") }
            let images = setup.work + "/img"
            let dump = try setup.cryo(["dump", "-t", "\(fixture.pid)", "-D", images], reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
            try #require(fixture.reapOriginal(timeout: 20) != nil, "pid \(fixture.pid) still runs after the dump")
            try #require(waitUntil(timeout: 20) { pids.allSatisfy { !pidExists($0) } })

            let restore = try setup.cryoProcess(["restore", "-D", images])
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore, whileRunning: {
                let zero = "0000000000000000"
                for task in tasks {
                    let lines = credentialLines(path: task + "/status")
                    #expect(lines["Uid"]?.hasPrefix("\(setup.uid)\t") == true && lines["CapPrm"] == zero && lines["CapEff"] == zero,
                            "\(task): \(lines): not the user's, or holds cryo's capabilities")
                }
            })
        }

        @Test("root dumps and restores an ordinary user's tree: credentials, capabilities and dumpable as before")
        func userTreeByRoot() throws {
            let setup = try UnprivilegedSetup("by-root")
            defer { setup.remove() }
            let fixture = try setup.fixture("ownuser")
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pids = try #require(fixture.tagged("PIDS")?.compactMap { pid_t($0) }, "no PIDS line\n\(fixture.report)")
            let before = pids.map { credentialLines($0) }

            let images = setup.scratch.file("img")
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", images], in: setup.scratch, reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
            try #require(fixture.reapOriginal(timeout: 20) != nil, "pid \(fixture.pid) still runs after the dump")
            try #require(waitUntil(timeout: 20) { pids.allSatisfy { !pidExists($0) } })

            let restore = try CryoProcess(["restore", "-D", images], in: setup.scratch)
            defer { restore.stop() }
            // Changing the uid from root's resets the dumpable flag: restore must set it again afterwards.
            try expectRestoredAndPassing(fixture, by: restore, whileRunning: { expectCredentials(pids, as: before, owner: setup.uid) })
        }

        @Test("an ordinary user's --tcp-established fails saying it needs CAP_NET_ADMIN, and the tree runs on")
        func tcpRepairNeedsPrivilege() throws {
            let setup = try UnprivilegedSetup("tcp")
            defer { setup.remove() }
            let fixture = try setup.fixture("tcp")
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = setup.work + "/img"
            let dump = try setup.cryo(["dump", "--tcp-established", "-t", "\(fixture.pid)", "-D", images], reaping: fixture)
            expectOneLine(dump, naming: ["TCP_REPAIR", "EPERM", "--tcp-established needs CAP_NET_ADMIN"])
            #expect(!FileManager.default.fileExists(atPath: images), "a failed dump should remove the image folder it created")
            expectRunsAndPasses(fixture, "\(dump)")
        }

        @Test("cryo check passes for an ordinary user's file-capability cryo")
        func checkPasses() throws {
            let setup = try UnprivilegedSetup("check")
            defer { setup.remove() }
            let check = try setup.cryo(["check"])
            #expect(check.succeeded, "\(check)")
            #expect(check.stdout.contains("CAP_CHECKPOINT_RESTORE") && check.stdout.contains("CAP_SYS_PTRACE"), "\(check)")
        }

        @Test("an ordinary user's cryo, unable to suspend seccomp filters, refuses a filtered process up front; it runs on")
        func seccompRefused() throws {
            let setup = try UnprivilegedSetup("seccomp")
            defer { setup.remove() }
            let fixture = try setup.fixture("seccomp")
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = setup.work + "/img"
            for command in ["dump", "pre-dump"] {
                let dump = try setup.cryo([command, "-t", "\(fixture.pid)", "-D", images], reaping: fixture)
                expectOneLine(dump, naming: ["pid \(fixture.pid)", "seccomp", "CAP_SYS_ADMIN", "PTRACE_O_SUSPEND_SECCOMP"])
                #expect(!FileManager.default.fileExists(atPath: images), "a refused \(command) should leave no image folder")
            }
            expectRunsAndPasses(fixture, "")
        }

        @Test("an ordinary user's file-capability cryo refuses to dump a process of root")
        func othersProcessRefused() throws {
            let setup = try UnprivilegedSetup("other")
            defer { setup.remove() }
            let scratch = try Scratch("unpriv-root-counter")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = setup.work + "/img"
            let dump = try setup.cryo(["dump", "-t", "\(fixture.pid)", "-D", images], reaping: fixture)
            expectOneLine(dump, naming: ["pid \(fixture.pid)", "uid 0"])
            #expect(!FileManager.default.fileExists(atPath: images), "a refused dump should leave no image folder")
            expectRunsAndPasses(fixture, "\(dump)")
        }
    }
}

/// Each process has the credential lines it had before, and is dumpable (its /proc/PID/fd belongs to `owner`).
private func expectCredentials(_ pids: [pid_t], as before: [[String: String]], owner: uid_t,
                               sourceLocation: SourceLocation = #_sourceLocation) {
    for (pid, was) in zip(pids, before) {
        #expect(credentialLines(pid) == was, "pid \(pid): \(credentialLines(pid)) after restore, \(was) before", sourceLocation: sourceLocation)
        var st = stat()
        #expect(stat("/proc/\(pid)/fd", &st) == 0 && st.st_uid == owner,
                "pid \(pid): /proc/\(pid)/fd belongs to uid \(st.st_uid), not \(owner): it is not dumpable", sourceLocation: sourceLocation)
    }
}

/// The credential and capability lines of /proc/PID/status.
private func credentialLines(_ pid: pid_t) -> [String: String] { credentialLines(path: "/proc/\(pid)/status") }

private func credentialLines(path: String) -> [String: String] {
    var result: [String: String] = [:]
    for line in readText(path).split(separator: "\n") {
        guard let colon = line.firstIndex(of: ":") else { continue }
        let key = String(line[..<colon])
        if ["Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"].contains(key) {
            result[key] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
    }
    return result
}

/// A user, a folder with a capability-holding copy of cryo, and how to run things as that user.
private final class UnprivilegedSetup {
    static let user = "cryotest"
    let scratch: Scratch
    private(set) var folder = ""
    private(set) var work = ""
    private(set) var cryoCopy = ""
    let uid: uid_t
    let gid: gid_t

    init(_ label: String) throws {
        let scratch = try Scratch("unpriv-\(label)-out")
        self.scratch = scratch
        do { (uid, gid) = try UnprivilegedSetup.ensureUser() } catch {
            scratch.remove()
            throw error
        }
        // File capabilities are ignored on a nosuid mount: pick a folder where they count.
        let base = try #require(["/tmp", "/var/tmp", "/dev/shm"].first { path in
            var vfs = statvfs()
            return statvfs(path, &vfs) == 0 && vfs.f_flag & UInt(ST_NOSUID) == 0
        }, "/tmp, /var/tmp and /dev/shm are all mounted nosuid: file capabilities cannot be tested")
        defer { if !ready { remove() } }   // a setup that fails leaves no folder behind
        var template = Array("\(base)/cryo-unpriv-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw HarnessError("mkdtemp: \(String(cString: strerror(errno)))")
        }
        folder = String(cString: made)
        chmod(folder, 0o755)
        cryoCopy = folder + "/cryo"
        try FileManager.default.copyItem(atPath: try Locations.cryoBinary(), toPath: cryoCopy)
        chmod(cryoCopy, 0o755)
        work = folder + "/work"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: false)
        chown(work, uid, gid)
        chmod(work, 0o700)

        let setcap = try #require(["/usr/sbin/setcap", "/sbin/setcap"].first { Locations.isExecutableFile($0) },
                                  "setcap is missing: install libcap2-bin (Scripts/setup.sh does)")
        let log = scratch.file("setcap.log")
        let rc = reap(try spawnProcess(setcap, ["cap_checkpoint_restore,cap_sys_ptrace+ep", cryoCopy], stdoutPath: log), timeout: 30)
        try #require(rc == .exited(0), "setcap on \(cryoCopy): \(rc.map(\.description) ?? "timed out")\n\(readText(log))")

        // A file-capability binary runs with AT_SECURE: $ORIGIN and LD_LIBRARY_PATH are ignored,
        // so the Swift runtime must come from an absolute RUNPATH the user can read.
        let help = try cryo(["--help"])
        try #require(help.succeeded, "the copied cryo does not start as \(UnprivilegedSetup.user) with file capabilities (is the Swift runtime in a world-readable absolute RUNPATH?)\n\(help)")
        ready = true
    }
    private var ready = false

    /// Runs as the user, in the work folder; setpriv and env exec in place, so the pid is the program's.
    var launcher: [String] {
        ["/usr/bin/setpriv", "--reuid=\(uid)", "--regid=\(gid)", "--init-groups", "--", "/usr/bin/env", "-C", work]
    }

    /// A fixture run as the user from a copy in the folder, its log owned by the user (restore reopens it).
    func fixture(_ name: String, arguments: [String] = []) throws -> Fixture {
        let copy = folder + "/" + name
        if !FileManager.default.fileExists(atPath: copy) {
            try FileManager.default.copyItem(atPath: try FixtureBuilder.binary(for: name), toPath: copy)
            chmod(copy, 0o755)
        }
        let log = work + "/\(name).log"
        FileManager.default.createFile(atPath: log, contents: nil)
        chown(log, uid, gid)
        return try Fixture(name, arguments: arguments, in: scratch, binary: copy, launcher: launcher, logPath: log)
    }

    func cryo(_ arguments: [String], reaping fixture: Fixture? = nil) throws -> CryoResult {
        try CryoTests.cryo(arguments, in: scratch, timeout: 120, reaping: fixture, executable: cryoCopy, launcher: launcher)
    }

    func cryoProcess(_ arguments: [String]) throws -> CryoProcess {
        try CryoProcess(arguments, in: scratch, executable: cryoCopy, launcher: launcher)
    }

    func remove() {
        scratch.remove()
        if ProcessInfo.processInfo.environment["CRYO_KEEP_TMP"] == nil, !folder.isEmpty { try? FileManager.default.removeItem(atPath: folder) }
    }

    /// The test user, made once (useradd --system); a concurrent creation is fine.
    static func ensureUser() throws -> (uid_t, gid_t) {
        if let entry = getpwnam(user) { return (entry.pointee.pw_uid, entry.pointee.pw_gid) }
        let log = "/tmp/cryo-useradd-\(getpid()).log"
        defer { unlink(log) }
        let status = reap(try spawnProcess("/usr/sbin/useradd", ["--system", "--user-group", "--no-create-home",
                                                                "--shell", "/usr/sbin/nologin", user], stdoutPath: log), timeout: 60)
        guard let entry = getpwnam(user) else {
            throw HarnessError("useradd \(user): \(status.map(\.description) ?? "timed out")\n\(readText(log))")
        }
        return (entry.pointee.pw_uid, entry.pointee.pw_gid)
    }
}
