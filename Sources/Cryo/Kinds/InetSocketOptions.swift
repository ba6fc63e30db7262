import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

// The socket options of AF_INET/AF_INET6 sockets (InetSocket.swift): what is
// read at dump through cryo's duplicate of the descriptor, and how restore
// puts it back on the socket it made.

/// One integer option: its name in the image, level and number, and whether
/// restore sets it before bind (what bind or connect depend on).
struct InetIntegerOption {
    let name: String
    let level: Int32
    let option: Int32
    let beforeBind: Bool
    /// Newer than some kernels cryo runs on: left out of the image where getsockopt does not know it.
    let optional: Bool

    init(_ name: String, _ level: Int32, _ option: Int32, beforeBind: Bool = false, optional: Bool = false) {
        self.name = name
        self.level = level
        self.option = option
        self.beforeBind = beforeBind
        self.optional = optional
    }

    /// Only what the program set while the socket had no connection: TCP_MAXSEG reads the
    /// connection's own MSS once connected; TCP_FASTOPEN_CONNECT can only be set before connect
    /// (and in repair mode could defer the repaired connect).
    static let unconnectedOnly: Set<String> = ["TCP_MAXSEG", "TCP_FASTOPEN_CONNECT"]

    /// Those kept for a socket of this family and protocol, in the order restore sets them:
    /// IP_TOS before SO_PRIORITY (setting the TOS sets the priority too); buffer sizes and
    /// SO_BUF_LOCK are set apart, last.
    static func table(ipv6: Bool, proto: InetSocketState.Proto, rawProtocol: Int32 = 0) -> [InetIntegerOption] {
        let tcp = proto == .tcp
        var table: [InetIntegerOption] = [
            .init("SO_REUSEADDR", CRYO_SOL_SOCKET, CRYO_SO_REUSEADDR, beforeBind: true),
            .init("SO_REUSEPORT", CRYO_SOL_SOCKET, CRYO_SO_REUSEPORT, beforeBind: true),
            .init("SO_MARK", CRYO_SOL_SOCKET, CRYO_SO_MARK, beforeBind: true),
            .init("SO_KEEPALIVE", CRYO_SOL_SOCKET, CRYO_SO_KEEPALIVE), .init("SO_BROADCAST", CRYO_SOL_SOCKET, CRYO_SO_BROADCAST),
            .init("SO_DONTROUTE", CRYO_SOL_SOCKET, CRYO_SO_DONTROUTE), .init("SO_OOBINLINE", CRYO_SOL_SOCKET, CRYO_SO_OOBINLINE),
            .init("SO_NO_CHECK", CRYO_SOL_SOCKET, 11), // no UDP checksums sent
            .init("SO_RCVLOWAT", CRYO_SOL_SOCKET, CRYO_SO_RCVLOWAT),
            .init("SO_SNDBUF", CRYO_SOL_SOCKET, CRYO_SO_SNDBUF), .init("SO_RCVBUF", CRYO_SOL_SOCKET, CRYO_SO_RCVBUF),
            .init("SO_BUF_LOCK", CRYO_SOL_SOCKET, CRYO_SO_BUF_LOCK),
            // What recvmsg reports along (numbers of the x86-64 uapi: SO_TIMESTAMP_OLD, SO_TIMESTAMPNS_OLD).
            .init("SO_TIMESTAMP", CRYO_SOL_SOCKET, 29), .init("SO_TIMESTAMPNS", CRYO_SOL_SOCKET, 35),
            .init("SO_RXQ_OVFL", CRYO_SOL_SOCKET, 40), .init("SO_SELECT_ERR_QUEUE", CRYO_SOL_SOCKET, 45),
            .init("SO_BUSY_POLL", CRYO_SOL_SOCKET, 46), .init("SO_PREFER_BUSY_POLL", CRYO_SOL_SOCKET, 69),
            .init("SO_ZEROCOPY", CRYO_SOL_SOCKET, 60),
            // SO_INCOMING_CPU steers a reuseport group; SO_RCVMARK and SO_RCVPRIORITY add cmsgs; SO_NOFCS (raw).
            .init("SO_INCOMING_CPU", CRYO_SOL_SOCKET, 49), .init("SO_NOFCS", CRYO_SOL_SOCKET, 43),
            .init("SO_RCVMARK", CRYO_SOL_SOCKET, 75, optional: true), .init("SO_RCVPRIORITY", CRYO_SOL_SOCKET, 82, optional: true),
        ]
        // Ping and raw sockets have no peek offset.
        if proto != .icmp && proto != .raw { table.append(.init("SO_PEEK_OFF", CRYO_SOL_SOCKET, CRYO_SO_PEEK_OFF)) }
        if ipv6 {
            table += [
                .init("IPV6_V6ONLY", CRYO_IPPROTO_IPV6, CRYO_IPV6_V6ONLY, beforeBind: true),
                .init("IPV6_FREEBIND", CRYO_IPPROTO_IPV6, CRYO_IPV6_FREEBIND, beforeBind: true),
                .init("IPV6_TRANSPARENT", CRYO_IPPROTO_IPV6, CRYO_IPV6_TRANSPARENT, beforeBind: true),
                .init("IPV6_TCLASS", CRYO_IPPROTO_IPV6, CRYO_IPV6_TCLASS),
                .init("IPV6_UNICAST_HOPS", CRYO_IPPROTO_IPV6, CRYO_IPV6_UNICAST_HOPS),
                .init("IPV6_MTU_DISCOVER", CRYO_IPPROTO_IPV6, 23), .init("IPV6_RECVERR", CRYO_IPPROTO_IPV6, 25),
                .init("IPV6_RECVPKTINFO", CRYO_IPPROTO_IPV6, 49), .init("IPV6_RECVHOPLIMIT", CRYO_IPPROTO_IPV6, 51),
                .init("IPV6_RECVTCLASS", CRYO_IPPROTO_IPV6, 66),
                // Source address selection (IPV6_PREFER_SRC_*): connect and autobind depend on it.
                .init("IPV6_ADDR_PREFERENCES", CRYO_IPPROTO_IPV6, 72, beforeBind: true),
                .init("IPV6_MINHOPCOUNT", CRYO_IPPROTO_IPV6, 73), .init("IPV6_DONTFRAG", CRYO_IPPROTO_IPV6, 62),
                .init("IPV6_AUTOFLOWLABEL", CRYO_IPPROTO_IPV6, 70), .init("IPV6_FLOWINFO", CRYO_IPPROTO_IPV6, 11),
                .init("IPV6_RECVORIGDSTADDR", CRYO_IPPROTO_IPV6, 74), .init("IPV6_RECVPATHMTU", CRYO_IPPROTO_IPV6, 60),
                .init("IPV6_RECVRTHDR", CRYO_IPPROTO_IPV6, 56), .init("IPV6_RECVHOPOPTS", CRYO_IPPROTO_IPV6, 53),
                .init("IPV6_RECVDSTOPTS", CRYO_IPPROTO_IPV6, 58),
                .init("IPV6_RECVFRAGSIZE", CRYO_IPPROTO_IPV6, 77, optional: true),
                .init("IPV6_RECVERR_RFC4884", CRYO_IPPROTO_IPV6, 31, optional: true),
            ]
            // Datagram sockets only (a stream socket refuses to set them).
            if !tcp {
                table += [.init("IPV6_MULTICAST_HOPS", CRYO_IPPROTO_IPV6, CRYO_IPV6_MULTICAST_HOPS),
                          .init("IPV6_MULTICAST_LOOP", CRYO_IPPROTO_IPV6, CRYO_IPV6_MULTICAST_LOOP),
                          .init("IPV6_MULTICAST_IF", CRYO_IPPROTO_IPV6, 17), .init("IPV6_UNICAST_IF", CRYO_IPPROTO_IPV6, 76)]
            }
        } else {
            // The same bits as IPV6_FREEBIND and IPV6_TRANSPARENT: an IPv6 socket keeps those.
            table += [
                .init("IP_FREEBIND", CRYO_IPPROTO_IP, CRYO_IP_FREEBIND, beforeBind: true),
                .init("IP_TRANSPARENT", CRYO_IPPROTO_IP, CRYO_IP_TRANSPARENT, beforeBind: true),
            ]
        }
        // The IPv4 level: an IPv6 socket has it too (and uses it for its IPv4-mapped traffic: TOS, TTL,
        // multicast TTL, loop and interface...), except a raw one (ENOPROTOOPT).
        if !ipv6 || proto != .raw {
            table += [
                .init("IP_BIND_ADDRESS_NO_PORT", CRYO_IPPROTO_IP, 24, beforeBind: true),
                // The socket's own ephemeral port range (lo | hi << 16), for bind and connect.
                .init("IP_LOCAL_PORT_RANGE", CRYO_IPPROTO_IP, 51, beforeBind: true, optional: true),
                .init("IP_TOS", CRYO_IPPROTO_IP, CRYO_IP_TOS), .init("IP_TTL", CRYO_IPPROTO_IP, CRYO_IP_TTL),
                .init("IP_PKTINFO", CRYO_IPPROTO_IP, 8), .init("IP_MTU_DISCOVER", CRYO_IPPROTO_IP, 10),
                .init("IP_RECVERR", CRYO_IPPROTO_IP, 11), .init("IP_RECVTTL", CRYO_IPPROTO_IP, 12), .init("IP_RECVTOS", CRYO_IPPROTO_IP, 13),
                .init("IP_RECVOPTS", CRYO_IPPROTO_IP, 6), .init("IP_RETOPTS", CRYO_IPPROTO_IP, 7), .init("IP_PASSSEC", CRYO_IPPROTO_IP, 18),
                .init("IP_RECVORIGDSTADDR", CRYO_IPPROTO_IP, 20), .init("IP_MINTTL", CRYO_IPPROTO_IP, 21),
                .init("IP_NODEFRAG", CRYO_IPPROTO_IP, 22), .init("IP_CHECKSUM", CRYO_IPPROTO_IP, 23),
                .init("IP_RECVFRAGSIZE", CRYO_IPPROTO_IP, 25, optional: true),
                .init("IP_RECVERR_RFC4884", CRYO_IPPROTO_IP, 26, optional: true),
            ]
            if !tcp {
                // IP_MULTICAST_IF reads back the address only: an interface index given with ip_mreqn
                // cannot be read (nor detected), and comes back as the interface of that address.
                table += [.init("IP_MULTICAST_TTL", CRYO_IPPROTO_IP, CRYO_IP_MULTICAST_TTL),
                          .init("IP_MULTICAST_LOOP", CRYO_IPPROTO_IP, CRYO_IP_MULTICAST_LOOP),
                          .init("IP_MULTICAST_IF", CRYO_IPPROTO_IP, 32), .init("IP_MULTICAST_ALL", CRYO_IPPROTO_IP, 49),
                          .init("IP_UNICAST_IF", CRYO_IPPROTO_IP, 50)]
            }
        }
        table.append(.init("SO_PRIORITY", CRYO_SOL_SOCKET, CRYO_SO_PRIORITY))
        if tcp {
            table += [
                .init("TCP_NODELAY", CRYO_IPPROTO_TCP, CRYO_TCP_NODELAY), .init("TCP_KEEPIDLE", CRYO_IPPROTO_TCP, CRYO_TCP_KEEPIDLE),
                .init("TCP_KEEPINTVL", CRYO_IPPROTO_TCP, CRYO_TCP_KEEPINTVL), .init("TCP_KEEPCNT", CRYO_IPPROTO_TCP, CRYO_TCP_KEEPCNT),
                .init("TCP_USER_TIMEOUT", CRYO_IPPROTO_TCP, CRYO_TCP_USER_TIMEOUT), .init("TCP_CORK", CRYO_IPPROTO_TCP, CRYO_TCP_CORK),
                .init("TCP_SYNCNT", CRYO_IPPROTO_TCP, 7), .init("TCP_LINGER2", CRYO_IPPROTO_TCP, 8),
                .init("TCP_THIN_LINEAR_TIMEOUTS", CRYO_IPPROTO_TCP, 16), .init("TCP_NOTSENT_LOWAT", CRYO_IPPROTO_TCP, 25),
                .init("TCP_INQ", CRYO_IPPROTO_TCP, 36),
                .init("TCP_MAXSEG", CRYO_IPPROTO_TCP, CRYO_TCP_MAXSEG),
                .init("TCP_DEFER_ACCEPT", CRYO_IPPROTO_TCP, 9), .init("TCP_WINDOW_CLAMP", CRYO_IPPROTO_TCP, 10),
                .init("TCP_QUICKACK", CRYO_IPPROTO_TCP, 12), .init("TCP_SAVE_SYN", CRYO_IPPROTO_TCP, 27),
                .init("TCP_FASTOPEN_NO_COOKIE", CRYO_IPPROTO_TCP, 34), .init("TCP_TX_DELAY", CRYO_IPPROTO_TCP, 37),
                // The listener's queue of Fast Open requests: only settable before a connection (CLOSE or LISTEN).
                .init("TCP_FASTOPEN", CRYO_IPPROTO_TCP, 23, beforeBind: true),
                .init("TCP_FASTOPEN_CONNECT", CRYO_IPPROTO_TCP, 30, beforeBind: true),
                .init("TCP_RTO_MAX_MS", CRYO_IPPROTO_TCP, 44, optional: true), .init("TCP_RTO_MIN_US", CRYO_IPPROTO_TCP, 45, optional: true),
                .init("TCP_DELACK_MAX_US", CRYO_IPPROTO_TCP, 46, optional: true),
                // Whether a retransmission timeout picks a new flow hash (TCP only: EOPNOTSUPP elsewhere).
                .init("SO_TXREHASH", CRYO_SOL_SOCKET, 74, optional: true),
            ]
        } else if proto == .udp || proto == .udplite {
            table.append(.init("UDP_CORK", CRYO_IPPROTO_UDP, CRYO_UDP_CORK))
            // How much of each datagram the checksum covers, sent and required (UDPLITE_SEND_CSCOV, _RECV_CSCOV).
            if proto == .udplite {
                table += [.init("UDPLITE_SEND_CSCOV", Int32(IPPROTO_UDPLITE), 10), .init("UDPLITE_RECV_CSCOV", Int32(IPPROTO_UDPLITE), 11)]
            }
        } else if proto == .raw && ipv6 {
            table += [.init("IPV6_HDRINCL", CRYO_IPPROTO_IPV6, 36), .init("IPV6_CHECKSUM", CRYO_IPPROTO_IPV6, 7)]
        } else if proto == .raw {
            table.append(.init("IP_HDRINCL", CRYO_IPPROTO_IP, 3))
            // Which ICMP types are dropped (a bitmap), ICMP raw sockets only.
            // Before bind, as soon as the socket exists: no blocked type slips into its queue.
            if rawProtocol == Int32(IPPROTO_ICMP) { table.append(.init("ICMP_FILTER", 255 /* SOL_RAW */, 1, beforeBind: true)) }
        }
        return table
    }
}

