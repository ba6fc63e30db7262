import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// CRIU's --network-lock: the firewall backend that keeps dumped TCP connections quiet.
public enum NetworkLockMode: String, Codable, Sendable {
    case iptables, nftables

    /// Without --network-lock, as CRIU: established connections are dumped under an iptables lock.
    /// Not for a cryo that holds only lent (file) capabilities: iptables runs without them, and
    /// TCP_REPAIR refuses such a caller anyway, saying what it needs.
    public static func defaultMode(tcpEstablished: Bool) -> NetworkLockMode? {
        tcpEstablished && Caller.current.fullyPrivileged ? .iptables : nil
    }
}

/// Firewall rules that drop every packet of the dumped TCP connections (each by
/// its 4-tuple, both ways) from the moment dump finds a connection, before it
/// reads the connection's queues, until the restored tree runs. Without them a
/// peer that sends during the gap would get an RST from the host (no socket
/// holds the connection any more), or its bytes would be acknowledged by the
/// frozen socket after dump read the queue, and lost. Dropped packets are sent
/// again by TCP once the rules go. cryo's own raw packets (a peer's FIN
/// delivered again at restore) carry `TCPFinInjector.mark` and pass.
///
/// The rules live in the dumped tree's network namespace; restore removes them
/// in its own (where it rebuilds the sockets), reading them from `netlock.json`
/// in the image.
final class NetworkLock: @unchecked Sendable {
    struct Connection: Codable, Equatable {
        var local: InetAddress
        var peer: InetAddress
    }
    struct Saved: Codable {
        var mode: NetworkLockMode
        /// iptables comment / nftables table name: unique to one dump.
        var name: String
        var connections: [Connection]
        /// Listeners: packets to their address and port are dropped (a SYN in the gap is sent again, not refused by an RST).
        var listeners: [InetAddress]? = nil
    }

    static let fileName = "netlock.json"
    private var saved: Saved
    /// Commands run in this task's network namespace (the dumped tree's), else in cryo's.
    private let namespacePid: pid_t?
    private let mutex = Lock()
    private var tableMade = false

    /// The tree's network namespace, held open: a migration's rules go after the tree was killed.
    private let namespace: FileDescriptor?

    init(mode: NetworkLockMode, rootPid: pid_t) {
        saved = Saved(mode: mode, name: "cryo-lock-\(rootPid)-\(getpid())-\(Int(Date().timeIntervalSince1970))", connections: [])
        namespacePid = rootPid
        namespace = try? Files.open("/proc/\(rootPid)/ns/net", .readOnly)
    }

    deinit { try? namespace?.close() }

    private init(saved: Saved) {
        self.saved = saved
        namespacePid = nil
        namespace = nil
        tableMade = true
    }

    var isEmpty: Bool { mutex.withLock { saved.connections.isEmpty && (saved.listeners ?? []).isEmpty } }

    /// Drops the connection's packets from now on.
    func add(local: InetAddress, peer: InetAddress, pid: pid_t, object: String) throws {
        try mutex.withLock {
            let connection = Connection(local: local, peer: peer)
            guard !saved.connections.contains(connection) else { return }
            if saved.mode == .nftables && !tableMade {
                for command in nftTable() { try run(command, object: object) }
                tableMade = true
            }
            for command in rules(connection, adding: true) { try run(command, object: object) }
            saved.connections.append(connection)
        }
    }

    /// Drops the packets that reach a listener from now on: a peer whose SYN comes during the gap
    /// sends it again later instead of getting an RST, and connects to the restored listener.
    func add(listener: InetAddress, pid: pid_t, object: String) throws {
        try mutex.withLock {
            guard !(saved.listeners ?? []).contains(listener) else { return }
            if saved.mode == .nftables && !tableMade {
                for command in nftTable() { try run(command, object: object) }
                tableMade = true
            }
            for command in rules(listener: listener, adding: true) { try run(command, object: object) }
            saved.listeners = (saved.listeners ?? []) + [listener]
        }
    }

    /// A migration's destination: the same rules in cryo's network namespace, before the moved address
    /// comes and the sockets are rebuilt (a packet in between would meet no socket and draw an RST).
    /// Restore removes them once the tree runs; on failure here the ones placed go at once.
    func placeHere() throws {
        do {
            try mutex.withLock {
                let object = "network lock of the moved connections"
                if saved.mode == .nftables { for command in nftTable() { try run(command, object: object) } }
                for connection in saved.connections {
                    for command in rules(connection, adding: true) { try run(command, object: object) }
                }
                for listener in saved.listeners ?? [] {
                    for command in rules(listener: listener, adding: true) { try run(command, object: object) }
                }
            }
        } catch {
            removeAll()
            throw error
        }
    }

