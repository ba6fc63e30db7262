import CCryo
import CryoSystem
import Glibc

/// Why a traced task could not be driven.
public enum InjectionError: Error, CustomStringConvertible {
    case wrongThread(pid: pid_t)
    case vanished(pid: pid_t, status: WaitStatus)
    case fault(pid: pid_t, signal: Int32, registers: Registers, during: String)
    case parasiteFault(pid: pid_t, signal: Int32, registers: Registers, command: String, backtrace: [String])
    case parasite(pid: pid_t, command: String, result: Int64, step: UInt64, syscall: UInt64, address: UInt64)
    case protocolMismatch(pid: pid_t, detail: String)
    case system(SyscallError)

    public var description: String {
        switch self {
        case .wrongThread(let pid):
            return "pid \(pid): ptrace request from a thread other than the one that seized the task"
        case .vanished(let pid, let status):
            return "pid \(pid) vanished while traced (\(status))"
        case .fault(let pid, let signal, let regs, let during):
            return "pid \(pid): signal \(signal) (\(signalName(signal))) at rip 0x\(String(regs.rip, radix: 16)) during \(during); "
                + "rsp 0x\(String(regs.rsp, radix: 16)) rax 0x\(String(regs.rax, radix: 16)) rdi 0x\(String(regs.rdi, radix: 16))"
        case .parasiteFault(let pid, let signal, let r, let command, let backtrace):
            return "pid \(pid): the parasite crashed with \(signalName(signal)) in command \(command) at \(backtrace.first ?? "?"); "
                + "rip 0x\(hex(r.rip)) rsp 0x\(hex(r.rsp)) rbp 0x\(hex(r.rbp)) rax 0x\(hex(r.rax)) rbx 0x\(hex(r.rbx)) "
                + "rcx 0x\(hex(r.rcx)) rdx 0x\(hex(r.rdx)) rsi 0x\(hex(r.rsi)) rdi 0x\(hex(r.rdi)) r8 0x\(hex(r.r8)) "
                + "r9 0x\(hex(r.r9)) r10 0x\(hex(r.r10)) r11 0x\(hex(r.r11)) r12 0x\(hex(r.r12)) r13 0x\(hex(r.r13)) "
                + "r14 0x\(hex(r.r14)) r15 0x\(hex(r.r15)) eflags 0x\(hex(r.eflags)); backtrace: \(backtrace.joined(separator: " <- "))"
        case .parasite(let pid, let command, let result, let step, let syscall, let address):
            let errno = SyscallError("", errno: .init(rawValue: Int32(-result)))
            return "pid \(pid): parasite command \(command) failed at item \(step): syscall \(syscallName(syscall)) "
                + "(0x\(String(address, radix: 16))): \(errno.errno.name) (\(errno.errno.description))"
        case .protocolMismatch(let pid, let detail):
            return "pid \(pid): parasite protocol mismatch: \(detail)"
        case .system(let error):
            return error.description
        }
    }
}

func hex(_ value: UInt64) -> String { String(value, radix: 16) }

func signalName(_ signal: Int32) -> String {
    let names: [Int32: String] = [SIGSEGV: "SIGSEGV", SIGBUS: "SIGBUS", SIGILL: "SIGILL", SIGTRAP: "SIGTRAP",
                                  SIGFPE: "SIGFPE", SIGKILL: "SIGKILL", SIGSTOP: "SIGSTOP", SIGABRT: "SIGABRT"]
    return names[signal] ?? "signal \(signal)"
}

func syscallName(_ number: UInt64) -> String {
    let names: [UInt64: String] = [
        0: "read", 3: "close", 9: "mmap", 10: "mprotect", 11: "munmap", 12: "brk", 13: "rt_sigaction",
        17: "pread64", 25: "mremap", 27: "mincore", 28: "madvise", 36: "getitimer", 38: "setitimer", 41: "socket", 42: "connect",
        47: "recvmsg", 72: "fcntl", 81: "fchdir", 95: "umask", 109: "setpgid", 112: "setsid", 116: "setgroups", 117: "setresuid", 119: "setresgid",
        126: "capset", 129: "rt_sigqueueinfo", 131: "sigaltstack", 135: "personality", 151: "mlockall", 157: "prctl", 161: "chroot",
        218: "set_tid_address", 273: "set_robust_list", 274: "get_robust_list", 292: "dup3", 295: "preadv", 297: "rt_tgsigqueueinfo", 325: "mlock2",
        334: "rseq", 435: "clone3", 436: "close_range", 462: "mseal",
    ]
    return names[number] ?? "#\(number)"
}

