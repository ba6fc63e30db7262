import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// A thread's scheduling (sched_getattr of its tid): policy, flags, nice,
/// real-time priority, deadline parameters and utilization clamps, and the
/// CPUs it may run on. Set from outside with sched_setaffinity and
/// sched_setattr, as the last thing before the thread runs.
public struct ThreadScheduling: Codable, Sendable, Equatable {
    public var policy: UInt32
    public var flags: UInt64
    public var nice: Int32
    public var priority: UInt32
    public var runtime: UInt64 = 0, deadline: UInt64 = 0, period: UInt64 = 0
    public var utilMin: UInt32 = 0, utilMax: UInt32 = 1024
    /// The CPUs it may run on (sched_getaffinity, one bit each) when some CPU online at dump was not among
    /// them; nil when every one was: such a thread takes what a new task gets, on whatever host it comes back.
    public var cpus: [UInt64]? = nil

    static let names = [0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH", 5: "SCHED_IDLE", 6: "SCHED_DEADLINE"]
    /// RESET_ON_FORK, RECLAIM, DL_OVERRUN: what sched_getattr reports and sched_setattr takes back.
    static let keptFlags: UInt64 = 0x1 | 0x2 | 0x4
    static let utilClampFlags: UInt64 = 0x20 | 0x40

    static func dump(tid: pid_t) throws -> ThreadScheduling {
        let a = try Scheduling.attributes(tid)
        let realTime = a.policy == 1 || a.policy == 2 || a.policy == 6
        return ThreadScheduling(policy: a.policy, flags: a.flags & keptFlags, nice: realTime ? try Scheduling.nice(tid) : a.nice, priority: a.priority,
                                runtime: a.runtime, deadline: a.deadline, period: a.period, utilMin: a.utilMin, utilMax: a.utilMax,
                                cpus: restrictedCPUs(try Processes.affinity(tid), online: onlineCPUs))
    }

    /// The CPUs online now, from /sys/devices/system/cpu/online; nil if it cannot be read.
    static let onlineCPUs: [UInt64]? = (try? Files.readString("/sys/devices/system/cpu/online")).flatMap(cpuList)

    /// A kernel CPU list ("0-3,8,10-11") as a mask of 64-bit words, nil if empty, malformed or past 1024 CPUs.
    static func cpuList(_ text: String) -> [UInt64]? {
        var mask = [UInt64](repeating: 0, count: 16)
        for item in text.trimmed().split(separator: ",") {
            let ends = item.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(ends.count), let first = Int(ends[0]), let last = Int(ends.last!), first <= last, last < 1024 else { return nil }
            for cpu in first...last { mask[cpu / 64] |= 1 << UInt64(cpu % 64) }
        }
        return mask.contains { $0 != 0 } ? mask : nil
    }

    /// `mask` without its trailing empty words, or nil when it holds every CPU of `online` (or `online` is unknown).
    static func restrictedCPUs(_ mask: [UInt64], online: [UInt64]?) -> [UInt64]? {
        guard let online, online.indices.contains(where: { online[$0] & ~(mask.indices.contains($0) ? mask[$0] : 0) != 0 }) else { return nil }
        return Array(mask[..<(mask.lastIndex { $0 != 0 }.map { $0 + 1 } ?? 0)])
    }

    /// Confines the thread to its saved CPUs, those of them in `allowed` (cryo's own, and the cpuset's);
    /// where none of them is, it keeps the CPUs it has and the result says so, for a warning.
    func restoreAffinity(tid: pid_t, imageTid: pid_t, allowed: [UInt64]) throws -> String? {
        guard let cpus else { return nil }
        let wanted = allowed.indices.map { allowed[$0] & (cpus.indices.contains($0) ? cpus[$0] : 0) }
        let unavailable = "thread \(imageTid) ran on CPUs \(ThreadScheduling.describe(cpus)), none of which it may use here: "
            + "it runs on \(ThreadScheduling.describe(allowed))"
        if wanted.allSatisfy({ $0 == 0 }) { return unavailable }
        do { try Processes.setAffinity(tid, wanted) } catch let error as SyscallError where error.errno == .invalidArgument {
            return unavailable  // none of them in its cpuset
        }
        return nil
    }

    /// A mask as a kernel CPU list: "0-3,8".
    public static func describe(_ mask: [UInt64]) -> String {
        var ranges: [String] = []
        var cpu = 0
        let count = mask.count * 64
        func set(_ c: Int) -> Bool { c < count && mask[c / 64] & (1 << UInt64(c % 64)) != 0 }
        while cpu < count {
            guard set(cpu) else { cpu += 1; continue }
            var last = cpu
            while set(last + 1) { last += 1 }
            ranges.append(last == cpu ? "\(cpu)" : "\(cpu)-\(last)")
            cpu = last + 1
        }
        return ranges.isEmpty ? "none" : ranges.joined(separator: ",")
    }

    public var name: String { ThreadScheduling.names[Int(policy)] ?? "policy \(policy)" }
    var isFair: Bool { policy == 0 || policy == 3 }
    /// Clamps only when set (0 and 1024 are "none"; both read 0 without CONFIG_UCLAMP_TASK).
    var hasClamps: Bool { utilMin != 0 || (utilMax != 1024 && utilMax != 0) }

    var attributes: SchedulingAttributes {
        var a = SchedulingAttributes()
        a.policy = policy
        a.flags = (flags & ThreadScheduling.keptFlags) | (hasClamps ? ThreadScheduling.utilClampFlags : 0)
        a.nice = nice
        a.priority = priority
        (a.runtime, a.deadline, a.period) = (runtime, deadline, period)
        (a.utilMin, a.utilMax) = (utilMin, utilMax)
        return a
    }

    /// A real-time, deadline or idle thread keeps a nice value of its own too (it shows again
    /// under a fair policy): that goes in first, under SCHED_OTHER.
    func restore(tid: pid_t, imageTid: pid_t) throws {
        let current = try ThreadScheduling.dump(tid: tid)
        if current.sameSetting(as: self) { return }
        var wanted = attributes
        // Under a fair policy the runtime is the time slice (6.12+); the new thread's is the default one
        // the dumped thread had too, unless it asked for its own: passing it on would make it a custom slice.
        if isFair && current.isFair && runtime == current.runtime { wanted.runtime = 0 }
        do {
            if !isFair && nice != 0 {
                var fair = SchedulingAttributes()
                fair.nice = nice
                try Scheduling.setAttributes(tid, fair)
            }
            try Scheduling.setAttributes(tid, wanted)
        } catch let error as SyscallError {
            throw CryoError("thread \(imageTid): cannot set \(name) priority \(priority) nice \(nice) flags 0x\(hex(flags)) "
                + "(sched_setattr: \(error.errno))")
        }
    }

    func validate(file: String, tid: pid_t) throws {
        guard ThreadScheduling.names[Int(policy)] != nil, (-20...19).contains(nice), priority <= 99, utilMin <= 1024, utilMax <= 1024,
              (cpus?.count ?? 0) <= 16, cpus?.contains(where: { $0 != 0 }) != false else {
            throw ImageError(file: file, record: "threads", "thread \(tid): scheduling policy \(policy) priority \(priority) nice \(nice) is not valid")
        }
    }
}

extension ThreadScheduling {
    /// What sched_setattr would change (clamps of 0 and 1024 alike: none).
    /// (The CPUs are set apart: restoreAffinity.)
    func sameSetting(as other: ThreadScheduling) -> Bool {
        policy == other.policy && flags == other.flags && nice == other.nice && priority == other.priority
            && runtime == other.runtime && deadline == other.deadline && period == other.period
            && hasClamps == other.hasClamps && (!hasClamps || (utilMin == other.utilMin && utilMax == other.utilMax))
    }
}

/// Process-wide attributes read with injected syscalls or from /proc: the audit
/// loginuid and the membarrier registrations of the address space.
enum ProcessAttributes {
    static let membarrier = 324, prctl = 157
    static let getRegistrations: UInt64 = 1 << 9  // MEMBARRIER_CMD_GET_REGISTRATIONS (6.3+)
    static let prGetTimerSlack: UInt64 = 30, prSetTimerSlack: UInt64 = 29, prSetParentDeathSignal: UInt64 = 1

