// `cryo restore --pidns`: the image's pids are still taken (the original was
// dumped with --leave-running and keeps running), so a plain restore must be
// refused, while a restore into a new pid namespace must bring every process
// back under its old pid as seen from inside that namespace. cryo's child is
// the namespace's init (pid 1 inside), the restored root is the init's child.
// Both copies then check themselves: the log gets two PASS lines. Dumping the copy
// again is refused: the image would hold host pids, not the ones it knows.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("restore into a new pid namespace")
    struct PidNamespaceTests {
        @Test("restore --pidns next to the still running original", arguments: ["counter", "tree"])
        func restoreBesideOriginal(_ name: String) throws {
            try pidNamespaceRoundTrip(name, arguments: name == "tree" ? ["30"] : [])
        }
    }
}

/// One process of the restored tree as we see it from outside the namespace.
private struct NamespacedProcess {
    let hostPid: pid_t
    let ids: [pid_t]       // NSpid: host, inner
    let pgids: [pid_t]     // NSpgid
    let sids: [pid_t]      // NSsid
    let hostParent: pid_t

    var innerPid: pid_t? { ids.count == 2 ? ids[1] : nil }
    var innerPgid: pid_t? { pgids.count == 2 ? pgids[1] : nil }
    var innerSid: pid_t? { sids.count == 2 ? sids[1] : nil }

    init?(_ pid: pid_t) {
        guard let ids = ProcIDs(pid: pid) else { return nil }
        hostPid = pid
        hostParent = ids.ppid
        self.ids = namespacePids(pid)
        pgids = namespacePids(pid, field: "NSpgid")
        sids = namespacePids(pid, field: "NSsid")
    }
}

