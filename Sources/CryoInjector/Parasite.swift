import CCryo
import CryoSystem
import Glibc

/// A blob mapped inside a seized task: [blob][argument area][stack].
/// Commands (numbers of the blob's own protocol; injector_protocol.h says how
/// they travel) are written into the argument area, run until the blob stops,
/// and their results read back. `cure` removes every trace of it.
public final class Parasite {
    public let tracee: Tracee
    public let base: UInt64
    public let size: UInt64
    public let argumentArea: UInt64
    public let argumentAreaSize: Int
    let blob: ParasiteBlob
    let stackTop: UInt64
    /// Other threads of the process that ran commands; cure puts them back too.
    private var threadsRun: [Tracee] = []
    /// Dump: the signal each command ends with (see parasite_protocol.h); nil: int3.
    var stopSignal: Int32?
    /// The leader is stopped inside the parasite after a command.
    private var leaderInside = false
    /// Descriptors the parasite opened in the task and still holds: it closes
    /// them itself if cryo dies (at most two).
    public var openDescriptors: [Int32] = []
    static let headerSize = MemoryLayout<cryo_args_header>.size
    static let stackSize: UInt64 = 64 * 1024
    static let logCapacity = 4096
    /// Receives the parasite's own log lines: (pid, command, line).
    public var log: ((pid_t, String, String) -> Void)?
    /// Names a command in errors and log lines.
    public var commandName: @Sendable (UInt32) -> String = { "command \($0)" }

    /// Maps `blob` into the task (at `address` exactly, when given) with room
    /// for `argumentBytes` of command arguments, and checks that it answers PING
    /// with `protocolVersion`.
    public static func inject(into tracee: Tracee, argumentBytes: Int, at address: UInt64? = nil, blob: ParasiteBlob,
                              protocolVersion: Int64, commandName: (@Sendable (UInt32) -> String)? = nil,
                              log: ((pid_t, String, String) -> Void)? = nil) throws -> Parasite {
        let page: UInt64 = 4096
        let codeSize = (UInt64(blob.bytes.count) + page - 1) & ~(page - 1)
        let argumentSize = (UInt64(argumentBytes + headerSize + logCapacity) + page - 1) & ~(page - 1)
        let total = codeSize + argumentSize + stackSize
        let flags = UInt64(MAP_PRIVATE | MAP_ANONYMOUS) | (address != nil ? 0x10_0000 /* MAP_FIXED_NOREPLACE */ : 0)
        let status = tracee.live ? TaskStatusLines(pid: tracee.pid, keys: ["SigCgt", "SigIgn", "x86_Thread_features"]) : nil
        if let missing = tracee.prepareWayHome(status: status) {
            log?(tracee.pid, "inject", "\(missing): a kill of cryo now would hurt it")
        }
        // MAP_NORESERVE in a live task keeps the parasite from merging with a
        // neighbouring mapping, so that a kill of cryo during this very mmap
        // leaves one empty mapping of its own (nothing points into it).
        let noMerge = tracee.returnPath != nil ? UInt64(MAP_NORESERVE) : 0
        let mapped = try tracee.syscall(9 /* mmap */, address ?? 0, total, UInt64(PROT_READ | PROT_WRITE | PROT_EXEC),
                                        flags | noMerge, UInt64.max, 0)
        if mapped < 0 || (address != nil && UInt64(mapped) != address!) {
            throw (SyscallError("injected mmap of the parasite (\(total) bytes)",
                                       errno: .init(rawValue: mapped < 0 ? Int32(-mapped) : EEXIST), pid: tracee.pid,
                                       object: address.map { "address 0x\(String($0, radix: 16))" }))
        }
        let base = UInt64(mapped)
        let parasite = Parasite(tracee: tracee, blob: blob, base: base, size: total, codeSize: codeSize,
                                argumentSize: Int(argumentSize))
        parasite.log = log
        if let commandName { parasite.commandName = commandName }
        do {
            try tracee.parkUnmapping(base: base, size: total)
            killPoint("mapped")
            let image = blob.relocated(at: base)
            try image.withUnsafeBytes { (raw) throws in try RemoteMemory.write(tracee.pid, at: base, raw) }
        } catch {
            if tracee.live { try? parasite.cure() } else { try? parasite.unmap() }
            throw error
        }
        killPoint("loaded")
        if tracee.returnPath != nil, blob.stoppedOffset != nil, let status { parasite.stopSignal = Parasite.chooseStopSignal(status) }
        if tracee.returnPath == nil || parasite.stopSignal == nil {
            log?(tracee.pid, "inject", "commands end without the way home: a kill of cryo while one runs would hurt the task")
        }
        tracee.gadget = base + blob.gadgetOffset
        do {
            let reply = try parasite.run(CRYO_INJECTOR_CMD_PING, payload: [], replyBytes: 0)
            if reply.result != protocolVersion {
                throw InjectionError.protocolMismatch(pid: tracee.pid, detail: "PING answered \(reply.result)")
            }
        } catch {
            try? parasite.cure()
            throw error
        }
        return parasite
    }

