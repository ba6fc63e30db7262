import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// An IPv4 or IPv6 address with its port, as text (inet_ntop) so images stay readable.
public struct InetAddress: Codable, Sendable, Equatable {
    public var address: String
    public var port: UInt16
    /// IPv6 scope (interface index) of a link-local address.
    public var scope: UInt32?

    init?(_ socketAddress: SocketAddress) {
        guard let (bytes, port, scope) = socketAddress.inet else { return nil }
        var text = [CChar](repeating: 0, count: 64)
        guard bytes.withUnsafeBytes({ inet_ntop(socketAddress.family, $0.baseAddress, &text, 64) }) != nil else { return nil }
        address = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        self.port = port
        self.scope = scope == 0 ? nil : scope
    }

    var isIPv6: Bool { address.contains(":") }
    var isWildcard: Bool { address == "0.0.0.0" || address == "::" }

    /// The socket address, or nil when the text is no address.
    func raw() -> SocketAddress? {
        var bytes = [UInt8](repeating: 0, count: isIPv6 ? 16 : 4)
        let ok = bytes.withUnsafeMutableBytes { inet_pton(isIPv6 ? AF_INET6 : AF_INET, address, $0.baseAddress) }
        return ok == 1 ? .inet(address: bytes, port: port, scope: scope ?? 0) : nil
    }

    public var description: String { isIPv6 ? "[\(address)]:\(port)" : "\(address):\(port)" }
}

/// An AF_INET or AF_INET6 socket: UDP (bound, connected, with its queued
/// datagrams and their sources) or TCP (unconnected, listening, or with
/// --tcp-established an established connection read through TCP_REPAIR).
/// Everything comes from the socket itself, through cryo's duplicate of the
/// descriptor: getsockname/getpeername, getsockopt, TCP_INFO, ioctls for
/// queue lengths, MSG_PEEK for queued bytes.
public struct InetSocketState: DescriptorKind {
    static let name = "inetSocket"
    /// `icmp`: an ICMP (ICMPv6) "ping" socket, SOCK_DGRAM with IPPROTO_ICMP (IPPROTO_ICMPV6).
    /// `raw`: SOCK_RAW of protocol `rawProtocol`.
    /// `udplite`: UDP-Lite (IPPROTO_UDPLITE), kept as UDP is, with its checksum coverage.
    public enum Proto: String, Codable, Sendable { case udp, tcp, icmp, raw, udplite }
    /// `connecting`: SYN_SENT, connected again at restore; `closed`: a connection
    /// dumped or restored with --tcp-close, which comes back shut down both ways;
    /// `ended`: (--tcp-established) a connection that had ended before the dump (both
    /// FINs, or a reset: kernel state CLOSE), with its addresses and the bytes not read yet.
    public enum State: String, Codable, Sendable { case unconnected, listening, connected, connecting, closed, ended }
    public struct Datagram: Codable, Sendable {
        public var source: InetAddress?
        public var data: Data
    }
    /// What TCP_REPAIR reads of an established connection.
    public struct TCPConnection: Codable, Sendable {
        /// Sequence number after the last byte of the send queue (write_seq), and the next expected (rcv_nxt).
        public var sendSeq: UInt32
        public var receiveSeq: UInt32
        /// Bytes sent but not acknowledged, then bytes not sent yet (the last `unsent` of them).
        public var sendQueue: Data
        public var unsent: Int
        /// Bytes received in order and not read yet.
        public var receiveQueue: Data
        public var mss: UInt32
        public var windowScaling: Bool
        public var sendWindowScale: UInt32
        public var receiveWindowScale: UInt32
        public var sack: Bool
        public var timestamps: Bool
        /// TCP_TIMESTAMP: the connection's timestamp clock at dump.
        public var timestamp: UInt32
        public var sndWl1: UInt32, sndWnd: UInt32, maxWindow: UInt32, rcvWnd: UInt32, rcvWup: UInt32
        /// Our FIN is in the sequence space (shut down for writing: FIN_WAIT1/2, LAST_ACK, CLOSING);
        /// the peer's FIN was received (CLOSE_WAIT, LAST_ACK, CLOSING). Each takes one sequence number.
        public var finSent: Bool?
        public var finReceived: Bool?
        /// The kernel's name of the state, for messages.
        public var stateName: String?
        /// An ended connection with an error not reported yet (POLLERR; which error, only reading it
        /// would tell, and that takes it away): the reset that ends it again leaves ECONNRESET.
        public var errorPending: Bool?
        var sentFIN: Bool { finSent ?? false }
        var receivedFIN: Bool { finReceived ?? false }
        var lastAck: Bool { sentFIN && receivedFIN && stateName == "LAST_ACK" }
    }

    public var inode: UInt64
    public var ipv6: Bool
    public var proto: Proto
    public var state: State
    /// getsockname; nil when unbound.
    public var local: InetAddress?
    public var peer: InetAddress?
    public var backlog: Int32?
    /// Socket options by name, as getsockopt reported them.
    public var options: [String: Int32]
    /// A UDP socket's receive queue, in order.
    public var datagrams: [Datagram]
    public var tcp: TCPConnection?
    /// The options that are more than one integer (device, linger, filter, multicast groups...); nil in older images.
    public var settings: InetSocketSettings? = nil
    /// A raw socket's IP protocol.
    public var rawProtocol: Int32? = nil

    var family: Int32 { ipv6 ? AF_INET6 : AF_INET }
    /// What socket(SOCK_RAW) takes: IPPROTO_RAW (255, send-only, IP_HDRINCL implied) and the kernel's
    /// numbers past it (up to IPPROTO_MPTCP, 262: its IPPROTO_MAX is 263, glibc's is 256) included.
    static let rawProtocols: ClosedRange<Int32> = 1...262
    /// UDP or UDP-Lite: datagrams with queues and sources, shutdown bits in sock_diag.
    var isUDP: Bool { proto == .udp || proto == .udplite }
    /// An IPv6 address that connect chose: IPV6_V6ONLY is off, which binding to one IPv6 address
    /// (not an IPv4-mapped one) would have turned on.
    var addressFromConnect: Bool { ipv6 && options["IPV6_V6ONLY"] == 0 && local.map(\.isSpecificIPv6) == true }
    var kernelType: Int32 {
        proto == .tcp ? Int32(SOCK_STREAM.rawValue) : proto == .raw ? Int32(SOCK_RAW.rawValue) : Int32(SOCK_DGRAM.rawValue)
    }
    var kernelProtocol: Int32 {
        switch proto {
        case .icmp: ipv6 ? Int32(IPPROTO_ICMPV6) : Int32(IPPROTO_ICMP)
        case .raw: rawProtocol ?? 0
        case .udplite: Int32(IPPROTO_UDPLITE)
        default: 0
        }
    }
}

private func getInt(_ fd: FileDescriptor, _ level: Int32, _ option: Int32, _ name: String, _ object: String) throws -> Int32 {
    try Sockets.option(fd, level, option, name: name, object: object)
}

private func setInt(_ fd: FileDescriptor, _ level: Int32, _ option: Int32, _ value: Int32, _ name: String, _ object: String) throws {
    try Sockets.setOption(fd, level, option, value, name: name, object: object)
}

