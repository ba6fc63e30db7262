// A shell job on a real terminal: `script` runs a shell on a new pty (the
// controlling terminal of its session); the shell starts the fixture as a job
// with the terminal as stdin/stdout/stderr, dumps it with --shell-job (killing
// it) and restores it with --shell-job into its own session, on its terminal.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("terminals")
    struct TerminalTests {
        @Test("a console or a virtual terminal: dump refused in one line naming pid, fd and kind; it carries on",
              arguments: [("/dev/console", "console"), ("/dev/tty1", "virtual terminal")])
        func consoleRefused(device: String, kind: String) throws {
            guard FileManager.default.fileExists(atPath: device) else {
                Issue.record("\(device) does not exist here; the refusal cannot be tested")
                return
            }
            let scratch = try Scratch("console-refused")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch, launcher: ["/bin/sh", "-c", "exec 7<\(device); exec \"$0\" \"$@\""])
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", scratch.file("img")], in: scratch, reaping: fixture)
            #expect(dump.failed && dump.stderrLines.count == 1, "\(dump)")
            let line = dump.stderrLines.first ?? ""
            #expect(containsToken(line, "\(fixture.pid)") && line.contains("fd 7") && line.contains(device) && line.contains(kind), "\(line)")
            expectRunsAndPasses(fixture, "\(dump)")
        }

        @Test("a session of the tree whose controlling terminal is a pty of the tree: terminal, foreground group, /dev/tty, ^Z",
              arguments: ["child", "root"])
        func ownControllingTerminal(leader: String) throws {
            let scratch = try Scratch("ctty")
            defer { scratch.remove() }
            // "root": the root itself leads the session with the terminal (taken right after the root's setsid).
            let fixture = try Fixture("ctty", arguments: leader == "root" ? ["root"] : [], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            let show = try cryo(["show", "--json", images], in: scratch)
            #expect(show.stdout.contains("\"foregroundGroup\""), "the image should hold the session's terminal\n\(show)")
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore)
        }

        @Test("a session leader whose terminal's master is outside the dumped tree: refused in one line; it carries on")
        func controllingTerminalOutside() throws {
            let scratch = try Scratch("ctty-outside")
            defer { scratch.remove() }
            let fixture = try Fixture("ctty", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let leader = try #require(fixture.tagged("PIDS")?.first, "\(fixture.report)")
            let dump = try cryo(["dump", "-t", leader, "-D", scratch.file("img")], in: scratch)
            #expect(dump.status == .exited(1) && dump.stderrLines.count == 1, "\(dump)")
            let line = dump.stderrLines.first ?? ""
            #expect(containsToken(line, leader) && line.contains("controlling terminal /dev/pts/") && line.contains("not supported"), "\(line)")
            expectRunsAndPasses(fixture, "\(dump)")
        }

        @Test("/dev/tty held only by a process that gave its terminal up: refused in one line naming pid and fd; it carries on, the bytes waiting on its pty too")
        func devTtyWithoutTerminal() throws {
            let scratch = try Scratch("ctty-keep")
            defer { scratch.remove() }
            let fixture = try Fixture("ctty", arguments: ["keep"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let member = try #require(fixture.tagged("PIDS")?.last, "\(fixture.report)")
            let dump = try cryo(["dump", "-t", "\(fixture.pid)", "-D", scratch.file("img")], in: scratch)
            #expect(dump.status == .exited(1) && dump.stderrLines.count == 1, "\(dump)")
            let line = dump.stderrLines.first ?? ""
            #expect(line.contains("pid \(member) fd ") && line.contains("/dev/tty") && line.contains("not supported"), "\(line)")
            expectRunsAndPasses(fixture, "\(dump)")
        }

        @Test("ptys whose other side is gone: a slave whose master was closed comes back hung up, a master whose slave closed sees EIO")
        func hungUp() throws {
            let scratch = try Scratch("pty-hangup")
            defer { scratch.remove() }
            let fixture = try Fixture("ptyhangup", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            let show = try cryo(["show", images], in: scratch)
            #expect(show.stdout.contains("hung up"), "\(show)")
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore)
        }

        @Test("a shell job gets cryo's terminal back (--shell-job under a pty)")
        func shellJob() throws {
            guard Locations.isExecutableFile("/usr/bin/script") else {
                Issue.record("util-linux `script` is needed to run cryo on a terminal")
                return
            }
            let scratch = try Scratch("shelljob")
            defer { scratch.remove() }
            let fixture = try FixtureBuilder.binary(for: "shelljob")
            let cryo = try Locations.cryoBinary()
            let images = scratch.file("img")
            // The fixture opens /dev/tty as fd 5 right before it prints READY.
            let shell = """
                #!/bin/sh
                \(fixture) </dev/tty &
                P=$!
                for i in $(seq 200); do [ -e /proc/$P/fd/5 ] && break; sleep 0.05; done
                sleep 0.1
                \(cryo) dump --shell-job -t $P -D \(images); echo "dump status $?"
                for i in $(seq 200); do [ -e /proc/$P ] || break; sleep 0.05; done
                \(cryo) restore --shell-job -d -D \(images); echo "restore status $?"
                sleep 0.3
                kill -TERM $P
                for i in $(seq 200); do [ -e /proc/$P ] || break; sleep 0.05; done

                """
            let script = scratch.file("job.sh")
            try shell.write(toFile: script, atomically: true, encoding: .utf8)
            chmod(script, 0o755)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/script")
            process.arguments = ["-qfec", script, "/dev/null"]
            let output = Pipe()
            process.standardOutput = output
            process.standardError = output
            process.standardInput = FileHandle.nullDevice
            try process.run()
            let done = waitUntil(timeout: 60) { !process.isRunning }
            if !done { process.terminate() }
            let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(done, "the shell job did not finish within 60 s:\n\(text)")
            #expect(text.contains("dump status 0"), "\(text)")
            #expect(text.contains("restore status 0"), "\(text)")
            #expect(text.contains("PASS"), "the restored job did not say PASS:\n\(text)")
        }
    }
}
