// cryo migrate --tcp-established --move-address between three network
// namespaces the test makes: A (the source host, which holds the service
// address), B (the destination) and C (the client, whose bridge joins A's and
// B's links). The echo client keeps sending and checking through the move;
// it must see no reset and every byte back, and the service checks itself on
// the destination. A failing destination must leave the address, the
// connection and the service on A.

import Foundation
import Glibc
import Testing

extension EndToEnd.MigrateTests {
    @Test("--move-address: the service's address and connection move; the client sees no reset, every byte echoed")
    func moveAddress() throws {
        try moveService(ipv6: false)
    }

    @Test("--move-address of an IPv6 address: announced by an unsolicited neighbour advertisement; no reset, every byte echoed")
    func moveIPv6Address() throws {
        try moveService(ipv6: true)
    }

    private func moveService(ipv6: Bool) throws {
        _ = try requireTestProgram(ipv6 ? "/usr/sbin/ip6tables" : "/usr/sbin/iptables", package: "iptables")
        let scratch = try Scratch(ipv6 ? "migrate-move-address6" : "migrate-move-address")
        defer { scratch.remove() }
        let net = try NetTriple(ipv6: ipv6)
        defer { net.remove() }
        let (server, client) = try net.startService(in: scratch)
        defer { server.cleanUp(); client.cleanUp() }
        let receive = try net.receive(["--insecure", "--pidns", "--tcp-established", "--address-interface", net.vethB, "-v"], in: scratch)
        defer { receive.stop() }
        let migrate = try CryoProcess(["migrate", "--to", "\(net.addressB):\(net.migrationPort)", "-t", "\(server.pid)", "--insecure",
                                       "--tcp-established", "--move-address", net.serviceAddress, "--display-stats"],
                                      in: scratch, launcher: net.enter(net.a))
        let result = migrate.wait(timeout: 120, reaping: server)
        try #require(result.succeeded, "\(result)\n\(receive.wait(timeout: 10))\n\(server.report)\n\(client.report)")
        try #require(server.reapOriginal(timeout: 20) != nil, "pid \(server.pid) still runs on the source after the migration")
        let received = receive.wait(timeout: 60)
        try #require(received.succeeded, "\(received)")
        let restored = try #require(restoredPid(received.stdout), "no restored pid in\n\(received)")
        defer { if ProcStatus(pid: restored)?.name == "echomove" { kill(restored, SIGKILL) } }
        // The address is on B alone; no lock rule is left on either host.
        #expect(!net.addresses(net.a).contains(net.serviceCIDR), "A still holds the address: \(net.addresses(net.a))")
        #expect(net.addresses(net.b).contains(net.serviceCIDR), "B lacks the address: \(net.addresses(net.b))")
        for ns in [net.a, net.b] { #expect(!net.rules(ns).contains("cryo-lock-"), "rules left in \(ns):\n\(net.rules(ns))") }
        // Echoes go on, now from B.
        let after = client.bytesChecked
        #expect(waitUntil(timeout: 60) { client.bytesChecked >= after + 16384 || client.pollOriginal() != nil },
                "the client's echoes stopped after the move at \(after) bytes\n\(client.report)")
        let (bytes, gap) = try net.stopClient(client)
        let downtime = result.stdout.split(separator: "\n").first { $0.contains("downtime:") }.map(String.init) ?? "?"
        print("move-address\(ipv6 ? " (IPv6)" : ""): the client checked \(bytes) bytes; longest gap between echoes \(String(format: "%.3f", gap)) s; migrate \(downtime)")
        // Announced: the client's packets went to B at once, not after its neighbour entry went stale (15-45 s).
        #expect(gap < 10, "the client waited \(gap) s for an echo: was the address announced?\n\(client.report)")
        kill(restored, SIGTERM)
        #expect(waitUntil(timeout: 30) { server.lastLine == "PASS" || server.lastLine?.hasPrefix("FAIL") == true },
                "the moved service did not check itself\n\(server.report)")
        expectPass(server, "\(result)\n\(received)")
        #expect(server.tagged("ECHOED")?.first == "\(bytes)", "the service echoed \(server.tagged("ECHOED") ?? []), the client checked \(bytes)")
    }

    @Test("--move-address: a destination that fails gives the address back to the source, whose service and connection carry on")
    func moveAddressDestinationFails() throws {
        _ = try requireTestProgram("/usr/sbin/iptables", package: "iptables")
        let scratch = try Scratch("migrate-move-address-fails")
        defer { scratch.remove() }
        let net = try NetTriple()
        defer { net.remove() }
        let (server, client) = try net.startService(in: scratch)
        defer { server.cleanUp(); client.cleanUp() }
        // Without --pidns on the same machine the restore fails (the pids are the source's), after the address came.
        let receive = try net.receive(["--insecure", "--tcp-established", "--address-interface", net.vethB], in: scratch)
        defer { receive.stop() }
        let migrate = try CryoProcess(["migrate", "--to", "\(net.addressB):\(net.migrationPort)", "-t", "\(server.pid)", "--insecure",
                                       "--tcp-established", "--move-address", net.serviceAddress],
                                      in: scratch, launcher: net.enter(net.a))
        let result = migrate.wait(timeout: 120, reaping: server)
        let received = receive.wait(timeout: 60)
        #expect(received.failed && received.stderr.contains("in use"), "the destination should fail for the pids in use\n\(received)")
        #expect(result.failed && result.stderrLines.count == 1 && result.stderr.contains("destination"), "\(result)")
        // The address is back on A (and gone from B), no rule is left, and the service runs on there.
        #expect(net.addresses(net.a).contains(net.serviceCIDR), "the address did not come back to A: \(net.addresses(net.a))")
        #expect(!net.addresses(net.b).contains(net.serviceCIDR), "B kept the address: \(net.addresses(net.b))")
        for ns in [net.a, net.b] { #expect(!net.rules(ns).contains("cryo-lock-"), "rules left in \(ns):\n\(net.rules(ns))") }
        try #require(server.pollOriginal() == nil, "the service is gone from A\n\(server.report)")
        #expect(waitUntil(timeout: 10) { ProcStatus(pid: server.pid).map { $0.isRunning && $0.tracerPid == 0 } ?? false },
                "pid \(server.pid) is not running freely: \(describeProcess(server.pid))")
        let after = client.bytesChecked
        #expect(waitUntil(timeout: 60) { client.bytesChecked >= after + 16384 || client.pollOriginal() != nil },
                "the client's echoes stopped at \(after) bytes\n\(client.report)")
        let (bytes, gap) = try net.stopClient(client)
        print("move-address, failed destination: the client checked \(bytes) bytes; longest gap \(String(format: "%.3f", gap)) s")
        #expect(gap < 10, "the client waited \(gap) s for an echo: was the address announced again on A?\n\(client.report)")
        server.signal(SIGTERM)
        #expect(server.reapOriginal(timeout: 30) == .exited(0), "\(server.report)")
        expectPass(server, "\(result)\n\(received)")
        #expect(server.tagged("ECHOED")?.first == "\(bytes)", "the service echoed \(server.tagged("ECHOED") ?? []), the client checked \(bytes)")
    }
}

