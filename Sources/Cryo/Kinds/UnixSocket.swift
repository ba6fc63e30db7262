import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// An AF_UNIX socket: its type, state, name, peer, options and the bytes
/// waiting in its receive queue. What the socket itself cannot tell (inode,
/// peer inode, state, name, queue lengths, shutdown) comes from NETLINK_SOCK_DIAG;
/// options from getsockopt on cryo's duplicate of the descriptor.
///
/// Restore builds every socket of the image at once, in the controller:
/// named ones are bound first (listeners listen), then connections are made
/// (a pair with both ends in the image from socketpair, or by connecting to
/// its listener and accepting when one end is the accepted side; a peer
/// outside the image by connecting to its name again), then each queue is
/// refilled from the peer end, and last the options and shutdown state.
public struct UnixSocketState: DescriptorKind {
    static let name = "unixSocket"
    public enum SocketType: String, Codable, Sendable {
        case stream, dgram, seqpacket
        var kernelValue: Int32 { switch self { case .stream: 1; case .dgram: 2; case .seqpacket: 5 } }
        init?(kernelValue: UInt32) {
            switch kernelValue {
            case 1: self = .stream
            case 2: self = .dgram
            case 5: self = .seqpacket
            default: return nil
            }
        }
    }
    public enum State: String, Codable, Sendable { case unconnected, listening, connected }
    /// The socket file of a name in the filesystem, as it was at dump.
    public struct SocketFile: Codable, Sendable {
        /// The path still named this socket's own inode (it was neither removed nor replaced).
        public var existed: Bool
        public var mode: UInt32
        public var uid: UInt32
        public var gid: UInt32
        /// The socket's own file, renamed since bind within the name's directory (bind to a temporary
        /// name, then rename over the real one: haproxy's stats socket): the path it is at now.
        public var movedTo: String? = nil
    }

    public var inode: UInt64
    public var type: SocketType
    public var state: State
    /// sun_path as bound, without a path's terminating NUL; a leading NUL is an abstract name.
    public var name: Data?
    /// For a path name only.
    public var file: SocketFile?
    /// For a relative path name whose file was found from the process's working directory: that directory.
    public var directory: String? = nil
    /// The inode of the socket file its name was bound with (an accepted socket shares its listener's).
    public var fileInode: UInt64? = nil
    /// Inode of the connected peer, when it is a live socket.
    public var peer: UInt64?
    /// Connected, but the peer has been closed since.
    public var peerClosed: Bool
    /// The peer's address (getpeername), to connect to again when the peer is not in the image.
    public var peerName: Data?
    /// listen() backlog of a listening socket.
    public var backlog: Int32?
    /// The receive queue, read without consuming it: a stream socket's bytes as one
    /// element, one element per message for datagram and seqpacket sockets.
    public var queued: [Data]
    /// Bit 0: receiving shut down, bit 1: sending shut down.
    public var shutdown: UInt8
    public var passCredentials: Bool
    /// SO_PASSSEC and SO_PASSPIDFD (the kernel's security label, a pidfd of the sender with each
    /// message); nil in older images and where the kernel has no such option.
    public var passSecurity: Bool? = nil
    public var passPidfd: Bool? = nil
    /// SO_SNDBUF and SO_RCVBUF as getsockopt reports them (twice what was set).
    public var sendBuffer: Int32
    public var receiveBuffer: Int32
    /// SO_PEEK_OFF; -1 when not enabled.
    public var peekOffset: Int32
    /// Per element of `queued`: the file ids of the descriptors in flight with it
    /// (SCM_RIGHTS; extra entries of the file table), empty for none. Nil: none anywhere.
    public var rights: [[Int]]? = nil
    /// Per element of `queued`: SCM_CREDENTIALS as the receiver saw them, nil where the
    /// message carries none. Nil: no credentials anywhere.
    public var senders: [Sender?]? = nil

    /// A listener's connections not yet accepted, in the order accept returns them: each
    /// the state of the accepted end as cryo took it (its queue is what the client sent),
    /// with `peer` the connecting socket's inode (nil: closed since).
    public var pending: [UnixSocketState]? = nil

    /// Per element of `queued` of an unconnected datagram socket: the sender's name, nil
    /// where it had none. Nil: no named sender anywhere.
    public var sources: [Data?]? = nil

    /// Credentials of a queued message; pid as the dumped tree saw it.
    public struct Sender: Codable, Sendable, Equatable {
        public var pid: Int32
        public var uid: UInt32
        public var gid: UInt32
    }
}

// MARK: - Dump

extension UnixSocketState {
    /// Every socket that is not an inet one (InetSocketState comes first): others are refused here by family.
    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> UnixSocketState? {
        try dump(p, into: table, id: id, pendingIndex: nil)
    }

