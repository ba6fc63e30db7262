// cryo migrate / cryo receive between two network namespaces the test makes
// (a veth pair, an address each): the dirty fixture writes memory all the time
// and checks every page itself once it runs on the destination. A destination
// that dies, a connection that drops and a wrong key must each leave the
// source running and passing, and so must VmFlags that change between their
// reading (while the tree runs) and the freeze.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("cryo migrate and cryo receive")
    struct MigrateTests {
        @Test("a tree that keeps writing moves to the other namespace and passes its checks there",
              arguments: ["insecure", "key", "lazy-pages"])
        func migrates(mode: String) throws {
            let scratch = try Scratch("migrate")
            defer { scratch.remove() }
            let net = try NetPair()
            defer { net.remove() }
            let security = mode == "insecure" ? ["--insecure"] : try newKey(in: scratch)
            let fixture = try Fixture("dirty", arguments: ["128"], in: scratch, launcher: net.fixtureLauncher)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            // With a key, both ends also keep their statistics: stats-dump at the source, the image and stats-restore here.
            let sourceStats = scratch.file("source"), received = scratch.file("received")
            let statsOptions: (source: [String], destination: [String]) = mode == "key" ? (["-D", sourceStats], ["-D", received]) : ([], [])
            let receive = try net.receive(security + ["--pidns", "-v"] + statsOptions.destination, in: scratch)
            defer { receive.stop() }
            let migrate = try CryoProcess(net.launcherA + ["--to", "\(net.addressB):\(net.port)", "-t", "\(fixture.pid)", "-v"] + security
                                            + (mode == "lazy-pages" ? ["--lazy-pages"] : []) + statsOptions.source,
                                          in: scratch, launcher: net.cryoInA())
            let result = migrate.wait(timeout: 120, reaping: fixture)
            try #require(result.succeeded, "\(result)\n\(receive.wait(timeout: 10))\n\(fixture.report)")
            #expect(result.stdout.contains("round 2"), "expected at least two pre-copy rounds\n\(result)")
            // The source tree is gone (killed once the destination said it runs).
            try #require(fixture.reapOriginal(timeout: 20) != nil, "pid \(fixture.pid) still runs on the source after the migration")
            let receiveResult = receive.wait(timeout: 60)
            try #require(receiveResult.succeeded, "\(receiveResult)")
            let restored = try #require(restoredPid(receiveResult.stdout), "no restored pid in\n\(receiveResult)")
            if mode == "key" {
                try checkStatistics(source: sourceStats, destination: received)
                // The kept folder is an image once the tree runs: no longer marked incomplete, and readable.
                #expect(!FileManager.default.fileExists(atPath: received + "/dump-incomplete"), "\(readText(received + "/dump-incomplete"))")
                let show = try cryo(["show", received], in: scratch, timeout: 60)
                #expect(show.succeeded, "the received image does not read back\n\(show)")
            }
            defer { if ProcStatus(pid: restored)?.name == "dirty" { kill(restored, SIGKILL) } }
            #expect(ProcStatus(pid: restored)?.name == "dirty", "pid \(restored) is not the restored fixture: \(describeProcess(restored))")
            sleepSeconds(0.3)  // it writes on at the destination
            kill(restored, SIGTERM)
            #expect(waitUntil(timeout: 30) { fixture.lastLine == "PASS" || fixture.lastLine?.hasPrefix("FAIL") == true },
                    "the migrated fixture did not check itself\n\(fixture.report)")
            expectPass(fixture, "\(result)\n\(receiveResult)")
            if mode == "lazy-pages" {
                // Post-copy: pages written since the last round came after the start (unless none were written:
                // on a busy machine the fixture may not run between the last round and the freeze).
                let noneLeft = result.stdout.contains(" pages scanned, 0 read")
                #expect(noneLeft || (receiveResult.stdout.contains("post-copy: ") && result.stdout.contains("post-copy: ")),
                        "expected pages sent after the start\n\(result)\n\(receiveResult)")
            }
        }

        @Test("post-copy: losing the source after the start kills the destination tree (one line); a cut link kills both",
              arguments: ["kill-source", "cut"])
        func sourceLostAfterStart(how: String) throws {
            // One round: pages written during it are surely left for after the start.
            try withHalfLoadedMigration("migrate-postcopy-\(how)", receive: ["--pidns"],
                                        migrate: ["--lazy-pages", "--display-stats", "--max-rounds", "1"]) { net, fixture, receive, migrate, started in
                // Ended already: nothing was left for after the start, so there is no half-loaded tree to lose.
                try #require(receive.isRunning, "receive ended at the start: no pages left for post-copy?\n\(receive.wait(timeout: 5))\n\(migrate.wait(timeout: 5))")
                sleepSeconds(0.3)
                #expect(ProcStatus(pid: started)?.name == "dirty", "the tree should run half-loaded until the source is lost")
                if how == "kill-source" {
                    // The whole source side goes: its frozen tree and cryo.
                    kill(fixture.pid, SIGKILL)
                    kill(migrate.pid, SIGKILL)
                } else {
                    net.cut()
                }
                let received = receive.wait(timeout: 60)
                #expect(received.failed && received.stderrLines.count == 1 && received.stderr.contains("source"),
                        "the destination should fail in one line naming the source\n\(received)")
                #expect(waitUntil(timeout: 20) { ProcStatus(pid: started).map { $0.state == "Z" || $0.name != "dirty" } ?? true },
                        "pid \(started) runs on without the pages still at the source: \(describeProcess(started))")
                if how == "cut" {
                    let result = migrate.wait(timeout: 60, reaping: fixture)
                    #expect(result.failed && result.stderrLines.count == 1 && result.stderr.contains("after it started the tree"),
                            "the source should fail in one line\n\(result)")
                    // Neither side holds all of the memory: the source tree is killed too, not released.
                    #expect(fixture.reapOriginal(timeout: 20) != nil, "pid \(fixture.pid) still runs on the source")
                }
                #expect(!(fixture.lastLine == "PASS"), "no half-loaded tree may run to its checks\n\(fixture.report)")
            }
        }

        @Test("eager: the tree starts before its memory is loaded, from pages already here, and needs no source after the start")
        func eagerStartsFromLocalPages() throws {
            try withHalfLoadedMigration("migrate-eager-local", receive: ["--pidns", "-v"], migrate: []) { net, fixture, receive, migrate, started in
                // The source goes at once, and the link with it: nothing may come from there any more.
                kill(migrate.pid, SIGKILL)
                net.cut()
                kill(fixture.pid, SIGKILL)
                // Still loading: the tree was started before its memory was in.
                #expect(receive.isRunning, "receive ended at the start: the memory was loaded before the tree ran\n\(receive.wait(timeout: 5))")
                sleepSeconds(0.5)  // it writes on at the destination, half-loaded
                #expect(ProcStatus(pid: started)?.name == "dirty", "pid \(started) died without its source: \(describeProcess(started))\n\(receive.stderrSoFar)")
                // Its check touches every page: each must come from this host's pages, none as zeros.
                kill(started, SIGTERM)
                #expect(waitUntil(timeout: 60) { fixture.lastLine == "PASS" || fixture.lastLine?.hasPrefix("FAIL") == true },
                        "the migrated fixture did not check itself\n\(fixture.report)")
                let received = receive.wait(timeout: 60)
                #expect(received.succeeded, "\(received)")
                expectPass(fixture, "\(received)")
            }
        }

        @Test("CRIU's spelling: dump --page-server --address --port sends the pages to cryo page-server -D DIR")
        func pageServer() throws {
            let scratch = try Scratch("migrate-pageserver")
            defer { scratch.remove() }
            let net = try NetPair()
            defer { net.remove() }
            let fixture = try Fixture("dirty", arguments: ["32"], in: scratch, launcher: net.fixtureLauncher)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let served = scratch.file("served"), local = scratch.file("local")
            let server = try CryoProcess(["page-server", "--address", net.addressB, "--port", "\(net.port)", "-D", served], in: scratch,
                                         launcher: ["/usr/bin/nsenter", "--net=/run/netns/\(net.b)"])
            defer { server.stop() }
            try #require(waitUntil(timeout: 20) { !server.isRunning || net.tcpStates(server.pid).contains("0A") }, "page-server does not listen")
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", local, "--page-server", "--address", net.addressB, "--port", "\(net.port)"],
                                in: scratch, reaping: fixture, launcher: net.cryoInA())
            try #require(dump.succeeded, "\(dump)\n\(server.wait(timeout: 10))")
            try #require(fixture.reapOriginal(timeout: 20) != nil, "pid \(fixture.pid) still runs after the dump")
            #expect(server.wait(timeout: 30).succeeded, "the page server should exit 0 once it has the pages")
            let localFiles = (try? FileManager.default.contentsOfDirectory(atPath: local)) ?? []
            let servedFiles = (try? FileManager.default.contentsOfDirectory(atPath: served)) ?? []
            #expect(!localFiles.contains { $0.hasPrefix("pages-") }, "pages files stayed with the dump: \(localFiles)")
            #expect(servedFiles.contains("pages-\(fixture.pid).img") && servedFiles.allSatisfy { $0.hasPrefix("pages-") },
                    "the page server holds \(servedFiles)")
            // As with CRIU, the rest of the image joins the pages for the restore.
            for name in localFiles { try FileManager.default.copyItem(atPath: local + "/" + name, toPath: served + "/" + name) }
            let restore = try CryoProcess(["restore", "-D", served], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore, timeout: 60, whileRunning: { sleepSeconds(0.3) })
        }

        @Test("a wrong key is refused before any image byte; the source runs on")
        func wrongKey() throws {
            let scratch = try Scratch("migrate-key")
            defer { scratch.remove() }
            let net = try NetPair()
            defer { net.remove() }
            let ours = try newKey(in: scratch)
            let theirs = try newKey(in: scratch)
            let fixture = try Fixture("dirty", arguments: ["16"], in: scratch, launcher: net.fixtureLauncher)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = scratch.file("received")
            let receive = try net.receive(theirs + ["-D", images], in: scratch)
            defer { receive.stop() }
            let result = try cryo(net.launcherA + ["--to", "\(net.addressB):\(net.port)", "-t", "\(fixture.pid)"] + ours,
                                  in: scratch, reaping: fixture, launcher: net.cryoInA())
            #expect(result.failed && result.stderrLines.count == 1 && result.stderr.contains("key"),
                    "a wrong key should fail the migration in one line naming the key\n\(result)")
            let received = receive.wait(timeout: 30)
            #expect(received.failed && received.stderrLines.count == 1 && received.stderr.contains("key"),
                    "the destination should refuse in one line naming the key\n\(received)")
            let files = (try? FileManager.default.contentsOfDirectory(atPath: images)) ?? []
            #expect(files.isEmpty, "the destination wrote image files for an unauthenticated peer: \(files)")
            try expectRunningAndPassing(fixture)
        }

        @Test("flags changed between their reading and the freeze fail the confirmation: the source runs on, both sides say why",
              arguments: ["eager", "lazy-pages"])
        func flagsChangedBeforeFreeze(mode: String) throws {
            let scratch = try Scratch("migrate-flags-\(mode)")
            defer { scratch.remove() }
            let net = try NetPair()
            defer { net.remove() }
            defer { for pid in net.processesInB(named: "dirty") { kill(pid, SIGKILL) } }  // a copy released by mistake
            let security = try newKey(in: scratch)
            let fixture = try Fixture("dirty", arguments: ["32"], in: scratch, launcher: net.fixtureLauncher)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = scratch.file("received")
            let receive = try net.receive(security + ["--pidns", "-D", images], in: scratch)
            defer { receive.stop() }
            // Stopped right after the VmFlags were read, the tree still running here.
            let migrate = try CryoProcess(net.launcherA + ["--to", "\(net.addressB):\(net.port)", "-t", "\(fixture.pid)"] + security
                                            + (mode == "lazy-pages" ? ["--lazy-pages"] : []),
                                          in: scratch, environment: ["CRYO_STOP_AT": "flags read"], launcher: net.cryoInA())
            defer { migrate.stop() }
            let stopped = waitUntil(timeout: 60) { ProcStatus(pid: migrate.pid)?.state == "T" || !migrate.isRunning }
            try #require(stopped && migrate.isRunning, "cryo migrate did not stop after reading the flags\n\(migrate.wait(timeout: 1))")
            // One mapping's advice changes, not its range: only the confirmation can notice.
            fixture.signal(SIGUSR2)
            try #require(waitUntil(timeout: 20) { fixture.lines.contains("ADVISED 1") }, "the fixture did not change its flags\n\(fixture.report)")
            kill(migrate.pid, SIGCONT)
            let result = migrate.wait(timeout: 120, reaping: fixture)
            #expect(result.failed && result.stderrLines.count == 1 && result.stderr.contains("changed its flags"),
                    "the source should fail in one line naming the changed flags\n\(result)")
            let received = receive.wait(timeout: 60)
            #expect(received.failed && received.stderrLines.count == 1 && received.stderr.contains("changed its flags"),
                    "the destination should fail in one line naming the changed flags\n\(received)")
            // Its copy of the image holds the flags from before: restore refuses it.
            #expect(readText(images + "/dump-incomplete").contains("changed its flags"), "the received folder is not marked incomplete")
            // The tree the destination restored meanwhile never ran: it is gone.
            #expect(waitUntil(timeout: 20) { net.processesInB(named: "dirty").allSatisfy { ProcStatus(pid: $0)?.state == "Z" } },
                    "a restored copy is left on the destination: \(net.processesInB(named: "dirty").map(describeProcess))")
            try expectRunningAndPassing(fixture)
        }

        @Test("a killed destination or a dropped connection leaves the source running and passing", arguments: ["kill", "drop"])
        func destinationLost(how: String) throws {
            let scratch = try Scratch("migrate-\(how)")
            defer { scratch.remove() }
            let leftovers = KilledCryoLeftovers()
            defer { leftovers.remove() }
            let net = try NetPair()
            defer { net.remove() }
            let security = try newKey(in: scratch)
            let fixture = try Fixture("dirty", arguments: ["512"], in: scratch, launcher: net.fixtureLauncher)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let receive = try net.receive(security + ["--pidns"], in: scratch)
            defer { receive.stop() }
            let migrate = try CryoProcess(net.launcherA + ["--to", "\(net.addressB):\(net.port)", "-t", "\(fixture.pid)"] + security,
                                          in: scratch, launcher: net.cryoInA())
            defer { migrate.stop() }
            // Lost while pages are on their way.
            try #require(waitUntil(timeout: 30) { net.established(receive.pid) }, "the migration never connected")
            sleepSeconds(0.2)
            if how == "kill" { kill(receive.pid, SIGKILL) } else { net.cut() }
            let result = migrate.wait(timeout: 60, reaping: fixture)
            #expect(result.failed && result.stderrLines.count == 1, "the source should fail in one line\n\(result)")
            if how == "drop" {
                let received = receive.wait(timeout: 60)
                #expect(received.failed && received.stderrLines.count == 1, "the destination should fail in one line\n\(received)")
            }
            try expectRunningAndPassing(fixture)
        }
    }
}

