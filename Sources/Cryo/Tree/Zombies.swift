import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc

/// How a zombie ended, from its wait status (/proc/PID/stat field 52), and
/// what its stand-in needs to end the same way at restore.
struct ZombieDeath {
    let status: Int32
    var signal: Int32 { status & 0x7f }
    var exitCode: Int32 { (status >> 8) & 0xff }
    var coreDumped: Bool { status & 0x80 != 0 }

    /// Signals whose default action is to stop, continue or be ignored: nothing dies of them.
    static let notFatal: Set<Int32> = [SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU, SIGCONT, SIGCHLD, SIGURG, SIGWINCH]
    /// Signals whose default action dumps core (signal(7)).
    static let coreSignals: Set<Int32> = [SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV, SIGXCPU, SIGXFSZ, SIGSYS]

    var summary: String {
        signal == 0 ? "exit status \(exitCode)" : "killed by signal \(signal)\(coreDumped ? " with a core dump" : "")"
    }

    /// Refusals before any task is made: statuses no stand-in can end with here.
    static func checkBeforeRestore(_ inventory: Inventory) throws {
        for entry in inventory.processes {
            guard let status = entry.zombieStatus else { continue }
            let death = ZombieDeath(status: status)
            if death.signal == 0 {
                if death.coreDumped || status & ~0xff00 != 0 {
                    throw CryoError("zombie pid \(entry.pid): wait status 0x\(String(status, radix: 16)) is not one a process can end with")
                }
                continue
            }
            guard death.signal < 65, !notFatal.contains(death.signal), !death.coreDumped || coreSignals.contains(death.signal) else {
                throw CryoError("zombie pid \(entry.pid): wait status 0x\(String(status, radix: 16)) is not one a process can end with")
            }
            if death.coreDumped { try checkCoreDump(pid: entry.pid, signal: death.signal) }
        }
    }

    /// A core file is written relative to the stand-in's cwd, which must be where cryo can remove it again.
    static func checkCoreDump(pid: Int32, signal: Int32) throws {
        let pattern = (try? Files.readString("/proc/sys/kernel/core_pattern"))?
            .trimmed() ?? ""
        if pattern.hasPrefix("|") || pattern.contains("/") || pattern.isEmpty {
            throw CryoError("zombie pid \(pid) was killed by signal \(signal) with a core dump; this machine's core_pattern "
                + "'\(pattern)' puts cores where cryo cannot make and remove one, so its wait status would come back without "
                + "WCOREDUMP (set kernel.core_pattern to a file name such as 'core' to restore it)")
        }
        let limit = try Processes.resourceLimit(getpid(), Int32(RLIMIT_CORE.rawValue))
        if limit.hard < 1 << 20 {
            throw CryoError("zombie pid \(pid) was killed by signal \(signal) with a core dump; cryo's RLIMIT_CORE hard limit "
                + "\(limit.hard) leaves no room for the stand-in's core, so its wait status would come back without WCOREDUMP")
        }
    }
}

