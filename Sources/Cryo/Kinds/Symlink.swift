import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// A symbolic link itself, opened with O_PATH|O_NOFOLLOW: reopened by its path
/// when it still says the same; one unlinked since is made again and unlinked.
struct SymlinkState: DescriptorKind {
    static let name = "symlink"
    /// What the link says.
    var target: String
    /// Its name was unlinked while open.
    var removed: Bool

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> SymlinkState? {
        guard p.stat.st_mode & S_IFMT == S_IFLNK else { return nil }
        guard p.link.hasPrefix("/") else { throw CryoError("\(p.object): symbolic link \(p.link) has no path that can be reopened") }
        return SymlinkState(target: try FileFacts.linkTarget(p.handle, object: p.object),
                            removed: p.link.hasSuffix(RegularFileState.deletedSuffix) && p.stat.st_nlink == 0)
    }

    func recordedPath(_ p: DescriptorProbe) -> String? {
        removed ? String(p.link.dropLast(RegularFileState.deletedSuffix.count)) : p.link
    }

    func summary(_ file: FileTable.OpenFile) -> String {
        "\(file.path ?? "") -> \(target)" + (removed ? " (unlinked while open)" : "")
    }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        let path = file.path ?? ""
        let flags = file.flags | UInt32(CRYO_O_PATH | O_NOFOLLOW)
        guard removed else {
            let now: String
            do { now = try Files.readLink(path) } catch { throw CryoError("\(object): symbolic link \(path): \(error)") }
            guard now == target else {
                throw CryoError("\(object): symbolic link \(path) now points to \(now), it pointed to \(target) at dump")
            }
            return try reopen(path: path, flags: flags, position: 0, object: object)
        }
        let base = path.split(separator: "/").last.map(String.init) ?? "link"
        var lastError: Error = CryoError("\(object): nowhere to make symbolic link \(path) again")
        for name in [path] + [folder(of: path), context.paths.directory].map({ "\($0)/.cryo-\(base)-\(Kernel.currentPid())-\(file.id)" }) {
            do { try FileFacts.makeSymlink(name, target: target, object: "\(object): \(path) made again as \(name)") } catch {
                lastError = error
                continue
            }
            defer { unlink(name) }
            return try reopen(path: name, flags: flags, position: 0, object: object)
        }
        throw lastError
    }
}