/// stats-dump of `migrate -D` and stats-restore of `receive -D`: the rounds with their bytes, frozen time and downtime.
private func checkStatistics(source: String, destination: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    func json(_ path: String) throws -> [String: Any] {
        let data = try #require(FileManager.default.contents(atPath: path), "\(path) is missing", sourceLocation: sourceLocation)
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any], "\(path) is no JSON object", sourceLocation: sourceLocation)
    }
    let dump = try json(source + "/stats-dump")
    let rounds = (dump["rounds"] as? [[String: Any]]) ?? []
    let frozen = dump["frozenSeconds"] as? Double ?? 0, downtime = dump["downtimeSeconds"] as? Double ?? 0
    #expect(rounds.count >= 2 && rounds.allSatisfy { ($0["bytes"] as? Int ?? -1) >= 0 } && (rounds.first?["bytes"] as? Int ?? 0) > 1 << 20,
            "stats-dump rounds: \(rounds)", sourceLocation: sourceLocation)
    #expect(frozen > 0 && downtime > 0 && downtime <= frozen + 1e-6, "stats-dump frozen \(frozen) s, downtime \(downtime) s", sourceLocation: sourceLocation)
    #expect(dump["dump"] is [String: Any], "stats-dump lacks the final dump's figures: \(dump)", sourceLocation: sourceLocation)
    let restore = try json(destination + "/stats-restore")
    let migration = restore["migration"] as? [String: Any] ?? [:]
    let received = migration["roundBytes"] as? [Int] ?? []
    #expect(received.count == rounds.count && (received.first ?? 0) >= (rounds.first?["bytes"] as? Int ?? .max),
            "stats-restore rounds \(received) against the source's \(rounds)", sourceLocation: sourceLocation)
    #expect((migration["frozenImageBytes"] as? Int ?? 0) > 0, "stats-restore: \(migration)", sourceLocation: sourceLocation)
}