/// The options that are more than one integer.
public struct InetSocketSettings: Codable, Sendable, Equatable {
    /// A multicast group joined by the socket (MCAST_JOIN_GROUP), with its source filter.
    public struct Membership: Codable, Sendable, Equatable {
        public var group: String
        /// The interface joined on, by name (its index is the network namespace's own).
        public var device: String
        /// MCAST_INCLUDE (only `sources`, as MCAST_JOIN_SOURCE_GROUP leaves it) or MCAST_EXCLUDE (all but `sources`).
        public var include: Bool
        public var sources: [String]
    }

    /// A TCP MD5 signature key (RFC 2385, TCP_MD5SIG): the peer address it is for, its prefix length, the key.
    public struct MD5Key: Codable, Sendable, Equatable {
        public var address: String
        public var prefixLength: UInt8
        public var key: Data
    }

    /// SO_BINDTODEVICE.
    public var device: String?
    /// TCP_MD5SIG keys, from sock_diag (no getsockopt reads them).
    public var md5Keys: [MD5Key]?
    /// SO_LINGER (l_onoff, l_linger), when either is set.
    public var linger: [Int32]?
    /// SO_RCVTIMEO and SO_SNDTIMEO in microseconds, when set.
    public var receiveTimeout: Int64?
    public var sendTimeout: Int64?
    /// TCP_CONGESTION.
    public var congestion: String?
    /// A classic BPF program (SO_ATTACH_FILTER), 8 bytes an instruction as the kernel gives it back, and SO_LOCK_FILTER.
    public var filter: Data?
    public var filterLocked: Bool?
    public var memberships: [Membership]?
    /// A UDP socket's shutdown bits: 1 receive, 2 send.
    public var shutdown: UInt8?
    /// SO_MAX_PACING_RATE in bytes a second, when not unlimited (64 bits: the option takes an unsigned long).
    public var maxPacingRate: UInt64?
    /// TCP_FASTOPEN_KEY of the socket itself (16 bytes, or 32 with a backup key), when it has one.
    public var fastOpenKey: Data?
    /// SO_TIMESTAMPING: flags and the bound PHC index, when any flag is set.
    public var timestamping: [UInt32]?
    /// ICMP6_FILTER of a raw ICMPv6 socket (8 words, a bit set: that type is blocked), when any is blocked.
    public var icmp6Filter: Data?