    /// /proc/PID/loginuid, nil without audit support.
    static func loginuid(_ pid: pid_t) -> UInt32? {
        (try? Files.readString("/proc/\(pid)/loginuid")).flatMap { UInt32($0.trimmed()) }
    }

    /// The registered membarrier commands (a mask of MEMBARRIER_CMD_REGISTER_*) from what the task's own
    /// membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS) returned (DUMP_PROCESS), nil where the kernel cannot say.
    static func membarrierRegistrations(result: Int64, pid: pid_t, how: String = "in the parasite") throws -> UInt32? {
        if result == -Int64(EINVAL) || result == -Int64(ENOSYS) { return nil }
        guard result >= 0 else {
            throw SyscallError("membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS) \(how)", errno: Errno(rawValue: Int32(-result)), pid: pid)
        }
        return UInt32(result)
    }

    /// The same, injected into a restored task.
    static func membarrierRegistrations(_ tracee: Tracee) throws -> UInt32? {
        try membarrierRegistrations(result: try tracee.syscall(membarrier, getRegistrations, 0, 0), pid: tracee.pid, how: "injected")
    }

    /// cryo's own membarrier registrations (MEMBARRIER_CMD_GET_REGISTRATIONS), nil where the kernel cannot say.
    static let controllerRegistrations: Int? = {
        try? Kernel.syscall(Int32(membarrier), Int(getRegistrations), 0, 0, name: "membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS)")
    }()

}

/// What a new task inherits from the one that cloned it (fork copies them): resource limits,
/// oom_score_adj, loginuid and the cloning thread's timer slack. Read once from the root and passed
/// from each creator to the children it clones, and updated wherever restore sets one, so that a
/// task's wanted values are compared with these instead of 16 prlimit64 calls and three /proc
/// reads per task. Whoever sets one of them in a task must update its record here too.
struct InheritedAttributes {
    /// Soft and hard, by RLIMIT_* number.
    var limits: [(soft: UInt64, hard: UInt64)]
    var oomScoreAdjust: Int32?
    /// Nil without audit support.
    var loginuid: UInt32?
    /// The leader's (its threads start with the leader's once cloned).
    var timerSlack: UInt64?