/// The private folders (/dev/shm/cryo-migrate-*, cryo-receive-*) of a cryo the test kills on purpose
/// stay behind: those that appear while the test runs are removed at its end.
private final class KilledCryoLeftovers {
    static let root = "/dev/shm"
    let before: Set<String>
    init() { before = KilledCryoLeftovers.current() }
    static func current() -> Set<String> {
        Set(((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).filter {
            $0.hasPrefix("cryo-migrate-") || $0.hasPrefix("cryo-receive-")
        })
    }
    /// Only folders of a cryo that is gone ("cryo-migrate-PID-XXXXXX"): a migration of another run on the machine goes on.
    func remove() {
        for name in KilledCryoLeftovers.current().subtracting(before) {
            let owner = name.split(separator: "-").dropFirst(2).first.flatMap { pid_t($0) }
            guard let owner, kill(owner, 0) != 0 && errno == ESRCH else { continue }
            try? FileManager.default.removeItem(atPath: "\(KilledCryoLeftovers.root)/\(name)")
        }
    }
}

/// A tree migrated from A to B that runs there half-loaded: neither end pushes, so pages go in only
/// when the tree touches them, for as long as `body` likes, and any page it still needs from the source
/// is missed once the source is gone. `body` gets the restored pid, which is killed afterwards.
private func withHalfLoadedMigration(_ name: String, receive receiveOptions: [String], migrate migrateOptions: [String],
                                     _ body: (NetPair, Fixture, CryoProcess, CryoProcess, pid_t) throws -> Void) throws {
    let scratch = try Scratch(name)
    defer { scratch.remove() }
    let leftovers = KilledCryoLeftovers()
    defer { leftovers.remove() }
    let net = try NetPair()
    defer { net.remove() }
    let security = try newKey(in: scratch)
    let fixture = try Fixture("dirty", arguments: ["128"], in: scratch, launcher: net.fixtureLauncher)
    defer { fixture.cleanUp() }
    try fixture.waitReady()
    let noPush = ["CRYO_LAZY_NO_PUSH": "1"]
    let receive = try net.receive(security + receiveOptions, in: scratch, environment: noPush)
    defer { receive.stop() }
    let migrate = try CryoProcess(net.launcherA + ["--to", "\(net.addressB):\(net.port)", "-t", "\(fixture.pid)"] + migrateOptions + security,
                                  in: scratch, environment: noPush, launcher: net.cryoInA())
    defer { migrate.stop() }
    // Started: a `dirty` in B's network namespace, no longer traced by cryo.
    var restored: pid_t?
    try #require(waitUntil(timeout: 60) {
        restored = net.processesInB(named: "dirty").first { ProcStatus(pid: $0)?.tracerPid == 0 }
        return restored != nil || !receive.isRunning
    }, "the tree never started on the destination\n\(migrate.stderrSoFar)\n\(receive.stderrSoFar)")
    let started = try #require(restored, "receive ended before the tree started\n\(receive.wait(timeout: 5))\n\(migrate.wait(timeout: 5))")
    defer { kill(started, SIGKILL) }
    try body(net, fixture, receive, migrate, started)
}

