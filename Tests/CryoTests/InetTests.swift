// AF_INET/AF_INET6 sockets beyond the plain round trips of udp and tcp's
// listener: established TCP connections with --tcp-established, inside the
// tree and with a peer outside it (this test process), killed or left running.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("inet sockets")
    struct InetTests {
        @Test("established connections inside the tree come back with --tcp-established")
        func establishedInTree() throws {
            try established(arguments: [], leaveRunning: false)
        }

        @Test("TCP in every state a program leaves it in (megabyte queues, half-closed, FIN_WAIT1/2, CLOSING, LAST_ACK) runs to its end")
        func everyState() throws {
            try established(arguments: [], leaveRunning: false, name: "tcpstates")
        }

        @Test("dump --leave-running --tcp-established: the connections carry on")
        func establishedLeaveRunning() throws {
            try established(arguments: [], leaveRunning: true)
        }

        @Test("a connection to a peer outside the tree carries on after restore")
        func outsidePeer() throws {
            try withPeer(leaveRunning: false)
        }

        @Test("a connection to a peer outside the tree carries on after dump --leave-running")
        func outsidePeerLeaveRunning() throws {
            try withPeer(leaveRunning: true)
        }

        @Test("without --tcp-established an established connection is refused naming pid, fd and the flag")
        func establishedRefused() throws {
            let scratch = try Scratch("tcp-refused")
            defer { scratch.remove() }
            let fixture = try Fixture("tcp", arguments: [], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = scratch.file("img")
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
            #expect(dump.failed, "\(dump)")
            #expect(dump.stderrLines.count == 1, "want one line\n\(dump)")
            let message = dump.stderr
            #expect(message.contains("fd ") && message.contains("established TCP connection") && message.contains("--tcp-established")
                    && message.contains("127.0.0.1:"), "\(dump)")
            #expect(!FileManager.default.fileExists(atPath: images), "a failed dump should remove its image folder")
            fixture.signal(SIGTERM)
            let exit = fixture.reapOriginal(timeout: 30)
            #expect(exit == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }

        @Test("restore without --tcp-established refuses an image with an established connection")
        func restoreRefused() throws {
            let scratch = try Scratch("tcp-restore-refused")
            defer { scratch.remove() }
            let fixture = try Fixture("tcp", arguments: [], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = scratch.file("img")
            let dump = try cryo(["dump", "--leave-running", "--tcp-established", "-t", "\(fixture.pid)", "-D", images],
                                in: scratch, reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
            let restore = try cryo(["restore", "-D", images], in: scratch)
            #expect(restore.failed && restore.stderr.contains("--tcp-established"), "\(restore)")
            fixture.signal(SIGTERM)
            let exit = fixture.reapOriginal(timeout: 30)
            #expect(exit == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }
    }
}

/// Dump with --tcp-established (killing, or --leave-running), restore with it, SIGTERM, PASS.
private func established(arguments: [String], leaveRunning: Bool, extra: ((Fixture) throws -> Void)? = nil,
                         prepare: (() throws -> Void)? = nil, name: String = "tcp") throws {
    let scratch = try Scratch("tcp-established")
    defer { scratch.remove() }
    let fixture = try Fixture(name, arguments: arguments, in: scratch)
    defer { fixture.cleanUp() }
    try fixture.waitReady()
    try prepare?()
    let pid = fixture.pid
    let images = scratch.file("img")
    let dump = try cryo(["dump", "-t", "\(pid)", "-D", images, "--tcp-established"] + (leaveRunning ? ["--leave-running"] : []),
                        in: scratch, reaping: fixture)
    try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
    if leaveRunning {
        #expect(fixture.pollOriginal() == nil, "the process ended during dump --leave-running\n\(fixture.report)")
        fixture.signal(SIGTERM)
        try extra?(fixture)
        let exit = fixture.reapOriginal(timeout: 60)
        #expect(exit == .exited(0), "\(fixture.report)")
        expectPass(fixture, "\(dump)")
        return
    }
    let original = fixture.reapOriginal(timeout: 20)
    try #require(original != nil, "pid \(pid) still runs after the dump")
    let restore = try CryoProcess(["restore", "-D", images, "--tcp-established"], in: scratch)
    defer { restore.stop() }
    try expectRestoredAndPassing(fixture, by: restore, timeout: 60, afterSignal: { try extra?(fixture) })
}

/// This process is the peer: it listens, the fixture connects; bytes are queued
/// both ways before the dump; after SIGTERM each side reads them, then ping/pong.
private func withPeer(leaveRunning: Bool) throws {
    let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    try #require(listener >= 0)
    defer { close(listener) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var size = socklen_t(MemoryLayout<sockaddr_in>.size)
    try withUnsafeMutablePointer(to: &address) { pointer in
        try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            try #require(bind(listener, $0, size) == 0 && listen(listener, 1) == 0 && getsockname(listener, $0, &size) == 0)
        }
    }
    let port = UInt16(bigEndian: address.sin_port)
    var peer: Int32 = -1
    defer { if peer >= 0 { close(peer) } }
    try established(arguments: ["peer", "\(port)"], leaveRunning: leaveRunning, extra: { _ in
        // Runs once SIGTERM has been sent to the (restored) fixture.
        #expect(peer >= 0, "the fixture never connected")
        guard peer >= 0 else { return }
        #expect(peerRead(peer, count: 16) == "from the fixture", "the fixture's queued bytes")
        #expect(peerRead(peer, count: 4) == "ping", "the fixture's ping after restore")
        #expect(send(peer, "pong", 4, Int32(MSG_NOSIGNAL)) == 4, "pong: \(String(cString: strerror(errno)))")
    }, prepare: {
        var timeout = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(listener, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        peer = accept(listener, nil, nil)
        try #require(peer >= 0, "accept: \(String(cString: strerror(errno)))")
        try #require(send(peer, "from the test", 13, Int32(MSG_NOSIGNAL)) == 13)
        usleep(50_000)
    })
}

private func peerRead(_ fd: Int32, count: Int) -> String {
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var buffer = [UInt8](repeating: 0, count: count)
    var have = 0
    while have < count {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + have, count - have, 0) }
        if n <= 0 { break }
        have += n
    }
    return String(decoding: buffer[0..<have], as: UTF8.self)
}

/// A listening socket of this process on 127.0.0.1 (port chosen by the kernel).
private func testListener(backlog: Int32) throws -> (fd: Int32, port: UInt16) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    try #require(fd >= 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var size = socklen_t(MemoryLayout<sockaddr_in>.size)
    try withUnsafeMutablePointer(to: &address) { pointer in
        try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            try #require(bind(fd, $0, size) == 0 && listen(fd, backlog) == 0 && getsockname(fd, $0, &size) == 0)
        }
    }
    return (fd, UInt16(bigEndian: address.sin_port))
}

