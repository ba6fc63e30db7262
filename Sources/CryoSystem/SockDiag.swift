import CCryo
import Glibc
import SystemPackage

/// What NETLINK_SOCK_DIAG tells of one AF_UNIX socket that the socket itself cannot.
public struct UnixSocketDiag: Sendable {
    public var inode: UInt32
    public var type: UInt32
    /// TCP_ESTABLISHED 1, TCP_CLOSE 7, TCP_LISTEN 10
    public var state: UInt32
    /// The peer's inode; 0 when it is closed or not accepted yet; nil when none was reported.
    public var peer: UInt32?
    /// Receive and send queue lengths (for a listener: pending connections and backlog), when reported.
    public var queues: (receive: UInt32, send: UInt32)?
    /// The socket file of a path name: its inode and device (as stat's st_dev).
    public var file: (inode: UInt32, device: UInt64)?
    /// Connections not yet accepted, as UNIX_DIAG_ICONS lists them.
    public var pending: UInt32 = 0
    /// The inodes of the sockets that made those connections (0: closed since), in accept order.
    public var icons: [UInt32] = []
    /// Bit 0: receive shut down, bit 1: send shut down.
    public var shutdown: UInt32 = 0
    /// sun_path bytes as bound; empty when unnamed.
    public var name: [UInt8] = []
}

/// What NETLINK_SOCK_DIAG tells of one AF_PACKET socket.
public struct PacketSocketDiag: Sendable {
    public var type: UInt8
    /// The Ethernet protocol, host order.
    public var protocolNumber: UInt16
    public var info: packet_diag_info? = nil
    public var memberships: [packet_diag_mclist] = []
    /// The geometry of PACKET_RX_RING and PACKET_TX_RING, when set up (PACKET_DIAG_RX_RING/TX_RING).
    public var receiveRing: packet_diag_ring? = nil, sendRing: packet_diag_ring? = nil
    /// PACKET_DIAG_FANOUT: the group's id | type << 16 (no flags: getsockopt(PACKET_FANOUT) has them).
    public var fanout: UInt32? = nil
}

/// Unix sockets of cryo's network namespace through NETLINK_SOCK_DIAG.
public enum SockDiag {
    /// The socket with this inode, or nil when cryo's network namespace has none.
    public static func unixSocket(inode: UInt32, object: String) throws -> UnixSocketDiag? {
        let show = UInt32(UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN)
        var found: UnixSocketDiag? = nil
        do {
            try query(inode: inode, show: show, dump: false, object: object) { diag in
                if diag.inode == inode { found = diag }
                return found == nil
            }
        } catch let error as SyscallError where error.errno == .noSuchFileOrDirectory {
            return nil
        }
        guard let found else { throw SyscallError("sock_diag(AF_UNIX)", errno: .protocolError, object: object) }
        return found
    }

    /// Whether a live socket is bound to the socket file with this inode and device (a full dump).
    public static func unixSocketFileInUse(inode: UInt32, device: UInt64, object: String) throws -> Bool {
        var inUse = false
        try query(inode: 0, show: UInt32(UDIAG_SHOW_VFS), dump: true, object: object) { diag in
            if let file = diag.file, file.inode == inode, file.device == device { inUse = true }
            return true
        }
        return inUse
    }

    /// Sends one request and hands each socket of the reply to `body` until it returns false.
    private static func query(inode: UInt32, show: UInt32, dump: Bool, object: String, _ body: (UnixSocketDiag) -> Bool) throws {
        var request = unix_diag_req()
        request.sdiag_family = UInt8(AF_UNIX)
        request.udiag_states = ~0
        request.udiag_ino = inode
        request.udiag_show = show
        // No cookie: looked up by inode.
        if !dump { request.udiag_cookie = (~0, ~0) }
        try exchange(withUnsafeBytes(of: request) { Array($0) }, call: "sock_diag(AF_UNIX)", dump: dump, object: object) { payload in
            guard let diag = parse(payload) else {
                if !dump { throw SyscallError("sock_diag(AF_UNIX)", errno: .protocolError, object: object) }
                return true
            }
            return body(diag) && dump
        }
    }

