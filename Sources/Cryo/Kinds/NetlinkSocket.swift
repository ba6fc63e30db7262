import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// An AF_NETLINK socket: its protocol, the port id it is bound to, the
/// multicast groups it joined, where it is connected, and its options. The
/// kernel side keeps no other state worth keeping, except a dump the kernel
/// is still sending and messages not read yet: those are refused.
public struct NetlinkSocketState: DescriptorKind {
    static let name = "netlinkSocket"

    public var inode: UInt64
    /// SOCK_RAW or SOCK_DGRAM (the same to netlink).
    public var type: Int32
    public var protocolNumber: Int32
    /// 0: not bound yet (the kernel picks one at the first send).
    public var portID: UInt32
    /// NETLINK_LIST_MEMBERSHIPS: one bit a group, group 1 first.
    public var groups: [UInt32]
    /// connect(): the peer's port id and group.
    public var peerPortID: UInt32
    public var peerGroup: UInt32
    /// Integer options by name, as getsockopt reported them.
    public var options: [String: Int32]
    /// A classic BPF filter (SO_ATTACH_FILTER: libudev's monitors have one) and SO_LOCK_FILTER; nil in older images.
    public var filter: Data? = nil
    public var filterLocked: Bool? = nil
    /// SO_RCVTIMEO and SO_SNDTIMEO in microseconds, when set.
    public var receiveTimeout: Int64? = nil
    public var sendTimeout: Int64? = nil

    /// (name, level, option) of the integer options kept.
    static let optionTable: [(String, Int32, Int32)] = [
        ("NETLINK_PKTINFO", CRYO_SOL_NETLINK, CRYO_NETLINK_PKTINFO), ("NETLINK_BROADCAST_ERROR", CRYO_SOL_NETLINK, CRYO_NETLINK_BROADCAST_ERROR),
        ("NETLINK_NO_ENOBUFS", CRYO_SOL_NETLINK, CRYO_NETLINK_NO_ENOBUFS), ("NETLINK_LISTEN_ALL_NSID", CRYO_SOL_NETLINK, CRYO_NETLINK_LISTEN_ALL_NSID),
        ("NETLINK_CAP_ACK", CRYO_SOL_NETLINK, CRYO_NETLINK_CAP_ACK), ("NETLINK_EXT_ACK", CRYO_SOL_NETLINK, CRYO_NETLINK_EXT_ACK),
        ("NETLINK_GET_STRICT_CHK", CRYO_SOL_NETLINK, CRYO_NETLINK_GET_STRICT_CHK),
        ("SO_PASSCRED", CRYO_SOL_SOCKET, CRYO_SO_PASSCRED), ("SO_PASSSEC", CRYO_SOL_SOCKET, 34), ("SO_SNDBUF", CRYO_SOL_SOCKET, CRYO_SO_SNDBUF),
        ("SO_RCVBUF", CRYO_SOL_SOCKET, CRYO_SO_RCVBUF), ("SO_BUF_LOCK", CRYO_SOL_SOCKET, CRYO_SO_BUF_LOCK),
    ]

