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
            let rdev = UInt64(p.stat.st_rdev)
            let (major, minor) = ((rdev >> 8) & 0xfff, (rdev & 0xff) | ((rdev >> 12) & ~0xff))
            // 5:1 the console, 4:0-63 virtual terminals, 4:64+ serial lines: not this tree's to recreate.
            let kind = major == 5 && minor == 1 ? "\(p.link), the system console; consoles are not supported"
                : major == 4 && minor < 64 ? "\(p.link), a virtual terminal (tty\(minor)); virtual terminals are not supported"
                : major == 4 ? "\(p.link), a serial line; serial terminals are not supported"
                : p.link.hasPrefix("/dev/pts/") || p.link.hasPrefix("/dev/tty")
                ? "a terminal (\(p.link)) that is not a pty of the tree nor cryo's own; not supported" : "the character device \(p.link), not supported yet"
            throw CryoError("\(p.object): \(kind)")
        }
        return CharacterDevice()
    }

    func recordedPath(_ p: DescriptorProbe) -> String? { p.link }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        try reopen(path: file.path ?? "", flags: file.flags, position: file.position, object: object)
    }
}
