import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// A file or directory under /proc/PID. Of a process of the tree (its own
/// /proc/self/... shows as /proc/PID/...): reopened inside the restored holder
/// once the whole tree exists, so it names the restored process. Of a live
/// process outside the tree (/proc/1/status): the same path, opened again the
/// same way. Of a process that had exited (its /proc/PID is gone, or names
/// another process now): opened through a short-lived stand-in that takes that
/// pid and is reaped again (ProcStandIns), so it names a dead process as before.
struct ProcFileState: DescriptorKind {
    static let name = "procPid"
    /// The pid the path names.
    var pid: Int32
    /// For a namespace file ("net:[4026531840]"): the namespace; the path is /proc/PID/ns/TYPE of a process of the tree in it.
    var namespace: String? = nil
    /// The pid is of a live process outside the tree.
    var outside: Bool? = nil
    /// The pid's process had exited.
    var exited: Bool? = nil

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> ProcFileState? {
        if let type = namespaceType(p.link) { return try namespaceFile(p, type: type, table: table) }
        // A /proc/PID directory (not a file under it) of a process that has exited reads "/proc/PID (deleted)".
        let unhashed = p.link.hasSuffix(RegularFileState.deletedSuffix)
        let path = unhashed ? String(p.link.dropLast(RegularFileState.deletedSuffix.count)) : p.link
        guard let pid = pidOf(path) else { return nil }
        guard let proc = try? Files.stat("/proc"), proc.st_dev == p.stat.st_dev else { return nil }
        if table.treeTids.contains(pid) || table.treePids.contains(pid) { return ProcFileState(pid: pid) }
        // While the process lives, its /proc entries stay the ones held open: the path leads to the same
        // inode. Once it exited, the path is gone or leads to a new entry (of a process that took the pid).
        var alive = false
        if !unhashed {
            do {
                let now = try Files.stat(path, follow: false)
                alive = now.st_dev == p.stat.st_dev && now.st_ino == p.stat.st_ino
            } catch let error as SyscallError where error.errno == .noSuchFileOrDirectory || error.errno == .noSuchProcess {
                alive = false
            } catch {
                // EACCES and the like tell nothing: a live process taken for dead would have its pid asked for at restore.
                throw CryoError("\(p.object): \(path) is a /proc file of pid \(pid), outside the tree, "
                    + "which cannot be told alive or exited: \(error)")
            }
        }
        return alive ? ProcFileState(pid: pid, outside: true) : ProcFileState(pid: pid, exited: true)
    }

    /// "net" of "net:[4026531840]", nil for other links.
    static func namespaceType(_ link: String) -> String? {
        // Most links are paths: no search for a colon through every one of them.
        guard link.utf8.first != UInt8(ascii: "/") else { return nil }
        guard let colon = link.firstIndex(of: ":"), link.hasSuffix("]"), link[colon...].hasPrefix(":["),
              UInt64(link[link.index(colon, offsetBy: 2)..<link.index(before: link.endIndex)]) != nil else { return nil }
        let type = String(link[..<colon])
        return ["net", "uts", "ipc", "mnt", "pid", "time", "cgroup", "user"].contains(type) ? type : nil
    }

    /// A namespace file is reopened through a process of the tree that is in that namespace:
    /// the holder itself first, else any other dumped so far.
    static func namespaceFile(_ p: DescriptorProbe, type: String, table: FileTableBuilder) throws -> ProcFileState {
        for pid in [p.pid] + table.dumpedPids.sorted() where pid > 0 {
            for entry in type == "pid" || type == "time" ? [type, "\(type)_for_children"] : [type] {
                if let link = try? Files.readLink("/proc/\(pid)/ns/\(entry)"), link == p.link {
                    return ProcFileState(pid: pid, namespace: p.link)
                }
            }
        }
        throw CryoError("\(p.object): \(p.link) is a namespace no process of the tree is in; not supported")
    }