    /// `pendingIndex`: the socket is the listener `id`'s connection of that index, accepted by cryo.
    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int, pendingIndex: Int?) throws -> UnixSocketState? {
        guard p.stat.st_mode & S_IFMT == S_IFSOCK else { return nil }
        let fd = p.handle
        let family = try SocketDescription.option(fd, SO_DOMAIN, p.object)
        guard family == AF_UNIX else {
            throw CryoError("\(p.object): \(SocketDescription.describe(fd, family: family, link: p.link, pid: p.pid)) is not supported yet")
        }
        guard let diag = try SockDiag.unixSocket(inode: UInt32(truncatingIfNeeded: p.stat.st_ino), object: "\(p.object) (\(p.link))") else {
            throw CryoError("\(p.object): unix socket \(p.link) is not in cryo's network namespace; not supported")
        }
        guard let type = SocketType(kernelValue: diag.type) else {
            throw CryoError("\(p.object): a unix socket (\(p.link)) of type \(diag.type) is not supported")
        }
        let what = "\(p.object): a unix \(type.rawValue) socket (\(p.link))"
        let state: State
        switch diag.state {
        // A datagram socket that another connects to turns "established" too: only a peer makes it connected.
        case 1 where type == .dgram, 7 where type == .dgram: state = diag.peer != nil ? .connected : .unconnected
        case 1: state = .connected
        case 7: state = .unconnected
        case 10: state = .listening
        default: throw CryoError("\(what) in state \(diag.state) (connecting?) is not supported")
        }
        let name = Self.trimmed(Data(diag.name))
        var file: SocketFile? = nil
        var directory: String? = nil
        if let name, name.first != 0 {
            if name.first == UInt8(ascii: "/") {
                file = socketFile(String(decoding: name, as: UTF8.self), diag: diag)
            } else {
                // Bound relative to the process's working directory then: looked for from its cwd now.
                let cwd = try Files.readLink("/proc/\(p.pid)/cwd")
                file = socketFile(cwd + "/" + String(decoding: name, as: UTF8.self), diag: diag)
                if file?.existed == true { directory = cwd }
            }
        }

        var s = UnixSocketState(
            inode: UInt64(diag.inode), type: type, state: state, name: name, file: file, peer: nil, peerClosed: false,
            peerName: nil, backlog: nil, queued: [], shutdown: UInt8(diag.shutdown & 3),
            passCredentials: try SocketDescription.option(fd, SO_PASSCRED, p.object) != 0,
            sendBuffer: try SocketDescription.option(fd, SO_SNDBUF, p.object), receiveBuffer: try SocketDescription.option(fd, SO_RCVBUF, p.object),
            peekOffset: try SocketDescription.option(fd, SO_PEEK_OFF, p.object))
        s.directory = directory
        s.fileInode = diag.file.map { UInt64($0.inode) }
        s.passSecurity = try optionalFlag(fd, SO_PASSSEC_OPTION, "SO_PASSSEC", what)
        s.passPidfd = try optionalFlag(fd, SO_PASSPIDFD_OPTION, "SO_PASSPIDFD", what)
        switch state {
        case .listening:
            let pending = max(diag.pending, diag.queues?.receive ?? 0)
            if pending > 0 {
                // Their bytes can be read only once accepted, which cannot be undone: that waits
                // until every process is dumped (finishDump), and only if the tree is then killed.
                if table.options.leaveRunning {
                    throw CryoError("\(what) is listening with \(pending) connection\(pending == 1 ? "" : "s") not yet accepted; "
                        + "reading them means accepting them, so not with --leave-running")
                }
                try table.keepForFinish(fd, id: id, object: what)
                s.pending = []
            }
            s.backlog = Int32(clamping: diag.queues?.send ?? 0)
            return s
        case .connected:
            if let peer = diag.peer, peer != 0 {
                s.peer = UInt64(peer)
            } else if type == .dgram || diag.shutdown & 3 == 3 {
                // The peer is gone (a stream peer's close shuts this end down both ways).
                s.peerClosed = true
            }
            // Otherwise the peer is a connection a listener has not accepted yet: no inode, but a name.
            s.peerName = (try? Sockets.name(fd, peer: true, object: what).unixName).flatMap { $0.map { Data($0) } }
        case .unconnected:
            break
        }
        // Only a datagram socket receives without a connection; the others refuse to be read unconnected.
        if type == .dgram || state == .connected {
            try s.readQueue(fd, passCredentials: s.passCredentials, queueBytes: Int(diag.queues?.receive ?? 0),
                            into: table, id: id, pendingIndex: pendingIndex, object: what)
        }
        let total = s.queued.reduce(0) { $0 + $1.count }
        if type == .stream, let queued = diag.queues?.receive, total < Int(queued) {
            throw CryoError("\(what): read \(total) of the \(queued) bytes in its receive queue")
        }
        return s
    }

    /// A boolean socket option the running kernel may not know (ENOPROTOOPT): nil then.
    private static func optionalFlag(_ fd: FileDescriptor, _ option: Int32, _ name: String, _ what: String) throws -> Bool? {
        do {
            return try Sockets.option(fd, SOL_SOCKET, option, name: name, object: what) != 0
        } catch let error as SyscallError where error.errno == .protocolNotAvailable {
            return nil
        }
    }

    /// Fills `queued`, `rights` and `senders` from the receive queue. Descriptors in
    /// flight are handed to the file table, which dumps them once every process's own
    /// are known and then sets their ids here.
    mutating func readQueue(_ fd: FileDescriptor, passCredentials: Bool, queueBytes: Int, into table: FileTableBuilder,
                            id: Int, pendingIndex: Int?, object: String) throws {
        let messages = try Self.peekQueue(fd, type: type, peekOffset: peekOffset, passCredentials: passCredentials,
                                          queueBytes: queueBytes, object: object)
        queued = messages.map(\.data)
        if messages.contains(where: { !$0.descriptors.isEmpty }) {
            rights = messages.map { [Int](repeating: -1, count: $0.descriptors.count) }
        }
        if messages.contains(where: { $0.credentials != nil }) {
            senders = messages.map { $0.credentials.map { Sender(pid: $0.pid, uid: $0.uid, gid: $0.gid) } }
        }
        // Only an unconnected datagram socket hears from more than its peer.
        if type == .dgram && state == .unconnected && messages.contains(where: { $0.source != nil }) {
            sources = messages.map { $0.source.map { Data($0) } }
        }
        for (m, message) in messages.enumerated() {
            for (k, passed) in message.descriptors.enumerated() {
                table.addInFlight(passed, object: "\(object), message \(m + 1) of its queue, descriptor \(k + 1)") { table, fileID in
                    guard var s = table.table.files[id].state as? UnixSocketState else { return }
                    if let j = pendingIndex { s.pending?[j].rights?[m][k] = fileID } else { s.rights?[m][k] = fileID }
                    table.table.files[id].state = s
                }
            }
        }
    }

    struct PeekedMessage {
        var data: Data
        var descriptors: [FileDescriptor]
        var credentials: UnixCredentials?
        var source: [UInt8]?
    }

    /// Reads the receive queue through SO_PEEK_OFF, which is per socket and so
    /// shared with the process: it is put back as it was afterwards, as is
    /// SO_PASSCRED, turned on meanwhile so each message shows its sender (and a
    /// stream is read in runs of one sender: the kernel does not join writers then).
    /// A stream's bytes come in runs that end where descriptors came along. Where in its
    /// run they began cannot be seen: a stream peek runs on into the next bytes of the same
    /// writer even when no room is left, and takes their descriptors, so one-byte probes
    /// cannot find the boundary. The run goes back as one message, descriptors with its first byte.
    static func peekQueue(_ fd: FileDescriptor, type: SocketType, peekOffset: Int32, passCredentials: Bool,
                          queueBytes: Int, object: String) throws -> [PeekedMessage] {
        defer { try? Sockets.setOption(fd, SOL_SOCKET, SO_PEEK_OFF, peekOffset, name: "SO_PEEK_OFF", object: object) }
        if !passCredentials { try Sockets.setOption(fd, SOL_SOCKET, SO_PASSCRED, Int32(1), name: "SO_PASSCRED", object: object) }
        defer { if !passCredentials { try? Sockets.setOption(fd, SOL_SOCKET, SO_PASSCRED, Int32(0), name: "SO_PASSCRED", object: object) } }
        // A stream peek that stops inside a run would bring its descriptors twice: room for the whole queue.
        var buffer = [UInt8](repeating: 0, count: type == .stream ? max(1 << 16, queueBytes + 1) : 1 << 16)
        var offset = 0
        var messages: [PeekedMessage] = []
        var done = false
        defer { if !done { for m in messages { for d in m.descriptors { try? d.close() } } } }
        while true {
            guard offset <= Int(Int32.max) else { throw CryoError("\(object): receive queue too large to read") }
            try Sockets.setOption(fd, SOL_SOCKET, SO_PEEK_OFF, Int32(offset), name: "SO_PEEK_OFF", object: object)
            let peeked = try buffer.withUnsafeMutableBytes { try Sockets.peekUnix(fd, into: $0, truncate: type != .stream, object: object) }
            guard let peeked else { break }
            let count = peeked.length
            // pid 0: sent while neither end passed credentials, so the message carries none.
            let credentials = peeked.credentials.flatMap { $0.pid == 0 ? nil : $0 }
            if type == .stream {
                if count == 0 { break } // end of stream: nothing more, and the peer shut down
            } else if count > buffer.count {
                // MSG_TRUNC told the message's full length: peek it again, whole.
                for d in peeked.descriptors { try? d.close() }
                buffer = [UInt8](repeating: 0, count: count)
                continue
            }
            messages.append(PeekedMessage(data: Data(buffer[0..<count]), descriptors: peeked.descriptors, credentials: credentials,
                                          source: peeked.source))
            guard messages.count <= 1 << 20 else { throw CryoError("\(object): receive queue does not end") }
            offset += count
        }
        done = true
        if type == .stream {
            // Runs of one sender without descriptors are one run, as the kernel would read them.
            var joined: [PeekedMessage] = []
            for m in messages {
                if let last = joined.last, last.descriptors.isEmpty, m.descriptors.isEmpty, last.credentials == m.credentials {
                    joined[joined.count - 1].data.append(m.data)
                } else {
                    joined.append(m)
                }
            }
            return joined
        }
        return messages
    }

    /// The path's file at dump: whether it is still this socket's own.
    static func socketFile(_ path: String, diag: UnixSocketDiag) -> SocketFile {
        func own(_ st: Glibc.stat?) -> Bool {
            guard let st, let file = diag.file else { return false }
            return st.st_mode & S_IFMT == S_IFSOCK && UInt64(st.st_ino) == UInt64(file.inode) && UInt64(st.st_dev) == file.device
        }
        let st = try? Files.stat(path, follow: false)
        if own(st), let st { return SocketFile(existed: true, mode: st.st_mode & 0o7777, uid: st.st_uid, gid: st.st_gid) }
        // Not at its name: renamed within the directory, or removed (then no path reaches it).
        if diag.file != nil, let slash = path.lastIndex(of: "/") {
            let directory = path[..<slash].isEmpty ? "/" : String(path[..<slash])
            for entry in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
                let candidate = (directory == "/" ? "" : directory) + "/" + entry
                let found = try? Files.stat(candidate, follow: false)
                if candidate != path, own(found), let found {
                    return SocketFile(existed: false, mode: found.st_mode & 0o7777, uid: found.st_uid, gid: found.st_gid, movedTo: candidate)
                }
            }
        }
        return SocketFile(existed: false, mode: 0, uid: 0, gid: 0)
    }

    /// A path name ends at its first NUL; an abstract name keeps every byte.
    static func trimmed(_ name: Data) -> Data? {
        if name.isEmpty { return nil }
        if name.first == 0 { return name }
        let path = name.prefix(while: { $0 != 0 })
        return path.isEmpty ? nil : Data(path)
    }

    /// A path as it is, an abstract name as @name with unprintable bytes escaped.
    static func display(_ name: Data?) -> String {
        guard let name, !name.isEmpty else { return "unnamed" }
        if name.first != 0 { return String(decoding: name, as: UTF8.self) }
        return "@" + name.dropFirst().map { $0 >= 0x20 && $0 < 0x7f ? String(UnicodeScalar($0)) : String(printf: "\\x%02x", $0) }.joined()
    }

    public var summary: String {
        var text = "unix \(type.rawValue) socket:[\(inode)] \(state.rawValue)"
        if name != nil { text += " \(Self.display(name))" }
        if let movedTo = file?.movedTo { text += " (its file renamed to \(movedTo))" }
        if state == .listening, let backlog { text += " backlog \(backlog)" }
        if let pending, !pending.isEmpty {
            let bytes = pending.reduce(0) { $0 + $1.queued.reduce(0) { $0 + $1.count } }
            text += " (\(pending.count) connection\(pending.count == 1 ? "" : "s") not yet accepted, \(bytes) bytes sent on them)"
        }
        if peerClosed { text += " peer closed" } else if state == .connected {
            text += " peer " + (peer.map { "socket:[\($0)]" } ?? "not yet accepted")
            if peerName != nil { text += " (\(Self.display(peerName)))" }
        }
        if !queued.isEmpty {
            let bytes = queued.reduce(0) { $0 + $1.count }
            text += type == .stream ? " (\(bytes) bytes queued" : " (\(queued.count) messages, \(bytes) bytes queued"
            let passed = rights?.reduce(0) { $0 + $1.count } ?? 0
            if passed > 0 { text += ", \(passed) descriptor\(passed == 1 ? "" : "s") in flight" }
            let pids = Set((senders ?? []).compactMap { $0?.pid }).sorted()
            if !pids.isEmpty { text += ", from pid\(pids.count == 1 ? "" : "s") \(pids.map(String.init).joined(separator: ","))" }
            text += ")"
        }
        if shutdown != 0 { text += " shut down\(shutdown & 1 != 0 ? " rd" : "")\(shutdown & 2 != 0 ? " wr" : "")" }
        return text
    }

    /// Checks across the whole table, once every process is dumped: what
    /// restore could not rebuild is refused here, naming the descriptor.
    static func checkConnections(_ files: [FileTable.OpenFile], objects: [Int: String], options: KindOptions) throws {
        let sockets = entries(files)
        let byInode = Dictionary(sockets.map { ($0.state.inode, $0.state) }, uniquingKeysWith: { a, _ in a })
        let pendingClients = Set(sockets.flatMap { ($0.state.pending ?? []).compactMap(\.peer) })
        for (f, s) in sockets where !pendingClients.contains(s.inode) {
            let what = "\(objects[f.id] ?? "file #\(f.id)"): a unix \(s.type.rawValue) socket (socket:[\(s.inode)])"
            let count = s.type == .stream ? s.queued.reduce(0) { $0 + $1.count } : s.queued.count
            let messages = "\(count) unread \(s.type == .stream ? "byte" : "message")\(count == 1 ? "" : "s")"
            switch s.state {
            case .listening:
                continue
            case .unconnected:
                if !s.queued.isEmpty && s.name == nil {
                    throw CryoError("\(what) holds \(messages) but is neither connected nor named, so they cannot be sent to it again; not supported")
                }
            case .connected:
                if s.peerClosed { continue }
                if let peer = s.peer, let other = byInode[peer] {
                    if other.peer == s.inode { continue } // both ends in the image
                    guard s.type == .dgram, other.name != nil else {
                        throw CryoError("\(what) is connected to socket:[\(peer)], which has no name to connect to again; not supported")
                    }
                    if !s.queued.isEmpty {
                        throw CryoError("\(what) holds \(messages) from socket:[\(peer)], which is not connected back to it; not supported")
                    }
                    continue
                }
                let peer = s.peer.map { "socket:[\($0)]" } ?? "a connection not yet accepted"
                guard s.peerName != nil else {
                    throw CryoError("\(what) is connected to \(peer) outside the dumped tree, which has no name to connect to again; not supported")
                }
                if !s.queued.isEmpty {
                    throw CryoError("\(what) holds \(messages) from \(peer) (\(display(s.peerName))) outside the dumped tree; they cannot be put back")
                }
                if s.peerName?.first != 0 && s.peerName?.first != UInt8(ascii: "/") {
                    throw CryoError("\(what) is connected to \(peer) at the relative name \(display(s.peerName)) outside the dumped tree; not supported")
                }
                // As CRIU: a datagram socket is connected to a peer outside again only when asked.
                if s.type == .dgram && !options.externalUnixSockets {
                    throw CryoError("\(what) is connected to \(peer) (\(display(s.peerName))) outside the dumped tree; "
                        + "dump with --ext-unix-sk to connect it to that name again at restore")
                }
            }
        }
    }

    static func finishDump(_ table: FileTableBuilder) throws {
        try acceptPending(table)
        try checkConnections(table.table.files, objects: table.objects, options: table.options)
    }

    /// Takes every listener's connections not yet accepted (the tree is killed after this
    /// dump): each is accepted in cryo and dumped as a socket of its own, so its queue,
    /// with descriptors in flight and credentials, is what the client sent.
    static func acceptPending(_ table: FileTableBuilder) throws {
        let me = Kernel.currentPid()
        for (f, s) in entries(table.table.files) where s.pending != nil {
            guard let listener = table.kept(f.id) else { continue }
            let what = "\(table.objects[f.id] ?? "file #\(f.id)"): a unix \(s.type.rawValue) socket (socket:[\(s.inode)])"
            var pending: [UnixSocketState] = []
            // As many as wait now: the listener may be a blocking one.
            guard let diag = try SockDiag.unixSocket(inode: UInt32(truncatingIfNeeded: s.inode), object: what) else {
                throw CryoError("\(what): gone from sock_diag")
            }
            for _ in 0..<max(diag.pending, diag.queues?.receive ?? 0) {
                let accepted = try Sockets.accept(listener, object: what)
                defer { try? accepted.close() }
                let object = "\(what), connection \(pending.count + 1) not yet accepted"
                let link = try Files.readLink("/proc/self/fd/\(accepted.rawValue)")
                let info = try parseFDInfo(try Files.readString("/proc/self/fdinfo/\(accepted.rawValue)"))
                let probe = DescriptorProbe(pid: me, fd: accepted.rawValue, link: link, flags: info.flags & ~UInt32(O_CLOEXEC),
                                            position: 0, info: info, stat: try Files.stat(accepted, object: object),
                                            handle: accepted, inFlight: object)
                guard var connection = try dump(probe, into: table, id: f.id, pendingIndex: pending.count) else {
                    throw CryoError("\(object): not a socket")
                }
                connection.name = nil
                connection.file = nil
                pending.append(connection)
            }
            var state = s
            state.pending = pending
            table.table.files[f.id].state = state
        }
        // Descriptors in flight to those connections: their ids go into `pending` now.
        try table.dumpInFlight()
    }

    static func validate(_ files: [FileTable.OpenFile]) -> String? {
        var inodes = Set<UInt64>()
        for (f, s) in entries(files) {
            if !inodes.insert(s.inode).inserted { return "file #\(f.id): socket:[\(s.inode)] appears twice" }
            for id in ((s.rights ?? []) + (s.pending ?? []).flatMap { $0.rights ?? [] }).joined() where !files.indices.contains(id) {
                return "file #\(f.id): a descriptor in flight names file #\(id)"
            }
            if let pending = s.pending {
                if s.state != .listening || s.name == nil { return "file #\(f.id): connections not yet accepted on a socket not listening on a name" }
                if let problem = pending.lazy.compactMap({ $0.state != .connected ? "a connection not yet accepted that is not connected" : $0.validate() }).first {
                    return "file #\(f.id): \(problem)"
                }
            }
        }
        return nil
    }

    func summary(_ file: FileTable.OpenFile) -> String { summary }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        guard let socket = try context.rebuilder(UnixSocketRebuilder.self).take(file.id) else {
            throw CryoError("\(object): socket was not rebuilt")
        }
        return socket
    }

    func validate() -> String? {
        if let name, name.isEmpty || name.count > 108 /* sun_path */ { return "a unix socket name of \(name.count) bytes" }
        if state == .listening && (backlog == nil || type == .dgram) { return "a listening unix \(type.rawValue) socket without backlog" }
        if state != .connected && (peer != nil || peerClosed) { return "an unconnected unix socket with a peer" }
        if let rights, rights.count != queued.count { return "\(rights.count) lists of descriptors in flight for \(queued.count) queued messages" }
        if let senders, senders.count != queued.count { return "\(senders.count) senders for \(queued.count) queued messages" }
        if let sources, sources.count != queued.count || sources.contains(where: { ($0?.count ?? 1) == 0 || ($0?.count ?? 0) > 108 }) {
            return "\(sources.count) sender names for \(queued.count) queued messages"
        }
        if shutdown > 3 { return "unix socket shutdown bits \(shutdown)" }
        return nil
    }
}

