import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc

/// What only a task itself can tell, read live by the parasite; the process
/// is cured and carries on. The report says how long it was stopped.
public struct InspectReport: Codable, Sendable {
    public struct Thread: Codable, Sendable {
        public var tid: Int32
        public var rip: UInt64
        public var blockedSignals: UInt64
        public var altstackAddress: UInt64
        public var altstackSize: UInt64
        public var altstackEnabled: Bool
        public var clearChildTid: UInt64
        public var robustList: UInt64
        public var rseq: ThreadRecord.RseqRegistration?
        public var parentDeathSignal: Int32
        public var pending: [Int32]
    }
    public var pid: Int32
    public var comm: String
    public var actions: [SignalsRecord.Action]
    public var timers: [SignalsRecord.IntervalTimer]
    public var pendingShared: [Int32]
    public var umask: UInt32
    public var brk: UInt64
    public var dumpable: UInt32
    public var securebits: UInt32
    public var seccompMode: String
    public var threads: [Thread]
    public var stoppedSeconds: Double

    public static func inspect(pid: pid_t) throws -> InspectReport {
        guard pid != getpid() else { throw CryoError("pid \(pid) is cryo itself") }
        let started = ContinuousClock.now
        let tree = try FrozenTree.freezeOne(pid)
        guard let process = tree.live.first else { throw tree.release(after: CryoError("pid \(pid) is a zombie")) }
        var state = cryo_task_state()
        var threads: [Thread] = []
        var report: InspectReport
        do {
            let parasite = try Parasite.inject(into: process.leader, argumentBytes: MemoryLayout<cryo_thread_state>.size)
            do {
                state = try parasite.run(CRYO_CMD_DUMP_PROCESS, input: UInt8(0), output: cryo_task_state.self)
                for thread in process.threads {
                    let t = try parasite.run(CRYO_CMD_DUMP_THREAD, input: UInt8(0), output: cryo_thread_state.self, on: thread)
                    let rseq = try Ptrace.rseqConfiguration(thread.pid)
                    threads.append(Thread(
                        tid: thread.pid, rip: thread.originalRegisters.rip, blockedSignals: thread.originalSignalMask,
                        altstackAddress: t.altstack_sp, altstackSize: t.altstack_size, altstackEnabled: t.altstack_flags & 2 == 0,
                        clearChildTid: t.clear_child_tid, robustList: t.robust_list,
                        rseq: rseq.rseq_abi_pointer == 0 ? nil : .init(address: rseq.rseq_abi_pointer, length: rseq.rseq_abi_size, signature: rseq.signature),
                        parentDeathSignal: t.parent_death_signal,
                        pending: try SignalsRecord.pending(thread.pid, shared: false).map(\.signal)))
                }
                try parasite.cure()
            } catch {
                _ = try? parasite.cure()
                throw error
            }
            let signals = try SignalsRecord.dump(pid: pid, state: state)
            let status = try ProcStatus(pid: pid)
            let modes = ["0": "disabled", "1": "strict", "2": "filter"]
            report = InspectReport(
                pid: pid, comm: process.comm, actions: signals.actions, timers: signals.timers,
                pendingShared: signals.pending.map(\.signal), umask: state.umask, brk: state.brk, dumpable: state.dumpable,
                securebits: state.securebits, seccompMode: modes[status.values["Seccomp"] ?? ""] ?? (status.values["Seccomp"] ?? "?"),
                threads: threads, stoppedSeconds: 0)
        } catch {
            throw tree.release(after: error)
        }
        try tree.release()
        report.stoppedSeconds = seconds(since: started)
        return report
    }
}
