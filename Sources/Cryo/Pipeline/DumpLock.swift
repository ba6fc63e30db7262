import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// One dump (or pre-dump) of a pid at a time: a unix socket bound to an
/// abstract name made of the pid namespace and the pid, held for the dump's
/// lifetime. The kernel frees the name when cryo exits, however it dies, so
/// no stale lock is ever left; no file or privilege is needed.
final class DumpLock {
    private let fd: FileDescriptor

    private init(fd: FileDescriptor) { self.fd = fd }

    /// Takes the lock for `pid`, or refuses in one line when another cryo holds it.
    static func acquire(pid: pid_t, doing: String) throws -> DumpLock {
        let fd = try Sockets.make(family: AF_UNIX, type: Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
                                  object: "dump lock of pid \(pid)")
        do {
            try Sockets.bind(fd, to: .unix([0] + Array(name(pid: pid).utf8)), object: "dump lock of pid \(pid)")
        } catch let error as SyscallError where error.errno == .addressInUse {
            try? fd.close()
            // Two cryos asking for a pid that does not exist: both are told so, not that the other dumps it.
            guard pid > 0, Files.exists("/proc/\(pid)") else { throw CryoError("pid \(pid): no such process") }
            let comm = (try? ProcStat(pid: pid).comm).map { " (\($0))" } ?? ""
            throw CryoError("pid \(pid)\(comm) is being dumped by another cryo; \(doing) refused until it finishes")
        } catch {
            try? fd.close()
            throw error
        }
        return DumpLock(fd: fd)
    }

    /// Pids are per pid namespace: its inode keeps two namespaces' pid N apart.
    static func name(pid: pid_t) -> String {
        let namespace = (try? Files.stat("/proc/self/ns/pid")).map { UInt64($0.st_ino) } ?? 0
        return "cryo-dump/\(namespace)/\(pid)"
    }

    func release() { try? fd.close() }
}