private let tcpStateNames: [UInt8: String] = [1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
                                              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"]

// MARK: - Dump

extension InetSocketState {
    /// `established` is what --tcp-established allows; an established connection
    /// is refused without it.
    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> InetSocketState? {
        guard p.stat.st_mode & S_IFMT == S_IFSOCK else { return nil }
        let family = try SocketDescription.option(p.handle, SO_DOMAIN, p.object)
        guard family == AF_INET || family == AF_INET6 else { return nil }
        // One sock_diag table of UDP shutdown bits per family for the whole dump: asking for each socket
        // would read every bound socket each time (4000 bound sockets took 20 s).
        let shutdowns: (Bool, Int32) -> [UInt32: UInt8] = { ipv6, proto in
            let key = "udp-shutdown-\(ipv6 ? 6 : 4)-\(proto)"
            if let known = table.lookups[key] as? [UInt32: UInt8] { return known }
            let fetched = (try? SockDiag.inetShutdowns(family: ipv6 ? AF_INET6 : AF_INET, protocol: proto, object: p.object)) ?? [:]
            table.lookups[key] = fetched
            return fetched
        }
        // /proc/PID/net/tcp(6) once per network namespace for the whole dump, not once per listener (each
        // read prints every socket of the namespace). Not with --network-lock: each listener's rule goes on
        // before its handshakes are counted, and a table read before it could miss one that came in between.
        let procNet: (pid_t, String) -> [InetAddress] = { pid, name in
            let read = { synReceivedLocals(in: (try? Files.readString("/proc/\(pid)/net/\(name)")) ?? "") }
            guard table.options.networkLock == nil else { return read() }
            let key = "syn-recv-\((try? Files.readLink("/proc/\(pid)/ns/net")) ?? "pid \(pid)")-\(name)"
            if let known = table.lookups[key] as? [InetAddress] { return known }
            let found = read()
            table.lookups[key] = found
            return found
        }
        // The same for TCP MD5 keys, which only sock_diag shows.
        let md5: (Bool) throws -> [UInt32: [UInt8]] = { ipv6 in
            let key = "tcp-md5-\(ipv6 ? 6 : 4)"
            if let known = table.lookups[key] as? [UInt32: [UInt8]] { return known }
            let fetched = try SockDiag.tcpMD5Keys(family: ipv6 ? AF_INET6 : AF_INET, object: p.object)
            table.lookups[key] = fetched
            return fetched
        }
        let socket = try dump(p, family: family, options: table.options, shutdowns: shutdowns, md5: md5, procNet: procNet)
        if socket.tcp != nil {
            // Held until the tree is dead: with --leave-running just closed; otherwise TCP_REPAIR goes on
            // before the kill, so that the last close sends neither FIN nor RST to the peer.
            try table.hold(p.handle, object: p.object) { try? setInt($0, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR, 1, "TCP_REPAIR", p.object) }
        }
        return socket
    }

    static func dump(_ p: DescriptorProbe, family: Int32, options kindOptions: KindOptions,
                     shutdowns: (Bool, Int32) -> [UInt32: UInt8], md5: (Bool) throws -> [UInt32: [UInt8]] = { _ in [:] },
                     procNet: (pid_t, String) -> [InetAddress] = { pid, name in
                         synReceivedLocals(in: (try? Files.readString("/proc/\(pid)/net/\(name)")) ?? "")
                     }) throws -> InetSocketState {
        let established = kindOptions.tcpEstablished
        let fd = p.handle
        let familyName = family == AF_INET6 ? "AF_INET6" : "AF_INET"
        let type = try getInt(fd, CRYO_SOL_SOCKET, CRYO_SO_TYPE, "SO_TYPE", p.object)
        let protocolNumber = try getInt(fd, CRYO_SOL_SOCKET, CRYO_SO_PROTOCOL, "SO_PROTOCOL", p.object)
        let proto: Proto
        switch (type, protocolNumber) {
        case (1, CRYO_IPPROTO_TCP): proto = .tcp
        case (2, CRYO_IPPROTO_UDP): proto = .udp
        case (2, Int32(IPPROTO_UDPLITE)): proto = .udplite
        case (2, Int32(IPPROTO_ICMP)) where family == AF_INET, (2, Int32(IPPROTO_ICMPV6)) where family == AF_INET6: proto = .icmp
        case (3, rawProtocols): proto = .raw
        default:
            throw CryoError("\(p.object): \(SocketDescription.describe(fd, family: family, link: p.link, pid: p.pid)) is not supported yet")
        }
        let what = "\(p.object): an \(familyName) \([.tcp: "TCP", .udp: "UDP", .udplite: "UDP-Lite", .icmp: "ICMP ping", .raw: "raw"][proto]!) socket (\(p.link)\(proto == .raw ? ", protocol \(protocolNumber)" : ""))"
        var local = InetAddress(try Sockets.name(fd, peer: false, object: what))
        if local?.port == 0 { local = nil }
        let peer = (try? Sockets.name(fd, peer: true, object: what)).flatMap { InetAddress($0) }
        if proto == .udp || proto == .udplite {
            // Data held back by UDP_CORK or MSG_MORE is no datagram yet: nothing can read it out (there
            // is no UDP repair mode; CRIU refuses a corked datagram socket too).
            // Datagrams already sent also count until the device (or a neighbour being
            // resolved) lets them go: without UDP_CORK, give those a moment to leave.
            var pending = try Sockets.queueLength(fd, request: CRYO_SIOCOUTQ, name: "SIOCOUTQ", object: what)
            let corked = try pending > 0 && getInt(fd, CRYO_IPPROTO_UDP, CRYO_UDP_CORK, "UDP_CORK", what) != 0
            var waited = 0
            while pending > 0 && !corked && waited < 20 {
                usleep(10_000)
                waited += 1
                pending = try Sockets.queueLength(fd, request: CRYO_SIOCOUTQ, name: "SIOCOUTQ", object: what)
            }
            if pending > 0 {
                throw CryoError("\(what) holds corked data not sent yet (\(corked ? "UDP_CORK" : "MSG_MORE, or datagrams waiting for a neighbour")"
                                + "; \(pending) bytes of send buffer in use), which no kernel call reads back; not supported")
            }
        }
        if proto == .icmp || proto == .raw {
            // Replies would have to come from the peer again: nothing can put them back.
            // (Ping sockets answer no SIOCINQ: a peek tells.)
            var byte: UInt8 = 0
            if let reply = try withUnsafeMutableBytes(of: &byte, { try Sockets.peek(fd, into: $0, truncate: true, object: what) }) {
                throw CryoError("\(what) holds \(proto == .raw ? "a packet" : "an ICMP reply") not read yet (\(reply.length) bytes); not supported")
            }
        }
        var options: [String: Int32] = [:]
        for o in InetIntegerOption.table(ipv6: family == AF_INET6, proto: proto, rawProtocol: protocolNumber) {
            do {
                options[o.name] = try getInt(fd, o.level, o.option, o.name, what)
            } catch let error as SyscallError where o.optional && [.protocolNotAvailable, .notSupported].contains(error.errno) {}
        }
        let inode = UInt64(p.stat.st_ino)
        let settings = try InetSocketSettings.dump(fd, ipv6: family == AF_INET6, proto: proto, rawProtocol: protocolNumber, pid: p.pid,
                                                    inode: inode, shutdowns: shutdowns, md5: md5, what: what)
        var s = InetSocketState(inode: inode, ipv6: family == AF_INET6, proto: proto, state: peer == nil ? .unconnected : .connected,
                                local: local, peer: peer, backlog: nil, options: options, datagrams: [], tcp: nil,
                                settings: settings.isEmpty ? nil : settings, rawProtocol: proto == .raw ? protocolNumber : nil)
        // A raw socket's "port" is its protocol, bound or not: only its address tells.
        if proto == .raw, let address = s.local, address.isWildcard { s.local = nil }
        if proto == .udp || proto == .udplite {
            s.datagrams = try peekDatagrams(fd, peekOffset: options["SO_PEEK_OFF"] ?? -1, object: what)
            return s
        }
        if proto == .icmp || proto == .raw {
            // Connected to port 0, as ping and raw sockets are, getpeername says ENOTCONN: /proc/PID/net/icmp (raw) knows.
            if s.peer == nil, let peer = connectingPeer(pid: p.pid, inode: inode, ipv6: family == AF_INET6, table: proto == .raw ? "raw" : "icmp") {
                s.peer = peer
                s.state = .connected
            }
            return s
        }
        let info = try Sockets.option(fd, CRYO_IPPROTO_TCP, TCP_INFO, as: tcp_info.self, name: "TCP_INFO", object: what, initial: tcp_info())
        let stateName = tcpStateNames[info.tcpi_state] ?? "\(info.tcpi_state)"
        if info.tcpi_state != 7 && info.tcpi_state != 10 {
            for name in InetIntegerOption.unconnectedOnly { s.options[name] = nil }
        }
        let connection = "\(local?.description ?? "?") -> \(peer?.description ?? "?")"
        switch info.tcpi_state {
        case 10:
            // First, so that no connection completes unseen after the queues are counted; a SYN that
            // comes before restore is then dropped and sent again, instead of refused with an RST.
            if let local { try kindOptions.networkLock?.add(listener: local, pid: p.pid, object: what) }
            if info.tcpi_unacked > 0 && !kindOptions.skipInFlight {
                throw CryoError("\(what) is listening on \(local?.description ?? "?") with \(info.tcpi_unacked) connection\(info.tcpi_unacked == 1 ? "" : "s") "
                    + "not yet accepted; dump with --skip-in-flight to drop them")
            }
            // Handshakes not finished (SYN_RECV) are in no queue that can be read back: the kernel keeps
            // their sequence numbers to itself.
            let halfOpen = local.map {
                synReceived(pid: p.pid, listener: $0, v4Too: family == AF_INET6 && options["IPV6_V6ONLY"] == 0, procNet: procNet)
            } ?? 0
            if halfOpen > 0 && !kindOptions.skipInFlight {
                throw CryoError("\(what) is listening on \(local?.description ?? "?") with \(halfOpen) connection\(halfOpen == 1 ? "" : "s") "
                    + "in SYN_RECV (" + ((options["TCP_DEFER_ACCEPT"] ?? 0) > 0
                        ? "TCP_DEFER_ACCEPT keeps a client there until it sends: connected, nothing sent yet"
                        : "handshake not finished") + "); dump with --skip-in-flight to drop them")
            }
            s.state = .listening
            s.backlog = Int32(clamping: info.tcpi_sacked)
        case 7:
            s.state = .unconnected
            s.peer = nil
            // TCP_MAXSEG reads the program's own MSS where it set one, else the MSS of the connection the socket
            // had (which setsockopt may refuse, 65483 on loopback): only the first is the program's to keep.
            if let mss = s.options["TCP_MAXSEG"], UInt32(bitPattern: mss) == info.tcpi_snd_mss { s.options["TCP_MAXSEG"] = nil }
            // A connection that ended still names its peer (SO_PEERNAME, unlike getpeername) and may
            // hold bytes not read yet: with --tcp-established it comes back as a connection, then reset.
            if established, local != nil, let former = formerPeer(fd, ipv6: family == AF_INET6, object: what) {
                s.state = .ended
                s.peer = former
                for name in InetIntegerOption.unconnectedOnly { s.options[name] = nil } // it is connected again first
                s.tcp = try dumpConnection(fd, info: info, object: "\(what) \(local!.description) -> \(former.description) (ended)")
                s.tcp?.errorPending = try Sockets.pollEvents(fd, object: what) & Int16(POLLERR) != 0
            }
        case 2:
            // getpeername fails before the handshake: the destination comes from the task's /proc/net table.
            guard let target = connectingPeer(pid: p.pid, inode: UInt64(p.stat.st_ino), ipv6: family == AF_INET6) else {
                throw CryoError("\(what) in TCP state SYN_SENT from \(local?.description ?? "?"): its destination is not in /proc/\(p.pid)/net/tcp")
            }
            s.state = .connecting
            s.peer = target
        case 1, 4, 5, 8, 9, 11:
            guard peer != nil, local != nil else { throw CryoError("\(what): \(stateName), but without both addresses") }
            if kindOptions.tcpClose && !established {
                s.state = .closed
                return s
            }
            guard established else {
                let named = info.tcpi_state == 1 ? "an established TCP connection" : "a TCP connection in state \(stateName)"
                throw CryoError("\(what) is \(named) \(connection); dump with --tcp-established to checkpoint it (or --tcp-close to drop it)")
            }
            s.state = .connected
            // Before the queues are read: no byte may arrive after that.
            try kindOptions.networkLock?.add(local: local!, peer: peer!, pid: p.pid, object: what)
            s.tcp = try dumpConnection(fd, info: info, object: "\(what) \(connection)")
        default:
            throw CryoError("\(what) in TCP state \(stateName) (\(connection)) is not supported")
        }
        return s
    }

    /// SO_PEERNAME of a TCP socket in state CLOSE: the peer it was connected to, or nil when it never was
    /// (or was disconnected with connect(AF_UNSPEC), which forgets the peer).
    static func formerPeer(_ fd: FileDescriptor, ipv6: Bool, object: String) -> InetAddress? {
        // Exactly the family's address size: the kernel refuses a larger buffer (EINVAL).
        var buffer = [UInt8](repeating: 0, count: ipv6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size)
        guard let length = try? Sockets.option(fd, CRYO_SOL_SOCKET, 28 /* SO_PEERNAME */, into: &buffer, name: "SO_PEERNAME", object: object),
              let peer = InetAddress(SocketAddress(bytes: Array(buffer.prefix(length)))), peer.port != 0 else { return nil }
        return peer
    }

    /// Every datagram waiting, with its source, through SO_PEEK_OFF (put back afterwards).
    static func peekDatagrams(_ fd: FileDescriptor, peekOffset: Int32, object: String) throws -> [Datagram] {
        defer { try? setInt(fd, CRYO_SOL_SOCKET, CRYO_SO_PEEK_OFF, peekOffset, "SO_PEEK_OFF", object) }
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var offset = 0
        var datagrams: [Datagram] = []
        while true {
            guard offset <= Int(Int32.max) else { throw CryoError("\(object): receive queue too large to read") }
            try setInt(fd, CRYO_SOL_SOCKET, CRYO_SO_PEEK_OFF, Int32(offset), "SO_PEEK_OFF", object)
            guard let peeked = try buffer.withUnsafeMutableBytes({ try Sockets.peek(fd, into: $0, truncate: true, object: object) }) else { break }
            let count = peeked.length
            if count > buffer.count {
                buffer = [UInt8](repeating: 0, count: count)
                continue
            }
            datagrams.append(Datagram(source: peeked.source.flatMap { InetAddress($0) }, data: Data(buffer[0..<count])))
            guard datagrams.count <= 1 << 20 else { throw CryoError("\(object): receive queue does not end") }
            offset += count
        }
        return datagrams
    }

    /// Turns TCP_REPAIR on (the process is frozen: nothing else uses the socket),
    /// reads sequence numbers, both queues, options and window, and turns it off again.
    static func dumpConnection(_ fd: FileDescriptor, info: tcp_info, object: String) throws -> TCPConnection {
        let state = info.tcpi_state
        let finSent = [4, 5, 9, 11].contains(state), finReceived = [8, 9, 11].contains(state)
        // SIOCOUTQ counts our FIN while it is not acknowledged (every state after it but FIN_WAIT2).
        let finQueued: Int32 = finSent && state != 5 ? 1 : 0
        // An ended connection (CLOSE) sends nothing more: a reset threw its send queue away, though SIOCOUTQ still counts it.
        let ended = state == 7
        let outq = ended ? 0 : try Sockets.queueLength(fd, request: CRYO_SIOCOUTQ, name: "SIOCOUTQ", object: object) - finQueued
        let unsent = ended ? 0 : try Sockets.queueLength(fd, request: CRYO_SIOCOUTQNSD, name: "SIOCOUTQNSD", object: object)
        // SIOCOUTQNSD counts a FIN not sent yet (it follows every unsent byte).
        let unsentData = finSent && unsent > 0 ? unsent - 1 : unsent
        let inq = try Sockets.queueLength(fd, request: CRYO_SIOCINQ, name: "SIOCINQ", object: object)
        // Leaving repair mode clears SO_REUSEADDR: the task's own value goes back (it runs on after a failed
        // dump or with --leave-running).
        let reuse = try getInt(fd, CRYO_SOL_SOCKET, CRYO_SO_REUSEADDR, "SO_REUSEADDR", object)
        try setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR, 1, "TCP_REPAIR", object)
        defer {
            try? setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR_QUEUE, 0, "TCP_REPAIR_QUEUE", object)
            try? setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR, 0, "TCP_REPAIR", object)
            if reuse != 0 { try? setInt(fd, CRYO_SOL_SOCKET, CRYO_SO_REUSEADDR, reuse, "SO_REUSEADDR", object) }
        }
        func queue(_ which: Int32, length: Int32) throws -> (UInt32, Data) {
            try setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR_QUEUE, which, "TCP_REPAIR_QUEUE", object)
            let seq = UInt32(bitPattern: try getInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ", object))
            guard length > 0 else { return (seq, Data()) }
            var buffer = [UInt8](repeating: 0, count: Int(length))
            let peeked = try buffer.withUnsafeMutableBytes {
                try Sockets.peek(fd, into: $0, truncate: false, object: "\(object) (\(which == CRYO_TCP_SEND_QUEUE ? "send" : "receive") queue)")
            }
            let n = peeked?.length ?? 0
            guard n == Int(length) else {
                throw CryoError("\(object): read \(n) of the \(length) bytes of its \(which == CRYO_TCP_SEND_QUEUE ? "send" : "receive") queue")
            }
            return (seq, Data(buffer))
        }
        let (sendSeq, sendQueue) = try queue(CRYO_TCP_SEND_QUEUE, length: outq)
        let (receiveSeq, receiveQueue) = try queue(CRYO_TCP_RECV_QUEUE, length: inq)
        try setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR_QUEUE, 0, "TCP_REPAIR_QUEUE", object)
        let mss = UInt32(bitPattern: try getInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_MAXSEG, "TCP_MAXSEG", object))
        let timestamp = UInt32(bitPattern: try getInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_TIMESTAMP, "TCP_TIMESTAMP", object))
        let window = try Sockets.option(fd, CRYO_IPPROTO_TCP, TCP_REPAIR_WINDOW, as: tcp_repair_window.self, name: "TCP_REPAIR_WINDOW",
                                        object: object, initial: tcp_repair_window())
        return TCPConnection(
            sendSeq: sendSeq, receiveSeq: receiveSeq, sendQueue: sendQueue, unsent: Int(max(0, min(unsentData, outq))), receiveQueue: receiveQueue,
            mss: mss, windowScaling: info.tcpi_options & UInt8(TCPI_OPT_WSCALE) != 0, sendWindowScale: UInt32(info.tcpi_snd_wscale),
            receiveWindowScale: UInt32(info.tcpi_rcv_wscale), sack: info.tcpi_options & UInt8(TCPI_OPT_SACK) != 0,
            timestamps: info.tcpi_options & UInt8(TCPI_OPT_TIMESTAMPS) != 0, timestamp: timestamp,
            sndWl1: window.snd_wl1, sndWnd: window.snd_wnd, maxWindow: window.max_window, rcvWnd: window.rcv_wnd, rcvWup: window.rcv_wup,
            finSent: finSent, finReceived: finReceived, stateName: tcpStateNames[state])
    }

    /// The remote address of a connecting socket, from /proc/PID/net/tcp or tcp6 (the task's network namespace).
    static func connectingPeer(pid: pid_t, inode: UInt64, ipv6: Bool, table: String = "tcp") -> InetAddress? {
        guard let text = try? Files.readString("/proc/\(pid)/net/\(table)\(ipv6 ? "6" : "")") else { return nil }
        for line in text.split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ")
            guard fields.count > 9, UInt64(fields[9]) == inode else { continue }
            // A ping or raw socket's peer only while connected (state 01).
            if table != "tcp" && fields[3] != "01" { return nil }
            return procNetAddress(String(fields[2]))
        }
        return nil
    }

    /// Request sockets (SYN_RECV, state 03) of /proc/PID/net/tcp6 or tcp (the task's network namespace)
    /// on the listener's port and address (any address for a wildcard listener).
    /// `procNet` gives the local addresses of a table's SYN_RECV entries.
    static func synReceived(pid: pid_t, listener: InetAddress, v4Too: Bool, procNet: (pid_t, String) -> [InetAddress]) -> Int {
        let tables = listener.isIPv6 ? ["tcp6"] + (v4Too ? ["tcp"] : []) : ["tcp"]
        return tables.reduce(0) { count, table in count + synReceived(among: procNet(pid, table), listener: listener) }
    }

    /// The same, counted in the text of one such table.
    static func synReceived(in text: String, listener: InetAddress) -> Int {
        synReceived(among: synReceivedLocals(in: text), listener: listener)
    }

    static func synReceived(among locals: [InetAddress], listener: InetAddress) -> Int {
        locals.count { local in
            local.port == listener.port
                && (listener.isWildcard || local.address == listener.address || local.wireAddress == listener.wireAddress)
        }
    }

    /// The local addresses of the SYN_RECV (state 03) entries of one such table's text.
    static func synReceivedLocals(in text: String) -> [InetAddress] {
        text.split(separator: "\n").dropFirst().compactMap { line in
            // "  sl  local_address rem_address   st": the state is the fourth field; most lines are not 03.
            let fields = line.split(separator: " ", maxSplits: 4)
            guard fields.count > 3, fields[3] == "03" else { return nil }
            return procNetAddress(String(fields[1]))
        }
    }

    /// "0100007F:1F90" (IPv4) or 32 hex digits of IPv6: each 32-bit word in the kernel's byte order, as printed.
    static func procNetAddress(_ text: String) -> InetAddress? {
        let parts = text.split(separator: ":")
        guard parts.count == 2, let port = UInt16(parts[1], radix: 16), parts[0].count == 8 || parts[0].count == 32 else { return nil }
        var bytes: [UInt8] = []
        var hex = Substring(parts[0])
        while !hex.isEmpty {
            guard let word = UInt32(hex.prefix(8), radix: 16) else { return nil }
            bytes += withUnsafeBytes(of: word) { Array($0) } // printed as a host-order word of the network-order bytes
            hex = hex.dropFirst(8)
        }
        return InetAddress(.inet(address: bytes, port: port))
    }

    public var summary: String {
        var text = "\(proto.rawValue)\(ipv6 ? "6" : "") socket:[\(inode)] \(state.rawValue)"
        if let local { text += " \(local.description)" }
        if let peer { text += " -> \(peer.description)" }
        if let backlog { text += " backlog \(backlog)" }
        if let name = tcp?.stateName, name != "ESTABLISHED" { text += " \(name)" }
        if !datagrams.isEmpty { text += " (\(datagrams.count) datagrams queued)" }
        if let settings, !settings.summary.isEmpty { text += " (\(settings.summary))" }
        if let tcp, !tcp.sendQueue.isEmpty || !tcp.receiveQueue.isEmpty {
            text += " (\(tcp.sendQueue.count) bytes to send, \(tcp.receiveQueue.count) to read)"
        }
        return text
    }

    func summary(_ file: FileTable.OpenFile) -> String { summary }

    /// Established connections come back only when asked for, as with dump.
    static func checkBeforeRestore(_ files: [FileTable.OpenFile], options: KindOptions) throws {
        guard !options.tcpEstablished, !options.tcpClose, let (f, s) = entries(files).first(where: { $0.state.tcp != nil }) else { return }
        throw CryoError("file #\(f.id): the image holds an established TCP connection \(s.local?.description ?? "?") -> "
            + "\(s.peer?.description ?? "?"); restore with --tcp-established (or --tcp-close to restore it closed)")
    }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        guard let socket = try context.rebuilder(InetSocketRebuilder.self).take(file.id) else {
            throw CryoError("\(object): socket was not rebuilt")
        }
        return socket
    }

    func validate() -> String? {
        if let local, local.raw() == nil { return "an inet socket address \(local.address)" }
        if let peer, peer.raw() == nil { return "an inet socket address \(peer.address)" }
        if state == .listening && (proto != .tcp || backlog == nil || local == nil) { return "a listening inet socket without TCP, backlog or address" }
        if proto == .tcp && state == .connected && (tcp == nil || peer == nil || local == nil) { return "an established TCP connection without its state" }
        if state == .ended && (proto != .tcp || tcp == nil || peer == nil || local == nil) { return "an ended TCP connection without its state" }
        if state == .connecting && (proto != .tcp || peer == nil) { return "a connecting socket without TCP or destination" }
        if proto != .tcp && (tcp != nil || state == .listening) { return "a datagram socket with TCP state" }
        if proto == .icmp && !datagrams.isEmpty { return "an ICMP socket with queued datagrams" }
        if proto == .raw && !Self.rawProtocols.contains(rawProtocol ?? 0) { return "a raw socket without its protocol" }
        if let tcp, tcp.unsent < 0 || tcp.unsent > tcp.sendQueue.count { return "a TCP send queue with \(tcp.unsent) unsent bytes" }
        return nil
    }
}

