import ArgumentParser
import Cryo
import CryoNet
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// `cryo migrate -t PID --to ADDR:PORT`: moves a running tree to a `cryo receive`.
struct MigrateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Move a running process tree to another host where `cryo receive` listens.")
    @Option(name: [.customShort("t"), .customLong("tree")], help: "The pid to migrate.")
    var pid: Int32
    @Option(name: .customLong("to"), help: "The destination's ADDR:PORT.")
    var destination: String
    @Flag(name: [.customShort("j"), .customLong("shell-job")], help: "Allow a process in cryo's session (a shell job).")
    var shellJob = false
    @Flag(name: .customLong("tcp-established"), help: "Move established TCP connections too (TCP_REPAIR).")
    var tcpEstablished = false
    @Option(name: .customLong("network-lock"),
            help: "iptables (the default with --tcp-established), nftables or skip: the firewall rules that keep the moved connections quiet from the freeze until the destination runs the tree.")
    var networkLock: NetworkLock?
    @Option(name: .customLong("move-address"),
            help: "The service address (IPv4 or IPv6) the moved connections use: taken off the tree's network namespace once it is frozen and added at the destination (its --address-interface), announced by gratuitous ARP or an unsolicited neighbour advertisement; back here if the migration fails.")
    var moveAddress: String?
    @Option(name: .customLong("max-rounds"), help: "Most pre-copy rounds while the tree runs (default 10).")
    var maxRounds = 10
    @Flag(name: .customLong("lazy-pages"), help: "The destination starts the tree at once and fills its memory from the received image while it runs.")
    var lazyPages = false
    @OptionGroup var security: MigrationSecurity
    @Flag(name: .customLong("display-stats"), help: "Print rounds, bytes and frozen time.")
    var displayStatistics = false
    @Option(name: [.customShort("D"), .customLong("images-dir")], help: "Write stats-dump here (the image itself goes over the connection only).")
    var directory: String?
    @OptionGroup var common: CommonOptions

    func validate() throws { try security.check() }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)  // a vanished peer is an error from send, not a death
        let logger = common.logger()
        let statistics: MigrationStatistics = try failing {
            let key = try security.key()
            let fd = try MigrationEndpoint.connect(destination)
            let link = try security.link(fd, peer: destination, key: key, server: false)
            defer { link.close() }
            var options = MigrateOptions(pid: pid, destination: destination, shellJob: shellJob, tcpEstablished: tcpEstablished,
                                         maxRounds: max(1, maxRounds), lazyPages: lazyPages)
            options.networkLock = NetworkLock.mode(networkLock, tcpEstablished: tcpEstablished)
            options.moveAddress = moveAddress
            return try Migrator(options: options, logger: logger).run(over: link)
        }
        if common.verbose > 0 || displayStatistics {
            MigrationDisplay.print(statistics, pid: pid, destination: destination)
        }
        if let directory {
            try failing {
                if !Files.exists(directory) { try Files.makeDirectory(directory, mode: 0o700, object: "folder \(directory)") }
                try MigrationStatistics.write(statistics, to: "\(directory)/stats-dump")
            }
        }
    }
}

