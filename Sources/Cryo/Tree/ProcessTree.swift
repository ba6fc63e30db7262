import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc

/// One process of a frozen tree: every thread seized and stopped, the leader first.
struct FrozenProcess {
    let pid: pid_t
    let ppid: pid_t
    let pgid: pid_t
    let sid: pid_t
    let comm: String
    var threads: [Tracee]
    /// Set for a zombie: its wait status. Zombies are not seized.
    var zombieStatus: Int32?
    /// Stopped by a signal (state T) before cryo came: it comes back stopped.
    var stopped = false
    var leader: Tracee { threads[0] }
    /// The signal it is stopped by, or a stop signal one of its threads met while cryo drove it (sent again at restore).
    var stopSignal: Int32? { threads.first?.groupStopSignal ?? threads.lazy.compactMap(\.heldStopSignal).first }
    var entry: Inventory.ProcessEntry {
        .init(pid: pid, ppid: ppid, pgid: pgid, sid: sid, comm: comm, zombieStatus: zombieStatus,
              stopped: stopped || stopSignal != nil ? true : nil, stopSignal: stopSignal)
    }
}

/// Freezes a process and all its descendants without races: every thread is
/// seized, and a process's threads and children are listed again until no
/// new one appears (a thread could clone or fork until it is stopped).
final class FrozenTree {
    private(set) var processes: [FrozenProcess] = []
    private var released = false

    /// CRIU's --timeout: a task that does not stop within this many seconds of the freeze (one in an
    /// uninterruptible wait, as on a hung NFS server) fails the dump instead of holding it forever.
    static let defaultTimeout = 10.0

    static func freeze(root: pid_t, timeout: Double = defaultTimeout) throws -> FrozenTree {
        let tree = FrozenTree()
        let deadline = ContinuousClock.now + .milliseconds(Int64(timeout * 1000))
        do {
            var queue = [root]
            var queued: Set<pid_t> = [root]
            while !queue.isEmpty {
                let pid = queue.removeFirst()
                guard let process = try freezeProcess(pid, isRoot: pid == root, deadline: deadline, timeout: timeout) else { continue }
                tree.processes.append(process)
                for child in try children(of: process) where queued.insert(child).inserted { queue.append(child) }
            }
        } catch {
            throw tree.release(after: error)
        }
        return tree
    }

    /// Only one process, every thread of it, without its children.
    static func freezeOne(_ pid: pid_t) throws -> FrozenTree {
        let tree = FrozenTree()
        if let process = try freezeProcess(pid, isRoot: true) { tree.processes.append(process) }
        return tree
    }

    /// Seizes every thread of `pid`; nil when it vanished meanwhile (not the root).
    private static func freezeProcess(_ pid: pid_t, isRoot: Bool, deadline: ContinuousClock.Instant? = nil,
                                      timeout: Double = defaultTimeout) throws -> FrozenProcess? {
        guard let stat = try? ProcStat(pid: pid) else {
            if isRoot { throw CryoError("pid \(pid): no such process") }
            return nil
        }
        var process = FrozenProcess(pid: pid, ppid: stat.ppid, pgid: stat.pgid, sid: stat.sid, comm: stat.comm, threads: [])
        process.stopped = stat.state == Character("T")
        if stat.state == "Z" || stat.state == "X" {
            if let others = threadsOutliving(leader: pid) { throw leaderExited(pid, comm: stat.comm, others: others) }
            if isRoot { throw zombieRefusal(pid, comm: stat.comm) }
            process.zombieStatus = Int32(truncatingIfNeeded: stat.field(52))
            return process
        }
        // A vfork parent never stops for ptrace while its child runs: refused before it is seized.
        try SharedContexts.refuseVforkChildren(of: pid, comm: stat.comm)
        var seized: Set<pid_t> = []
        do {
            while true {
                let tids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task"))?
                    .compactMap { pid_t($0) }.sorted { a, b in a == pid ? true : b == pid ? false : a < b } ?? []
                let fresh = tids.filter { !seized.contains($0) }
                if fresh.isEmpty { break }
                for tid in fresh {
                    // Another tracer's task cannot be seized (EPERM): say whose it is.
                    if let tracer = try? ProcStatus(pid: tid, thread: pid).tracerPid, tracer != 0 {
                        let name = (try? ProcStat(pid: tracer).comm) ?? "?"
                        throw CryoError("pid \(pid) (\(stat.comm))\(tid == pid ? "" : " thread \(tid)") is already traced by pid \(tracer) (\(name)); detach the debugger first")
                    }
                    do {
                        // A vfork made after the check above would hold the stop back until the child execs or exits.
                        process.threads.append(try Tracee.seize(tid) {
                            try SharedContexts.refuseVforkChildren(of: pid, comm: stat.comm)
                            if let deadline, ContinuousClock.now > deadline {
                                let state = (try? ProcStat(pid: tid).state).map { " (state \($0))" } ?? ""
                                throw CryoError("pid \(pid) (\(stat.comm))\(tid == pid ? "" : " thread \(tid)") did not stop within "
                                    + "\(String(printf: "%g", timeout)) s of the freeze\(state); raise --timeout to wait longer")
                            }
                        })
                    } catch let error as SyscallError where error.errno == .noSuchProcess {
                        if tid == pid && process.threads.isEmpty {
                            // It died between listing and seizing: a zombie (or gone) now.
                            return try freezeProcess(pid, isRoot: isRoot, deadline: deadline, timeout: timeout)
                        }
                    } catch let error as SyscallError where error.errno == .notPermitted {
                        // The kernel refuses to attach to a task that is exiting.
                        if !isRoot && tid == pid && process.threads.isEmpty && finishedExiting(pid) {
                            return try freezeProcess(pid, isRoot: isRoot, deadline: deadline, timeout: timeout)
                        }
                        throw error
                    } catch let error as InjectionError {
                        guard case .vanished = error else { throw error }
                        if tid != pid { seized.insert(tid); continue }
                        // A child exiting while it was seized (shells and servers fork
                        // short-lived ones all the time): its frozen parent cannot reap
                        // it, so it is a zombie of the tree now, or gone if not waited for.
                        if !isRoot && process.threads.isEmpty { return try freezeProcess(pid, isRoot: isRoot, deadline: deadline, timeout: timeout) }
                        throw error
                    }
                    seized.insert(tid)
                }
            }
        } catch let error as CryoError {
            for t in process.threads { try? t.detach() }
            throw error
        } catch {
            for t in process.threads { try? t.detach() }
            throw CryoError("cannot freeze pid \(pid) (\(stat.comm)): \(error)")
        }
        guard process.threads.first?.pid == pid else {
            for t in process.threads { try? t.detach() }
            throw leaderExited(pid, comm: stat.comm, others: process.threads.map(\.pid))
        }
        return process
    }

