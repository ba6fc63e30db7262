// Failures must be clean: a non-zero exit with a one-line reason, and the
// process (or its pid) left as it should be.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("failures")
    struct ErrorTests {
        @Test("dump into a folder that cannot be created fails and leaves the process running")
        func unwritableImageFolder() throws {
            let scratch = try Scratch("unwritable")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()

            // Root ignores permission bits, but nothing can create a folder under a regular file.
            let blocker = scratch.file("file")
            try #require(FileManager.default.createFile(atPath: blocker, contents: Data("x".utf8)))
            let images = blocker + "/img"
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
            #expect(dump.failed, "dump into \(images) should fail with a non-zero exit\n\(dump)")
            #expect(dump.stderrLines.count == 1, "want exactly one line on stderr\n\(dump)")

            expectStillRunning(fixture)
            fixture.signal(SIGTERM)
            let exit = fixture.reapOriginal(timeout: 30)
            #expect(exit == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }

        @Test("an AF_NETLINK socket holding a message not read yet is refused naming pid, fd and the family")
        func netlinkSocketRefused() throws {
            try expectSocketRefused(arguments: [], naming: "AF_NETLINK")
        }

        @Test("AF_PACKET in a fanout group chosen by a BPF program and MPTCP sockets are refused in one line naming family and protocol",
              arguments: [("packet", "PACKET_FANOUT group 4242 of type PACKET_FANOUT_CBPF"), ("mptcp", "an AF_INET socket (SOCK_STREAM, IPPROTO_MPTCP")])
        func otherSocketsRefused(kind: String, words: String) throws {
            try expectSocketRefused(arguments: [kind], naming: words)
        }

        /// epoll knows a target by (file, fd number): a watch whose file lives on only in a process
        /// outside the tree has no descriptor restore could add it through.
        @Test("an epoll watch of a file only a process outside the tree still holds (the watcher closed it) is refused in one line")
        func epollTargetElsewhereRefused() throws {
            let scratch = try Scratch("epoll-outside")
            defer { scratch.remove() }
            let fixture = try Fixture("epollclosed", arguments: ["outside"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let watched = try #require(fixture.tagged("WATCHED")?.first, "no WATCHED line\n\(fixture.report)")
            let images = scratch.file("img")
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
            expectOneLine(dump, naming: ["pid \(fixture.pid) fd ", "epoll", "fd \(watched), which the process has closed",
                                         "no process of the tree holds"])
            #expect(!FileManager.default.fileExists(atPath: images), "a failed dump should remove the image folder it created")
            expectStillRunning(fixture)
            fixture.signal(SIGTERM)
            #expect(fixture.reapOriginal(timeout: 30) == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }

        /// MariaDB's InnoDB uses io_uring by default: the refusal says what it is and leaves the process as it was.
        @Test("an io_uring instance is refused in one line naming it; its rings still work afterwards")
        func ioUringRefused() throws {
            try expectRefusedThenPassing("iouring", naming: ["io_uring instance", "io_uring_setup"])
        }

        /// apache2 sets TCP_DEFER_ACCEPT: a client that connected and sent nothing is in SYN_RECV at the listener.
        @Test("a TCP_DEFER_ACCEPT listener holding a silent client is refused in one line that says why")
        func deferAcceptRefused() throws {
            try expectRefusedThenPassing("deferaccept", naming: ["SYN_RECV", "TCP_DEFER_ACCEPT", "--skip-in-flight"])
        }

        @Test("restore while the original still runs fails naming the pid and its holder")
        func pidInUse() throws {
            let scratch = try Scratch("pid-in-use")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid

            let images = scratch.file("img")
            let dump = try cryo(["dump", "--leave-running", "-t", "\(pid)", "-D", images], in: scratch, reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")

            let restore = try cryo(["restore", "-D", images], in: scratch, timeout: 60)
            #expect(restore.failed, "restoring over a live pid should fail\n\(restore)")
            #expect(restore.stderrLines.count == 1, "want exactly one line on stderr\n\(restore)")
            #expect(containsToken(restore.stderr, "\(pid)"), "the error should name pid \(pid)\n\(restore)")
            #expect(restore.stderr.contains(fixture.name), "the error should name the holder's comm \"\(fixture.name)\"\n\(restore)")

            expectStillRunning(fixture)
            fixture.signal(SIGTERM)
            let exit = fixture.reapOriginal(timeout: 30)
            #expect(exit == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(restore)")
        }

        @Test("a truncated pages file is refused, naming the file, and leaves no process")
        func truncatedPages() throws {
            let scratch = try Scratch("truncated")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid

            let images = try dumpAndReap(fixture, in: scratch).images

            let names = try FileManager.default.contentsOfDirectory(atPath: images).filter { $0.hasPrefix("pages") }
            let sized = names.map { name -> (String, Int64) in
                var st = stat()
                return (name, stat(images + "/" + name, &st) == 0 ? Int64(st.st_size) : 0)
            }
            let largest = try #require(sized.max { $0.1 < $1.1 }, "no pages* file in the image: \(names)")
            try #require(largest.1 > 0, "the pages file \(largest.0) is empty")
            try #require(truncate(images + "/" + largest.0, off_t(largest.1 / 2)) == 0, "truncate: \(String(cString: strerror(errno)))")

            let restore = try cryo(["restore", "-D", images], in: scratch, timeout: 60)
            #expect(restore.failed, "restore from a truncated \(largest.0) should fail\n\(restore)")
            #expect(restore.stderr.contains(largest.0), "the error should name \(largest.0)\n\(restore)")
            // An orphan is reaped by init at once; allow it a moment, no more.
            let gone = waitUntil(timeout: 2) { !pidExists(pid) }
            #expect(gone, "a process with pid \(pid) is left after the failed restore: \(describeProcess(pid))")
            #expect(!fixture.lines.contains("PASS") && !fixture.lines.contains(where: { $0.hasPrefix("FAIL") }),
                    "the half-restored process ran on:\n\(fixture.report)")
        }
    }
}

/// The socket fixture holds a socket cryo must refuse (next to a unix
/// socketpair it can dump): the dump fails with one line naming the pid, the
/// refused fd, "socket" and `word`, removes its image folder and leaves the
/// process running with its sockets untouched.
/// The fixture's dump is refused in one line naming its pid and `words`, removes its image folder and leaves
/// the fixture running, which then checks itself after SIGTERM.
private func expectRefusedThenPassing(_ name: String, naming words: [String], sourceLocation: SourceLocation = #_sourceLocation) throws {
    let scratch = try Scratch(name)
    defer { scratch.remove() }
    let fixture = try Fixture(name, in: scratch)
    defer { fixture.cleanUp() }
    try fixture.waitReady()
    let images = scratch.file("img")
    let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
    expectOneLine(dump, naming: ["pid \(fixture.pid)"] + words, sourceLocation: sourceLocation)
    #expect(!FileManager.default.fileExists(atPath: images), "a failed dump should remove the image folder it created",
            sourceLocation: sourceLocation)
    expectStillRunning(fixture, sourceLocation: sourceLocation)
    fixture.signal(SIGTERM)
    #expect(fixture.reapOriginal(timeout: 30) == .exited(0), "\(fixture.report)", sourceLocation: sourceLocation)
    expectPass(fixture, "\(dump)", sourceLocation: sourceLocation)
}

private func expectSocketRefused(arguments: [String], naming word: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let scratch = try Scratch("socket")
    defer { scratch.remove() }
    let fixture = try Fixture("socket", arguments: arguments, in: scratch)
    defer { fixture.cleanUp() }
    try fixture.waitReady()
    let socketFds = fixture.tagged("SOCKETS") ?? []
    try #require(!socketFds.isEmpty, "socket fixture printed no SOCKETS line\n\(fixture.report)", sourceLocation: sourceLocation)

    let images = scratch.file("img")
    let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
    #expect(dump.failed, "dumping a process with such a socket should fail\n\(dump)", sourceLocation: sourceLocation)
    let message = dump.stderr
    #expect(dump.stderrLines.count == 1, "want exactly one line on stderr\n\(dump)", sourceLocation: sourceLocation)
    #expect(containsToken(message, "\(fixture.pid)"), "the error should name pid \(fixture.pid)\n\(dump)", sourceLocation: sourceLocation)
    #expect(socketFds.contains { containsToken(message, $0) }, "the error should name the socket's fd (\(socketFds))\n\(dump)",
            sourceLocation: sourceLocation)
    #expect(message.lowercased().contains("socket"), "the error should say \"socket\"\n\(dump)", sourceLocation: sourceLocation)
    #expect(message.contains(word), "the error should say \"\(word)\"\n\(dump)", sourceLocation: sourceLocation)
    #expect(!FileManager.default.fileExists(atPath: images), "a failed dump should remove the image folder it created",
            sourceLocation: sourceLocation)

    expectStillRunning(fixture, sourceLocation: sourceLocation)
    fixture.signal(SIGTERM)
    let exit = fixture.reapOriginal(timeout: 30)
    #expect(exit == .exited(0), "\(fixture.report)", sourceLocation: sourceLocation)
    expectPass(fixture, "\(dump)", sourceLocation: sourceLocation)
}

/// After a failed or --leave-running dump the fixture must still be ours and
/// running: not ended, stopped, traced or frozen.
private func expectStillRunning(_ fixture: Fixture, sourceLocation: SourceLocation = #_sourceLocation) {
    if let ended = fixture.pollOriginal() {
        Issue.record("the fixture ended: \(ended)\n\(fixture.report)", sourceLocation: sourceLocation)
        return
    }
    let status = ProcStatus(pid: fixture.pid)
    #expect(status?.isRunning == true && status?.tracerPid == 0,
            "the fixture should be left running untraced: \(describeProcess(fixture.pid))", sourceLocation: sourceLocation)
}