// MARK: - Restore

/// Makes every unix socket of the image at once (they refer to each other
/// by name and as peers), then hands each out as its open file description.
final class UnixSocketRebuilder: KindRebuilder {
    /// Not yet handed out.
    private var made: [Int: FileDescriptor] = [:]
    private var builder: Builder

    init(_ context: OpenContext) throws {
        builder = Builder(files: context.files)
        do {
            try builder.build()
        } catch {
            builder.closeAll()
            throw error
        }
        made = builder.made
    }

    func take(_ id: Int) -> FileDescriptor? {
        made.removeValue(forKey: id)
    }

    /// Queues go back once every description (those in flight too) is open and
    /// the senders' pids exist; then options and shutdown.
    func finish(_ context: OpenContext, pids: RestoredPids) throws {
        try builder.finish(opened: context.opened, pids: pids)
    }

    func closeAll() {
        for fd in made.values { try? fd.close() }
        made = [:]
        builder.closeHelpers()
    }

    private struct Builder {
        let sockets: [(id: Int, state: UnixSocketState, flags: UInt32)]
        let byInode: [UInt64: Int]
        let states: [Int: UnixSocketState]
        var made: [Int: FileDescriptor] = [:]
        /// Every socket made, by file id, also once handed out (they stay open until `finish`).
        var all: [Int: FileDescriptor] = [:]
        /// Inodes of the clients of connections not yet accepted: connected through the listener's queue.
        let pendingClients: Set<UInt64>
        /// By listener, the socket each connection not yet accepted writes its bytes from.
        var pendingWriters: [Int: [FileDescriptor]] = [:]
        var temporary: [FileDescriptor] = []
        /// Stand-ins for closed peers, closed once the survivor's queue is refilled.
        var closedPeers: [Int: FileDescriptor] = [:]
        /// By file id, the private root of a socket whose file was gone or replaced at dump.
        var roots: [Int: FileDescriptor] = [:]

