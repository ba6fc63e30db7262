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

/// An IPv4 address with its prefix length, as `ip addr` takes it ("10.0.0.5/24").
public struct ServiceAddress: Codable, Sendable, Equatable, CustomStringConvertible {
    public var address: String
    public var prefixLength: Int
    public var description: String { "\(address)/\(prefixLength)" }

    /// "ADDR" or "ADDR/PREFIX" (IPv4).
    public static func parse(_ text: String) throws -> ServiceAddress {
        let parts = text.split(separator: "/", maxSplits: 1).map(String.init)
        var v4 = in_addr()
        guard let first = parts.first, inet_pton(AF_INET, first, &v4) == 1 else {
            if let first = parts.first, first.contains(":") {
                throw CryoError("\(text): moving an IPv6 address is not supported (no unsolicited neighbour advertisement yet)")
            }
            throw CryoError("\(text): not an IPv4 address")
        }
        var prefix = 32
        if parts.count == 2 {
            guard let given = Int(parts[1]), (1...32).contains(given) else { throw CryoError("\(text): bad prefix length") }
            prefix = given
        }
        return ServiceAddress(address: first, prefixLength: prefix)
    }

    /// The address's 4 bytes.
    var bytes: [UInt8] {
        var v4 = in_addr()
        _ = inet_pton(AF_INET, address, &v4)
        return withUnsafeBytes(of: v4) { Array($0) }
    }
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

    /// The interface that holds `address` and its prefix length there, or nil (`ip -o -4 addr show`).
    static func holder(of address: String, inNetworkNamespaceOf pid: pid_t?, object: String) throws -> (device: String, prefixLength: Int)? {
        let output = try run(["ip", "-o", "-4", "addr", "show"], inNetworkNamespaceOf: pid, object: object)
        for line in output.split(separator: "\n") {
            // "3: eth0    inet 10.0.0.5/24 brd 10.0.0.255 scope global secondary eth0\       valid_lft ..."
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 4, fields[2] == "inet" else { continue }
            let cidr = fields[3].split(separator: "/")
            guard cidr.count == 2, cidr[0] == address, let prefix = Int(cidr[1]) else { continue }
            return (String(fields[1].split(separator: "@").first ?? fields[1]), prefix)
        }
        return nil
    }
}

/// Gratuitous ARP: an ARP request for the address from the address, broadcast on the interface.
/// A peer that knows the address updates its neighbour entry to our hardware address (the kernel
/// overrides its lock time for these), so its next packet comes here, not to the old host.
public enum NeighbourAnnouncement {
    /// The ARP payload (after the Ethernet header, which the packet socket adds).
    static func gratuitousARP(address: [UInt8], hardware: [UInt8]) -> [UInt8] {
        var frame: [UInt8] = [0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]  // Ethernet, IPv4, lengths, request
        frame += hardware + address       // sender: us
        frame += [0, 0, 0, 0, 0, 0] + address  // target: the same address (gratuitous)
        return frame
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
            let ethernetARP: UInt16 = 0x0806
            let fd = try Sockets.make(family: AF_PACKET, type: Int32(SOCK_DGRAM.rawValue), protocol: Int32(ethernetARP.bigEndian), object: object)
            defer { try? fd.close() }
            guard let index = Sockets.interfaceIndex(device) else { throw CryoError("\(object): there is no interface \(device)") }
            let hardware = try Sockets.hardwareAddress(fd, interface: device, object: object)
            var target = sockaddr_ll()
            target.sll_family = UInt16(AF_PACKET)
            target.sll_protocol = ethernetARP.bigEndian
            target.sll_ifindex = index
            target.sll_halen = 6
            withUnsafeMutableBytes(of: &target.sll_addr) { for i in 0..<6 { $0[i] = 0xff } }
            let frame = gratuitousARP(address: address.bytes, hardware: hardware)
            let to = SocketAddress(bytes: withUnsafeBytes(of: target) { Array($0) })
            // Twice: one lost frame must not leave a peer sending to the old host.
            for _ in 0..<2 { _ = try frame.withUnsafeBytes { try Sockets.send(fd, $0, to: to, object: object) } }
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
        try NetworkTool.run(["ip", "addr", "add", "\(address)", "dev", device], inNetworkNamespaceOf: pid,
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
        try NetworkTool.run(["ip", "addr", "add", "\(address)", "dev", device], inNetworkNamespaceOf: nil, object: "adding moved address \(address) on \(device)")
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