    /// The shutdown bits (1: receive, 2: send) of every AF_INET/AF_INET6 socket of this protocol that
    /// cryo's network namespace lists (INET_DIAG_SHUTDOWN; UDP lists bound sockets only), by inode.
    public static func inetShutdowns(family: Int32, protocol: Int32, object: String) throws -> [UInt32: UInt8] {
        var found: [UInt32: UInt8] = [:]
        try inetAttributes(family: family, protocol: `protocol`, object: object) { inode, type, value in
            if found[inode] == nil { found[inode] = 0 }
            if type == Int(INET_DIAG_SHUTDOWN), let bits = value.first { found[inode] = bits }
        }
        return found
    }

    /// The TCP MD5 signature keys (INET_DIAG_MD5SIG: struct tcp_diag_md5sig, 100 bytes each: family,
    /// prefix length, key length, address, key) of every TCP socket of this family that cryo's network
    /// namespace lists and that has any, by inode. Given only to CAP_NET_ADMIN.
    public static func tcpMD5Keys(family: Int32, object: String) throws -> [UInt32: [UInt8]] {
        var found: [UInt32: [UInt8]] = [:]
        // The kernel adds the keys only to answers that carry TCP_INFO (INET_DIAG_INFO asked for).
        try inetAttributes(family: family, protocol: CRYO_IPPROTO_TCP, extensions: UInt8(1 << (INET_DIAG_INFO - 1)), object: object) { inode, type, value in
            if type == Int(INET_DIAG_MD5SIG) { found[inode, default: []] += value }
        }
        return found
    }