        init(files: [FileTable.OpenFile]) {
            sockets = UnixSocketState.entries(files).map { ($0.file.id, $0.state, $0.file.flags) }
            byInode = Dictionary(sockets.map { ($0.state.inode, $0.id) }, uniquingKeysWith: { a, _ in a })
            states = Dictionary(uniqueKeysWithValues: sockets.map { ($0.id, $0.state) })
            pendingClients = Set(sockets.flatMap { ($0.state.pending ?? []).compactMap(\.peer) })
        }

        func object(_ id: Int) -> String {
            let s = states[id]!
            return "file #\(id) (unix \(s.type.rawValue) socket \(UnixSocketState.display(s.name)))"
        }

        mutating func build() throws {
            // 1. Sockets that stand alone: bound to their names; listeners listen.
            for (id, s, _) in sockets where s.state != .connected {
                let fd = try socket(s.type, id)
                if s.name != nil { try bind(fd, s, id) }
                if s.state == .listening { try Sockets.listen(fd, backlog: s.backlog ?? 128, object: object(id)) }
            }
            // 2. Pairs with both ends in the image, and sockets whose peer has closed.
            var done = Set<Int>()
            for (id, s, _) in sockets where s.state == .connected && !done.contains(id) {
                if s.peerClosed {
                    let (mine, other) = try Sockets.unixPair(type: s.type.kernelValue, object: object(id))
                    made[id] = mine
                    closedPeers[id] = other
                    if s.type == .dgram, s.name != nil { try bind(mine, s, id) }
                    done.insert(id)
                } else if s.peer == s.inode, s.name != nil {
                    // A datagram socket connected to its own name: no pair, the one socket bound, then connected to itself.
                    let fd = try socket(s.type, id)
                    try bind(fd, s, id)
                    try connect(fd, toSocket: id, id)
                    done.insert(id)
                } else if let peer = s.peer, let peerID = byInode[peer], states[peerID]!.peer == s.inode {
                    try connectPair(id, peerID)
                    done.formUnion([id, peerID])
                }
            }
            // 3. One-way connections: to a socket of the image by its name, or to a peer outside.
            for (id, s, _) in sockets where s.state == .connected && !done.contains(id) && !pendingClients.contains(s.inode) {
                let fd = try socket(s.type, id)
                if s.type == .dgram, s.name != nil { try bind(fd, s, id) }
                if let peerID = s.peer.flatMap({ byInode[$0] }), states[peerID]!.name != nil {
                    try connect(fd, toSocket: peerID, id)
                } else if let target = s.peerName {
                    try connect(fd, to: target, id)
                } else {
                    throw CryoError("\(object(id)): connected, but to nothing the image can name")
                }
            }
            // 3b. Connections not yet accepted, in their listener's order: from the client of
            // the image, or from a stand-in for one gone or outside (closed once its bytes are in).
            for (id, s, _) in sockets {
                for (j, c) in (s.pending ?? []).enumerated() {
                    let what = "\(object(id)) connection \(j + 1) not yet accepted"
                    let writer: FileDescriptor
                    if let client = c.peer, let clientID = byInode[client], states[clientID]!.state == .connected, made[clientID] == nil {
                        writer = try socket(states[clientID]!.type, clientID)
                        if states[clientID]!.name != nil { try bind(writer, states[clientID]!, clientID) }
                    } else {
                        writer = try Sockets.make(family: AF_UNIX, type: s.type.kernelValue, object: "\(what) (AF_UNIX)")
                        temporary.append(writer)
                    }
                    try connect(writer, toSocket: id, id)
                    pendingWriters[id, default: []].append(writer)
                }
            }
            all = made
        }

