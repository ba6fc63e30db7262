import CCryo
import Glibc
import SystemPackage

public typealias Registers = cryo_regs

/// ptrace requests, typed. Every request must come from the thread that
/// seized the task (the kernel answers ESRCH otherwise); callers keep all
/// tracing on one thread.
public enum Ptrace {
    public static let exitKill: UInt = 0x0010_0000 // PTRACE_O_EXITKILL
    /// The tracee's seccomp filters do not apply while it is traced, so they never block injected syscalls.
    public static let suspendSeccomp: UInt = 0x0020_0000 // PTRACE_O_SUSPEND_SECCOMP
    /// Syscall stops report SIGTRAP|0x80, never a plain SIGTRAP: a task let go by a
    /// dying tracer at a syscall stop then gets no stray SIGTRAP.
    public static let traceSysGood: UInt = 1

    public static func seize(_ pid: pid_t, options: UInt = exitKill) throws {
        _ = try check(cryo_ptrace_seize(pid, options), "ptrace(PTRACE_SEIZE)", pid: pid)
    }
    public static func interrupt(_ pid: pid_t) throws {
        _ = try check(cryo_ptrace_interrupt(pid), "ptrace(PTRACE_INTERRUPT)", pid: pid)
    }
    public static func cont(_ pid: pid_t, signal: Int32 = 0) throws {
        _ = try check(cryo_ptrace_cont(pid, signal), "ptrace(PTRACE_CONT)", pid: pid)
    }
    /// Resumes until the next syscall entry or exit (reported as SIGTRAP|0x80 with traceSysGood).
    public static func resumeToSyscall(_ pid: pid_t) throws {
        _ = try check(cryo_ptrace_syscall(pid, 0), "ptrace(PTRACE_SYSCALL)", pid: pid)
    }
    public static func detach(_ pid: pid_t, signal: Int32 = 0) throws {
        _ = try check(cryo_ptrace_detach(pid, signal), "ptrace(PTRACE_DETACH)", pid: pid)
    }
    public static func registers(_ pid: pid_t) throws -> Registers {
        var regs = Registers()
        _ = try check(cryo_ptrace_getregs(pid, &regs), "ptrace(PTRACE_GETREGS)", pid: pid)
        return regs
    }
    public static func setRegisters(_ pid: pid_t, _ regs: Registers) throws {
        var copy = regs
        _ = try check(cryo_ptrace_setregs(pid, &copy), "ptrace(PTRACE_SETREGS)", pid: pid)
    }
    /// The XSAVE area (FPU, SSE, AVX...), as many bytes as the kernel fills.
    public static func extendedState(_ pid: pid_t) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 16384)
        let used = try buffer.withUnsafeMutableBytes { (raw) throws -> Int in
            try check(cryo_ptrace_getregset(pid, cryo_note_x86_xstate(), raw.baseAddress, raw.count),
                      "ptrace(PTRACE_GETREGSET, NT_X86_XSTATE)", pid: pid)
        }
        return Array(buffer.prefix(used))
    }
    public static func setExtendedState(_ pid: pid_t, _ state: [UInt8]) throws {
        _ = try state.withUnsafeBytes { (raw) throws -> Int in
            try check(cryo_ptrace_setregset(pid, cryo_note_x86_xstate(), raw.baseAddress, raw.count),
                      "ptrace(PTRACE_SETREGSET, NT_X86_XSTATE)", pid: pid)
        }
    }
    public static func signalMask(_ pid: pid_t) throws -> UInt64 {
        var mask: UInt64 = 0
        _ = try check(cryo_ptrace_getsigmask(pid, &mask), "ptrace(PTRACE_GETSIGMASK)", pid: pid)
        return mask
    }
    public static func setSignalMask(_ pid: pid_t, _ mask: UInt64) throws {
        _ = try check(cryo_ptrace_setsigmask(pid, mask), "ptrace(PTRACE_SETSIGMASK)", pid: pid)
    }
    /// Every queued siginfo (128 bytes each) of the thread's own or the shared queue, without dequeuing.
    public static func pendingSignals(_ pid: pid_t, shared: Bool) throws -> [[UInt8]] {
        var result: [[UInt8]] = []
        var buffer = [UInt8](repeating: 0, count: 128 * 32)
        while true {
            let n = try buffer.withUnsafeMutableBytes { (raw) throws -> Int in
                try check(cryo_ptrace_peeksiginfo(pid, shared ? 1 : 0, UInt64(result.count), raw.baseAddress, 32),
                          "ptrace(PTRACE_PEEKSIGINFO)", pid: pid)
            }
            if n == 0 { return result }
            for i in 0..<n { result.append(Array(buffer[(i * 128)..<(i * 128 + 128)])) }
        }
    }
    public static func peek(_ pid: pid_t, _ address: UInt64) throws -> UInt64 {
        var word: UInt64 = 0
        _ = try check(cryo_ptrace_peekdata(pid, address, &word), "ptrace(PTRACE_PEEKDATA)", pid: pid,
                      object: "address 0x\(String(address, radix: 16))")
        return word
    }
    public static func poke(_ pid: pid_t, _ address: UInt64, _ word: UInt64) throws {
        _ = try check(cryo_ptrace_pokedata(pid, address, word), "ptrace(PTRACE_POKEDATA)", pid: pid,
                      object: "address 0x\(String(address, radix: 16))")
    }
    /// The seccomp filter `index` (0 = the most recent) as BPF instructions, or nil past the last one.
    public static func seccompFilter(_ pid: pid_t, index: Int) throws -> [UInt64]? {
        var program = [UInt64](repeating: 0, count: 4096)
        let count = program.withUnsafeMutableBytes { cryo_ptrace(0x420c /* PTRACE_SECCOMP_GET_FILTER */, pid, UInt64(index), UInt64(UInt(bitPattern: $0.baseAddress))) }
        if count == -Int(ENOENT) { return nil }
        let n = try check(count, "ptrace(PTRACE_SECCOMP_GET_FILTER)", pid: pid, object: "filter \(index)")
        return Array(program.prefix(n))
    }

    public static func rseqConfiguration(_ pid: pid_t) throws -> cryo_rseq_config {
        var config = cryo_rseq_config()
        _ = try check(cryo_ptrace_get_rseq(pid, &config), "ptrace(PTRACE_GET_RSEQ_CONFIGURATION)", pid: pid)
        return config
    }
}

