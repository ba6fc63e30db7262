import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// A file or directory under /proc/PID of a process of the tree (its own
/// /proc/self/... shows as /proc/PID/...): reopened inside the restored holder
/// once the whole tree exists, so it names the restored process.
struct ProcFileState: DescriptorKind {
    static let name = "procPid"
    /// The pid the path names.
    var pid: Int32
    /// For a namespace file ("net:[4026531840]"): the namespace; the path is /proc/PID/ns/TYPE of a process of the tree in it.
    var namespace: String? = nil

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> ProcFileState? {
        if let type = namespaceType(p.link) { return try namespaceFile(p, type: type, table: table) }
        guard let pid = pidOf(p.link) else { return nil }
        guard let proc = try? Files.stat("/proc"), proc.st_dev == p.stat.st_dev else { return nil }
        return ProcFileState(pid: pid)
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
        guard let namespace, let type = Self.namespaceType(namespace) else { return p.link }
        // The holder's own /proc/PID/ns/... or another's; pid_for_children when only that matched.
        let entry = (try? Files.readLink("/proc/\(pid)/ns/\(type)")) == namespace ? type : "\(type)_for_children"
        return "/proc/\(pid)/ns/\(entry)"
    }

    static func finishDump(_ table: FileTableBuilder) throws {
        for (file, state) in entries(table.table.files) where !table.dumpedPids.contains(state.pid) {
            throw CryoError("\(table.objects[file.id] ?? "file #\(file.id)"): \(file.path ?? "") is a /proc file of pid \(state.pid), "
                + "which is not in the dumped tree; not supported")
        }
    }

    func validate() -> String? { pid > 0 ? nil : "/proc file of pid \(pid)" }

    func summary(_ file: FileTable.OpenFile) -> String {
        (namespace.map { "\($0) through " } ?? "") + (file.path ?? "") + " (reopened inside the restored process)"
    }

    /// A stand-in until `afterInstall` opens the real one at its number: pid \(pid) may not exist yet.
    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        try FileObjects.open("/dev/null", flags: O_RDONLY, object: "\(object) (stand-in for \(file.path ?? "a /proc file"))")
    }

    static func afterInstallBytes(_ installed: InstalledDescriptors) -> Int {
        installed.of(ProcFileState.self).reduce(0) { max($0, ($1.file.path?.utf8.count ?? 0) + 1) }
    }

    static func hasAfterInstallWork(_ installed: InstalledDescriptors) -> Bool { !installed.of(ProcFileState.self).isEmpty }


    /// Inside the holder: open the path with the dumped flags, move it onto the fd, seek.
    static func afterInstall(_ installed: InstalledDescriptors, parasite: Parasite) throws {
        for (fd, file, _) in installed.of(ProcFileState.self) {
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
            let made = try inject("openat", 257, UInt64(bitPattern: Int64(AT_FDCWD)), address, UInt64(UInt32(bitPattern: flags)), 0)
            _ = try inject("dup3", 292, UInt64(made), UInt64(fd), closeOnExec ? UInt64(O_CLOEXEC) : 0)
            _ = try inject("close", 3, UInt64(made))
            if file.position > 0 { _ = try inject("lseek", 8, UInt64(fd), UInt64(file.position), UInt64(SEEK_SET)) }
        }
    }
}
