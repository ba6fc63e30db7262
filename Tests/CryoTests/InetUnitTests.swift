// What dump reads of inet sockets without root: the multicast group lists of
// /proc/net/igmp and igmp6, and the option record as the image keeps it.

@testable import Cryo
import Foundation
import Testing

@Suite("inet socket options")
struct InetUnitTests {
    @Test("/proc/net/igmp: groups under their interface, each address from its host-order word")
    func igmp() {
        let text = "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter\n"
            + "1\tlo        :     2      V3\n\t\t\t\t030201EF     1 0:00000000\t\t0\n\t\t\t\t010000E0     1 0:00000000\t\t0\n"
            + "3\teth0      :     1      V3\n\t\t\t\t0A0B0CE8     1 0:00000000\t\t0\n"
        let groups = InetSocketSettings.parseIGMP(text)
        #expect(groups.map { $0.0 } == [1, 1, 3])
        #expect(groups.map { $0.1 } == ["lo", "lo", "eth0"])
        #expect(groups.map { $0.2 } == [[239, 1, 2, 3], [224, 0, 0, 1], [232, 12, 11, 10]])
    }

    @Test("/proc/net/igmp6: index, interface and the 16 address bytes in order")
    func igmp6() {
        let text = "1    lo              ff150000000000000000000000001234     1 00000004 0\n"
            + "2    eth0            ff020000000000000000000000000001     1 0000000C 0\n"
        let groups = InetSocketSettings.parseIGMP6(text)
        #expect(groups.count == 2)
        #expect(groups.first?.0 == 1 && groups.first?.1 == "lo")
        #expect(groups.first?.2 == [0xff, 0x15] + [UInt8](repeating: 0, count: 12) + [0x12, 0x34])
        #expect(InetSocketSettings.parseIGMP6("garbage\n1 lo ff15\n").isEmpty)
    }

