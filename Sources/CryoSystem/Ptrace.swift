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

    /// Request numbers (linux/ptrace.h).
    enum Request: Int {
        case peekData = 2, pokeData = 5, cont = 7, getRegisters = 12, setRegisters = 13, detach = 17, syscall = 24
        case getSiginfo = 0x4202, getRegset = 0x4204, setRegset = 0x4205, seize = 0x4206, interrupt = 0x4207, peekSiginfo = 0x4209
        case getSigmask = 0x420a, setSigmask = 0x420b, seccompGetFilter = 0x420c, getRseqConfiguration = 0x420f
    }
    static let noteX86XState: Int = 0x202 // NT_X86_XSTATE

    /// One request: the raw ptrace(2) result, or a SyscallError naming it.
    @discardableResult
    static func request(_ request: Request, _ pid: pid_t, _ address: any SyscallArgument = 0, _ data: any SyscallArgument = 0,
                        name: @autoclosure () -> String, object: @autoclosure () -> String? = nil) throws -> Int {
        try Kernel.syscall(SYS_ptrace, request.rawValue, pid, address, data, name: "ptrace(\(name()))", pid: pid, object: object())
    }

    public static func seize(_ pid: pid_t, options: UInt = exitKill) throws {
        try request(.seize, pid, 0, options, name: "PTRACE_SEIZE")
    }
    public static func interrupt(_ pid: pid_t) throws {
        try request(.interrupt, pid, name: "PTRACE_INTERRUPT")
    }
    public static func cont(_ pid: pid_t, signal: Int32 = 0) throws {
        try request(.cont, pid, 0, signal, name: "PTRACE_CONT")
    }
    /// Resumes until the next syscall entry or exit (reported as SIGTRAP|0x80 with traceSysGood).
    public static func resumeToSyscall(_ pid: pid_t) throws {
        try request(.syscall, pid, name: "PTRACE_SYSCALL")
    }
    public static func detach(_ pid: pid_t, signal: Int32 = 0) throws {
        try request(.detach, pid, 0, signal, name: "PTRACE_DETACH")
    }
    public static func registers(_ pid: pid_t) throws -> Registers {
        var regs = Registers()
        try withUnsafeMutablePointer(to: &regs) { try request(.getRegisters, pid, 0, $0, name: "PTRACE_GETREGS") }
        return regs
    }
    public static func setRegisters(_ pid: pid_t, _ regs: Registers) throws {
        var copy = regs
        try withUnsafePointer(to: &copy) { try request(.setRegisters, pid, 0, $0, name: "PTRACE_SETREGS") }
    }
    /// The XSAVE area (FPU, SSE, AVX...), as many bytes as the kernel fills.
    public static func extendedState(_ pid: pid_t) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 16384)
        let used = try buffer.withUnsafeMutableBytes { (raw) throws -> Int in
            var vector = iovec(iov_base: raw.baseAddress, iov_len: raw.count)
            try withUnsafeMutablePointer(to: &vector) {
                try request(.getRegset, pid, noteX86XState, $0, name: "PTRACE_GETREGSET, NT_X86_XSTATE")
            }
            return vector.iov_len
        }
        return Array(buffer.prefix(used))
    }
    public static func setExtendedState(_ pid: pid_t, _ state: [UInt8]) throws {
        var copy = state
        try copy.withUnsafeMutableBytes { (raw) throws in
            var vector = iovec(iov_base: raw.baseAddress, iov_len: raw.count)
            try withUnsafeMutablePointer(to: &vector) {
                try request(.setRegset, pid, noteX86XState, $0, name: "PTRACE_SETREGSET, NT_X86_XSTATE")
            }
        }
    }
    public static func signalMask(_ pid: pid_t) throws -> UInt64 {
        var mask: UInt64 = 0
        try withUnsafeMutablePointer(to: &mask) { try request(.getSigmask, pid, 8, $0, name: "PTRACE_GETSIGMASK") }
        return mask
    }
    public static func setSignalMask(_ pid: pid_t, _ mask: UInt64) throws {
        var copy = mask
        try withUnsafePointer(to: &copy) { try request(.setSigmask, pid, 8, $0, name: "PTRACE_SETSIGMASK") }
    }
    /// si_code of the signal the task is stopped for (SI_KERNEL, 0x80, for an int3's SIGTRAP).
    public static func stopSignalCode(_ pid: pid_t) throws -> Int32 {
        var info = [UInt8](repeating: 0, count: 128)
        try info.withUnsafeMutableBytes { try request(.getSiginfo, pid, 0, $0.baseAddress, name: "PTRACE_GETSIGINFO") }
        return info.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: Int32.self) }
    }
    /// Every queued siginfo (128 bytes each) of the thread's own or the shared queue, without dequeuing.
    public static func pendingSignals(_ pid: pid_t, shared: Bool) throws -> [[UInt8]] {
        var result: [[UInt8]] = []
        var buffer = [UInt8](repeating: 0, count: 128 * 32)
        while true {
            var arguments = cryo_peeksiginfo_args(offset: UInt64(result.count), flags: shared ? 1 : 0, count: 32)
            let n = try buffer.withUnsafeMutableBytes { (raw) throws -> Int in
                try withUnsafePointer(to: &arguments) { try request(.peekSiginfo, pid, $0, raw.baseAddress, name: "PTRACE_PEEKSIGINFO") }
            }
            if n == 0 { return result }
            for i in 0..<n { result.append(Array(buffer[(i * 128)..<(i * 128 + 128)])) }
        }
    }
    public static func peek(_ pid: pid_t, _ address: UInt64) throws -> UInt64 {
        // The raw call stores the word at `data`; only libc's wrapper returns it.
        var word: UInt64 = 0
        try withUnsafeMutablePointer(to: &word) {
            try request(.peekData, pid, address, $0, name: "PTRACE_PEEKDATA", object: "address 0x\(String(address, radix: 16))")
        }
        return word
    }
    public static func poke(_ pid: pid_t, _ address: UInt64, _ word: UInt64) throws {
        try request(.pokeData, pid, address, word, name: "PTRACE_POKEDATA", object: "address 0x\(String(address, radix: 16))")
    }
    /// The seccomp filter `index` (0 = the most recent) as BPF instructions, or nil past the last one.
    public static func seccompFilter(_ pid: pid_t, index: Int) throws -> [UInt64]? {
        var program = [UInt64](repeating: 0, count: 4096)
        let count = program.withUnsafeMutableBytes {
            Kernel.rawSyscall(SYS_ptrace, [Request.seccompGetFilter.rawValue, pid, index, $0.baseAddress])
        }
        if count == -Int(ENOENT) { return nil }
        let n = try check(count, "ptrace(PTRACE_SECCOMP_GET_FILTER)", pid: pid, object: "filter \(index)")
        return Array(program.prefix(n))
    }

    public static func rseqConfiguration(_ pid: pid_t) throws -> cryo_rseq_config {
        var config = cryo_rseq_config()
        try withUnsafeMutablePointer(to: &config) {
            try request(.getRseqConfiguration, pid, MemoryLayout<cryo_rseq_config>.size, $0, name: "PTRACE_GET_RSEQ_CONFIGURATION")
        }
        return config
    }
}