    var groupNumbers: [Int] {
        groups.enumerated().flatMap { word, bits in (0..<32).filter { bits & (1 << $0) != 0 }.map { word * 32 + $0 + 1 } }
    }

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> NetlinkSocketState? {
        guard p.stat.st_mode & S_IFMT == S_IFSOCK else { return nil }
        let fd = p.handle
        guard try SocketDescription.option(fd, SO_DOMAIN, p.object) == AF_NETLINK else { return nil }
        let what = "\(p.object): \(SocketDescription.describe(fd, family: AF_NETLINK, link: p.link, pid: p.pid))"
        let type = try SocketDescription.option(fd, SO_TYPE, what)
        let protocolNumber = try SocketDescription.option(fd, SO_PROTOCOL, what)
        // Messages not read yet would have to come from the kernel again.
        var byte: UInt8 = 0
        if let message = try withUnsafeMutableBytes(of: &byte, { try Sockets.peek(fd, into: $0, truncate: true, object: what) }) {
            throw CryoError("\(what) holds a message not read yet (\(message.length) bytes); not supported")
        }
        let local = try Sockets.name(fd, peer: false, object: what).bytes
        let peer = try Sockets.name(fd, peer: true, object: what).bytes
        func word(_ bytes: [UInt8], _ at: Int) -> UInt32 {
            bytes.count >= at + 4 ? bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: UInt32.self) } : 0
        }
        let portID = word(local, 4)
        if portID != 0 {
            // Only sock_diag tells whether a dump (NLM_F_DUMP) is still being sent: its rest would be lost.
            guard let flags = try SockDiag.netlinkFlags(protocol: protocolNumber, inode: UInt32(truncatingIfNeeded: p.stat.st_ino), object: what) else {
                throw CryoError("\(what) is not in cryo's network namespace; not supported")
            }
            if flags & 1 != 0 {
                throw CryoError("\(what) is in the middle of a dump (NLM_F_DUMP) the kernel has not finished sending; not supported")
            }
        }
        var groups = [UInt8](repeating: 0, count: 64)
        var length = try Sockets.option(fd, CRYO_SOL_NETLINK, CRYO_NETLINK_LIST_MEMBERSHIPS, into: &groups, name: "NETLINK_LIST_MEMBERSHIPS", object: what)
        if length > groups.count {
            groups = [UInt8](repeating: 0, count: length)
            length = try Sockets.option(fd, CRYO_SOL_NETLINK, CRYO_NETLINK_LIST_MEMBERSHIPS, into: &groups, name: "NETLINK_LIST_MEMBERSHIPS", object: what)
        }
        let words = (0..<min(length, groups.count) / 4).map { word(groups, $0 * 4) }
        var options: [String: Int32] = [:]
        for (name, level, option) in optionTable {
            options[name] = try Sockets.option(fd, level, option, name: name, object: what)
        }
        let filter = try SocketFilter.dump(fd, what: what)
        let (receiveTimeout, sendTimeout) = try SocketTimeouts.dump(fd, what: what)
        return NetlinkSocketState(inode: UInt64(p.stat.st_ino), type: type, protocolNumber: protocolNumber, portID: portID,
                                  groups: words.last == 0 ? Array(words.reversed().drop { $0 == 0 }.reversed()) : words,
                                  peerPortID: word(peer, 4), peerGroup: word(peer, 8), options: options,
                                  filter: filter?.program, filterLocked: filter?.locked, receiveTimeout: receiveTimeout, sendTimeout: sendTimeout)
    }

    public func summary(_ file: FileTable.OpenFile) -> String {
        var text = "netlink socket:[\(inode)] protocol \(protocolNumber)"
        if portID != 0 { text += " port \(portID)" }
        let numbers = groupNumbers
        if !numbers.isEmpty { text += " groups \(numbers.map(String.init).joined(separator: ","))" }
        if peerPortID != 0 || peerGroup != 0 { text += " -> port \(peerPortID) group \(peerGroup)" }
        return text
    }

    func validate() -> String? {
        type == Int32(SOCK_RAW.rawValue) || type == Int32(SOCK_DGRAM.rawValue) ? nil : "a netlink socket of type \(type)"
    }

    private static func address(port: UInt32, group: UInt32) -> SocketAddress {
        var bytes = [UInt8](repeating: 0, count: 12)
        bytes.withUnsafeMutableBytes {
            $0.storeBytes(of: UInt16(AF_NETLINK), as: UInt16.self)
            $0.storeBytes(of: port, toByteOffset: 4, as: UInt32.self)
            $0.storeBytes(of: group, toByteOffset: 8, as: UInt32.self)
        }
        return SocketAddress(bytes: bytes)
    }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        let what = "\(object) (\(summary(file)))"
        let fd = try Sockets.make(family: AF_NETLINK, type: type, protocol: protocolNumber, object: what)
        do {
            // The filter first: no message it would drop slips in once bound or in a group.
            if let filter, !filter.isEmpty { try Sockets.attachFilter(fd, program: Array(filter), object: what) }
            if portID != 0 { try Sockets.bind(fd, to: Self.address(port: portID, group: 0), object: "\(what) to port \(portID)") }
            for group in groupNumbers {
                try Sockets.setOption(fd, CRYO_SOL_NETLINK, CRYO_NETLINK_ADD_MEMBERSHIP, Int32(group), name: "NETLINK_ADD_MEMBERSHIP",
                                      object: "\(what) group \(group)")
            }
            if peerPortID != 0 || peerGroup != 0 {
                try Sockets.connect(fd, to: Self.address(port: peerPortID, group: peerGroup), object: what)
            }
            for (name, level, option) in Self.optionTable where !["SO_SNDBUF", "SO_RCVBUF", "SO_BUF_LOCK"].contains(name) {
                guard let wanted = options[name], try Sockets.option(fd, level, option, name: name, object: what) != wanted else { continue }
                try Sockets.setOption(fd, level, option, wanted, name: name, object: what)
            }
            try SocketTimeouts.restore(fd, receive: receiveTimeout, send: sendTimeout, what: what)
            if filterLocked == true { try Sockets.setOption(fd, CRYO_SOL_SOCKET, CRYO_SO_LOCK_FILTER, Int32(1), name: "SO_LOCK_FILTER", object: what) }
            try SocketBuffers.restore(fd, options: options, what: what)
            try FileObjects.setStatusFlags(fd, Int32(bitPattern: file.flags) & O_NONBLOCK, object: what)
        } catch {
            try? fd.close()
            throw error
        }
        return fd
    }
}