/// `cryo receive --listen ADDR:PORT`: takes one migration and restores it here.
struct ReceiveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "receive",
        abstract: "Take one process tree from `cryo migrate` and restore it here.")
    @Option(name: .customLong("listen"), help: "ADDR:PORT to listen on.")
    var listen: String?
    @Option(name: .customLong("new-key"), help: "Create this key file (0600) first; copy it to the source and pass it to both with --key.")
    var newKey: String?
    @Option(name: [.customShort("D"), .customLong("images-dir")], help: "Keep the image in this folder (default: a private temporary one, removed).")
    var directory: String?
    @Flag(name: .customLong("pidns"), help: "Restore inside a new pid namespace, where the image's pids are free.")
    var pidNamespace = false
    @Flag(name: .customLong("tcp-established"), help: "Rebuild established TCP connections (TCP_REPAIR).")
    var tcpEstablished = false
    @Flag(name: .customLong("lazy-pages"), help: "Start the tree at once and fill its memory from the received image while it runs (also when migrate asks).")
    var lazyPages = false
    @Option(name: .customLong("address-interface"),
            help: "Where a service address the source moves (migrate --move-address) goes: added on this interface and announced (gratuitous ARP) before the tree runs.")
    var addressInterface: String?
    @OptionGroup var security: MigrationSecurity
    @OptionGroup var common: CommonOptions

    func validate() throws {
        guard listen != nil else {
            if newKey == nil { throw ValidationError("--listen ADDR:PORT is required") }
            return  // only making a key
        }
        var security = self.security
        if let newKey {
            if security.keyFile != nil { throw ValidationError("--new-key makes the key to use: leave out --key") }
            security.keyFile = newKey
        }
        try security.check()
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let logger = common.logger()
        if let newKey { try failing { try MigrationKey.create(newKey) } }
        guard let listen else { return }
        let result: ReceiveResult = try failing {
            var security = self.security
            if security.keyFile == nil { security.keyFile = newKey }
            let key = try security.key()
            let listener = try MigrationEndpoint.listen(listen)
            let (fd, peer) = try MigrationEndpoint.acceptOne(listener)
            try? listener.close()
            let link = try security.link(fd, peer: peer, key: key, server: true)
            defer { link.close() }
            var options = ReceiveOptions(directory: directory, newPidNamespace: pidNamespace, tcpEstablished: tcpEstablished,
                                         lazyPages: lazyPages)
            options.addressInterface = addressInterface
            return try Receiver(options: options, logger: logger).run(over: link)
        }
        if common.verbose > 0, let tree = result.tree {
            print(tree.rootPid == tree.rootPidInImage ? "restored pid \(tree.rootPid) after \(result.rounds) rounds, \(result.bytesReceived) bytes"
                  : "restored pid \(tree.rootPidInImage) as pid \(tree.rootPid) in a new pid namespace after \(result.rounds) rounds, \(result.bytesReceived) bytes")
            if result.postCopyBytes > 0 { print("post-copy: \(result.postCopyBytes) bytes after the start, \(result.postCopyRequests) page requests") }
            fflush(nil)
        }
        if let failure = result.loadingFailure {
            printError("cryo: the migrated tree was killed: \(failure)\n")
            throw ExitCode(1)
        }
    }
}

enum MigrationDisplay {
    static func print(_ s: MigrationStatistics, pid: Int32, destination: String) {
        var lines = ["migrated pid \(pid) to \(destination): \(s.rounds.count) pre-copy rounds"]
        for (i, round) in s.rounds.enumerated() {
            lines.append(String(printf: "  round %d: %llu bytes in %.3f s", i + 1, round.bytes, round.seconds))
        }
        lines.append(String(printf: "  frozen: %.3f s (%llu page bytes, %llu bytes in all; destination restore %.3f s)",
                            s.frozenSeconds, s.frozenPageBytes, s.frozenBytes, s.restoreSeconds))
        lines.append(String(printf: "  downtime: %.3f s (freeze until the destination said the tree runs)", s.downtimeSeconds))
        if s.postCopyBytes > 0 || s.postCopyRequests > 0 {
            lines.append(String(printf: "  post-copy: %llu bytes after the start, %d page requests", s.postCopyBytes, s.postCopyRequests))
        }
        if let dump = s.dump {
            lines.append(String(printf: "  final dump: frozen %.3f s, memory %.3f s, %llu pages scanned, %llu read", dump.frozenSeconds,
                                dump.memoryDumpSeconds, dump.pagesScanned, dump.pagesWritten))
        }
        lines.append(String(printf: "  total: %.3f s, %llu bytes sent", s.totalSeconds, s.bytesSent))
        Swift.print(lines.joined(separator: "\n"))
        fflush(nil)
    }
}