    /// Once every socket is read (and in repair mode, sending nothing): connections whose both ends
    /// were dumped need no lock, no packet of theirs can come from outside, and their rules go now,
    /// so they restart at restore as they would have run (a FIN's acknowledgement is not dropped).
    func releaseConnectionsWithinTree() throws {
        try mutex.withLock {
            let within = saved.connections.filter { c in saved.connections.contains(Connection(local: c.peer, peer: c.local)) }
            guard !within.isEmpty else { return }
            let kept = saved.connections.filter { !within.contains($0) }
            switch saved.mode {
            case .iptables:
                for connection in within {
                    for command in rules(connection, adding: false) { try run(command, object: "network lock") }
                }
                saved.connections = kept
            case .nftables:
                // Rules of a table go by handle only: a new table with the others, then the old one goes
                // (the two overlap, so the outside connections are never unlocked).
                let old = saved.name
                saved.name = old + "-b"
                saved.connections = kept
                for command in nftTable() { try run(command, object: "network lock") }
                for connection in kept { for command in rules(connection, adding: true) { try run(command, object: "network lock") } }
                for listener in saved.listeners ?? [] {
                    for command in rules(listener: listener, adding: true) { try run(command, object: "network lock") }
                }
                try run(["nft", "delete", "table", "inet", old], object: "network lock")
            }
        }
    }

    /// Every rule goes (errors are only logged: each rule is tried).
    func removeAll() {
        mutex.withLock {
            switch saved.mode {
            case .iptables:
                for connection in saved.connections {
                    for command in rules(connection, adding: false) { _ = try? run(command, object: "network lock") }
                }
                for listener in saved.listeners ?? [] {
                    for command in rules(listener: listener, adding: false) { _ = try? run(command, object: "network lock") }
                }
            case .nftables:
                if tableMade { _ = try? run(["nft", "delete", "table", "inet", saved.name], object: "network lock") }
                tableMade = false
            }
            saved.connections = []
            saved.listeners = nil
        }
    }

