import CryoSystem
import Glibc

/// Character devices that are the same for everybody and are simply reopened.
enum CharacterDevice {
    static let reopenable: Set<String> = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]

    static func dump(_ p: DescriptorProbe) throws -> String {
        guard reopenable.contains(p.link) else {
            let kind = p.link.hasPrefix("/dev/pts/") || p.link.hasPrefix("/dev/tty") || p.link == "/dev/console"
                ? "a terminal (\(p.link)); terminals are not supported yet" : "the character device \(p.link), not supported yet"
            throw CryoError("\(p.object): \(kind)")
        }
        return p.link
    }
}
