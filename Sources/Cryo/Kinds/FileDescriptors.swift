import CCryo
import CryoSystem
import Foundation
import Glibc
import SystemPackage

/// Open file descriptions of the whole tree (files.img), each stored once
/// however many descriptors in however many processes refer to it, so they
/// share offset and flags again after restore.
public struct FileTable: Codable, Sendable {
    public struct OpenFile: Codable, Sendable {
        public var id: Int
        public var kind: FileKind
        /// O_* status flags and access mode of the description (no O_CLOEXEC).
        public var flags: UInt32
        public var position: Int64
        public var path: String?
        public var regular: RegularFileState?
        public var pipe: PipeEndState?
        public var memfd: MemfdState?
        public var eventfd: EventFDState?
        public var signalfd: SignalFDState?
        public var timerfd: TimerFDState?
        public var epoll: EpollState?
        public var unixSocket: UnixSocketState?
        public var inetSocket: InetSocketState?
        public var inotify: InotifyState?
        public var terminal: TerminalState?
    }
    public enum FileKind: String, Codable, Sendable {
        case regular, directory, characterDevice, pipe, fifo, memfd, eventfd, signalfd, timerfd, epoll, unixSocket, inetSocket, inotify, terminal
    }
    public var files: [OpenFile]
}

/// One process's descriptor table: which fd number names which description.
public struct DescriptorsRecord: Codable, Sendable {
    public struct Descriptor: Codable, Sendable {
        public var fd: Int32
        public var closeOnExec: Bool
        public var file: Int  // id in FileTable
        public var locks: [FileLock]?
    }
    public var descriptors: [Descriptor]
}

/// What dump knows of one descriptor before asking its kind.
struct DescriptorProbe {
    let pid: pid_t
    let fd: Int32
    let link: String
    let flags: UInt32
    let position: Int64
    let info: FDInfo
    let stat: Glibc.stat
    let handle: FileDescriptor  // our duplicate (pidfd_getfd): same open file description
    var object: String { "pid \(pid) fd \(fd)" }
}

/// Builds the file table while descriptor tables are dumped, one process after another.
final class FileTableBuilder {
    let paths: ImagePaths
    private(set) var table = FileTable(files: [])
    /// Side files written so far, removed again if the dump fails.
    var created: [String] = []
    /// Descriptions seen so far by (device, inode): only these can be the same description.
    private var seen: [String: [(pid: pid_t, fd: Int32, id: Int)]] = [:]
    private var pipesWithData = Set<UInt64>()
    /// "pid P fd N" of the first descriptor of each socket, for refusals made once the whole tree is seen.
    private var socketObjects: [Int: String] = [:]

    /// --tcp-established: established TCP connections are dumped (otherwise refused).
    let tcpEstablished: Bool
    let shellJob: Bool
    let leaveRunning: Bool
    /// Duplicates of established TCP sockets, held until the tree is dead: with
    /// --leave-running they are just closed; otherwise TCP_REPAIR goes on before
    /// the kill, so that the last close sends neither FIN nor RST to the peer.
    private var connections: [Int32] = []

    init(paths: ImagePaths, tcpEstablished: Bool = false, shellJob: Bool = false, leaveRunning: Bool = false) {
        self.paths = paths
        self.tcpEstablished = tcpEstablished
        self.shellJob = shellJob
        self.leaveRunning = leaveRunning
    }

    /// Right before the dumped tree is killed: repair mode on every established connection.
    func silenceConnections() {
        for fd in connections { _ = cryo_setsockopt_int(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR, 1) }
    }

    /// After the kill (or instead of it): drops cryo's own references.
    func releaseConnections() {
        for fd in connections { close(fd) }
        connections = []
    }

