import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// epoll: every watched descriptor with its events (edge, oneshot... bits
/// included) and data. The instance is created by the controller; its
/// targets are added from inside the owning process once its descriptors
/// are in place, because epoll knows a target by (file, fd number).
public struct EpollState: DescriptorKind {
    static let name = "epoll"
    public struct Target: Codable, Sendable {
        public var fd: Int32
        public var events: UInt32
        public var data: UInt64
        /// Where the watched file is now, when `fd` (the number it was added under) was closed since.
        public var sourceFd: Int32?
    }
    public var targets: [Target]

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> EpollState? {
        guard p.link == "anon_inode:[eventpoll]" else { return nil }
        if let found = p.inFlight {
            // Its watches name descriptors of whoever added them: read from cryo's table they would be wrong.
            throw CryoError("\(found) is an epoll instance held by no process of the tree (its watches name descriptors "
                            + "of whoever added them); in flight (SCM_RIGHTS) it cannot be dumped, not supported")
        }
        var targets: [Target] = []
        var seen: [Int32: Int] = [:]
        for line in p.info.text.split(separator: "\n") where line.hasPrefix("tfd:") {
            // tfd: N events: HEX data: HEX pos:... ino:... sdev:...
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            func after(_ key: String) -> Substring? { words.firstIndex(of: Substring(key)).flatMap { $0 + 1 < words.count ? words[$0 + 1] : nil } }
            guard let fd = after("tfd:").flatMap({ Int32($0) }), let events = after("events:").flatMap({ UInt32($0, radix: 16) }),
                  let data = after("data:").flatMap({ UInt64($0, radix: 16) }) else {
                throw CryoError("\(p.object): epoll with an unreadable target line: \(line)")
            }
            let occurrence = seen[fd, default: 0]
            seen[fd] = occurrence + 1
            // epoll knows a target by (file, fd number): the number may since have been closed and
            // given to another file, which restore would then watch instead.
            let numberOpen = Files.exists("/proc/\(p.pid)/fd/\(fd)")
            var sourceFd: Int32?
            if !(try numberOpen && Pidfd.epollTargetIsOpen(p.pid, fd: fd, epollFd: p.fd, targetFd: fd, occurrence: occurrence)) {
                // The file lives on through another descriptor (else epoll would have dropped it): find it,
                // in this process or else in another of the tree (a forked worker that closed its copy of
                // a listener its parent keeps; apache's prefork children after a graceful restart).
                func holds(_ pid: pid_t, _ candidate: Int32) -> Bool {
                    (try? Pidfd.epollTargetIsOpen(p.pid, fd: candidate, epollFd: p.fd, targetFd: fd, occurrence: occurrence, holder: pid)) == true
                }
                if p.inFlight == nil, let other = try openDescriptors(p.pid).first(where: { holds(p.pid, $0) }) {
                    sourceFd = other
                } else if p.inFlight == nil, let inode = words.first(where: { $0.hasPrefix("ino:") }).flatMap({ UInt64($0.dropFirst(4), radix: 16) }),
                          let (holder, held) = table.treeDescriptors(inode: inode).first(where: { $0.pid != p.pid && holds($0.pid, $0.fd) }) {
                    sourceFd = table.borrow(holder, fd: held, above: fd)
                } else {
                    throw CryoError("\(p.object): epoll watches a file through fd \(fd), which the process has closed"
                        + (numberOpen ? " (the number now holds another file)" : "")
                        + " and no process of the tree holds through another descriptor; not supported")
                }
            }
            targets.append(Target(fd: fd, events: events, data: data, sourceFd: sourceFd))
        }
        return EpollState(targets: targets)
    }

    private static func openDescriptors(_ pid: pid_t) throws -> [Int32] {
        try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").compactMap { Int32($0) }.sorted()
    }

    func summary(_ file: FileTable.OpenFile) -> String {
        "epoll watching " + (targets.isEmpty ? "nothing" : targets.map { target in
            "fd \(target.fd)" + (target.sourceFd.map { " (closed; the file is at fd \($0))" } ?? "")
                + " (events 0x\(hex(UInt64(target.events))), data 0x\(hex(target.data)))"
        }.joined(separator: ", "))
    }

    func validate() -> String? {
        targets.first { $0.fd < 0 || ($0.sourceFd ?? 0) < 0 || $0.sourceFd == $0.fd }.map { "epoll target fd \($0.fd) is malformed" }
    }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        try FileObjects.epoll(object: object)
    }

    static func afterInstallBytes(_ installed: InstalledDescriptors) -> Int {
        MemoryLayout<cryo_epoll_add>.size
            + installed.of(EpollState.self).reduce(0) { $0 + $1.state.targets.count } * MemoryLayout<cryo_epoll_target>.stride
    }

    static func hasAfterInstallWork(_ installed: InstalledDescriptors) -> Bool { !installed.of(EpollState.self).isEmpty }


    /// Targets are added once per instance, by the first process holding it, now that its fds are in place.
    static func afterInstall(_ installed: InstalledDescriptors, parasite: Parasite) throws {
        var watches: [cryo_epoll_target] = []
        // An instance several processes hold is filled by the first that holds every file it watches
        // through another number (its own, or borrowed for this step).
        let numbers = Set(installed.descriptors.map(\.fd))
        for (fd, file, epoll) in installed.of(EpollState.self)
        where epoll.targets.allSatisfy({ $0.sourceFd.map(numbers.contains) ?? true }) && installed.finishedOnce(file.id) {
            watches += epoll.targets.map { cryo_epoll_target(epoll_fd: fd, target_fd: $0.fd, events: $0.events, source_fd: $0.sourceFd ?? -1, data: $0.data) }
        }
        guard !watches.isEmpty else { return }
        var add = cryo_epoll_add()
        add.count = UInt32(watches.count)
        try parasite.run(CRYO_CMD_EPOLL_ADD, payload: bytes(of: add) + bytes(of: watches), replyBytes: 0)
    }
}