/// A connection of this process to 127.0.0.1:port (blocking connect).
private func testConnect(_ port: UInt16) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = port.bigEndian
    let ok = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    if ok != 0 { close(fd); return -1 }
    return fd
}

/// dump (killing) and restore with the given options; `prepare` runs once the fixture is ready,
/// `afterSignal` once the restored fixture got SIGTERM.
private func roundTrip(_ arguments: [String], dump dumpOptions: [String], restore restoreOptions: [String],
                       prepare: () throws -> Void = {}, afterSignal: () throws -> Void = {}) throws {
    let scratch = try Scratch("tcp-states")
    defer { scratch.remove() }
    let fixture = try Fixture("tcpstates", arguments: arguments, in: scratch)
    defer { fixture.cleanUp() }
    try fixture.waitReady()
    try prepare()
    let (images, _) = try dumpAndReap(fixture, in: scratch, options: dumpOptions)
    let restore = try CryoProcess(["restore", "-D", images] + restoreOptions, in: scratch)
    defer { restore.stop() }
    try expectRestoredAndPassing(fixture, by: restore, timeout: 60, afterSignal: afterSignal)
}

extension EndToEnd.InetTests {
    @Test("a socket caught in SYN_SENT connects again after restore and its connection carries bytes")
    func synSent() throws {
        // Accept queue full (backlog 0, one connection waiting): the fixture's SYN is dropped.
        let (listener, port) = try testListener(backlog: 0)
        defer { close(listener) }
        let filler = testConnect(port)
        try #require(filler >= 0, "filler connect: \(String(cString: strerror(errno)))")
        defer { close(filler) }
        try roundTrip(["synsent", "\(port)"], dump: [], restore: [], afterSignal: {
            var timeout = timeval(tv_sec: 20, tv_usec: 0)
            setsockopt(listener, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let first = accept(listener, nil, nil)  // the filler; the queue has room again
            #expect(first >= 0, "accept: \(String(cString: strerror(errno)))")
            if first >= 0 { close(first) }
            let peer = accept(listener, nil, nil)
            #expect(peer >= 0, "the restored fixture never connected: \(String(cString: strerror(errno)))")
            guard peer >= 0 else { return }
            defer { close(peer) }
            #expect(peerRead(peer, count: 5) == "hello")
            #expect(send(peer, "bye", 3, Int32(MSG_NOSIGNAL)) == 3)
            shutdown(peer, Int32(SHUT_WR))
        })
    }

    @Test("a listener with a connection not yet accepted: refused in one line, dropped with --skip-in-flight")
    func pendingConnections() throws {
        var client: Int32 = -1
        defer { if client >= 0 { close(client) } }
        let scratch = try Scratch("tcp-pending")
        defer { scratch.remove() }
        let fixture = try Fixture("tcpstates", arguments: ["pending"], in: scratch)
        defer { fixture.cleanUp() }
        try fixture.waitReady()
        let port = try #require(fixture.tagged("PORT").flatMap { UInt16($0.first ?? "") })
        client = testConnect(port)
        try #require(client >= 0)
        let refused = try cryo(["dump", "-t", "\(fixture.pid)", "-D", scratch.file("refused")], in: scratch, reaping: fixture)
        #expect(refused.failed && refused.stderrLines.count == 1 && refused.stderr.contains("not yet accepted")
                && refused.stderr.contains("--skip-in-flight") && refused.stderr.contains("pid \(fixture.pid) fd "), "\(refused)")
        #expect(fixture.pollOriginal() == nil, "a refused dump must leave the fixture running")
        let (images, _) = try dumpAndReap(fixture, in: scratch, options: ["--skip-in-flight"])
        let restore = try CryoProcess(["restore", "-D", images], in: scratch)
        defer { restore.stop() }
        try expectRestoredAndPassing(fixture, by: restore, timeout: 60)
    }