    func dump(pid: pid_t) throws -> DescriptorsRecord {
        let pidfd = try Pidfd.open(pid)
        defer { try? pidfd.close() }
        var descriptors: [DescriptorsRecord.Descriptor] = []
        let numbers = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").compactMap { Int32($0) }.sorted()
        for fd in numbers {
            let link = try Files.readLink("/proc/\(pid)/fd/\(fd)")
            let info = try parseFDInfo(try Files.readString("/proc/\(pid)/fdinfo/\(fd)"))
            let handle = try Pidfd.getfd(pidfd, pid: pid, fd: fd)
            defer { try? handle.close() }
            let stat = try Files.stat(handle, object: "pid \(pid) fd \(fd)")
            let key = "\(stat.st_dev):\(stat.st_ino)"
            let closeOnExec = info.flags & UInt32(O_CLOEXEC) != 0
            let lockList = try FileLock.parse(info, object: "pid \(pid) fd \(fd)")
            let locks = lockList.isEmpty ? nil : lockList
            // A dup, or a description inherited from a parent, is stored once.
            var shared: Int? = nil
            for candidate in seen[key] ?? [] where try Pidfd.sameFile(candidate.pid, candidate.fd, pid, fd) {
                shared = candidate.id
                break
            }
            if let shared {
                descriptors.append(.init(fd: fd, closeOnExec: closeOnExec, file: shared, locks: locks))
                continue
            }
            let probe = DescriptorProbe(pid: pid, fd: fd, link: link, flags: info.flags & ~UInt32(O_CLOEXEC),
                                        position: info.position, info: info, stat: stat, handle: handle)
            var file = try dumpOpenFile(probe, id: table.files.count)
            if let pipe = file.pipe, !pipesWithData.insert(pipe.inode).inserted {
                file.pipe!.buffered = nil // already kept with the pipe's other end
            }
            table.files.append(file)
            seen[key, default: []].append((pid, fd, file.id))
            descriptors.append(.init(fd: fd, closeOnExec: closeOnExec, file: file.id, locks: locks))
        }
        return DescriptorsRecord(descriptors: descriptors)
    }

    /// The file table entry of the memfd behind a mapping of `pid`: the entry of a
    /// descriptor (or an earlier mapping) of the same memfd, else a new entry, read
    /// through /proc/PID/map_files, that no descriptor names.
    func memfdMapping(pid: pid_t, start: UInt64, end: UInt64) throws -> Int {
        let object = "pid \(pid): mapping 0x\(String(start, radix: 16))-0x\(String(end, radix: 16))"
        let path = "/proc/\(pid)/map_files/\(String(start, radix: 16))-\(String(end, radix: 16))"
        let raw = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        if raw < 0 { throw SyscallError("open", errno: Errno(rawValue: cryo_errno()), object: "\(object) (\(path))") }
        let handle = FileDescriptor(rawValue: raw)
        defer { try? handle.close() }
        let st = try Files.stat(handle, object: object)
        if let known = table.files.first(where: { $0.kind == .memfd && $0.memfd?.inode == UInt64(st.st_ino) }) { return known.id }
        let id = table.files.count
        var file = FileTable.OpenFile(id: id, kind: .memfd, flags: UInt32(O_RDWR), position: 0)
        file.memfd = try MemfdState.dump(handle, object: object, into: self, id: id)
        table.files.append(file)
        return id
    }

    /// Checks that need every process's descriptors: how unix sockets connect.
    func finish() throws {
        try UnixSocketState.checkConnections(table.files, objects: socketObjects)
        for f in table.files where f.terminal?.role == .ptySlave {
            let index = f.terminal!.index
            guard table.files.contains(where: { $0.terminal?.role == .ptyMaster && $0.terminal?.index == index }) else {
                throw CryoError("file \(f.path ?? "") (pty \(index ?? -1)): the slave of a pseudo-terminal whose master is outside the dumped tree, not supported yet")
            }
        }
    }

