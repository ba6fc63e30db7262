import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc

/// One thread: general registers (with fs/gs bases), the XSAVE area, the
/// blocked mask, its own queued signals, alternate stack, clear_child_tid,
/// robust list and rseq registration.
public struct ThreadRecord: Codable, Sendable {
    public var tid: Int32
    public var name: String
    /// struct user_regs_struct, word by word in kernel order.
    public var general: [UInt64]
    public var extendedState: Data
    public var blockedSignals: UInt64
    public var altstackAddress: UInt64
    public var altstackSize: UInt64
    public var altstackFlags: Int32
    public var clearChildTid: UInt64
    public var robustList: UInt64
    public var robustListLength: UInt64
    public var rseq: RseqRegistration?
    public var parentDeathSignal: Int32
    public var pending: [SignalsRecord.Pending]
    /// Set when the thread was inside a restartable syscall (-ERESTARTSYS, -ERESTARTNOHAND,
    /// -ERESTARTNOINTR): the registers say "restart it", and restore puts it back inside the
    /// syscall so the kernel decides, as it would have, whether a signal handler makes it EINTR.
    public var restartCode: Int64? = nil
    /// sched_getattr of the thread (absent in older images).
    public var scheduling: ThreadScheduling? = nil
    /// PR_GET_TIMERSLACK in the thread, nanoseconds (absent in older images).
    public var timerSlack: UInt64? = nil
    /// Set for a thread other than the leader whose seccomp filters or no_new_privs differ from the leader's.
    public var seccomp: SeccompState? = nil

    public struct RseqRegistration: Codable, Sendable {
        public var address: UInt64
        public var length: UInt32
        public var signature: UInt32
    }

    public static let registerNames = ["r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
                                       "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base",
                                       "ds", "es", "fs", "gs"]

    var registers: Registers {
        var regs = Registers()
        withUnsafeMutableBytes(of: &regs) { raw in
            for (i, word) in general.prefix(raw.count / 8).enumerated() { raw.storeBytes(of: word, toByteOffset: i * 8, as: UInt64.self) }
        }
        return regs
    }
}

extension ThreadRecord {
    /// A thread stopped inside a syscall is saved as it would be once that
    /// syscall is restarted, because the restored thread will not be in it.
    static func dump(_ tracee: Tracee, state: cryo_thread_state, timerSlack: UInt64) throws -> ThreadRecord {
        let original = tracee.originalRegisters
        let regs = original.restartingInterruptedSyscall
        // Only a syscall to be re-executed moves rip back (a restart block becomes EINTR in place).
        // A restart block re-executed is restarted as ERESTARTNOHAND is: again, or EINTR if a handler runs first.
        let restartCode: Int64? = regs.rip != original.rip ? (Int64(bitPattern: original.rax) == -516 ? -514 : Int64(bitPattern: original.rax)) : nil
        let rseq = try Ptrace.rseqConfiguration(tracee.pid)
        let name = withUnsafeBytes(of: state.name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        return ThreadRecord(
            tid: tracee.pid, name: name, general: withUnsafeBytes(of: regs) { Array($0.bindMemory(to: UInt64.self)) },
            extendedState: Data(try Ptrace.extendedState(tracee.pid)), blockedSignals: tracee.originalSignalMask,
            altstackAddress: state.altstack_sp, altstackSize: state.altstack_size, altstackFlags: state.altstack_flags,
            clearChildTid: state.clear_child_tid, robustList: state.robust_list, robustListLength: state.robust_list_len,
            rseq: rseq.rseq_abi_pointer == 0 ? nil
                : RseqRegistration(address: rseq.rseq_abi_pointer, length: rseq.rseq_abi_size, signature: rseq.signature),
            parentDeathSignal: state.parent_death_signal,
            pending: try SignalsRecord.pending(tracee.pid, shared: false), restartCode: restartCode,
            scheduling: try ThreadScheduling.dump(tid: tracee.pid), timerSlack: timerSlack)
    }

    /// What RESTORE_THREAD needs, run inside this thread.
    var parasiteState: cryo_thread_state {
        var t = cryo_thread_state()
        t.altstack_sp = altstackAddress
        t.altstack_size = altstackSize
        t.altstack_flags = altstackFlags
        t.parent_death_signal = parentDeathSignal
        t.clear_child_tid = clearChildTid
        t.robust_list = robustList
        t.robust_list_len = robustListLength
        if let rseq {
            t.rseq = rseq.address
            t.rseq_length = rseq.length
            t.rseq_signature = rseq.signature
        }
        withUnsafeMutableBytes(of: &t.name) { raw in
            for (i, b) in name.utf8.prefix(15).enumerated() { raw[i] = b }
        }
        t.signal_count = UInt32(pending.count)
        SignalsRecord.fill(&t.signals, with: pending)
        return t
    }

    /// RESTORE_THREAD's payload: the state with only its queued signals (not the whole array).
    var parasiteStateBytes: [UInt8] {
        trimmedSignals(of: parasiteState, signalsAt: MemoryLayout<cryo_thread_state>.offset(of: \.signals)!, count: pending.count)
    }

    /// The last step before the thread runs again.
    func restore(pid: pid_t) throws {
        try Ptrace.setExtendedState(pid, [UInt8](extendedState))
        var regs = registers
        if let code = restartCode {
            // Set in a stop inside the signal path: on the way out the kernel restarts the
            // syscall, or makes it EINTR when a handler runs first (SIGCONT's, say).
            regs.orig_rax = regs.rax
            regs.rax = UInt64(bitPattern: code)
            regs.rip += 2
        }
        try Ptrace.setRegisters(pid, regs)
        try Ptrace.setSignalMask(pid, blockedSignals)
    }

    func validate(file: String) throws {
        guard general.count == MemoryLayout<Registers>.size / 8 else {
            throw ImageError(file: file, record: "threads", "thread \(tid): \(general.count) general registers, expected \(MemoryLayout<Registers>.size / 8)")
        }
        guard extendedState.count >= 512, extendedState.count <= 16384 else {
            throw ImageError(file: file, record: "threads", "thread \(tid): XSAVE area of \(extendedState.count) bytes")
        }
        try SignalsRecord.validate(pending, file: file, record: "threads")
        try scheduling?.validate(file: file, tid: tid)
        try seccomp?.validate(file: file)
    }
}