        /// 4. Queues, written from the peer end; 5. options, shutdown and status flags last:
        /// nothing before may be refused because of them. `opened`: every description by file id.
        mutating func finish(opened: [FileDescriptor], pids: RestoredPids) throws {
            var senders = SenderPids()
            defer { senders.release() }
            for (id, s, _) in sockets where !s.queued.isEmpty {
                try refill(id, s, opened: opened, senders: &senders, pids: pids)
            }
            for (id, s, _) in sockets {
                for (j, c) in (s.pending ?? []).enumerated() where !c.queued.isEmpty {
                    try send(c, from: pendingWriters[id]![j], object: "\(object(id)) connection \(j + 1) not yet accepted",
                             opened: opened, senders: &senders, pids: pids)
                }
            }
            // A connection whose client is not in the image reads its bytes, then the end of the stream.
            for fd in temporary { try? fd.close() }
            temporary = []
            for fd in closedPeers.values { try? fd.close() }
            closedPeers = [:]
            for (id, s, flags) in sockets {
                try setOptions(all[id]!, s, flags: flags, id)
            }
        }

        mutating func socket(_ type: UnixSocketState.SocketType, _ id: Int) throws -> FileDescriptor {
            let fd = try Sockets.make(family: AF_UNIX, type: type.kernelValue, object: "\(object(id)) (AF_UNIX)")
            made[id] = fd
            return fd
        }