    /// Each attribute (type, value) of every AF_INET/AF_INET6 socket of this protocol cryo's network namespace lists.
    private static func inetAttributes(family: Int32, protocol: Int32, extensions: UInt8 = 0, object: String,
                                       _ each: (UInt32, Int, ArraySlice<UInt8>) -> Void) throws {
        var request = inet_diag_req_v2()
        request.idiag_ext = extensions
        request.sdiag_family = UInt8(family)
        request.sdiag_protocol = UInt8(`protocol`)
        request.idiag_states = ~0
        let call = "sock_diag(\(family == AF_INET6 ? "AF_INET6" : "AF_INET"))"
        try exchange(withUnsafeBytes(of: request) { Array($0) }, call: call, dump: true, object: object) { payload in
            let size = MemoryLayout<inet_diag_msg>.size
            guard payload.count >= size else { return true }
            let m = payload.withUnsafeBytes { $0.loadUnaligned(as: inet_diag_msg.self) }
            let inode = m.idiag_inode
            each(inode, 0, [])
            var offset = size
            while offset + 4 <= payload.count {
                let length = Int(payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt16.self) })
                let type = payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self) } & CRYO_NLA_TYPE_MASK
                guard length >= 4, offset + length <= payload.count else { break }
                each(inode, Int(type), payload[(offset + 4)..<(offset + length)])
                offset += (length + 3) & ~3
            }
            return true
        }
    }

    /// Flags (NDIAG_FLAG_*: bit 0 a dump the kernel has not finished sending) of the bound AF_NETLINK
    /// socket with this inode, from a dump of cryo's network namespace; nil when it is not there.
    public static func netlinkFlags(protocol: Int32, inode: UInt32, object: String) throws -> UInt32? {
        var request = netlink_diag_req()
        request.sdiag_family = UInt8(AF_NETLINK)
        request.sdiag_protocol = UInt8(truncatingIfNeeded: `protocol`)
        request.ndiag_show = UInt32(NDIAG_SHOW_FLAGS)
        var found: UInt32? = nil
        try exchange(withUnsafeBytes(of: request) { Array($0) }, call: "sock_diag(AF_NETLINK)", dump: true, object: object) { payload in
            let size = MemoryLayout<netlink_diag_msg>.size
            guard payload.count >= size else { return true }
            let m = payload.withUnsafeBytes { $0.loadUnaligned(as: netlink_diag_msg.self) }
            guard m.ndiag_ino == inode else { return true }
            found = 0
            var offset = size
            while offset + 4 <= payload.count {
                let length = Int(payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt16.self) })
                let type = payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self) } & CRYO_NLA_TYPE_MASK
                guard length >= 4, offset + length <= payload.count else { break }
                if Int(type) == Int(NETLINK_DIAG_FLAGS), length >= 8 {
                    found = payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self) }
                }
                offset += (length + 3) & ~3
            }
            return false
        }
        return found
    }

    /// The AF_PACKET socket with this inode as sock_diag lists it (PACKET_DIAG_*: info, memberships,
    /// rings, fanout), from a dump of cryo's network namespace; nil when it is not there.
    public static func packetSocket(inode: UInt32, object: String) throws -> PacketSocketDiag? {
        var request = packet_diag_req()
        request.sdiag_family = UInt8(AF_PACKET)
        request.pdiag_show = UInt32(PACKET_SHOW_INFO | PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG | PACKET_SHOW_FANOUT)
        var found: PacketSocketDiag? = nil
        try exchange(withUnsafeBytes(of: request) { Array($0) }, call: "sock_diag(AF_PACKET)", dump: true, object: object) { payload in
            let size = MemoryLayout<packet_diag_msg>.size
            guard payload.count >= size else { return true }
            let m = payload.withUnsafeBytes { $0.loadUnaligned(as: packet_diag_msg.self) }
            guard m.pdiag_ino == inode else { return true }
            var diag = PacketSocketDiag(type: m.pdiag_type, protocolNumber: m.pdiag_num)
            var offset = size
            while offset + 4 <= payload.count {
                let length = Int(payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt16.self) })
                let type = payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self) } & CRYO_NLA_TYPE_MASK
                guard length >= 4, offset + length <= payload.count else { break }
                let data = Array(payload[(offset + 4)..<(offset + length)])
                switch Int(type) {
                case Int(PACKET_DIAG_INFO) where data.count >= MemoryLayout<packet_diag_info>.size:
                    diag.info = data.withUnsafeBytes { $0.loadUnaligned(as: packet_diag_info.self) }
                case Int(PACKET_DIAG_MCLIST):
                    let one = MemoryLayout<packet_diag_mclist>.size
                    diag.memberships = (0..<data.count / one).map { i in data.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: i * one, as: packet_diag_mclist.self) } }
                case Int(PACKET_DIAG_RX_RING) where data.count >= MemoryLayout<packet_diag_ring>.size:
                    diag.receiveRing = data.withUnsafeBytes { $0.loadUnaligned(as: packet_diag_ring.self) }
                case Int(PACKET_DIAG_TX_RING) where data.count >= MemoryLayout<packet_diag_ring>.size:
                    diag.sendRing = data.withUnsafeBytes { $0.loadUnaligned(as: packet_diag_ring.self) }
                case Int(PACKET_DIAG_FANOUT) where data.count >= 4: diag.fanout = data.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
                default: break
                }
                offset += (length + 3) & ~3
            }
            found = diag
            return false
        }
        return found
    }

    /// Sends a SOCK_DIAG_BY_FAMILY request and hands the payload of each answer to `body` until it returns false.
    private static func exchange(_ request: [UInt8], call: String, dump: Bool, object: String, _ body: ([UInt8]) throws -> Bool) throws {
        let netlink = FileDescriptor(rawValue: try returnOrThrow(
            socket(AF_NETLINK, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), NETLINK_SOCK_DIAG), "socket(AF_NETLINK)", object: object))
        defer { try? netlink.close() }
        var header = nlmsghdr()
        header.nlmsg_len = UInt32(MemoryLayout<nlmsghdr>.size + request.count)
        header.nlmsg_type = UInt16(SOCK_DIAG_BY_FAMILY)
        header.nlmsg_flags = UInt16(NLM_F_REQUEST) | (dump ? CRYO_NLM_F_DUMP : 0)
        let message = withUnsafeBytes(of: header) { Array($0) } + request
        var kernel = sockaddr_nl()
        kernel.nl_family = sa_family_t(AF_NETLINK)
        _ = try retryingEINTR(call, object: object) {
            message.withUnsafeBytes { bytes in
                withUnsafePointer(to: &kernel) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(netlink.rawValue, bytes.baseAddress, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
                    }
                }
            }
        }
        // Room for a reply with a name and one u32 per pending connection of a big backlog.
        var reply = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let length = try retryingEINTR(call, object: object) {
                reply.withUnsafeMutableBytes { recv(netlink.rawValue, $0.baseAddress, $0.count, 0) }
            }
            if length == 0 { return }
            var offset = 0
            let headerSize = MemoryLayout<nlmsghdr>.size
            while offset + headerSize <= length {
                let h = reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: nlmsghdr.self) }
                guard Int(h.nlmsg_len) >= headerSize, offset + Int(h.nlmsg_len) <= length else {
                    throw SyscallError(call, errno: .protocolError, object: object)
                }
                switch Int32(h.nlmsg_type) {
                case NLMSG_DONE:
                    return
                case NLMSG_ERROR:
                    let error = reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + headerSize, as: Int32.self) }
                    throw SyscallError(call, errno: error < 0 ? Errno(rawValue: -error) : .protocolError, object: object)
                case Int32(SOCK_DIAG_BY_FAMILY):
                    let payload = Array(reply[(offset + headerSize)..<(offset + Int(h.nlmsg_len))])
                    // A lookup answers once; a dump is read to its end (NLMSG_DONE) even when `body` has what it wanted.
                    if !(try body(payload)) && !dump { return }
                default:
                    if !dump { throw SyscallError(call, errno: .protocolError, object: object) }
                }
                offset += (Int(h.nlmsg_len) + 3) & ~3
            }
            if !dump { return }
        }
    }

    /// A unix_diag_msg and its attributes.
    private static func parse(_ payload: [UInt8]) -> UnixSocketDiag? {
        let messageSize = MemoryLayout<unix_diag_msg>.size
        guard payload.count >= messageSize else { return nil }
        let m = payload.withUnsafeBytes { $0.loadUnaligned(as: unix_diag_msg.self) }
        var diag = UnixSocketDiag(inode: m.udiag_ino, type: UInt32(m.udiag_type), state: UInt32(m.udiag_state))
        var offset = messageSize
        while offset + 4 <= payload.count {
            let attributeLength = Int(payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt16.self) })
            let type = payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self) } & CRYO_NLA_TYPE_MASK
            guard attributeLength >= 4, offset + attributeLength <= payload.count else { break }
            let data = Array(payload[(offset + 4)..<(offset + attributeLength)])
            func u32(_ at: Int) -> UInt32 { data.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: UInt32.self) } }
            switch Int(type) {
            case Int(UNIX_DIAG_NAME):
                guard data.count <= 108 else { return nil }
                diag.name = data
            case Int(UNIX_DIAG_VFS) where data.count >= 8:
                diag.file = (u32(0), FileObjects.deviceNumber(kernelEncoded: UInt64(u32(4))))
            case Int(UNIX_DIAG_PEER) where data.count >= 4:
                diag.peer = u32(0)
            case Int(UNIX_DIAG_ICONS):
                diag.pending = UInt32(data.count / 4)
                diag.icons = (0..<data.count / 4).map { u32($0 * 4) }
            case Int(UNIX_DIAG_RQLEN) where data.count >= 8:
                diag.queues = (u32(0), u32(4))
            case Int(UNIX_DIAG_SHUTDOWN) where data.count >= 1:
                diag.shutdown = UInt32(data[0])
            default:
                break
            }
            offset += (attributeLength + 3) & ~3
        }
        return diag
    }
}
