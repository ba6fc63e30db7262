import CCryo
import CryoInjector
import CryoSystem
import Foundation
import Glibc

/// General registers (with fs/gs bases and segments), the XSAVE area and the
/// blocked signal mask of one thread.
public struct RegistersRecord: Codable, Sendable {
    /// struct user_regs_struct, word by word in kernel order.
    public var general: [UInt64]
    public var extendedState: Data
    public var blockedSignals: UInt64

    static let names = ["r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
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

extension RegistersRecord {
    static let restartNoHand: Int64 = -514, restartSys: Int64 = -512, restartNoIntr: Int64 = -513, restartBlock: Int64 = -516

    /// A task stopped inside a syscall is saved as it would be once that
    /// syscall is restarted, because the restored task will not be in it.
    static func dump(_ tracee: Tracee) throws -> RegistersRecord {
        var regs = tracee.originalRegisters
        if Int64(bitPattern: regs.orig_rax) >= 0 {
            switch Int64(bitPattern: regs.rax) {
            case restartNoHand, restartSys, restartNoIntr:
                regs.rax = regs.orig_rax
                regs.rip -= 2
            case restartBlock:
                // Its restart block stays behind in the old kernel task; the caller sees EINTR.
                regs.rax = UInt64(bitPattern: -Int64(EINTR))
            default: break
            }
        }
        regs.orig_rax = UInt64(bitPattern: -1)
        let general = withUnsafeBytes(of: regs) { Array($0.bindMemory(to: UInt64.self)) }
        return RegistersRecord(general: general, extendedState: Data(try Ptrace.extendedState(tracee.pid)),
                               blockedSignals: tracee.originalSignalMask)
    }

    /// The last step before a task runs again.
    func restore(pid: pid_t) throws {
        try Ptrace.setExtendedState(pid, [UInt8](extendedState))
        try Ptrace.setRegisters(pid, registers)
        try Ptrace.setSignalMask(pid, blockedSignals)
    }

    func validate(file: String) throws {
        guard general.count == MemoryLayout<Registers>.size / 8 else {
            throw ImageError(file: file, record: "registers", "\(general.count) general registers, expected \(MemoryLayout<Registers>.size / 8)")
        }
        guard extendedState.count >= 512, extendedState.count <= 16384 else {
            throw ImageError(file: file, record: "registers", "XSAVE area of \(extendedState.count) bytes")
        }
    }
}