/// A seized task. All requests must come from the thread that seized it:
/// the kernel ties ptrace to that thread, so misuse is reported, not retried.
public final class Tracee {
    public let pid: pid_t
    /// Registers and signal mask as they were when seized; cure puts them back.
    public let originalRegisters: Registers
    public let originalSignalMask: UInt64
    private let owner: pthread_t
    /// Address of a `syscall; int3` pair inside the task, once a parasite is mapped.
    var gadget: UInt64?
    public var gadgetAddress: UInt64? { gadget }
    /// Executable address where a syscall may be placed when no parasite is
    /// mapped; the task's own rip unless its code was replaced meanwhile (restore).
    public var syscallSite: UInt64?
    public private(set) var attached = true
    /// Seized while running (dump, inspect), not created by cryo: it must survive cryo's death.
    public let live: Bool
    /// Set once cryo has left the way home on this thread's stack (see ReturnPath).
    public private(set) var returnPath: ReturnPath?
    /// Stopped at a syscall exit: registers set here would skip the kernel's restart of an interrupted syscall.
    private var atSyscallStop = false
    /// The signal of the group stop the process was in when seized (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU).
    public private(set) var groupStopSignal: Int32?
    /// A stop signal the task dequeued while cryo drove it: held back, and sent again before detaching.
    public private(set) var heldStopSignal: Int32?
    /// Seized with PTRACE_O_SUSPEND_SECCOMP (needs CAP_SYS_ADMIN): its filters do not see injected syscalls.
    public private(set) var seccompSuspended = false
    static let stopSignals: Set<Int32> = [SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU]

    /// An int3 makes the kernel force a SIGTRAP on the task (force_sig_info_to_task): were SIGTRAP
    /// blocked or ignored then, the task's action for it would become SIG_DFL and its mask lose it.
    /// So a task runs into cryo's int3s with every signal blocked but SIGTRAP.
    static let trapBit = UInt64(1) << UInt64(SIGTRAP - 1)
    static let breakpointMask = ~trapBit
    /// No int3 in this task: its SIGTRAP is ignored or pending, which a trap would change (an ignored
    /// SIGTRAP becomes SIG_DFL; the trap's SIGTRAP merges with a pending one, which cryo would then
    /// take for its own). Syscalls stop at their entry and exit instead, and parasite commands at a
    /// signal the parasite raises, one the task has no instance of pending (`busySignals`).
    public private(set) var breakpointFree = false
    private var busySignals: UInt64 = 0
    /// Looked at /proc for its SIGTRAP state (a live task, before its first int3).
    private var trapStateChecked = false
    /// SIGTRAPs sent to the task by others while cryo drove it: sent again before detaching.
    public private(set) var heldTraps = 0
    private var holdingTrap = false

    /// From now on, no int3 in this task; `pending`: signals it has (or will have) pending.
    public func avoidBreakpoints(pending: UInt64) {
        breakpointFree = true
        busySignals |= pending
    }

    /// A live task's SIGTRAP state, read once before an int3 would first run in it.
    func checkTrapState() {
        guard live, !trapStateChecked, !breakpointFree else { return }
        trapStateChecked = true
        guard let status = TaskStatusLines(pid: pid, keys: ["SigPnd", "ShdPnd", "SigIgn"]) else { return }
        let pending = (status.mask("SigPnd") ?? 0) | (status.mask("ShdPnd") ?? 0)
        if (pending | (status.mask("SigIgn") ?? 0)) & Tracee.trapBit != 0 { avoidBreakpoints(pending: pending) }
    }