// MARK: - Restore

/// Makes every AF_INET/AF_INET6 socket of the image in the controller:
/// each established TCP connection first, in repair mode; then listeners and
/// the other sockets (UDP ones connected again); then the UDP queues sent
/// again; last repair mode off and the options.
final class InetSocketRebuilder: KindRebuilder {
    private var made: [Int: FileDescriptor] = [:]

    private let options: KindOptions

    init(_ context: OpenContext) throws {
        options = context.options
        let sockets = InetSocketState.entries(context.files).map { (id: $0.file.id, state: $0.state, flags: $0.file.flags) }
        try InetSocketState.checkBeforeRestore(context.files, options: context.options)
        do {
            try build(sockets)
        } catch {
            closeAll()
            throw error
        }
    }

    func take(_ id: Int) -> FileDescriptor? {
        made.removeValue(forKey: id)
    }

    func closeAll() {
        for fd in made.values { try? fd.close() }
    }

    private static func object(_ id: Int, _ s: InetSocketState) -> String {
        "file #\(id) (\(s.summary))"
    }

    /// shutdown(SHUT_WR) in repair mode with the send queue selected: the FIN joins the queue as sent, nothing leaves.
    private func finInRepair(_ fd: FileDescriptor, _ what: String) throws {
        try setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR_QUEUE, CRYO_TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE", what)
        try Sockets.shutdown(fd, how: 1, object: "\(what) (our FIN, in repair mode)")
        try setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR_QUEUE, 0, "TCP_REPAIR_QUEUE", what)
    }

    /// Loopback delivers at once, yet softirq may run a moment later: waits up to a second.
    private func waitForState(_ fd: FileDescriptor, _ states: [UInt8], what: String, expecting: String) throws {
        for _ in 0..<200 {
            let info = try Sockets.option(fd, CRYO_IPPROTO_TCP, TCP_INFO, as: tcp_info.self, name: "TCP_INFO", object: what, initial: tcp_info())
            if states.contains(info.tcpi_state) { return }
            usleep(5000)
        }
        throw CryoError("\(what): \(expecting) was sent again but the connection did not take it")
    }

    /// Sends one of cryo's packets and waits for the connection to take it. A firewall rule of the host's
    /// can drop it (a program's own DROP on its port); then once more, with cryo's mark let through.
    private func deliver(_ fd: FileDescriptor, _ states: [UInt8], _ s: InetSocketState, what: String, expecting: String,
                         send: () throws -> Void) throws {
        try send()
        do {
            try waitForState(fd, states, what: what, expecting: expecting)
        } catch let dropped as CryoError {
            let ipv6 = s.local?.rawBytes?.count == 16
            let passed = try NetworkLock.passingMarked(ipv6: ipv6, object: what) {
                try send()
                try waitForState(fd, states, what: what, expecting: expecting)
            }
            if !passed { throw dropped }
        }
    }

    private func build(_ sockets: [(id: Int, state: InetSocketState, flags: UInt32)]) throws {
        let closeConnections = options.tcpClose
        func socket(_ id: Int, _ s: InetSocketState) throws -> FileDescriptor {
            let fd = try Sockets.make(family: s.family, type: s.kernelType, protocol: s.kernelProtocol, object: Self.object(id, s))
            made[id] = fd
            return fd
        }
        func preBind(_ fd: FileDescriptor, _ s: InetSocketState, _ what: String) throws {
            // Each where the new socket differs (IPV6_ADDR_PREFERENCES is not 0 by default). Not SO_REUSEADDR
            // of a connection in repair mode: it reads 2 there (forced reuse, what lets it share its port), and
            // step 5 puts it back once repair mode is off.
            for o in InetIntegerOption.table(ipv6: s.ipv6, proto: s.proto, rawProtocol: s.rawProtocol ?? 0) where o.beforeBind {
                if o.name == "SO_REUSEADDR" && s.tcp != nil && !closeConnections { continue }
                if let value = s.options[o.name], try getInt(fd, o.level, o.option, o.name, what) != value {
                    try setInt(fd, o.level, o.option, value, o.name, what)
                }
            }
            // The address may have been bound while IP_FREEBIND was on, turned off since: on for the bind
            // (the socket had that address), and step 5 puts the saved value back.
            let freebind = s.ipv6 ? (name: "IPV6_FREEBIND", level: CRYO_IPPROTO_IPV6, option: CRYO_IPV6_FREEBIND)
                                  : (name: "IP_FREEBIND", level: CRYO_IPPROTO_IP, option: CRYO_IP_FREEBIND)
            if let local = s.local, !local.isWildcard, s.options[freebind.name] == 0 {
                try setInt(fd, freebind.level, freebind.option, 1, freebind.name, what)
            }
            try s.settings?.restoreBeforeBind(fd, ipv6: s.ipv6, what: what)
        }
        func address(_ a: InetAddress, _ what: String) throws -> SocketAddress {
            guard let raw = a.raw() else { throw CryoError("\(what): \(a.address) is no address") }
            return raw
        }
        // 1. Connections, in repair mode (which lets them share a port): no packet leaves until
        // every one is back. A FIN either way took a sequence number: the queues start before it.
        // With --tcp-close they come back closed instead (step 2).
        for (id, s, _) in sockets where !closeConnections {
            guard let t = s.tcp, let local = s.local, let peer = s.peer else { continue }
            let what = Self.object(id, s)
            let fd = try socket(id, s)
            try setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR, 1, "TCP_REPAIR", what)
            try preBind(fd, s, what)
            let unsent = t.unsent
            let sent = t.sendQueue.count - unsent
            let sendStart = t.sendSeq &- (t.sentFIN ? 1 : 0) &- UInt32(t.sendQueue.count)
            let receiveNext = t.receiveSeq &- (t.receivedFIN ? 1 : 0)
            for (queue, seq) in [(CRYO_TCP_SEND_QUEUE, sendStart), (CRYO_TCP_RECV_QUEUE, receiveNext &- UInt32(t.receiveQueue.count))] {
                try setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE", what)
                try setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_QUEUE_SEQ, Int32(bitPattern: seq), "TCP_QUEUE_SEQ", what)
            }
            // An address that came from connect (IPV6_V6ONLY off, one IPv6 address): binding to it would turn
            // IPV6_V6ONLY on, so the port is bound alone and the repaired connect picks the address again.
            let fromConnect = s.addressFromConnect
            let bound = fromConnect ? InetAddress.wildcard(ipv6: true, port: local.port) : local
            try Sockets.bind(fd, to: try address(bound, what), object: "\(what) to \(bound.description)")
            try Sockets.connect(fd, to: try address(peer, what), object: "\(what) to \(peer.description) (TCP_REPAIR)")
            if fromConnect { try expectLocal(fd, local, peer: peer, what: what) }
            let total = t.sendQueue.count + t.receiveQueue.count
            if total > 0 {
                // Room for both queues as the kernel counts them (each byte's share of its buffer's truesize).
                let room = Int32(clamping: 4 * total + (1 << 20))
                try setInt(fd, CRYO_SOL_SOCKET, CRYO_SO_SNDBUFFORCE, room, "SO_SNDBUFFORCE", what)
                try setInt(fd, CRYO_SOL_SOCKET, CRYO_SO_RCVBUFFORCE, room, "SO_RCVBUFFORCE", what)
            }
            // Bytes already sent go back as sent (retransmitted if the peer lacks them); the unsent ones follow repair mode.
            for (queue, data) in [(CRYO_TCP_SEND_QUEUE, t.sendQueue.prefix(sent)), (CRYO_TCP_RECV_QUEUE, t.receiveQueue)] where !data.isEmpty {
                try setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE", what)
                try sendAll(fd, Data(data), what: "\(what): refilling its \(queue == CRYO_TCP_SEND_QUEUE ? "send" : "receive") queue")
            }
            try setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR_QUEUE, 0, "TCP_REPAIR_QUEUE", what)
            // The receive buffer as it was before repair mode ends: the window offered then must be the
            // one the peer saw (a larger buffer would take bytes the peer could not send before).
            if let wanted = s.options["SO_RCVBUF"] {
                try setInt(fd, CRYO_SOL_SOCKET, CRYO_SO_RCVBUFFORCE, wanted / 2, "SO_RCVBUFFORCE", what)
            }
            try Sockets.setOption(fd, CRYO_IPPROTO_TCP, TCP_REPAIR_OPTIONS, bytes: Self.repairOptions(t), name: "TCP_REPAIR_OPTIONS", object: what)
            if t.timestamps {
                try setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_TIMESTAMP, Int32(bitPattern: t.timestamp), "TCP_TIMESTAMP", what)
            }
            // The kernel wants snd_wl1 within the receive window and rcv_wup not beyond rcv_nxt,
            // measured from the rcv_nxt just rebuilt (the peer's FIN, if any, comes later).
            var window = tcp_repair_window(snd_wl1: t.sndWl1, snd_wnd: t.sndWnd, max_window: max(t.maxWindow, t.sndWnd),
                                           rcv_wnd: t.rcvWnd, rcv_wup: t.rcvWup)
            if Int32(bitPattern: window.rcv_wup &- receiveNext) > 0 { window.rcv_wup = receiveNext }
            if Int32(bitPattern: window.snd_wl1 &- (receiveNext &+ window.rcv_wnd)) > 0 { window.snd_wl1 = receiveNext }
            try Sockets.setOption(fd, CRYO_IPPROTO_TCP, TCP_REPAIR_WINDOW, window, name: "TCP_REPAIR_WINDOW", object: what)
            // Our FIN, once sent, goes in now, marked sent (FIN_WAIT1/2, CLOSING); one still behind unsent
            // bytes, or one after the peer's (LAST_ACK), in step 4.
            if t.sentFIN && unsent == 0 && !t.lastAck { try finInRepair(fd, what) }
        }
        // 2. Sockets without a connection, listeners first. A listener shares its port with
        // the connections it accepted: it binds after them, with SO_REUSEADDR meanwhile.
        for (id, s, _) in sockets.sorted(by: { ($0.state.state == .listening ? 0 : 1) < ($1.state.state == .listening ? 0 : 1) })
        where s.tcp == nil || closeConnections {
            let what = Self.object(id, s)
            let fd = try socket(id, s)
            try preBind(fd, s, what)
            if s.tcp != nil || s.state == .closed {
                // --tcp-close: a connection that ended; reads see end of stream, writes EPIPE.
                try? Sockets.shutdown(fd, how: 2, object: what) // ENOTCONN, yet the shutdown flags are set
                continue
            }
            // Refilling UDP queues binds a stand-in to a sender's address: both need SO_REUSEADDR meanwhile.
            try setInt(fd, CRYO_SOL_SOCKET, CRYO_SO_REUSEADDR, 1, "SO_REUSEADDR", what)
            // Listeners that share a port were bound and listening with SO_REUSEPORT; one may have turned it
            // off since. Each has it for its bind and listen, then step 5 puts the saved value back.
            if s.state == .listening, s.options["SO_REUSEPORT"] == 0, let port = s.local?.port,
               sockets.contains(where: { $0.id != id && $0.state.proto == .tcp && $0.state.state == .listening && $0.state.local?.port == port }) {
                try setInt(fd, CRYO_SOL_SOCKET, CRYO_SO_REUSEPORT, 1, "SO_REUSEPORT", what)
            }
            // Binding to one IPv6 address turns IPV6_V6ONLY on for good. A connected UDP socket without it
            // got its address from connect (the kernel picks the route's), so it binds the port only and connect picks again.
            let addressFromConnect = (s.isUDP && s.peer != nil || s.state == .connecting) && s.addressFromConnect
            if let local = s.local {
                let bound = addressFromConnect ? InetAddress.wildcard(ipv6: true, port: local.port) : local
                // A TCP socket that is not listening may share its port with what no reuse option lets it
                // share (a listener, the TIME_WAIT entry of its former connection): bound in repair mode,
                // which forces the reuse, as connections are; then out of it at once.
                let repair = try s.proto == .tcp && s.state == .unconnected && enterRepair(fd, what)
                try Sockets.bind(fd, to: try address(bound, what), object: "\(what) to \(bound.description)\(repair ? " (TCP_REPAIR)" : "")")
                if repair { try setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR, 0, "TCP_REPAIR", what) }
            }
            if s.state == .listening {
                try Sockets.listen(fd, backlog: s.backlog ?? 128, object: what)
            } else if s.state == .connecting, let peer = s.peer {
                // SYN_SENT: the handshake starts again; a blocking connect() the task was in waits for it.
                try Sockets.startConnect(fd, to: try address(peer, what), object: "\(what) to \(peer.description)")
                if addressFromConnect, let local = s.local { try expectLocal(fd, local, peer: peer, what: what) }
            } else if s.proto != .tcp, let peer = s.peer {
                try Sockets.connect(fd, to: try address(peer, what), object: "\(what) to \(peer.description)")
                if addressFromConnect, let local = s.local { try expectLocal(fd, local, peer: peer, what: what) }
            }
        }
        // 3. UDP queues, sent again from each datagram's source address when it can be bound.
        for (id, s, _) in sockets where !s.datagrams.isEmpty {
            try refill(made[id]!, s, what: Self.object(id, s))
        }
        // 4a. Connections that had ended: out of repair mode without a window probe, then reset from the
        // peer's address, so each is closed again with its unread bytes and its peer's name. First, so that
        // no probe of a live connection reaches one of them still established.
        for (id, s, _) in sockets where !closeConnections && s.state == .ended {
            guard let t = s.tcp else { continue }
            let what = Self.object(id, s), fd = made[id]!
            try setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR, -1 /* TCP_REPAIR_OFF_NO_WP */, "TCP_REPAIR", what)
            try deliver(fd, [7], s, what: what, expecting: "a reset") { try TCPFinInjector.deliverReset(to: s, connection: t, object: what) }
            // The reset leaves ECONNRESET to report once: kept only where the dumped socket had an error to report.
            if t.errorPending != true { _ = try getInt(fd, CRYO_SOL_SOCKET, SO_ERROR, "SO_ERROR", what) }
        }
        // 4. Repair mode off: each connection sends a window probe and carries on; then its unsent bytes.
        // A FIN the peer had sent is delivered again from outside (a raw packet), then our
        // FIN after it (LAST_ACK) goes in, in repair mode once more.
        for (id, s, _) in sockets where !closeConnections && s.state != .ended {
            guard let t = s.tcp else { continue }
            let what = Self.object(id, s), fd = made[id]!
            try setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR, 0, "TCP_REPAIR", what)
            if t.unsent > 0 { try sendAll(fd, Data(t.sendQueue.suffix(t.unsent)), what: "\(what): sending its unsent bytes") }
            // A FIN not sent yet queues behind the unsent bytes, as it was.
            if t.sentFIN && t.unsent > 0 && !t.lastAck { try Sockets.shutdown(fd, how: 1, object: "\(what) (our FIN)") }
            guard t.receivedFIN else { continue }
            try deliver(fd, [8, 9, 11], s, what: what, expecting: "the peer's FIN") { try TCPFinInjector.deliverFIN(to: s, connection: t, object: what) }
            if t.lastAck && t.unsent > 0 {
                try Sockets.shutdown(fd, how: 1, object: "\(what) (our FIN)")
            } else if t.lastAck {
                try setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR, 1, "TCP_REPAIR", what)
                try finInRepair(fd, what)
                try setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR, 0, "TCP_REPAIR", what)
            }
        }
        // 5. Options as they were, each only where the new socket differs; status flags.
        for (id, s, flags) in sockets {
            let fd = made[id]!, what = Self.object(id, s)
            for o in InetIntegerOption.table(ipv6: s.ipv6, proto: s.proto, rawProtocol: s.rawProtocol ?? 0) {
                guard let wanted = s.options[o.name], try getInt(fd, o.level, o.option, o.name, what) != wanted else { continue }
                switch o.name {
                case "SO_SNDBUF", "SO_RCVBUF", "SO_BUF_LOCK": continue // below
                case "IPV6_V6ONLY", "TCP_FASTOPEN_CONNECT": continue // only before bind; set there
                case "TCP_WINDOW_CLAMP" where wanted == 0: continue // only a fresh socket has none, and it is fresh
                default: try setInt(fd, o.level, o.option, wanted, o.name, what)
                }
            }
            try s.settings?.restore(fd, tcp: s.proto == .tcp, what: what)
            try restoreBuffers(fd, s, what: what)
            try FileObjects.setStatusFlags(fd, Int32(bitPattern: flags) & O_NONBLOCK, object: what)
        }
    }

    /// TCP_REPAIR on; false where cryo may not (no CAP_NET_ADMIN in the socket's network namespace).
    private func enterRepair(_ fd: FileDescriptor, _ what: String) throws -> Bool {
        do {
            try setInt(fd, CRYO_IPPROTO_TCP, CRYO_TCP_REPAIR, 1, "TCP_REPAIR", what)
            return true
        } catch let error as SyscallError where error.errno == .notPermitted {
            return false
        }
    }

    /// After a connect that picked the local address again: it must be the dumped one.
    private func expectLocal(_ fd: FileDescriptor, _ local: InetAddress, peer: InetAddress, what: String) throws {
        if let now = InetAddress(try Sockets.name(fd, peer: false, object: what)), now.address != local.address {
            throw CryoError("\(what): connecting to \(peer.description) now goes out from \(now.address), not \(local.address)")
        }
    }

    /// Buffer sizes the program set (SO_BUF_LOCK says which), or that cryo changed to refill the
    /// queues, as they were; the others stay the kernel's to size. Through the FORCE options: the
    /// kernel doubles what it is given. Then the lock bits as they were (an image without them: locked).
    private func restoreBuffers(_ fd: FileDescriptor, _ s: InetSocketState, what: String) throws {
        // An image without lock bits predates them: every size was the program's.
        let refilled = s.tcp != nil || !s.datagrams.isEmpty
        try SocketBuffers.restore(fd, options: s.options, everySize: s.options["SO_BUF_LOCK"] == nil || refilled, what: what)
    }

    /// TCP_REPAIR_OPTIONS: mss, window scales, SACK and timestamps as the connection had them.
    private static func repairOptions(_ t: InetSocketState.TCPConnection) -> [UInt8] {
        var options: [tcp_repair_opt] = []
        if t.mss != 0 { options.append(tcp_repair_opt(opt_code: UInt32(TCPOPT_MAXSEG), opt_val: t.mss)) }
        if t.windowScaling { options.append(tcp_repair_opt(opt_code: UInt32(TCPOPT_WINDOW), opt_val: t.sendWindowScale | t.receiveWindowScale << 16)) }
        if t.sack { options.append(tcp_repair_opt(opt_code: UInt32(TCPOPT_SACK_PERMITTED), opt_val: 0)) }
        if t.timestamps { options.append(tcp_repair_opt(opt_code: UInt32(TCPOPT_TIMESTAMP), opt_val: 0)) }
        return options.withUnsafeBytes { Array($0) }
    }

    private func sendAll(_ fd: FileDescriptor, _ data: Data, what: String) throws {
        var sent = 0
        while sent < data.count {
            sent += try data.withUnsafeBytes { try Sockets.send(fd, UnsafeRawBufferPointer(rebasing: $0[sent...]), object: what) }
        }
    }

    /// Each datagram goes again to the socket's own address, from a stand-in
    /// bound to its source (SO_REUSEADDR), so a connected socket still takes it
    /// and the receiver sees the same source. A source that cannot be bound (not
    /// an address of this host) is replaced by an ephemeral loopback port, which
    /// only an unconnected socket accepts.
    private func refill(_ fd: FileDescriptor, _ s: InetSocketState, what: String) throws {
        guard let local = s.local, var target = local.raw() else {
            throw CryoError("\(what): holds datagrams but has no address to send them to")
        }
        if local.isWildcard { target = InetAddress.loopback(ipv6: s.ipv6, port: local.port).raw()! }
        try setInt(fd, CRYO_SOL_SOCKET, CRYO_SO_RCVBUFFORCE, Int32(clamping: s.datagrams.reduce(0) { $0 + $1.data.count + 1024 } + (1 << 16)),
                   "SO_RCVBUFFORCE", what)
        for datagram in s.datagrams {
            // Of the socket's own protocol: a UDP datagram never reaches a UDP-Lite socket.
            let sender = try Sockets.make(family: s.family, type: Int32(SOCK_DGRAM.rawValue), protocol: s.kernelProtocol, object: what)
            defer { try? sender.close() }
            try? setInt(sender, CRYO_SOL_SOCKET, CRYO_SO_REUSEADDR, 1, "SO_REUSEADDR", what)
            var bound = false
            if let source = datagram.source, let raw = source.raw() {
                bound = (try? Sockets.bind(sender, to: raw, object: what)) != nil
            }
            if !bound && s.peer != nil {
                throw CryoError("\(what): a queued datagram from \(datagram.source?.description ?? "an unknown source") cannot be sent "
                    + "again from that address, and the socket is connected to \(s.peer!.description)")
            }
            let count = try datagram.data.withUnsafeBytes { try Sockets.send(sender, $0, to: target, object: "\(what): refilling its receive queue") }
            if count != datagram.data.count { throw CryoError("\(what): a \(datagram.data.count)-byte datagram went out as \(count) bytes") }
        }
    }
}