extension EndToEnd.MigrateTests {
    @Test("--move-address to a receive without --address-interface: refused at hello in one line, nothing frozen or moved")
    func moveAddressNowhereToGo() throws {
        let scratch = try Scratch("migrate-move-address-nowhere")
        defer { scratch.remove() }
        let net = try NetTriple()
        defer { net.remove() }
        let (server, client) = try net.startService(in: scratch)
        defer { server.cleanUp(); client.cleanUp() }
        let receive = try net.receive(["--insecure", "--pidns", "--tcp-established"], in: scratch)
        defer { receive.stop() }
        let result = try cryo(["migrate", "--to", "\(net.addressB):\(net.migrationPort)", "-t", "\(server.pid)", "--insecure",
                               "--tcp-established", "--move-address", net.serviceAddress], in: scratch, reaping: server, launcher: net.enter(net.a))
        expectOneLine(result, naming: ["refused", net.serviceAddress, "--address-interface"])
        let received = receive.wait(timeout: 30)
        #expect(received.failed && received.stderrLines.count == 1 && received.stderr.contains("--address-interface"), "\(received)")
        #expect(net.addresses(net.a).contains(net.serviceCIDR), "the address left A: \(net.addresses(net.a))")
        let after = client.bytesChecked
        #expect(waitUntil(timeout: 60) { client.bytesChecked >= after + 8192 || client.pollOriginal() != nil }, "\(client.report)")
        _ = try net.stopClient(client)
        server.signal(SIGTERM)
        #expect(server.reapOriginal(timeout: 30) == .exited(0), "\(server.report)")
        expectPass(server)
    }
}

