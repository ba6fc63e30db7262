import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

// `migrate --move-address ADDR` with `receive --address-interface IFACE`: the
// service address the moved connections use goes with them. The source removes
// it from the tree's network namespace once the tree is frozen and its
// connections are locked; the destination adds it on IFACE (its own lock
// already in place), announces it with gratuitous ARP so the peers' neighbour
// caches point at the new host, restores the tree and unlocks. If anything
// fails, the destination takes the address off again and the source puts it
// back (and announces it again) before its tree carries on.

/// An IPv4 or IPv6 address with its prefix length, as `ip addr` takes it ("10.0.0.5/24", "fd00::5/64").
public struct ServiceAddress: Codable, Sendable, Equatable, CustomStringConvertible {
    /// In the form `ip` prints it (inet_ntop's), so it compares equal to `ip addr show`'s text.
    public var address: String
    public var prefixLength: Int
    public var description: String { "\(address)/\(prefixLength)" }
    public var isIPv6: Bool { address.contains(":") }

    /// "ADDR" or "ADDR/PREFIX"; without a prefix, the host's own (32 or 128).
    public static func parse(_ text: String) throws -> ServiceAddress {
        let parts = text.split(separator: "/", maxSplits: 1).map(String.init)
        guard let first = parts.first, let bytes = addressBytes(first) else { throw CryoError("\(text): not an IPv4 or IPv6 address") }
        let longest = bytes.count * 8
        var prefix = longest
        if parts.count == 2 {
            guard let given = Int(parts[1]), (1...longest).contains(given) else { throw CryoError("\(text): bad prefix length") }
            prefix = given
        }
        return ServiceAddress(address: canonicalText(bytes), prefixLength: prefix)
    }

    /// The address's 4 or 16 bytes.
    var bytes: [UInt8] { Self.addressBytes(address) ?? [] }

    static func addressBytes(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: v6) { Array($0) } }
        return nil
    }

    static func canonicalText(_ bytes: [UInt8]) -> String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        _ = bytes.withUnsafeBytes { inet_ntop(bytes.count == 4 ? AF_INET : AF_INET6, $0.baseAddress, &text, socklen_t(text.count)) }
        return String(cString: text)
    }

    /// `ip addr add` arguments. An IPv6 address skips duplicate address detection: it only just left
    /// the other host, and a tentative address (for a second or more) could not carry the connections.
    func addCommand(device: String) -> [String] { ["ip", "addr", "add", description, "dev", device] + (isIPv6 ? ["nodad"] : []) }
}

/// Runs `ip` (or another network tool) in a task's network namespace, or in cryo's.
enum NetworkTool {
    @discardableResult
    static func run(_ command: [String], inNetworkNamespaceOf pid: pid_t?, object: String) throws -> String {
        let result: (status: Int32, output: String)
        do {
            result = try Processes.run(command, inNetworkNamespace: pid.map { "/proc/\($0)/ns/net" })
        } catch let missing as ProgramNotFound {
            throw CryoError("\(object): \(missing)")
        }
        guard result.status == 0 else {
            let output = result.output.split(separator: "\n").first.map(String.init) ?? ""
            throw CryoError("\(object): `\(command.joined(separator: " "))` failed (exit status \(result.status)): \(output)")
        }
        return result.output
    }

    /// The interface that holds `address` (in inet_ntop's form) and its prefix length there, or nil (`ip -o addr show`).
    static func holder(of address: String, inNetworkNamespaceOf pid: pid_t?, object: String) throws -> (device: String, prefixLength: Int)? {
        let output = try run(["ip", "-o", "addr", "show"], inNetworkNamespaceOf: pid, object: object)
        for line in output.split(separator: "\n") {
            // "3: eth0    inet 10.0.0.5/24 brd 10.0.0.255 scope global secondary eth0\       valid_lft ..."
            // "3: eth0    inet6 fd00::5/64 scope global \       valid_lft ..."
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 4, fields[2] == "inet" || fields[2] == "inet6" else { continue }
            let cidr = fields[3].split(separator: "/")
            guard cidr.count == 2, cidr[0] == address, let prefix = Int(cidr[1]) else { continue }
            return (String(fields[1].split(separator: "@").first ?? fields[1]), prefix)
        }
        return nil
    }
}