    var isEmpty: Bool { self == InetSocketSettings() }

    var summary: String {
        var parts: [String] = []
        if let device { parts.append("device \(device)") }
        if let filter { parts.append("filter of \(filter.count / 8) instruction\(filter.count == 8 ? "" : "s")\(filterLocked == true ? ", locked" : "")") }
        if let memberships, !memberships.isEmpty { parts.append("\(memberships.count) multicast group\(memberships.count == 1 ? "" : "s")") }
        if let shutdown, shutdown != 0 { parts.append(["", "shut down for reading", "shut down for writing", "shut down"][Int(shutdown & 3)]) }
        if let maxPacingRate { parts.append("pacing at most \(maxPacingRate) B/s") }
        if fastOpenKey != nil { parts.append("a Fast Open key of its own") }
        if let md5Keys, !md5Keys.isEmpty { parts.append("\(md5Keys.count) TCP MD5 key\(md5Keys.count == 1 ? "" : "s")") }
        if let timestamping, let flags = timestamping.first { parts.append("SO_TIMESTAMPING 0x\(String(flags, radix: 16))") }
        if icmp6Filter != nil { parts.append("an ICMPv6 type filter") }
        return parts.joined(separator: ", ")
    }
}

private let levelNames: [Int32: String] = [CRYO_IPPROTO_IP: "IP", CRYO_IPPROTO_IPV6: "IPv6"]

