import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// A pidfd: of a process of the tree (itself, a child, any other), made again
/// inside the restored holder by pidfd_open once the whole tree exists, so
/// pidfd_send_signal and waitid(P_PIDFD) reach the restored process; or of a
/// process that had exited and been reaped, which is a stand-in child of cryo
/// that ends the same way (PidfdStandIns below).
struct PidfdState: DescriptorKind {
    static let name = "pidfd"
    /// The process it refers to, as the tree's pid namespace sees it; -1 when it had been reaped.
    var pid: Int32
    /// A reaped process's pidfs inode: pidfds with the same one (in any process of the tree) come back
    /// as pidfds of one stand-in. Nil without pidfs, and in images made before it was kept.
    var inode: UInt64? = nil
    /// The wait status the kernel kept for a reaped process (PIDFD_GET_INFO); nil when it kept none.
    var exitStatus: Int32? = nil
    /// A pidfd of one thread (PIDFD_THREAD): of the holder's own thread, which comes back with its tid
    /// before the holder's descriptors do, or of a thread-group leader.
    var thread: Bool? = nil

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> PidfdState? {
        guard p.link == "anon_inode:[pidfd]" else { return nil }
        guard let pid = p.info.value("Pid").flatMap({ Int32($0) }) else { throw CryoError("\(p.object): a pidfd without a Pid line in fdinfo") }
        if let nspid = p.info.value("NSpid"), nspid.split(whereSeparator: { $0 == " " || $0 == "\t" }).count > 1 {
            throw CryoError("\(p.object): a pidfd of pid \(pid) in another pid namespace (NSpid \(nspid)); not supported")
        }
        // PIDFD_THREAD shows as O_EXCL. Another process's threads may come back after the holder's descriptors.
        let thread = Int32(bitPattern: p.flags) & O_EXCL != 0
        if thread && pid > 0 && !table.treePids.contains(pid) && !Files.exists("/proc/\(p.pid)/task/\(pid)") {
            throw CryoError("\(p.object): a pidfd of thread \(pid) (PIDFD_THREAD) of another process; "
                + "only pidfds of the holder's own threads and of processes are supported")
        }
        guard pid == -1 else { return PidfdState(pid: pid, thread: thread ? true : nil) }
        // Before pidfs (Linux 6.9) every pidfd had the one anonymous inode: it tells nothing apart.
        let onPidfs = try Pidfd.isOnPidfs(p.handle, object: p.object)
        let status = try Pidfd.exitStatus(p.handle, object: p.object)
        if let status, status & 0x80 != 0 {
            throw CryoError("\(p.object): a pidfd of a reaped process that dumped core (wait status 0x\(String(status, radix: 16))); "
                + "a stand-in cannot end the same way without writing a core; not supported")
        }
        return PidfdState(pid: -1, inode: onPidfs ? UInt64(p.stat.st_ino) : nil, exitStatus: status, thread: thread ? true : nil)
    }

    /// Every pidfd names a process of the tree or a reaped one: another process may be gone or reused after restore.
    static func finishDump(_ table: FileTableBuilder) throws {
        for (file, state) in entries(table.table.files) where state.pid > 0 && state.thread != true && !table.dumpedPids.contains(state.pid) {
            throw CryoError("\(table.objects[file.id] ?? "file #\(file.id)"): a pidfd of pid \(state.pid), which is not in the dumped tree; not supported")
        }
    }

    func validate() -> String? {
        guard pid == -1 || pid > 0 else { return "pidfd of pid \(pid)" }
        // What a dead process's status can be: an exit code, or a signal (1-64) that kills, without a core.
        if let exitStatus, exitStatus & ~0xff7f != 0 || (exitStatus & 0x7f != 0 && (exitStatus & 0x7f > 64 || exitStatus & 0xff00 != 0)) {
            return "pidfd of a reaped process with wait status \(exitStatus)"
        }
        return nil
    }

    func summary(_ file: FileTable.OpenFile) -> String {
        guard pid <= 0 else { return thread == true ? "pidfd of thread \(pid) (PIDFD_THREAD)" : "pidfd of pid \(pid)" }
        guard let exitStatus else { return "pidfd of a process that was reaped" }
        let sig = exitStatus & 0x7f
        return "pidfd of a process that was reaped (" + (sig != 0 ? "killed by signal \(sig))" : "exit status \(exitStatus >> 8))")
    }

    /// A reaped process's pidfd is one of a stand-in child of cryo that ended the same way;
    /// a live one's is a stand-in until `afterInstall` puts the real one at its number.
    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        guard pid == -1 else { return try FileObjects.open("/dev/null", flags: O_RDONLY, object: "\(object) (stand-in for a pidfd)") }
        return try context.rebuilder(PidfdStandIns.self).pidfd(file, self, object: object)
    }