/// --key FILE (TLS with that pre-shared key) or --insecure (plain TCP, for a network trusted as a whole).
struct MigrationSecurity: ParsableArguments {
    @Option(name: .customLong("key"), help: "Key file shared by both ends (made by `cryo receive --new-key`): mutual authentication and encryption.")
    var keyFile: String?
    @Flag(name: .customLong("insecure"), help: "No authentication, no encryption: whoever reaches the port can restore anything. Test networks only.")
    var insecure = false

    func check() throws {
        if keyFile == nil && !insecure { throw ValidationError("--key FILE is required (or --insecure on a network trusted as a whole)") }
        if keyFile != nil && insecure { throw ValidationError("--key and --insecure exclude each other") }
    }

    func key() throws -> [UInt8]? { try keyFile.map { try MigrationKey.load($0) } }

    /// The connection, authenticated and encrypted when there is a key; the plain socket is closed either way.
    func link(_ fd: FileDescriptor, peer: String, key: [UInt8]?, server: Bool) throws -> MigrationLink {
        guard let key else { return SocketLink(fd: fd, peer: peer) }
        defer { try? fd.close() }
        return try TLSLink(socket: fd, peer: peer, key: key, server: server)
    }
}

/// CRIU's `page-server --address A --port P -D DIR`: takes the pages files of one
/// `dump --page-server` into DIR. Plain TCP as CRIU's (cryo's --key makes it TLS).
struct PageServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "page-server",
        abstract: "Take the pages files of one `cryo dump --page-server` into a folder (CRIU's page server).")
    @Option(name: .customLong("address"), help: "Address to listen on (default 0.0.0.0).")
    var address = "0.0.0.0"
    @Option(name: .customLong("port"), help: "Port to listen on.")
    var port: UInt16
    @Option(name: [.customShort("D"), .customLong("images-dir")], help: "Folder for the pages files (created if missing).")
    var directory: String
    @Option(name: .customLong("key"), help: "Key file shared with the dump: TLS with mutual authentication instead of plain TCP.")
    var keyFile: String?
    @Flag(name: .customLong("lazy-pages"),
          help: "Serve the pages of the image in the folder to one `cryo lazy-pages --page-server` (CRIU's remote lazy pages) instead of taking pages in.")
    var lazyPages = false
    @OptionGroup var daemon: DaemonOptions
    @OptionGroup var common: CommonOptions

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let logger = common.logger(relativeTo: directory)
        let listen = PageServerTarget.endpoint(address, port)
        let result: ReceiveResult? = try failing {
            try daemon.detach(work: directory)
            let key = try keyFile.map { try MigrationKey.load($0) }
            let listener = try MigrationEndpoint.listen(listen)
            try daemon.ready(work: directory)
            let (fd, peer) = try MigrationEndpoint.acceptOne(listener)
            try? listener.close()
            let link: MigrationLink
            if let key {
                defer { try? fd.close() }
                link = try TLSLink(socket: fd, peer: peer, key: key, server: true)
            } else {
                link = SocketLink(fd: fd, peer: peer)
            }
            defer { link.close() }
            if lazyPages {
                try LazyPagesServing.serveImage(directory: directory, link: link, logger: logger)
                return nil
            }
            return try Receiver(options: ReceiveOptions(directory: directory, storeOnly: true), logger: logger).run(over: link)
        }
        if common.verbose > 0, let result { print("page server: \(result.bytesReceived) bytes into \(directory)") }
    }
}

/// CRIU's --daemon, --pidfile and --status-fd for the page server and the lazy-pages daemon.
struct DaemonOptions: ParsableArguments {
    @Flag(name: .customLong("daemon"), help: "Go into the background once listening.")
    var daemon = false
    @Option(name: .customLong("pidfile"), help: "Write the server's pid here (relative to the work folder).")
    var pidFile: String?
    @Option(name: .customLong("status-fd"), help: "Write one NUL byte to this descriptor once listening.")
    var statusFD: Int32?
    /// Set on the background server that --daemon starts: where it says it listens.
    @Option(name: .customLong("daemon-ready-fd"), help: .hidden)
    var daemonReadyFD: Int32?