private extension Fixture {
    /// The client's last "BYTES n".
    var bytesChecked: UInt64 {
        lines.last { $0.hasPrefix("BYTES ") }.flatMap { UInt64($0.dropFirst(6)) } ?? 0
    }
}

/// Three network namespaces: A and B each joined by a veth pair to a bridge in C.
/// The service address starts on A's link; with `ipv6` it is an IPv6 one (the
/// migration itself still goes over IPv4).
private final class NetTriple {
    nonisolated(unsafe) static var counter = 0  // the suite runs serialized
    let a: String, b: String, c: String, vethA: String, vethB: String
    let addressA = "10.78.0.1", addressB = "10.78.0.2", addressC = "10.78.0.3"
    let ipv6: Bool
    let migrationPort = 7470, servicePort = 7471
    var serviceAddress: String { ipv6 ? "fd78::10" : "10.78.0.10" }
    var serviceCIDR: String { serviceAddress + (ipv6 ? "/64" : "/24") }
    /// The bridge's own hardware address, fixed so that B can know it in advance.
    let bridgeHardware = "02:78:00:00:00:03"

    init(ipv6: Bool = false) throws {
        self.ipv6 = ipv6
        NetTriple.counter += 1
        let tag = "\(getpid() % 100_000)x\(NetTriple.counter)"
        a = "cryo-tA-\(tag)"
        b = "cryo-tB-\(tag)"
        c = "cryo-tC-\(tag)"
        vethA = "ctA\(tag)"
        vethB = "ctB\(tag)"
        do {
            for ns in [a, b, c] {
                try ip(["netns", "add", ns])
                try ip(["-n", ns, "link", "set", "lo", "up"])
            }
            try ip(["-n", c, "link", "add", "br0", "address", bridgeHardware, "type", "bridge"])
            try ip(["-n", c, "addr", "add", "\(addressC)/24", "dev", "br0"])
            if ipv6 { try ip(["-n", c, "addr", "add", "fd78::3/64", "dev", "br0", "nodad"]) }
            try ip(["-n", c, "link", "set", "br0", "up"])
            for (ns, dev, address) in [(a, vethA, addressA), (b, vethB, addressB)] {
                try ip(["link", "add", dev, "type", "veth", "peer", "name", dev + "c"])
                try ip(["link", "set", dev, "netns", ns])
                try ip(["link", "set", dev + "c", "netns", c])
                try ip(["-n", c, "link", "set", dev + "c", "master", "br0"])
                try ip(["-n", c, "link", "set", dev + "c", "up"])
                try ip(["-n", ns, "addr", "add", "\(address)/24", "dev", dev])
                if ipv6 { try ip(["-n", ns, "addr", "add", "fd78::\(ns == a ? 1 : 2)/64", "dev", dev, "nodad"]) }
                try ip(["-n", ns, "link", "set", dev, "up"])
            }
            try ip(["-n", a, "addr", "add", serviceCIDR, "dev", vethA] + (ipv6 ? ["nodad"] : []))
            if ipv6 {
                // B's own neighbour solicitation for the client would carry its hardware address and update
                // the client's entry anyway; B knows the client in advance, so only cryo's advertisement tells.
                try ip(["-n", b, "neigh", "replace", "fd78::3", "lladdr", bridgeHardware, "dev", vethB, "nud", "permanent"])
            }
            // The hosts' own ARP requests name their primary address, never the service address: only
            // cryo's announcement tells the client where the service address went.
            for ns in [a, b] {
                let log = "/tmp/cryo-nettriple-\(getpid()).log"
                defer { unlink(log) }
                let pid = try spawnProcess("/usr/bin/nsenter", ["--net=/run/netns/\(ns)", "/usr/sbin/sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2"],
                                           stdoutPath: log)
                guard reap(pid, timeout: 20) == .exited(0) else { throw HarnessError("sysctl arp_announce in \(ns): \(readText(log))") }
            }
        } catch {
            remove()
            throw error
        }
    }

