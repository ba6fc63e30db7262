import CryoSystem
import Glibc
import SystemPackage

/// A directory: reopened by its path.
struct DirectoryState: DescriptorKind {
    static let name = "directory"
    static let key: String? = nil

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> DirectoryState? {
        guard p.stat.st_mode & S_IFMT == S_IFDIR else { return nil }
        guard p.link.hasPrefix("/"), !p.link.hasSuffix(RegularFileState.deletedSuffix) else {
            throw CryoError("\(p.object): \(p.link) has no path that can be reopened")
        }
        return DirectoryState()
    }

    func recordedPath(_ p: DescriptorProbe) -> String? { p.link }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        try reopen(path: file.path ?? "", flags: file.flags, position: file.position, object: object)
    }
}
