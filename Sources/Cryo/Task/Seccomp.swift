import CCryo
import CryoSystem
import FoundationEssentials
import Glibc

/// seccomp filters (BPF programs, oldest first) and no_new_privs of one
/// thread. Read with PTRACE_SECCOMP_GET_FILTER; installed last at restore,
/// from inside the task, while PTRACE_O_SUSPEND_SECCOMP keeps them from
/// blocking cryo: the filters every thread has first, synced to all threads
/// (TSYNC, so they stay shared), then each thread's own in that thread.
/// A thread in strict mode (read, write, exit and sigreturn only) enters it
/// again the same way: the suspension lasts until cryo lets the task go.
public struct SeccompState: Codable, Sendable, Equatable {
    public var noNewPrivileges: Bool
    /// Each filter's 8-byte BPF instructions, oldest filter first.
    public var filters: [[UInt64]]
    /// Set by dumps that keep the order above. Before, the filters were saved newest first
    /// (PTRACE_SECCOMP_GET_FILTER counts from the oldest, index 0); such images are turned on load.
    public var oldestFirst: Bool? = true
    /// SECCOMP_MODE_STRICT (prctl PR_SET_SECCOMP), which has no filters.
    public var strict: Bool? = nil

    static let none = SeccompState(noNewPrivileges: false, filters: [])

    /// The filters oldest first, whatever the image's age.
    var inInstallOrder: SeccompState {
        oldestFirst == true ? self : SeccompState(noNewPrivileges: noNewPrivileges, filters: filters.reversed(), strict: strict)
    }

    /// One thread's state (`process` set for a thread other than the leader).
    static func dump(pid: pid_t, status: ProcStatus, process: pid_t? = nil) throws -> SeccompState? {
        let noNewPrivileges = status.values["NoNewPrivs"] == "1"
        let who = process.map { "thread \(pid) of pid \($0)" } ?? "pid \(pid)"
        switch status.values["Seccomp"] ?? "0" {
        case "0": return noNewPrivileges ? SeccompState(noNewPrivileges: true, filters: []) : nil
        case "1": return SeccompState(noNewPrivileges: noNewPrivileges, filters: [], strict: true)
        case "2": break
        default: throw CryoError("\(who) runs in seccomp mode \(status.values["Seccomp"] ?? "?"), which cryo does not know")
        }
        var filters: [[UInt64]] = []
        while let filter = try Ptrace.seccompFilter(pid, index: filters.count) { filters.append(filter) }
        return SeccompState(noNewPrivileges: noNewPrivileges, filters: filters)
    }

    /// A thread other than the leader: nil when it has what the leader has (older images hold nothing else).
    static func dumpThread(tid: pid_t, process: pid_t, leader: SeccompState?) throws -> SeccompState? {
        let own = try dump(pid: tid, status: try ProcStatus(pid: tid, thread: process), process: process) ?? .none
        return own == (leader ?? .none) ? nil : own
    }

    func parasitePayload(synced: Bool) -> [UInt8] {
        var payload = bytes(of: cryo_seccomp(no_new_privs: noNewPrivileges ? 1 : 0, filter_count: UInt32(filters.count),
                                             flags: (synced ? CRYO_SECCOMP_TSYNC : 0) | (strict == true ? CRYO_SECCOMP_STRICT : 0), pad: 0))
        for filter in filters {
            payload += bytes(of: UInt32(filter.count)) + bytes(of: UInt32(0)) + bytes(of: filter)
        }
        return payload
    }

    func validate(file: String) throws {
        for filter in filters where filter.isEmpty || filter.count > 4096 {
            throw ImageError(file: file, record: "task", "seccomp filter of \(filter.count) instructions")
        }
        if strict == true && !filters.isEmpty { throw ImageError(file: file, record: "task", "seccomp strict mode with filters") }
    }

    /// What each thread installs (nil: nothing): first the leader, synced to all, the filters
    /// every thread has and no_new_privs if all have it; then each thread the rest of its own.
    static func restorePlan(leader: SeccompState?, threads: [SeccompState?]) -> [(thread: Int, state: SeccompState, synced: Bool)] {
        let leader = leader?.inInstallOrder
        let states = [leader ?? .none] + threads.map { $0?.inInstallOrder ?? leader ?? .none }
        guard states.contains(where: { $0 != .none }) else { return [] }
        var shared = states[0].filters
        for state in states.dropFirst() {
            shared = Array(zip(shared, state.filters).prefix(while: { $0.0 == $0.1 }).map(\.0))
        }
        // TSYNC passes no_new_privs on with a filter only.
        let syncedNoNewPrivileges = !shared.isEmpty && states.allSatisfy(\.noNewPrivileges)
        var plan: [(thread: Int, state: SeccompState, synced: Bool)] = []
        if !shared.isEmpty {
            plan.append((0, SeccompState(noNewPrivileges: syncedNoNewPrivileges, filters: shared), true))
        }
        for (i, state) in states.enumerated() {
            let own = SeccompState(noNewPrivileges: state.noNewPrivileges && !syncedNoNewPrivileges, filters: Array(state.filters.dropFirst(shared.count)),
                                   strict: state.strict)
            if own != .none { plan.append((i, own, false)) }
        }
        return plan
    }
}

extension TaskImage {
    /// The seccomp commands of this process, by thread index.
    var seccompPlan: [(thread: Int, state: SeccompState, synced: Bool)] {
        SeccompState.restorePlan(leader: core.seccomp, threads: threads.dropFirst().map(\.seccomp))
    }
}