    @Test("settings survive the image's JSON; an image without them reads as none")
    func settingsRecord() throws {
        var s = InetSocketSettings()
        #expect(s.isEmpty)
        s.device = "lo"
        s.linger = [1, 3]
        s.filter = Data([6, 0, 0, 0, 0xff, 0xff, 0, 0])
        s.filterLocked = true
        s.memberships = [.init(group: "232.1.1.1", device: "lo", include: true, sources: ["10.9.8.7"])]
        s.shutdown = 2
        s.maxPacingRate = 5_000_000_000
        s.fastOpenKey = Data(repeating: 0x42, count: 32)
        s.icmp6Filter = Data(repeating: 0xff, count: 32)
        let decoded = try JSONDecoder().decode(InetSocketSettings.self, from: try JSONEncoder().encode(s))
        #expect(decoded == s)
        #expect(s.summary == "device lo, filter of 1 instruction, locked, 1 multicast group, shut down for writing, "
                + "pacing at most 5000000000 B/s, a Fast Open key of its own, an ICMPv6 type filter")
        let old = try JSONDecoder().decode(InetSocketSettings.self, from: Data(#"{"device":"lo"}"#.utf8))
        #expect(old.maxPacingRate == nil && old.fastOpenKey == nil && old.icmp6Filter == nil)
        #expect(InetAddress(address: "::1")?.isSpecificIPv6 == true && InetAddress(address: "::ffff:127.0.0.1")?.isSpecificIPv6 == false)
        #expect(InetAddress(address: "not an address") == nil)
    }

    @Test("/proc/net/tcp: handshakes in SYN_RECV counted for the listener whose address and port they reach")
    func synReceivedCount() throws {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
            + "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1\n"
            + "   1: 0100007F:1F90 0100007F:A000 03 00000000:00000000 02:00000163 00000002     0        0 0 0\n"
            + "   2: 0200007F:1F90 0100007F:A001 03 00000000:00000000 02:00000163 00000002     0        0 0 0\n"
            + "   3: 0100007F:1F91 0100007F:A002 03 00000000:00000000 02:00000163 00000002     0        0 0 0\n"
            + "   4: 0100007F:1F90 0100007F:A003 01 00000000:00000000 00:00000000 00000000     0        0 99 1\n"
        let loopback = try #require(InetAddress(.inet(address: [127, 0, 0, 1], port: 8080)))
        #expect(InetSocketState.synReceived(in: text, listener: loopback) == 1)
        #expect(InetSocketState.synReceived(in: text, listener: .wildcard(ipv6: false, port: 8080)) == 2)
        #expect(InetSocketState.synReceived(in: text, listener: .wildcard(ipv6: true, port: 8081)) == 1)
        let mapped = try #require(InetAddress(.inet(address: [UInt8](repeating: 0, count: 10) + [0xff, 0xff, 127, 0, 0, 1], port: 8080)))
        #expect(InetSocketState.synReceived(in: text, listener: mapped) == 1)
        #expect(InetSocketState.synReceived(in: "", listener: loopback) == 0)
    }

    @Test("TCP MD5 keys: sock_diag's entries parsed, TCP_MD5SIG_EXT requests built (IPv4-mapped on an IPv6 socket)")
    func md5Keys() throws {
        var entry = [UInt8](repeating: 0, count: 100)
        entry[0] = UInt8(AF_INET); entry[1] = 8; entry[2] = 4
        entry[4...7] = [127, 0, 0, 0]
        entry[20...23] = [0x61, 0x62, 0x63, 0x64]
        let keys = try #require(InetSocketSettings.parseMD5Keys(entry))
        #expect(keys == [.init(address: "127.0.0.0", prefixLength: 8, key: Data("abcd".utf8))])
        #expect(InetSocketSettings.parseMD5Keys(Array(entry.prefix(99))) == nil)
        let v4 = try #require(InetSocketSettings.md5Request(keys[0], ipv6Socket: false))
        #expect(v4.count == 216 && v4[0] == UInt8(AF_INET) && Array(v4[4...7]) == [127, 0, 0, 0])
        #expect(v4[128] == 1 && v4[129] == 8 && v4[130] == 4 && Array(v4[136...139]) == Array("abcd".utf8))
        let mapped = try #require(InetSocketSettings.md5Request(keys[0], ipv6Socket: true))
        #expect(mapped[0] == UInt8(AF_INET6) && Array(mapped[8...23]) == [UInt8](repeating: 0, count: 10) + [0xff, 0xff, 127, 0, 0, 0])
        #expect(mapped[129] == 8, "an IPv4 key's prefix stays an IPv4 one")
        let full = InetSocketSettings.md5Request(.init(address: "::1", prefixLength: 128, key: Data([1])), ipv6Socket: true)
        #expect(full?[128] == 0 && full?[0] == UInt8(AF_INET6))
    }

    @Test("SO_TIMESTAMPING is kept unless it counts ids (OPT_ID)")
    func timestampingRefusal() {
        #expect(SocketTimestamping.refusal(0x18) == nil)
        #expect(SocketTimestamping.refusal(0x18 | 1 << 7)?.contains("SOF_TIMESTAMPING_OPT_ID") == true)
    }

    @Test("a TCP upper-layer protocol is refused, kernel TLS saying why; none passes")
    func ulpRefusal() {
        #expect(InetSocketSettings.ulpRefusal("") == nil)
        let tls = InetSocketSettings.ulpRefusal("tls") ?? ""
        #expect(tls.contains("kernel TLS") && tls.contains("TLS_TX/TLS_RX") && tls.hasSuffix("not supported"))
        #expect(InetSocketSettings.ulpRefusal("espintcp") == "has the upper-layer protocol \"espintcp\" (TCP_ULP); not supported")
    }

    @Test("the option table: an IPv6 socket keeps the IPv4 level too (not a raw one), multicast only off TCP")
    func optionTable() {
        func names(_ ipv6: Bool, _ proto: InetSocketState.Proto) -> Set<String> {
            Set(InetIntegerOption.table(ipv6: ipv6, proto: proto).map(\.name))
        }
        #expect(names(true, .udp).isSuperset(of: ["IP_TOS", "IP_TTL", "IP_MULTICAST_TTL", "IP_MULTICAST_LOOP", "IP_MULTICAST_IF",
                                                   "IPV6_MULTICAST_IF", "SO_INCOMING_CPU"]))
        #expect(names(true, .tcp).isSuperset(of: ["IP_TOS", "IP_TTL", "IP_MINTTL", "SO_TXREHASH"]))
        #expect(names(true, .tcp).isDisjoint(with: ["IP_MULTICAST_TTL", "IPV6_MULTICAST_IF", "IP_FREEBIND"]))
        #expect(names(true, .raw).isDisjoint(with: ["IP_TOS", "IP_TTL"]))
        #expect(!names(false, .udp).contains("SO_TXREHASH"))
        // IP_TOS sets the priority too: SO_PRIORITY after it, or a program's own priority is lost.
        let order = InetIntegerOption.table(ipv6: true, proto: .tcp).map(\.name)
        #expect(order.firstIndex(of: "IP_TOS")! < order.firstIndex(of: "SO_PRIORITY")!)
        // Every name once: the image keys options by name.
        for (ipv6, proto) in [(false, InetSocketState.Proto.tcp), (true, .tcp), (false, .udp), (true, .udp), (true, .raw), (false, .icmp)] {
            let all = InetIntegerOption.table(ipv6: ipv6, proto: proto, rawProtocol: 1).map(\.name)
            #expect(Set(all).count == all.count, "\(proto) ipv6 \(ipv6)")
        }
    }
}