/// Tells the link's peers that the address now lives at this host's hardware address, so their next
/// packet comes here, not to the old host. IPv4: gratuitous ARP, an ARP request for the address from
/// the address, broadcast (the kernel overrides a neighbour entry's lock time for these). IPv6: an
/// unsolicited neighbour advertisement with the override flag to all nodes (RFC 4861, 7.2.6).
public enum NeighbourAnnouncement {
    /// The ARP payload (after the Ethernet header, which the packet socket adds).
    static func gratuitousARP(address: [UInt8], hardware: [UInt8]) -> [UInt8] {
        var frame: [UInt8] = [0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]  // Ethernet, IPv4, lengths, request
        frame += hardware + address       // sender: us
        frame += [0, 0, 0, 0, 0, 0] + address  // target: the same address (gratuitous)
        return frame
    }

    /// The ICMPv6 message (the kernel fills in the checksum on a raw ICMPv6 socket): type 136, code 0,
    /// flags override only (not solicited, not a router), the target, and its link-layer address option.
    static func unsolicitedAdvertisement(address: [UInt8], hardware: [UInt8]) -> [UInt8] {
        var message: [UInt8] = [136, 0, 0, 0, 0x20, 0, 0, 0]
        message += address
        message += [2, 1] + hardware      // option 2: target link-layer address, 8 bytes long
        return message
    }

    /// Sends it on `device` in the network namespace of `pid` (cryo's own when nil); a thread of its own joins that namespace.
    static func announce(_ address: ServiceAddress, on device: String, inNetworkNamespaceOf pid: pid_t?) throws {
        let object = "announcing \(address.address) on \(device)"
        try FilesystemThread.run {
            if let pid {
                let namespace = try Files.open("/proc/\(pid)/ns/net", .readOnly)
                defer { try? namespace.close() }
                try Processes.joinNamespace(namespace, type: 0x4000_0000 /* CLONE_NEWNET */, name: "setns(CLONE_NEWNET)", object: object)
            }
            guard let index = Sockets.interfaceIndex(device) else { throw CryoError("\(object): there is no interface \(device)") }
            let (fd, frame, to) = address.isIPv6
                ? try advertisementSocket(address, interface: index, device: device, object: object)
                : try arpSocket(address, interface: index, device: device, object: object)
            defer { try? fd.close() }
            // Twice: one lost frame must not leave a peer sending to the old host.
            for _ in 0..<2 { _ = try frame.withUnsafeBytes { try Sockets.send(fd, $0, to: to, object: object) } }
        }
    }

    private static func arpSocket(_ address: ServiceAddress, interface index: Int32, device: String,
                                  object: String) throws -> (FileDescriptor, [UInt8], SocketAddress) {
        let ethernetARP: UInt16 = 0x0806
        let fd = try Sockets.make(family: AF_PACKET, type: Int32(SOCK_DGRAM.rawValue), protocol: Int32(ethernetARP.bigEndian), object: object)
        do {
            let hardware = try Sockets.hardwareAddress(fd, interface: device, object: object)
            var target = sockaddr_ll()
            target.sll_family = UInt16(AF_PACKET)
            target.sll_protocol = ethernetARP.bigEndian
            target.sll_ifindex = index
            target.sll_halen = 6
            withUnsafeMutableBytes(of: &target.sll_addr) { for i in 0..<6 { $0[i] = 0xff } }
            return (fd, gratuitousARP(address: address.bytes, hardware: hardware), SocketAddress(bytes: withUnsafeBytes(of: target) { Array($0) }))
        } catch {
            try? fd.close()
            throw error
        }
    }