    @Test("--tcp-close: connections come back closed (end of stream, EPIPE)")
    func tcpClose() throws {
        try roundTrip(["closed"], dump: ["--tcp-close"], restore: ["--tcp-close"])
    }

    @Test("restore --tcp-close takes an image dumped with --tcp-established")
    func tcpCloseAtRestore() throws {
        try roundTrip(["closed"], dump: ["--tcp-established"], restore: ["--tcp-close"])
    }

    @Test("sockets in CLOSE that hold a port (ended, reset with bytes unread, bound beside a listener) come back beside their listeners")
    func closedHoldingPorts() throws {
        try roundTrip(["ports"], dump: ["--tcp-established"], restore: ["--tcp-established"])
    }
}

/// Runs a shell command: its exit status and output (stdout and stderr).
private func shell(_ command: String) -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", command]
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    do { try process.run() } catch { return (-1, "\(error)") }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

extension EndToEnd.InetTests {
    @Test("--network-lock: a peer that sends between dump and restore loses nothing and sees no reset; the rules go",
          arguments: ["iptables", "nftables", "default"])
    func networkLock(mode: String) throws {
        // Installed when missing (as root; else the test is cancelled, saying why).
        _ = try requireTestProgram(mode == "nftables" ? "/usr/sbin/nft" : "/usr/sbin/iptables", package: mode == "nftables" ? mode : "iptables")
        // A network namespace of our own: firewall rules are global to one.
        let namespace = "cryo-lock-\(getpid())-\(mode)"
        let made = shell("ip netns add \(namespace) && ip -n \(namespace) link set lo up")
        try #require(made.status == 0, "ip netns add: \(made.output)")
        defer { _ = shell("ip netns del \(namespace)") }
        let enter = ["/usr/bin/nsenter", "--net=/run/netns/\(namespace)"]
        // Without --network-lock, as CRIU: iptables.
        let listRules = mode == "nftables" ? "nft list ruleset" : "iptables -S"
        let lockOption = mode == "default" ? [] : ["--network-lock", mode]
        let scratch = try Scratch("tcp-lock")
        defer { scratch.remove() }
        let (peer, fixture) = try connectedToLockPeer(in: scratch, launcher: enter)
        defer { peer.cleanUp(); fixture.cleanUp() }
        let images = scratch.file("img")
        let dump = try cryo(["dump", "--tcp-established"] + lockOption + ["-t", "\(fixture.pid)", "-D", images], in: scratch,
                            reaping: fixture, launcher: enter)
        try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
        try #require(fixture.reapOriginal(timeout: 20) != nil, "pid \(fixture.pid) still runs after the dump")
        let during = shell("ip netns exec \(namespace) \(listRules)")
        #expect(during.output.contains("cryo-lock-") && during.output.lowercased().contains("drop"), "no lock rules after the dump:\n\(during.output)")
        // The peer sends into the gap: the rules drop it; TCP sends it again after restore.
        peer.signal(SIGUSR1)
        #expect(waitUntil(timeout: 10) { peer.lines.contains("SENT") }, "\(peer.report)")
        usleep(500_000)
        let restore = try CryoProcess(["restore", "-D", images, "--tcp-established"], in: scratch, launcher: enter)
        defer { restore.stop() }
        try expectRestoredAndPassing(fixture, by: restore, timeout: 60)
        let peerExit = peer.reapOriginal(timeout: 60)
        #expect(peerExit == .exited(0), "\(peer.report)")
        expectPass(peer)
        let after = shell("ip netns exec \(namespace) \(listRules)")
        #expect(!after.output.contains("cryo-lock-"), "lock rules left after restore:\n\(after.output)")
    }
}