// MARK: - Dump

extension InetSocketSettings {
    /// Everything but the integers, read from cryo's duplicate of the socket of `pid`.
    static func dump(_ fd: FileDescriptor, ipv6: Bool, proto: InetSocketState.Proto, rawProtocol: Int32, pid: pid_t, inode: UInt64,
                     shutdowns: (Bool, Int32) -> [UInt32: UInt8], md5: (Bool) throws -> [UInt32: [UInt8]], what: String) throws -> InetSocketSettings {
        let tcp = proto == .tcp
        var s = InetSocketSettings()
        if tcp {
            // An upper-layer protocol (kernel TLS) holds keys and record state no getsockopt gives back whole.
            var ulp = [UInt8](repeating: 0, count: 16)
            let length = try Sockets.option(fd, CRYO_IPPROTO_TCP, 31 /* TCP_ULP */, into: &ulp, name: "TCP_ULP", object: what)
            let name = String(decoding: ulp.prefix(length).prefix { $0 != 0 }, as: UTF8.self)
            if let refusal = ulpRefusal(name) { throw CryoError("\(what) \(refusal)") }
            var key = [UInt8](repeating: 0, count: 32)
            let keyLength = try Sockets.option(fd, CRYO_IPPROTO_TCP, 33 /* TCP_FASTOPEN_KEY */, into: &key, name: "TCP_FASTOPEN_KEY", object: what)
            if keyLength > 0 { s.fastOpenKey = Data(key.prefix(keyLength)) }
            if let raw = try md5(ipv6)[UInt32(truncatingIfNeeded: inode)] {
                guard let keys = parseMD5Keys(raw) else { throw CryoError("\(what): its TCP MD5 keys (sock_diag) cannot be read") }
                s.md5Keys = keys
            }
        }
        let pacing = try Sockets.option(fd, CRYO_SOL_SOCKET, 47 /* SO_MAX_PACING_RATE */, as: UInt64.self, name: "SO_MAX_PACING_RATE",
                                        object: what, initial: 0)
        if pacing != UInt64.max { s.maxPacingRate = pacing }
        s.timestamping = try SocketTimestamping.dump(fd, what: what)
        if proto == .raw && ipv6 && rawProtocol == Int32(IPPROTO_ICMPV6) {
            var filter = [UInt8](repeating: 0, count: 32)
            let length = try Sockets.option(fd, Int32(IPPROTO_ICMPV6), 1 /* ICMP6_FILTER */, into: &filter, name: "ICMP6_FILTER", object: what)
            if filter.prefix(length).contains(where: { $0 != 0 }) { s.icmp6Filter = Data(filter.prefix(length)) }
        }
        var name = [UInt8](repeating: 0, count: 32)
        let nameLength = try Sockets.option(fd, CRYO_SOL_SOCKET, CRYO_SO_BINDTODEVICE, into: &name, name: "SO_BINDTODEVICE", object: what)
        let device = String(decoding: name.prefix(nameLength).prefix { $0 != 0 }, as: UTF8.self)
        if !device.isEmpty { s.device = device }
        let l = try Sockets.option(fd, CRYO_SOL_SOCKET, CRYO_SO_LINGER, as: Glibc.linger.self, name: "SO_LINGER", object: what, initial: Glibc.linger())
        if l.l_onoff != 0 || l.l_linger != 0 { s.linger = [l.l_onoff, l.l_linger] }
        (s.receiveTimeout, s.sendTimeout) = try SocketTimeouts.dump(fd, what: what)
        if tcp {
            var congestion = [UInt8](repeating: 0, count: 32)
            let length = try Sockets.option(fd, CRYO_IPPROTO_TCP, CRYO_TCP_CONGESTION, into: &congestion, name: "TCP_CONGESTION", object: what)
            s.congestion = String(decoding: congestion.prefix(length).prefix { $0 != 0 }, as: UTF8.self)
        }
        if let (program, locked) = try SocketFilter.dump(fd, what: what) {
            s.filter = program
            s.filterLocked = locked
        }
        let memberships = try dumpMemberships(fd, ipv6: ipv6, pid: pid, what: what)
        if !memberships.isEmpty { s.memberships = memberships }
        if !tcp {
            let listed = proto == .udp || proto == .udplite
                ? shutdowns(ipv6, proto == .udp ? CRYO_IPPROTO_UDP : Int32(IPPROTO_UDPLITE))[UInt32(truncatingIfNeeded: inode)] : nil
            s.shutdown = try listed.map { $0 & 3 } ?? datagramShutdown(fd, what: what)
        }
        return s
    }

