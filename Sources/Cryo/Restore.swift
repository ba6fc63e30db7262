import CCryo
import CryoInjector
import CryoSystem
import Foundation
import Glibc
import Logging
import SystemPackage

public struct RestoreOptions: Sendable {
    public var directory: String
    public var detached: Bool
    public init(directory: String, detached: Bool) {
        self.directory = directory
        self.detached = detached
    }
}

/// Brings a process back: clone3 with its pid, then the parasite rebuilds its
/// memory, descriptors and signal state from inside; the controller sets the
/// registers last. A failure kills whatever was created.
public struct Restorer {
    let options: RestoreOptions
    let logger: Logger
    public init(options: RestoreOptions, logger: Logger) {
        self.options = options
        self.logger = logger
    }

    /// Restores the image; returns the pid, running and no longer traced.
    public func run() throws -> pid_t {
        let image = try Image(directory: options.directory)
        guard image.tasks.count == 1 else { throw CryoError("images of several processes are not supported yet") }
        let task = image.tasks[0]
        let pid = task.core.pid
        try checkPidFree(pid)
        raiseDescriptorLimit()

        // Open everything in the controller before a task exists: a missing or
        // changed file fails here, with nothing to clean up.
        var toSend: [FileDescriptor] = []
        defer { for fd in toSend { try? fd.close() } }
        toSend.append(try Files.open(image.paths.pages(pid), .readOnly))
        let pagesSlot = 0
        let cwdSlot = toSend.count
        toSend.append(try openDirectory(task.core.cwd, what: "working directory"))
        var rootSlot: Int? = nil
        if task.core.root != "/" {
            rootSlot = toSend.count
            toSend.append(try openDirectory(task.core.root, what: "root directory"))
        }
        var exeSlot: Int? = nil
        if let exe = try? Files.open(task.core.exe, .readOnly) {
            exeSlot = toSend.count
            toSend.append(exe)
        }
        var mappingSlots: [String: Int] = [:]
        for m in task.memory.mappings where m.kind == .file {
            let key = "\(m.shared && m.protection.contains("w") ? "rw" : "r"):\(m.path!)"
            if mappingSlots[key] != nil { continue }
            let fd = try Files.open(m.path!, m.shared && m.protection.contains("w") ? .readWrite : .readOnly)
            let st = try Files.stat(fd, object: m.path!)
            if let inode = m.inode, let device = m.device, UInt64(st.st_ino) != inode || UInt64(st.st_dev) != device {
                try? fd.close()
                throw CryoError("pid \(pid): mapped file \(m.path!) was replaced since the dump (inode \(inode) is now \(st.st_ino))")
            }
            mappingSlots[key] = toSend.count
            toSend.append(fd)
        }
        let firstDescriptionSlot = toSend.count
        toSend += try task.files.open(pid: pid, paths: image.paths)

        let controlFD = Int32(max((task.files.descriptors.map(\.fd).max() ?? 2) + 1, 3))
        let slotFD = { (slot: Int) -> Int32 in controlFD + 1 + Int32(slot) }
        let listener = try ControlListener(name: "cryo-restore-\(getpid())-\(pid)")
        defer { listener.close() }

        // The new task: an exact pid, parked in read() until traced.
        var park: [Int32] = [0, 0]
        _ = try check(cryo_pipe2(&park, O_CLOEXEC), "pipe2")
        defer { close(park[0]); close(park[1]) }
        let child: pid_t
        do { child = try Processes.cloneParked(pid: pid, parkFD: park[0]) } catch let error as SyscallError where error.errno == .fileExists {
            throw pidInUse(pid)
        }
        var restored = false
        defer {
            if !restored {
                kill(child, SIGKILL)
                _ = try? waitFor(child)
            }
        }
        let tracee: Tracee
        do {
            try Ptrace.seize(child)
            try Ptrace.interrupt(child)
            _ = try waitForStop(child)
            tracee = try Tracee.adopt(child)
        } catch { throw CryoError("pid \(pid): cannot trace the new task: \(error)") }

        try rebuildSession(tracee, core: task.core, shellJob: image.inventory.shellJob)

        // The parasite goes where neither the final layout nor the current one has anything.
        let current = try readMappings(pid: child, withFlags: false)
        let occupied = task.memory.mappings.map { $0.start..<$0.end } + current.map { $0.start..<$0.end }
        let argumentBytes = MemoryLayout<cryo_restore_memory>.size + current.count * 16 + 6 * 24 * 2
            + task.memory.mappings.count * MemoryLayout<cryo_vma>.stride + task.pageIndex.runs.count * 24
            + MemoryLayout<cryo_task_state>.size + MemoryLayout<cryo_restore_extra>.size
            + task.files.descriptors.count * MemoryLayout<cryo_fd_install>.stride + 4096
        let parasiteSize = UInt64(argumentBytes) + (4 << 20)
        guard let place = findFreeRange(size: parasiteSize * 2, occupied: occupied) else {
            throw CryoError("pid \(pid): no free address range for the parasite in the restored layout")
        }
        let parasite = try Parasite.inject(into: tracee, argumentBytes: argumentBytes, at: place)
        let parasiteRange = parasite.base..<(parasite.base + parasite.size)

        // Descriptors travel over the control socket in batches the socket buffer holds.
        var connect = cryo_connect()
        connect.target_fd = controlFD
        connect.address_length = UInt32(listener.address.count)
        withUnsafeMutableBytes(of: &connect.sun_path) { raw in
            for (i, b) in listener.address.enumerated() { raw[i] = b }
        }
        try parasite.run(CRYO_CMD_CONNECT, input: connect, output: UInt8.self)
        let connection = try listener.accept()
        defer { close(connection) }
        let batch = 64
        for start in stride(from: 0, to: toSend.count, by: batch) {
            let end = min(start + batch, toSend.count)
            for fd in toSend[start..<end] { _ = try check(cryo_send_fd(connection, fd.rawValue), "sendmsg(SCM_RIGHTS)", pid: pid) }
            var recv = cryo_recv_fds()
            recv.control_fd = controlFD
            recv.first_slot_fd = slotFD(start)
            recv.count = UInt32(end - start)
            recv.close_others = start == 0 ? 1 : 0
            try parasite.run(CRYO_CMD_RECV_FDS, input: recv, output: UInt8.self)
        }

        let rseq = try Ptrace.rseqConfiguration(child)
        let plan = try MemoryRestorePlan(
            record: task.memory, index: task.pageIndex, current: current, parasite: parasiteRange,
            temporary: parasiteRange.upperBound + 0x10_0000, pagesFD: slotFD(pagesSlot),
            fileFD: { m in slotFD(mappingSlots["\(m.shared && m.protection.contains("w") ? "rw" : "r"):\(m.path!)"]!) },
            oldRseq: rseq)
        try parasite.run(CRYO_CMD_RESTORE_MEMORY, payload: plan.payload, replyBytes: 0)

        var state = cryo_task_state()
        var extra = cryo_restore_extra()
        task.signals.fill(&state, &extra)
        fillState(&state, &extra, core: task.core, cwd: slotFD(cwdSlot), root: rootSlot.map(slotFD), exe: exeSlot.map(slotFD))
        try parasite.run(CRYO_CMD_RESTORE_STATE, payload: bytes(of: state) + bytes(of: extra), replyBytes: 0)

        var install = cryo_install_fds()
        install.count = UInt32(task.files.descriptors.count)
        install.close_from = controlFD
        let entries = task.files.descriptors.map {
            cryo_fd_install(from: slotFD(firstDescriptionSlot + $0.file), to: $0.fd, cloexec: $0.closeOnExec ? 1 : 0, pad: 0)
        }
        try parasite.run(CRYO_CMD_INSTALL_FDS, payload: bytes(of: install) + bytes(of: entries), replyBytes: 0)

        try task.core.restoreResourceLimits(pid: child)
        try parasite.run(CRYO_CMD_RESTORE_CREDS, input: task.core.parasiteCredentials, output: UInt8.self)

        // The parasite leaves through a syscall placed at the task's own rip.
        tracee.syscallSite = task.registers.registers.rip
        try parasite.remove()
        try task.registers.restore(pid: child)
        try tracee.detach()
        restored = true
        return child
    }

