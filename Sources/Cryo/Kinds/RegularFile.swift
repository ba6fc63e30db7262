import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// A regular file: reopened by path, or, when it was unlinked while open,
/// recreated unlinked from the contents saved in the image.
public struct RegularFileState: DescriptorKind {
    static let name = "regular"
    public var path: String
    public var size: Int64
    public var mode: UInt32
    public var device: UInt64
    public var inode: UInt64
    /// Contents were saved to filedata-ID.img because no name reaches the file any more.
    public var unlinked: Bool
}

extension RegularFileState {
    static let deletedSuffix = " (deleted)"

    /// A memfd is a regular file too: MemfdState comes first in the registry.
    static func dump(_ p: DescriptorProbe, into context: FileTableBuilder, id: Int) throws -> RegularFileState? {
        guard p.stat.st_mode & S_IFMT == S_IFREG else { return nil }
        let unlinked = p.stat.st_nlink == 0
        var path = p.link
        if unlinked && path.hasSuffix(deletedSuffix) { path.removeLast(deletedSuffix.count) }
        guard path.hasPrefix("/") else { throw CryoError("\(p.object): regular file \(p.link) has no usable path") }
        if unlinked {
            guard UInt64(p.stat.st_size) <= context.options.ghostLimit else {
                throw CryoError("\(p.object): \(path) was unlinked while open and holds \(p.stat.st_size) bytes, "
                    + "over the ghost limit of \(context.options.ghostLimit) (raise it with --ghost-limit)")
            }
            // The file lives only through this descriptor: keep its bytes.
            try saveContents(of: p.handle, object: p.object, to: context.paths.fileData(id), context: context)
        }
        return RegularFileState(path: path, size: Int64(p.stat.st_size), mode: p.stat.st_mode & 0o7777,
                                device: UInt64(p.stat.st_dev), inode: UInt64(p.stat.st_ino), unlinked: unlinked)
    }

    func recordedPath(_ p: DescriptorProbe) -> String? { path }

    func summary(_ file: FileTable.OpenFile) -> String {
        (file.path ?? path) + (unlinked ? " (unlinked, contents in image)" : "")
    }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        let (flags, position, paths, id) = (file.flags, file.position, context.paths, file.id)
        if !unlinked {
            let st: Glibc.stat
            do { st = try Files.stat(path) } catch { throw CryoError("\(object): \(error)") }
            guard Int64(st.st_size) == size else {
                throw CryoError("\(object): \(path) is \(st.st_size) bytes, it was \(size) at dump; the file changed since")
            }
            return try reopen(path: path, flags: flags, position: position, object: object)
        }
        // Recreate it unlinked in its old folder (or the image's), then open it with the old flags.
        let oldFolder = folder(of: path)
        let scratch: FileDescriptor
        do { scratch = try Descriptors.openTemporaryFile(in: Files.exists(oldFolder) ? oldFolder : paths.directory, flags: O_RDWR, mode: mode) } catch {
            scratch = try Descriptors.openTemporaryFile(in: paths.directory, flags: O_RDWR, mode: mode, object: "\(object) for \(path)")
        }
        defer { try? scratch.close() }
        let data = try Files.read(paths.fileData(id))
        guard data.count == size else {
            throw ImageError(file: fileName(of: paths.fileData(id)), "holds \(data.count) bytes, the file had \(size)")
        }
        try data.withUnsafeBytes { (raw) throws in try Files.write(scratch, raw, at: 0, path: path) }
        try FileObjects.setMode(scratch, mode, object: "\(object) for \(path)")
        // Reopening through /proc gives a description with exactly the old access mode and flags.
        return try reopen(path: "/proc/self/fd/\(scratch.rawValue)", flags: flags, position: position, object: object)
    }
}
