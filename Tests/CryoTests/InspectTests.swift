// `cryo inspect -t PID`: the parasite reads what only the process can see of
// itself (handlers, timers, per-thread altstack and mask, pending signals),
// the process is cured and carries on. The report must match what the
// fixture set up (Tests/Fixtures/signals.c, threads.c), and the fixture must
// still pass its own checks afterwards.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("cryo inspect")
    struct InspectTests {
        @Test("inspect the signals fixture: handlers, timer, altstack, masks, pending")
        func signals() throws {
            let scratch = try Scratch("inspect-signals")
            defer { scratch.remove() }
            let fixture = try Fixture("signals", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            let binary = try FixtureBuilder.binary(for: "signals")
            let symbols = try functionOffsets(binary, scratch: scratch)
            let base = try #require(loadBase(of: pid, path: binary), "no mapping of \(binary) at offset 0 in pid \(pid)")
            func address(_ function: String) throws -> UInt64 {
                base + (try #require(symbols[function], "no symbol \(function) in \(binary)"))
            }
            let rt3 = sigRTMin + 3
            let onTerm = try address("on_term"), onUsr1 = try address("on_usr1"), onRt = try address("on_rt")

            // The text report.
            let text = try cryo(["inspect", "-t", "\(pid)"], in: scratch, timeout: 60, reaping: fixture)
            try #require(text.succeeded, "\(text)\n\(fixture.report)")
            let lines = text.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            func line(_ prefix: String) -> String? { lines.first { $0.hasPrefix(prefix) } }
            let header = line("pid \(pid) (signals): stopped for ")
            #expect(header != nil, "no \"pid \(pid) (signals): stopped for\" line\n\(text)")
            if let header {
                let words = header.split(separator: " ")
                let amount = words.count >= 2 ? Double(words[words.count - 2]) : nil
                #expect(words.last == "ms" && (amount ?? 0) > 0 && (amount ?? .infinity) < 10_000,
                        "\"stopped for\" should give a positive number of ms: \(header)")
            }
            let term = line("SIGTERM ")
            #expect(term?.contains("handler 0x\(String(onTerm, radix: 16))") == true,
                    "SIGTERM should show on_term at 0x\(String(onTerm, radix: 16)): \(term ?? "no SIGTERM line")\n\(text)")
            #expect(term?.contains("mask 0x\(String(sigset(SIGALRM), radix: 16))") == true, "SIGTERM's mask is {SIGALRM}: \(term ?? "none")")
            let usr1 = line("SIGUSR1 ")
            #expect(usr1?.contains("handler 0x\(String(onUsr1, radix: 16))") == true,
                    "SIGUSR1 should show on_usr1: \(usr1 ?? "no SIGUSR1 line")\n\(text)")
            #expect(usr1?.contains("flags 0x\(String(saSigInfo | saRestart | saRestorer, radix: 16))") == true,
                    "SIGUSR1 flags are SA_SIGINFO|SA_RESTART (+SA_RESTORER): \(usr1 ?? "none")")
            #expect(usr1?.contains("mask 0x\(String(sigset(SIGINT, SIGQUIT), radix: 16))") == true, "SIGUSR1's mask is {SIGINT,SIGQUIT}: \(usr1 ?? "none")")
            #expect(line("SIGUSR2 ")?.contains("ignored") == true, "SIGUSR2 should be ignored: \(line("SIGUSR2 ") ?? "no SIGUSR2 line")\n\(text)")
            #expect(line("SIGRTMIN+3 ")?.contains("handler 0x\(String(onRt, radix: 16))") == true,
                    "SIGRTMIN+3 should show on_rt: \(line("SIGRTMIN+3 ") ?? "no SIGRTMIN+3 line")")
            #expect(line("SIGQUIT ") == nil, "SIGQUIT is at its default and should not be listed\n\(text)")
            #expect(line("itimer REAL interval 50000 µs") != nil, "no \"itimer REAL interval 50000 µs\" line\n\(text)")
            // A tick of the 50 ms itimer may fall into the time inspect holds the process.
            let pending = line("pending (process):")?.replacingOccurrences(of: " SIGALRM", with: "")
            #expect(pending == "pending (process): SIGRTMIN+3 SIGRTMIN+3",
                    "the two queued SIGRTMIN+3 should be pending for the process: \(line("pending (process):") ?? "no line")")
            let thread = line("thread \(pid):")
            #expect(thread?.contains("+65536") == true && thread?.contains("altstack 0x") == true,
                    "the thread line should show the 64 KiB altstack: \(thread ?? "no thread \(pid) line")\n\(text)")
            #expect(thread?.hasSuffix("pending SIGUSR1") == true, "SIGUSR1 is pending on the thread: \(thread ?? "none")")

            // The JSON report.
            let json = try cryo(["inspect", "-t", "\(pid)", "--json"], in: scratch, timeout: 60, reaping: fixture)
            try #require(json.succeeded, "\(json)\n\(fixture.report)")
            let report = try #require(decodeJSON(InspectedProcess.self, json.stdout, what: "inspect --json"))
            #expect(report.pid == pid && report.comm == "signals", "pid \(report.pid) comm \(report.comm)")
            #expect(report.stoppedSeconds > 0 && report.stoppedSeconds < 10, "stoppedSeconds \(report.stoppedSeconds)")

            struct Want { let handler: UInt64; let flags: UInt64; let mask: UInt64 }
            let wants: [Int32: Want] = [
                SIGTERM: Want(handler: try address("on_term"), flags: 0, mask: sigset(SIGALRM)),
                SIGUSR1: Want(handler: try address("on_usr1"), flags: saSigInfo | saRestart, mask: sigset(SIGINT, SIGQUIT)),
                rt3: Want(handler: try address("on_rt"), flags: saSigInfo | saRestart, mask: 0),
                SIGHUP: Want(handler: try address("on_hup"), flags: saNoDefer, mask: sigset(SIGUSR2, SIGWINCH)),
                SIGINT: Want(handler: try address("on_int"), flags: saOnStack | saSigInfo, mask: sigset(SIGPIPE)),
                SIGWINCH: Want(handler: try address("on_winch"), flags: saResetHand | saRestart, mask: 0),
                SIGALRM: Want(handler: try address("on_alarm"), flags: saRestart, mask: 0),
                SIGUSR2: Want(handler: 1, flags: 0, mask: 0),
            ]
            for (signal, want) in wants.sorted(by: { $0.key < $1.key }) {
                guard let got = report.action(signal) else { Issue.record("no action for signal \(signal)"); continue }
                #expect(got.handler == want.handler && got.flags & ~saRestorer == want.flags && got.mask == want.mask,
                        "signal \(signal): handler 0x\(String(got.handler, radix: 16)) flags 0x\(String(got.flags, radix: 16)) mask 0x\(String(got.mask, radix: 16)), want handler 0x\(String(want.handler, radix: 16)) flags 0x\(String(want.flags, radix: 16)) mask 0x\(String(want.mask, radix: 16))")
            }
            // 32 and 33 are glibc's own; posix_spawn sets them to SIG_IGN in the child, the fixture leaves them.
            let others = report.actions.filter { wants[$0.signal] == nil && !(32...33).contains($0.signal) && $0.handler != 0 }
            #expect(others.isEmpty, "every other signal is at SIG_DFL, but: \(others.map { "\($0.signal): 0x\(String($0.handler, radix: 16))" })")
            #expect(report.actions.count >= 60, "only \(report.actions.count) actions reported")

            let real = report.timers.first { $0.which == 0 }
            #expect(real?.intervalMicroseconds == 50000, "ITIMER_REAL interval \(real.map { "\($0.intervalMicroseconds)" } ?? "missing"), want 50000 µs")
            // 0 when it expired while cryo held the process (its SIGALRM is then pending).
            #expect((0...50000).contains(real?.valueMicroseconds ?? -1), "ITIMER_REAL value \(real?.valueMicroseconds ?? -1) µs, want 0..50000")
            #expect(report.timers.filter { $0.which != 0 }.allSatisfy { $0.intervalMicroseconds == 0 && $0.valueMicroseconds == 0 },
                    "only ITIMER_REAL is armed: \(report.timers)")
            // A SIGALRM of the 50 ms timer may be waiting too while the process is stopped.
            #expect(report.pendingShared.filter { $0 != SIGALRM } == [rt3, rt3], "process-wide pending \(report.pendingShared), want SIGRTMIN+3 twice")

            try #require(report.threads.count == 1, "one thread expected, got \(report.threads.map(\.tid))")
            let main = report.threads[0]
            #expect(main.tid == pid, "thread tid \(main.tid)")
            #expect(main.altstackEnabled && main.altstackSize == 65536,
                    "altstack enabled \(main.altstackEnabled) size \(main.altstackSize), want enabled, 65536")
            let altstackMapped = liveMappings(pid).contains { $0.start <= main.altstackAddress && main.altstackAddress + 65536 <= $0.end && $0.path.isEmpty }
            #expect(altstackMapped, "the altstack 0x\(String(main.altstackAddress, radix: 16))+65536 is not inside an anonymous mapping of pid \(pid)")
            let mustBlock = sigset(SIGUSR1, SIGXFSZ, rt3), mustNotBlock = sigset(SIGALRM, SIGHUP, SIGINT, SIGUSR2)
            #expect(main.blockedSignals & mustBlock == mustBlock && main.blockedSignals & mustNotBlock == 0,
                    "blocked mask 0x\(String(main.blockedSignals, radix: 16)) should contain SIGUSR1, SIGXFSZ, SIGRTMIN+3 and not SIGALRM, SIGHUP, SIGINT, SIGUSR2")
            #expect(main.pending == [SIGUSR1], "thread pending \(main.pending), want [SIGUSR1]")
            let rip = main.rip
            #expect(liveMappings(pid).contains { $0.start <= rip && rip < $0.end }, "rip 0x\(String(rip, radix: 16)) is in no mapping")

            // Cured: running free, and every check of the fixture passes.
            let status = ProcStatus(pid: pid)
            #expect(status?.isRunning == true && status?.tracerPid == 0, "after inspect: \(describeProcess(pid))")
            fixture.signal(SIGTERM)
            let exit = fixture.reapOriginal(timeout: 30)
            #expect(exit == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(json)")
        }

        @Test("inspect a process with 65 threads lists every thread with its altstack and mask")
        func threads() throws {
            let scratch = try Scratch("inspect-threads")
            defer { scratch.remove() }
            let fixture = try Fixture("threads", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady(timeout: 60)
            let pid = fixture.pid
            let tids = (fixture.tagged("TIDS") ?? []).compactMap { pid_t($0) }
            try #require(tids.count == 65 && tids.first == pid, "bad TIDS line\n\(fixture.report)")

            let text = try cryo(["inspect", "-t", "\(pid)"], in: scratch, timeout: 60, reaping: fixture)
            try #require(text.succeeded, "\(text)\n\(fixture.report)")
            let threadLines = text.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { $0.hasPrefix("thread ") }
            let listed = threadLines.compactMap { line in pid_t(line.dropFirst(7).prefix { $0 != ":" }) }
            #expect(listed.sorted() == tids.sorted(), "thread lines for \(listed.count) tids, want the 65 of TIDS; missing \(Set(tids).subtracting(listed).sorted()), extra \(Set(listed).subtracting(tids).sorted())")
            let worker1 = threadLines.first { $0.hasPrefix("thread \(tids[1]):") } ?? ""
            let worker2 = threadLines.first { $0.hasPrefix("thread \(tids[2]):") } ?? ""
            #expect(worker1.contains("+65536"), "worker 1 has a 64 KiB altstack: \(worker1)")
            #expect(worker2.contains("+131072"), "worker 2 has a 128 KiB altstack: \(worker2)")
            #expect(threadLines.filter { $0.contains("altstack") }.count == 2, "only workers 1 and 2 have an altstack:\n\(threadLines.joined(separator: "\n"))")

            let json = try cryo(["inspect", "-t", "\(pid)", "--json"], in: scratch, timeout: 60, reaping: fixture)
            try #require(json.succeeded, "\(json)\n\(fixture.report)")
            let report = try #require(decodeJSON(InspectedProcess.self, json.stdout, what: "inspect --json"))
            #expect(report.threads.map(\.tid).sorted() == tids.sorted(), "JSON threads \(report.threads.count), want the 65 of TIDS")
            let byTid = Dictionary(report.threads.map { ($0.tid, $0) }, uniquingKeysWith: { a, _ in a })
            let mappings = liveMappings(pid)
            var problems: [String] = []
            for (index, tid) in tids.enumerated() {
                guard let t = byTid[tid] else { continue }
                let wantAltstack: UInt64 = index == 1 ? 65536 : index == 2 ? 131072 : 0
                if (t.altstackEnabled ? t.altstackSize : 0) != wantAltstack {
                    problems.append("thread \(index) (tid \(tid)): altstack \(t.altstackEnabled ? "\(t.altstackSize)" : "off"), want \(wantAltstack == 0 ? "off" : "\(wantAltstack)")")
                }
                let wantBlocked = index == 5 ? sigset(SIGTERM, SIGUSR1, SIGUSR2) : sigset(SIGTERM)
                if index != 0 && t.blockedSignals != wantBlocked {
                    problems.append("thread \(index) (tid \(tid)): blocked 0x\(String(t.blockedSignals, radix: 16)), want 0x\(String(wantBlocked, radix: 16))")
                }
                if !mappings.contains(where: { $0.start <= t.rip && t.rip < $0.end }) {
                    problems.append("thread \(index) (tid \(tid)): rip 0x\(String(t.rip, radix: 16)) in no mapping")
                }
            }
            #expect(problems.isEmpty, "\(problems.prefix(20).joined(separator: "\n"))")

            #expect(threadIDs(pid).sorted() == tids.sorted(), "the threads changed: \(threadIDs(pid).sorted().count) now")
            fixture.signal(SIGTERM)
            let exit = fixture.reapOriginal(timeout: 60)
            #expect(exit == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(json)")
        }
    }
}
