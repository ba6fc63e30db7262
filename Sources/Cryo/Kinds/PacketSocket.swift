import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// An AF_PACKET socket (SOCK_RAW or SOCK_DGRAM): its Ethernet protocol, the
/// interface it is bound to, its PACKET_* options, memberships (promiscuous,
/// all-multicast, multicast addresses), classic BPF filter, and its rings
/// (PACKET_RX_RING/TX_RING, empty: PacketRing.swift), which the task's mappings
/// of them map again; its PACKET_FANOUT group. SOCK_PACKET (the obsolete type) keeps what it
/// has: protocol, device and SOL_SOCKET options. Frames not read yet, and fanout groups whose
/// selector is a BPF program, are refused.
public struct PacketSocketState: DescriptorKind {
    /// "Proto" of the AF_PACKET socket `socket:[INODE]` in /proc/PID/net/packet (hex, host order).
    static func ethertype(pid: pid_t, link: String) -> UInt16? {
        guard let inode = link.split(whereSeparator: { $0 == "[" || $0 == "]" }).dropFirst().first,
              let text = try? Files.readString("/proc/\(pid)/net/packet") else { return nil }
        for line in text.split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if fields.count >= 9, fields[8] == inode { return UInt16(fields[3], radix: 16) }
        }
        return nil
    }

    static let name = "packetSocket"
    /// SOCK_PACKET, the old interface (tcpdump of Linux 2.0): bound by interface name, no SOL_PACKET
    /// level at all (no options, memberships, rings or fanout), only its protocol, device and SOL_SOCKET.
    static let obsoleteType: Int32 = 10
    static let types: Set<Int32> = [Int32(SOCK_RAW.rawValue), Int32(SOCK_DGRAM.rawValue), obsoleteType]

    public struct Membership: Codable, Sendable, Equatable {
        public var device: String
        /// PACKET_MR_MULTICAST 0, PROMISC 1, ALLMULTI 2, UNICAST 3.
        public var type: UInt16
        public var address: Data
        /// How many times it was added (each PACKET_ADD_MEMBERSHIP counts).
        public var count: UInt32
    }

    public var inode: UInt64
    public var type: Int32
    /// Host order (ETH_P_ALL is 3); 0 receives nothing until bound with a protocol.
    public var protocolNumber: UInt16
    /// The interface bound to, by name (indexes belong to the network namespace); nil: all or none.
    public var device: String?
    public var copyThreshold: UInt32
    public var memberships: [Membership]
    /// Integer options by name, as getsockopt reported them.
    public var options: [String: Int32]
    /// SO_ATTACH_FILTER's program and SO_LOCK_FILTER.
    public var filter: Data?
    public var filterLocked: Bool
    /// SO_RCVTIMEO and SO_SNDTIMEO in microseconds, when set (nil in older images).
    public var receiveTimeout: Int64? = nil
    public var sendTimeout: Int64? = nil
    /// SO_TIMESTAMPING's flags and bound PHC index, when any flag is set.
    public var timestamping: [UInt32]? = nil
    /// PACKET_RX_RING and PACKET_TX_RING, when set up (nil in older images).
    public var receiveRing: Ring? = nil
    public var sendRing: Ring? = nil
    /// The PACKET_FANOUT group joined: id | type << 16 | flags << 24 (what setsockopt takes back, with
    /// the type's flags above it); nil when in none. The group is the network namespace's, by id:
    /// its first restored member makes it again, the others join it.
    public var fanout: UInt32? = nil

    static let optionTable: [(String, Int32, Int32)] = [
        ("PACKET_VERSION", CRYO_SOL_PACKET, Int32(PACKET_VERSION)), ("PACKET_RESERVE", CRYO_SOL_PACKET, Int32(PACKET_RESERVE)),
        ("PACKET_TIMESTAMP", CRYO_SOL_PACKET, Int32(PACKET_TIMESTAMP)), ("PACKET_AUXDATA", CRYO_SOL_PACKET, Int32(PACKET_AUXDATA)),
        ("PACKET_ORIGDEV", CRYO_SOL_PACKET, Int32(PACKET_ORIGDEV)), ("PACKET_VNET_HDR", CRYO_SOL_PACKET, Int32(PACKET_VNET_HDR)),
        // The header's size (10, 12 or 20), after PACKET_VNET_HDR, which reads 1 for any and sets 10.
        ("PACKET_VNET_HDR_SZ", CRYO_SOL_PACKET, 24),
        ("PACKET_LOSS", CRYO_SOL_PACKET, Int32(PACKET_LOSS)), ("PACKET_QDISC_BYPASS", CRYO_SOL_PACKET, Int32(PACKET_QDISC_BYPASS)),
        ("PACKET_TX_HAS_OFF", CRYO_SOL_PACKET, Int32(PACKET_TX_HAS_OFF)),
        ("PACKET_IGNORE_OUTGOING", CRYO_SOL_PACKET, Int32(PACKET_IGNORE_OUTGOING)),
        ("SO_PRIORITY", CRYO_SOL_SOCKET, CRYO_SO_PRIORITY), ("SO_MARK", CRYO_SOL_SOCKET, CRYO_SO_MARK),
        ("SO_SNDBUF", CRYO_SOL_SOCKET, CRYO_SO_SNDBUF), ("SO_RCVBUF", CRYO_SOL_SOCKET, CRYO_SO_RCVBUF),
        ("SO_BUF_LOCK", CRYO_SOL_SOCKET, CRYO_SO_BUF_LOCK),
        // What recvmsg reports along and how it waits (x86-64 numbers: SO_TIMESTAMP_OLD, SO_TIMESTAMPNS_OLD).
        ("SO_TIMESTAMP", CRYO_SOL_SOCKET, 29), ("SO_TIMESTAMPNS", CRYO_SOL_SOCKET, 35), ("SO_RXQ_OVFL", CRYO_SOL_SOCKET, 40),
        ("SO_RCVLOWAT", CRYO_SOL_SOCKET, CRYO_SO_RCVLOWAT), ("SO_SELECT_ERR_QUEUE", CRYO_SOL_SOCKET, 45),
        ("SO_BUSY_POLL", CRYO_SOL_SOCKET, 46), ("SO_PREFER_BUSY_POLL", CRYO_SOL_SOCKET, 69),
        ("SO_INCOMING_CPU", CRYO_SOL_SOCKET, 49), ("SO_NOFCS", CRYO_SOL_SOCKET, 43),
        ("SO_RCVMARK", CRYO_SOL_SOCKET, 75), ("SO_RCVPRIORITY", CRYO_SOL_SOCKET, 82),
    ]
    /// Newer than some kernels cryo runs on: left out where getsockopt does not know them.
    static let optionalOptions: Set<String> = ["PACKET_VNET_HDR_SZ", "SO_RCVMARK", "SO_RCVPRIORITY"]

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> PacketSocketState? {
        guard p.stat.st_mode & S_IFMT == S_IFSOCK else { return nil }
        let fd = p.handle
        guard try SocketDescription.option(fd, SO_DOMAIN, p.object) == AF_PACKET else { return nil }
        let what = "\(p.object): \(SocketDescription.describe(fd, family: AF_PACKET, link: p.link, pid: p.pid))"
        let type = try SocketDescription.option(fd, SO_TYPE, what)
        guard Self.types.contains(type) else { throw CryoError("\(what): an AF_PACKET socket of type \(type) is not supported") }
        guard let diag = try SockDiag.packetSocket(inode: UInt32(truncatingIfNeeded: p.stat.st_ino), object: what), let info = diag.info else {
            throw CryoError("\(what) is not in cryo's network namespace; not supported")
        }
        // getsockopt, not sock_diag's PACKET_DIAG_FANOUT, which leaves the flags (rollover, defrag...) out.
        let fanout = try diag.fanout == nil || type == Self.obsoleteType ? nil
            : UInt32(bitPattern: Sockets.option(fd, CRYO_SOL_PACKET, Int32(PACKET_FANOUT), name: "PACKET_FANOUT", object: what))
        if let fanout, let refusal = Self.fanoutRefusal(fanout) { throw CryoError("\(what) \(refusal); not supported") }
        // Frames would have to arrive again: nothing can put them back.
        // (SIOCINQ: the first frame's length; a peek with MSG_CMSG_CLOEXEC is EINVAL here.)
        let waiting = try Sockets.queueLength(fd, request: CRYO_SIOCINQ, name: "SIOCINQ", object: what)
        if waiting > 0 { throw CryoError("\(what) holds a frame not read yet (\(waiting) bytes); not supported") }
        func deviceName(_ index: UInt32) throws -> String {
            guard let name = Sockets.interfaceName(Int32(bitPattern: index)) else {
                throw CryoError("\(what): interface \(index) has no name in cryo's network namespace")
            }
            return name
        }
        let memberships = try diag.memberships.map { m in
            Membership(device: try deviceName(m.pdmc_index), type: m.pdmc_type,
                       address: withUnsafeBytes(of: m.pdmc_addr) { Data($0.prefix(Int(min(m.pdmc_alen, 32)))) }, count: m.pdmc_count)
        }
        var options: [String: Int32] = [:]
        for (name, level, option) in optionTable where type != Self.obsoleteType || level == CRYO_SOL_SOCKET {
            do {
                options[name] = try Sockets.option(fd, level, option, name: name, object: what)
            } catch let error as SyscallError where optionalOptions.contains(name) && error.errno == .protocolNotAvailable {}
        }
        let receiveRing = diag.receiveRing.map(Ring.init), sendRing = diag.sendRing.map(Ring.init)
        try PacketRings.check(fd, version: options["PACKET_VERSION"] ?? 0, receive: receiveRing, send: sendRing, what: what)
        let filter = try SocketFilter.dump(fd, what: what)
        let (receiveTimeout, sendTimeout) = try SocketTimeouts.dump(fd, what: what)
        return PacketSocketState(inode: UInt64(p.stat.st_ino), type: type, protocolNumber: diag.protocolNumber,
                                 device: info.pdi_index == 0 ? nil : try deviceName(info.pdi_index), copyThreshold: info.pdi_copy_thresh,
                                 memberships: memberships, options: options, filter: filter?.program, filterLocked: filter?.locked ?? false,
                                 receiveTimeout: receiveTimeout, sendTimeout: sendTimeout,
                                 timestamping: try SocketTimestamping.dump(fd, what: what),
                                 receiveRing: receiveRing, sendRing: sendRing, fanout: fanout)
    }

    /// Why a PACKET_FANOUT group cannot come back, or nil when it can: the classic and eBPF
    /// selectors (types 6 and 7) hold a program that no call reads back.
    static func fanoutRefusal(_ fanout: UInt32) -> String? {
        let type = (fanout >> 16) & 0xff
        guard type == 6 || type == 7 else { return nil }
        return "is in PACKET_FANOUT group \(fanout & 0xffff) of type \(type == 6 ? "PACKET_FANOUT_CBPF" : "PACKET_FANOUT_EBPF"), whose program cannot be read back"
    }

    public func summary(_ file: FileTable.OpenFile) -> String {
        let typeName = type == Int32(SOCK_RAW.rawValue) ? "raw" : type == Self.obsoleteType ? "SOCK_PACKET" : "dgram"
        var text = "packet socket:[\(inode)] \(typeName) protocol 0x\(String(protocolNumber, radix: 16))"
        if let device { text += " on \(device)" }
        if !memberships.isEmpty { text += " (\(memberships.count) membership\(memberships.count == 1 ? "" : "s"))" }
        if let filter { text += " (filter of \(filter.count / 8) instruction\(filter.count == 8 ? "" : "s"))" }
        if let fanout { text += " fanout group \(fanout & 0xffff) type \((fanout >> 16) & 0xff)" }
        if receiveRing != nil || sendRing != nil { text += " TPACKET_V\(ringVersion + 1)" }
        if let receiveRing { text += " RX ring (\(receiveRing.summary))" }
        if let sendRing { text += " TX ring (\(sendRing.summary))" }
        return text
    }

    func validate() -> String? {
        guard Self.types.contains(type) else { return "a packet socket of type \(type)" }
        if type == Self.obsoleteType && (receiveRing != nil || sendRing != nil || !memberships.isEmpty || fanout != nil) {
            return "a SOCK_PACKET socket with rings, memberships or a fanout group"
        }
        if let fanout, let refusal = Self.fanoutRefusal(fanout) { return "a packet socket that \(refusal)" }
        for (name, ring) in [("PACKET_RX_RING", receiveRing), ("PACKET_TX_RING", sendRing)] {
            if let ring, !ring.isPlausible { return "a \(name) of \(ring.summary)" }
        }
        return nil
    }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        let what = "\(object) (\(summary(file)))"
        // The protocol given to socket() starts receiving at once: the filter goes on before any bind.
        // With a ring, no frame may land before the ring is set up and the task's own position is
        // the first frame: the socket starts with protocol 0 (deaf) and the bind gives it its own.
        let hasRing = receiveRing != nil || sendRing != nil
        let fd = try Sockets.make(family: AF_PACKET, type: type, protocol: hasRing ? 0 : Int32(protocolNumber.bigEndian), object: what)
        do {
            if let filter, !filter.isEmpty { try Sockets.attachFilter(fd, program: Array(filter), object: what) }
            for (name, level, option) in Self.optionTable where !["SO_SNDBUF", "SO_RCVBUF", "SO_BUF_LOCK"].contains(name) {
                guard let wanted = options[name], try Sockets.option(fd, level, option, name: name, object: what) != wanted else { continue }
                try Sockets.setOption(fd, level, option, wanted, name: name, object: what)
            }
            if type != Self.obsoleteType {
                try Sockets.setOption(fd, CRYO_SOL_PACKET, Int32(PACKET_COPY_THRESH), Int32(bitPattern: copyThreshold), name: "PACKET_COPY_THRESH",
                                      object: what)
            }
            // After PACKET_VERSION, PACKET_RESERVE, PACKET_LOSS, PACKET_VNET_HDR, PACKET_TX_HAS_OFF (EBUSY once a ring exists).
            // tpacket_req3 for every version: V1 and V2 read its first four fields.
            if let receiveRing {
                try Sockets.setOption(fd, CRYO_SOL_PACKET, Int32(PACKET_RX_RING), receiveRing.request, name: "PACKET_RX_RING", object: what)
            }
            if let sendRing {
                try Sockets.setOption(fd, CRYO_SOL_PACKET, Int32(PACKET_TX_RING), sendRing.request, name: "PACKET_TX_RING", object: what)
            }
            try SocketTimeouts.restore(fd, receive: receiveTimeout, send: sendTimeout, what: what)
            try SocketTimestamping.restore(fd, timestamping, what: what)
            if let device, type == Self.obsoleteType {
                // A struct sockaddr whose sa_data is the interface's name (at most 14 bytes, as the kernel reads it).
                let name = Array(device.utf8)
                guard name.count <= 14 else { throw CryoError("\(what): interface name \(device) is longer than SOCK_PACKET's 14 bytes") }
                let address = [UInt8(AF_PACKET & 0xff), UInt8(AF_PACKET >> 8)] + name + [UInt8](repeating: 0, count: 14 - name.count)
                try Sockets.bind(fd, to: SocketAddress(bytes: address), object: "\(what) to \(device)")
            } else if let device {
                guard let index = Sockets.interfaceIndex(device) else { throw CryoError("\(what): there is no interface \(device) here") }
                var address = sockaddr_ll()
                address.sll_family = UInt16(AF_PACKET)
                address.sll_protocol = protocolNumber.bigEndian
                address.sll_ifindex = index
                try Sockets.bind(fd, to: SocketAddress(bytes: withUnsafeBytes(of: address) { Array($0) }), object: "\(what) to \(device)")
            } else if hasRing && protocolNumber != 0 {
                // Every interface, as socket() with the protocol would have done.
                var address = sockaddr_ll()
                address.sll_family = UInt16(AF_PACKET)
                address.sll_protocol = protocolNumber.bigEndian
                try Sockets.bind(fd, to: SocketAddress(bytes: withUnsafeBytes(of: address) { Array($0) }), object: "\(what) to every interface")
            }
            for m in memberships {
                guard let index = Sockets.interfaceIndex(m.device) else { throw CryoError("\(what): there is no interface \(m.device) here") }
                var request = packet_mreq()
                request.mr_ifindex = index
                request.mr_type = m.type
                request.mr_alen = UInt16(min(m.address.count, 8))
                withUnsafeMutableBytes(of: &request.mr_address) { $0.copyBytes(from: m.address.prefix(8)) }
                for _ in 0..<max(1, m.count) {
                    try Sockets.setOption(fd, CRYO_SOL_PACKET, Int32(PACKET_ADD_MEMBERSHIP), request, name: "PACKET_ADD_MEMBERSHIP", object: what)
                }
            }
            // After the bind: only a socket that receives (bound to its protocol) may join.
            if let fanout {
                try Sockets.setOption(fd, CRYO_SOL_PACKET, Int32(PACKET_FANOUT), Int32(bitPattern: fanout), name: "PACKET_FANOUT", object: what)
            }
            if filterLocked { try Sockets.setOption(fd, CRYO_SOL_SOCKET, CRYO_SO_LOCK_FILTER, Int32(1), name: "SO_LOCK_FILTER", object: what) }
            try SocketBuffers.restore(fd, options: options, what: what)
            try FileObjects.setStatusFlags(fd, Int32(bitPattern: file.flags) & O_NONBLOCK, object: what)
        } catch {
            try? fd.close()
            throw error
        }
        return fd
    }
}