extension EndToEnd.InetTests {
    /// A `tcp` fixture connected to a `tcpstates lockpeer` peer, both started with `enter` (a network
    /// namespace of the test's own, where lock rules are seen and removed).
    func connectedToLockPeer(in scratch: Scratch, launcher enter: [String]) throws -> (peer: Fixture, fixture: Fixture) {
        let peer = try Fixture("tcpstates", arguments: ["lockpeer"], in: scratch, launcher: enter, logPath: scratch.file("peer.log"))
        do {
            try peer.waitReady()
            let port = try #require(peer.tagged("PORT")?.first)
            let fixture = try Fixture("tcp", arguments: ["peer", port], in: scratch, launcher: enter)
            do { try fixture.waitReady() } catch { fixture.cleanUp(); throw error }
            return (peer, fixture)
        } catch {
            peer.cleanUp()
            throw error
        }
    }

    @Test("the default lock's iptables missing: dump --tcp-established refuses in one line naming it, the tree runs on")
    func networkLockToolMissing() throws {
        try inNetworkNamespace("lock-missing") { enter in
            let scratch = try Scratch("tcp-lock-missing")
            defer { scratch.remove() }
            let (peer, fixture) = try connectedToLockPeer(in: scratch, launcher: enter)
            defer { peer.cleanUp(); fixture.cleanUp() }
            // iptables lives in /usr/sbin: a PATH without it.
            let images = scratch.file("img")
            let dump = try cryo(["dump", "--tcp-established", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture,
                                environment: ["PATH": "/usr/bin:/bin"], launcher: enter)
            expectOneLine(dump, naming: ["pid \(fixture.pid) fd ", "--network-lock iptables", "iptables is not installed", "--network-lock skip"])
            #expect(!FileManager.default.fileExists(atPath: images), "a failed dump should remove the image folder it created")
            // The connection carries on: the peer's bytes and the ping-pong after SIGTERM.
            peer.signal(SIGUSR1)
            expectRunsAndPasses(fixture, "\(dump)")
            #expect(peer.reapOriginal(timeout: 60) == .exited(0), "\(peer.report)")
            expectPass(peer)
        }
    }
}

/// Runs `body` with the launcher of a network namespace of its own (lo up), deleted afterwards.
private func inNetworkNamespace(_ label: String, _ body: ([String]) throws -> Void) throws {
    try inNetworkNamespace(label) { enter, _ in try body(enter) }
}

/// The same, also naming the namespace (for `ip netns exec`).
private func inNetworkNamespace(_ label: String, _ body: ([String], String) throws -> Void) throws {
    let namespace = "cryo-\(label)-\(getpid())"
    let made = shell("ip netns add \(namespace) && ip -n \(namespace) link set lo up")
    try #require(made.status == 0, "ip netns add: \(made.output)")
    defer { _ = shell("ip netns del \(namespace)") }
    try body(["/usr/bin/nsenter", "--net=/run/netns/\(namespace)"], namespace)
}

/// `sockopts MODE queued` (or MODE EXTRA...) in the namespace: its dump is refused in one line
/// that names the descriptor (or the mapping) and says each of `words`, and the fixture runs on.
private func expectQueuedRefused(_ mode: String, _ extra: [String] = ["queued"], saying words: [String], enter: [String], in scratch: Scratch,
                                 sourceLocation: SourceLocation = #_sourceLocation) throws {
    let queued = try Fixture("sockopts", arguments: [mode] + extra, in: scratch, launcher: enter, logPath: scratch.file("queued.log"))
    defer { queued.cleanUp() }
    try queued.waitReady()
    let refused = try cryo(["dump", "-t", "\(queued.pid)", "-D", scratch.file("refused")], in: scratch, reaping: queued, launcher: enter)
    // Named by descriptor, or by address for a mapping.
    let named = refused.stderr.contains("pid \(queued.pid) fd ") || refused.stderr.contains("pid \(queued.pid): mapping 0x")
    #expect(refused.failed && refused.stderrLines.count == 1 && named
            && words.allSatisfy(refused.stderr.contains), "\(refused)", sourceLocation: sourceLocation)
    #expect(queued.pollOriginal() == nil, "a refused dump must leave the fixture running", sourceLocation: sourceLocation)
    queued.signal(SIGKILL)
    _ = queued.reapOriginal(timeout: 10)
}

