import ArgumentParser
import Cryo
import CryoSystem
import FoundationEssentials

struct ShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show what an image holds.")
    @Argument(help: "The image folder.") var directory: String
    @Flag(help: "Print the image as JSON (stable field names, for tools).") var json = false
    @Option(help: "Hexdump memory from the image: ADDR or ADDR:LEN (hex address, length in bytes, default 256).")
    var pages: String?
    @Option(name: [.customShort("t"), .customLong("pid")], help: "Which process --pages reads (default: the root).")
    var pid: Int32?
    @Flag(help: "Show the dump and restore statistics kept in the folder.") var stats = false

    func run() throws {
        let image = try failing { try Image(directory: directory) }
        if let pages {
            try failing { try hexdump(image, pages) }
            return
        }
        if stats {
            for name in ["stats-dump", "stats-restore"] {
                let path = "\(directory)/\(name)"
                print("\(name):")
                print((try? String(contentsOfFile: path, encoding: .utf8)) ?? "  (none)")
            }
            return
        }
        if json {
            struct Whole: Encodable { let inventory: Inventory; let files: FileTable; let tasks: [TaskImage] }
            print(try encodeJSON(Whole(inventory: image.inventory, files: image.fileTable, tasks: image.tasks)))
            return
        }
        let inventory = image.inventory
        print("image \(directory): cryo format \(inventory.formatVersion), kernel \(inventory.kernel), "
            + "\(inventory.processes.count) process(es)\(inventory.shellJob ? ", shell job" : "")")
        print("tree:")
        var depth: [Int32: Int] = [:]
        for p in inventory.processes {
            let level = (depth[p.ppid] ?? -1) + 1
            depth[p.pid] = level
            let threads = image.task(p.pid).map { $0.threads.count > 1 ? ", \($0.threads.count) threads" : "" } ?? ""
            let state = p.zombieStatus.map { s in s & 0x7f == 0 ? "zombie, exited \((s >> 8) & 0xff)" : "zombie, killed by \(signalName(s & 0x7f))" }
            let terminal = p.terminal.map { "  tty pts \($0)" } ?? ""
            let shares = [p.sharesFiles == true ? "descriptor table" : nil, p.sharesFS == true ? "cwd, root and umask" : nil].compactMap { $0 }
            let sharing = shares.isEmpty ? "" : ", shares its \(p.sharesWith.map { "sibling \($0)'s" } ?? "parent's") \(shares.joined(separator: " and "))"
            print(String(repeating: "  ", count: level + 1) + "\(p.pid) \(p.comm)  pgid \(p.pgid) sid \(p.sid)\(terminal)\(threads)\(sharing)\(state.map { " (\($0))" } ?? "")")
        }
        for t in inventory.terminals ?? [] {
            print("session \(t.session): controlling terminal pty \(t.index), foreground group \(t.foregroundGroup.map(String.init) ?? "none")")
        }
        for task in image.tasks { describe(task, files: image.fileTable) }
    }

    func hexdump(_ image: Image, _ spec: String) throws {
        let parts = spec.split(separator: ":")
        guard let start = UInt64(parts[0].replacing("0x", with: ""), radix: 16),
              let length = parts.count > 1 ? Int(parts[1]) : 256, length > 0, length <= 1 << 24 else {
            throw CryoError("--pages takes ADDR or ADDR:LEN (hex address, length in bytes up to 16 MiB), not \(spec)")
        }
        let pid = self.pid ?? image.inventory.rootPid
        guard let task = image.task(pid) else { throw CryoError("the image has no live process \(pid)") }
        let memory = try image.bytes(of: task, at: start, count: length)
        for row in stride(from: 0, to: memory.count, by: 16) {
            let line = memory[row..<min(row + 16, memory.count)]
            let hexPart = line.map { String(printf: "%02x", $0) }.joined(separator: " ")
            let text = String(line.map { $0 >= 0x20 && $0 < 0x7f ? Character(UnicodeScalar($0)) : "." })
            print("\(hex(start + UInt64(row), width: 12))  \(hexPart.padded(to: 47))  \(text)")
        }
    }

    func describe(_ task: TaskImage, files: FileTable) {
        let core = task.core
        print("\npid \(core.pid) (\(core.comm))  ppid \(core.ppid)  pgid \(core.pgid)  sid \(core.sid)")
        print("  exe \(core.exe)  cwd \(core.cwd)  root \(core.root)  umask \(String(core.umask, radix: 8))")
        let c = core.credentials
        print("  uids \(c.uids.map(String.init).joined(separator: "/"))  gids \(c.gids.map(String.init).joined(separator: "/"))"
            + "  groups [\(c.groups.map(String.init).joined(separator: ","))]  caps eff 0x\(hex(c.capEffective))")
        for thread in task.threads {
            print("  thread \(thread.tid) registers:")
            let pairs = zip(ThreadRecord.registerNames, thread.general).map {
                "\($0.0.padded(to: 8))0x\(hex($0.1, width: 16))"
            }
            for row in stride(from: 0, to: pairs.count, by: 4) { print("    " + pairs[row..<min(row + 4, pairs.count)].joined(separator: "  ")) }
            print("    xstate \(thread.extendedState.count) bytes, blocked signals 0x\(hex(thread.blockedSignals))"
                + (thread.altstackFlags & 2 == 0 ? ", altstack 0x\(hex(thread.altstackAddress)) size \(thread.altstackSize)" : ""))
            for p in thread.pending { print("    pending \(signalName(p.signal)) (thread queue)") }
            var attributes = thread.scheduling.map { ["\($0.name) priority \($0.priority) nice \($0.nice)" + ($0.flags & 1 != 0 ? " reset-on-fork" : "")] } ?? []
            if let cpus = thread.scheduling?.cpus { attributes.append("CPUs \(ThreadScheduling.describe(cpus))") }
            if let slack = thread.timerSlack { attributes.append("timer slack \(slack) ns") }
            if thread.parentDeathSignal != 0 { attributes.append("parent-death signal \(signalName(thread.parentDeathSignal))") }
            if let own = thread.seccomp {
                attributes.append((own.strict == true ? "own seccomp: strict mode" : "own seccomp: \(own.filters.count) filter(s)")
                    + (own.noNewPrivileges ? ", no_new_privs" : ""))
            }
            if !attributes.isEmpty { print("    " + attributes.joined(separator: ", ")) }
        }
        if core.loginuid != nil || core.membarrierRegistrations != nil {
            print("  loginuid \(core.loginuid.map { $0 == UInt32.max ? "unset" : String($0) } ?? "?")"
                + "  membarrier registrations 0x\(hex(UInt64(core.membarrierRegistrations ?? 0)))")
        }

        let saved = task.pageIndex.runs.reduce(UInt64(0)) { $0 + $1.length }
        let compressed = task.pageIndex.compression.map {
            ", \($0.method) " + String(printf: "%.1f", Double(task.pageIndex.pagesFileSize) / 1048576) + " MiB in \($0.frames.count) frames"
        } ?? ""
        if let flags = task.memory.lockFuture { print("  mlockall MCL_FUTURE" + (flags & 4 != 0 ? " | MCL_ONFAULT" : "") + ": mappings made later are locked") }
        print("  mappings (\(task.memory.mappings.count), \(saved / 4096) pages saved, \(String(printf: "%.1f", Double(saved) / 1048576)) MiB\(compressed)):")
        // Runs and mappings are both in address order: one walk over the two.
        var runCursor = 0, guardCursor = 0
        let guards = (task.memory.guards ?? []).filter { $0.count == 2 && $0[0] <= $0[1] }
        for m in task.memory.mappings {
            let runs = task.pageIndex.runs
            while runCursor < runs.count && runs[runCursor].address < m.start { runCursor += 1 }
            var pages: UInt64 = 0
            while runCursor < runs.count && runs[runCursor].address < m.end { pages += runs[runCursor].length / 4096; runCursor += 1 }
            let prot = (m.protection.contains("r") ? "r" : "-") + (m.protection.contains("w") ? "w" : "-")
                + (m.protection.contains("x") ? "x" : "-") + (m.shared ? "s" : "p")
            var line = "    \(hex(m.start, width: 12))-\(hex(m.end, width: 12)) \(prot) \(m.kind.rawValue.padded(to: 15))"
            if let path = m.path { line += " \(path) @0x\(hex(m.fileOffset))" }
            if let id = m.shmem { line += " object #\(id) @0x\(hex(m.fileOffset))" }
            let attributes = m.attributeNames
            if !attributes.isEmpty { line += "  (\(attributes.joined(separator: ", ")))" }
            if pages > 0 { line += "  [\(pages) pages saved]" }
            var guardPages: UInt64 = 0
            while guardCursor < guards.count && guards[guardCursor][0] < m.end { guardPages += (guards[guardCursor][1] - guards[guardCursor][0]) / 4096; guardCursor += 1 }
            if guardPages > 0 { line += "  [\(guardPages) guard pages]" }
            print(line)
        }
        print("  descriptors (\(task.descriptors.descriptors.count)):")
        for d in task.descriptors.descriptors {
            let f = files.files[d.file]
            let what = f.summary + (d.locks ?? []).map { " [\($0.summary)]" }.joined()
            print("    fd \(d.fd) -> \(what)  [\(f.kind), flags 0\(String(f.flags, radix: 8)), pos \(f.position)\(d.closeOnExec ? ", cloexec" : "")\(d.borrowed == true ? ", borrowed for restore only" : "")]"
                + (task.descriptors.descriptors.filter { $0.file == d.file }.count > 1 ? " shared description #\(d.file)" : ""))
        }
        let s = task.signals
        print("  signals:")
        for a in s.actions {
            let handler = a.handler == 0 ? "default" : a.handler == 1 ? "ignored" : "handler 0x\(hex(a.handler))"
            print("    \(signalName(a.signal).padded(to: 10)) \(handler)  flags 0x\(hex(a.flags))  mask 0x\(hex(a.mask))")
        }
        for t in s.timers where t.intervalMicroseconds != 0 || t.valueMicroseconds != 0 {
            print("    itimer \(["REAL", "VIRTUAL", "PROF"][Int(t.which)]) interval \(t.intervalMicroseconds) µs, next in \(t.valueMicroseconds) µs")
        }
        for p in s.pending { print("    pending \(signalName(p.signal)) (process-wide queue)") }
        for t in s.posixTimers ?? [] {
            print("    POSIX timer \(t.id): clock \(t.clock), notify \(t.notify.rawValue) \(signalName(t.signal))"
                + (t.notify == .thread ? " to thread \(t.thread)" : "")
                + ", next in \(t.remainingNanoseconds) ns, interval \(t.intervalNanoseconds) ns")
        }
        if let seccomp = task.core.seccomp, seccomp.strict == true {
            print("  seccomp: strict mode (read, write, exit and sigreturn only)" + (seccomp.noNewPrivileges ? ", no_new_privs" : ""))
        } else if let seccomp = task.core.seccomp {
            print("  seccomp: \(seccomp.filters.count) filter(s) (\(seccomp.filters.map { "\($0.count) instructions" }.joined(separator: ", ")))"
                + (seccomp.noNewPrivileges ? ", no_new_privs" : ""))
        }
    }
}

func hex(_ value: UInt64, width: Int = 0) -> String {
    let digits = String(value, radix: 16)
    return digits.count < width ? String(repeating: "0", count: width - digits.count) + digits : digits
}

func signalName(_ signal: Int32) -> String {
    let names = ["HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM",
                 "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF",
                 "WINCH", "IO", "PWR", "SYS"]
    if signal >= 1 && signal <= 31 { return "SIG" + names[Int(signal) - 1] }
    if signal >= 34 && signal <= 64 { return "SIGRTMIN+\(signal - 34)" }
    return "signal \(signal)"
}