extension Registers {
    /// The registers as the kernel leaves them when it restarts the syscall the
    /// thread was interrupted in (its return path does this; rt_sigreturn and a
    /// restore do not): ERESTART* re-executes the syscall. A restart block stays
    /// with the old kernel task: a call that can simply be made again with the
    /// same arguments is re-executed, any other becomes EINTR. orig_rax is -1.
    public var restartingInterruptedSyscall: Registers {
        var regs = self
        if Int64(bitPattern: orig_rax) >= 0 {
            switch Int64(bitPattern: rax) {
            case -512, -513, -514: // ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND
                regs.rax = orig_rax
                regs.rip &-= 2
            case -516 where reexecutableWithoutRestartBlock: // ERESTART_RESTARTBLOCK
                regs.rax = orig_rax
                regs.rip &-= 2
            case -516:
                regs.rax = UInt64(bitPattern: -Int64(EINTR))
            default: break
            }
        }
        regs.orig_rax = UInt64.max
        return regs
    }

    /// Calls whose restart block only remembers when they time out, so that making
    /// them again with their own arguments is what a restart does, at worst waiting
    /// longer: poll (a timeout in ms, or none), FUTEX_WAIT with a timeout (the futex
    /// word is checked again), clock_nanosleep to an absolute time. Relative sleeps
    /// are left to EINTR: the kernel wrote the time left into `rem` for the caller.
    var reexecutableWithoutRestartBlock: Bool {
        switch orig_rax {
        case UInt64(SYS_poll): return true
        case UInt64(SYS_futex):
            let command = rsi & 0x7f // without FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME
            return command == 0 || command == 9 // FUTEX_WAIT, FUTEX_WAIT_BITSET
        case UInt64(SYS_clock_nanosleep): return rsi & 1 != 0 // TIMER_ABSTIME
        default: return false
        }
    }
}

/// What waitpid reported.
public enum WaitStatus: Equatable, Sendable {
    case exited(Int32)
    case signaled(Int32)
    case stopped(signal: Int32, event: Int32)
}

/// Waits for a child or tracee (__WALL: threads too). With WNOHANG and nothing
/// to report it answers `.stopped(signal: 0, event: 0)`.
public func waitFor(_ pid: pid_t, options: Int32 = 0) throws -> WaitStatus {
    var status: Int32 = 0
    let waited = try withUnsafeMutablePointer(to: &status) {
        try Kernel.syscall(SYS_wait4, pid, $0, options | 0x4000_0000 /* __WALL */, 0, name: "waitpid", pid: pid,
                           retryingInterrupts: true)
    }
    return waited == 0 ? .stopped(signal: 0, event: 0) : WaitStatus(raw: status)
}

