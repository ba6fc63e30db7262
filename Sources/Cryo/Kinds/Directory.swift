import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// A directory: reopened by its path; one removed while open is made again
/// (empty, as rmdir left it) and removed again, keeping its name in /proc.
struct DirectoryState: DescriptorKind {
    static let name = "directory"
    static let key: String? = "directory"
    /// Set when the directory was removed while open.
    var removed: RemovedDirectory?

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> DirectoryState? {
        guard p.stat.st_mode & S_IFMT == S_IFDIR else { return nil }
        guard p.link.hasPrefix("/") else { throw CryoError("\(p.object): \(p.link) has no path that can be reopened") }
        if p.link.hasSuffix(RegularFileState.deletedSuffix) && p.stat.st_nlink == 0 {
            return DirectoryState(removed: RemovedDirectory(p.stat, link: p.link))
        }
        guard !p.link.hasSuffix(RegularFileState.deletedSuffix) || Files.exists(p.link) else {
            throw CryoError("\(p.object): \(p.link) has no path that can be reopened")
        }
        return DirectoryState()
    }

    func recordedPath(_ p: DescriptorProbe) -> String? { removed?.path ?? p.link }

    func summary(_ file: FileTable.OpenFile) -> String { (file.path ?? "") + (removed != nil ? " (removed while open)" : "") }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        guard let removed else { return try reopen(path: file.path ?? "", flags: file.flags, position: file.position, object: object) }
        // Descriptions of one removed directory share it again.
        if let first = Self.entries(context.files).first(where: { $0.file.id < file.id && $0.state.removed?.sameDirectory(removed) == true }) {
            return try reopen(path: "/proc/self/fd/\(context.opened[first.file.id].rawValue)", flags: file.flags, position: file.position, object: object)
        }
        let made = try removed.make(fallback: context.paths.directory, object: object)
        defer { try? made.close() }
        return try reopen(path: "/proc/self/fd/\(made.rawValue)", flags: file.flags, position: file.position, object: object)
    }
}

/// A directory removed while something still had it open (a descriptor, a cwd or root).
public struct RemovedDirectory: Codable, Sendable {
    /// Its path when it was removed, without " (deleted)".
    public var path: String
    public var device: UInt64
    public var inode: UInt64
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// Nanoseconds since the epoch.
    public var accessTime: Int64
    public var modificationTime: Int64

    init(_ st: Glibc.stat, link: String) {
        path = String(link.dropLast(RegularFileState.deletedSuffix.count))
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        mode = st.st_mode & 0o7777
        uid = st.st_uid
        gid = st.st_gid
        accessTime = Int64(st.st_atim.tv_sec) * 1_000_000_000 + Int64(st.st_atim.tv_nsec)
        modificationTime = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
    }

    /// What /proc/PID/cwd or /root names, if it is a removed directory.
    static func of(link: String, statPath: String) throws -> RemovedDirectory? {
        guard link.hasSuffix(RegularFileState.deletedSuffix) else { return nil }
        let st = try Files.stat(statPath)
        return st.st_nlink == 0 ? RemovedDirectory(st, link: link) : nil
    }

    func sameDirectory(_ other: RemovedDirectory) -> Bool { device == other.device && inode == other.inode }

    /// The directory made again under its old name (or a new one in its old
    /// folder, else in `fallback`), opened, removed, then given owner, mode
    /// and times: O_RDONLY|O_DIRECTORY.
    func make(fallback: String, object: String) throws -> FileDescriptor {
        let parent = folder(of: path)
        let base = path.split(separator: "/").last.map(String.init) ?? "dir"
        var candidates = [path]
        for folder in [parent, fallback] { candidates.append("\(folder)/.cryo-\(base)-\(Kernel.currentPid())-\(inode)") }
        var lastError: Error = CryoError("\(object): nowhere to make removed directory \(path) again")
        for name in candidates {
            do { try Files.makeDirectory(name, mode: 0o700, object: "\(object): removed directory \(path) made again as \(name)") } catch {
                lastError = error
                continue
            }
            let fd: FileDescriptor
            do { fd = try FileObjects.open(name, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW, object: object) } catch {
                rmdir(name)
                throw error
            }
            do {
                _ = try checkLibc(Int(rmdir(name)), "rmdir", object: "\(object): \(name)")
                try FileFacts.setOwner(fd, uid: uid, gid: gid, object: "\(object): \(path)")
                try FileObjects.setMode(fd, mode, object: "\(object): \(path)")
                try FileFacts.setTimes(fd, access: accessTime, modification: modificationTime, object: "\(object): \(path)")
            } catch {
                try? fd.close()
                throw error
            }
            return fd
        }
        throw lastError
    }
}