    /// nsenter switches the network namespace only (cryo dumps only trees in its own mount namespace).
    func enter(_ ns: String) -> [String] { ["/usr/bin/nsenter", "--net=/run/netns/\(ns)"] }

    /// The echo service on A and its client on C, echoes flowing.
    func startService(in scratch: Scratch) throws -> (server: Fixture, client: Fixture) {
        let server = try Fixture("echomove", arguments: ["server", "\(servicePort)"] + (ipv6 ? ["6"] : []), in: scratch, launcher: enter(a),
                                 logPath: scratch.file("server.log"))
        do {
            try server.waitReady()
            let client = try Fixture("echomove", arguments: ["client", serviceAddress, "\(servicePort)"], in: scratch, launcher: enter(c),
                                     logPath: scratch.file("client.log"))
            do {
                try client.waitReady()
                try #require(waitUntil(timeout: 20) { client.bytesChecked >= 4096 }, "no echoes before the move\n\(client.report)\n\(server.report)")
                return (server, client)
            } catch {
                client.cleanUp()
                throw error
            }
        } catch {
            server.cleanUp()
            throw error
        }
    }

    /// SIGTERM, PASS, and what it counted: bytes checked and the longest gap between echoes.
    func stopClient(_ client: Fixture) throws -> (UInt64, Double) {
        client.signal(SIGTERM)
        let exit = client.reapOriginal(timeout: 150)
        #expect(exit == .exited(0), "\(client.report)")
        expectPass(client)
        let gap = try #require(client.tagged("GAP")?.first.flatMap(Double.init), "no GAP line\n\(client.report)")
        return (client.bytesChecked, gap)
    }

    /// `cryo receive --listen B:port ...` inside B, once it listens.
    func receive(_ options: [String], in scratch: Scratch) throws -> CryoProcess {
        let process = try CryoProcess(["receive", "--listen", "\(addressB):\(migrationPort)"] + options, in: scratch, launcher: enter(b))
        let hexPort = String(format: ":%04X", migrationPort)
        let listening = waitUntil(timeout: 20) {
            !process.isRunning || readText("/proc/\(process.pid)/net/tcp").split(separator: "\n").contains {
                let fields = $0.split(separator: " ")
                return fields.count > 3 && fields[1].hasSuffix(hexPort) && fields[3] == "0A"
            }
        }
        try #require(listening && process.isRunning, "cryo receive does not listen\n\(process.wait(timeout: 5))")
        return process
    }

    /// "ADDR/PREFIX" of every address in `ns`.
    func addresses(_ ns: String) -> [String] {
        run(["-n", ns, "-o", "addr", "show"]).split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            return fields.count > 3 ? String(fields[3]) : nil
        }
    }

    /// iptables -S (and ip6tables -S for an IPv6 service) in `ns`.
    func rules(_ ns: String) -> String {
        let log = "/tmp/cryo-nettriple-rules-\(getpid()).log"
        defer { unlink(log) }
        return (ipv6 ? ["/usr/sbin/iptables", "/usr/sbin/ip6tables"] : ["/usr/sbin/iptables"]).map { tool in
            guard let pid = try? spawnProcess("/usr/bin/nsenter", ["--net=/run/netns/\(ns)", tool, "-S"], stdoutPath: log) else { return "" }
            _ = reap(pid, timeout: 20)
            return readText(log)
        }.joined()
    }

    func remove() {
        for ns in [a, b, c] { try? ip(["netns", "del", ns]) }
    }

    private func run(_ arguments: [String]) -> String {
        let log = "/tmp/cryo-nettriple-\(getpid()).log"
        defer { unlink(log) }
        guard let pid = try? spawnProcess("/usr/sbin/ip", arguments, stdoutPath: log) else { return "" }
        _ = reap(pid, timeout: 20)
        return readText(log)
    }

    private func ip(_ arguments: [String]) throws {
        let log = "/tmp/cryo-nettriple-\(getpid()).log"
        let pid = try spawnProcess("/usr/sbin/ip", arguments, stdoutPath: log)
        let status = reap(pid, timeout: 20)
        defer { unlink(log) }
        guard status == .exited(0) else { throw HarnessError("ip \(arguments.joined(separator: " ")): \(status.map(\.description) ?? "timed out")\n\(readText(log))") }
    }
}