    /// Dispatches on the kind of object; anything unknown is refused by name.
    func dumpOpenFile(_ p: DescriptorProbe, id: Int) throws -> FileTable.OpenFile {
        let type = p.stat.st_mode & S_IFMT
        var file = FileTable.OpenFile(id: id, kind: .regular, flags: p.flags, position: p.position)
        switch type {
        case S_IFREG where p.link.hasPrefix(MemfdState.prefix):
            file.kind = .memfd
            file.memfd = try MemfdState.dump(p.handle, object: p.object, into: self, id: id)
        case S_IFREG:
            file.regular = try RegularFileState.dump(p, into: self, id: id)
            file.path = file.regular!.path
        case S_IFDIR:
            file.kind = .directory
            file.path = try RegularFileState.livePath(p)
        case S_IFCHR:
            if let terminal = try TerminalState.dump(p, shellJob: shellJob, leaveRunning: leaveRunning) {
                file.kind = .terminal
                file.terminal = terminal
                file.path = p.link
            } else {
                file.kind = .characterDevice
                file.path = try CharacterDevice.dump(p)
            }
        case S_IFIFO where p.link.hasPrefix("pipe:"):
            file.kind = .pipe
            file.pipe = try PipeEndState.dump(p)
        case S_IFIFO:
            file.kind = .fifo
            file.path = p.link
            file.pipe = try PipeEndState.dump(p)
        case S_IFSOCK:
            let family = try UnixSocketState.option(p.handle.rawValue, CRYO_SO_DOMAIN, p.object)
            if family == AF_INET || family == AF_INET6 {
                file.kind = .inetSocket
                let socket = try InetSocketState.dump(p, family: family, established: tcpEstablished)
                file.inetSocket = socket
                if socket.tcp != nil {
                    let held = Int32(try checkLibc(Int(fcntl(p.handle.rawValue, F_DUPFD_CLOEXEC, 0)), "fcntl(F_DUPFD_CLOEXEC)", object: p.object))
                    connections.append(held)
                }
            } else {
                file.kind = .unixSocket
                file.unixSocket = try UnixSocketState.dump(p)
                socketObjects[id] = p.object
            }
        case _ where p.link == "anon_inode:[eventfd]":
            file.kind = .eventfd
            file.eventfd = try EventFDState.dump(p)
        case _ where p.link == "anon_inode:[signalfd]":
            file.kind = .signalfd
            file.signalfd = try SignalFDState.dump(p)
        case _ where p.link == "anon_inode:[timerfd]":
            file.kind = .timerfd
            file.timerfd = try TimerFDState.dump(p)
        case _ where p.link == "anon_inode:inotify":
            file.kind = .inotify
            file.inotify = try InotifyState.dump(p)
        case _ where p.link == "anon_inode:[eventpoll]":
            file.kind = .epoll
            file.epoll = try EpollState.dump(p)
        default:
            let what = p.link.hasPrefix("anon_inode:") ? "an \(p.link) descriptor" : "\(p.link)"
            throw CryoError("\(p.object): \(what) is not supported yet")
        }
        return file
    }
}

extension DescriptorsRecord {
    func validate(file: String, table: FileTable) throws {
        var seen = Set<Int32>()
        for d in descriptors {
            guard d.fd >= 0, d.fd < 1 << 20, seen.insert(d.fd).inserted, table.files.indices.contains(d.file) else {
                throw ImageError(file: file, record: "descriptors", "descriptor \(d.fd) is duplicated, out of range or names no file")
            }
        }
    }
}

extension FileTable {
    func validate(file: String) throws {
        for (i, f) in files.enumerated() where f.id != i {
            throw ImageError(file: file, record: "files", "file #\(i) carries id \(f.id)")
        }
        for f in files where ([.pipe, .fifo].contains(f.kind)) != (f.pipe != nil) || (f.kind == .regular) != (f.regular != nil)
            || (f.kind == .memfd) != (f.memfd != nil) || (f.kind == .eventfd) != (f.eventfd != nil)
            || (f.kind == .signalfd) != (f.signalfd != nil) || (f.kind == .timerfd) != (f.timerfd != nil)
            || (f.kind == .epoll) != (f.epoll != nil) || (f.kind == .unixSocket) != (f.unixSocket != nil)
            || (f.kind == .inetSocket) != (f.inetSocket != nil)
            || (f.kind == .inotify) != (f.inotify != nil) || (f.kind == .terminal) != (f.terminal != nil) {
            throw ImageError(file: file, record: "files", "file #\(f.id) of kind \(f.kind) lacks its state")
        }
        var socketInodes = Set<UInt64>()
        for f in files {
            guard let s = f.unixSocket else { continue }
            if let problem = s.validate() { throw ImageError(file: file, record: "files", "file #\(f.id): \(problem)") }
            guard socketInodes.insert(s.inode).inserted else {
                throw ImageError(file: file, record: "files", "file #\(f.id): socket:[\(s.inode)] appears twice")
            }
        }
        for f in files {
            guard let s = f.inetSocket else { continue }
            if let problem = s.validate() { throw ImageError(file: file, record: "files", "file #\(f.id): \(problem)") }
        }
    }