        /// A stream or seqpacket pair whose one end was accepted from a listener of the
        /// image (it carries the listener's name) is connected through that listener
        /// again, so both ends see the same names; any other pair is a socketpair.
        mutating func connectPair(_ a: Int, _ b: Int) throws {
            let sa = states[a]!, sb = states[b]!
            if sa.type != .dgram {
                func listener(of s: UnixSocketState) -> Int? {
                    guard let name = s.name else { return nil }
                    // One name may have had several listeners (the file removed and bound again): the one of its file first.
                    let candidates = sockets.filter { $0.state.state == .listening && $0.state.type == s.type && $0.state.name == name }
                    return (candidates.first { s.fileInode != nil && $0.state.fileInode == s.fileInode } ?? candidates.first)?.id
                }
                for (server, client) in [(a, b), (b, a)] {
                    guard let listenerID = listener(of: states[server]!) else { continue }
                    let clientFD = try socket(states[client]!.type, client)
                    if states[client]!.name != nil { try bind(clientFD, states[client]!, client) }
                    try connect(clientFD, toSocket: listenerID, client)
                    made[server] = try Sockets.accept(made[listenerID]!, object: object(listenerID))
                    return
                }
            }
            let (fa, fb) = try Sockets.unixPair(type: sa.type.kernelValue, object: object(a))
            made[a] = fa
            made[b] = fb
            // Datagram sockets name themselves; a connected stream end's name is
            // only ever its listener's, which the socketpair cannot share.
            if sa.type == .dgram {
                if sa.name != nil { try bind(fa, sa, a) }
                if sb.name != nil { try bind(fb, sb, b) }
            }
        }

        func connect(_ fd: FileDescriptor, to name: Data, _ id: Int) throws {
            try Sockets.connect(fd, to: .unix([UInt8](name)), object: "\(object(id)) to \(UnixSocketState.display(name))")
        }

        /// Runs `body(address)` where the name of socket `target` of the image resolves (see `connect(_:toSocket:_:)`).
        func sendTo(_ target: Int, from fd: FileDescriptor, what: String, _ body: @escaping (SocketAddress, String) throws -> Void) throws {
            let t = states[target]!
            guard let name = t.name else { throw CryoError("\(what): \(object(target)) has no name") }
            let address = SocketAddress.unix([UInt8](name))
            let relative = name.first != 0 && name.first != UInt8(ascii: "/")
            if let root = roots[target] {
                try FilesystemThread.run {
                    try FilesystemThread.enter(root, object: what)
                    try body(address, what)
                }
            } else if relative, let directory = t.directory {
                try FilesystemThread.run {
                    try FilesystemThread.changeDirectory(directory, object: what)
                    try body(address, what)
                }
            } else {
                try body(address, what)
            }
        }

        /// Connects to the name of socket `target` of the image, where it was bound:
        /// under its private root, from its directory (a relative name), or plainly.
        func connect(_ fd: FileDescriptor, toSocket target: Int, _ id: Int) throws {
            let t = states[target]!
            guard let name = t.name else { throw CryoError("\(object(id)): connected to \(object(target)), which has no name") }
            let what = "\(object(id)) to \(UnixSocketState.display(name))"
            let relative = name.first != 0 && name.first != UInt8(ascii: "/")
            if let root = roots[target] {
                try FilesystemThread.run {
                    try FilesystemThread.enter(root, object: what)
                    try Sockets.connect(fd, to: .unix([UInt8](name)), object: what)
                }
            } else if relative, let directory = t.directory {
                try FilesystemThread.run {
                    try FilesystemThread.changeDirectory(directory, object: what)
                    try Sockets.connect(fd, to: .unix([UInt8](name)), object: what)
                }
            } else if let movedTo = t.file?.movedTo {
                // Its file is no longer at its name (bind renamed it there).
                try Sockets.connect(fd, to: .unix(Array(movedTo.utf8)), object: "\(what) (its file at \(movedTo))")
            } else {
                try connect(fd, to: name, id)
            }
        }

