import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// A lock held through a descriptor: flock (per description), POSIX record
/// lock (per process), open-file-description lock or lease (per description).
/// Read from the "lock:" lines of fdinfo; taken again from inside the owner
/// once its fds are back.
public struct FileLock: Codable, Sendable {
    public enum Kind: String, Codable, Sendable { case flock, posix, ofd, lease }
    public var kind: Kind
    public var write: Bool
    public var start: Int64
    /// Last byte locked; nil means to the end of the file, however long it grows.
    public var end: Int64?
    /// A lease some open was breaking at dump: the type it is going to, READ or UNLCK (F_GETLEASE says
    /// so meanwhile). Set again, then broken again by an open of ours before the owner is back (no signal).
    public var breakingTo: String? = nil

    static func parse(_ info: FDInfo, object: String) throws -> [FileLock] {
        var locks: [FileLock] = []
        guard info.hasLockLines else { return locks }
        for line in info.text.split(separator: "\n") where line.hasPrefix("lock:") && !line.contains("->") {
            // lock:	1: POSIX  ADVISORY  WRITE 23799 fe:00:16228933 10 29
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard words.count >= 9 else { throw CryoError("\(object): unreadable lock line: \(line)") }
            let kind: Kind
            switch words[2] {
            case "FLOCK": kind = .flock
            case "POSIX": kind = .posix
            case "OFDLCK": kind = .ofd
            case "LEASE": kind = .lease
            default: throw CryoError("\(object): a \(words[2]) lock (an NFS delegation) is not supported")
            }
            var breakingTo: String? = nil
            if kind == .lease {
                switch (words[3], words[4]) {
                case ("ACTIVE", _): break
                // While breaking, the kernel shows the type the lease is going to.
                case ("BREAKING", "READ"), ("BREAKING", "UNLCK"): breakingTo = words[4]
                default: throw CryoError("\(object): a lease in state \(words[3]) \(words[4]) is not supported")
                }
            } else if words[3] != "ADVISORY" {
                throw CryoError("\(object): mandatory locks are not supported")
            }
            guard let start = Int64(words[7]) else { throw CryoError("\(object): unreadable lock line: \(line)") }
            // A lease breaking to READ was a write lease; one breaking to UNLCK was a write lease on a
            // description open for writing (read leases need a read-only one), else taken as a read lease.
            let write = breakingTo == nil ? words[4] == "WRITE" : breakingTo == "READ" || Int32(bitPattern: info.flags) & O_ACCMODE != O_RDONLY
            locks.append(FileLock(kind: kind, write: write, start: start, end: words[8] == "EOF" ? nil : Int64(words[8]),
                                  breakingTo: breakingTo))
        }
        return locks
    }

    /// For `cryo show`: "posix write lock 10-29".
    public var summary: String {
        kind == .lease ? "\(write ? "write" : "read") lease\(breakingTo.map { " (breaking to \($0))" } ?? "")" : "\(kind.rawValue) \(write ? "write" : "read") lock \(start)-\(end.map(String.init) ?? "EOF")"
    }

    func entry(fd: Int32) -> cryo_lock {
        let code: UInt16 = switch kind { case .flock: 0; case .posix: 1; case .ofd: 2; case .lease: 3 }
        return cryo_lock(fd: fd, kind: code, write: write ? 1 : 0, pad: 0,
                  start: start, length: end.map { $0 - start + 1 } ?? 0)
    }

    static func afterInstallBytes(_ installed: InstalledDescriptors) -> Int {
        MemoryLayout<cryo_locks>.size + installed.descriptors.reduce(0) { $0 + ($1.locks?.count ?? 0) } * MemoryLayout<cryo_lock>.stride
    }

    /// Taken again from inside the owner, once all its descriptors are in place.
    static func afterInstall(_ installed: InstalledDescriptors, parasite: Parasite) throws {
        let locks = installed.descriptors.flatMap { d in (d.locks ?? []).map { $0.entry(fd: d.fd) } }
        guard !locks.isEmpty else { return }
        var header = cryo_locks()
        header.count = UInt32(locks.count)
        try parasite.run(CRYO_CMD_LOCKS, payload: bytes(of: header) + bytes(of: locks), replyBytes: 0)
        // A lease that was breaking breaks again: an open that conflicts with it, not waiting (EWOULDBLOCK).
        // F_SETLEASE made the holder the description's owner: without one for now, the break signals
        // nobody (the holder had its signal before the dump); FileOwner sets the dumped owner after.
        for d in installed.descriptors {
            for lock in d.locks ?? [] where lock.kind == .lease {
                guard let target = lock.breakingTo else { continue }
                let unowned = try parasite.tracee.syscall(72 /* fcntl */, UInt64(d.fd), UInt64(F_SETOWN), 0)
                if unowned < 0 {
                    throw SyscallError("injected fcntl(F_SETOWN 0)", errno: Errno(rawValue: Int32(-unowned)), pid: parasite.tracee.pid,
                                       object: "fd \(d.fd) (before breaking its lease again)")
                }
                let path = "/proc/\(parasite.tracee.pid)/fd/\(d.fd)"
                let fd = Glibc.open(path, O_NONBLOCK | O_CLOEXEC | (target == "READ" ? O_RDONLY : O_WRONLY))
                if fd >= 0 {
                    Glibc.close(fd)
                    throw CryoError("pid \(parasite.tracee.pid) fd \(d.fd): the lease to break again (to \(target)) was not there: open \(path) succeeded")
                }
                guard errno == EWOULDBLOCK else {
                    throw SyscallError("open", errno: Errno(rawValue: errno), pid: parasite.tracee.pid,
                                       object: "\(path) (breaking its lease again, to \(target))")
                }
            }
        }
    }
}