    /// With --daemon, called first: this process starts cryo again with the same arguments, in a
    /// session of its own, and returns only through exit, once that server listens (its status
    /// when it fails first). Not a fork: a forked Swift process that starts threads inherits the
    /// runtime's cached thread id of the parent, and two threads meeting on a lock keyed by it spin.
    func detach(work: String) throws {
        guard daemon, daemonReadyFD == nil else { return }
        let ready = try FileObjects.pipe(object: "ready pipe")
        let arguments = CommandLine.arguments.dropFirst().filter { $0 != "--daemon" } + ["--daemon-ready-fd", "3"]
        let child = try Processes.spawnDetached(Processes.ownExecutable, Array(arguments), passing: [ready.write], keepStdio: true, newSession: true)
        try? ready.write.close()
        var byte: UInt8 = 0
        let n = (try? withUnsafeMutableBytes(of: &byte) { try Files.readSome(ready.read, into: $0, object: "ready pipe") }) ?? 0
        guard n == 1 else {
            var status: Int32 = 0
            while waitpid(child, &status, 0) < 0 && errno == EINTR {}
            Glibc.exit(status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f))
        }
        if let pidFile { try write(child, to: pidFile, work: work) }
        if let statusFD { Self.signalReady(statusFD) }
        Glibc.exit(0)
    }

    /// Called once the server listens: whoever waits for it may connect from now on.
    func ready(work: String) throws {
        if let daemonReadyFD {
            // The caller is gone from here on: keep none of its stdio open.
            let null = open("/dev/null", O_RDWR)
            if null >= 0 { for fd: Int32 in 0...2 { dup2(null, fd) }; if null > 2 { close(null) } }
            signal(SIGHUP, SIG_IGN)
            Self.signalReady(daemonReadyFD, byte: 1)
            return
        }
        if let pidFile { try write(getpid(), to: pidFile, work: work) }
        if let statusFD { Self.signalReady(statusFD) }
    }

    /// CRIU's --status-fd: one NUL byte, and the descriptor is closed.
    static func signalReady(_ fd: Int32, byte: UInt8 = 0) {
        var value = byte
        _ = Glibc.write(fd, &value, 1)
        Glibc.close(fd)
    }

    func write(_ pid: pid_t, to name: String, work: String) throws {
        let path = name.hasPrefix("/") ? name : "\(work)/\(name)"
        let fd = try Files.open(path, .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite, .groupRead, .otherRead])
        defer { try? fd.close() }
        try Files.write(fd, Array("\(pid)\n".utf8), path: path)
    }
}

/// `dump --page-server --address A --port P [--key FILE]`: CRIU's way of sending the pages elsewhere.
struct PageServerTarget: ParsableArguments {
    @Flag(name: .customLong("page-server"), help: "Send the pages files to a `cryo page-server` at --address/--port instead of keeping them.")
    var enabled = false
    @Option(name: .customLong("address"), help: "The page server's address (with --page-server).")
    var address: String?
    @Option(name: .customLong("port"), help: "The page server's port (with --page-server).")
    var port: UInt16?
    @Option(name: .customLong("key"), help: "Key file shared with the page server: TLS with mutual authentication.")
    var keyFile: String?

    /// `lazyPages`: dump --lazy-pages listens on --address/--port itself (no --page-server).
    func check(lazyPages: Bool = false) throws {
        if lazyPages {
            if enabled { throw ValidationError("--lazy-pages serves the pages itself: leave out --page-server") }
            if port == nil { throw ValidationError("--lazy-pages needs --port (and --address, default 0.0.0.0) to serve the pages on") }
            return
        }
        if enabled && (address == nil || port == nil) { throw ValidationError("--page-server needs --address and --port") }
        if !enabled && (address != nil || port != nil || keyFile != nil) { throw ValidationError("--address, --port and --key go with --page-server") }
    }

    static func endpoint(_ address: String, _ port: UInt16) -> String {
        address.contains(":") ? "[\(address)]:\(port)" : "\(address):\(port)"
    }

