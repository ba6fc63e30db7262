import CryoSystem
import Glibc
import SystemPackage

/// Character devices that are the same for everybody and are simply reopened.
/// Terminals are character devices too: TerminalState comes first in the registry.
struct CharacterDevice: DescriptorKind {
    static let name = "characterDevice"
    static let key: String? = nil
    static let reopenable: Set<String> = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> CharacterDevice? {
        guard p.stat.st_mode & S_IFMT == S_IFCHR else { return nil }
        guard reopenable.contains(p.link) else {
            let kind = p.link.hasPrefix("/dev/pts/") || p.link.hasPrefix("/dev/tty") || p.link == "/dev/console"
                ? "a terminal (\(p.link)); terminals are not supported yet" : "the character device \(p.link), not supported yet"
            throw CryoError("\(p.object): \(kind)")
        }
        return CharacterDevice()
    }

    func recordedPath(_ p: DescriptorProbe) -> String? { p.link }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        try reopen(path: file.path ?? "", flags: file.flags, position: file.position, object: object)
    }
}