    /// struct tcp_diag_md5sig entries (100 bytes: family u8, prefix length u8, key length u16, address
    /// 16 bytes, key 80 bytes); nil when they do not parse.
    static func parseMD5Keys(_ raw: [UInt8]) -> [MD5Key]? {
        guard raw.count % 100 == 0 else { return nil }
        return try? stride(from: 0, to: raw.count, by: 100).map { at -> MD5Key in
            let family = Int32(raw[at]), prefix = raw[at + 1]
            let keyLength = Int(UInt16(raw[at + 2]) | UInt16(raw[at + 3]) << 8)
            let bytes = Array(raw[(at + 4)..<(at + (family == AF_INET6 ? 20 : 8))])
            guard family == AF_INET || family == AF_INET6, keyLength <= 80,
                  let address = InetAddress(.inet(address: bytes, port: 0))?.address else { throw CryoError("bad key") }
            return MD5Key(address: address, prefixLength: prefix, key: Data(raw[(at + 20)..<(at + 20 + keyLength)]))
        }
    }

    /// struct tcp_md5sig for TCP_MD5SIG_EXT: the address (IPv4-mapped on an IPv6 socket) at 0, flags
    /// (TCP_MD5SIG_FLAG_PREFIX) at 128, prefix length 129, key length 130, interface 132, key 136.
    static func md5Request(_ k: MD5Key, ipv6Socket: Bool) -> [UInt8]? {
        guard k.key.count <= 80, var address = InetAddress(address: k.address)?.raw()?.inet?.0 else { return nil }
        let v4 = address.count == 4
        if v4 && ipv6Socket { address = [UInt8](repeating: 0, count: 10) + [0xff, 0xff] + address }
        var request = [UInt8](repeating: 0, count: 216)
        let family = UInt16(address.count == 4 ? AF_INET : AF_INET6)
        request[0] = UInt8(family & 0xff)
        request[1] = UInt8(family >> 8)
        put(address, at: address.count == 4 ? 4 : 8, in: &request)
        // The prefix of an IPv4 key stays an IPv4 one (at most 32), mapped or not.
        request[128] = k.prefixLength < (v4 ? 32 : 128) ? 1 : 0
        request[129] = k.prefixLength
        request[130] = UInt8(k.key.count)
        put(Array(k.key), at: 136, in: &request)
        return request
    }