    /// The same parasite in a process created by an injected clone or fork: the mapping came along.
    public static func inherited(by tracee: Tracee, from parent: Parasite) -> Parasite {
        tracee.gadget = parent.base + parent.blob.gadgetOffset
        let parasite = Parasite(tracee: tracee, blob: parent.blob, base: parent.base, size: parent.size,
                                codeSize: parent.argumentArea - parent.base, argumentSize: parent.argumentAreaSize)
        parasite.log = parent.log
        parasite.commandName = parent.commandName
        return parasite
    }

    private init(tracee: Tracee, blob: ParasiteBlob, base: UInt64, size: UInt64, codeSize: UInt64, argumentSize: Int) {
        self.tracee = tracee
        self.blob = blob
        self.base = base
        self.size = size
        self.argumentArea = base + codeSize
        self.argumentAreaSize = argumentSize
        self.stackTop = base + size - 64
    }

    public struct Reply {
        public let result: Int64
        public let payload: [UInt8]
    }

    /// Runs one command with `payload` as its input and returns `replyBytes` of the argument area afterwards.
    @discardableResult
    public func run(_ command: UInt32, payload: [UInt8], replyBytes: Int, on thread: Tracee? = nil,
                    failAddress: UInt64 = 0) throws -> Reply {
        let thread = thread ?? tracee
        if thread !== tracee && !threadsRun.contains(where: { $0 === thread }) { threadsRun.append(thread) }
        let name = commandName(command)
        guard Parasite.headerSize + max(payload.count, replyBytes) + Parasite.logCapacity <= argumentAreaSize else {
            throw InjectionError.protocolMismatch(pid: tracee.pid, detail: "\(name) needs \(payload.count) bytes, area holds \(argumentAreaSize)")
        }
        let goingHome = try stopSignal != nil && prepareWayHome(for: thread)
        // Without the way home, a command ends on int3, unless that would touch the task's SIGTRAP.
        thread.checkTrapState()
        let quietSignal = !goingHome && thread.breakpointFree && blob.stoppedOffset != nil ? thread.quietStopSignal : nil
        if !goingHome && thread.breakpointFree && quietSignal == nil {
            throw InjectionError.protocolMismatch(pid: thread.pid, detail: "\(name): SIGTRAP is ignored or pending, and no signal is free to end the command on instead")
        }
        var header = cryo_args_header()
        header.magic = CRYO_PARASITE_MAGIC
        if let quietSignal {
            // No way home: return_stack stays 0, and the parasite never goes on past the stop.
            header.stop_signal = quietSignal
            header.tgid = tracee.pid
            header.tid = thread.pid
        } else if goingHome, let stopSignal, let path = thread.returnPath {
            header.stop_signal = stopSignal
            header.tgid = tracee.pid
            header.tid = thread.pid
            header.return_stack = path.stack
            header.syscall_ret_gadget = path.gadgets.syscallReturn
            header.parasite_base = base
            header.parasite_size = size
            header.close_fds = (openDescriptors.first ?? -1, openDescriptors.dropFirst().first ?? -1)
        }
        header.command = command
        header.payload_size = UInt64(argumentAreaSize - Parasite.headerSize - Parasite.logCapacity)
        header.log_offset = UInt64(argumentAreaSize - Parasite.logCapacity)
        header.log_capacity = UInt32(Parasite.logCapacity)
        header.fail_addr = failAddress
        var message = withUnsafeBytes(of: header) { [UInt8]($0) }
        message += payload
        do {
            try message.withUnsafeBytes { (raw) throws in try RemoteMemory.write(tracee.pid, at: argumentArea, raw) }
        } catch { throw error }
        var regs = thread.originalRegisters
        regs.rip = base + blob.entryOffset
        regs.rdi = argumentArea
        regs.rsp = stackTop
        regs.eflags &= ~UInt64(0x400) // DF clear, as the ABI expects
        thread.gadget = base + blob.gadgetOffset
        do {
            if goingHome, let stopSignal {
                // Only one thread may be inside the parasite: if cryo died, each
                // one inside would unmap it under the others' feet.
                if thread !== tracee && leaderInside { try tracee.parkHome(); leaderInside = false }
                _ = try thread.runUntilStopSignal(regs, stopSignal: stopSignal, stoppedAt: base + (blob.stoppedOffset ?? 0),
                                                  command: name, during: "parasite command \(name) in thread \(thread.pid)")
                if thread === tracee {
                    leaderInside = true
                } else {
                    try thread.restoreOriginalState()
                    try tracee.parkUnmapping(base: base, size: size) // nobody inside: the leader cleans up if need be
                }
                killPoint("stopped after \(name)")
            } else if let quietSignal {
                _ = try thread.runUntilStopSignal(regs, stopSignal: quietSignal, stoppedAt: base + (blob.stoppedOffset ?? 0),
                                                  command: name, during: "parasite command \(name) in thread \(thread.pid)")
            } else {
                killPoint("before \(name)")
                _ = try thread.run(regs, during: "parasite command \(name) in thread \(thread.pid)")
                killPoint("after \(name)")
            }
        } catch InjectionError.fault(let pid, let signal, let registers, _) {
            if goingHome && thread !== tracee { try? thread.restoreOriginalState() }
            throw InjectionError.parasiteFault(pid: pid, signal: signal, registers: registers, command: name,
                                               backtrace: backtrace(thread: thread, registers: registers))
        }
        let reply: [UInt8]
        do {
            reply = try RemoteMemory.read(tracee.pid, at: argumentArea, count: Parasite.headerSize + replyBytes)
        } catch { throw error }
        let answer = reply.withUnsafeBytes { $0.loadUnaligned(as: cryo_args_header.self) }
        if let log, answer.log_length > 0, answer.log_length <= UInt32(Parasite.logCapacity),
           let text = try? RemoteMemory.read(tracee.pid, at: argumentArea + answer.log_offset, count: Int(answer.log_length)) {
            // A batch's commands each start with a line "@0x<command>": their lines carry that name.
            var current = name
            for line in String(decoding: text, as: UTF8.self).split(separator: "\n") {
                if line.hasPrefix("@0x"), let number = UInt32(line.dropFirst(3), radix: 16) {
                    current = commandName(number)
                } else {
                    log(thread.pid, current, String(line))
                }
            }
        }
        if answer.result < 0 {
            // A blob that runs several commands in one stop names the one that failed in the header.
            let failed = answer.command == command ? name : commandName(answer.command)
            throw InjectionError.parasite(pid: tracee.pid, command: failed, result: answer.result, step: answer.fail_step,
                            syscall: answer.fail_syscall, address: answer.fail_addr)
        }
        return Reply(result: answer.result, payload: Array(reply.dropFirst(Parasite.headerSize)))
    }