extension Restorer {
    /// A zombie is a child that is cloned, placed in its session and group, and made to end as it did.
    func createZombie(_ entry: Inventory.ProcessEntry, session: RestoreSession, shellGroup: Int32) throws {
        guard let parent = session.processes[entry.ppid] else {
            throw CryoError("zombie pid \(entry.pid): its parent \(entry.ppid) is not a live process of the image")
        }
        let (zombie, zombieParasite) = try cloneWithParasite(into: parent, pid: entry.pid)
        session.noteCreated(zombie.pid)
        parent.discardChildSignals = true
        if entry.sid == entry.pid {
            try inject(zombie, Restorer.syscallSetsid, what: "setsid")
        } else if entry.pgid == entry.pid {
            try inject(zombie, Restorer.syscallSetpgid, 0, 0, what: "setpgid")
        } else if entry.pgid != shellGroup && parent.group != entry.pgid {  // not born into it
            try inject(zombie, Restorer.syscallSetpgid, 0, UInt64(entry.pgid), what: "setpgid")
        }
        // A zombie keeps its name in /proc.
        let name = try zombieParasite.place(Array(entry.comm.utf8.prefix(15)) + [0])
        try inject(zombie, 157 /* prctl */, 15 /* PR_SET_NAME */, name, what: "prctl(PR_SET_NAME)")
        let death = ZombieDeath(status: entry.zombieStatus!)
        if death.signal == 0 {
            try inject(zombie, Restorer.syscallExitGroup, UInt64(death.exitCode), what: "exit", expectExit: true)
            return
        }
        var coreFolder: String? = nil
        defer { if let coreFolder { removeCoreFolder(coreFolder) } }
        if death.coreDumped {
            coreFolder = try prepareCoreDump(zombie, parasite: zombieParasite)
        } else {
            // No core file: not dumpable stops even a core_pattern pipe (which ignores RLIMIT_CORE).
            try Processes.setResourceLimit(zombie.pid, Int32(RLIMIT_CORE.rawValue), soft: 0, hard: 0)
            try inject(zombie, 157 /* prctl */, 4 /* PR_SET_DUMPABLE */, 0, what: "prctl(PR_SET_DUMPABLE)")
        }
        // SIGKILL's action cannot be changed (rt_sigaction: EINVAL), and is always the default.
        if death.signal != SIGKILL {
            let defaultAction = try zombieParasite.place([UInt8](repeating: 0, count: 32))
            try inject(zombie, 13 /* rt_sigaction */, UInt64(death.signal), defaultAction, 0, 8, what: "rt_sigaction(\(death.signal))")
        }
        try Ptrace.setSignalMask(zombie.pid, 0) // it inherited the all-blocked mask the parasite runs with
        try Processes.kill(zombie.pid, death.signal)
        // SIGKILL ends it even in its ptrace stop; anything else is met once it runs.
        if death.signal != SIGKILL { try Ptrace.cont(zombie.pid) }
        loop: while true {
            switch try waitFor(zombie.pid) {
            case .stopped(let s, 0): try Ptrace.cont(zombie.pid, signal: s) // its own signal, or whatever it meets: deliver
            case .stopped: try Ptrace.cont(zombie.pid)
            case .exited, .signaled: break loop
            }
        }
        // Still unreaped by its parent: the status it holds is the one the parent will see.
        let ended = Int32(truncatingIfNeeded: (try ProcStat(pid: zombie.pid)).field(52))
        if ended != death.status {
            throw CryoError("zombie pid \(entry.pid): its stand-in ended with wait status 0x\(String(ended, radix: 16)), "
                + "not 0x\(String(death.status, radix: 16)) (\(death.summary))")
        }
    }

    /// The stand-in dumps a core of no memory (coredump_filter 0) into a folder of its own,
    /// removed once it has ended.
    private func prepareCoreDump(_ zombie: Tracee, parasite: Parasite) throws -> String {
        let folder = try Files.makeTemporaryDirectory(prefix: "/tmp/cryo-core-")
        do {
            let path = try parasite.place(Array(folder.utf8) + [0])
            try inject(zombie, 80 /* chdir */, path, what: "chdir(\(folder))")
            let filter = try Files.open("/proc/\(zombie.pid)/coredump_filter", .writeOnly)
            defer { try? filter.close() }
            try Files.write(filter, Array("0".utf8), path: "/proc/\(zombie.pid)/coredump_filter")
            let limit = try Processes.resourceLimit(zombie.pid, Int32(RLIMIT_CORE.rawValue))
            try Processes.setResourceLimit(zombie.pid, Int32(RLIMIT_CORE.rawValue), soft: limit.hard, hard: limit.hard)
            try inject(zombie, 157 /* prctl */, 4 /* PR_SET_DUMPABLE */, 1, what: "prctl(PR_SET_DUMPABLE)")
            return folder
        } catch {
            removeCoreFolder(folder)
            throw error
        }
    }

    private func removeCoreFolder(_ folder: String) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [] { unlink("\(folder)/\(name)") }
        rmdir(folder)
    }
}
