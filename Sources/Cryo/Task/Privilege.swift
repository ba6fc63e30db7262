import CCryo
import CryoSystem
import FoundationEssentials
import Glibc

/// Who runs cryo. A cryo run by an ordinary user (typically a binary with
/// `cap_checkpoint_restore,cap_sys_ptrace+ep` file capabilities) must only
/// touch that user's own processes and never make a process with credentials
/// or capabilities the user does not hold: its capabilities are lent for the
/// job, not to be handed on. Root (real uid 0, no AT_SECURE) is not limited.
public struct Caller: Sendable {
    public let fullyPrivileged: Bool
    public let uid: UInt32
    public let gid: UInt32
    /// Sorted, as the kernel keeps them.
    public let groups: [UInt32]
    /// Capabilities the user holds in their own right. Under AT_SECURE (file
    /// capabilities or set-uid) cryo's permitted set is not theirs: only the
    /// inheritable set survived the exec unchanged.
    public let capabilities: UInt64
    public let securebits: UInt32
    /// cryo's own effective set, whoever granted it.
    public let effectiveCapabilities: UInt64

    public static let current = Caller()

    init() {
        let secure = Kernel.secureExecution
        uid = getuid()
        gid = getgid()
        fullyPrivileged = uid == 0 && !secure
        let count = getgroups(0, nil)
        var list = [gid_t](repeating: 0, count: Int(max(count, 0)))
        let got = count > 0 ? getgroups(count, &list) : 0
        groups = Array(list.prefix(Int(max(got, 0)))).sorted()
        let status = try? ProcStatus(pid: getpid())
        capabilities = secure ? (status?.hex("CapInh") ?? 0) : (status?.hex("CapPrm") ?? 0)
        effectiveCapabilities = status?.hex("CapEff") ?? 0
        securebits = (try? ProcessControl.securebits()) ?? 0
    }

    /// Refuses, in one line naming the pid and the field, credentials that are
    /// not the caller's own (when cryo is not fully privileged).
    public func checkOwn(_ c: TaskCore.Credentials, pid: Int32, doing: String) throws {
        guard !fullyPrivileged else { return }
        func refuse(_ field: String, _ value: String, _ own: String) -> CryoError {
            CryoError("pid \(pid): \(field) \(value) \(own); cryo runs as uid \(uid) without full privilege and "
                + "\(doing) only processes with the caller's own credentials (run it as root for others)")
        }
        if let other = c.uids.first(where: { $0 != uid }) {
            throw refuse("uid", "\(other) (uids \(list(c.uids)))", "is not the caller's uid \(uid)")
        }
        if let other = c.gids.first(where: { $0 != gid }) {
            throw refuse("gid", "\(other) (gids \(list(c.gids)))", "is not the caller's gid \(gid)")
        }
        if c.groups.sorted() != groups {
            throw refuse("supplementary groups", "[\(list(c.groups))]", "are not the caller's own [\(list(groups))]")
        }
        for (field, set) in [("permitted capabilities", c.capPermitted), ("effective capabilities", c.capEffective),
                             ("inheritable capabilities", c.capInheritable), ("ambient capabilities", c.capAmbient)]
        where set & ~capabilities != 0 {
            throw refuse(field, "0x\(String(set, radix: 16))",
                         "hold 0x\(String(set & ~capabilities, radix: 16)), which the caller does not (own: 0x\(String(capabilities, radix: 16)))")
        }
        let keepCaps: UInt32 = 1 << 4  // set and cleared around the uid change without privilege
        if c.securebits & ~keepCaps != securebits & ~keepCaps {
            throw refuse("securebits", "0x\(String(c.securebits, radix: 16))", "differ from the caller's 0x\(String(securebits, radix: 16))")
        }
    }

    /// Checks a live process from /proc before it is touched.
    func checkOwn(pid: pid_t, doing: String) throws {
        guard !fullyPrivileged else { return }
        let status = try ProcStatus(pid: pid)
        // securebits are not in /proc: compared at restore, where they are in the image.
        try checkOwn(status.credentials(securebits: securebits), pid: pid, doing: doing)
    }

    /// A failure with EPERM while not fully privileged says what would need more privilege.
    public func explain(_ error: Error) -> Error {
        let text = "\(error)"
        guard !fullyPrivileged, text.contains("EPERM") || text.contains("EACCES"), !text.contains(" needs ") else { return error }
        let need: String
        if text.contains("TCP_REPAIR") { need = "--tcp-established needs CAP_NET_ADMIN" }
        else if text.contains("prlimit") || text.contains("resource limit") { need = "raising a hard resource limit needs CAP_SYS_RESOURCE" }
        else if text.contains("CLONE_NEWPID") { need = "--pidns needs CAP_SYS_ADMIN" }
        else if text.contains("set_tid") || text.contains("clone3") { need = "choosing pids needs CAP_CHECKPOINT_RESTORE" }
        else if text.contains("chroot") { need = "restoring a root directory other than / needs CAP_SYS_CHROOT" }
        else if text.contains("ptrace") || text.contains("seize") { need = "tracing another user's process needs CAP_SYS_PTRACE" }
        else { need = "this needs more privilege" }
        return CryoError("\(text) (\(need); cryo runs as uid \(uid) without full privilege)")
    }

    private func list(_ values: [UInt32]) -> String { values.map(String.init).joined(separator: ",") }
}
