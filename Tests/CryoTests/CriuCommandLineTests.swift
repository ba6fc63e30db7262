// CRIU's command line: a script written for CRIU runs against cryo unchanged,
// and a CRIU option cryo does not implement is refused in one line (exit 1),
// never with a usage dump.

import Foundation
import Glibc
import Testing

@Suite("CRIU's command line")
struct CriuCommandLineTests {
    /// Options CRIU users pass that cryo does not implement, each refused by name.
    @Test("unsupported CRIU options are refused in one line, exit 1", arguments: [
        (["dump", "-t", "1", "-D", "/nonexistent", "--ext-mount-map", "a:b"], "--ext-mount-map is not supported"),
        (["dump", "-t", "1", "-D", "/nonexistent", "--lazy-pages"], "--lazy-pages needs --port"),
        (["dump", "-t", "1", "-D", "/nonexistent", "--lazy-pages", "--port", "1", "--compress"], "is not supported"),
        (["dump", "-t", "1", "-D", "/nonexistent", "--timeout", "0"], "--timeout takes a number of seconds above 0"),
        (["restore", "-D", "/nonexistent", "--restore-sibling"], "--restore-sibling is not supported"),
        (["pre-dump", "-t", "1", "-D", "/nonexistent", "--prev-images-dir", "x"], "pre-dump --prev-images-dir is not supported"),
        (["check", "--feature", "no_such_feature"], "unknown feature no_such_feature"),
        (["dump", "-t", "1", "-D", "/nonexistent", "--ext-unix-sk=123"], "--ext-unix-sk=123 is not supported"),
        (["dump", "-t", "1", "-D", "/nonexistent", "-s"], "-s is not supported"),
        (["lazy-pages", "-D", "/nonexistent"], "lazy-pages socket /nonexistent/lazy-pages.socket"),
        (["swrk", "3"], "swrk is not supported"),
    ])
    func refused(arguments: [String], expected: String) throws {
        let scratch = try Scratch("criu-flags")
        defer { scratch.remove() }
        let result = try cryo(arguments, in: scratch, timeout: 30)
        #expect(result.status == .exited(1), "\(result)")
        #expect(result.stderrLines.count == 1, "one line expected\n\(result)")
        #expect(result.stderrLines.first?.hasPrefix("cryo: ") == true && result.stderr.contains(expected), "\(result)")
        #expect(!Files.exists("/nonexistent"), "nothing may be created")
    }

    /// Every option the issue lists, in CRIU's spellings, on the command that takes it: the
    /// command gets past parsing and fails only for want of the process or the image.
    @Test("every CRIU option cryo implements parses in CRIU's spellings", arguments: [
        ["dump", "-t", "2147483646", "-D", "/nonexistent/img", "--file-locks", "--ext-unix-sk", "--link-remap", "--ghost-limit", "1M",
         "--tcp-established", "--tcp-close", "--skip-in-flight", "--network-lock", "iptables", "--manage-cgroups", "soft",
         "--cgroup-root", "/x", "-o", "dump.log", "-v4", "-W", "/nonexistent/work", "--shell-job", "--leave-running",
         "--track-mem", "--display-stats", "--timeout", "10"],
        ["dump", "--tree", "2147483646", "--images-dir", "/nonexistent/img", "-l", "-x", "-j", "-R", "-v0", "--log-file=d.log",
         "--work-dir=/nonexistent/work", "--prev-images-dir", "../pre", "--manage-cgroups", "--network-lock=nftables"],
        ["pre-dump", "-t", "2147483646", "-D", "/nonexistent/img", "--track-mem", "-v3", "-o", "pre.log", "--manage-cgroups=ignore"],
        ["restore", "-D", "/nonexistent/img", "-d", "-j", "-x", "-l", "--tcp-established", "--tcp-close", "--lazy-pages",
         "--pidfile", "r.pid", "--restore-detached", "--shell-job", "--manage-cgroups=full", "--cgroup-root", "cpu:/y",
         "--display-stats", "-v2", "-o", "r.log", "-W", "/nonexistent/work", "--link-remap", "--file-locks", "--ext-unix-sk",
         "--network-lock", "skip", "--skip-in-flight", "--manage-cgroups"],
        // As CRIU's own test runner spells them.
        ["dump", "--log-file", "dump.log", "--images-dir", "/nonexistent/img", "--verbosity=4", "--tree", "2147483646",
         "--pidfile", "/nonexistent/t.pid", "--timeout", "10", "--pre-dump-mode", "splice"],
        ["pre-dump", "--log-file", "pre-dump.log", "--images-dir", "/nonexistent/img", "--verbosity=4", "--tree", "2147483646",
         "--pre-dump-mode", "read", "--no-default-config"],
        ["dump", "-t", "2147483646", "-D", "/nonexistent/img", "--ghost-limit", "8M", "--no-ghost-fiemap", "--force-irmap"],
        ["dump", "-t", "2147483646", "-D", "/nonexistent/img", "--ghost-fiemap"],
        ["restore", "--log-file", "restore.log", "--images-dir", "/nonexistent/img", "--verbosity=4",
         "--pidfile", "/nonexistent/t.pid", "--restore-detached", "--with-cpu-affinity", "--compress"],
    ])
    func accepted(arguments: [String]) throws {
        let scratch = try Scratch("criu-accepted")
        defer { scratch.remove() }
        let result = try cryo(arguments, in: scratch, timeout: 30)
        #expect(result.status == .exited(1) && result.stderrLines.count == 1, "\(result)")
        let line = result.stderrLines.first ?? ""
        #expect(line.contains("no such process") || line.contains("does not exist"), "\(result)")
        #expect(!line.contains("not supported") && !line.contains("option"), "\(result)")
    }