/// A fresh key file in `scratch`, as `--key FILE`.
private func newKey(in scratch: Scratch) throws -> [String] {
    let path = scratch.unique("key")
    let made = try cryo(["receive", "--new-key", path], in: scratch)
    try #require(made.succeeded, "\(made)")
    var st = stat()
    try #require(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o600, "key file \(path) is not 0600")
    return ["--key", path]
}

/// "restored pid X as pid Y in a new pid namespace ..." → Y; "restored pid X ..." → X.
func restoredPid(_ output: String) -> pid_t? {
    for line in output.split(separator: "\n") where line.hasPrefix("restored pid ") {
        let words = line.split(separator: " ")
        if let at = words.firstIndex(of: "as"), at + 2 < words.count { return pid_t(words[at + 2]) }
        return pid_t(words[2])
    }
    return nil
}

/// The original fixture still runs untraced, writes on, and passes its checks on SIGTERM.
private func expectRunningAndPassing(_ fixture: Fixture, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let status = ProcStatus(pid: fixture.pid)
    try #require(status != nil && fixture.pollOriginal() == nil, "pid \(fixture.pid) is gone\n\(fixture.report)", sourceLocation: sourceLocation)
    #expect(waitUntil(timeout: 10) { ProcStatus(pid: fixture.pid).map { $0.isRunning && $0.tracerPid == 0 } ?? false },
            "pid \(fixture.pid) is not running freely: \(describeProcess(fixture.pid))", sourceLocation: sourceLocation)
    sleepSeconds(0.3)
    fixture.signal(SIGTERM)
    #expect(fixture.reapOriginal(timeout: 30) == .exited(0), "\(fixture.report)", sourceLocation: sourceLocation)
    expectPass(fixture, sourceLocation: sourceLocation)
}

