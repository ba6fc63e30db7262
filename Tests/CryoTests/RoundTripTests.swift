// Dump a fixture (killing it), restore it under the same pid, then let it
// check its own state: it must say PASS.

import Foundation
import Glibc
import Testing

/// The fixtures that must survive a checkpoint/restore round trip.
let roundTripFixtures = ["counter", "vector", "bigmem", "files", "pipe", "signals", "events", "seccomp", "locks", "ptimers", "unix", "udp", "tcp", "memfdmap", "inotify", "pty", "memstate", "noreserve", "restartblock", "mlocked", "shmemprivate", "seccompstrict"]

extension EndToEnd {
    @Suite("dump, kill, restore")
    struct RoundTripTests {
        @Test("restore in the foreground", arguments: roundTripFixtures)
        func foreground(_ name: String) throws {
            try roundTrip(name, detached: false)
        }

        /// /proc shows mlockall(MCL_FUTURE) nowhere: the parasite finds it with a mapping of its own.
        @Test("mlockall(MCL_FUTURE) comes back: a mapping made after the restore is locked", arguments: ["future", "future-onfault"])
        func lockFuture(_ mode: String) throws {
            try selfCheckingRoundTrip("mlocked", arguments: [mode], scratch: "mlocked-\(mode)")
        }

        @Test("a mapping sealed with mseal comes back sealed, with its pages")
        func sealed() throws {
            let probe = try Scratch("mlocked-sealed-probe")
            defer { probe.remove() }
            let fixture = try Fixture("mlocked", arguments: ["sealed"], in: probe)
            _ = waitUntil(timeout: 20) { fixture.lines.contains("READY") || fixture.tagged("NOMSEAL") != nil }
            let unsupported = fixture.tagged("NOMSEAL")
            fixture.cleanUp()
            if let unsupported { try Test.cancel(Comment(rawValue: "no mseal here: \(unsupported.joined(separator: " "))")) }
            try selfCheckingRoundTrip("mlocked", arguments: ["sealed"], scratch: "mlocked-sealed")
        }

        /// Guard pages read as EIO: the dump must leave them out, and the restore install them again once the pages are in.
        @Test("guard regions (MADV_GUARD_INSTALL) come back, eager, from a compressed image and lazily",
              arguments: ["eager", "compressed", "lazy"])
        func guardRegions(_ mode: String) throws {
            let probe = try Scratch("guards-probe-\(mode)")
            defer { probe.remove() }
            let fixture = try Fixture("guards", arguments: [], in: probe)
            _ = waitUntil(timeout: 20) { fixture.lines.contains("READY") || fixture.tagged("NOGUARD") != nil }
            let unsupported = fixture.tagged("NOGUARD")
            fixture.cleanUp()
            if let unsupported { try Test.cancel(Comment(rawValue: "no guard regions here: \(unsupported.joined(separator: " "))")) }
            try selfCheckingRoundTrip("guards", arguments: [], scratch: "guards-\(mode)", dumpOptions: mode == "compressed" ? ["--compress"] : [],
                                      restoreOptions: mode == "lazy" ? ["--lazy-pages"] : [])
        }

        @Test("restore detached (-d)", arguments: ["counter", "signals"])
        func detached(_ name: String) throws {
            try roundTrip(name, detached: true)
        }

        @Test("show --json prints JSON")
        func showJSON() throws {
            let scratch = try Scratch("show")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()

            let images = scratch.file("img")
            let dump = try cryo(["dump", "--leave-running", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")

            let show = try cryo(["show", images, "--json"], in: scratch, timeout: 60)
            #expect(show.succeeded, "\(show)")
            let parsed = try? JSONSerialization.jsonObject(with: Data(show.stdout.utf8), options: [.fragmentsAllowed])
            #expect(parsed != nil, "show --json output is not JSON:\n\(show.stdout.prefix(2000))")

            fixture.signal(SIGTERM)
            let exit = fixture.reapOriginal(timeout: 30)
            #expect(exit == .exited(0), "\(fixture.report)")
            expectPass(fixture)
        }
    }
}

/// start → READY → dump (kills) → original gone → restore → same pid back →
/// SIGTERM → PASS (and, in the foreground, cryo exits with the fixture's 0).
private func roundTrip(_ name: String, detached: Bool) throws {
    let scratch = try Scratch("\(name)-roundtrip")
    defer { scratch.remove() }
    let fixture = try Fixture(name, in: scratch)
    defer { fixture.cleanUp() }
    try fixture.waitReady()
    let pid = fixture.pid
    let timeout = cryoTimeout(for: name)

    // A pty keeps its /dev/pts index when it is free at restore, as it is here.
    let terminals = descriptors(pid).filter { $0.value.hasPrefix("/dev/pts/") }
    #expect(name != "pty" || !terminals.isEmpty, "the pty fixture holds no /dev/pts slave: \(descriptors(pid))")

    // Dump: cryo kills the process; it is our child, so we reap it.
    let images = scratch.file("img")
    let dump = try cryo(["dump", "-t", "\(pid)", "-D", images], in: scratch, timeout: timeout, reaping: fixture)
    try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
    let original = fixture.reapOriginal(timeout: 20)
    try #require(original != nil, "pid \(pid) still runs after `cryo dump` without --leave-running (\(describeProcess(pid)))")
    if case .signaled = original! {} else {
        Issue.record("the dumped process should have been killed, but ended with \(original!)\n\(fixture.report)")
    }
    #expect(!fixture.lines.contains("PASS") && !fixture.lines.contains(where: { $0.hasPrefix("FAIL") }),
            "the fixture ran its checks before restore:\n\(fixture.report)")
    try #require(!pidExists(pid), "pid \(pid) still exists after the dump: \(describeProcess(pid))")

    if name == "bigmem" {
        checkBigmemImageSize(images, fixture: fixture)
    }

    if detached {
        let restore = try cryo(["restore", "-D", images, "-d"], in: scratch, timeout: timeout)
        try #require(restore.succeeded, "\(restore)\n\(fixture.report)")
        try #require(fixture.waitRestored(timeout: 30),
                     "pid \(pid) is not running the restored \(name) after `cryo restore -d` returned (\(describeProcess(pid)))\n\(restore)")
        kill(pid, SIGTERM)
        let gone = waitUntil(timeout: 60) { !pidExists(pid) }
        #expect(gone, "restored pid \(pid) did not exit within 60 s of SIGTERM (\(describeProcess(pid)))\n\(fixture.report)")
        expectPass(fixture, "\(restore)")
        return
    }

    // Foreground: cryo stays, waits for the restored process and passes its status on.
    let restore = try CryoProcess(["restore", "-D", images], in: scratch)
    defer { restore.stop() }
    try expectRestoredAndPassing(fixture, by: restore, timeout: timeout, whileRunning: {
        let now = descriptors(pid).filter { $0.value.hasPrefix("/dev/pts/") }
        #expect(now == terminals, "pty slaves after restore \(now), before the dump \(terminals)")
    })
    #expect(!pidExists(pid), "pid \(pid) still exists after cryo restore returned (\(describeProcess(pid)))")
}
