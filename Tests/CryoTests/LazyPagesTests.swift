// restore --lazy-pages: the restored process runs before its private
// anonymous memory is in; cryo fills pages on first touch and pushes the
// rest, then exits. The fixtures check their own memory (PASS); the tests
// also check that loading really was lazy (stats-restore), that the task
// keeps no userfaultfd, and what happens when pages cannot be loaded.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("restore --lazy-pages")
    struct LazyPagesTests {
        @Test("lazy restore in the foreground", arguments: ["bigmem", "counter", "lazytouch", "mlocked"])
        func foreground(_ name: String) throws {
            try lazyRoundTrip(name, detached: false)
        }

        @Test("lazy restore detached (-d): the loader keeps running on its own until all is in", arguments: ["bigmem", "lazytouch"])
        func detached(_ name: String) throws {
            try lazyRoundTrip(name, detached: true)
        }

        @Test("lazy restore of a compressed image (dump --compress)")
        func compressed() throws {
            try lazyRoundTrip("bigmem", detached: false, dumpArguments: ["--compress"])
        }

        /// With background pushing off (CRYO_LAZY_NO_PUSH=1) every page comes in by a fault, so the
        /// fixture's forks, MADV_DONTNEED, munmap and mremap all meet pages that are still missing.
        @Test("every page loaded on demand while the process forks, drops, unmaps and moves memory")
        func onDemandOnly() throws {
            try lazyRoundTrip("lazytouch", detached: false, environment: ["CRYO_LAZY_NO_PUSH": "1"], expectPushed: false, runFor: 1)
        }

        @Test("lazy restore of a process tree and of threads", arguments: ["tree", "threads"])
        func tree(_ name: String) throws {
            try treeRoundTrip(name, restoreArguments: ["--lazy-pages"])
        }

        /// With -d the loader exits when all is in; the restored tree (here in a new pid
        /// namespace, whose init is the loader's child) must live on after it.
        @Test("lazy restore -d --pidns: the tree outlives the loader")
        func detachedPidNamespace() throws {
            let scratch = try Scratch("lazy-pidns")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            let images = try dumpAndReap(fixture, in: scratch).images

            let restore = try cryo(["restore", "-D", images, "--pidns", "-d", "--lazy-pages"], in: scratch)
            try #require(restore.succeeded, "\(restore)")
            var host: pid_t?
            defer { if let host { kill(host, SIGKILL) } }
            let found = waitUntil(timeout: 30) {
                host = hostPid(ofInner: pid, named: "counter")
                return host != nil
            }
            try #require(found, "no counter with pid \(pid) inside a new pid namespace after `restore --pidns -d --lazy-pages`\n\(restore)")
            try #require(lazyStatistics(images, timeout: 60) != nil, "the loader never finished: \(readText(images + "/stats-restore"))")
            sleepSeconds(0.3)  // the loader has exited by now; the tree must not go with it
            let status = ProcStatus(pid: host!)
            #expect(status?.name == "counter" && status?.isRunning == true,
                    "the restored counter (host pid \(host!)) did not outlive the loader: \(describeProcess(host!))")
            kill(host!, SIGTERM)
            #expect(waitUntil(timeout: 30) { fixture.lines.contains("PASS") || fixture.lines.contains { $0.hasPrefix("FAIL") } })
            expectPass(fixture)
        }

        /// Pages that cannot be read once the tree runs cannot be made up: cryo kills the
        /// restored tree (its memory would read as zeros otherwise), says why in one line and
        /// exits 1, instead of leaving the process waiting on its fault forever.
        @Test("a pages file truncated after the process started: the tree is killed, one line, exit 1")
        func truncatedPages() throws {
            let scratch = try Scratch("lazy-truncated")
            defer { scratch.remove() }
            let fixture = try Fixture("bigmem", arguments: ["64"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            let images = try dumpAndReap(fixture, in: scratch).images

            // No background push: the pages stay unread until bigmem touches them on SIGTERM.
            let restore = try CryoProcess(["restore", "-D", images, "--lazy-pages"], in: scratch,
                                          environment: ["CRYO_LAZY_NO_PUSH": "1"])
            defer { restore.stop() }
            try #require(fixture.waitRestored(timeout: 60) { restore.isRunning },
                         "pid \(pid) did not come back (\(describeProcess(pid)))\n\(restore.wait(timeout: 1))")
            let pages = images + "/pages-\(pid).img"
            var st = stat()
            try #require(stat(pages, &st) == 0 && st.st_size > 8192, "no pages file \(pages)")
            try #require(truncate(pages, off_t(st.st_size / 2)) == 0, "truncate \(pages): \(String(cString: strerror(errno)))")
            kill(pid, SIGTERM)

            let result = restore.wait(timeout: 60)
            #expect(result.status == .exited(1), "cryo restore should fail with status 1\n\(result)")
            #expect(result.stderrLines.count == 1, "expected one line on stderr\n\(result)")
            let line = result.stderrLines.first ?? ""
            #expect(line.hasPrefix("cryo: ") && line.contains("pages-\(pid).img") && line.contains("killed the restored tree"),
                    "the line should name the pages file and say the tree was killed: \(line)")
            #expect(waitUntil(timeout: 10) { !pidExists(pid) }, "pid \(pid) is left: \(describeProcess(pid))")
            #expect(!fixture.lines.contains("PASS"), "bigmem passed on memory that could not be loaded:\n\(fixture.report)")
        }

        /// A kernel that refuses userfaultfd (here: a seccomp filter returning EPERM, as
        /// vm.unprivileged_userfaultfd=0 does for unprivileged callers) fails the restore with
        /// one line before any task is created.
        @Test("userfaultfd refused: one line, nothing created")
        func refused() throws {
            let scratch = try Scratch("lazy-refused")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            let images = try dumpAndReap(fixture, in: scratch).images

            let wrapper = try FixtureBuilder.binary(for: "nouffd")
            for detached in [false, true] {
                let process = try CryoProcess(["restore", "-D", images, "--lazy-pages"] + (detached ? ["-d"] : []), in: scratch,
                                              launcher: [wrapper])
                let result = process.wait(timeout: 60)
                #expect(result.status == .exited(1), "cryo restore --lazy-pages should fail\n\(result)")
                #expect(result.stderrLines.count == 1 && (result.stderrLines.first ?? "").contains("userfaultfd")
                        && (result.stderrLines.first ?? "").contains("EPERM"),
                        "expected one line naming userfaultfd and EPERM\n\(result)")
                #expect(!pidExists(pid), "pid \(pid) exists after the refused restore: \(describeProcess(pid))")
            }
            // The image is untouched: a normal restore still works.
            let restore = try cryo(["restore", "-D", images, "-d"], in: scratch)
            try #require(restore.succeeded, "\(restore)")
            try #require(fixture.waitRestored(timeout: 30), "pid \(pid) did not come back: \(describeProcess(pid))")
            kill(pid, SIGTERM)
            #expect(waitUntil(timeout: 30) { !pidExists(pid) })
            expectPass(fixture)
        }
    }
}