/// Two network namespaces joined by a veth pair: A (the source) and B (the destination).
final class NetPair {
    nonisolated(unsafe) static var counter = 0  // the suite runs serialized
    let a: String, b: String, vethA: String, vethB: String
    let addressA = "10.77.0.1", addressB = "10.77.0.2"
    let port = 7460

    init() throws {
        NetPair.counter += 1
        let tag = "\(getpid() % 100_000)x\(NetPair.counter)"
        a = "cryo-mA-\(tag)"
        b = "cryo-mB-\(tag)"
        vethA = "cmA\(tag)"
        vethB = "cmB\(tag)"
        do {
            try ip(["netns", "add", a])
            try ip(["netns", "add", b])
            try ip(["link", "add", vethA, "type", "veth", "peer", "name", vethB])
            try ip(["link", "set", vethA, "netns", a])
            try ip(["link", "set", vethB, "netns", b])
            for (ns, dev, address) in [(a, vethA, addressA), (b, vethB, addressB)] {
                try ip(["-n", ns, "addr", "add", "\(address)/24", "dev", dev])
                try ip(["-n", ns, "link", "set", dev, "up"])
                try ip(["-n", ns, "link", "set", "lo", "up"])
            }
        } catch {
            remove()
            throw error
        }
    }

    /// `cryo migrate` run inside A. nsenter switches the network namespace only (ip netns exec would
    /// give cryo a mount namespace of its own, and cryo dumps only trees in its own namespaces).
    var launcherA: [String] { ["migrate"] }
    func cryoInA() throws -> [String] { ["/usr/bin/nsenter", "--net=/run/netns/\(a)"] }
    /// A fixture runs on host A.
    var fixtureLauncher: [String] { ["/usr/bin/nsenter", "--net=/run/netns/\(a)"] }