    /// The pid of a /proc/PID path (nil for other paths).
    static func pidOf(_ path: String) -> Int32? {
        guard path.hasPrefix("/proc/") else { return nil }
        let component = path.dropFirst(6).prefix { $0 != "/" }
        return Int32(component).flatMap { $0 > 0 ? $0 : nil }
    }

    func recordedPath(_ p: DescriptorProbe) -> String? {
        if exited == true && p.link.hasSuffix(RegularFileState.deletedSuffix) { return String(p.link.dropLast(RegularFileState.deletedSuffix.count)) }
        guard let namespace, let type = Self.namespaceType(namespace) else { return p.link }
        // The holder's own /proc/PID/ns/... or another's; pid_for_children when only that matched.
        let entry = (try? Files.readLink("/proc/\(pid)/ns/\(type)")) == namespace ? type : "\(type)_for_children"
        return "/proc/\(pid)/ns/\(entry)"
    }

    static func finishDump(_ table: FileTableBuilder) throws {
        for (file, state) in entries(table.table.files) where state.outside != true && state.exited != true && !table.dumpedPids.contains(state.pid) {
            throw CryoError("\(table.objects[file.id] ?? "file #\(file.id)"): \(file.path ?? "") is a /proc file of pid \(state.pid), "
                + "which is not in the dumped tree; not supported")
        }
    }

    func validate() -> String? {
        guard pid > 0 else { return "/proc file of pid \(pid)" }
        return outside == true && exited == true || namespace != nil && (outside == true || exited == true)
            ? "/proc file of pid \(pid) both outside the tree and exited, or a namespace" : nil
    }

    /// Under --pidns the image's pids are the new namespace's, where no other process exists.
    static func checkBeforeRestore(_ files: [FileTable.OpenFile], options: KindOptions) throws {
        guard options.newPidNamespace else { return }
        for (file, state) in entries(files) where state.outside == true || state.exited == true {
            throw CryoError("file #\(file.id) (\(file.path ?? "")): a /proc file of pid \(state.pid), "
                + "\(state.exited == true ? "which had exited" : "a process outside the tree"); not supported with --pidns")
        }
    }

    func summary(_ file: FileTable.OpenFile) -> String {
        let how = exited == true ? "of a process that had exited: opened through a stand-in with its pid"
            : outside == true ? "of a process outside the tree: opened again" : "reopened inside the restored process"
        return (namespace.map { "\($0) through " } ?? "") + (file.path ?? "") + " (\(how))"
    }

    /// A stand-in until `afterInstall` opens the real one at its number: pid \(pid) may not exist yet.
    /// A process that had exited is opened here, through a stand-in of its pid.
    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        if exited == true { return try context.rebuilder(ProcStandIns.self).file(file, pid: pid, object: object) }
        // Checked before any process of the tree exists; afterInstall opens it.
        if outside == true, access("/proc/\(pid)", F_OK) != 0 {
            throw CryoError("\(object): pid \(pid), a process outside the tree, does not exist here "
                + "(access(/proc/\(pid)): \(Errno(rawValue: errno).name))")
        }
        return try FileObjects.open("/dev/null", flags: O_RDONLY, object: "\(object) (stand-in for \(file.path ?? "a /proc file"))")
    }

    static func afterInstallBytes(_ installed: InstalledDescriptors) -> Int {
        installed.of(ProcFileState.self).reduce(0) { max($0, $1.state.exited == true ? 0 : ($1.file.path?.utf8.count ?? 0) + 1) }
    }

    static func hasAfterInstallWork(_ installed: InstalledDescriptors) -> Bool {
        installed.of(ProcFileState.self).contains { $0.state.exited != true }
    }


    /// Inside the holder: open the path with the dumped flags, move it onto the fd, seek.
    static func afterInstall(_ installed: InstalledDescriptors, parasite: Parasite) throws {
        for (fd, file, state) in installed.of(ProcFileState.self) where state.exited != true {
            let path = file.path ?? ""
            let closeOnExec = installed.descriptors.first { $0.fd == fd }?.closeOnExec ?? false
            let object = "pid \(parasite.tracee.pid) fd \(fd) (\(path))"
            func inject(_ what: String, _ number: Int, _ args: UInt64...) throws -> Int64 {
                let result = try parasite.tracee.syscall(number, args[0], args.count > 1 ? args[1] : 0, args.count > 2 ? args[2] : 0,
                                                         args.count > 3 ? args[3] : 0)
                if result < 0 { throw SyscallError("injected \(what)", errno: .init(rawValue: Int32(-result)), object: object) }
                return result
            }
            let address = try parasite.place(Array(path.utf8) + [0])
            let flags = Int32(bitPattern: file.flags) & ~(O_CREAT | O_TRUNC | O_EXCL) | O_NOCTTY
            let made: Int64
            do { made = try inject("openat", 257, UInt64(bitPattern: Int64(AT_FDCWD)), address, UInt64(UInt32(bitPattern: flags)), 0) } catch
                let error as SyscallError where state.outside == true && (error.errno == .noSuchFileOrDirectory || error.errno == .noSuchProcess) {
                throw CryoError("\(object): pid \(state.pid), a process outside the tree, is gone: \(error)")
            }
            _ = try inject("dup3", 292, UInt64(made), UInt64(fd), closeOnExec ? UInt64(O_CLOEXEC) : 0)
            _ = try inject("close", 3, UInt64(made))
            if file.position > 0 { _ = try inject("lseek", 8, UInt64(fd), UInt64(file.position), UInt64(SEEK_SET)) }
        }
    }
}