/// What waitpid reported.
public enum WaitStatus: Equatable, Sendable {
    case exited(Int32)
    case signaled(Int32)
    case stopped(signal: Int32, event: Int32)
}

public func waitFor(_ pid: pid_t, options: Int32 = 0) throws -> WaitStatus {
    var status = cryo_wait_status()
    _ = try check(cryo_waitpid(pid, options | cryo_wall(), &status), "waitpid", pid: pid)
    if status.exited != 0 { return .exited(status.exit_code) }
    if status.signaled != 0 { return .signaled(status.term_signal) }
    return .stopped(signal: status.stop_signal, event: status.event)
}

/// Memory of another process.
public enum RemoteMemory {
    public static func read(_ pid: pid_t, at address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            let result = cryo_process_vm_readv(pid, buffer.baseAddress! + done, buffer.count - done, address + UInt64(done))
            if result == -Int(EFAULT) {
                // A page the task cannot read itself (PROT_NONE, write- or exec-only) may still hold data:
                // /proc/PID/mem reads it as a debugger would (FOLL_FORCE).
                try readForced(pid, at: address + UInt64(done), into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
                return
            }
            let n = try check(result, "process_vm_readv", pid: pid, object: "address 0x\(String(address + UInt64(done), radix: 16))")
            if n == 0 { throw SyscallError("process_vm_readv", errno: .ioError, pid: pid) }
            done += n
        }
    }

    /// Reads through /proc/PID/mem, which reaches pages whose protection forbids reading.
    public static func readForced(_ pid: pid_t, at address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        let memory = try Files.open("/proc/\(pid)/mem", .readOnly)
        defer { try? memory.close() }
        var done = 0
        while done < buffer.count {
            let at = address + UInt64(done)
            let n: Int
            do {
                n = try memory.read(fromAbsoluteOffset: Int64(bitPattern: at), into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            } catch {
                throw SyscallError("pread", errno: error as? Errno ?? .ioError, pid: pid, object: "/proc/\(pid)/mem at 0x\(String(at, radix: 16))")
            }
            if n == 0 { throw SyscallError("pread", errno: .ioError, pid: pid, object: "/proc/\(pid)/mem at 0x\(String(at, radix: 16))") }
            done += n
        }
    }
    public static func read(_ pid: pid_t, at address: UInt64, count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withUnsafeMutableBytes { (raw) throws in try read(pid, at: address, into: raw) }
        return bytes
    }
    public static func write(_ pid: pid_t, at address: UInt64, _ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let n = try check(cryo_process_vm_writev(pid, bytes.baseAddress! + done, bytes.count - done, address + UInt64(done)),
                              "process_vm_writev", pid: pid, object: "address 0x\(String(address + UInt64(done), radix: 16))")
            if n == 0 { throw SyscallError("process_vm_writev", errno: .ioError, pid: pid) }
            done += n
        }
    }
}