extension EndToEnd {
    /// CRIU's lazy migration in CRIU's spelling (LazyMigration.swift): `dump --lazy-pages --port`
    /// leaves the lazily loaded memory out of the image and serves it from the frozen tree,
    /// `lazy-pages --page-server` fetches it for `restore --lazy-pages`. Both hosts are this one,
    /// so the restore goes into a new pid namespace (the source's pids are still taken).
    @Suite("CRIU's lazy-pages daemon")
    struct LazyPagesDaemonTests {
        /// A port of its own for each test (`which`), so that nothing left by one test answers the next.
        static func port(_ which: Int) -> String { String(20000 + (Int(getpid()) * 8 + which) % 20000) }

        @Test("dump --lazy-pages, lazy-pages --page-server, restore --lazy-pages: memory served from the frozen source")
        func lazyMigration() throws {
            let scratch = try Scratch("lazy-migration")
            defer { scratch.remove() }
            let fixture = try Fixture("bigmem", arguments: ["64"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            let images = scratch.file("img")
            let port = Self.port(1)
            let dump = try CryoProcess(["dump", "-t", "\(pid)", "-D", images, "--lazy-pages", "--address", "127.0.0.1", "--port", port],
                                       in: scratch)
            defer { dump.stop() }
            let written = waitUntil(timeout: 60) {
                fixture.pollOriginal()
                return FileManager.default.fileExists(atPath: images + "/lazy-remote.img") && !FileManager.default.fileExists(atPath: images + "/dump-incomplete")
            }
            try #require(written, "no lazy-remote.img from dump --lazy-pages\n\(dump.wait(timeout: 1))")
            // The 48 MiB written stay on the source: the image holds only what restore needs at once.
            let allocated = allocatedBytes(images)
            #expect(allocated < 4 << 20, "the image takes \(allocated) bytes on disk: the lazy pages were not left out")
            #expect(ProcStatus(pid: pid) != nil, "the source must stay (frozen) until the destination has its memory")

            let daemon = try CryoProcess(["lazy-pages", "--page-server", "--address", "127.0.0.1", "--port", port, "-D", images], in: scratch)
            defer { daemon.stop() }
            let restore = try cryo(["restore", "-D", images, "--lazy-pages", "--pidns", "-d"], in: scratch)
            try #require(restore.succeeded, "\(restore)")
            var host: pid_t?
            defer { if let host { kill(host, SIGKILL) } }
            try #require(waitUntil(timeout: 30) {
                host = hostPid(ofInner: pid, named: "bigmem")
                return host != nil
            }, "no restored bigmem with pid \(pid) in a new pid namespace\n\(restore)")

            let dumped = dump.wait(timeout: 120, reaping: fixture)
            #expect(dumped.succeeded, "dump --lazy-pages should end once the destination has every page\n\(dumped)")
            #expect(fixture.reapOriginal(timeout: 20) != nil, "the source still runs after the migration")
            let served = daemon.wait(timeout: 60)
            #expect(served.succeeded, "the lazy-pages daemon should exit 0 once every page passed\n\(served)")
            #expect(allocatedBytes(images) > 40 << 20, "the pages did not arrive in the image folder")
            kill(host!, SIGTERM)
            #expect(waitUntil(timeout: 30) { fixture.lines.contains("PASS") || fixture.lines.contains { $0.hasPrefix("FAIL") } })
            expectPass(fixture)
        }