/// `sockopts ARGUMENTS` (or `fixture`) in the namespace: dump (with `options`, given to restore too),
/// kill, restore, SIGTERM, PASS; the hooks look at the world at each step.
private func sockoptsRoundTrip(_ arguments: [String], fixture name: String = "sockopts", options: [String] = [], enter: [String], in scratch: Scratch,
                               beforeDump: (Fixture) throws -> Void = { _ in }, afterDump: (String) throws -> Void = { _ in },
                               whileRunning: () throws -> Void = {}, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let fixture = try Fixture(name, arguments: arguments, in: scratch, launcher: enter)
    defer { fixture.cleanUp() }
    try fixture.waitReady()
    try beforeDump(fixture)
    let images = scratch.file("img")
    let dump = try cryo(["dump"] + options + ["-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture, launcher: enter)
    try #require(dump.succeeded, "\(dump)\n\(fixture.report)", sourceLocation: sourceLocation)
    try #require(fixture.reapOriginal(timeout: 20) != nil, "pid \(fixture.pid) still runs after the dump", sourceLocation: sourceLocation)
    try afterDump(images)
    let restore = try CryoProcess(["restore", "-D", images] + options, in: scratch, launcher: enter)
    defer { restore.stop() }
    try expectRestoredAndPassing(fixture, by: restore, timeout: 60, whileRunning: whileRunning, sourceLocation: sourceLocation)
}

extension EndToEnd.InetTests {
    @Test("socket options of TCP and UDP sockets (IPv4, IPv6) read back equal after restore (device, filter, groups, SO_REUSEPORT or IP_FREEBIND off since bind...)")
    func socketOptions() throws {
        try inNetworkNamespace("opts") { enter in
            let scratch = try Scratch("inet-options")
            defer { scratch.remove() }
            try sockoptsRoundTrip([], options: ["--tcp-established"], enter: enter, in: scratch, afterDump: { images in
                let show = try cryo(["show", images], in: scratch)
                #expect(show.stdout.contains("device lo") && show.stdout.contains("filter of 4 instructions, locked")
                        && show.stdout.contains("2 multicast groups") && show.stdout.contains("shut down for writing"), "\(show)")
                // The md5 listener and both ends of its connection: the ends' keys are seen by bytes crossing only
                // if one end lost its key, so the image says it too.
                #expect(show.stdout.components(separatedBy: "1 TCP MD5 key").count - 1 == 3, "\(show)")
            })
        }
    }

    @Test("a UDP socket counting timestamp ids (SO_TIMESTAMPING with OPT_ID) is refused in one line and sends on")
    func timestampIDRefused() throws {
        let scratch = try Scratch("tsid")
        defer { scratch.remove() }
        let fixture = try Fixture("sockopts", arguments: ["tsid"], in: scratch)
        defer { fixture.cleanUp() }
        try fixture.waitReady()
        let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", scratch.file("img")], in: scratch, reaping: fixture)
        #expect(dump.failed && dump.stderrLines.count == 1 && dump.stderr.contains("pid \(fixture.pid) fd ")
                && dump.stderr.contains("SOF_TIMESTAMPING_OPT_ID"), "\(dump)")
        #expect(fixture.pollOriginal() == nil, "a refused dump must leave the fixture running")
        fixture.signal(SIGTERM)
        #expect(fixture.reapOriginal(timeout: 30) == .exited(0), "\(fixture.report)")
        expectPass(fixture, "\(dump)")
    }

    @Test("a connection with kernel TLS (TCP_ULP tls, TLS_TX) is refused in one line and carries on")
    func kernelTLSRefused() throws {
        let scratch = try Scratch("ktls")
        defer { scratch.remove() }
        let fixture = try Fixture("sockopts", arguments: ["ktls"], in: scratch)
        defer { fixture.cleanUp() }
        try fixture.waitReady()
        if let answer = fixture.tagged("KTLS"), answer.first == "no" {
            print("skipped: this kernel has no kernel TLS (\(answer.dropFirst().joined(separator: " ")))")
            fixture.signal(SIGKILL)
            _ = fixture.reapOriginal(timeout: 10)
            return
        }
        let dump = try cryo(["dump", "--tcp-established", "-t", "\(fixture.pid)", "-D", scratch.file("img")], in: scratch, reaping: fixture)
        #expect(dump.failed && dump.stderrLines.count == 1 && dump.stderr.contains("pid \(fixture.pid) fd ")
                && dump.stderr.contains("kernel TLS"), "\(dump)")
        #expect(fixture.pollOriginal() == nil, "a refused dump must leave the fixture running")
        fixture.signal(SIGTERM)
        #expect(fixture.reapOriginal(timeout: 30) == .exited(0), "\(fixture.report)")
        expectPass(fixture, "\(dump)")
    }

    @Test("a UDP socket with corked data (UDP_CORK, MSG_MORE) is refused in one line; the data is still sent afterwards")
    func corkedUDPRefused() throws {
        let scratch = try Scratch("udp-corked")
        defer { scratch.remove() }
        let fixture = try Fixture("sockopts", arguments: ["corked"], in: scratch)
        defer { fixture.cleanUp() }
        try fixture.waitReady()
        let images = scratch.file("img")
        let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
        #expect(dump.failed && dump.stderrLines.count == 1, "want one line\n\(dump)")
        #expect(dump.stderr.contains("pid \(fixture.pid) fd ") && dump.stderr.contains("UDP") && dump.stderr.contains("corked data"), "\(dump)")
        #expect(!FileManager.default.fileExists(atPath: images), "a failed dump should remove its image folder")
        #expect(fixture.pollOriginal() == nil, "a refused dump must leave the fixture running")
        fixture.signal(SIGTERM)
        let exit = fixture.reapOriginal(timeout: 30)
        #expect(exit == .exited(0), "\(fixture.report)")
        expectPass(fixture, "\(dump)")
    }
}

