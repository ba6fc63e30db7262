import CryoSystem
import Glibc
import SystemPackage

// What every socket kind asks first (its family, type and protocol) and how a
// refusal names a socket cryo does not support, whatever its family.

enum SocketDescription {
    static func option(_ fd: FileDescriptor, _ name: Int32, _ object: String) throws -> Int32 {
        try Sockets.option(fd, SOL_SOCKET, name, name: "\(name)", object: object)
    }

    static func familyName(_ family: Int32) -> String {
        let names: [Int32: String] = [2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK", 17: "AF_PACKET", 40: "AF_VSOCK",
                                      4: "AF_IPX", 5: "AF_APPLETALK", 9: "AF_X25", 15: "AF_KEY", 31: "AF_BLUETOOTH",
                                      38: "AF_ALG", 44: "AF_XDP", 45: "AF_MCTP"]
        if let name = names[family] { return "an \(name)" }
        return "a family \(family)"
    }

    /// "an AF_NETLINK socket (SOCK_RAW, NETLINK_ROUTE, socket:[N])": what a refusal names.
    static func describe(_ fd: FileDescriptor, family: Int32, link: String, pid: pid_t) -> String {
        let types: [Int32: String] = [1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 4: "SOCK_RDM", 5: "SOCK_SEQPACKET", 10: "SOCK_PACKET"]
        var parts: [String] = []
        if let type = try? option(fd, SO_TYPE, link) { parts.append(types[type] ?? "type \(type)") }
        if let number = try? option(fd, SO_PROTOCOL, link) {
            switch family {
            case 16:
                let netlink: [Int32: String] = [0: "NETLINK_ROUTE", 2: "NETLINK_USERSOCK", 4: "NETLINK_SOCK_DIAG", 6: "NETLINK_XFRM",
                                                9: "NETLINK_AUDIT", 12: "NETLINK_NETFILTER", 15: "NETLINK_KOBJECT_UEVENT", 16: "NETLINK_GENERIC"]
                parts.append(netlink[number] ?? "netlink protocol \(number)")
            case 17:
                // SO_PROTOCOL says 0; /proc/PID/net/packet has the Ethernet protocol given to socket() or bind.
                let ethertype = PacketSocketState.ethertype(pid: pid, link: link) ?? UInt16(truncatingIfNeeded: number).bigEndian
                let names: [UInt16: String] = [0x0003: "ETH_P_ALL", 0x0800: "ETH_P_IP", 0x86DD: "ETH_P_IPV6", 0x0806: "ETH_P_ARP", 0: "no protocol"]
                parts.append(names[ethertype] ?? "ethertype 0x\(String(ethertype, radix: 16))")
            case 2, 10:
                let inet: [Int32: String] = [0: "IPPROTO_IP", 1: "IPPROTO_ICMP", 6: "IPPROTO_TCP", 17: "IPPROTO_UDP", 58: "IPPROTO_ICMPV6",
                                             132: "IPPROTO_SCTP", 136: "IPPROTO_UDPLITE", 255: "IPPROTO_RAW", 262: "IPPROTO_MPTCP"]
                parts.append(inet[number] ?? "protocol \(number)")
            default:
                parts.append("protocol \(number)")
            }
        }
        parts.append(link)
        return "\(familyName(family)) socket (\(parts.joined(separator: ", ")))"
    }
}