    static func read(pid: pid_t) throws -> InheritedAttributes {
        InheritedAttributes(
            limits: try (0..<TaskCore.resourceCount).map { try Processes.resourceLimit(pid, $0) },
            oomScoreAdjust: (try? Files.readString("/proc/\(pid)/oom_score_adj")).flatMap { Int32($0.trimmed()) },
            loginuid: ProcessAttributes.loginuid(pid),
            timerSlack: (try? Files.readString("/proc/\(pid)/timerslack_ns")).flatMap { UInt64($0.trimmed()) })
    }
}

extension Restorer {
    /// Before the threads are cloned (they inherit the leader's loginuid): the loginuid,
    /// written by the task itself (the kernel takes it from no one else), and the
    /// membarrier registrations of the new address space.
    func restoreProcessAttributes(_ process: RestoringProcess) throws {
        let (core, pid, tracee) = (process.image.core, process.pid, process.tracee)
        let imagePid = core.pid
        if let wanted = core.loginuid {
            guard let current = process.inherited.loginuid else {
                throw CryoError("pid \(imagePid): loginuid was \(wanted) at dump; this kernel has no /proc/\(pid)/loginuid (no audit support)")
            }
            if current != wanted {
                let path = Array("/proc/self/loginuid".utf8) + [0]
                let address = try process.parasite.place(path + Array("\(wanted)".utf8))
                let fd = try tracee.syscall(257 /* openat */, UInt64(bitPattern: -100) /* AT_FDCWD */, address, UInt64(O_WRONLY), 0)
                guard fd >= 0 else { throw SyscallError("injected openat(/proc/self/loginuid)", errno: Errno(rawValue: Int32(-fd)), pid: pid) }
                let written = try tracee.syscall(1 /* write */, UInt64(fd), address + UInt64(path.count), UInt64("\(wanted)".utf8.count))
                _ = try tracee.syscall(3 /* close */, UInt64(fd))
                if written < 0 {
                    throw CryoError("pid \(imagePid): loginuid was \(wanted) at dump, the new task has \(current), and the kernel refuses "
                        + "to change it (needs CAP_AUDIT_CONTROL, and loginuid_immutable off; "
                        + "write /proc/\(pid)/loginuid: \(Errno(rawValue: Int32(-written))))")
                }
                process.inherited.loginuid = wanted
            }
        }
        if let wanted = core.membarrierRegistrations {
            for bit in 0..<32 where wanted & (1 << bit) != 0 {
                let result = try tracee.syscall(ProcessAttributes.membarrier, UInt64(1) << UInt64(bit), 0, 0)
                if result < 0 {
                    throw CryoError("pid \(imagePid): cannot register membarrier command 0x\(hex(UInt64(1) << UInt64(bit))) "
                        + "(injected membarrier: \(Errno(rawValue: Int32(-result))))")
                }
            }
            // A new task's address space is a copy of cryo's, made before any process of the tree
            // registered anything: with none in cryo, none came along, and none was asked for.
            if wanted == 0 && ProcessAttributes.controllerRegistrations == 0 { return }
            let now = try ProcessAttributes.membarrierRegistrations(tracee)
            if let now, now != wanted {
                throw CryoError("pid \(imagePid): membarrier registrations are 0x\(hex(UInt64(now))) after restore, "
                    + "0x\(hex(UInt64(wanted))) at dump (the new task inherited registrations it cannot drop)")
            }
        }
    }