extension EndToEnd.InetTests {
    @Test("ICMP ping sockets (IPv4, IPv6) keep their identifier and options and get echoes answered; a reply not read is refused")
    func pingSockets() throws {
        try inNetworkNamespace("ping") { (enter: [String], namespace: String) in
            // Ping sockets need the creator's group in the range (root's too); set in this namespace only.
            let range = shell("ip netns exec \(namespace) sysctl -qw net.ipv4.ping_group_range='0 2147483647'")
            try #require(range.status == 0, "ping_group_range: \(range.output)")
            let scratch = try Scratch("ping")
            defer { scratch.remove() }

            try expectQueuedRefused("ping", saying: ["ICMP ping", "reply not read"], enter: enter, in: scratch)

            try sockoptsRoundTrip(["ping"], enter: enter, in: scratch)
        }
    }
}

extension EndToEnd.InetTests {
    @Test("netlink sockets keep protocol, port id, groups (above 32 too), peer and options; route answers after restore")
    func netlinkSockets() throws {
        try inNetworkNamespace("netlink") { enter in
            let scratch = try Scratch("netlink")
            defer { scratch.remove() }
            try sockoptsRoundTrip(["netlink"], enter: enter, in: scratch)
        }
    }
}

extension EndToEnd.InetTests {
    @Test("AF_PACKET sockets keep protocol, interface, filter and lock, PACKET_* options and memberships; a frame not read, a ring of a closed descriptor are refused")
    func packetSockets() throws {
        try inNetworkNamespace("packet") { (enter: [String], namespace: String) in
            let scratch = try Scratch("packet")
            defer { scratch.remove() }
            func loCounts() -> String {
                let shown = shell("ip -n \(namespace) -d link show lo").output
                return ["promiscuity", "allmulti"].map { word in
                    shown.components(separatedBy: " ").drop { $0 != word }.dropFirst().first.map { "\(word) \($0)" } ?? "no \(word)"
                }.joined(separator: ", ")
            }

            try expectQueuedRefused("packet", saying: ["AF_PACKET", "frame not read"], enter: enter, in: scratch)
            // A ring mapped after its descriptor was closed: no descriptor to make the socket from (PacketRingTests).
            try expectQueuedRefused("packet", ["ring"], saying: ["mapping", "socket:[", "PACKET_RX_RING", "descriptor the tree has closed"],
                                    enter: enter, in: scratch)

            try sockoptsRoundTrip(["packet"], enter: enter, in: scratch, beforeDump: { _ in
                #expect(loCounts() == "promiscuity 1, allmulti 1", "before the dump")
            }, afterDump: { _ in
                #expect(loCounts() == "promiscuity 0, allmulti 0", "the dumped socket is gone")
            }, whileRunning: {
                #expect(loCounts() == "promiscuity 1, allmulti 1", "memberships after restore")
            })
        }
    }
}