    /// dump --lazy-pages: listens now (a busy port fails the dump before the freeze); the returned
    /// closure waits for the lazy-pages daemon's connection.
    func lazyPagesListener() throws -> @Sendable () throws -> MigrationLink {
        signal(SIGPIPE, SIG_IGN)
        let listener = try MigrationEndpoint.listen(Self.endpoint(address ?? "0.0.0.0", port!))
        let key = try keyFile.map { try MigrationKey.load($0) }
        return {
            defer { try? listener.close() }
            let (fd, peer) = try MigrationEndpoint.acceptOne(listener)
            guard let key else { return SocketLink(fd: fd, peer: peer) }
            defer { try? fd.close() }
            return try TLSLink(socket: fd, peer: peer, key: key, server: true)
        }
    }

    func connect() throws -> MigrationLink? {
        guard enabled, let address, let port else { return nil }
        signal(SIGPIPE, SIG_IGN)
        let target = Self.endpoint(address, port)
        let fd = try MigrationEndpoint.connect(target)
        guard let keyFile else { return SocketLink(fd: fd, peer: target) }
        defer { try? fd.close() }
        return try TLSLink(socket: fd, peer: target, key: try MigrationKey.load(keyFile), server: false)
    }
}

/// CRIU's `lazy-pages`: the daemon `restore --lazy-pages` talks to. With --page-server it fetches the
/// pages a `dump --lazy-pages` left out of the image from that dump (LazyMigration.swift); without,
/// the image holds every page and restore loads them itself, and the daemon ends with it.
struct LazyPagesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lazy-pages",
        abstract: "Serve `restore --lazy-pages` the pages a `dump --lazy-pages` kept on its host (CRIU's lazy-pages daemon).")
    @Option(name: [.customShort("D"), .customLong("images-dir")], help: "The image folder.")
    var directory: String
    @Option(name: [.customShort("W"), .customLong("work-dir")], help: "Folder for lazy-pages.socket (default: the images dir).")
    var workDirectory: String?
    @Flag(name: .customLong("page-server"), help: "Fetch the pages left out of the image from the `dump --lazy-pages` at --address/--port.")
    var pageServer = false
    @Option(name: .customLong("address"), help: "The dump's address (with --page-server).")
    var address: String?
    @Option(name: .customLong("port"), help: "The dump's port (with --page-server).")
    var port: UInt16?
    @Option(name: .customLong("key"), help: "Key file shared with the dump: TLS with mutual authentication instead of plain TCP.")
    var keyFile: String?
    @OptionGroup var daemon: DaemonOptions
    @OptionGroup var common: CommonOptions

    func validate() throws {
        if pageServer && (address == nil || port == nil) { throw ValidationError("--page-server needs --address and --port") }
        if !pageServer && (address != nil || port != nil || keyFile != nil) { throw ValidationError("--address, --port and --key go with --page-server") }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let work = workDirectory ?? directory
        let logger = common.logger(relativeTo: work)
        let connect: (() throws -> MigrationLink)? = pageServer ? { [address, port, keyFile] in
            let target = PageServerTarget.endpoint(address!, port!)
            // The dump may still be on its way to listening.
            let deadline = ContinuousClock.now + .seconds(10)
            var fd: FileDescriptor
            while true {
                do { fd = try MigrationEndpoint.connect(target); break } catch let error as SyscallError
                    where error.errno == .connectionRefused && ContinuousClock.now < deadline {
                    usleep(20_000)
                }
            }
            guard let keyFile else { return SocketLink(fd: fd, peer: target) }
            defer { try? fd.close() }
            return try TLSLink(socket: fd, peer: target, key: try MigrationKey.load(keyFile), server: false)
        } : nil
        try failing {
            try daemon.detach(work: work)
            try LazyPagesDaemon.run(socketPath: "\(work)/\(LazyPagesClient.socketName)", connectSource: connect,
                                    ready: { try daemon.ready(work: work) }, logger: logger)
        }
    }
}
