import CCryo
import Glibc
import SystemPackage

/// A value passed in a syscall argument register.
public protocol SyscallArgument {
    var syscallWord: Int { get }
}

extension Int: SyscallArgument { public var syscallWord: Int { self } }
extension Int32: SyscallArgument { public var syscallWord: Int { Int(self) } } // sign-extended: fd -1, AT_FDCWD
extension UInt32: SyscallArgument { public var syscallWord: Int { Int(self) } }
extension UInt: SyscallArgument { public var syscallWord: Int { Int(bitPattern: self) } }
extension UInt64: SyscallArgument { public var syscallWord: Int { Int(bitPattern: UInt(self)) } }
extension Int64: SyscallArgument { public var syscallWord: Int { Int(self) } }
extension FileDescriptor: SyscallArgument { public var syscallWord: Int { Int(rawValue) } }
extension UnsafeRawPointer: SyscallArgument { public var syscallWord: Int { Int(bitPattern: self) } }
extension UnsafeMutableRawPointer: SyscallArgument { public var syscallWord: Int { Int(bitPattern: self) } }
extension UnsafePointer: SyscallArgument { public var syscallWord: Int { Int(bitPattern: self) } }
extension UnsafeMutablePointer: SyscallArgument { public var syscallWord: Int { Int(bitPattern: self) } }
extension Optional: SyscallArgument where Wrapped: SyscallArgument {
    public var syscallWord: Int { self?.syscallWord ?? 0 }
}

/// The one door to the kernel: every system call cryo makes itself goes
/// through here (or through SystemPackage), and comes back as a value or a
/// `SyscallError` naming the call, the pid or object and the errno.
public enum Kernel {
    /// The raw result: >= 0, or -errno.
    @inlinable
    public static func rawSyscall(_ number: Int32, _ args: [any SyscallArgument]) -> Int {
        func word(_ i: Int) -> Int { i < args.count ? args[i].syscallWord : 0 }
        return cryo_syscall(Int(number), word(0), word(1), word(2), word(3), word(4), word(5))
    }

    /// A system call that throws on failure; EINTR is retried when `retryingInterrupts`.
    @discardableResult
    public static func syscall(_ number: Int32, _ args: any SyscallArgument..., name: @autoclosure () -> String,
                               pid: pid_t? = nil, object: @autoclosure () -> String? = nil,
                               retryingInterrupts: Bool = false) throws -> Int {
        var result: Int
        repeat { result = rawSyscall(number, args) } while retryingInterrupts && result == -Int(EINTR)
        return try check(result, name(), pid: pid, object: object())
    }

    /// The errno of a raw result, nil for success.
    public static func errno(of result: Int) -> Errno? { result < 0 ? Errno(rawValue: Int32(-result)) : nil }

    /// Whether cryo was started set-uid or with file capabilities (AT_SECURE).
    public static var secureExecution: Bool { getauxval(UInt(AT_SECURE)) != 0 }

    /// The calling process's pid as the kernel sees it now (not libc's cache).
    public static func currentPid() -> pid_t { pid_t(truncatingIfNeeded: rawSyscall(SYS_getpid, [])) }
}

/// prctl(2) options cryo uses; prctl is variadic in C.
public enum ProcessControl {
    public static func securebits() throws -> UInt32 {
        UInt32(truncatingIfNeeded: try Kernel.syscall(SYS_prctl, Int32(PR_GET_SECUREBITS), name: "prctl(PR_GET_SECUREBITS)"))
    }
    /// Whether `capability` is in this process's bounding set.
    public static func inBoundingSet(_ capability: Int32) throws -> Bool {
        try Kernel.syscall(SYS_prctl, Int32(PR_CAPBSET_READ), capability, name: "prctl(PR_CAPBSET_READ)", object: "capability \(capability)") == 1
    }
    /// PR_GET_THP_DISABLE of this process: nonzero when transparent huge pages are off for it.
    public static func transparentHugePagesDisabled() throws -> Bool {
        try Kernel.syscall(SYS_prctl, Int32(42 /* PR_GET_THP_DISABLE */), name: "prctl(PR_GET_THP_DISABLE)") != 0
    }
    public static func setParentDeathSignal(_ signal: Int32) throws {
        try Kernel.syscall(SYS_prctl, Int32(PR_SET_PDEATHSIG), signal, name: "prctl(PR_SET_PDEATHSIG)")
    }
}

/// Byte search (GNU memmem is hidden from Swift).
public enum Bytes {
    /// The offset of the first `needle` in `haystack`, or nil.
    public static func firstRange(of needle: UnsafeRawBufferPointer, in haystack: UnsafeRawBufferPointer) -> Int? {
        guard let first = needle.first, needle.count <= haystack.count, let base = haystack.baseAddress,
              let needleBase = needle.baseAddress else { return needle.isEmpty ? 0 : nil }
        let last = haystack.count - needle.count
        var at = 0
        while at <= last {
            guard let hit = memchr(base + at, Int32(first), last - at + 1) else { return nil }
            let offset = UnsafeRawPointer(hit) - base
            if memcmp(hit, needleBase, needle.count) == 0 { return offset }
            at = offset + 1
        }
        return nil
    }
}