    /// Why a TCP socket with this upper-layer protocol (TCP_ULP) is refused, or nil for none.
    static func ulpRefusal(_ name: String) -> String? {
        if name.isEmpty { return nil }
        if name == "tls" {
            return "uses kernel TLS (TCP_ULP \"tls\", TLS_TX/TLS_RX): its keys, record sequence numbers and partial records cannot be put back; not supported"
        }
        return "has the upper-layer protocol \"\(name)\" (TCP_ULP); not supported"
    }

    /// The kernel keeps no list of one socket's groups to read, but MCAST_MSFILTER answers for one
    /// (group, interface) exactly: every group of the task's network namespace (/proc/PID/net/igmp
    /// and igmp6 list them by interface) is asked about.
    private static func dumpMemberships(_ fd: FileDescriptor, ipv6: Bool, pid: pid_t, what: String) throws -> [Membership] {
        var memberships: [Membership] = []
        let groups4 = try Files.readString("/proc/\(pid)/net/igmp")
        for (index, device, group) in parseIGMP(groups4) {
            if let m = try probe(fd, level: CRYO_IPPROTO_IP, index: index, device: device, group: group, what: what) { memberships.append(m) }
        }
        guard ipv6 else { return memberships }
        // Without IPv6 in the kernel there is no igmp6, and no IPv6 socket either.
        let groups6 = try Files.readString("/proc/\(pid)/net/igmp6")
        for (index, device, group) in parseIGMP6(groups6) {
            if let m = try probe(fd, level: CRYO_IPPROTO_IPV6, index: index, device: device, group: group, what: what) { memberships.append(m) }
        }
        return memberships
    }

    /// group_filter as the kernel lays it out: interface index, the group (a sockaddr_storage at 8),
    /// mode (136), source count (140), then the sources (144, 128 bytes each).
    private static let filterHeader = 144, storage = 128

    private static func probe(_ fd: FileDescriptor, level: Int32, index: Int32, device: String, group: [UInt8], what: String) throws -> Membership? {
        var capacity = 16
        while true {
            var request = [UInt8](repeating: 0, count: filterHeader + capacity * storage)
            put(UInt32(bitPattern: index), at: 0, in: &request)
            put(SocketAddress.inet(address: group, port: 0).bytes, at: 8, in: &request)
            put(UInt32(capacity), at: 140, in: &request)
            do {
                _ = try Sockets.option(fd, level, CRYO_MCAST_MSFILTER, into: &request, name: "MCAST_MSFILTER", object: what)
            } catch let error as SyscallError
                        where [.addressNotAvailable, .operationNotSupportedByDevice, .protocolNotAvailable].contains(error.errno) {
                return nil // not a member on that interface (a raw IPv6 socket has no IPv4 level at all)
            }
            let count = Int(get(request, at: 140))
            if count > capacity {
                capacity = count
                continue
            }
            let sources = (0..<count).compactMap { i -> String? in
                let address = SocketAddress(bytes: Array(request[(filterHeader + i * storage)..<(filterHeader + (i + 1) * storage)]))
                return InetAddress(address)?.address
            }
            guard let text = InetAddress(.inet(address: group, port: 0))?.address, sources.count == count else {
                throw CryoError("\(what): a multicast membership on \(device) that cannot be read back (\(levelNames[level] ?? "?"))")
            }
            return Membership(group: text, device: device, include: get(request, at: 136) == 1, sources: sources)
        }
    }