    /// The signal that ends a parasite command in a task without int3: one not pending in it, and
    /// none a restored task's own timers or children raise on their own (SIGALRM, SIGCHLD...).
    var quietStopSignal: Int32? {
        [SIGURG, SIGWINCH, SIGPWR, SIGSTKFLT, SIGUSR2, SIGUSR1].first { busySignals & (UInt64(1) << UInt64($0 - 1)) == 0 }
    }

    /// Seize and stop the task: PTRACE_SEIZE, PTRACE_INTERRUPT, wait for the stop.
    /// No PTRACE_O_EXITKILL: if cryo dies, a task it was only reading survives.
    /// `whileWaiting`: the stop is polled for, and this runs about every second until it comes;
    /// what it throws ends the wait (a task in an uninterruptible wait may never stop).
    public static func seize(_ pid: pid_t, whileWaiting: (() throws -> Void)? = nil) throws -> Tracee {
        // Suspending its seccomp filters needs CAP_SYS_ADMIN; without it, seize plainly.
        var suspended = true
        do { try Ptrace.seize(pid, options: Ptrace.suspendSeccomp | Ptrace.traceSysGood) } catch let error as SyscallError where error.errno == .notPermitted {
            try Ptrace.seize(pid, options: Ptrace.traceSysGood)
            suspended = false
        }
        do {
            try Ptrace.interrupt(pid)
            // A seized task reports a group stop it is in with that stop's signal, else SIGTRAP.
            let stopSignal = try waitForInterruptStop(pid, whileWaiting: whileWaiting)
            let regs = try abortingRseqCriticalSection(pid, try Ptrace.registers(pid))
            let mask = try Ptrace.signalMask(pid)
            let tracee = Tracee(pid: pid, registers: regs, mask: mask, live: true)
            tracee.seccompSuspended = suspended
            if stopSignals.contains(stopSignal) { tracee.groupStopSignal = stopSignal }
            return tracee
        } catch let error as InjectionError {
            try? Ptrace.detach(pid)
            throw error
        } catch {
            try? Ptrace.detach(pid)
            throw error
        }
    }

    /// A thread stopped inside an rseq critical section is moved to the section's abort handler, as
    /// the kernel itself does when it preempts one there. Left where it was, it would finish the
    /// section from the middle: once cryo's own code ran in the thread (or in a restored copy),
    /// the kernel has cleared rseq_cs and no longer knows it is in one. Read before any of that.
    static func abortingRseqCriticalSection(_ pid: pid_t, _ regs: Registers) throws -> Registers {
        // Inside a syscall it is not in user code of a section (and the kernel forbids syscalls there).
        guard Int64(bitPattern: regs.orig_rax) < 0,
              let config = try? Ptrace.rseqConfiguration(pid), config.rseq_abi_pointer != 0 else { return regs }
        var descriptor: UInt64 = 0  // struct rseq's rseq_cs, 8 bytes in
        guard (try? withUnsafeMutableBytes(of: &descriptor) {
            try RemoteMemory.read(pid, at: config.rseq_abi_pointer + 8, into: $0)
        }) != nil, descriptor != 0 else { return regs }
        // struct rseq_cs: version, flags (u32 each), start_ip, post_commit_offset, abort_ip.
        var section = (version: UInt32(0), flags: UInt32(0), start: UInt64(0), length: UInt64(0), abort: UInt64(0))
        guard (try? withUnsafeMutableBytes(of: &section) { try RemoteMemory.read(pid, at: descriptor, into: $0) }) != nil,
              section.version == 0, regs.rip &- section.start < section.length else { return regs }
        var moved = regs
        moved.rip = section.abort
        try Ptrace.setRegisters(pid, moved)
        return moved
    }

    /// A task created by us and already seized (restore).
    public static func adopt(_ pid: pid_t) throws -> Tracee {
        do {
            return Tracee(pid: pid, registers: try Ptrace.registers(pid), mask: try Ptrace.signalMask(pid), live: false)
        } catch { throw error }
    }

    private init(pid: pid_t, registers: Registers, mask: UInt64, live: Bool) {
        self.pid = pid
        self.live = live
        self.originalRegisters = registers
        self.originalSignalMask = mask
        self.owner = pthread_self()
    }

