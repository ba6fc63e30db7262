import ArgumentParser
import Cryo
import CryoSystem
import FoundationEssentials

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show what only a running process can see of itself, through the parasite; it carries on afterwards.")
    @Option(name: [.customShort("t"), .customLong("tree")], help: "The pid to inspect.") var pid: Int32
    @Flag(help: "Print the report as JSON.") var json = false

    func run() throws {
        let report = try failing { try InspectReport.inspect(pid: pid) }
        if json {
            print(try encodeJSON(report))
            return
        }
        print("pid \(report.pid) (\(report.comm)): stopped for \(String(printf: "%.3f", report.stoppedSeconds * 1000)) ms")
        print("  umask \(String(report.umask, radix: 8))  brk 0x\(hex(report.brk))  dumpable \(report.dumpable)"
            + "  securebits 0x\(hex(UInt64(report.securebits)))  seccomp \(report.seccompMode)")
        for a in report.actions where a.handler != 0 || a.flags & ~0x0400_0000 != 0 || a.mask != 0 {
            let handler = a.handler == 1 ? "ignored" : a.handler == 0 ? "default" : "handler 0x\(hex(a.handler))"
            print("  \(signalName(a.signal).padded(to: 10)) \(handler)  flags 0x\(hex(a.flags))  mask 0x\(hex(a.mask))")
        }
        for t in report.timers where t.intervalMicroseconds != 0 || t.valueMicroseconds != 0 {
            print("  itimer \(["REAL", "VIRTUAL", "PROF"][Int(t.which)]) interval \(t.intervalMicroseconds) µs, next in \(t.valueMicroseconds) µs")
        }
        if !report.pendingShared.isEmpty { print("  pending (process): \(report.pendingShared.map(signalName).joined(separator: " "))") }
        for t in report.threads {
            print("  thread \(t.tid): rip 0x\(hex(t.rip))  blocked 0x\(hex(t.blockedSignals))"
                + (t.altstackEnabled ? "  altstack 0x\(hex(t.altstackAddress))+\(t.altstackSize)" : "")
                + (t.rseq.map { "  rseq 0x\(hex($0.address))" } ?? "")
                + "  clear_child_tid 0x\(hex(t.clearChildTid))  robust_list 0x\(hex(t.robustList))"
                + (t.pending.isEmpty ? "" : "  pending \(t.pending.map(signalName).joined(separator: " "))"))
        }
    }
}
