import CCryo
import CryoSystem
import FoundationEssentials
import Glibc

/// seccomp filters (BPF programs, oldest first) and no_new_privs. Read with
/// PTRACE_SECCOMP_GET_FILTER; installed last at restore, from inside the
/// task, while PTRACE_O_SUSPEND_SECCOMP keeps them from blocking cryo.
public struct SeccompState: Codable, Sendable {
    public var noNewPrivileges: Bool
    /// Each filter's 8-byte BPF instructions, oldest filter first.
    public var filters: [[UInt64]]

    static func dump(pid: pid_t, status: ProcStatus) throws -> SeccompState? {
        let noNewPrivileges = status.values["NoNewPrivs"] == "1"
        switch status.values["Seccomp"] ?? "0" {
        case "0": return noNewPrivileges ? SeccompState(noNewPrivileges: true, filters: []) : nil
        case "2": break
        default: throw CryoError("pid \(pid) runs in strict seccomp mode, which cannot be restored")
        }
        var filters: [[UInt64]] = []
        while let filter = try Ptrace.seccompFilter(pid, index: filters.count) { filters.append(filter) }
        return SeccompState(noNewPrivileges: noNewPrivileges, filters: filters.reversed())
    }

    var parasitePayload: [UInt8] {
        var payload = bytes(of: cryo_seccomp(no_new_privs: noNewPrivileges ? 1 : 0, filter_count: UInt32(filters.count)))
        for filter in filters {
            payload += bytes(of: UInt32(filter.count)) + bytes(of: UInt32(0)) + bytes(of: filter)
        }
        return payload
    }

    func validate(file: String) throws {
        for filter in filters where filter.isEmpty || filter.count > 4096 {
            throw ImageError(file: file, record: "task", "seccomp filter of \(filter.count) instructions")
        }
    }
}