    /// A thread of a live task gets its own way home before its first command.
    private func prepareWayHome(for thread: Tracee) throws -> Bool {
        guard let gadgets = tracee.returnPath?.gadgets else { return false }
        if thread.returnPath == nil {
            do { try thread.prepareReturnPath(gadgets) } catch {
                log?(thread.pid, "inject", "no way home: \(error)")
                return false
            }
        }
        return true
    }

    /// A signal whose action in this process is to be ignored (SIGURG, SIGWINCH,
    /// or one it ignores itself): raised while traced it stops the thread for
    /// cryo; raised after cryo died it is dropped.
    static func chooseStopSignal(_ status: TaskStatusLines) -> Int32? {
        guard let caught = status.mask("SigCgt"), let ignored = status.mask("SigIgn") else { return nil }
        func bit(_ signal: Int32) -> UInt64 { UInt64(1) << UInt64(signal - 1) }
        for signal in [SIGURG, SIGWINCH] where caught & bit(signal) == 0 { return signal }
        for signal in Int32(1)...Int32(64) where ignored & bit(signal) != 0 && signal != SIGKILL && signal != SIGSTOP && signal != SIGCONT {
            return signal
        }
        return nil
    }

    /// The parasite's frames, by frame pointer (the blob keeps them), named from its symbols.
    func backtrace(thread: Tracee, registers: Registers) -> [String] {
        func name(_ address: UInt64) -> String {
            (base..<(base + UInt64(blob.bytes.count))).contains(address) ? blob.symbolize(address - base) : "0x\(String(address, radix: 16))"
        }
        var frames = [name(registers.rip)]
        var frame = registers.rbp
        let stack = (stackTop - Parasite.stackSize)...stackTop
        while frames.count < 32 && stack.contains(frame) {
            guard let words = try? RemoteMemory.read(thread.pid, at: frame, count: 16) else { break }
            let (next, returnAddress) = words.withUnsafeBytes { ($0.load(as: UInt64.self), $0.load(fromByteOffset: 8, as: UInt64.self)) }
            frames.append(name(returnAddress))
            if next <= frame { break }
            frame = next
        }
        return frames
    }

