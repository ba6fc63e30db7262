// Shared memory is one object however many processes map it: cryo saves each
// object once, from the object itself, with every page any process wrote
// (the tree round trip of the `shmem` fixture is in TreeTests), and refuses
// the kinds it cannot rebuild. nginx with shared zones is the real program
// that lost its workers when shared memory was read from one page table.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("shared memory")
    struct SharedMemoryTests {
        @Test("each shared memory object is saved once, only its pages that hold data, and the tree runs on")
        func savedOnce() throws {
            let scratch = try Scratch("shmem-once")
            defer { scratch.remove() }
            let fixture = try Fixture("shmem", in: scratch)
            var children: [pid_t] = []
            defer {
                fixture.cleanUp()
                for pid in children { kill(pid, SIGKILL) }
            }
            try fixture.waitReady()
            children = (fixture.tagged("PIDS") ?? []).dropFirst().compactMap { pid_t($0) }
            let images = scratch.file("img")
            let dump = try cryo(["dump", "--leave-running", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")

            // A, B, C (three processes map it) and D (one): 4 objects; M is a memfd and T a file, which hold their own pages.
            let objects = (try FileManager.default.contentsOfDirectory(atPath: images)).filter { $0.hasPrefix("shmem-") }.sorted()
            #expect(objects == ["shmem-0.img", "shmem-1.img", "shmem-2.img", "shmem-3.img"], "objects saved: \(objects)")
            // Pages holding data: A 0, 5, 9, 15 (12 was only read: zeros), B 3, 7, C 0, 7, D 2.
            let saved = objects.reduce(0) { $0 + fileSize(images + "/" + $1) }
            #expect(saved == 9 * 4096, "the objects' page files hold \(saved) bytes, want 9 pages (36864): each written page once, no zeros")

            fixture.signal(SIGTERM)
            let exit = fixture.reapOriginal(timeout: 60)
            #expect(exit == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(dump)")
        }

        @Test("a truncated shared memory pages file is refused before anything is created, naming the file")
        func truncatedObject() throws {
            let scratch = try Scratch("shmem-truncated")
            defer { scratch.remove() }
            let fixture = try Fixture("shmem", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pids = (fixture.tagged("PIDS") ?? []).compactMap { pid_t($0) }
            let images = try dumpAndReap(fixture, in: scratch).images
            try #require(waitUntil(timeout: 20) { !pids.contains(where: pidExists) }, "the tree still runs after the dump")
            let object = images + "/shmem-0.img"
            try #require(fileSize(object) >= 8192, "shmem-0.img holds \(fileSize(object)) bytes")
            try #require(truncate(object, off_t(fileSize(object) - 4096)) == 0, "truncate: \(String(cString: strerror(errno)))")

            let restore = try cryo(["restore", "-D", images], in: scratch, timeout: 60)
            #expect(restore.failed, "restore from a truncated shmem-0.img should fail\n\(restore)")
            #expect(restore.stderrLines.count == 1 && restore.stderr.contains("shmem-0.img"), "one line naming shmem-0.img\n\(restore)")
            #expect(!pids.contains(where: pidExists), "processes of the tree exist after the refused restore")
        }

        @Test("nginx master and workers with shared zones serve requests after restore")
        func nginx() throws {
            let nginx = try requireTestProgram("/usr/sbin/nginx", package: "nginx")
            let scratch = try Scratch("nginx")
            defer { scratch.remove() }
            let server = try NginxServer(binary: nginx, in: scratch)
            defer { server.stop() }
            try server.waitServing()
            let workers = server.workers()
            try #require(workers.count == 2, "want 2 workers, found \(workers)\n\(server.errorLog)")

            // Keys of the limit_req zone: each request leaves a node in it, in slab pages only the workers wrote.
            let paths = (1...12).map { "/zone-\($0)-" + String(repeating: "x", count: 300) }
            for path in paths {
                let status = httpGet(port: server.port, path: path)?.status
                try #require(status == 404, "GET \(path.prefix(12))... before the dump: \(status.map(String.init) ?? "no answer")\n\(server.errorLog)")
            }
            // One request per minute: the second one is refused (503) as long as the zone remembers the first.
            try #require(httpGet(port: server.port, path: "/limited/page")?.status == 200, "the first /limited/page should pass\n\(server.errorLog)")

            let images = scratch.file("img")
            let dump = try cryo(["dump", "-t", "\(server.master.pid)", "-D", images], in: scratch, reaping: server.master)
            try #require(dump.succeeded, "\(dump)\n\(server.errorLog)")
            try #require(server.master.reapOriginal(timeout: 20) != nil, "the master still runs after the dump")
            try #require(waitUntil(timeout: 20) { !workers.contains(where: pidExists) }, "workers still run after the dump")

            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            server.restore = restore
            let serving = waitUntil(timeout: 60, interval: 0.1) { !restore.isRunning || httpGet(port: server.port, path: "/")?.status == 200 }
            try #require(serving && restore.isRunning, "nginx does not serve after restore\n\(restore.wait(timeout: 1))\n\(server.errorLog)")

            let index = httpGet(port: server.port, path: "/")
            #expect(index?.body == NginxServer.indexText, "GET / after restore: \(index.map { "\($0.status) \($0.body)" } ?? "no answer")")
            for path in paths + paths {
                let status = httpGet(port: server.port, path: path)?.status
                if status != 404 {
                    Issue.record("GET \(path.prefix(12))... after restore: \(status.map(String.init) ?? "no answer (a worker died?)")")
                    break
                }
            }
            let limited = httpGet(port: server.port, path: "/limited/page")?.status
            #expect(limited == 503, "the second /limited/page after restore got \(limited.map(String.init) ?? "no answer"), want 503: the zone forgot the first")
            #expect(server.workers() == workers, "the workers should be the restored ones \(workers), now \(server.workers())")
            #expect(!server.errorLog.contains("exited on signal"), "a worker died:\n\(server.errorLog)")

            kill(server.master.pid, SIGQUIT)
            let result = restore.wait(timeout: 60)
            #expect(result.status == .exited(0), "cryo restore should exit with nginx's status 0\n\(result)\n\(server.errorLog)")
        }
    }
}


/// A program one test runs: installed through Scripts/setup.sh --test-package when missing; the test is cancelled (skipped) with
/// the reason when that fails.
func requireTestProgram(_ path: String, package: String) throws -> String {
    if Locations.isExecutableFile(path) { return path }
    let scratch = try Scratch("setup-\(package)")
    defer { scratch.remove() }
    let log = scratch.file("setup.log")
    let pid = try spawnProcess("/bin/bash", [Locations.packageRoot + "/Scripts/setup.sh", "--test-package", package], stdoutPath: log, stderrPath: log)
    let status = reap(pid, timeout: 600)
    if status == nil { kill(pid, SIGKILL); _ = reap(pid, timeout: 10) }
    if !Locations.isExecutableFile(path) {
        let tail = readText(log).split(separator: "\n").suffix(3).joined(separator: " | ")
        try Test.cancel(Comment(rawValue: "\(package) is not installed and Scripts/setup.sh --test-package \(package) could not install it (\(status.map(\.description) ?? "timed out")): \(tail)"))
    }
    return path
}

/// nginx in master+workers mode on a free loopback port, with its own prefix in the scratch folder:
/// a limit_conn zone, a limit_req zone keyed by URI, and a one-request-per-minute zone.
private final class NginxServer {
    static let indexText = "served by a restored nginx\n"
    let master: Fixture
    let port: UInt16
    let prefix: String
    var restore: CryoProcess?

    init(binary: String, in scratch: Scratch) throws {
        let prefix = scratch.path
        self.prefix = prefix
        chmod(prefix, 0o755)  // the workers run as www-data
        try FileManager.default.createDirectory(atPath: prefix + "/html/limited", withIntermediateDirectories: true)
        try NginxServer.indexText.write(toFile: prefix + "/html/index.html", atomically: false, encoding: .utf8)
        try "limited\n".write(toFile: prefix + "/html/limited/page", atomically: false, encoding: .utf8)
        let port = try freeLoopbackPort()
        self.port = port
        let temporaries = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].map { "  \($0)_temp_path \(prefix)/\($0);" }
        let config = """
            daemon off;
            master_process on;
            worker_processes 2;
            user www-data;
            pid \(prefix)/nginx.pid;
            error_log \(prefix)/error.log info;
            events { worker_connections 64; }
            http {
              access_log \(prefix)/access.log;
            \(temporaries.joined(separator: "\n"))
              limit_conn_zone $binary_remote_addr zone=perip:1m;
              limit_req_zone $request_uri zone=uris:1m rate=1000r/s;
              limit_req_zone $binary_remote_addr zone=strict:1m rate=1r/m;
              server {
                listen 127.0.0.1:\(port);
                root \(prefix)/html;
                limit_conn perip 16;
                location / { limit_req zone=uris burst=1000 nodelay; }
                location /limited/ { limit_req zone=strict; }
              }
            }

            """
        try config.write(toFile: prefix + "/nginx.conf", atomically: false, encoding: .utf8)
        master = try Fixture("nginx", arguments: ["-p", prefix, "-c", prefix + "/nginx.conf", "-e", prefix + "/error.log"],
                             in: scratch, binary: binary)
    }

    var errorLog: String { "nginx error.log:\n" + readText(prefix + "/error.log") + "\nstdout/stderr:\n" + master.log }

    func waitServing() throws {
        let up = waitUntil(timeout: 20, interval: 0.05) { httpGet(port: port, path: "/")?.status == 200 || master.pollOriginal() != nil }
        guard up, master.pollOriginal() == nil else { throw HarnessError("nginx does not serve on 127.0.0.1:\(port)\n\(errorLog)") }
    }

    /// The master's children, by pid.
    func workers() -> [pid_t] {
        let text = readText("/proc/\(master.pid)/task/\(master.pid)/children")
        return text.split(separator: " ").compactMap { pid_t($0) }.sorted()
    }

    func stop() {
        let left = workers()
        restore?.stop()
        master.cleanUp()
        for pid in left { kill(pid, SIGKILL) }
    }
}

private func freeLoopbackPort() throws -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw HarnessError("socket: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound else { throw HarnessError("bind 127.0.0.1:0: \(String(cString: strerror(errno)))") }
    return UInt16(bigEndian: address.sin_port)
}

/// One HTTP/1.0 GET over loopback: status and body, or nil when nothing answers within 5 s.
private func httpGet(port: UInt16, path: String) -> (status: Int, body: String)? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
    guard connected else { return nil }
    let request = Array("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
    guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else { return nil }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        response += buffer[0..<n]
    }
    let text = String(decoding: response, as: UTF8.self)
    let parts = text.components(separatedBy: "\r\n\r\n")
    let statusLine = parts.first?.split(separator: "\r\n").first?.split(separator: " ") ?? []
    guard statusLine.count >= 2, let status = Int(statusLine[1]) else { return nil }
    return (status, parts.dropFirst().joined(separator: "\r\n\r\n"))
}