extension EndToEnd.InetTests {
    @Test("a connection kept in LAST_ACK by a DROP rule of the program's own on its port comes back in LAST_ACK; cryo's rule goes")
    func lastAckBehindDropRule() throws {
        _ = try requireTestProgram("/usr/sbin/iptables", package: "iptables")
        try inNetworkNamespace("dropack") { (enter: [String], namespace: String) in
            let scratch = try Scratch("tcp-dropack")
            defer { scratch.remove() }
            try sockoptsRoundTrip(["dropack"], fixture: "tcpstates", options: ["--tcp-established"], enter: enter, in: scratch)
            let left = shell("ip netns exec \(namespace) iptables -S").output
            #expect(!left.contains("cryo") && !left.contains("DROP"), "rules left behind:\n\(left)")
        }
    }
}

extension EndToEnd.InetTests {
    @Test("SOCK_PACKET sockets keep protocol and interface name; PACKET_FANOUT groups come back whole, a kernel-chosen id included")
    func packetGroups() throws {
        try inNetworkNamespace("pgroups") { enter in
            let scratch = try Scratch("packet-groups")
            defer { scratch.remove() }
            try sockoptsRoundTrip(["packet", "groups"], enter: enter, in: scratch, afterDump: { images in
                let show = try cryo(["show", images], in: scratch)
                #expect(show.stdout.contains("SOCK_PACKET protocol 0x800 on lo") && show.stdout.contains("fanout group 77 type 0"), "\(show)")
            })
        }
    }
}

extension EndToEnd.InetTests {
    @Test("AF_PACKET rings (TPACKET_V1, V2, V3; RX and TX) come back empty, mapped where they were (shared or private), and carry frames")
    func packetRings() throws {
        try inNetworkNamespace("ring") { (enter: [String], namespace: String) in
            let scratch = try Scratch("packet-ring")
            defer { scratch.remove() }
            try sockoptsRoundTrip([], fixture: "packetring", enter: enter, in: scratch, afterDump: { images in
                let show = try cryo(["show", images], in: scratch)
                for ring in ["TPACKET_V2 RX ring (4 blocks of 8192, 16 frames of 2048) TX ring (2 blocks of 4096, 4 frames of 2048)",
                             "TPACKET_V3 RX ring (4 blocks of 8192, 16 frames of 2048, retire 20 ms, private 16, features 0x0)",
                             "TPACKET_V1 RX ring (2 blocks of 4096, 8 frames of 1024)", "TPACKET_V3 TX ring (2 blocks of 4096, 4 frames of 2048)",
                             "TPACKET_V2 TX ring (3 blocks of 4096, 3 frames of 4096)"] {
                    #expect(show.stdout.contains(ring), "\(ring)\n\(show)")
                }
            })
        }
    }

    @Test("a ring with a frame not read, not sent, turned past its start, or a private mapping of it written to is refused in one line; the frame stays, the task runs on",
          arguments: [("unread", "1 frame not read yet in its PACKET_RX_RING"), ("unread3", "1 frame not read yet in its PACKET_RX_RING"),
                      ("used", "PACKET_RX_RING was read past its first frame"), ("sent", "has sent frames from its PACKET_TX_RING"),
                      ("privwritten", "privately (MAP_PRIVATE), and the task wrote to 0x")])
    func packetRingRefused(mode: String, saying: String) throws {
        try inNetworkNamespace("ring-\(mode)") { (enter: [String], namespace: String) in
            let scratch = try Scratch("packet-ring-\(mode)")
            defer { scratch.remove() }
            let fixture = try Fixture("packetring", arguments: [mode], in: scratch, launcher: enter)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", scratch.file("img")], in: scratch, reaping: fixture, launcher: enter)
            let mappingOrFD = mode == "privwritten" ? "pid \(fixture.pid): mapping 0x" : "pid \(fixture.pid) fd "
            #expect(dump.failed && dump.stderrLines.count == 1 && dump.stderr.contains(mappingOrFD)
                    && dump.stderr.contains("AF_PACKET") && dump.stderr.contains(saying), "\(dump)")
            #expect(fixture.pollOriginal() == nil, "a refused dump must leave the fixture running")
            fixture.signal(SIGTERM)
            #expect(fixture.reapOriginal(timeout: 30) == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }
    }
}

