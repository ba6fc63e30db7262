import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc

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
            if kind == .lease {
                // A lease some open is breaking has a countdown and a waiting opener that cannot be rebuilt.
                guard words[3] == "ACTIVE" else {
                    // While breaking, the kernel shows the type the lease is going to (READ, UNLCK).
                    throw CryoError("\(object): a lease being broken (to \(words[4])) is not supported; dump once the holder gave it up")
                }
            } else if words[3] != "ADVISORY" {
                throw CryoError("\(object): mandatory locks are not supported")
            }
            guard let start = Int64(words[7]) else { throw CryoError("\(object): unreadable lock line: \(line)") }
            locks.append(FileLock(kind: kind, write: words[4] == "WRITE", start: start, end: words[8] == "EOF" ? nil : Int64(words[8])))
        }
        return locks
    }

    /// For `cryo show`: "posix write lock 10-29".
    public var summary: String {
        kind == .lease ? "\(write ? "write" : "read") lease" : "\(kind.rawValue) \(write ? "write" : "read") lock \(start)-\(end.map(String.init) ?? "EOF")"
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
    }
}