private func pidNamespaceRoundTrip(_ name: String, arguments: [String]) throws {
    let scratch = try Scratch("\(name)-pidns")
    defer { scratch.remove() }
    let fixture = try Fixture(name, arguments: arguments, in: scratch)
    let members = TreeMembers(fixture)
    var namespaceInit: pid_t?
    var restore: CryoProcess?
    defer {
        // Killing the namespace's init kills everything inside the namespace.
        if let namespaceInit, namespacePids(namespaceInit).last == 1 { kill(namespaceInit, SIGKILL) }
        restore?.stop()
        members.cleanUp()
    }
    try fixture.waitReady(timeout: 60)
    try members.load()
    let before = try members.snapshot()
    let root = fixture.pid

    let images = scratch.file("img")
    let dump = try cryo(["dump", "--leave-running", "-t", "\(root)", "-D", images], in: scratch, reaping: fixture)
    try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
    try #require(fixture.pollOriginal() == nil, "the original ended during `dump --leave-running`\n\(fixture.report)")

    // Without --pidns the pids are in use: refused, naming the root's pid and its holder.
    let plain = try cryo(["restore", "-D", images], in: scratch, timeout: 60)
    #expect(plain.failed, "restoring over live pids without --pidns should fail\n\(plain)")
    #expect(plain.stderrLines.count == 1, "want exactly one line on stderr\n\(plain)")
    #expect(plain.stderr.contains("in use"), "the error should say the pid is in use\n\(plain)")
    #expect(containsToken(plain.stderr, "\(root)"), "the error should name pid \(root)\n\(plain)")
    #expect(plain.stderr.contains(name), "the error should name the holder's comm \"\(name)\"\n\(plain)")
    #expect(fixture.lines.filter { $0 == "PASS" || $0.hasPrefix("FAIL") }.isEmpty,
            "something ran the fixture's checks:\n\(fixture.report)")

    // With --pidns, in the foreground.
    let process = try CryoProcess(["restore", "-D", images, "--pidns"], in: scratch)
    restore = process
    var restored: [pid_t: NamespacedProcess] = [:]   // by inner pid
    var waitProblems: [String] = []
    let up = waitUntil(timeout: 60, interval: 0.05) {
        guard process.isRunning else { return true }
        waitProblems = []
        let kids = childrenOf(process.pid)
        guard kids.count == 1, let initPid = kids.first else {
            waitProblems.append("cryo (pid \(process.pid)) has children \(kids), want one: the namespace's init")
            return false
        }
        namespaceInit = initPid
        restored = [:]
        for pid in descendantsOf(initPid) {
            guard let p = NamespacedProcess(pid), let inner = p.innerPid else { continue }
            restored[inner] = p
        }
        for pid in members.pids {
            guard let p = restored[pid] else { waitProblems.append("no process with pid \(pid) in the namespace yet"); continue }
            guard let status = ProcStatus(pid: p.hostPid), status.isRunning, status.tracerPid == 0, status.catches(SIGTERM) else {
                waitProblems.append("pid \(pid) (host \(p.hostPid)) not yet running free: \(describeProcess(p.hostPid))")
                continue
            }
        }
        return waitProblems.isEmpty
    }
    guard up, process.isRunning, let initPid = namespaceInit else {
        let result = process.wait(timeout: 5)
        Issue.record("the tree did not come back in a new pid namespace: \(waitProblems.prefix(10).joined(separator: "; "))\n\(result)\n\(fixture.report)")
        return
    }

    // The init: cryo's only child, pid 1 of a namespace that is not ours.
    #expect(namespacePids(initPid).count == 2 && namespacePids(initPid).last == 1,
            "cryo's child \(initPid) should be pid 1 of a new namespace, NSpid is \(namespacePids(initPid))")
    let ourNamespace = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/pid")
    let itsNamespace = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(initPid)/ns/pid")
    #expect(ourNamespace != nil && itsNamespace != nil && ourNamespace != itsNamespace,
            "the init \(initPid) is in pid namespace \(itsNamespace ?? "?"), ours is \(ourNamespace ?? "?")")

    // Every process back under its old pid inside, with its old parent, group and session.
    let restoredRoot = try #require(restored[root], "no restored root with pid \(root) inside the namespace")
    #expect(restoredRoot.hostParent == initPid, "the restored root (host pid \(restoredRoot.hostPid)) has parent \(restoredRoot.hostParent), want the init \(initPid)")
    #expect(restoredRoot.hostPid != root, "the restored root got host pid \(root), which the original holds")
    #expect(Set(restored.keys) == Set(members.pids),
            "the namespace holds pids \(restored.keys.sorted()), want \(members.pids.sorted())")
    let innerOfHost = Dictionary(uniqueKeysWithValues: restored.values.map { ($0.hostPid, $0.innerPid ?? -1) })
    var problems: [String] = []
    for pid in members.pids {
        guard let p = restored[pid], let was = before[pid] else { continue }
        if p.ids.count != 2 { problems.append("pid \(pid): NSpid \(p.ids), want two levels") }
        if pid != root {
            let parent = innerOfHost[p.hostParent]
            if parent != was.ppid { problems.append("pid \(pid): parent is \(parent.map(String.init) ?? "host \(p.hostParent)") inside, was \(was.ppid)") }
        }
        if p.innerPgid != was.pgid { problems.append("pid \(pid): NSpgid \(p.pgids), want \(was.pgid) inside") }
        if p.innerSid != was.sid { problems.append("pid \(pid): NSsid \(p.sids), want \(was.sid) inside") }
        if ProcIDs(pid: p.hostPid)?.comm != was.comm { problems.append("pid \(pid): comm \(ProcIDs(pid: p.hostPid)?.comm ?? "?"), was \(was.comm)") }
    }
    #expect(problems.isEmpty, "the restored tree differs:\n\(problems.prefix(30).joined(separator: "\n"))")
    // The init is no part of the restored program: it must not hold its pipes
    // (a reader would never see EOF while the init keeps a write end open).
    let restoredPipes = restored.values.reduce(into: Set<String>()) { $0.formUnion(descriptorTargets($1.hostPid).filter { $0.hasPrefix("pipe:") }) }
    let leaked = descriptorTargets(initPid).intersection(restoredPipes)
    #expect(leaked.isEmpty, "the namespace's init \(initPid) holds \(leaked.count) of the \(restoredPipes.count) pipes of the restored tree: \(leaked.sorted().prefix(8))")
    // The original is untouched meanwhile.
    #expect(members.compare(with: before, rootParentMayDiffer: false).isEmpty,
            "the original tree changed: \(members.compare(with: before, rootParentMayDiffer: false).prefix(10))")

    // Dumping the copy again would record the pids cryo sees, not those the tree knows: refused
    // in one line, and the copy goes on.
    let again = try cryo(["dump", "-t", "\(restoredRoot.hostPid)", "-D", scratch.file("again")], in: scratch)
    #expect(again.failed && again.stderrLines.count == 1 && again.stderr.contains("nested pid namespace")
            && containsToken(again.stderr, "\(restoredRoot.hostPid)"), "want one line refusing the nested pid namespace\n\(again)")
    #expect(ProcStatus(pid: restoredRoot.hostPid)?.isRunning == true && ProcStatus(pid: restoredRoot.hostPid)?.tracerPid == 0,
            "the refused dump should leave the copy running: \(describeProcess(restoredRoot.hostPid))")

    // The restored root checks itself; cryo passes its status on.
    kill(restoredRoot.hostPid, SIGTERM)
    let result = process.wait(timeout: 120)
    #expect(result.status == .exited(0), "cryo restore --pidns should exit with the root's status 0\n\(result)\n\(fixture.report)")
    let passes = fixture.lines.filter { $0 == "PASS" }.count
    #expect(passes == 1 && !fixture.lines.contains(where: { $0.hasPrefix("FAIL") }),
            "the restored copy should have added one PASS (PASS lines: \(passes))\n\(fixture.report)")
    let hostPids = restored.values.map(\.hostPid)
    let gone = waitUntil(timeout: 10) { hostPids.allSatisfy { !pidExists($0) } && !pidExists(initPid) }
    #expect(gone, "restored processes are left after cryo returned: \(hostPids.filter(pidExists).prefix(10).map(describeProcess))")

    // Then the original.
    #expect(fixture.pollOriginal() == nil, "the original ended while the copy ran\n\(fixture.report)")
    fixture.signal(SIGTERM)
    let exit = fixture.reapOriginal(timeout: 120)
    #expect(exit == .exited(0), "the original ended with \(exit.map(\.description) ?? "nothing: still running")\n\(fixture.report)")
    #expect(fixture.lines.filter { $0 == "PASS" }.count == 2, "want two PASS lines, the copy's and the original's\n\(fixture.report)")
    expectPass(fixture, "\(result)")
}

/// What the descriptors of a process point to ("pipe:[123]", paths).
private func descriptorTargets(_ pid: pid_t) -> Set<String> {
    let dir = "/proc/\(pid)/fd"
    let fds = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
    return Set(fds.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "\(dir)/\($0)") })
}