        /// Binds to the old name. A socket file left at the path is removed first
        /// only if no live socket uses it; anything else there is refused. A name
        /// whose file was gone or replaced at dump (removed, another file or socket
        /// there since) is bound under a private root of its own: the socket has
        /// its name and no path reaches it, as at dump.
        mutating func bind(_ fd: FileDescriptor, _ s: UnixSocketState, _ id: Int) throws {
            guard let name = s.name else { return }
            let display = UnixSocketState.display(name)
            let what = "\(object(id)) to \(display)"
            guard name.first != 0 else {
                try Sockets.bind(fd, to: .unix([UInt8](name)), object: what)
                return
            }
            let path = String(decoding: name, as: UTF8.self)
            let relative = !path.hasPrefix("/")
            if let file = s.file, let movedTo = file.movedTo, !relative {
                // Bound to its name, then renamed where it was at dump: its name stays the old one, as it was.
                try removeStale(movedTo, id)
                try removeStale(path, id)
                try Sockets.bind(fd, to: .unix([UInt8](name)), object: what)
                try FileObjects.rename(path, to: movedTo, object: object(id))
                try FileObjects.setModeAndOwner(movedTo, mode: file.mode, uid: file.uid, gid: file.gid, object: movedTo)
                return
            }
            guard let file = s.file, file.existed, !relative || s.directory != nil else {
                let root = try FilesystemThread.privateRoot(object: what)
                roots[id] = root
                let directory = relative ? "/" : String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
                try FilesystemThread.run {
                    try FilesystemThread.enter(root, object: what)
                    try FilesystemThread.makeDirectories(directory, object: what)
                    try Sockets.bind(fd, to: .unix([UInt8](name)), object: what)
                }
                return
            }
            let absolute = relative ? s.directory! + "/" + path : path
            try removeStale(absolute, id)
            if relative {
                let directory = s.directory!
                try FilesystemThread.run {
                    try FilesystemThread.changeDirectory(directory, object: what)
                    try Sockets.bind(fd, to: .unix([UInt8](name)), object: what)
                }
            } else {
                try Sockets.bind(fd, to: .unix([UInt8](name)), object: what)
            }
            try FileObjects.setModeAndOwner(absolute, mode: file.mode, uid: file.uid, gid: file.gid, object: absolute)
        }

        /// Removes a socket file no live socket uses from `path`; anything else there is refused.
        func removeStale(_ path: String, _ id: Int) throws {
            guard let st = try? Files.stat(path, follow: false) else { return }
            guard st.st_mode & S_IFMT == S_IFSOCK else {
                throw CryoError("\(object(id)): \(path) exists and is not a socket; not replacing it")
            }
            if try SockDiag.unixSocketFileInUse(inode: UInt32(truncatingIfNeeded: st.st_ino), device: UInt64(st.st_dev),
                                                object: "\(object(id)) \(path)") {
                throw CryoError("\(object(id)): \(path) is the address of a live socket; not replacing it")
            }
            try FileObjects.remove(path, object: "stale socket \(path)")
        }

        /// Puts the receive queue back, written from the end that sent it: the
        /// pair's other end, the stand-in of a closed peer, or for a named
        /// datagram socket a throwaway socket connected to its name.
        mutating func refill(_ id: Int, _ s: UnixSocketState, opened: [FileDescriptor], senders: inout SenderPids,
                            pids: RestoredPids) throws {
            let writer: FileDescriptor
            if let standIn = closedPeers[id] {
                writer = standIn
            } else if s.state == .connected, let peer = s.peer, let peerID = byInode[peer], let fd = all[peerID] {
                writer = fd
            } else if s.state == .unconnected, s.type == .dgram, s.name != nil {
                writer = try Sockets.make(family: AF_UNIX, type: s.type.kernelValue, object: "\(object(id)) (AF_UNIX)")
                temporary.append(writer)
                try connect(writer, toSocket: id, id)
                if s.sources != nil {
                    // A message from a named sender comes from a socket of that name again, so recvfrom tells it.
                    var named: [Data: FileDescriptor] = [:]
                    for source in Set((s.sources ?? []).compactMap { $0 }) {
                        named[source] = try namedWriter(source, for: id)
                    }
                    let writers = named
                    try send(s, from: writer, object: object(id), opened: opened, senders: &senders, pids: pids) { m in
                        s.sources?[m].flatMap { writers[$0] }.map { ($0, id) }
                    }
                    return
                }
            } else {
                throw CryoError("\(object(id)): no end to write its \(s.queued.count) queued messages from")
            }
            try send(s, from: writer, object: object(id), opened: opened, senders: &senders, pids: pids)
        }