    @discardableResult
    static func waitForInterruptStop(_ pid: pid_t, whileWaiting: (() throws -> Void)? = nil) throws -> Int32 {
        var polls = 0
        while true {
            let status: WaitStatus
            if let whileWaiting {
                status = try waitFor(pid, options: WNOHANG)
                if case .stopped(0, 0) = status {  // nothing to report yet
                    // Yield first (the stop usually comes within microseconds), then sleep longer and longer.
                    polls += 1
                    if polls < 200 { sched_yield() } else { usleep(polls < 2000 ? 50 : 1000) }
                    if polls % 1000 == 0 { try whileWaiting() }
                    continue
                }
            } else {
                do { status = try waitFor(pid) } catch { throw error }
            }
            switch status {
            case .stopped(let signal, let event) where event == 128 /* PTRACE_EVENT_STOP */:
                return signal
            case .stopped(let signal, _):
                // A signal arrived first: let it be delivered as it would have been.
                do { try Ptrace.cont(pid, signal: signal) } catch { throw error }
            case .exited, .signaled:
                throw InjectionError.vanished(pid: pid, status: status)
            }
        }
    }

    func checkThread() throws {
        if pthread_equal(owner, pthread_self()) == 0 { throw InjectionError.wrongThread(pid: pid) }
    }

    /// Runs the task from `registers` until it reaches an int3; returns the registers there.
    func run(_ registers: Registers, during: String) throws -> Registers {
        try checkThread()
        var regs = registers
        regs.orig_rax = UInt64(bitPattern: -1) // never restart the interrupted syscall
        try Ptrace.setRegisters(pid, regs)
        try Ptrace.setSignalMask(pid, Tracee.breakpointMask)
        try Ptrace.cont(pid)
        return try waitForStop(during: during, resume: Ptrace.cont) { signal, _ in
            guard signal == SIGTRAP else { return nil }
            // An int3's SIGTRAP says SI_KERNEL; one another process sent a live task is the task's: kept for it.
            // A task cryo made has none (it is breakpointFree from the moment its image has one).
            if !live || (try? Ptrace.stopSignalCode(pid)) == 0x80 /* SI_KERNEL */ { return true }
            heldTraps += 1
            holdingTrap = true
            return nil
        }
    }

    /// Waits for the stop `accept` takes (true), passing on signals it declines
    /// (false) and going on past group stops and late interrupts with `resume`;
    /// any other signal (nil) is a fault.
    private func waitForStop(during: String, resume: (pid_t, Int32) throws -> Void,
                             accept: (Int32, Registers) -> Bool?) throws -> Registers {
        while true {
            let status = try waitFor(pid)
            switch status {
            case .stopped(let signal, 0):
                let regs = try Ptrace.registers(pid)
                switch accept(signal, regs) {
                case true?: return regs
                case false?: try Ptrace.cont(pid, signal: signal)
                case nil where holdingTrap:
                    holdingTrap = false
                    try resume(pid, 0)
                case nil where Tracee.stopSignals.contains(signal):
                    // Sent to the task before or while cryo drives it: it must not stop now, but it must stop.
                    heldStopSignal = signal
                    try resume(pid, 0)
                case nil: throw InjectionError.fault(pid: pid, signal: signal, registers: regs, during: during)
                }
            case .stopped:
                try resume(pid, 0)
            case .exited, .signaled:
                attached = false
                throw InjectionError.vanished(pid: pid, status: status)
            }
        }
    }

    /// Executes one system call inside the task: through the way home when there
    /// is one; else, before a parasite is mapped, with a `syscall; int3` pair
    /// written over the code at rip and put back after.
    @discardableResult
    public func syscall(_ number: Int, _ args: UInt64...) throws -> Int64 {
        if gadget == nil { _ = prepareWayHome() } // a syscall without a parasite (pre-dump's userfaultfd)
        if let returnPath { return try syscallGoingHome(number, args, path: returnPath) }
        // Restore's kill points (a live task takes the way home and has its own).
        killPoint("injecting \(syscallName(UInt64(number)))")
        var regs = syscallRegisters(number, args)
        let name = "injected syscall \(syscallName(UInt64(number)))"
        checkTrapState()
        if breakpointFree {
            if let gadget { regs.rip = gadget; return try syscallBetweenStops(regs, name: name) }
            return try withSyscallAtRip { (site) throws -> Int64 in
                regs.rip = site
                return try syscallBetweenStops(regs, name: name)
            }
        }
        if let gadget {
            regs.rip = gadget
            return Int64(bitPattern: try run(regs, during: name).rax)
        }
        return try withSyscallAtRip { (site) throws -> Int64 in
            regs.rip = site
            return Int64(bitPattern: try run(regs, during: name).rax)
        }
    }