@Suite("moved service address")
struct MovedAddressUnitTests {
    @Test("migrate --move-address: ADDR or ADDR/PREFIX, IPv4 or IPv6 in ip's spelling; junk and bad prefixes refused naming it")
    func parse() throws {
        #expect(try ServiceAddress.parse("10.0.0.5") == ServiceAddress(address: "10.0.0.5", prefixLength: 32))
        #expect(try ServiceAddress.parse("10.0.0.5/24").description == "10.0.0.5/24")
        #expect(try ServiceAddress.parse("fd00:0:0::0005") == ServiceAddress(address: "fd00::5", prefixLength: 128))
        #expect(try ServiceAddress.parse("FD00::5/64").description == "fd00::5/64")
        #expect(try ServiceAddress.parse("fd00::5/64").addCommand(device: "eth0") == ["ip", "addr", "add", "fd00::5/64", "dev", "eth0", "nodad"])
        #expect(try ServiceAddress.parse("10.0.0.5/24").addCommand(device: "eth0") == ["ip", "addr", "add", "10.0.0.5/24", "dev", "eth0"])
        for (text, words) in [("10.0.0", "not an IPv4"), ("10.0.0.5/33", "prefix"), ("10.0.0.5/x", "prefix"), ("fd00::5/129", "prefix"),
                              ("fd00::5::6", "IPv6")] {
            #expect(throws: (any Error).self) { try ServiceAddress.parse(text) }
            do { _ = try ServiceAddress.parse(text) } catch { #expect("\(error)".contains(text) && "\(error)".contains(words), "\(error)") }
        }
    }

    @Test("gratuitous ARP: a request for our address from our address, our hardware address as sender")
    func gratuitousARP() {
        let mac: [UInt8] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55]
        let frame = NeighbourAnnouncement.gratuitousARP(address: [10, 0, 0, 5], hardware: mac)
        #expect(frame == [0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01] + mac + [10, 0, 0, 5] + [0, 0, 0, 0, 0, 0] + [10, 0, 0, 5])
    }

    @Test("unsolicited neighbour advertisement: type 136, override flag alone, the target and its link-layer address option")
    func neighbourAdvertisement() throws {
        let mac: [UInt8] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55]
        let target = try ServiceAddress.parse("fd00::5").bytes
        let message = NeighbourAnnouncement.unsolicitedAdvertisement(address: target, hardware: mac)
        #expect(message.count == 32)
        #expect(message[0..<8] == [136, 0, 0, 0, 0x20, 0, 0, 0])
        #expect(Array(message[8..<24]) == [0xfd, 0] + [UInt8](repeating: 0, count: 13) + [5])
        #expect(Array(message[24...]) == [2, 1] + mac)
    }
}
