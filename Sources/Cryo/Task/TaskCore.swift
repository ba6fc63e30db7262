import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc

/// Identity and process-wide attributes: ids, name, credentials, limits, the
/// mm fields, cwd/root/exe. Read from /proc and the parasite at dump; set by
/// the parasite (and prlimit) at restore, credentials last.
public struct TaskCore: Codable, Sendable {
    public var pid: Int32
    public var ppid: Int32
    public var pgid: Int32
    public var sid: Int32
    public var comm: String
    public var personality: UInt64
    public var exe: String
    public var cwd: String
    public var root: String
    public var umask: UInt32
    public var credentials: Credentials
    /// [soft, hard] per RLIMIT_* number.
    public var resourceLimits: [[UInt64]]
    public var mm: MMFields
    public var auxv: [UInt64]
    public var dumpable: UInt32
    public var childSubreaper: Bool
    public var seccomp: SeccompState?
    /// /proc/PID/oom_score_adj (absent in older images).
    public var oomScoreAdjust: Int32? = nil
    /// The cwd or root was removed while the process was in it (rmdir): made again at restore.
    public var cwdRemoved: RemovedDirectory? = nil
    public var rootRemoved: RemovedDirectory? = nil
    /// /proc/PID/loginuid (absent in older images, or without audit support).
    public var loginuid: UInt32? = nil
    /// MEMBARRIER_CMD_GET_REGISTRATIONS: the registered commands (absent in older images, or before Linux 6.3).
    public var membarrierRegistrations: UInt32? = nil

    public struct Credentials: Codable, Sendable {
        public var uids: [UInt32]   // real, effective, saved, fs
        public var gids: [UInt32]
        public var groups: [UInt32]
        public var capEffective: UInt64
        public var capPermitted: UInt64
        public var capInheritable: UInt64
        public var capBounding: UInt64
        public var capAmbient: UInt64
        public var securebits: UInt32
    }

    public struct MMFields: Codable, Sendable {
        public var startCode, endCode, startData, endData, startBrk, brk, startStack: UInt64
        public var argStart, argEnd, envStart, envEnd: UInt64
    }
}

extension TaskCore {
    static let resourceCount: Int32 = 16 // RLIM_NLIMITS

    /// Everything readable from outside; `state` is what the parasite reported.
    static func dump(pid: pid_t, state: cryo_task_state, membarrier: UInt32?) throws -> TaskCore {
        let stat = try ProcStat(pid: pid)
        let status = try ProcStatus(pid: pid)
        let auxvBytes = try Files.read("/proc/\(pid)/auxv")
        let auxv = auxvBytes.withUnsafeBytes { Array($0.bindMemory(to: UInt64.self)) }
        // Read by the parasite: prlimit64 on a process of another uid needs CAP_SYS_RESOURCE.
        let limits = withUnsafeBytes(of: state.rlimits) { raw in
            (0..<Int(resourceCount)).map { [raw.load(fromByteOffset: $0 * 16, as: UInt64.self), raw.load(fromByteOffset: $0 * 16 + 8, as: UInt64.self)] }
        }
        let (cwd, root) = (try Files.readLink("/proc/\(pid)/cwd"), try Files.readLink("/proc/\(pid)/root"))
        let personality = UInt64(try Files.readString("/proc/\(pid)/personality")
            .trimmed(), radix: 16) ?? 0
        return TaskCore(
            pid: pid, ppid: stat.ppid, pgid: stat.pgid, sid: stat.sid, comm: stat.comm, personality: personality,
            exe: try Files.readLink("/proc/\(pid)/exe"), cwd: cwd, root: root, umask: state.umask,
            credentials: status.credentials(securebits: state.securebits), resourceLimits: limits,
            mm: MMFields(startCode: stat.field(26), endCode: stat.field(27), startData: stat.field(45),
                         endData: stat.field(46), startBrk: stat.field(47), brk: state.brk,
                         startStack: stat.field(28), argStart: stat.field(48), argEnd: stat.field(49),
                         envStart: stat.field(50), envEnd: stat.field(51)),
            auxv: auxv, dumpable: state.dumpable, childSubreaper: state.child_subreaper != 0,
            seccomp: try SeccompState.dump(pid: pid, status: status),
            oomScoreAdjust: Int32(try Files.readString("/proc/\(pid)/oom_score_adj").trimmed()),
            cwdRemoved: try RemovedDirectory.of(link: cwd, statPath: "/proc/\(pid)/cwd"),
            rootRemoved: try RemovedDirectory.of(link: root, statPath: "/proc/\(pid)/root"),
            loginuid: ProcessAttributes.loginuid(pid), membarrierRegistrations: membarrier)
    }