extension WaitStatus {
    /// Decodes a wait status word (the W* macros of <sys/wait.h>).
    public init(raw status: Int32) {
        let low = status & 0x7f
        if low == 0 {
            self = .exited((status >> 8) & 0xff)
        } else if (status & 0xff) == 0x7f {
            self = .stopped(signal: (status >> 8) & 0xff, event: (status >> 16) & 0xff)
        } else {
            self = .signaled(low)
        }
    }
}

/// Memory of another process.
public enum RemoteMemory {
    public static func read(_ pid: pid_t, at address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            let result = transfer(SYS_process_vm_readv, pid, buffer.baseAddress! + done, buffer.count - done, address + UInt64(done))
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
        let memory = try openForced(pid)
        defer { try? memory.close() }
        try readForced(memory, pid: pid, at: address, into: buffer)
    }

    /// /proc/PID/mem, for many `readForced(_:pid:at:into:)` (one open, not one per read).
    public static func openForced(_ pid: pid_t) throws -> FileDescriptor {
        try Files.open("/proc/\(pid)/mem", .readOnly)
    }

    /// Reads through `memory`, an `openForced(pid)`.
    public static func readForced(_ memory: FileDescriptor, pid: pid_t, at address: UInt64,
                                  into buffer: UnsafeMutableRawBufferPointer) throws {
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
    /// Reads `ranges` one after another into `buffer` (exactly their total size), up to
    /// 1024 ranges per process_vm_readv: many small mappings are not one syscall each.
    /// Ranges the task cannot read go through `forced` (/proc/PID/mem), opened on first need.
    public static func read(_ pid: pid_t, ranges: [Range<UInt64>], into buffer: UnsafeMutableRawBufferPointer,
                            forced: inout FileDescriptor?) throws {
        var remote = ranges.map { iovec(iov_base: UnsafeMutableRawPointer(bitPattern: UInt($0.lowerBound)), iov_len: $0.count) }
        var r = 0, done = 0
        while r < remote.count {
            let batch = min(1024, remote.count - r)
            var local = iovec(iov_base: buffer.baseAddress! + done, iov_len: buffer.count - done)
            let result = remote.withUnsafeMutableBufferPointer { remote in
                withUnsafeMutablePointer(to: &local) { local in
                    Kernel.rawSyscall(SYS_process_vm_readv, [pid, local, 1, remote.baseAddress! + r, batch, 0])
                }
            }
            let address = UInt64(UInt(bitPattern: remote[r].iov_base))
            if result == -Int(EFAULT) {
                // Its first range from here cannot be read by the task (PROT_NONE, write- or exec-only).
                let length = remote[r].iov_len
                guard done + length <= buffer.count else { throw SyscallError("process_vm_readv", errno: .invalidArgument, pid: pid) }
                let memory = try forced ?? openForced(pid)
                forced = memory
                try readForced(memory, pid: pid, at: address, into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + length)]))
                done += length
                r += 1
                continue
            }
            var n = try check(result, "process_vm_readv", pid: pid, object: "address 0x\(String(address, radix: 16))")
            if n == 0 { throw SyscallError("process_vm_readv", errno: .ioError, pid: pid) }
            done += n
            while n > 0 {
                let take = min(n, remote[r].iov_len)
                remote[r].iov_base += take
                remote[r].iov_len -= take
                n -= take
                if remote[r].iov_len == 0 { r += 1 }
            }
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
            let n = try check(transfer(SYS_process_vm_writev, pid, UnsafeMutableRawPointer(mutating: bytes.baseAddress! + done),
                                       bytes.count - done, address + UInt64(done)),
                              "process_vm_writev", pid: pid, object: "address 0x\(String(address + UInt64(done), radix: 16))")
            if n == 0 { throw SyscallError("process_vm_writev", errno: .ioError, pid: pid) }
            done += n
        }
    }

    /// One process_vm_readv/writev of a single local and remote range: the raw result.
    private static func transfer(_ number: Int32, _ pid: pid_t, _ local: UnsafeMutableRawPointer, _ length: Int,
                                 _ remote: UInt64) -> Int {
        var ranges = [iovec(iov_base: local, iov_len: length),
                      iovec(iov_base: UnsafeMutableRawPointer(bitPattern: UInt(remote)), iov_len: length)]
        return ranges.withUnsafeMutableBufferPointer { ranges in
            Kernel.rawSyscall(number, [pid, ranges.baseAddress, 1, ranges.baseAddress! + 1, 1, 0])
        }
    }
}
