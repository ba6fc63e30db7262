// PostgreSQL (Debian's package, installed by Scripts/setup.sh --test-package
// postgresql when missing; skipped saying so when that fails): a postmaster
// with its background processes, a System V interlock segment, shared
// anonymous memory and a /dev/shm segment is dumped, killed and restored;
// a new connection then reads what was written before the dump and writes.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("PostgreSQL")
    struct PostgresTests {
        static func binaries() throws -> String {
            let installed = ((try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? [])
                .map { "/usr/lib/postgresql/\($0)/bin" }.filter { Locations.isExecutableFile($0 + "/postgres") }.sorted()
            if let last = installed.last { return last }
            // Debian 12's version.
            return String(try requireTestProgram("/usr/lib/postgresql/15/bin/postgres", package: "postgresql").dropLast("/postgres".count))
        }

        /// psql as the postgres role over the unix socket in `socketDirectory`; its output, or nil when it fails.
        static func psql(_ sql: String, socketDirectory: String, port: Int, scratch: Scratch) -> String? {
            let out = scratch.unique("psql") + ".out"
            guard let pid = try? spawnProcess("/usr/bin/psql", ["-h", socketDirectory, "-p", "\(port)", "-U", "postgres", "-X", "-Atc", sql],
                                              stdoutPath: out, stderrPath: out + ".err") else { return nil }
            let status = reap(pid, timeout: 20)
            if status == nil { kill(pid, SIGKILL); _ = reap(pid, timeout: 5) }
            return status == .exited(0) ? readText(out).trimmingCharacters(in: .whitespacesAndNewlines) : nil
        }

        @Test("a postmaster tree round-trips: a new connection reads and writes after restore")
        func roundTrip() throws {
            let bin = try Self.binaries()
            guard let account = getpwnam("postgres") else { try Test.cancel("no postgres user (the postgresql package makes it)") }
            let (uid, gid) = (account.pointee.pw_uid, account.pointee.pw_gid)
            let scratch = try Scratch("postgres")
            defer { scratch.remove() }
            let data = scratch.file("data"), sockets = scratch.file("sock")
            try #require(mkdir(sockets, 0o755) == 0)
            for path in [scratch.path, sockets] { try #require(chown(path, uid, gid) == 0 && chmod(path, 0o755) == 0) }
            let asPostgres = ["/usr/bin/setpriv", "--reuid", "postgres", "--regid", "postgres", "--clear-groups"]
            let initLog = scratch.file("initdb.log")
            let initdb = try spawnProcess(asPostgres[0], Array(asPostgres.dropFirst()) + [bin + "/initdb", "-D", data, "-A", "trust", "-U", "postgres"],
                                          stdoutPath: initLog)
            try #require(reap(initdb, timeout: 120) == .exited(0), "initdb failed:\n\(readText(initLog))")
            let port = 40000 + Int(getpid() % 20000)
            let server = try Fixture("postgres", arguments: ["-D", data, "-k", sockets, "-p", "\(port)", "-c", "listen_addresses="],
                                     in: scratch, binary: bin + "/postgres", launcher: asPostgres)
            defer { server.cleanUp() }
            let up = waitUntil(timeout: 60, interval: 0.2) { Self.psql("select 1", socketDirectory: sockets, port: port, scratch: scratch) == "1" }
            try #require(up, "postgres does not answer\n\(server.report)")
            try #require(Self.psql("create table kept(x int); insert into kept values (42)", socketDirectory: sockets, port: port, scratch: scratch) != nil)
            // The long-lived background processes; a client's backend may still be exiting
            // (it comes back as the zombie it was, and is reaped), autovacuum workers come and go.
            let background = ["checkpointer", "background writer", "walwriter", "autovacuum launcher", "logical replication launcher"]
            let children = readText("/proc/\(server.pid)/task/\(server.pid)/children").split(separator: " ").compactMap { pid_t($0) }.filter { pid in
                let title = readText("/proc/\(pid)/cmdline").replacingOccurrences(of: "\0", with: " ")
                return background.contains { title.contains($0) }
            }
            try #require(children.count >= 4, "want the postmaster's background processes, found \(children)\n\(server.report)")

            let images = scratch.file("img")
            let dump = try cryo(["dump", "-t", "\(server.pid)", "-D", images], in: scratch, reaping: server)
            try #require(dump.succeeded, "\(dump)\n\(server.report)")
            try #require(server.reapOriginal(timeout: 20) != nil, "the postmaster still runs after the dump")
            try #require(waitUntil(timeout: 20) { !children.contains(where: pidExists) }, "background processes still run after the dump")

            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            let answering = waitUntil(timeout: 60, interval: 0.2) {
                !restore.isRunning || Self.psql("select 1", socketDirectory: sockets, port: port, scratch: scratch) == "1"
            }
            try #require(answering && restore.isRunning, "postgres does not answer after restore\n\(restore.wait(timeout: 1))\n\(server.report)")
            #expect(Self.psql("select x from kept", socketDirectory: sockets, port: port, scratch: scratch) == "42")
            #expect(Self.psql("insert into kept values (43); select sum(x) from kept", socketDirectory: sockets, port: port, scratch: scratch) == "INSERT 0 1\n85"
                    || Self.psql("select sum(x) from kept", socketDirectory: sockets, port: port, scratch: scratch) == "85")
            let now = readText("/proc/\(server.pid)/task/\(server.pid)/children").split(separator: " ").compactMap { pid_t($0) }
            #expect(Set(children).isSubset(of: Set(now)), "the background processes should be the restored ones \(children), now \(now)")
            // A fast shutdown: the postmaster ends its children and exits 0.
            kill(server.pid, SIGINT)
            let result = restore.wait(timeout: 60)
            #expect(result.status == .exited(0), "cryo restore should exit with the postmaster's status 0\n\(result)\n\(server.report)")
            #expect(server.log.contains("database system is shut down"), "\(server.report)")
        }
    }
}