    func checkPidFree(_ pid: pid_t) throws {
        if Files.exists("/proc/\(pid)") { throw pidInUse(pid) }
    }

    func pidInUse(_ pid: pid_t) -> CryoError {
        let stat = try? ProcStat(pid: pid)
        let holder = stat?.comm ?? "another process"
        if stat?.state == "Z" {
            return CryoError("pid \(pid) is in use by `\(holder)` (pid \(pid)), a zombie its parent pid \(stat!.ppid) has not reaped yet; "
                + "reap it before restoring (clone3 set_tid: EEXIST)")
        }
        return CryoError("pid \(pid) is in use by `\(holder)` (pid \(pid)); stop it before restoring (clone3 set_tid: EEXIST)")
    }

    func openDirectory(_ path: String, what: String) throws -> FileDescriptor {
        let raw = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if raw < 0 { throw SyscallError("open", errno: Errno(rawValue: cryo_errno()), object: "\(what) \(path)") }
        return FileDescriptor(rawValue: raw)
    }

    /// Descriptor slots live above the task's highest fd; make room for them.
    func raiseDescriptorLimit() {
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
    }

    /// A session of its own, or cryo's when the image was a shell job.
    func rebuildSession(_ tracee: Tracee, core: TaskCore, shellJob: Bool) throws {
        if core.sid == core.pid {
            let r = try tracee.syscall(112 /* setsid */)
            if r < 0 { throw SyscallError("injected setsid", errno: Errno(rawValue: Int32(-r)), pid: core.pid) }
        } else if !shellJob {
            throw CryoError("pid \(core.pid) was in session \(core.sid), which is not in the image; it can only come back with --shell-job")
        } else if core.pgid == core.pid {
            let r = try tracee.syscall(109 /* setpgid */, 0, 0)
            if r < 0 { throw SyscallError("injected setpgid", errno: Errno(rawValue: Int32(-r)), pid: core.pid) }
        }
    }