extension EndToEnd.InetTests {
    @Test("raw IPv4/IPv6 sockets (IPPROTO_RAW and protocols past 255 too) keep protocol, address, peer, IP_HDRINCL, ICMP_FILTER, IPV6_CHECKSUM; a packet not read is refused")
    func rawSockets() throws {
        try inNetworkNamespace("raw") { enter in
            let scratch = try Scratch("raw")
            defer { scratch.remove() }
            try expectQueuedRefused("raw", saying: ["raw socket", "protocol 253", "packet not read"], enter: enter, in: scratch)

            try sockoptsRoundTrip(["raw"], enter: enter, in: scratch)
        }
    }
}

extension EndToEnd.InetTests {
    @Test("a handshake in SYN_RECV is refused in one line; with --skip-in-flight and --network-lock its peer, and one whose SYN came in the gap, connect after restore")
    func synReceived() throws {
        _ = try requireTestProgram("/usr/sbin/iptables", package: "iptables")
        try inNetworkNamespace("synrecv") { (enter: [String], namespace: String) in
            let scratch = try Scratch("tcp-synrecv")
            defer { scratch.remove() }
            let fixture = try Fixture("tcpstates", arguments: ["inflight"], in: scratch, launcher: enter)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let port = try #require(fixture.tagged("PORT")?.first)
            // The listener's SYN-ACKs are dropped: the peer waits in SYN_SENT, the listener holds it in SYN_RECV.
            let dropSynAck = "iptables -w %@ OUTPUT -p tcp --sport \(port) --tcp-flags SYN,ACK SYN,ACK -j DROP"
            let added = shell("ip netns exec \(namespace) \(dropSynAck.replacingOccurrences(of: "%@", with: "-I"))")
            try #require(added.status == 0, "iptables: \(added.output)")
            let peer = try Fixture("tcpstates", arguments: ["synpeer", port], in: scratch, launcher: enter, logPath: scratch.file("peer.log"))
            defer { peer.cleanUp() }
            try peer.waitReady()
            #expect(waitUntil(timeout: 10) { shell("ip netns exec \(namespace) cat /proc/net/tcp").output.contains(" 03 ") },
                    "no connection in SYN_RECV")

            let refused = try cryo(["dump", "--network-lock", "iptables", "-t", "\(fixture.pid)", "-D", scratch.file("refused")], in: scratch,
                                   reaping: fixture, launcher: enter)
            #expect(refused.failed && refused.stderrLines.count == 1 && refused.stderr.contains("SYN_RECV")
                    && refused.stderr.contains("--skip-in-flight") && refused.stderr.contains("pid \(fixture.pid) fd "), "\(refused)")
            #expect(fixture.pollOriginal() == nil, "a refused dump must leave the fixture running")
            let left = shell("ip netns exec \(namespace) iptables -S").output
            #expect(!left.contains("cryo-lock-"), "lock rules left after a refused dump:\n\(left)")

            let images = scratch.file("img")
            let dump = try cryo(["dump", "--skip-in-flight", "--network-lock", "iptables", "-t", "\(fixture.pid)", "-D", images],
                                in: scratch, reaping: fixture, launcher: enter)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
            try #require(fixture.reapOriginal(timeout: 20) != nil, "pid \(fixture.pid) still runs after the dump")
            _ = shell("ip netns exec \(namespace) \(dropSynAck.replacingOccurrences(of: "%@", with: "-D"))")
            // A second peer connects into the gap: the lock drops its SYN, so it gets no RST and sends it again.
            peer.signal(SIGUSR1)
            #expect(waitUntil(timeout: 10) { peer.lines.contains("SENT") }, "\(peer.report)")
            usleep(300_000)
            let restore = try CryoProcess(["restore", "-D", images], in: scratch, launcher: enter)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore, timeout: 90)
            let peerExit = peer.reapOriginal(timeout: 60)
            #expect(peerExit == .exited(0), "\(peer.report)")
            expectPass(peer)
            let rules = shell("ip netns exec \(namespace) iptables -S").output
            #expect(!rules.contains("cryo-lock-"), "lock rules left after restore:\n\(rules)")
        }
    }
}
