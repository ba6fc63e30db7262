// Task state that is neither memory nor descriptors: how zombies ended,
// stopped processes, scheduling and other per-task attributes. Each fixture
// checks itself after a dump (kill) and restore.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("task state: zombies, stopped tasks, attributes")
    struct TaskStateTests {
        @Test("zombies of every kind keep their wait status: exit codes, each fatal signal, core dumps")
        func zombies() throws {
            try dumpRestoreAndPass("deaths")
        }

        /// Each process checks its parent, session and group itself (sessions.c).
        @Test("children left in their parent's old session by a setsid after fork (one two setsids down) come back in it")
        func sessionsLeftBehind() throws {
            try dumpRestoreAndPass("sessions")
        }

        @Test("children stopped by SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU (one with two threads) come back stopped by the same signal")
        func stoppedBySignal() throws {
            try dumpRestoreAndPass("stopped")
        }

        @Test("a SIGSTOP that arrives while cryo drives the process is held and still stops it", arguments: [false, true])
        func stopWhileInjecting(leaveRunning: Bool) throws {
            let scratch = try Scratch("stop-while-dumping")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            let images = scratch.file("img")
            // cryo stops itself once the process is seized: the SIGSTOP is queued while it is cryo's.
            let dump = try CryoProcess(["dump"] + (leaveRunning ? ["--leave-running"] : []) + ["-t", "\(pid)", "-D", images],
                                       in: scratch, environment: ["CRYO_STOP_AT": "seized"])
            defer { dump.stop() }
            let paused = waitUntil(timeout: 60) { !dump.isRunning || ProcStatus(pid: dump.pid)?.state == "T" }
            try #require(paused && dump.isRunning, "cryo did not stop once it had seized pid \(pid): \(describeProcess(dump.pid))")
            try #require(ProcStatus(pid: pid)?.tracerPid == Int(dump.pid), "\(describeProcess(pid))")
            kill(pid, SIGSTOP)
            kill(dump.pid, SIGCONT)
            let result = dump.wait(timeout: 120, reaping: fixture)
            try #require(result.succeeded, "\(result)\n\(fixture.report)")
            if !leaveRunning {
                try #require(fixture.reapOriginal(timeout: 20) != nil, "pid \(pid) still runs after the dump")
                let restore = try cryo(["restore", "-D", images, "-d"], in: scratch, timeout: 60)
                try #require(restore.succeeded, "\(restore)\n\(fixture.report)")
            }
            let stopped = waitUntil(timeout: 10) { ProcStatus(pid: pid).map { $0.state == "T" && $0.tracerPid == 0 } ?? false }
            #expect(stopped, "pid \(pid) is not stopped and untraced after the \(leaveRunning ? "dump" : "restore"): \(describeProcess(pid))")
            kill(pid, SIGCONT)
            kill(pid, SIGTERM)
            if leaveRunning {
                #expect(fixture.reapOriginal(timeout: 60) == .exited(0), "\(fixture.report)")
            } else {
                #expect(waitUntil(timeout: 60) { !pidExists(pid) }, "restored pid \(pid) did not exit after SIGCONT and SIGTERM")
            }
            expectPass(fixture, "\(result)")
        }

        /// cryo's int3s make the kernel force SIGTRAPs on the task: its own SIGTRAP state must not notice (sigtrap.c).
        @Test("a SIGTRAP handler, SIGTRAPs pending in the process's and each thread's queue, an ignored SIGTRAP come back as they were",
              arguments: ["handler", "pending", "ignored"])
        func sigtrap(_ mode: String) throws {
            try selfCheckingRoundTrip("sigtrap", arguments: [mode], scratch: "sigtrap-\(mode)")
        }

        @Test("dump --leave-running and pre-dump leave a task's SIGTRAP handler, pending SIGTRAPs and ignored SIGTRAP as they were",
              arguments: ["handler", "pending", "ignored"], ["dump", "pre-dump"])
        func sigtrapLeftRunning(_ mode: String, command: String) throws {
            try sigtrapLeftRunning(mode, command: command, wayHome: true)
        }

        /// Without the way home (ReturnPath.swift) a live task's commands end on int3, or on a signal of
        /// the parasite's where its SIGTRAP is ignored or pending, and syscalls stop at entry and exit.
        @Test("the same without the way home a live task normally gets", arguments: ["handler", "pending", "ignored"], ["dump", "pre-dump"])
        func sigtrapLeftRunningWithoutWayHome(_ mode: String, command: String) throws {
            try sigtrapLeftRunning(mode, command: command, wayHome: false)
        }

        func sigtrapLeftRunning(_ mode: String, command: String, wayHome: Bool) throws {
            let scratch = try Scratch("sigtrap-\(mode)-\(command)\(wayHome ? "" : "-nohome")")
            defer { scratch.remove() }
            let fixture = try Fixture("sigtrap", arguments: [mode], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = scratch.file("img")
            let dump = try cryo([command] + (command == "dump" ? ["--leave-running"] : []) + ["-t", "\(fixture.pid)", "-D", images],
                                in: scratch, reaping: fixture, environment: wayHome ? [:] : ["CRYO_NO_WAY_HOME": "1"])
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
            fixture.signal(SIGTERM)
            #expect(fixture.reapOriginal(timeout: 60) == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }

        /// /proc shows such a process as a zombie: taken for one, a child would come back as a zombie (leaderexit.c).
        @Test("a process whose main thread exited while a thread runs, as the root or as a child, is refused in one line naming it, and runs on",
              arguments: [[], ["child"]])
        func leaderExited(_ arguments: [String]) throws {
            let scratch = try Scratch("leaderexit\(arguments.map { "-\($0)" }.joined())")
            defer { scratch.remove() }
            let fixture = try Fixture("leaderexit", arguments: arguments, in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let leaderless = arguments.isEmpty ? fixture.pid : try #require(fixture.tagged("CHILD")?.first.flatMap { pid_t($0) })
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", scratch.file("img")], in: scratch, reaping: fixture)
            #expect(dump.failed && dump.stderrLines.count == 1 && containsToken(dump.stderr, "\(leaderless)")
                    && dump.stderr.contains("main thread has exited"), "\(dump)")
            #expect(fixture.pollOriginal() == nil, "the fixture should still run: \(fixture.report)")
            fixture.signal(SIGTERM)
            #expect(fixture.reapOriginal(timeout: 30) == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }

        /// Only the leader could make the member again, and a zombie comes back last (zombieleader.c).
        @Test("a live process in the session of a zombie leader is refused in one line naming it and the zombie; the tree runs on")
        func zombieSessionLeader() throws {
            let scratch = try Scratch("zombieleader")
            defer { scratch.remove() }
            let fixture = try Fixture("zombieleader", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let leader = try #require(fixture.tagged("LEADER")?.first.flatMap { pid_t($0) })
            let member = try #require(fixture.tagged("MEMBER")?.first.flatMap { pid_t($0) })
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", scratch.file("img")], in: scratch, reaping: fixture)
            #expect(dump.failed && dump.stderrLines.count == 1 && containsToken(dump.stderr, "\(member)")
                    && dump.stderr.contains("leader \(leader) is a zombie"), "\(dump)")
            #expect(fixture.pollOriginal() == nil, "the fixture should still run: \(fixture.report)")
            fixture.signal(SIGTERM)
            #expect(fixture.reapOriginal(timeout: 30) == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }

        @Test("per thread: scheduling policy, priority, nice, timer slack, parent-death signal; loginuid and membarrier registrations")
        func attributes() throws {
            try dumpRestoreAndPass("attrs")
        }

        /// attrs pins its idle thread to the last of its CPUs and its batch thread to the first;
        /// a restore allowed only the first warns about the idle one and runs it there.
        @Test("a thread pinned to CPUs the restore may not use runs on the restore's, with one warning line naming it")
        func unavailableCPUs() throws {
            let allowed = cpusAllowed("/proc/self/status")
            guard let first = allowed.first, let last = allowed.last, first != last else {
                try Test.cancel("needs two CPUs, this test may use \(allowed)")
            }
            let scratch = try Scratch("attrs-cpus")
            defer { scratch.remove() }
            let fixture = try Fixture("attrs", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let tids = try #require(fixture.tagged("TIDS"), "no TIDS line\n\(fixture.report)")
            try #require(tids.count == 5, "TIDS line: \(tids)")
            let images = try dumpAndReap(fixture, in: scratch).images
            let restore = try cryo(["restore", "-D", images, "-d"], in: scratch, launcher: ["/usr/bin/taskset", "-c", "\(first)"])
            #expect(restore.succeeded, "\(restore)")
            #expect(restore.stderrLines.count == 1 && restore.stderr.contains("thread \(tids[2]) ran on CPUs \(last), none of which")
                    && restore.stderr.contains("it runs on \(first)"), "want one warning naming the idle thread \(tids[2])\n\(restore)")
            for tid in [tids[1], tids[2]] {
                #expect(cpusAllowed("/proc/\(fixture.pid)/task/\(tid)/status") == [first], "thread \(tid)")
            }
        }

        @Test("SCHED_DEADLINE threads keep runtime, deadline, period and flags (sched_setattr after every clone)")
        func deadline() throws {
            let scratch = try Scratch("deadline-task-state")
            defer { scratch.remove() }
            let fixture = try Fixture("deadline", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            if let skip = fixture.lines.first(where: { $0.hasPrefix("SKIP") }) {
                print("skipped: the kernel refuses SCHED_DEADLINE here (\(skip))")
                return
            }
            let images = try dumpAndReap(fixture, in: scratch).images
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore)
        }

        @Test("threads with different seccomp filters keep their own (one more filter would hang a thread at exit)")
        func seccompPerThread() throws {
            try dumpRestoreAndPass("seccompthreads")
        }

        /// The filters go in before the credentials are dropped again: after, without no_new_privs, seccomp() is refused.
        @Test("seccomp filters a root process installed before dropping to nobody (no no_new_privs) come back, and so do its ids")
        func seccompThenDropped() throws {
            try dumpRestoreAndPass("seccomp", arguments: ["dropped"])
        }

        /// Frozen inside the section, the thread goes to its abort handler, as the kernel would move it on preemption.
        @Test("a thread frozen inside an rseq critical section is aborted out of it, and later signals still abort it")
        func rseqCriticalSection() throws {
            let probe = try Scratch("rseqcs-probe")
            defer { probe.remove() }
            let fixture = try Fixture("rseqcs", in: probe)
            _ = waitUntil(timeout: 20) { fixture.lines.contains("READY") || fixture.tagged("NORSEQ") != nil }
            let unsupported = fixture.tagged("NORSEQ")
            fixture.cleanUp()
            if let unsupported { try Test.cancel(Comment(rawValue: "no rseq area here: \(unsupported.joined(separator: " "))")) }
            try dumpRestoreAndPass("rseqcs")
        }

        @Test("a SIGEV_THREAD_ID timer whose thread has exited comes back, armed, as the inert timer it is")
        func timerOfDeadThread() throws {
            try dumpRestoreAndPass("ptimers", arguments: ["deadthread"])
        }

        /// Upstream zdtm's massive_groups uses 900; NGROUPS_MAX is 65536.
        @Test("a parent and child as nobody with 900 and with 65536 supplementary groups keep them all", arguments: [900, 65536])
        func manyGroups(_ count: Int) throws {
            let scratch = try Scratch("groups-\(count)")
            defer { scratch.remove() }
            let fixture = try Fixture("user", arguments: ["65534", "65534", "\(count)"], in: scratch)
            defer {
                fixture.cleanUp()
                // The child waits for its parent's SIGTERM: should the test stop early, it is killed here.
                for pid in (fixture.tagged("PIDS") ?? []).dropFirst().compactMap({ pid_t($0) }) { kill(pid, SIGKILL) }
            }
            try fixture.waitReady()
            let images = try dumpAndReap(fixture, in: scratch).images
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore)
        }

        @Test("oom_score_adj comes back")
        func oomScoreAdjust() throws {
            let scratch = try Scratch("oom-score-adj")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch, launcher: ["/usr/bin/choom", "-n", "567", "--"])
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            try #require(readText("/proc/\(pid)/oom_score_adj").trimmingCharacters(in: .whitespacesAndNewlines) == "567")
            let images = try dumpAndReap(fixture, in: scratch).images
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore, whileRunning: {
                let now = readText("/proc/\(pid)/oom_score_adj").trimmingCharacters(in: .whitespacesAndNewlines)
                #expect(now == "567", "restored pid \(pid) has oom_score_adj \(now), want 567")
            })
        }

        @Test("a tree across two time namespaces (one unshared by the root, one by a child) keeps them, with clocks going on")
        func timeNamespacesUnshared() throws {
            try selfCheckingRoundTrip("timens", arguments: [], scratch: "time-namespaces")
        }

        @Test("a root started inside a time namespace (nsenter) comes back inside one with the same clocks")
        func timeNamespaceOfTheRoot() throws {
            let scratch = try Scratch("time-namespace-root")
            defer { scratch.remove() }
            // A holder gives the namespace to its children only; nsenter puts the fixture into it, then goes away.
            let holder = try spawnProcess("/usr/bin/unshare", ["--time", "--monotonic", "86400", "--boottime", "172800", "sleep", "600"],
                                          stdoutPath: "/dev/null")
            defer { kill(holder, SIGKILL); _ = reap(holder, timeout: 5) }
            try #require(waitUntil(timeout: 10) { readText("/proc/\(holder)/timens_offsets").contains("86400") })
            let fixture = try Fixture("timens", arguments: ["inside"], in: scratch,
                                      launcher: ["/usr/bin/nsenter", "--time=/proc/\(holder)/ns/time_for_children"])
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            kill(holder, SIGKILL)
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore)
        }

        @Test("a process that unshared a time namespace for children it has not forked yet: its first child after restore is in it")
        func timeNamespaceForLaterChildren() throws {
            try selfCheckingRoundTrip("timens", arguments: ["childless"], scratch: "time-namespace-later")
        }

        @Test("exec moves a process into the time namespace it unshared (unshare --time): restored in it, offsets going on")
        func timeNamespaceAfterExec() throws {
            let scratch = try Scratch("time-namespace-exec")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch, launcher: ["/usr/bin/unshare", "--time", "--monotonic", "1000"])
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore, whileRunning: {
                let pid = fixture.pid
                let own = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/time")
                let cryos = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/time")
                #expect(own != cryos, "restored pid \(pid) is in cryo's time namespace \(own)")
                // The namespace's clock goes on from the dump: its offset is 1000 s less the time the tree was away.
                let fields = readText("/proc/\(pid)/timens_offsets").split(whereSeparator: { $0 == " " || $0 == "\n" })
                let seconds = fields.count >= 2 ? Int(fields[1]) ?? 0 : 0
                #expect(fields.first == "monotonic" && (880...1000).contains(seconds), "timens_offsets: \(fields)")
            })
        }

        @Test("a thread of the tree traced by another tracer: dump refused in one line, still traced, carries on")
        func tracedThread() throws {
            let scratch = try Scratch("traced-thread")
            defer { scratch.remove() }
            let fixture = try Fixture("threads", arguments: ["6"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let worker = try #require(fixture.tagged("TIDS")?.dropFirst().first.flatMap { pid_t($0) }, "no TIDS line\n\(fixture.report)")
            let tracer = try Fixture("tracer", arguments: ["\(worker)"], in: scratch)
            defer { tracer.cleanUp() }
            try tracer.waitReady()
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", scratch.file("img")], in: scratch, reaping: fixture)
            #expect(dump.failed && dump.stderrLines.count == 1, "\(dump)")
            let line = dump.stderrLines.first ?? ""
            #expect(containsToken(line, "\(worker)") && containsToken(line, "\(tracer.pid)") && line.contains("traced"),
                    "the refusal should name the thread \(worker) and its tracer \(tracer.pid): \(line)")
            #expect(ProcStatus(pid: worker)?.tracerPid == Int(tracer.pid), "\(describeProcess(worker))")
            tracer.signal(SIGKILL)
            _ = tracer.reapOriginal(timeout: 10)
            expectRunsAndPasses(fixture, "\(dump)")
        }
    }
}

/// start → READY → dump (kills) → foreground restore → SIGTERM → PASS.
/// The CPUs of a status file's Cpus_allowed_list ("0-1,3"), in order.
private func cpusAllowed(_ status: String) -> [Int] {
    guard let line = readText(status).split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") }) else { return [] }
    return line.dropFirst("Cpus_allowed_list:".count).split(separator: ",").flatMap { item -> [Int] in
        let ends = item.split(separator: "-").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        return ends.count == 2 ? Array(ends[0]...ends[1]) : ends
    }
}

private func dumpRestoreAndPass(_ name: String, arguments: [String]? = nil,
                                sourceLocation: SourceLocation = #_sourceLocation) throws {
    let scratch = try Scratch("\(name)-task-state")
    defer { scratch.remove() }
    let fixture = try Fixture(name, arguments: arguments, in: scratch)
    defer { fixture.cleanUp() }
    try fixture.waitReady()
    let images = try dumpAndReap(fixture, in: scratch, sourceLocation: sourceLocation).images
    let restore = try CryoProcess(["restore", "-D", images], in: scratch)
    defer { restore.stop() }
    try expectRestoredAndPassing(fixture, by: restore, sourceLocation: sourceLocation)
}