    func fillState(_ state: inout cryo_task_state, _ extra: inout cryo_restore_extra, core: TaskCore,
                   cwd: Int32, root: Int32?, exe: Int32?) {
        state.umask = core.umask
        state.clear_child_tid = core.clearChildTid
        state.robust_list = core.robustList
        state.robust_list_len = core.robustListLength
        state.parent_death_signal = core.parentDeathSignal
        state.dumpable = core.dumpable
        extra.cwd_fd = cwd
        extra.root_fd = root ?? -1
        extra.personality = core.personality
        withUnsafeMutableBytes(of: &extra.comm) { raw in
            for (i, b) in core.comm.utf8.prefix(15).enumerated() { raw[i] = b }
        }
        extra.set_mm = 1
        let mm = core.mm
        extra.mm = cryo_mm_map(start_code: mm.startCode, end_code: mm.endCode, start_data: mm.startData, end_data: mm.endData,
                               start_brk: mm.startBrk, brk: mm.brk, start_stack: mm.startStack, arg_start: mm.argStart,
                               arg_end: mm.argEnd, env_start: mm.envStart, env_end: mm.envEnd, auxv: 0,
                               auxv_size: UInt32(min(core.auxv.count, Int(CRYO_AUXV_WORDS)) * 8),
                               exe_fd: exe.map { UInt32($0) } ?? UInt32.max)
        withUnsafeMutableBytes(of: &extra.auxv) { raw in
            for (i, word) in core.auxv.prefix(Int(CRYO_AUXV_WORDS)).enumerated() {
                raw.storeBytes(of: word, toByteOffset: i * 8, as: UInt64.self)
            }
        }
        if let rseq = core.rseq {
            extra.rseq = rseq.address
            extra.rseq_length = rseq.length
            extra.rseq_signature = rseq.signature
        }
    }
}

func waitForStop(_ pid: pid_t) throws -> WaitStatus {
    while true {
        let status = try waitFor(pid)
        switch status {
        case .stopped(_, let event) where event == 128: return status
        case .stopped(let signal, _): try Ptrace.cont(pid, signal: signal == SIGCHLD ? 0 : signal)
        case .exited, .signaled: throw CryoError("pid \(pid) died before it could be traced (\(status))")
        }
    }
}

/// A listening unix socket in the abstract namespace, for the parasite to connect to.
struct ControlListener {
    let socket: Int32
    let address: [UInt8]  // sun_path bytes, leading NUL included

    init(name: String) throws {
        socket = Int32(try checkLibc(Int(Glibc.socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)), "socket(AF_UNIX)"))
        address = [0] + Array(name.utf8)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in address.enumerated() { raw[i] = b } }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + address.count)
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket, $0, length) } }
        if bound != 0 {
            Glibc.close(socket)
            throw SyscallError("bind", errno: Errno(rawValue: cryo_errno()), object: "control socket @\(name)")
        }
        _ = try checkLibc(Int(listen(socket, 1)), "listen", object: "control socket @\(name)")
    }

    func accept() throws -> Int32 {
        Int32(try check(cryo_accept_cloexec(socket), "accept4", object: "control socket"))
    }

    func close() { Glibc.close(socket) }
}