    private static func advertisementSocket(_ address: ServiceAddress, interface index: Int32, device: String,
                                            object: String) throws -> (FileDescriptor, [UInt8], SocketAddress) {
        let fd = try Sockets.make(family: AF_INET6, type: Int32(SOCK_RAW.rawValue), protocol: Int32(IPPROTO_ICMPV6), object: object)
        do {
            let hardware = try Sockets.hardwareAddress(fd, interface: device, object: object)
            // Receivers drop neighbour discovery that crossed a router: the hop limit must be 255.
            try Sockets.setOption(fd, Int32(IPPROTO_IPV6), IPV6_MULTICAST_HOPS, Int32(255), name: "IPV6_MULTICAST_HOPS", object: object)
            try Sockets.setOption(fd, Int32(IPPROTO_IPV6), IPV6_MULTICAST_IF, index, name: "IPV6_MULTICAST_IF", object: object)
            // From the moved address itself (added without DAD, so usable at once), not a link-local one that may still be tentative.
            try Sockets.bind(fd, to: .inet(address: address.bytes, port: 0, scope: UInt32(index)), object: object)
            let allNodes: [UInt8] = [0xff, 0x02] + [UInt8](repeating: 0, count: 13) + [1]
            return (fd, unsolicitedAdvertisement(address: address.bytes, hardware: hardware), .inet(address: allNodes, port: 0, scope: UInt32(index)))
        } catch {
            try? fd.close()
            throw error
        }
    }
}

/// The source's side: where the address is, taking it away, putting it back.
final class SourceAddress: @unchecked Sendable {
    let address: ServiceAddress
    let device: String
    let pid: pid_t
    private var removed = false

    /// Finds `text` ("ADDR", a prefix length given is checked) among the addresses of the tree's network namespace.
    init(_ text: String, treePid pid: pid_t) throws {
        let given = try ServiceAddress.parse(text)
        let object = "--move-address \(given.address)"
        guard let (device, prefix) = try NetworkTool.holder(of: given.address, inNetworkNamespaceOf: pid, object: object) else {
            throw CryoError("\(object): pid \(pid)'s network namespace has no such address")
        }
        if text.contains("/") && prefix != given.prefixLength {
            throw CryoError("\(object): it is \(given.address)/\(prefix) on \(device), not /\(given.prefixLength)")
        }
        address = ServiceAddress(address: given.address, prefixLength: prefix)
        self.device = device
        self.pid = pid
    }

    /// After the freeze, the connections locked: packets to the address reach this host no more.
    func remove() throws {
        try NetworkTool.run(["ip", "addr", "del", "\(address)", "dev", device], inNetworkNamespaceOf: pid,
                            object: "removing \(address) from \(device) of pid \(pid)'s network namespace")
        removed = true
    }

    /// The migration failed: the address comes back, announced (the destination may have announced it already).
    func putBack() throws {
        guard removed else { return }
        try NetworkTool.run(address.addCommand(device: device), inNetworkNamespaceOf: pid,
                            object: "putting \(address) back on \(device) of pid \(pid)'s network namespace")
        removed = false
        try NeighbourAnnouncement.announce(address, on: device, inNetworkNamespaceOf: pid)
    }
}

/// The destination's side, in cryo's network namespace.
final class DestinationAddress {
    let address: ServiceAddress
    let device: String
    private var added = false

    /// Refused at hello (before the source freezes anything): no interface, or the address is here already.
    init(_ address: ServiceAddress, device: String?) throws {
        guard let device else {
            throw CryoError("the source moves \(address) here: start cryo receive with --address-interface IFACE to say where it goes")
        }
        guard Sockets.interfaceIndex(device) != nil else { throw CryoError("--address-interface \(device): there is no such interface here") }
        if let (holder, _) = try NetworkTool.holder(of: address.address, inNetworkNamespaceOf: nil, object: "moved address \(address)") {
            throw CryoError("moved address \(address): \(holder) holds it here already")
        }
        self.address = address
        self.device = device
    }

    /// Before the sockets are rebuilt (the lock is in place): the address, announced.
    func add() throws {
        try NetworkTool.run(address.addCommand(device: device), inNetworkNamespaceOf: nil, object: "adding moved address \(address) on \(device)")
        added = true
        try NeighbourAnnouncement.announce(address, on: device, inNetworkNamespaceOf: nil)
    }

    /// The restore failed: the address goes (the source puts it back).
    func remove() {
        guard added else { return }
        _ = try? NetworkTool.run(["ip", "addr", "del", "\(address)", "dev", device], inNetworkNamespaceOf: nil, object: "removing moved address \(address)")
        added = false
    }
}