        /// The destination fails after the daemon reached the source: the source tree is released and goes on.
        @Test("a restore that fails before the tree starts leaves the source running")
        func restoreFails() throws {
            let scratch = try Scratch("lazy-migration-fails")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            let images = scratch.file("img")
            let port = Self.port(2)
            let dump = try CryoProcess(["dump", "-t", "\(pid)", "-D", images, "--lazy-pages", "--address", "127.0.0.1", "--port", port],
                                       in: scratch)
            defer { dump.stop() }
            try #require(waitUntil(timeout: 60) { FileManager.default.fileExists(atPath: images + "/lazy-remote.img") && !FileManager.default.fileExists(atPath: images + "/dump-incomplete") },
                         "no lazy-remote.img\n\(dump.wait(timeout: 1))")
            let daemon = try CryoProcess(["lazy-pages", "--page-server", "--address", "127.0.0.1", "--port", port, "-D", images], in: scratch)
            defer { daemon.stop() }
            // Without --pidns the pid is still the source's: the restore fails.
            let restore = try cryo(["restore", "-D", images, "--lazy-pages", "-d"], in: scratch)
            #expect(restore.status == .exited(1) && restore.stderrLines.count == 1, "\(restore)")
            let dumped = dump.wait(timeout: 60, reaping: fixture)
            #expect(dumped.status == .exited(1) && dumped.stderrLines.count == 1
                    && dumped.stderr.contains("before the destination reported the restored tree running"), "\(dumped)")
            #expect(daemon.wait(timeout: 30).status == .exited(1))
            #expect(!FileManager.default.fileExists(atPath: images + "/inventory.img"), "the failed dump must remove its image")
            #expect(waitUntil(timeout: 10) { ProcStatus(pid: pid)?.isRunning == true }, "the source is not running: \(describeProcess(pid))")
            fixture.signal(SIGTERM)
            #expect(fixture.reapOriginal(timeout: 30) != nil)
            expectPass(fixture)
        }

        /// CRIU's remote lazy pages: the image stays whole with `page-server --lazy-pages` (here as a
        /// daemon with a pid file, as CRIU's); the restore's copy of the folder lacks the pages files.
        @Test("page-server --lazy-pages serves an image to a restore whose folder lacks the pages files")
        func remoteImage() throws {
            let scratch = try Scratch("lazy-remote-image")
            defer { scratch.remove() }
            let fixture = try Fixture("bigmem", arguments: ["64"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = try dumpAndReap(fixture, in: scratch).images
            let copy = try scratch.folder("copy")
            for name in try FileManager.default.contentsOfDirectory(atPath: images) where !name.hasPrefix("pages-") {
                try FileManager.default.copyItem(atPath: images + "/" + name, toPath: copy + "/" + name)
            }
            let port = Self.port(3)
            let server = try cryo(["page-server", "--lazy-pages", "--port", port, "-D", images, "--daemon", "--pidfile", "ps.pid"], in: scratch)
            try #require(server.succeeded, "\(server)")
            let serverPid = pid_t(readText(images + "/ps.pid").trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
            try #require(serverPid > 0 && pidExists(serverPid), "no page server from ps.pid")
            defer { kill(serverPid, SIGKILL) }
            // The restore starts first, as a script may start both at once: it waits for the daemon.
            let restoring = try CryoProcess(["restore", "-D", copy, "--lazy-pages", "-d"], in: scratch)
            defer { restoring.stop() }
            usleep(300_000)
            let daemon = try CryoProcess(["lazy-pages", "--page-server", "--address", "127.0.0.1", "--port", port, "-D", copy], in: scratch)
            defer { daemon.stop() }
            let restore = restoring.wait(timeout: 60)
            try #require(restore.succeeded, "\(restore)")
            let served = daemon.wait(timeout: 60)
            #expect(served.succeeded, "the lazy-pages daemon should exit 0 once every page passed\n\(served)")
            #expect(waitUntil(timeout: 30) { !pidExists(serverPid) }, "the page server stays after serving: \(describeProcess(serverPid))")
            try #require(fixture.waitRestored(timeout: 30), "pid \(fixture.pid) did not come back: \(describeProcess(fixture.pid))")
            fixture.signal(SIGTERM)
            #expect(waitUntil(timeout: 30) { !pidExists(fixture.pid) })
            expectPass(fixture)
        }

        /// As CRIU's tests run remote lazy pages: one folder, so restore finds every page at home;
        /// the page server still hears that it is not needed, and every process ends.
        @Test("page-server --lazy-pages and lazy-pages on one whole folder both end with the restore")
        func remoteImageSameFolder() throws {
            let scratch = try Scratch("lazy-remote-same")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = try dumpAndReap(fixture, in: scratch).images
            let port = Self.port(4)
            let server = try CryoProcess(["page-server", "--lazy-pages", "--port", port, "-D", images], in: scratch)
            defer { server.stop() }
            let daemon = try CryoProcess(["lazy-pages", "--page-server", "--address", "127.0.0.1", "--port", port, "-D", images], in: scratch)
            defer { daemon.stop() }
            try #require(waitUntil(timeout: 10) { FileManager.default.fileExists(atPath: images + "/lazy-pages.socket") }, "\(daemon.wait(timeout: 1))")
            let restore = try cryo(["restore", "-D", images, "--lazy-pages", "-d"], in: scratch)
            try #require(restore.succeeded, "\(restore)")
            #expect(daemon.wait(timeout: 60).succeeded)
            #expect(server.wait(timeout: 30).succeeded)
            try #require(fixture.waitRestored(timeout: 30), "pid \(fixture.pid) did not come back: \(describeProcess(fixture.pid))")
            fixture.signal(SIGTERM)
            #expect(waitUntil(timeout: 30) { !pidExists(fixture.pid) })
            expectPass(fixture)
        }

        /// Without --page-server the image holds every page; the daemon ends with the restore.
        @Test("lazy-pages without a page server ends when restore --lazy-pages has loaded the image")
        func local() throws {
            let scratch = try Scratch("lazy-pages-local")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            let images = try dumpAndReap(fixture, in: scratch).images
            let daemon = try CryoProcess(["lazy-pages", "-D", images], in: scratch)
            defer { daemon.stop() }
            try #require(waitUntil(timeout: 10) { FileManager.default.fileExists(atPath: images + "/lazy-pages.socket") }, "\(daemon.wait(timeout: 1))")
            let restore = try cryo(["restore", "-D", images, "--lazy-pages", "-d"], in: scratch)
            try #require(restore.succeeded, "\(restore)")
            let served = daemon.wait(timeout: 60)
            #expect(served.succeeded, "\(served)")
            #expect(!FileManager.default.fileExists(atPath: images + "/lazy-pages.socket"))
            try #require(fixture.waitRestored(timeout: 30), "pid \(pid) did not come back: \(describeProcess(pid))")
            kill(pid, SIGTERM)
            #expect(waitUntil(timeout: 30) { !pidExists(pid) })
            expectPass(fixture)
        }
    }
}

/// Bytes a folder's regular files take on disk (holes do not count).
private func allocatedBytes(_ path: String) -> UInt64 {
    var total: UInt64 = 0
    for name in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] {
        var st = stat()
        if lstat(path + "/" + name, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG { total += UInt64(st.st_blocks) * 512 }
    }
    return total
}

/// The host pid of the process called `name` whose pid in its own (inner) namespace is `inner`.
private func hostPid(ofInner inner: pid_t, named name: String) -> pid_t? {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    for entry in entries {
        guard let candidate = pid_t(entry), candidate != inner,
              let text = FileManager.default.contents(atPath: "/proc/\(entry)/status").map({ String(decoding: $0, as: UTF8.self) }),
              text.contains("Name:\t\(name)\n") else { continue }
        let nspid = text.split(separator: "\n").first { $0.hasPrefix("NSpid:") }?.split(separator: "\t").dropFirst().compactMap { pid_t($0) }
        if let nspid, nspid.count == 2, nspid[0] == candidate, nspid[1] == inner { return candidate }
    }
    return nil
}

/// Descriptor numbers of a process and what they point at.
/// Each open descriptor of `pid` and what its /proc link names.
func descriptors(_ pid: pid_t) -> [Int32: String] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
    var result: [Int32: String] = [:]
    for name in names {
        guard let fd = Int32(name) else { continue }
        result[fd] = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(name)")) ?? "?"
    }
    return result
}

