import CCryo
import CryoInjector
import CryoSystem
import Foundation
import Glibc
import Logging
import SystemPackage

public struct DumpOptions: Sendable {
    public var pid: pid_t
    public var directory: String
    public var leaveRunning: Bool
    public var shellJob: Bool
    public init(pid: pid_t, directory: String, leaveRunning: Bool, shellJob: Bool) {
        self.pid = pid
        self.directory = directory
        self.leaveRunning = leaveRunning
        self.shellJob = shellJob
    }
}

/// Freezes a process, writes its image, then kills it or lets it go on.
/// Any failure leaves it running exactly as before: parasite cured, registers
/// and mask put back, detached, and the partial image removed.
public struct Dumper {
    let options: DumpOptions
    let logger: Logger
    public init(options: DumpOptions, logger: Logger) {
        self.options = options
        self.logger = logger
    }

    public func run() throws -> DumpStatistics {
        let pid = options.pid
        try checkRequest()
        let paths = ImagePaths(options.directory)
        let madeDirectory = !Files.exists(options.directory)
        let inventoryFD = try prepareDirectory(paths)
        var created = [paths.inventory]
        let fileContext = FileDumpContext(paths: paths)
        var success = false
        defer {
            try? inventoryFD.close()
            if !success {
                for file in created + fileContext.created { unlink(file) }
                unlink("\(options.directory)/stats-dump")
                if madeDirectory { rmdir(options.directory) }
            }
        }
        var statistics = DumpStatistics()
        let frozenAt = ContinuousClock.now
        let tracee: Tracee
        do { tracee = try Tracee.seize(pid) } catch { throw CryoError("cannot freeze pid \(pid): \(error)") }
        logger.debug("pid \(pid) frozen at rip 0x\(String(tracee.originalRegisters.rip, radix: 16))")
        do {
            let state = try readTaskState(tracee)
            try checkThreadsAndChildren(pid)
            let core = try TaskCore.dump(pid: pid, state: state)
            let registers = try RegistersRecord.dump(tracee)
            let signals = try SignalsRecord.dump(pid: pid, state: state)
            let memory = try MemoryRecord.dump(pid: pid)
            let files = try FilesRecord.dump(pid: pid, context: fileContext)
            created.append(paths.pages(pid))
            let memoryStart = ContinuousClock.now
            let pageIndex = try memory.dumpPages(pid: pid, to: paths.pages(pid), statistics: &statistics)
            statistics.memoryDumpSeconds = seconds(since: memoryStart)

            created.append(paths.task(pid))
            try TaskImage(core: core, registers: registers, memory: memory, pageIndex: pageIndex, signals: signals, files: files)
                .write(to: paths.task(pid))
            var inventory = RecordWriter()
            try inventory.append(.inventory, Inventory(rootPid: pid, pids: [pid], kernel: kernelRelease(), shellJob: options.shellJob))
            try inventory.write(to: inventoryFD, path: paths.inventory)
        } catch {
            _ = try? tracee.restoreOriginalState()
            _ = try? tracee.detach()
            throw error
        }
        statistics.frozenSeconds = seconds(since: frozenAt)
        success = true
        if options.leaveRunning {
            try tracee.detach()
        } else {
            // Dead while still traced: it never runs another instruction.
            // As its tracer we see it die, so dump returns only once it is gone.
            try Processes.kill(pid, SIGKILL)
            _ = try? waitFor(pid)
        }
        try? writeStatistics(statistics, to: "\(options.directory)/stats-dump")
        return statistics
    }

    /// Runs the parasite once to read what only the task can see, then cures it.
    func readTaskState(_ tracee: Tracee) throws -> cryo_task_state {
        let parasite = try Parasite.inject(into: tracee, argumentBytes: MemoryLayout<cryo_task_state>.size)
        do {
            let state = try parasite.run(CRYO_CMD_DUMP_STATE, input: UInt8(0), output: cryo_task_state.self)
            try parasite.cure()
            return state
        } catch {
            _ = try? parasite.cure()
            throw error
        }
    }

    /// Refusals that need no freezing: one clear line, nothing touched.
    func checkRequest() throws {
        let pid = options.pid
        guard pid > 0, Files.exists("/proc/\(pid)") else { throw CryoError("pid \(pid): no such process") }
        let stat = try ProcStat(pid: pid)
        if stat.flags & 0x0020_0000 != 0 { throw CryoError("pid \(pid) (\(stat.comm)) is a kernel thread; it cannot be dumped") }
        var ancestor = getpid()
        while ancestor > 1 {
            if ancestor == pid { throw CryoError("pid \(pid) (\(stat.comm)) is cryo itself or one of its ancestors") }
            ancestor = (try? ProcStat(pid: ancestor).ppid) ?? 0
        }
        if stat.state == "Z" { throw CryoError("pid \(pid) (\(stat.comm)) is a zombie") }
        let tracer = try ProcStatus(pid: pid).tracerPid
        if tracer != 0 {
            let name = (try? ProcStat(pid: tracer).comm) ?? "?"
            throw CryoError("pid \(pid) (\(stat.comm)) is already traced by pid \(tracer) (\(name)); detach the debugger first")
        }
        try checkThreadsAndChildren(pid)
        if stat.sid != pid && !options.shellJob {
            throw CryoError("pid \(pid) (\(stat.comm)) belongs to session \(stat.sid), whose leader is not dumped; "
                + "start it with setsid, or dump with --shell-job to restore it into cryo's session")
        }
    }

    func checkThreadsAndChildren(_ pid: pid_t) throws {
        let stat = try ProcStat(pid: pid)
        if stat.threads != 1 {
            throw CryoError("pid \(pid) (\(stat.comm)) has \(stat.threads) threads; multi-threaded processes are not supported yet")
        }
        let children = (try? Files.readString("/proc/\(pid)/task/\(pid)/children"))?.split(separator: " ") ?? []
        if !children.isEmpty {
            throw CryoError("pid \(pid) (\(stat.comm)) has child processes (\(children.joined(separator: ", "))); process trees are not supported yet")
        }
    }

    /// Creates the folder (0700) if needed and claims it by creating the inventory first.
    func prepareDirectory(_ paths: ImagePaths) throws -> FileDescriptor {
        let directory = options.directory
        if !Files.exists(directory) {
            if mkdir(directory, 0o700) != 0 {
                throw SyscallError("mkdir", errno: Errno(rawValue: cryo_errno()), object: "image folder \(directory)")
            }
        }
        do {
            return try Files.open(paths.inventory, .writeOnly, options: [.create, .exclusiveCreate, .noFollow],
                                  permissions: [.ownerReadWrite])
        } catch let error as SyscallError where error.errno == .fileExists {
            throw CryoError("image folder \(directory) already holds an image (inventory.img exists); use an empty folder")
        } catch {
            throw CryoError("cannot write into image folder \(directory): \(error)")
        }
    }
}

func seconds(since start: ContinuousClock.Instant) -> Double {
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

func kernelRelease() -> String {
    var u = utsname()
    uname(&u)
    return withUnsafeBytes(of: u.release) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
}

func writeStatistics<T: Encodable>(_ value: T, to path: String) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    let data = try encoder.encode(value)
    unlink(path)
    let fd = try Files.open(path, .writeOnly, options: [.create, .exclusiveCreate, .noFollow], permissions: [.ownerReadWrite])
    defer { try? fd.close() }
    try Files.write(fd, [UInt8](data) + [10], path: path)
}