/// Stand-ins for processes that had exited, one per pid of the image: a child of cryo
/// cloned with that pid (clone3 set_tid) that parks while every /proc file of the pid
/// is opened through /proc/PID, then exits and is reaped. The files then name a
/// process that is gone, as they did (a /proc/PID directory reads "/proc/PID (deleted)").
final class ProcStandIns: KindRebuilder {
    private let files: [FileTable.OpenFile]
    /// By file id, made so far; handed out as duplicates.
    private var made: [Int: FileDescriptor] = [:]

    init(_ context: OpenContext) { files = context.files }

    func file(_ file: FileTable.OpenFile, pid: Int32, object: String) throws -> FileDescriptor {
        if made[file.id] == nil {
            let group = ProcFileState.entries(files).filter { $0.state.exited == true && $0.state.pid == pid }.map(\.file)
            try makeStandIn(pid: pid, for: group, object: object)
        }
        return try FileObjects.duplicate(made[file.id]!, object: object)
    }

    private func makeStandIn(pid: Int32, for group: [FileTable.OpenFile], object: String) throws {
        let park = try FileObjects.pipe(object: "\(object): stand-in for pid \(pid)")
        defer { try? park.read.close(); try? park.write.close() }
        let child: pid_t
        do { child = try Processes.cloneParked(pid: pid, park: park.read) } catch let error as SyscallError where error.errno == .fileExists {
            let holder = (try? ProcStat(pid: pid)).map { "`\($0.comm)` (pid \(pid))" } ?? "another process"
            throw CryoError("\(object): pid \(pid) had exited; a stand-in that takes pid \(pid) again to open this file "
                + "finds it in use by \(holder): stop it before restoring (clone3 set_tid: EEXIST)")
        }
        let opened = try StandIn.descriptors(through: child, park: park, what: "\(object): stand-in \(child) for pid \(pid)") { opened in
            for f in group {
                let path = f.path ?? "/proc/\(pid)"
                let fd = try FileObjects.open(path, flags: Int32(bitPattern: f.flags) & ~(O_CREAT | O_TRUNC | O_EXCL) | O_NOCTTY,
                                              object: "\(object): through stand-in \(child):")
                opened[f.id] = fd
                if f.position > 0 && lseek(fd.rawValue, off_t(f.position), SEEK_SET) < 0 {
                    throw SyscallError("lseek(\(f.position))", errno: Errno(rawValue: errno), object: "\(object) \(path)")
                }
            }
        }
        made.merge(opened) { a, _ in a }
    }

    func closeAll() {
        for fd in made.values { try? fd.close() }
        made = [:]
    }
}
