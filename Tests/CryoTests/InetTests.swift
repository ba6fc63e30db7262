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