extension InetAddress {
    static func wildcard(ipv6: Bool, port: UInt16) -> InetAddress {
        InetAddress(.inet(address: [UInt8](repeating: 0, count: ipv6 ? 16 : 4), port: port))!
    }

    /// An IPv6 address, not the wildcard and not an IPv4-mapped one.
    var isSpecificIPv6: Bool { isIPv6 && !isWildcard && !address.lowercased().hasPrefix("::ffff:") }

    static func loopback(ipv6: Bool, port: UInt16) -> InetAddress {
        InetAddress(.inet(address: ipv6 ? [UInt8](repeating: 0, count: 15) + [1] : [127, 0, 0, 1], port: port))!
    }
}

/// Sends a restored connection the FIN its peer had sent before the dump, as a raw
/// packet from the peer's address (the kernel has no repair call for it): FIN|ACK at
/// the sequence number just before the dumped rcv_nxt, acknowledging what the
/// connection has outstanding, with the peer's last window. Marked so that
/// --network-lock's rules let it through.
enum TCPFinInjector {
    static let mark: Int32 = 0x4372_796F // "Cryo"

    static func deliverFIN(to s: InetSocketState, connection t: InetSocketState.TCPConnection, object: String) throws {
        try deliver(0x11 /* FIN | ACK */, seq: t.receiveSeq &- 1, named: "the peer's FIN", to: s, connection: t, object: object)
    }