    /// (interface index, name, group bytes) of /proc/net/igmp: an interface line ("1\tlo  : ...")
    /// followed by its groups, indented, each "%08X" of the address as a host-order word.
    static func parseIGMP(_ text: String) -> [(Int32, String, [UInt8])] {
        var result: [(Int32, String, [UInt8])] = []
        var current: (Int32, String)? = nil
        for line in text.split(separator: "\n").dropFirst() {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let first = fields.first else { continue }
            if let c = line.first, c != " " && c != "\t" {
                current = Int32(first).flatMap { index in fields.count > 1 ? (index, String(fields[1].filter { $0 != ":" })) : nil }
            } else if let (index, device) = current, first.count == 8, let word = UInt32(first, radix: 16) {
                result.append((index, device, withUnsafeBytes(of: word) { Array($0) }))
            }
        }
        return result
    }

    /// (interface index, name, group bytes) of /proc/net/igmp6: "1 lo ff02...0001 1 0000000C 0".
    static func parseIGMP6(_ text: String) -> [(Int32, String, [UInt8])] {
        text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 3, let index = Int32(fields[0]), fields[2].count == 32 else { return nil }
            var bytes: [UInt8] = []
            var hex = fields[2][...]
            while !hex.isEmpty {
                guard let b = UInt8(hex.prefix(2), radix: 16) else { return nil }
                bytes.append(b)
                hex = hex.dropFirst(2)
            }
            return (index, String(fields[1]), bytes)
        }
    }

    /// For a socket sock_diag does not list (an unbound UDP socket, one of another network namespace
    /// than cryo's, ping and raw sockets): poll tells a shutdown for reading (POLLRDHUP) or both ways
    /// (POLLHUP), not one for writing only.
    private static func datagramShutdown(_ fd: FileDescriptor, what: String) throws -> UInt8 {
        let events = try Sockets.pollEvents(fd, object: what)
        if events & Int16(POLLHUP) != 0 { return 3 }
        return events & 0x2000 != 0 ? 1 : 0
    }
}

private func put(_ value: UInt32, at offset: Int, in bytes: inout [UInt8]) {
    withUnsafeBytes(of: value) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } }
}

private func put(_ value: [UInt8], at offset: Int, in bytes: inout [UInt8]) {
    for (i, b) in value.enumerated() where offset + i < bytes.count { bytes[offset + i] = b }
}

private func get(_ bytes: [UInt8], at offset: Int) -> UInt32 {
    bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self) }
}

// MARK: - Restore

extension InetSocketSettings {
    /// What bind and connect depend on: the device; and the ICMPv6 filter, at once, so that no
    /// blocked type slips into the new raw socket's queue.
    func restoreBeforeBind(_ fd: FileDescriptor, ipv6: Bool, what: String) throws {
        // MD5 keys before any segment: a connection leaves repair mode, a listener takes SYNs, signed.
        for k in md5Keys ?? [] {
            guard let request = Self.md5Request(k, ipv6Socket: ipv6) else { throw CryoError("\(what): a TCP MD5 key for \(k.address) that cannot be set") }
            try Sockets.setOption(fd, CRYO_IPPROTO_TCP, 32 /* TCP_MD5SIG_EXT */, bytes: request, name: "TCP_MD5SIG_EXT",
                                  object: "\(what): its MD5 key for \(k.address)/\(k.prefixLength)")
        }
        if let icmp6Filter {
            try Sockets.setOption(fd, Int32(IPPROTO_ICMPV6), 1, bytes: Array(icmp6Filter), name: "ICMP6_FILTER", object: what)
        }
        guard let device else { return }
        try Sockets.setOption(fd, CRYO_SOL_SOCKET, CRYO_SO_BINDTODEVICE, bytes: Array(device.utf8) + [0], name: "SO_BINDTODEVICE",
                              object: "\(what) to device \(device)")
    }