    static func hasAfterInstallWork(_ installed: InstalledDescriptors) -> Bool { !installed.of(PidfdState.self).isEmpty }


    /// Inside the holder: pidfd_open(pid) of the restored process, moved onto the stand-in's number.
    static func afterInstall(_ installed: InstalledDescriptors, parasite: Parasite) throws {
        for (fd, file, state) in installed.of(PidfdState.self) where state.pid > 0 {
            let closeOnExec = installed.descriptors.first { $0.fd == fd }?.closeOnExec ?? false
            let object = "pid \(parasite.tracee.pid) fd \(fd)"
            func inject(_ what: String, _ number: Int, _ args: UInt64...) throws -> Int64 {
                let result = try parasite.tracee.syscall(number, args[0], args.count > 1 ? args[1] : 0, args.count > 2 ? args[2] : 0)
                if result < 0 { throw SyscallError("injected \(what)", errno: .init(rawValue: Int32(-result)), object: object) }
                return result
            }
            let flags = Int32(bitPattern: file.flags) & O_NONBLOCK | (state.thread == true ? O_EXCL /* PIDFD_THREAD */ : 0)
            let made = try inject("pidfd_open(\(state.pid))", 434, UInt64(state.pid), UInt64(flags))
            _ = try inject("dup3", 292, UInt64(made), UInt64(fd), closeOnExec ? UInt64(O_CLOEXEC) : 0)
            _ = try inject("close", 3, UInt64(made))
        }
    }
}

/// The stand-ins for reaped processes, one per pidfs inode of the image: a child of cryo
/// that parks while a pidfd is opened on it for each description of that inode (each
/// with its own O_NONBLOCK), then ends with the kept status and is reaped. pidfds that
/// were of one process, in one process or several, stay of one (same inode), and
/// PIDFD_GET_INFO reports the status as before.
final class PidfdStandIns: KindRebuilder {
    private let files: [FileTable.OpenFile]
    /// By file id, made so far; handed out as duplicates.
    private var made: [Int: FileDescriptor] = [:]

    init(_ context: OpenContext) { files = context.files }

    func pidfd(_ file: FileTable.OpenFile, _ state: PidfdState, object: String) throws -> FileDescriptor {
        if made[file.id] == nil {
            // Without an inode (no pidfs, older images) each description is a process of its own.
            let group = state.inode.map { inode in
                PidfdState.entries(files).filter { $0.state.pid == -1 && $0.state.inode == inode }.map(\.file)
            } ?? [file]
            try makeStandIn(for: group, status: state.exitStatus ?? 0, object: object)
        }
        return try FileObjects.duplicate(made[file.id]!, object: object)
    }

    private func makeStandIn(for group: [FileTable.OpenFile], status: Int32, object: String) throws {
        let park = try FileObjects.pipe(object: "\(object): stand-in for a reaped process")
        defer { try? park.read.close(); try? park.write.close() }
        let child = try Processes.cloneParkedEnding(park: park.read, status: status)
        let opened = try StandIn.descriptors(through: child, park: park, what: "\(object): stand-in \(child) for a reaped process", open: { opened in
            for f in group {
                opened[f.id] = try Pidfd.open(child, flags: Int32(bitPattern: f.flags) & (O_NONBLOCK | O_EXCL /* PIDFD_THREAD */))
            }
        }, ended: { ended in
            let want: WaitStatus = status & 0x7f != 0 ? .signaled(status & 0x7f) : .exited(status >> 8)
            guard ended == want else {
                throw CryoError("\(object): the stand-in \(child) for a reaped process ended \(ended), not \(want) as the image says")
            }
        })
        made.merge(opened) { a, _ in a }
    }

    func closeAll() {
        for fd in made.values { try? fd.close() }
        made = [:]
    }
}