        /// A datagram socket named `source` to send from: the one of the image, or a new one
        /// bound to it (an abstract name, if free; a path, under a private root). Nil: none.
        mutating func namedWriter(_ source: Data, for id: Int) throws -> FileDescriptor? {
            if let (other, _, _) = sockets.first(where: { $0.id != id && $0.state.type == .dgram && $0.state.name == source }) {
                return all[other]
            }
            let what = "\(object(id)): stand-in for sender \(UnixSocketState.display(source))"
            let fd = try Sockets.make(family: AF_UNIX, type: UnixSocketState.SocketType.dgram.kernelValue, object: what)
            temporary.append(fd)
            if source.first == 0 {
                do { try Sockets.bind(fd, to: .unix([UInt8](source)), object: what) } catch { return nil } // taken since
                return fd
            }
            let path = String(decoding: source, as: UTF8.self)
            let root = try FilesystemThread.privateRoot(object: what)
            roots[-1 - roots.count] = root
            let directory = path.hasPrefix("/") ? String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)]) : "/"
            try FilesystemThread.run {
                try FilesystemThread.enter(root, object: what)
                try FilesystemThread.makeDirectories(directory, object: what)
                try Sockets.bind(fd, to: .unix([UInt8](source)), object: what)
            }
            return fd
        }

        /// Writes the queue of `s` from `writer`, message by message, with their descriptors and credentials.
        /// `named`: for message m, another writer that sends to socket `to` of the image by its name.
        func send(_ s: UnixSocketState, from writer: FileDescriptor, object: String, opened: [FileDescriptor],
                  senders: inout SenderPids, pids: RestoredPids,
                  named: ((Int) throws -> (writer: FileDescriptor, to: Int)?)? = nil) throws {
            // Room for all of it; the writer's own size is set with the other options afterwards.
            try Sockets.setOption(writer, SOL_SOCKET, SO_SNDBUFFORCE, Int32.max / 2, name: "SO_SNDBUFFORCE", object: object)
            for (m, message) in s.queued.enumerated() {
                var sent = 0
                // Descriptors and credentials go with the message's first bytes.
                var rights = try (s.rights?[m] ?? []).map { fileID -> Int32 in
                    guard opened.indices.contains(fileID) else { throw CryoError("\(object): descriptor in flight names file #\(fileID)") }
                    return opened[fileID].rawValue
                }
                let credentials = try (s.senders?[m]).flatMap { $0 }.map { try senders.credentials($0, pids: pids, object: object) }
                if let (from, target) = try named?(m) {
                    let bytes = [UInt8](message), passing = rights
                    try sendTo(target, from: from, what: "\(object): refilling its receive queue") { address, what in
                        let n = try bytes.withUnsafeBytes {
                            try Sockets.sendUnix(from, $0, rights: passing, credentials: credentials, to: address, object: what)
                        }
                        if n != bytes.count { throw CryoError("\(what): a \(bytes.count)-byte message went out as \(n) bytes") }
                    }
                    continue
                }
                repeat {
                    sent += try message.withUnsafeBytes {
                        try Sockets.sendUnix(writer, UnsafeRawBufferPointer(rebasing: $0[sent...]), rights: rights,
                                             credentials: credentials, object: "\(object): refilling its receive queue")
                    }
                    rights = []
                    if s.type != .stream && sent != message.count {
                        throw CryoError("\(object): a \(message.count)-byte message went out as \(sent) bytes")
                    }
                } while sent < message.count
            }
        }

        /// The pid a queued message's credentials name, as cryo sees it. A sender no longer
        /// alive is stood in for by a short-lived process with its pid: the kernel takes
        /// only existing pids, and the message keeps the number once it has exited.
        struct SenderPids {
            private var standIns: [Int32: (pid: pid_t, park: FileDescriptor)] = [:]
            /// With --pidns, by the sender's pid in the image: the stand-in's pid as cryo sees it.
            private var namespaced: [Int32: pid_t] = [:]

            mutating func credentials(_ sender: UnixSocketState.Sender, pids: RestoredPids,
                                      object: String) throws -> UnixCredentials {
                if pids.host(sender.pid) == nil, let namespace = pids.namespace {
                    // Not restored, and the image's pids live in a new namespace: the stand-in goes there.
                    if let pid = namespaced[sender.pid] { return UnixCredentials(pid: pid, uid: sender.uid, gid: sender.gid) }
                    let ns = try Files.open(namespace, .readOnly)
                    defer { try? ns.close() }
                    let park = try FileObjects.pipe(object: "\(object): stand-in for sender pid \(sender.pid)")
                    defer { try? park.read.close() }
                    do {
                        let child = try FilesystemThread.cloneParked(pid: sender.pid, park: park.read, inNamespace: ns,
                                                                     object: "\(object): stand-in for sender pid \(sender.pid)")
                        standIns[child] = (child, park.write)
                        namespaced[sender.pid] = child
                        return UnixCredentials(pid: child, uid: sender.uid, gid: sender.gid)
                    } catch {
                        try? park.write.close()
                        throw error
                    }
                }
                let pid = pids.host(sender.pid) ?? sender.pid
                if standIns[pid] == nil && !Processes.isAlive(pid) {
                    let park = try FileObjects.pipe(object: "\(object): stand-in for sender pid \(pid)")
                    do {
                        let child = try Processes.cloneParked(pid: pid, park: park.read)
                        standIns[pid] = (child, park.write)
                    } catch let error as SyscallError where error.errno == .fileExists {
                        try? park.write.close() // taken meanwhile: it exists now
                    }
                    try? park.read.close()
                }
                return UnixCredentials(pid: pid, uid: sender.uid, gid: sender.gid)
            }

            /// The stand-ins (which hold copies of cryo's descriptors) go once the messages are sent.
            mutating func release() {
                for (pid, park) in standIns.values {
                    try? park.close()
                    try? Processes.kill(pid, SIGKILL)
                    _ = try? Kernel.syscall(SYS_wait4, pid, Int(0), Int32(0), Int(0), name: "wait4", pid: pid, retryingInterrupts: true)
                }
                standIns = [:]
            }
        }

        func setOptions(_ fd: FileDescriptor, _ s: UnixSocketState, flags: UInt32, _ id: Int) throws {
            let what = object(id)
            func set(_ option: Int32, _ value: Int32, _ name: String) throws {
                try Sockets.setOption(fd, SOL_SOCKET, option, value, name: name, object: what)
            }
            if s.passCredentials { try set(SO_PASSCRED, 1, "SO_PASSCRED") }
            if s.passSecurity == true { try set(SO_PASSSEC_OPTION, 1, "SO_PASSSEC") }
            if s.passPidfd == true { try set(SO_PASSPIDFD_OPTION, 1, "SO_PASSPIDFD") }
            // The kernel doubles what it is given: give it half of what it reported.
            for (option, forced, wanted, name) in [(SO_SNDBUF, SO_SNDBUFFORCE, s.sendBuffer, "SO_SNDBUFFORCE"),
                                                   (SO_RCVBUF, SO_RCVBUFFORCE, s.receiveBuffer, "SO_RCVBUFFORCE")] {
                if try SocketDescription.option(fd, option, what) != wanted { try set(forced, wanted / 2, name) }
            }
            if s.peekOffset != -1 { try set(SO_PEEK_OFF, s.peekOffset, "SO_PEEK_OFF") }
            // A closed peer's stand-in shut this end down when it went.
            if s.shutdown != 0 && !s.peerClosed {
                try Sockets.shutdown(fd, how: Int32(s.shutdown) - 1, object: what)
            }
            try FileObjects.setStatusFlags(fd, Int32(bitPattern: flags) & O_NONBLOCK, object: what)
        }

        mutating func closeAll() {
            for fd in made.values { try? fd.close() }
            closeHelpers()
        }

        /// What cryo made only to rebuild the others.
        mutating func closeHelpers() {
            for fd in temporary { try? fd.close() }
            for fd in closedPeers.values { try? fd.close() }
            temporary = []
            closedPeers = [:]
            for fd in roots.values { try? fd.close() }
            roots = [:]
        }
    }
}

/// Not in every libc's headers (SO_PASSPIDFD is from Linux 6.5).
let SO_PASSSEC_OPTION: Int32 = 34
let SO_PASSPIDFD_OPTION: Int32 = 76
