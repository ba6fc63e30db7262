import CCryo
import CryoSystem
import Foundation
import Glibc
import SystemPackage

/// epoll: every watched descriptor with its events (edge, oneshot... bits
/// included) and data. The instance is created by the controller; its
/// targets are added from inside the owning process once its descriptors
/// are in place, because epoll knows a target by (file, fd number).
public struct EpollState: Codable, Sendable {
    public struct Target: Codable, Sendable {
        public var fd: Int32
        public var events: UInt32
        public var data: UInt64
    }
    public var targets: [Target]

    static func dump(_ p: DescriptorProbe) throws -> EpollState {
        var targets: [Target] = []
        for line in p.info.text.split(separator: "\n") where line.hasPrefix("tfd:") {
            // tfd: N events: HEX data: HEX pos:... ino:... sdev:...
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            func after(_ key: String) -> Substring? { words.firstIndex(of: Substring(key)).flatMap { $0 + 1 < words.count ? words[$0 + 1] : nil } }
            guard let fd = after("tfd:").flatMap({ Int32($0) }), let events = after("events:").flatMap({ UInt32($0, radix: 16) }),
                  let data = after("data:").flatMap({ UInt64($0, radix: 16) }) else {
                throw CryoError("\(p.object): epoll with an unreadable target line: \(line)")
            }
            guard Files.exists("/proc/\(p.pid)/fd/\(fd)") else {
                throw CryoError("\(p.object): epoll watches fd \(fd), which the process has closed; not supported")
            }
            targets.append(Target(fd: fd, events: events, data: data))
        }
        return EpollState(targets: targets)
    }

    static func open(flags: UInt32, object: String) throws -> FileDescriptor {
        FileDescriptor(rawValue: Int32(try check(cryo_epoll_create(), "epoll_create1", object: object)))
    }

    /// The EPOLL_ADD entries for the parasite, for the epoll at `fd`.
    func entries(epollFD fd: Int32) -> [cryo_epoll_target] {
        targets.map { cryo_epoll_target(epoll_fd: fd, target_fd: $0.fd, events: $0.events, pad: 0, data: $0.data) }
    }
}