    /// One syscall from `regs` (rip at a `syscall` instruction), stopped at its entry and at its
    /// exit, where its result is: no signal involved. Every signal stays blocked meanwhile.
    private func syscallBetweenStops(_ regs: Registers, name: String, atEntry: (() -> Void)? = nil) throws -> Int64 {
        try checkThread()
        try Ptrace.setRegisters(pid, regs)
        try Ptrace.setSignalMask(pid, ~0)
        try Ptrace.resumeToSyscall(pid)
        let entry = try waitForSyscallStop(during: name)
        guard entry.orig_rax == regs.rax else {
            throw InjectionError.fault(pid: pid, signal: SIGTRAP, registers: entry, during: "\(name): stopped in syscall \(syscallName(entry.orig_rax))")
        }
        atEntry?()
        try Ptrace.resumeToSyscall(pid)
        let exit = try waitForSyscallStop(during: name)
        atSyscallStop = true
        return Int64(bitPattern: exit.rax)
    }

    /// Leaves a syscall-exit stop for a stop where registers set by cryo get the kernel's restart
    /// handling (restore sets the task's own registers after the last injected syscall).
    public func settle() throws {
        if atSyscallStop { try returnToSignalStop() }
    }

    /// The original registers with a syscall's number and arguments in place.
    private func syscallRegisters(_ number: Int, _ args: [UInt64]) -> Registers {
        var regs = originalRegisters
        regs.rax = UInt64(number)
        regs.orig_rax = UInt64.max
        let argumentRegisters: [WritableKeyPath<Registers, UInt64>] = [\.rdi, \.rsi, \.rdx, \.r10, \.r8, \.r9]
        for (i, value) in args.enumerated() { regs[keyPath: argumentRegisters[i]] = value }
        return regs
    }

    /// Temporarily places `syscall; int3` at the original rip.
    func withSyscallAtRip<T>(_ body: (UInt64) throws -> T) throws -> T {
        try checkThread()
        let site = syscallSite ?? originalRegisters.rip
        let saved: UInt64
        do {
            saved = try Ptrace.peek(pid, site)
            try Ptrace.poke(pid, site, (saved & ~0xff_ffff) | 0xcc_050f)
        } catch { throw error }
        defer { try? Ptrace.poke(pid, site, saved) }
        return try body(site)
    }

    /// Puts back the registers and mask it was seized with. The mask goes first:
    /// until the registers are back, they still lead home, and the way home
    /// restores the mask too.
    public func restoreOriginalState() throws {
        if atSyscallStop { try returnToSignalStop() }
        try Ptrace.setSignalMask(pid, originalSignalMask)
        try Ptrace.setRegisters(pid, originalRegisters)
    }

    // MARK: The way home (live tasks)

    /// A task seized while running must survive cryo's death from its first
    /// injected syscall on: finds the gadgets and writes the frame. Returns why
    /// there is no way home, if there is none (nil as well for tasks cryo made).
    func prepareWayHome(status: TaskStatusLines? = nil) -> String? {
        guard live, returnPath == nil else { return nil }
        if TestHooks.current.noWayHome { return "none wanted (CRYO_NO_WAY_HOME)" }
        if let status = status ?? TaskStatusLines(pid: pid, keys: ["x86_Thread_features"]), ReturnGadgets.usesShadowStack(status) {
            return "shadow stack enabled: rt_sigreturn would need its token"
        }
        guard let gadgets = ReturnGadgets.find(pid: pid) else {
            return "no rt_sigreturn and `syscall; ret` sequences in its code"
        }
        do { try prepareReturnPath(gadgets) } catch { return "no way home: \(error)" }
        return nil
    }