    /// Resource limits are set from outside with prlimit. A hard limit above
    /// ours cannot be raised without CAP_SYS_RESOURCE, which is said plainly.
    /// `current`: what the task has (InheritedAttributes), updated with what is set.
    func restoreResourceLimits(pid: pid_t, current limits: inout [(soft: UInt64, hard: UInt64)]) throws {
        for (resource, limit) in resourceLimits.enumerated() where limit.count == 2 {
            let current = limits.indices.contains(resource) ? limits[resource] : try Processes.resourceLimit(pid, Int32(resource))
            if current.soft == limit[0] && current.hard == limit[1] { continue }
            do {
                try Processes.setResourceLimit(pid, Int32(resource), soft: limit[0], hard: limit[1])
            } catch let error as SyscallError where error.errno == .notPermitted && limit[1] > current.hard {
                throw CryoError("pid \(pid): resource limit \(resource) had hard limit \(limit[1]) at dump; "
                    + "raising it from \(current.hard) needs CAP_SYS_RESOURCE, which cryo does not hold (prlimit64: EPERM)")
            }
            if limits.indices.contains(resource) { limits[resource] = (limit[0], limit[1]) }
        }
    }

    /// Written from outside. Below the value the new task inherited from cryo it needs
    /// CAP_SYS_RESOURCE (EACCES otherwise), which is said plainly. `current`: what the task has, if known.
    func restoreOOMScoreAdjust(pid: pid_t, current: inout Int32?) throws {
        guard let wanted = oomScoreAdjust else { return }
        let path = "/proc/\(pid)/oom_score_adj"
        if (try current ?? Int32(Files.readString(path).trimmed())) == wanted { return }
        let fd = try Files.open(path, .writeOnly)
        defer { try? fd.close() }
        do { try Files.write(fd, Array("\(wanted)".utf8), path: path) } catch let error as SyscallError where error.errno == .permissionDenied {
            throw CryoError("pid \(pid): oom_score_adj was \(wanted) at dump; lowering it needs CAP_SYS_RESOURCE, "
                + "which cryo does not hold (write \(path): EACCES)")
        }
        current = wanted
    }

    /// What restore indexes without further checks: four uids and gids, at most NGROUPS_MAX groups.
    func validate(file: String) throws {
        let c = credentials
        guard c.uids.count == 4, c.gids.count == 4 else {
            throw ImageError(file: file, record: "task", "credentials need 4 uids and 4 gids, found \(c.uids.count) and \(c.gids.count)")
        }
        guard c.groups.count <= Int(CRYO_MAX_GROUPS) else {
            throw ImageError(file: file, record: "task", "\(c.groups.count) supplementary groups, at most \(CRYO_MAX_GROUPS) supported")
        }
    }

    /// RESTORE_CREDS's payload: the credentials, the groups, and room for the parasite to read the task's own.
    var parasiteCredentials: [UInt8] {
        let groups = credentials.groups.prefix(Int(CRYO_MAX_GROUPS))
        return bytes(of: fixedCredentials(groupCount: groups.count)) + bytes(of: Array(groups))
            + [UInt8](repeating: 0, count: 4 * groups.count)
    }

    /// Bytes of `parasiteCredentials`, for sizing the parasite's argument area.
    var parasiteCredentialsSize: Int { MemoryLayout<cryo_creds>.size + 8 * min(credentials.groups.count, Int(CRYO_MAX_GROUPS)) }