    /// The rest, once the socket is bound, connected and its queues are in: the filter last but
    /// the shutdown, so that nothing cryo itself sends through is filtered.
    func restore(_ fd: FileDescriptor, tcp: Bool, what: String) throws {
        if let linger, linger.count == 2 {
            // l_linger is kept even while lingering is off: set it on first, then as it was.
            if linger[0] == 0 {
                try Sockets.setOption(fd, CRYO_SOL_SOCKET, CRYO_SO_LINGER, Glibc.linger(l_onoff: 1, l_linger: linger[1]), name: "SO_LINGER", object: what)
            }
            try Sockets.setOption(fd, CRYO_SOL_SOCKET, CRYO_SO_LINGER, Glibc.linger(l_onoff: linger[0], l_linger: linger[1]), name: "SO_LINGER", object: what)
        }
        try SocketTimeouts.restore(fd, receive: receiveTimeout, send: sendTimeout, what: what)
        if let maxPacingRate {
            try Sockets.setOption(fd, CRYO_SOL_SOCKET, 47, maxPacingRate, name: "SO_MAX_PACING_RATE", object: what)
        }
        try SocketTimestamping.restore(fd, timestamping, what: what)
        if tcp, let fastOpenKey {
            try Sockets.setOption(fd, CRYO_IPPROTO_TCP, 33, bytes: Array(fastOpenKey), name: "TCP_FASTOPEN_KEY", object: what)
        }
        if tcp, let congestion, !congestion.isEmpty {
            var current = [UInt8](repeating: 0, count: 32)
            let length = try Sockets.option(fd, CRYO_IPPROTO_TCP, CRYO_TCP_CONGESTION, into: &current, name: "TCP_CONGESTION", object: what)
            if String(decoding: current.prefix(length).prefix { $0 != 0 }, as: UTF8.self) != congestion {
                try Sockets.setOption(fd, CRYO_IPPROTO_TCP, CRYO_TCP_CONGESTION, bytes: Array(congestion.utf8), name: "TCP_CONGESTION",
                                      object: "\(what) (congestion control \(congestion))")
            }
        }
        for m in memberships ?? [] { try join(fd, m, what: what) }
        if let filter, !filter.isEmpty {
            try Sockets.attachFilter(fd, program: Array(filter), object: what)
            if filterLocked == true { try Sockets.setOption(fd, CRYO_SOL_SOCKET, CRYO_SO_LOCK_FILTER, Int32(1), name: "SO_LOCK_FILTER", object: what) }
        }
        if let shutdown, shutdown & 3 != 0 {
            // An unconnected socket answers ENOTCONN, yet its shutdown bits are set.
            do {
                try Sockets.shutdown(fd, how: Int32(shutdown & 3) - 1, object: what)
            } catch let error as SyscallError where error.errno == .socketNotConnected {}
        }
    }

    private func join(_ fd: FileDescriptor, _ m: Membership, what: String) throws {
        let object = "\(what): multicast group \(m.group) on \(m.device)"
        guard let index = Sockets.interfaceIndex(m.device) else { throw CryoError("\(object): there is no interface \(m.device) here") }
        guard let group = InetAddress(address: m.group)?.raw() else { throw CryoError("\(object): \(m.group) is no address") }
        let level = group.family == AF_INET6 ? CRYO_IPPROTO_IPV6 : CRYO_IPPROTO_IP
        var request = [UInt8](repeating: 0, count: 8 + Self.storage)
        put(UInt32(bitPattern: index), at: 0, in: &request)
        put(group.bytes, at: 8, in: &request)
        try Sockets.setOption(fd, level, CRYO_MCAST_JOIN_GROUP, bytes: request, name: "MCAST_JOIN_GROUP", object: object)
        guard m.include || !m.sources.isEmpty else { return }
        var filter = [UInt8](repeating: 0, count: Self.filterHeader + max(1, m.sources.count) * Self.storage)
        put(UInt32(bitPattern: index), at: 0, in: &filter)
        put(group.bytes, at: 8, in: &filter)
        put(UInt32(m.include ? 1 : 0), at: 136, in: &filter)
        put(UInt32(m.sources.count), at: 140, in: &filter)
        for (i, source) in m.sources.enumerated() {
            guard let address = InetAddress(address: source)?.raw() else { throw CryoError("\(object): source \(source) is no address") }
            put(address.bytes, at: Self.filterHeader + i * Self.storage, in: &filter)
        }
        try Sockets.setOption(fd, level, CRYO_MCAST_MSFILTER, bytes: filter, name: "MCAST_MSFILTER", object: object)
    }
}

extension InetAddress {
    /// From the text of an address (no port).
    init?(address text: String) {
        var bytes = [UInt8](repeating: 0, count: 16)
        let six = text.contains(":")
        guard bytes.withUnsafeMutableBytes({ inet_pton(six ? AF_INET6 : AF_INET, text, $0.baseAddress) }) == 1 else { return nil }
        self.init(.inet(address: six ? bytes : Array(bytes.prefix(4)), port: 0))
    }
}