/// The figures lazy loading wrote into stats-restore, once it has ended.
private func lazyStatistics(_ images: String, timeout: Double) -> [String: Any]? {
    var found: [String: Any]?
    waitUntil(timeout: timeout, interval: 0.05) {
        guard let data = FileManager.default.contents(atPath: images + "/stats-restore"),
              let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let lazy = json["lazy"] as? [String: Any] else { return false }
        found = lazy
        return true
    }
    return found
}

/// start → READY → dump (kills) → restore --lazy-pages → same pid back, with
/// the same descriptors (no userfaultfd left in it) → SIGTERM → PASS; cryo
/// (or with -d its loader) ends once everything is in, and stats-restore says
/// pages were loaded lazily.
/// `runFor` seconds the restored process runs before SIGTERM (so it does more while pages are missing).
private func lazyRoundTrip(_ name: String, detached: Bool, environment: [String: String] = [:], expectPushed: Bool = true,
                           runFor: Double = 0, dumpArguments: [String] = []) throws {
    let scratch = try Scratch("\(name)-lazy")
    defer { scratch.remove() }
    let fixture = try Fixture(name, in: scratch)
    defer { fixture.cleanUp() }
    try fixture.waitReady()
    let pid = fixture.pid
    let timeout = cryoTimeout(for: name)
    let before = descriptors(pid)

    let images = scratch.file("img")
    let dump = try cryo(["dump", "-t", "\(pid)", "-D", images] + dumpArguments, in: scratch, timeout: timeout, reaping: fixture)
    try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
    let original = fixture.reapOriginal(timeout: 20)
    try #require(original != nil, "pid \(pid) still runs after `cryo dump` (\(describeProcess(pid)))")
    try #require(!pidExists(pid), "pid \(pid) still exists after the dump: \(describeProcess(pid))")

    var foreground: CryoProcess?
    defer { foreground?.stop() }
    if detached {
        let restore = try cryo(["restore", "-D", images, "-d", "--lazy-pages"], in: scratch, timeout: timeout, environment: environment)
        try #require(restore.succeeded, "\(restore)\n\(fixture.report)")
        try #require(fixture.waitRestored(timeout: 30), "pid \(pid) is not running after `cryo restore -d --lazy-pages` (\(describeProcess(pid)))\n\(restore)")
    } else {
        let restore = try CryoProcess(["restore", "-D", images, "--lazy-pages"], in: scratch, environment: environment)
        foreground = restore
        try #require(fixture.waitRestored(timeout: timeout) { restore.isRunning },
                     "pid \(pid) did not come back running \(name) (\(describeProcess(pid)))\n\(restore.wait(timeout: 1))\n\(fixture.report)")
    }
    let after = descriptors(pid)
    #expect(after.keys.sorted() == before.keys.sorted(), "descriptors before the dump \(before), after the lazy restore \(after)")
    #expect(!after.values.contains { $0.contains("userfaultfd") }, "the restored process holds a userfaultfd: \(after)")

    sleepSeconds(runFor)
    kill(pid, SIGTERM)
    if let restore = foreground {
        let result = restore.wait(timeout: 120)
        #expect(result.status == .exited(0), "cryo restore --lazy-pages should exit with the fixture's status 0\n\(result)\n\(fixture.report)")
    } else {
        #expect(waitUntil(timeout: 60) { !pidExists(pid) }, "restored pid \(pid) did not exit after SIGTERM (\(describeProcess(pid)))")
    }
    expectPass(fixture)

    let lazy = lazyStatistics(images, timeout: 120)
    try #require(lazy != nil, "stats-restore has no lazy figures: loading never ended\n\(readText(images + "/stats-restore"))")
    let onDemand = lazy!["pagesOnDemand"] as? Int ?? 0, pushed = lazy!["pagesPushed"] as? Int ?? 0
    #expect(onDemand + pushed > 0, "no page was loaded lazily: \(lazy!)")
    if !expectPushed { #expect(onDemand > 0, "nothing was loaded on demand: \(lazy!)") }
}