    @Test("--version prints the version and the commit, as criu --version does")
    func version() throws {
        let scratch = try Scratch("criu-version")
        defer { scratch.remove() }
        let result = try cryo(["--version"], in: scratch, timeout: 30)
        #expect(result.succeeded, "\(result)")
        let lines = result.stdout.split(separator: "\n")
        #expect(lines.first?.hasPrefix("Version: ") == true, "\(result)")
        let commit = lines.dropFirst().first.map { $0.replacingOccurrences(of: "GitCommitID: ", with: "") } ?? ""
        #expect(commit == "unknown" || commit.prefix(40).allSatisfy(\.isHexDigit) && commit.count >= 40, "\(result)")
    }

    @Test("check --feature list, and a feature cryo lacks whatever the kernel offers")
    func features() throws {
        let scratch = try Scratch("criu-feature")
        defer { scratch.remove() }
        let list = try cryo(["check", "--feature", "list"], in: scratch, timeout: 30)
        #expect(list.succeeded && list.stdout.contains("mem_dirty_track") && list.stdout.contains("uffd-noncoop"), "\(list)")
        let nsPid = try cryo(["check", "--feature", "ns_pid"], in: scratch, timeout: 30)
        #expect(nsPid.status == .exited(1) && nsPid.stdout.contains("ns_pid is not supported"), "\(nsPid)")
        let timens = try cryo(["check", "--feature", "timens"], in: scratch, timeout: 30)
        #expect(timens.succeeded && timens.stdout.contains("timens is supported"), "\(timens)")
        // CRIU's test runner asks so before each test that needs a feature.
        let asRunner = try cryo(["check", "--no-default-config", "-verbosity=0", "--feature", "tcp_half_closed"], in: scratch, timeout: 30)
        #expect(asRunner.succeeded, "\(asRunner)")
        let halfClosed = try cryo(["check", "--feature", "tcp_half_closed"], in: scratch, timeout: 30)
        #expect(halfClosed.succeeded && halfClosed.stdout.contains("tcp_half_closed is supported"), "\(halfClosed)")
        let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft", "/bin/nft"].contains { (path: String) in access(path, X_OK) == 0 }
        let nftables = try cryo(["check", "--feature", "network_lock_nftables"], in: scratch, timeout: 30)
        #expect(nftables.status == (nft ? .exited(0) : .exited(1)), "nft \(nft ? "is" : "is not") installed\n\(nftables)")
    }

    @Test("check --all and --extra (CRIU's) run the same checks as check")
    func checkAll() throws {
        let scratch = try Scratch("criu-check-all")
        defer { scratch.remove() }
        let plain = try cryo(["check"], in: scratch, timeout: 60)
        for flag in ["--all", "--extra"] {
            let result = try cryo(["check", flag], in: scratch, timeout: 60)
            #expect(result.status == plain.status && result.stderr.isEmpty, "\(result)")
            let names = { (r: CryoResult) in r.stdout.split(separator: "\n").map { $0.prefix(46) } }
            #expect(names(result) == names(plain), "\(result)\n\(plain)")
        }
    }
}

private enum Files {
    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }
}

extension EndToEnd {
    @Suite("CRIU-style script")
    struct CriuScriptTests {
        @Test("--ghost-limit below an unlinked file's size refuses the dump in one line; the tree runs on")
        func ghostLimit() throws {
            let scratch = try Scratch("criu-ghost")
            defer { scratch.remove() }
            let fixture = try Fixture("files", in: scratch)  // ghost.dat: 8192 bytes, unlinked while open
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", scratch.file("img"), "--ghost-limit", "4K"],
                                in: scratch, reaping: fixture)
            #expect(dump.status == .exited(1) && dump.stderrLines.count == 1, "\(dump)")
            #expect(dump.stderr.contains("8192 bytes") && dump.stderr.contains("--ghost-limit")
                    && dump.stderr.contains("pid \(fixture.pid)"), "\(dump)")
            kill(fixture.pid, SIGTERM)
            #expect(fixture.reapOriginal(timeout: 20) != nil)
            expectPass(fixture, "\(dump)")
        }

        @Test("a CRIU user's script (pre-dump, dump, restore -d --pidfile) runs against cryo unchanged")
        func criuScript() throws {
            let scratch = try Scratch("criu-script")
            defer { scratch.remove() }
            let fixture = try Fixture("files", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let work = try scratch.folder("work")
            let script = Locations.packageRoot + "/Tests/Scripts/criu-style.sh"
            let run = try CryoProcess(["-eu", script, "\(fixture.pid)", work], in: scratch,
                                      environment: ["CRIU": try Locations.cryoBinary()], executable: "/bin/sh")
            let result = run.wait(timeout: 180, reaping: fixture)
            try #require(result.succeeded, "\(result)\n\(fixture.report)")
            #expect(result.stdout.contains("Displaying dump stats:") && result.stdout.contains("Displaying restore stats:"), "\(result)")
            #expect(result.stdout.contains("GitCommitID:"), "\(result)")
            #expect(result.stdout.hasSuffix("restored \(fixture.pid)\n"), "the pid file should name the restored root\n\(result)")
            #expect(!readText(work + "/logs/restore.log").isEmpty, "restore -o with -W should write the work dir's log")
            try #require(fixture.waitRestored(timeout: 30), "\(describeProcess(fixture.pid))\n\(fixture.report)")
            kill(fixture.pid, SIGTERM)
            #expect(waitUntil(timeout: 20) { fixture.lastLine == "PASS" || fixture.lastLine?.hasPrefix("FAIL") == true })
            expectPass(fixture, "\(result)")
        }
    }
}