    /// Why a process /proc shows as a zombie cannot be the root of a dump: a main thread that
    /// exited (pthread_exit) while others run shows so too.
    static func zombieRefusal(_ pid: pid_t, comm: String) -> CryoError {
        if let others = threadsOutliving(leader: pid) { return leaderExited(pid, comm: comm, others: others) }
        return CryoError("pid \(pid) (\(comm)) is a zombie")
    }

    /// The threads still listed beside an exited main thread; nil when there are none (a zombie process).
    private static func threadsOutliving(leader pid: pid_t) -> [pid_t]? {
        let tids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []).compactMap { pid_t($0) }
        // Threads of a process that is exiting as a whole may linger a moment, dying: not those.
        let others = tids.filter { $0 != pid && (try? ProcStat(pid: $0)).map { $0.state != "Z" && $0.state != "X" } == true }.sorted()
        return others.isEmpty ? nil : others
    }

    /// Without its main thread the process has no registers, descriptors or /proc/PID views of its own
    /// to dump from, and the restore would have to make that thread exit again: refused.
    private static func leaderExited(_ pid: pid_t, comm: String, others: [pid_t]) -> CryoError {
        CryoError("pid \(pid) (\(comm)): its main thread has exited (pthread_exit) while thread\(others.count == 1 ? "" : "s") "
            + "\(others.map(String.init).joined(separator: ", ")) run\(others.count == 1 ? "s" : ""); a process whose main thread is gone cannot be dumped yet")
    }

    /// True once `pid` is a zombie or gone, waiting up to a second for an exit under way.
    private static func finishedExiting(_ pid: pid_t) -> Bool {
        let deadline = ContinuousClock.now + .seconds(1)
        repeat {
            guard let state = (try? ProcStat(pid: pid))?.state else { return true }
            if state == "Z" || state == "X" { return true }
            usleep(1000)
        } while ContinuousClock.now < deadline
        return false
    }

    private static func children(of process: FrozenProcess) throws -> [pid_t] {
        var result: [pid_t] = []
        for t in process.threads {
            // Unreadable, it would silently leave this thread's children out of the image.
            let text: String
            do { text = try Files.readString("/proc/\(process.pid)/task/\(t.pid)/children") } catch {
                throw CryoError("pid \(process.pid) (\(process.comm)) thread \(t.pid): cannot list its children: \(error)")
            }
            result += text.split(separator: " ").compactMap { pid_t($0.trimmed()) }
        }
        return result
    }

    var live: [FrozenProcess] { processes.filter { $0.zombieStatus == nil } }

    /// Puts every thread back as it was and lets it go (once). Every thread is
    /// let go even when one could not be put back; those are reported after.
    func release() throws {
        guard !released else { return }
        released = true
        var failures: [String] = []
        for process in processes {
            for thread in process.threads {
                do {
                    try thread.restoreOriginalState()
                    try thread.detach()
                } catch {
                    failures.append("thread \(thread.pid) of pid \(process.pid): \(error)")
                    try? thread.detach()
                }
            }
        }
        if !failures.isEmpty {
            throw CryoError("could not put back \(failures.count) thread(s) as they were: \(failures.joined(separator: "; "))")
        }
    }

    /// Releases the tree after `error`, which it returns, naming a failed release too.
    /// A process that died meanwhile is what happened: the error says so (with its
    /// exit status or signal) instead of the failed read that noticed it.
    func release(after error: Error) -> Error {
        var deaths = deadProcesses(noticedIn: error)
        if !deaths.isEmpty {
            processes.removeAll { p in deaths.contains { $0.pid == p.pid } }
            let first = deaths.removeFirst()
            let others = deaths.isEmpty ? "" : "; also " + deaths.map { "pid \($0.pid) (\($0.how))" }.joined(separator: ", ")
            let what = CryoError("pid \(first.pid) (\(first.comm)) died during dump (\(first.how))\(others)")
            do { try release() } catch let releaseError { return CryoError("\(what); then \(releaseError)") }
            return what
        }
        do { try release() } catch let releaseError { return CryoError("\(error); then \(releaseError)") }
        return error
    }

    /// Processes of the tree that exited while frozen, and how. As their tracer cryo
    /// is told of each death (before the parent); a status an earlier wait took
    /// comes with the error that wait raised.
    private func deadProcesses(noticedIn error: Error) -> [(pid: pid_t, comm: String, how: String)] {
        var known: [pid_t: WaitStatus] = [:]
        if case InjectionError.vanished(let pid, let status)? = error as? InjectionError { known[pid] = status }
        var result: [(pid: pid_t, comm: String, how: String)] = []
        for process in live where !released {
            let tids = Set(process.threads.map(\.pid))
            var status = known.first { tids.contains($0.key) }?.value
            let stat = try? ProcStat(pid: process.pid)
            let state = stat?.state
            // Alive and stopped by us: no wait needed. Dying: the leader is reported after its threads.
            if status == nil, let stat, !stat.isDying, !killPending(process.pid) { continue }
            // A task SIGKILLed under a frozen cryo may still be tearing down its memory on a loaded
            // machine: its exit is certain, so waiting longer only delays the right report.
            let deadline = ContinuousClock.now + .seconds(5)
            while status == nil && ContinuousClock.now < deadline {
                for thread in process.threads.reversed() {
                    guard let waited = try? waitFor(thread.pid, options: WNOHANG) else { continue }
                    if thread.pid == process.pid, case .exited = waited { status = waited }
                    if thread.pid == process.pid, case .signaled = waited { status = waited }
                }
                if status == nil { usleep(1000) }
            }
            if status == nil, state == "Z", let raw = try? ProcStat(pid: process.pid).field(52) {
                status = WaitStatus(raw: Int32(truncatingIfNeeded: raw))
            }
            let how: String
            switch status {
            case .exited(let code)?: how = "exit status \(code)"
            case .signaled(let signal)?: how = "killed by \(deathSignalName(signal))"
            default: how = "exit status unknown"
            }
            result.append((process.pid, process.comm, how))
        }
        return result
    }

    /// SIGKILL queued but the task not yet run to act on it (a busy machine): it will die.
    private func killPending(_ pid: pid_t) -> Bool {
        guard let status = try? ProcStatus(pid: pid) else { return false }
        let bit = UInt64(1) << UInt64(SIGKILL - 1)
        return (status.hex("SigPnd") | status.hex("ShdPnd")) & bit != 0
    }

    /// Kills every process while it is still stopped, and waits until each is gone.
    func kill() {
        let pidfds = live.map { (pid: $0.pid, fd: try? Pidfd.open($0.pid)) }
        for process in live { Glibc.kill(process.pid, SIGKILL) }
        // On two cores freeing a large address space takes half the time this way (0.05 s instead
        // of 0.09 s for 1.5 GiB). Where the kernel refuses, the process frees it alone, as ever.
        for (pid, fd) in pidfds {
            guard let fd else { continue }
            try? Pidfd.releaseMemory(fd, pid: pid)
            try? fd.close()
        }
        // A leader's exit is reported only once its other threads are gone: wait for it last.
        for process in live {
            for thread in process.threads.reversed() { _ = try? waitFor(thread.pid) }
        }
    }
}

/// SIGKILL, SIGSEGV...: how people name the signal that ended a process.
func deathSignalName(_ signal: Int32) -> String {
    let names = ["HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM",
                 "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF",
                 "WINCH", "IO", "PWR", "SYS"]
    if signal >= 1 && signal <= 31 { return "SIG" + names[Int(signal) - 1] }
    if signal >= 34 && signal <= 64 { return "SIGRTMIN+\(signal - 34)" }
    return "signal \(signal)"
}