    /// Writes the frame for the way home below this thread's stack (once).
    func prepareReturnPath(_ gadgets: ReturnGadgets) throws {
        if returnPath == nil { returnPath = try ReturnPath.install(for: self, gadgets: gadgets) }
    }

    /// One syscall through the task's own `syscall; ret`, which returns to the
    /// rt_sigreturn gadget: if cryo dies at any point, the task finishes this
    /// syscall and goes home. Two stops: entry, then exit with the result.
    func syscallGoingHome(_ number: Int, _ args: [UInt64], path: ReturnPath) throws -> Int64 {
        try syscallBetweenStops(syscallGoingHomeRegisters(number, args, path: path), name: "injected syscall \(syscallName(UInt64(number)))") {
            killPoint("entered \(syscallName(UInt64(number)))")
        }
    }

    private func waitForSyscallStop(during: String) throws -> Registers {
        try waitForStop(during: during, resume: { pid, _ in try Ptrace.resumeToSyscall(pid) }) { signal, _ in
            signal == SIGTRAP | 0x80 ? true : nil
        }
    }

    /// From a syscall-exit stop to a stop in the signal path, where registers set
    /// by cryo get the kernel's restart handling on the way out.
    private func returnToSignalStop() throws {
        try Ptrace.interrupt(pid)
        try Ptrace.cont(pid)
        try Tracee.waitForInterruptStop(pid)
        atSyscallStop = false
    }

    /// Registers that, if cryo died now, take the task straight home.
    func parkHome() throws {
        guard let returnPath else { return }
        var regs = originalRegisters
        regs.rip = returnPath.gadgets.sigreturn
        regs.rsp = returnPath.stack + 8
        regs.orig_rax = UInt64.max
        try Ptrace.setRegisters(pid, regs)
    }

    /// Registers that, if cryo died now, unmap [base, base + size) and then go home.
    func parkUnmapping(base: UInt64, size: UInt64) throws {
        guard let returnPath else { return }
        try Ptrace.setRegisters(pid, syscallGoingHomeRegisters(11 /* munmap */, [base, size], path: returnPath))
    }

    /// A syscall at the task's own `syscall; ret`, whose `ret` pops the sigreturn gadget off the frame.
    private func syscallGoingHomeRegisters(_ number: Int, _ args: [UInt64], path: ReturnPath) -> Registers {
        var regs = syscallRegisters(number, args)
        regs.rip = path.gadgets.syscallReturn
        regs.rsp = path.stack
        return regs
    }

    /// Runs parasite code that ends by raising `stopSignal` at this thread at
    /// `stoppedAt`; the signal is never delivered. Only that signal is unblocked.
    func runUntilStopSignal(_ registers: Registers, stopSignal: Int32, stoppedAt: UInt64, command: String, during: String) throws -> Registers {
        try checkThread()
        var regs = registers
        regs.orig_rax = UInt64.max
        try Ptrace.setRegisters(pid, regs)
        try Ptrace.setSignalMask(pid, ~(UInt64(1) << UInt64(stopSignal - 1)))
        atSyscallStop = false
        try Ptrace.cont(pid)
        killPoint("running \(command)")
        // The same signal sent by someone else stops elsewhere: in a live task its action is to be
        // ignored, pass it on; a task cryo made would run its own handler on the parasite's stack.
        return try waitForStop(during: during, resume: Ptrace.cont) { signal, regs in
            guard signal == stopSignal else { return nil }
            return regs.rip == stoppedAt ? true : live ? false : nil
        }
    }

    /// Lets the task go.
    public func detach() throws {
        guard attached else { return }
        try checkThread()
        // Queued while still stopped: dequeued (and acted on) before the task runs another instruction.
        if let signal = heldStopSignal { try Processes.kill(pid, signal) }
        for _ in 0..<heldTraps { try Processes.kill(pid, SIGTRAP) }
        do { try Ptrace.detach(pid) } catch { throw error }
        attached = false
    }
}