    /// Typed convenience: a fixed-layout structure in, another out.
    public func run<Input, Output>(_ command: UInt32, input: Input, extra: [UInt8] = [], output: Output.Type,
                                   on thread: Tracee? = nil) throws -> Output {
        let bytes = withUnsafeBytes(of: input) { [UInt8]($0) } + extra
        let reply = try run(command, payload: bytes, replyBytes: MemoryLayout<Output>.size, on: thread)
        return reply.payload.withUnsafeBytes { $0.loadUnaligned(as: Output.self) }
    }

    /// Unmaps the blob with a syscall placed at the task's own rip (the blob's
    /// gadget would vanish under its own feet).
    func unmap() throws {
        tracee.gadget = nil
        let result = try tracee.syscall(11 /* munmap */, base, size)
        if result < 0 {
            throw (SyscallError("injected munmap of the parasite", errno: .init(rawValue: Int32(-result)), pid: tracee.pid,
                                       object: "address 0x\(String(base, radix: 16))"))
        }
    }

    /// Removes the parasite, leaving the registers to the caller (restore sets its own).
    public func remove() throws {
        try unmap()
        try tracee.settle()
    }

    /// Removes the parasite and puts back the registers and signal mask of every
    /// thread it ran in: the other threads first, so that none is left inside
    /// the parasite once it is gone.
    public func cure() throws {
        for thread in threadsRun { try thread.restoreOriginalState() }
        for fd in openDescriptors { _ = try? tracee.syscall(3 /* close */, UInt64(fd)) } // a command that failed midway
        openDescriptors = []
        killPoint("before cure")
        try unmap()
        killPoint("unmapped")
        leaderInside = false
        try tracee.restoreOriginalState()
    }

    /// Where `place` puts its bytes (for bytes that point into themselves).
    public var placeAddress: UInt64 { argumentArea + UInt64(Parasite.headerSize) }

    /// Copies `bytes` into the argument area (for syscalls that take a pointer) and returns their address.
    public func place(_ bytes: [UInt8]) throws -> UInt64 {
        let address = placeAddress
        guard bytes.count <= argumentAreaSize - Parasite.headerSize else {
            throw InjectionError.protocolMismatch(pid: tracee.pid, detail: "\(bytes.count) bytes do not fit the argument area")
        }
        try bytes.withUnsafeBytes { try RemoteMemory.write(tracee.pid, at: address, $0) }
        return address
    }

    /// Where a thread created inside the process may start with a valid stack (it is stopped at once).
    public var scratchStack: UInt64 { stackTop - 16 }
}
