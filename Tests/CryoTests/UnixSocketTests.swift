// AF_UNIX sockets beyond the plain round trip of `unix`: descriptors in
// flight, senders' credentials, connections not yet accepted, and names in
// unusual states. Each fixture checks itself after restore.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("unix sockets")
    struct UnixSocketTests {
        @Test("descriptors in flight and senders' credentials come back in their messages")
        func inFlightAndCredentials() throws {
            try unixRoundTrip("unixpass") { scratch in [try scratch.folder("work")] }
        }

        @Test("restore --pidns: senders' pids are those inside the new namespace, an exited one's too")
        func credentialsInPidNamespace() throws {
            let scratch = try Scratch("unixpass-pidns")
            defer { scratch.remove() }
            let fixture = try Fixture("unixpass", arguments: [try scratch.folder("work")], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            let restore = try CryoProcess(["restore", "--pidns", "-D", images], in: scratch)
            defer { restore.stop() }
            // The restored root: a unixpass whose pid inside its namespace is the old one.
            var root: pid_t?
            waitUntil(timeout: 60) {
                root = hostPid(ofNamespaced: fixture.pid, named: "unixpass")
                return root != nil && ProcStatus(pid: root!)?.catches(SIGTERM) == true && ProcStatus(pid: root!)?.tracerPid == 0
            }
            let restored = try #require(root, "no restored unixpass with pid \(fixture.pid) in a namespace\n\(restore.wait(timeout: 5))")
            kill(restored, SIGTERM)
            let result = restore.wait(timeout: 60)
            #expect(result.status == .exited(0), "\(result)\n\(fixture.report)")
            expectPass(fixture, "\(result)")
        }

        @Test("connections not yet accepted come back in order with their bytes, descriptors and ends")
        func pendingConnections() throws {
            try unixRoundTrip("unixpending") { scratch in [try scratch.folder("work")] }
        }

        @Test("with --leave-running a listener with connections not yet accepted is refused in one line")
        func pendingLeaveRunningRefused() throws {
            let scratch = try Scratch("unixpending-leave")
            defer { scratch.remove() }
            let fixture = try Fixture("unixpending", arguments: [try scratch.folder("work")], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = scratch.file("img")
            let dump = try cryo(["dump", "--leave-running", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
            #expect(dump.failed, "\(dump)")
            #expect(dump.stderrLines.count == 1, "want one line\n\(dump)")
            #expect(dump.stderr.contains("pid \(fixture.pid) fd ") && dump.stderr.contains("not yet accepted")
                    && dump.stderr.contains("--leave-running"), "\(dump)")
            fixture.signal(SIGTERM)
            #expect(fixture.reapOriginal(timeout: 30) == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }

        @Test("relative, deleted, replaced, reused, renamed and self-connected names, a FIFO at the path, 2000 seqpacket records, SO_PASSSEC/PASSPIDFD")
        func names() throws {
            try unixRoundTrip("unixnames") { scratch in [try scratch.folder("work")] }
        }

        @Test("a datagram socket connected outside the tree needs --ext-unix-sk, then sends to its peer after restore")
        func externalDatagramPeer() throws {
            let scratch = try Scratch("unixnames-ext")
            defer { scratch.remove() }
            let peerPath = scratch.file("outside.sock")
            let peer = try boundDatagramSocket(peerPath)
            defer { close(peer) }
            let fixture = try Fixture("unixnames", arguments: [try scratch.folder("work"), "ext", peerPath], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            #expect(receiveDatagram(peer) == "before dump")

            let refused = try cryo(["dump", "-t", "\(fixture.pid)", "-D", scratch.file("refused")], in: scratch, reaping: fixture)
            #expect(refused.failed, "\(refused)")
            #expect(refused.stderrLines.count == 1, "want one line\n\(refused)")
            #expect(refused.stderr.contains("pid \(fixture.pid) fd ") && refused.stderr.contains(peerPath)
                    && refused.stderr.contains("--ext-unix-sk"), "\(refused)")
            #expect(fixture.pollOriginal() == nil, "the refused dump ended the fixture\n\(fixture.report)")

            let (images, _) = try dumpAndReap(fixture, in: scratch, options: ["--ext-unix-sk"])
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore, afterSignal: {
                #expect(receiveDatagram(peer, timeout: 10) == "after restore", "the restored socket did not reach its peer outside")
            })
        }

        @Test("an epoll descriptor in flight is refused in one line, and nothing is taken from the queue")
        func epollInFlightRefused() throws {
            let scratch = try Scratch("unixpass-epoll")
            defer { scratch.remove() }
            let fixture = try Fixture("unixpass", arguments: [try scratch.folder("work"), "epoll"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = scratch.file("img")
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
            #expect(dump.failed, "\(dump)")
            #expect(dump.stderrLines.count == 1, "want one line\n\(dump)")
            #expect(dump.stderr.contains("pid \(fixture.pid) fd ") && dump.stderr.contains("epoll") && dump.stderr.contains("in flight"),
                    "\(dump)")
            fixture.signal(SIGTERM)
            #expect(fixture.reapOriginal(timeout: 30) == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }
    }
}

/// Dump (killing), check the original is gone, restore in the foreground, SIGTERM, PASS.
func unixRoundTrip(_ name: String, dumpOptions: [String] = [], arguments: (Scratch) throws -> [String],
                   sourceLocation: SourceLocation = #_sourceLocation) throws {
    let scratch = try Scratch(name)
    defer { scratch.remove() }
    let fixture = try Fixture(name, arguments: try arguments(scratch), in: scratch)
    defer { fixture.cleanUp() }
    try fixture.waitReady()
    let (images, _) = try dumpAndReap(fixture, in: scratch, options: dumpOptions, sourceLocation: sourceLocation)
    let restore = try CryoProcess(["restore", "-D", images], in: scratch)
    defer { restore.stop() }
    try expectRestoredAndPassing(fixture, by: restore, sourceLocation: sourceLocation)
}

/// An AF_UNIX datagram socket of this test process bound at `path`.
private func boundDatagramSocket(_ path: String) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw HarnessError("socket: \(String(cString: strerror(errno)))") }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (i, b) in path.utf8.prefix(raw.count - 1).enumerated() { raw[i] = b }
    }
    let rc = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard rc == 0 else { close(fd); throw HarnessError("bind \(path): \(String(cString: strerror(errno)))") }
    return fd
}

/// The next datagram on `fd` as text, waiting up to `timeout` seconds; nil if none came.
private func receiveDatagram(_ fd: Int32, timeout: Double = 5) -> String? {
    var buffer = [UInt8](repeating: 0, count: 512)
    var got: Int = -1
    waitUntil(timeout: timeout) {
        got = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        return got >= 0
    }
    return got >= 0 ? String(decoding: buffer[0..<got], as: UTF8.self) : nil
}

/// The pid, as we see it, of a process named `name` whose pid in its own (nested) namespace is `inner`.
private func hostPid(ofNamespaced inner: pid_t, named name: String) -> pid_t? {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    for pid in entries.compactMap({ pid_t($0) }) {
        let status = readText("/proc/\(pid)/status")
        guard status.contains("Name:\t\(name)\n") else { continue }
        for line in status.split(separator: "\n") where line.hasPrefix("NSpid:") {
            let ids = line.split(whereSeparator: { $0 == "\t" || $0 == " " }).dropFirst().compactMap { pid_t($0) }
            if ids.count == 2 && ids[1] == inner { return pid }
        }
    }
    return nil
}