    /// Whether restoreProcessAttributes would inject anything (or fail) for this process.
    func attributesNeedInjection(_ process: RestoringProcess) -> Bool {
        let core = process.image.core
        if let wanted = core.loginuid, process.inherited.loginuid != wanted { return true }
        if let wanted = core.membarrierRegistrations, wanted != 0 || ProcessAttributes.controllerRegistrations != 0 { return true }
        return false
    }

    /// Per thread, after its own state: the timer slack (0 is what a real-time thread reads,
    /// and the kernel gives it that once its policy is set).
    func restoreTimerSlack(_ process: RestoringProcess) throws {
        for (n, (thread, record)) in zip(process.threads, process.image.threads).enumerated() {
            guard let slack = record.timerSlack, slack != 0, !Restorer.hasTimerSlack(process, thread: n, slack) else { continue }
            let result = try thread.syscall(ProcessAttributes.prctl, ProcessAttributes.prSetTimerSlack, slack, 0, 0, 0)
            if result < 0 {
                throw SyscallError("injected prctl(PR_SET_TIMERSLACK, \(slack)) in thread \(record.tid)", errno: Errno(rawValue: Int32(-result)), pid: thread.pid)
            }
            if n == 0 { process.inherited.timerSlack = slack }
        }
    }

    /// Most threads kept the slack every new task starts with: the leader's is known (InheritedAttributes),
    /// another thread's read from outside; no injected call either way.
    static func hasTimerSlack(_ process: RestoringProcess, thread n: Int, _ slack: UInt64) -> Bool {
        if n == 0 { return process.inherited.timerSlack == slack }
        return (try? Files.readString("/proc/\(process.threads[n].pid)/timerslack_ns")).flatMap { UInt64($0.trimmed()) } == slack
    }

    /// restoreTimerSlack would inject a call (so the state cannot wait for a later stop).
    func timerSlackNeedsSetting(_ process: RestoringProcess) -> Bool {
        zip(process.threads.indices, process.image.threads).contains { n, record in
            record.timerSlack.map { $0 != 0 && !Restorer.hasTimerSlack(process, thread: n, $0) } ?? false
        }
    }

    /// A change of credentials clears the parent-death signal: set again after them.
    func restoreParentDeathSignals(_ process: RestoringProcess) throws {
        for (thread, record) in zip(process.threads, process.image.threads) where record.parentDeathSignal != 0 {
            let result = try thread.syscall(ProcessAttributes.prctl, ProcessAttributes.prSetParentDeathSignal,
                                            UInt64(record.parentDeathSignal), 0, 0, 0)
            if result < 0 {
                throw SyscallError("injected prctl(PR_SET_PDEATHSIG, \(record.parentDeathSignal)) in thread \(record.tid)",
                                   errno: Errno(rawValue: Int32(-result)), pid: thread.pid)
            }
        }
    }
}
