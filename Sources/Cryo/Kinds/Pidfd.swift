import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// A pidfd: of a process of the tree (itself, a child, any other), made again
/// inside the restored holder by pidfd_open once the whole tree exists, so
/// pidfd_send_signal and waitid(P_PIDFD) reach the restored process; or of a
/// process that had exited and been reaped, which is one made the same way here.
struct PidfdState: DescriptorKind {
    static let name = "pidfd"
    /// The process it refers to, as the tree's pid namespace sees it; -1 when it had been reaped.
    var pid: Int32

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> PidfdState? {
        guard p.link == "anon_inode:[pidfd]" else { return nil }
        guard let pid = p.info.value("Pid").flatMap({ Int32($0) }) else { throw CryoError("\(p.object): a pidfd without a Pid line in fdinfo") }
        if let nspid = p.info.value("NSpid"), nspid.split(whereSeparator: { $0 == " " || $0 == "\t" }).count > 1 {
            throw CryoError("\(p.object): a pidfd of pid \(pid) in another pid namespace (NSpid \(nspid)); not supported")
        }
        // A thread's pidfd (PIDFD_THREAD, O_EXCL in its flags) would need the thread's own pid again.
        if Int32(bitPattern: p.flags) & O_EXCL != 0 { throw CryoError("\(p.object): a pidfd of thread \(pid) (PIDFD_THREAD); not supported") }
        return PidfdState(pid: pid)
    }

    /// Every pidfd names a process of the tree or a reaped one: another process may be gone or reused after restore.
    static func finishDump(_ table: FileTableBuilder) throws {
        for (file, state) in entries(table.table.files) where state.pid > 0 && !table.dumpedPids.contains(state.pid) {
            throw CryoError("\(table.objects[file.id] ?? "file #\(file.id)"): a pidfd of pid \(state.pid), which is not in the dumped tree; not supported")
        }
    }

    func validate() -> String? { pid == -1 || pid > 0 ? nil : "pidfd of pid \(pid)" }

    func summary(_ file: FileTable.OpenFile) -> String { pid > 0 ? "pidfd of pid \(pid)" : "pidfd of a process that was reaped" }

    /// A reaped process's pidfd is one of a child of cryo that exited and was reaped;
    /// a live one's is a stand-in until `afterInstall` puts the real one at its number.
    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        guard pid == -1 else { return try FileObjects.open("/dev/null", flags: O_RDONLY, object: "\(object) (stand-in for a pidfd)") }
        let child = try Processes.fork()
        if child == 0 { _exit(0) }
        let pidfd: FileDescriptor
        do { pidfd = try Pidfd.open(child) } catch {
            _ = try? waitFor(child)
            throw CryoError("\(object): a pidfd of a reaped process: \(error)")
        }
        _ = try? waitFor(child)
        defer { try? pidfd.close() }
        return try reopenPidfd(pidfd, flags: file.flags, object: object)
    }

    /// The same pidfd with the dumped O_NONBLOCK (pidfds cannot be reopened through /proc).
    private func reopenPidfd(_ pidfd: FileDescriptor, flags: UInt32, object: String) throws -> FileDescriptor {
        let copy = try FileObjects.duplicate(pidfd, object: object)
        if Int32(bitPattern: flags) & O_NONBLOCK != 0 {
            do { try FileObjects.setStatusFlags(copy, O_NONBLOCK, object: object) } catch {
                try? copy.close()
                throw error
            }
        }
        return copy
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
            let nonBlocking = Int32(bitPattern: file.flags) & O_NONBLOCK != 0 ? UInt64(O_NONBLOCK) : 0
            let made = try inject("pidfd_open(\(state.pid))", 434, UInt64(state.pid), nonBlocking)
            _ = try inject("dup3", 292, UInt64(made), UInt64(fd), closeOnExec ? UInt64(O_CLOEXEC) : 0)
            _ = try inject("close", 3, UInt64(made))
        }
    }
}