    private func fixedCredentials(groupCount: Int) -> cryo_creds {
        var creds = cryo_creds()
        let c = credentials
        (creds.uid, creds.euid, creds.suid, creds.fsuid) = (c.uids[0], c.uids[1], c.uids[2], c.uids[3])
        (creds.gid, creds.egid, creds.sgid, creds.fsgid) = (c.gids[0], c.gids[1], c.gids[2], c.gids[3])
        creds.group_count = UInt32(groupCount)
        creds.cap_effective = (UInt32(truncatingIfNeeded: c.capEffective), UInt32(truncatingIfNeeded: c.capEffective >> 32))
        creds.cap_permitted = (UInt32(truncatingIfNeeded: c.capPermitted), UInt32(truncatingIfNeeded: c.capPermitted >> 32))
        creds.cap_inheritable = (UInt32(truncatingIfNeeded: c.capInheritable), UInt32(truncatingIfNeeded: c.capInheritable >> 32))
        creds.cap_bounding = c.capBounding
        creds.cap_ambient = c.capAmbient
        creds.securebits = c.securebits
        creds.cap_last = UInt32(lastCapability)
        creds.dumpable = dumpable
        return creds
    }
}

/// The kernel's highest capability number: fixed while it runs, so read once (not once per restored task).
let lastCapability: Int = Int((try? Files.readString("/proc/sys/kernel/cap_last_cap").trimmed()).flatMap { Int($0) } ?? 40)

/// /proc/PID/stat, split after the parenthesised name (which may hold spaces).
struct ProcStat {
    let comm: String
    let fields: [String] // fields[0] is field 3 (state)
    init(pid: pid_t) throws {
        try self.init(text: try Files.readString("/proc/\(pid)/stat"), pid: pid)
    }
    /// The content of /proc/`pid`/stat.
    init(text: String, pid: pid_t) throws {
        guard let open = text.firstIndex(of: "("), let close = text.lastIndex(of: ")") else {
            throw CryoError("pid \(pid): cannot parse /proc/\(pid)/stat")
        }
        comm = String(text[text.index(after: open)..<close])
        fields = text[text.index(close, offsetBy: 2)...].split(separator: " ").map(String.init)
    }
    /// Field number n as man proc(5) counts them (1-based).
    func field(_ n: Int) -> UInt64 { n - 3 < fields.count ? UInt64(fields[n - 3].trimmed()) ?? 0 : 0 }
    var state: Character { fields.first?.first ?? "?" }
    /// A zombie, or a task already in do_exit (PF_EXITING, field 9): its memory may be gone
    /// before it becomes a zombie, so a read that failed on it means it died.
    var isDying: Bool { state == "Z" || state == "X" || field(9) & 0x4 != 0 }
    var ppid: Int32 { Int32(field(4)) }
    var pgid: Int32 { Int32(field(5)) }
    var sid: Int32 { Int32(field(6)) }
    var flags: UInt64 { field(9) }
    var threads: Int { Int(field(20)) }
}

/// /proc/PID/status as key/value lines.
struct ProcStatus {
    let values: [String: String]
    /// One thread's own lines with `thread` set to its process (TracerPid, State, SigBlk differ per thread).
    init(pid: pid_t, thread process: pid_t? = nil) throws {
        let path = process.map { "/proc/\($0)/task/\(pid)/status" } ?? "/proc/\(pid)/status"
        self.init(text: try Files.readString(path))
    }
    /// The content of a status file.
    init(text: String) {
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            values[String(line[..<colon])] = line[line.index(after: colon)...].trimmed()
        }
        self.values = values
    }
    func numbers(_ key: String) -> [UInt32] { (values[key] ?? "").split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { UInt32($0) } }
    func hex(_ key: String) -> UInt64 { UInt64(values[key] ?? "", radix: 16) ?? 0 }
    var tracerPid: Int32 { Int32(values["TracerPid"] ?? "0") ?? 0 }
    func credentials(securebits: UInt32) -> TaskCore.Credentials {
        TaskCore.Credentials(uids: numbers("Uid"), gids: numbers("Gid"), groups: numbers("Groups"),
                             capEffective: hex("CapEff"), capPermitted: hex("CapPrm"), capInheritable: hex("CapInh"),
                             capBounding: hex("CapBnd"), capAmbient: hex("CapAmb"), securebits: securebits)
    }
}

/// A failure with a one-line message for users.
public struct CryoError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}