    /// RST|ACK at rcv_nxt exactly, the one sequence number a connection takes a reset at.
    static func deliverReset(to s: InetSocketState, connection t: InetSocketState.TCPConnection, object: String) throws {
        try deliver(0x14 /* RST | ACK */, seq: t.receiveSeq, named: "the reset that ends it", to: s, connection: t, object: object)
    }

    private static func deliver(_ flags: UInt8, seq: UInt32, named: String, to s: InetSocketState, connection t: InetSocketState.TCPConnection,
                                object: String) throws {
        guard let local = s.local, let peer = s.peer, let from = local.rawBytes, let to = peer.rawBytes else {
            throw CryoError("\(object): \(named) cannot be sent without both addresses")
        }
        let (source, destination) = (to, from) // from the peer to us
        let ack = t.sendSeq &- (t.sentFIN ? 1 : 0) &- UInt32(t.sendQueue.count)
        let window = UInt16(clamping: t.sndWnd >> (t.windowScaling ? t.sendWindowScale : 0))
        var tcp = [UInt8](repeating: 0, count: 20)
        func put16(_ v: UInt16, _ at: Int, in b: inout [UInt8]) { b[at] = UInt8(v >> 8); b[at + 1] = UInt8(v & 0xff) }
        func put32(_ v: UInt32, _ at: Int, in b: inout [UInt8]) { put16(UInt16(v >> 16), at, in: &b); put16(UInt16(v & 0xffff), at + 2, in: &b) }
        put16(peer.port, 0, in: &tcp)
        put16(local.port, 2, in: &tcp)
        put32(seq, 4, in: &tcp)
        put32(ack, 8, in: &tcp)
        tcp[12] = 5 << 4
        tcp[13] = flags
        put16(window, 14, in: &tcp)
        let v4 = source.count == 4
        var pseudo = source + destination
        pseudo += v4 ? [0, 6, 0, 20] : [0, 0, 0, 20, 0, 0, 0, 6]
        put16(checksum(pseudo + tcp), 16, in: &tcp)
        var packet: [UInt8]
        if v4 {
            packet = [0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0] + source + destination
        } else {
            packet = [0x60, 0, 0, 0, 0, 20, 6, 64] + source + destination
        }
        packet += tcp
        let raw = try Sockets.make(family: v4 ? AF_INET : AF_INET6, type: Int32(SOCK_RAW.rawValue), protocol: Int32(IPPROTO_RAW),
                                   object: "\(object): a raw socket for \(named)")
        defer { try? raw.close() }
        try Sockets.setOption(raw, CRYO_SOL_SOCKET, CRYO_SO_MARK, mark, name: "SO_MARK", object: object)
        let target = SocketAddress.inet(address: destination, port: 0, scope: v4 ? 0 : (local.scope ?? 0))
        let sent = try packet.withUnsafeBytes { try Sockets.send(raw, $0, to: target, object: "\(object): \(named)") }
        if sent != packet.count { throw CryoError("\(object): \(named) went out as \(sent) of \(packet.count) bytes") }
    }

    /// The Internet checksum (RFC 1071).
    static func checksum(_ bytes: [UInt8]) -> UInt16 {
        var sum: UInt32 = 0
        var i = 0
        while i + 1 < bytes.count {
            sum += UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1])
            i += 2
        }
        if i < bytes.count { sum += UInt32(bytes[i]) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
        return ~UInt16(sum)
    }
}

extension InetAddress {
    /// The address bytes on the wire: 4 for IPv4 and for IPv4-mapped IPv6 (those packets are IPv4), else 16.
    var rawBytes: [UInt8]? {
        guard let (bytes, _, _) = raw()?.inet else { return nil }
        if bytes.count == 16 && bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff { return Array(bytes[12...]) }
        return bytes
    }
}