    /// Into the image, so restore removes the rules once the tree runs again.
    func save(into directory: String) throws -> String? {
        let data = try mutex.withLock { () -> Data? in
            guard !saved.connections.isEmpty || !(saved.listeners ?? []).isEmpty else { return nil }
            return try JSONEncoder().encode(saved)
        }
        guard let data else { return nil }
        let path = "\(directory)/\(Self.fileName)"
        let fd = try Files.open(path, .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite])
        defer { try? fd.close() }
        try Files.write(fd, [UInt8](data), path: path)
        return path
    }

    /// The rules a dump left for this image, to be removed in cryo's network namespace.
    static func saved(in directory: String) throws -> NetworkLock? {
        let path = "\(directory)/\(fileName)"
        guard Files.exists(path) else { return nil }
        guard let saved = try? JSONDecoder().decode(Saved.self, from: Data(try Files.read(path))),
              saved.name.hasPrefix("cryo-lock-"), saved.name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }),
              saved.connections.allSatisfy({ $0.local.raw() != nil && $0.peer.raw() != nil }),
              (saved.listeners ?? []).allSatisfy({ $0.raw() != nil }) else {
            throw CryoError("\(path): not a network lock record cryo wrote")
        }
        return NetworkLock(saved: saved)
    }

    // MARK: - Commands

    private static let markText = "0x" + String(UInt32(bitPattern: TCPFinInjector.mark), radix: 16)

    private func nftTable() -> [[String]] {
        let t = saved.name
        return [["nft", "add", "table", "inet", t]] + ["input", "output"].map {
            ["nft", "--", "add", "chain", "inet", t, $0, "{", "type", "filter", "hook", $0, "priority", "-150", ";", "policy", "accept", ";", "}"]
        }
    }

    /// Packets from the peer (input) and to it (output); IPv4-mapped IPv6 connections are IPv4 on the wire.
    private func rules(_ c: Connection, adding: Bool) -> [[String]] {
        let (local, peer) = (c.local.wireAddress, c.peer.wireAddress)
        let v6 = local.contains(":")
        let directions = [("INPUT", "input", peer, c.peer.port, local, c.local.port), ("OUTPUT", "output", local, c.local.port, peer, c.peer.port)]
        switch saved.mode {
        case .iptables:
            return directions.map { chain, _, source, sport, destination, dport in
                [v6 ? "ip6tables" : "iptables", "-w", adding ? "-I" : "-D", chain, "-p", "tcp", "-s", source, "--sport", "\(sport)",
                 "-d", destination, "--dport", "\(dport)", "-m", "mark", "!", "--mark", Self.markText,
                 "-m", "comment", "--comment", saved.name, "-j", "DROP"]
            }
        case .nftables:
            let family = v6 ? "ip6" : "ip"
            return directions.map { _, chain, source, sport, destination, dport in
                ["nft", "add", "rule", "inet", saved.name, chain, family, "saddr", source, "tcp", "sport", "\(sport)",
                 family, "daddr", destination, "tcp", "dport", "\(dport)", "meta", "mark", "!=", Self.markText, "drop"]
            }
        }
    }

    /// Incoming packets to a listener's port (and address, unless it listens on every address;
    /// a wildcard IPv6 listener may take IPv4 too, so both families are covered).
    private func rules(listener: InetAddress, adding: Bool) -> [[String]] {
        let address = listener.wireAddress
        let families: [Bool] = listener.isWildcard ? [false, true] : [address.contains(":")]
        switch saved.mode {
        case .iptables:
            return families.map { v6 in
                [v6 ? "ip6tables" : "iptables", "-w", adding ? "-I" : "-D", "INPUT", "-p", "tcp"]
                    + (listener.isWildcard ? [] : ["-d", address]) + ["--dport", "\(listener.port)", "-m", "mark", "!", "--mark", Self.markText,
                    "-m", "comment", "--comment", saved.name, "-j", "DROP"]
            }
        case .nftables:
            let match = listener.isWildcard ? [] : [address.contains(":") ? "ip6" : "ip", "daddr", address]
            return [["nft", "add", "rule", "inet", saved.name, "input"] + match
                    + ["tcp", "dport", "\(listener.port)", "meta", "mark", "!=", Self.markText, "drop"]]
        }
    }

    private func run(_ command: [String], object: String) throws {
        let namespacePath = namespacePid.map { pid in namespace.map { "/proc/\(getpid())/fd/\($0.rawValue)" } ?? "/proc/\(pid)/ns/net" }
        let result: (status: Int32, output: String)
        do {
            result = try Processes.run(command, inNetworkNamespace: namespacePath)
        } catch let missing as ProgramNotFound {
            throw CryoError("\(object): --network-lock \(saved.mode.rawValue): \(missing); "
                + "install it, or dump with --network-lock \(saved.mode == .iptables ? "nftables" : "iptables") or --network-lock skip")
        } catch {
            throw CryoError("\(object): --network-lock \(saved.mode.rawValue): cannot run \(command[0]): \(error)")
        }
        guard result.status == 0 else {
            let output = result.output.split(separator: "\n").first.map(String.init) ?? ""
            throw CryoError("\(object): --network-lock \(saved.mode.rawValue): `\(command.joined(separator: " "))` failed "
                + "(exit status \(result.status)): \(output)")
        }
    }
}

extension NetworkLock {
    /// Runs `body` with a rule at the head of iptables' (ip6tables') INPUT chain that accepts cryo's
    /// marked packets, and removes it afterwards. For a packet restore sends (a peer's FIN) that a rule
    /// of the host's own dropped: a program's DROP on its port is what keeps a connection in LAST_ACK.
    /// False, `body` not run, where no such rule can go in (no iptables, or it fails).
    static func passingMarked(ipv6: Bool, object: String, _ body: () throws -> Void) throws -> Bool {
        let rule = ["-m", "mark", "--mark", markText, "-m", "comment", "--comment", "cryo-pass-\(getpid())", "-j", "ACCEPT"]
        let program = ipv6 ? "ip6tables" : "iptables"
        guard let added = try? Processes.run([program, "-w", "-I", "INPUT", "1"] + rule, inNetworkNamespace: nil), added.status == 0 else {
            return false
        }
        defer { _ = try? Processes.run([program, "-w", "-D", "INPUT"] + rule, inNetworkNamespace: nil) }
        try body()
        return true
    }
}

extension InetAddress {
    /// The address as packets carry it: an IPv4-mapped IPv6 address as plain IPv4.
    var wireAddress: String {
        guard let bytes = rawBytes, bytes.count == 4 else { return address }
        return bytes.map(String.init).joined(separator: ".")
    }
}