    /// `cryo receive --listen B:port ...` inside B, once it listens.
    func receive(_ options: [String], in scratch: Scratch, environment: [String: String] = [:]) throws -> CryoProcess {
        let process = try CryoProcess(["receive", "--listen", "\(addressB):\(port)"] + options, in: scratch, environment: environment,
                                      launcher: ["/usr/bin/nsenter", "--net=/run/netns/\(b)"])
        let listening = waitUntil(timeout: 20) { !process.isRunning || self.tcpStates(process.pid).contains("0A") }
        try #require(listening && process.isRunning, "cryo receive does not listen\n\(process.wait(timeout: 5))")
        return process
    }

    /// States of TCP sockets on our port in `pid`'s network namespace (hex, as /proc/net/tcp has them).
    func tcpStates(_ pid: pid_t) -> [String] {
        let hexPort = String(format: "%04X", port)
        return readText("/proc/\(pid)/net/tcp").split(separator: "\n").dropFirst().compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count > 3 else { return nil }
            return fields[1].hasSuffix(":\(hexPort)") ? String(fields[3]) : nil
        }
    }

    func established(_ pid: pid_t) -> Bool { tcpStates(pid).contains("01") }

    /// Processes called `name` in B's network namespace (by its name, not through a process of B's:
    /// `cryo receive` may have ended already when the restored tree is looked for).
    func processesInB(named name: String) -> [pid_t] {
        var st = stat()
        guard stat("/run/netns/\(b)", &st) == 0, let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        let namespace = "net:[\(st.st_ino)]"
        return entries.compactMap { pid_t($0) }.filter {
            ProcStatus(pid: $0)?.name == name && (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\($0)/ns/net")) == namespace
        }
    }

    /// Drops the link: nothing more gets through in either direction.
    func cut() {
        try? ip(["-n", a, "link", "set", vethA, "down"])
    }

    func remove() {
        try? ip(["netns", "del", a])
        try? ip(["netns", "del", b])
    }

    private func ip(_ arguments: [String]) throws {
        let log = "/tmp/cryo-netpair-\(getpid()).log"
        let pid = try spawnProcess("/usr/sbin/ip", arguments, stdoutPath: log)
        let status = reap(pid, timeout: 20)
        defer { unlink(log) }
        guard status == .exited(0) else { throw HarnessError("ip \(arguments.joined(separator: " ")): \(status.map(\.description) ?? "timed out")\n\(readText(log))") }
    }
}