    /// Opens every description in the controller, ready to be passed to the tasks.
    /// Pipes are created once per pipe and their buffered bytes put back.
    /// `holders` names, per file id, a descriptor that holds it ("pid 42 fd 3"), for error messages.
    func open(paths: ImagePaths, tcpEstablished: Bool = false, shellJob: Bool = false,
              holders: [Int: String] = [:]) throws -> [FileDescriptor] {
        var opened: [FileDescriptor] = []
        var pipes = PipeRebuilder()
        defer { pipes.closeAll() }
        var terminals = TerminalRebuilder(files: files, shellJob: shellJob)
        defer { terminals.closeAll() }
        do {
            // Unix sockets name and connect to each other: all are made first, together.
            var sockets = try UnixSocketRebuilder(files: files)
            defer { sockets.closeAll() }
            var inetSockets = try InetSocketRebuilder(files: files, established: tcpEstablished)
            defer { inetSockets.closeAll() }
            for f in files {
                let object = "\(holders[f.id].map { "\($0): " } ?? "")file #\(f.id) (\(f.path ?? f.kind.rawValue))"
                let handle: FileDescriptor
                switch f.kind {
                case .regular: handle = try f.regular!.open(flags: f.flags, position: f.position, object: object, paths: paths, id: f.id)
                case .directory, .characterDevice: handle = try reopen(path: f.path ?? "", flags: f.flags, position: f.position, object: object)
                case .pipe: handle = try pipes.end(f.pipe!, flags: f.flags, object: object)
                case .fifo: handle = try pipes.fifoEnd(f.pipe!, path: f.path ?? "", flags: f.flags, object: object)
                case .memfd:
                    let sibling = files.first { $0.kind == .memfd && $0.id < f.id && $0.memfd!.inode != nil && $0.memfd!.inode == f.memfd!.inode }
                    handle = try f.memfd!.open(flags: f.flags, position: f.position, object: object, paths: paths, id: f.id,
                                               sibling: sibling.map { opened[$0.id] })
                case .eventfd: handle = try f.eventfd!.open(flags: f.flags, object: object)
                case .signalfd: handle = try f.signalfd!.open(flags: f.flags, object: object)
                case .timerfd: handle = try f.timerfd!.open(flags: f.flags, object: object)
                case .epoll: handle = try EpollState.open(flags: f.flags, object: object)
                case .inotify: handle = try f.inotify!.open(flags: f.flags, object: object)
                case .terminal: handle = try terminals.open(f, object: object)
                case .unixSocket:
                    guard let socket = sockets.take(f.id) else { throw CryoError("\(object): socket was not rebuilt") }
                    handle = socket
                case .inetSocket:
                    guard let socket = inetSockets.take(f.id) else { throw CryoError("\(object): socket was not rebuilt") }
                    handle = socket
                }
                opened.append(handle)
            }
        } catch {
            for h in opened { try? h.close() }
            throw error
        }
        return opened
    }
}

/// /proc/PID/fdinfo/FD: position and flags, plus every kind-specific line.
struct FDInfo {
    var position: Int64 = 0
    var flags: UInt32 = 0
    var text: String = ""
    /// The value of the first "key: value" line with this key.
    func value(_ key: String) -> String? {
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2, parts[0].trimmingCharacters(in: .whitespaces) == key {
                return parts[1].trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
    }
}

func parseFDInfo(_ text: String) throws -> FDInfo {
    var info = FDInfo(text: text)
    info.position = Int64(info.value("pos") ?? "0") ?? 0
    info.flags = UInt32(info.value("flags") ?? "0", radix: 8) ?? 0
    return info
}

/// Opens `path` as the description was opened (never creating or truncating) and seeks.
func reopen(path: String, flags: UInt32, position: Int64, object: String) throws -> FileDescriptor {
    let openFlags = Int32(bitPattern: flags) & ~(O_CREAT | O_TRUNC | O_EXCL | O_NOCTTY) | O_CLOEXEC | O_NOCTTY
    let raw = Glibc.open(path, openFlags)
    if raw < 0 { throw SyscallError("open", errno: Errno(rawValue: cryo_errno()), object: "\(object) \(path)") }
    let fd = FileDescriptor(rawValue: raw)
    if position != 0 {
        do { _ = try fd.seek(offset: position, from: .start) } catch {
            try? fd.close()
            throw SyscallError("lseek", errno: error as? Errno ?? .ioError, object: object)
        }
    }
    return fd
}
