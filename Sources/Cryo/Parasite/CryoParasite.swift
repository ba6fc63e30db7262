import CCryo
import CryoInjector
import FoundationEssentials
import Glibc

/// cryo's own parasite (built from Parasite/ and embedded in this module) and
/// its commands (parasite_protocol.h), on top of the generic injector.
extension ParasiteBlob {
    /// The blob compiled into this binary.
    static let cryo: Result<ParasiteBlob, LoadError> = {
        guard let elf = Data(base64Encoded: parasiteELFBase64.description) else {
            return .failure(.invalid("embedded ELF is not valid base64"))
        }
        do { return .success(try ParasiteBlob(elf: [UInt8](elf))) } catch { return .failure(error as! LoadError) }
    }()
}

extension Parasite {
    /// Maps cryo's parasite into the task (at `address` exactly, when given).
    static func inject(into tracee: Tracee, argumentBytes: Int, at address: UInt64? = nil,
                       log: ((pid_t, String, String) -> Void)? = nil) throws -> Parasite {
        let blob: ParasiteBlob
        switch ParasiteBlob.cryo {
        case .success(let b): blob = b
        case .failure(let e): throw InjectionError.protocolMismatch(pid: tracee.pid, detail: e.description)
        }
        return try inject(into: tracee, argumentBytes: argumentBytes, at: address, blob: blob,
                          protocolVersion: Int64(CRYO_PARASITE_PROTOCOL_VERSION),
                          commandName: { cryoCommandName(cryo_command(rawValue: $0)) }, log: log)
    }

    @discardableResult
    func run(_ command: cryo_command, payload: [UInt8], replyBytes: Int, on thread: Tracee? = nil,
             failAddress: UInt64 = 0) throws -> Reply {
        try run(command.rawValue, payload: payload, replyBytes: replyBytes, on: thread, failAddress: failAddress)
    }

    func run<Input, Output>(_ command: cryo_command, input: Input, extra: [UInt8] = [], output: Output.Type,
                            on thread: Tracee? = nil) throws -> Output {
        try run(command.rawValue, input: input, extra: extra, output: output, on: thread)
    }

    /// Runs restore commands in the leader one after the other in a single stop (BATCH): every
    /// stop costs the task and cryo a round trip through the scheduler. The commands' kill points
    /// are passed before and after the batch, so tests stopping at one still find it.
    func run(batch commands: [ParasiteCommand]) throws {
        if commands.isEmpty { return }
        if commands.count == 1 {
            try run(commands[0].command, payload: commands[0].payload, replyBytes: 0)
            return
        }
        var batch = cryo_batch()
        batch.count = UInt32(commands.count)
        var payload = bytes(of: batch)
        for c in commands {
            var header = cryo_args_header()
            header.command = c.command.rawValue
            header.payload_size = UInt64(c.payload.count)
            payload += bytes(of: header) + c.payload
            payload += [UInt8](repeating: 0, count: (8 - c.payload.count % 8) % 8)
        }
        // Should the batch not fit the argument area (sized for the largest single command), one by one.
        if MemoryLayout<cryo_args_header>.size + payload.count + 4096 > argumentAreaSize {
            for c in commands { try run(c.command, payload: c.payload, replyBytes: 0) }
            return
        }
        for c in commands { killPoint("before \(cryoCommandName(c.command))") }
        try run(CRYO_CMD_BATCH, payload: payload, replyBytes: 0)
        for c in commands { killPoint("after \(cryoCommandName(c.command))") }
    }
}

/// One command of a batch (`Parasite.run(batch:)`); it has no reply.
struct ParasiteCommand {
    let command: cryo_command
    let payload: [UInt8]
}

func cryoCommandName(_ command: cryo_command) -> String {
    switch command {
    case CRYO_CMD_PING: "PING"
    case CRYO_CMD_DUMP_PROCESS: "DUMP_PROCESS"
    case CRYO_CMD_DUMP_THREAD: "DUMP_THREAD"
    case CRYO_CMD_RESTORE_THREAD: "RESTORE_THREAD"
    case CRYO_CMD_EPOLL_ADD: "EPOLL_ADD"
    case CRYO_CMD_RESTORE_SECCOMP: "RESTORE_SECCOMP"
    case CRYO_CMD_LOCKS: "LOCKS"
    case CRYO_CMD_DUMP_TIMERS: "DUMP_TIMERS"
    case CRYO_CMD_RESTORE_TIMERS: "RESTORE_TIMERS"
    case CRYO_CMD_CONNECT: "CONNECT"
    case CRYO_CMD_RECV_FDS: "RECV_FDS"
    case CRYO_CMD_RESTORE_MEMORY: "RESTORE_MEMORY"
    case CRYO_CMD_RESTORE_STATE: "RESTORE_STATE"
    case CRYO_CMD_INSTALL_FDS: "INSTALL_FDS"
    case CRYO_CMD_RESTORE_CREDS: "RESTORE_CREDS"
    case CRYO_CMD_FAIL_TEST: "FAIL_TEST"
    case CRYO_CMD_PAGE_PIPE: "PAGE_PIPE"
    case CRYO_CMD_DUMP_PAGES: "DUMP_PAGES"
    case CRYO_CMD_LAZY_UFFD: "LAZY_UFFD"
    case CRYO_CMD_PAGE_SOCKET: "PAGE_SOCKET"
    case CRYO_CMD_WRITE_PAGES: "WRITE_PAGES"
    case CRYO_CMD_BATCH: "BATCH"
    case CRYO_CMD_CLONE_CONNECTED: "CLONE_CONNECTED"
    case CRYO_CMD_SEAL_MEMORY: "SEAL_MEMORY"
    default: "command \(command.rawValue)"
    }
}
