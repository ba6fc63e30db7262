import ArgumentParser
import Cryo
import CryoSystem
import FoundationEssentials
import Glibc
import Logging
import SystemPackage
import CCryo

@main
struct CryoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cryo",
        abstract: "Checkpoint and restore Linux processes.",
        version: "Version: \(cryoVersion)\nGitCommitID: \(cryoCommit)",
        subcommands: [DumpCommand.self, PreDumpCommand.self, MigrateCommand.self, ReceiveCommand.self, PageServerCommand.self, LazyPagesCommand.self, PreDumpHolderCommand.self, LazyGuardCommand.self, RestoreCommand.self, CheckCommand.self, ShowCommand.self, InspectCommand.self,
                      BacktraceCommand.self])

    /// Parses CRIU's spellings too; a bad or unsupported option is one line
    /// on stderr and exit status 1, as CRIU does, never a usage dump.
    static func main() {
        let arguments = CriuCommandLine.normalize(Array(CommandLine.arguments.dropFirst()))
        if let command = arguments.first, CriuCommandLine.unsupportedCommands.contains(command) { refuse("\(command) is not supported") }
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
        } catch let refusal as CriuCommandLine.Refusal {
            refuse(refusal.description)
        } catch let code as ExitCode {
            exit(withError: code)  // a command's own status, e.g. the restored root's
        } catch {
            // Help and --version go out as argument-parser has them.
            guard !exitCode(for: error).isSuccess else { exit(withError: error) }
            let message = self.message(for: error)
            refuse(CriuCommandLine.unknownOption(in: message).map { "\($0) is not supported" } ?? message)
        }
    }

    static func refuse(_ line: String) -> Never {
        printError("cryo: \(line)\n")
        Glibc.exit(1)
    }
}

struct CommonOptions: ParsableArguments {
    @Flag(name: .shortAndLong, help: "More output: -v shows each step and the parasite's own log lines; -vv traces (CRIU's -v3 and -v4 too).")
    var verbose: Int
    @Option(name: [.customShort("o"), .customLong("log-file")],
            help: "Write the log to this file instead of stderr (relative to --work-dir where the command has one).")
    var logFile: String?

    /// `relativeTo`: where a relative --log-file goes (CRIU's work dir), if anywhere but the current folder.
    func logger(relativeTo folder: String? = nil) -> Logger {
        // Created 0600 when missing; messages are appended.
        let file = logFile.flatMap { logFile -> FileDescriptor? in
            var path = logFile
            if let folder, !path.hasPrefix("/") { path = "\(folder)/\(path)" }
            return try? FileDescriptor.open(path, .writeOnly, options: [.create, .append, .closeOnExec],
                                            permissions: [.ownerReadWrite])
        }
        var logger = Logger(label: "cryo") { label in
            if let file { return FileLogHandler(file: file) }
            return StreamLogHandler.standardError(label: label)
        }
        logger.logLevel = verbose >= 2 ? .trace : verbose == 1 ? .debug : .warning
        return logger
    }
}

/// One line per message, with a timestamp, appended to --log-file.
struct FileLogHandler: LogHandler {
    let file: FileDescriptor
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
             file sourceFile: String, function: String, line: UInt) {
        let stamp = Date().formatted(.iso8601)
        _ = try? self.file.writeAll("\(stamp) \(level) \(message)\n".utf8)
    }
}

/// Writes a message to stderr as it is, unbuffered.
func printError(_ message: String) {
    _ = try? FileDescriptor.standardError.writeAll(message.utf8)
}

/// Prints one line for a failure and exits non-zero; never a stack trace.
func failing<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let error as ExitCode { throw error } catch let error as CleanExit { throw error } catch {
        printError("cryo: \(Caller.current.explain(error))\n")
        throw ExitCode(1)
    }
}

struct DumpCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "dump", abstract: "Checkpoint a process into an image folder.")
    @Option(name: [.customShort("t"), .customLong("tree")], help: "The pid to dump.")
    var pid: Int32
    @Option(name: [.customShort("D"), .customLong("images-dir")], help: "Folder for the image (created if missing).")
    var directory: String
    @Flag(name: [.customShort("R"), .customLong("leave-running")], help: "Let the process carry on after the dump instead of killing it.")
    var leaveRunning = false
    @Flag(name: [.customShort("j"), .customLong("shell-job")], help: "Allow a process in cryo's session (a shell job).")
    var shellJob = false
    @Flag(name: .customLong("tcp-established"), help: "Checkpoint established TCP connections (TCP_REPAIR) instead of refusing them.")
    var tcpEstablished = false
    @Flag(name: .customLong("compress"), help: "Compress the page images (zstd, in independent frames).")
    var compress = false
    @Option(name: .customLong("prev-images-dir"),
            help: "A `cryo pre-dump` folder (relative to the images dir, or absolute): copy only pages written since.")
    var previousImages: String?
    @Flag(name: .customLong("track-mem"), help: "Accepted for CRIU: pre-dump always tracks the pages written after it.")
    var trackMemory = false
    @Option(name: .customLong("ghost-limit"),
            help: "Largest file unlinked while open whose contents go into the image (K, M, G suffixes; default 1M).",
            transform: CriuCommandLine.size)
    var ghostLimit: UInt64 = DumpOptions.defaultGhostLimit
    @Flag(name: .customLong("lazy-pages"),
          help: "Leave the memory that restore --lazy-pages loads on first touch out of the image and serve it from the frozen tree on --address/--port to a `cryo lazy-pages --page-server`; the tree is killed once the destination has it all.")
    var lazyPages = false
    @Option(name: .customLong("pidfile"), help: .hidden)
    var pidFile: String?
    @Option(name: .customLong("status-fd"), help: "With --lazy-pages: write one NUL byte to this descriptor once the pages are served.")
    var statusFD: Int32?
    @Option(name: .customLong("sysv-ipc"),
            help: "Which System V objects of the IPC namespace to save: tree (attached, created or last used by the tree; the default), attached (attached segments only), all.")
    var sysvSelection: SysVSelection = .tree
    @Option(name: .customLong("sysv-ipc-object"), help: "Also save this System V object: shm:ID, sem:ID or msg:ID (repeatable).")
    var sysvObjects: [String] = []
    @OptionGroup var pageServer: PageServerTarget
    @OptionGroup var criu: CriuOptions
    @OptionGroup var common: CommonOptions

    func validate() throws {
        try pageServer.check(lazyPages: lazyPages)
        if lazyPages && (compress || previousImages != nil || leaveRunning) {
            throw ValidationError("--lazy-pages with --compress, --prev-images-dir or --leave-running is not supported")
        }
        if pageServer.enabled && previousImages != nil { throw ValidationError("--page-server with --prev-images-dir is not supported") }
        if pageServer.enabled && compress { throw ValidationError("--page-server with --compress is not supported") }
    }

    func run() throws {
        if common.logFile.map({ !$0.hasPrefix("/") }) == true && criu.workDirectory == nil {
            _ = mkdir(directory, 0o700)  // the log goes into the images dir, which dump makes anyway
        }
        var lazyServing: LazyPagesServing?
        let logger = common.logger(relativeTo: criu.workDirectory ?? directory)
        let statistics = try failing {
            var options = DumpOptions(pid: pid, directory: directory, leaveRunning: leaveRunning, shellJob: shellJob,
                                      tcpEstablished: tcpEstablished, compress: compress,
                                      previousImages: previousImages, ghostLimit: ghostLimit)
            options.sysvSelection = sysvSelection
            options.sysvExtra = sysvObjects
            if let timeout = criu.timeout { options.freezeTimeout = timeout }
            options.externalUnixSockets = criu.externalUnixSockets
            options.cgroupMode = criu.manageCgroups ?? .soft
            let link = try pageServer.connect()
            defer { link?.close() }
            options.handOver = try link.map { try Migrator.pageServerHandOver(over: $0, rootPid: pid) }
            if lazyPages {
                // CRIU's --status-fd: a NUL once the pages are served (the image is whole but for them).
                let statusFD = self.statusFD
                let serving = LazyPagesServing(accept: try pageServer.lazyPagesListener(), logger: logger) {
                    if let statusFD { DaemonOptions.signalReady(statusFD) }
                }
                lazyServing = serving
                options.handOver = { try serving.handOver($0) }
            }
            options.tcpClose = criu.tcpClose
            options.skipInFlight = criu.skipInFlight
            options.networkLock = NetworkLock.mode(criu.networkLock, tcpEstablished: tcpEstablished)
            return try Dumper(options: options, logger: logger).run()
        }
        if let lost = lazyServing?.lostAfterStart {
            printError("cryo: \(lost); killed pid \(pid) here too\n")
            throw ExitCode(1)
        }
        if common.verbose > 0 {
            print(String(printf: "dumped pid %d: frozen %.3f s, memory %.3f s, %llu pages written of %llu scanned",
                         pid, statistics.frozenSeconds, statistics.memoryDumpSeconds, statistics.pagesWritten, statistics.pagesScanned))
        }
        if criu.displayStatistics { StatisticsDisplay.dump(statistics) }
    }
}

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "restore", abstract: "Bring a process back from an image folder.")
    @Option(name: [.customShort("D"), .customLong("images-dir")], help: "The image folder.")
    var directory: String
    @Flag(name: [.customShort("d"), .customLong("restore-detached")], help: "Return once the process runs instead of waiting for it.")
    var detached = false
    /// -d --lazy-pages: set by cryo for the loader it starts (runDetachedLazy), the descriptor to say "running" on.
    @Option(name: .customLong("loader-ready-fd"), help: .hidden)
    var loaderReadyFD: Int32?
    @Flag(name: [.customShort("j"), .customLong("shell-job")], help: "Accepted for CRIU compatibility; the image records whether it was a shell job.")
    var shellJob = false
    @Flag(name: .customLong("with-cpu-affinity"), help: "Accepted for CRIU: cryo always gives each thread back the CPUs it was pinned to.")
    var withCPUAffinity = false
    @Flag(name: .customLong("compress"), help: "Accepted for CRIU: the image says whether its pages are compressed.")
    var compressed = false
    @Flag(name: .customLong("pidns"), help: "Restore inside a new pid namespace, where the image's pids are free.")
    var pidNamespace = false
    @Flag(name: [.customShort("s"), .customLong("leave-stopped")], help: "Leave every task stopped (SIGSTOP, untraced) right before it resumes, so a debugger can attach.")
    var leaveStopped = false
    @Option(name: .customLong("pidfile"), help: "Write the restored root's pid (as cryo's pid namespace sees it) into this file, relative to --work-dir.")
    var pidFile: String?
    @Flag(name: .customLong("tcp-established"), help: "Rebuild the image's established TCP connections (TCP_REPAIR).")
    var tcpEstablished = false
    @Flag(name: .customLong("lazy-pages"), help: "Start the tree before its private anonymous memory is loaded; cryo fills it on first touch and in the background, then exits (with -d, in a background process).")
    var lazyPages = false
    @OptionGroup var criu: CriuOptions
    @OptionGroup var common: CommonOptions

    /// With --lazy-pages, also the lazy-pages daemon's connection when one waits (close it once every page is in).
    func restore() throws -> (RestoredTree, LazyPagesClient?) {
        let logger = common.logger(relativeTo: criu.workDirectory ?? directory)
        let (tree, client) = try failing {
            var options = RestoreOptions(directory: directory, detached: detached, newPidNamespace: pidNamespace,
                                         leaveStopped: leaveStopped, tcpEstablished: tcpEstablished, lazyPages: lazyPages)
            options.cgroupMode = criu.manageCgroups ?? .soft
            options.cgroupRoots = criu.cgroupRoot
            options.tcpClose = criu.tcpClose
            let socket = criu.resolve(LazyPagesClient.socketName, imagesDirectory: directory)
            let client = lazyPages ? try LazyPagesClient.attach(imageDirectory: directory, socketPath: socket, logger: logger) : nil
            options.remotePages = client?.remote
            do {
                let tree = try Restorer(options: options, logger: logger).run()
                // Losing the page server before every page is here: the loader fails, and the lazy guard kills the tree.
                client?.started { error in tree.lazy?.abort(error) }
                return (tree, client)
            } catch {
                client?.abandon()
                throw error
            }
        }
        if let pidFile {
            // CRIU writes it once the tree is restored; a script reads it to find the root.
            let path = criu.resolve(pidFile, imagesDirectory: directory)
            try failing {
                let fd = try Files.open(path, .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite, .groupRead, .otherRead])
                defer { try? fd.close() }
                try Files.write(fd, Array("\(tree.childPid)\n".utf8), path: path)
            }
        }
        return (tree, client)
    }

    func sayRestored(_ tree: RestoredTree) {
        if common.verbose > 0 {
            print(tree.rootPid == tree.rootPidInImage ? "restored pid \(tree.rootPid)"
                  : "restored pid \(tree.rootPidInImage) as pid \(tree.rootPid) in a new pid namespace")
            fflush(nil)
        }
        if criu.displayStatistics {
            StatisticsDisplay.restore(directory: directory)
            fflush(nil)
        }
    }

    func run() throws {
        if detached && lazyPages { try runDetachedLazy() }
        let (tree, client) = try restore()
        defer { client?.close() }
        let pid = tree.childPid
        if detached {
            sayRestored(tree)
            return
        }
        // In the foreground cryo is the restored process's parent: wait and pass its status on,
        // once every lazy page is in (other processes of the tree may still need them).
        var exit: Int32 = 0
        var rootEnded = false
        if let lazy = tree.lazy {
            // Until every page is in, cryo must not die of a terminal's signal: the
            // tree's missing memory would then read as zeros.
            let interruptions = [SIGINT, SIGTERM, SIGHUP, SIGQUIT]
            for signalNumber in interruptions { signal(signalNumber, SIG_IGN) }
            while !lazy.waitLoaded(for: 0.05) {
                guard !rootEnded else { continue }
                var status: Int32 = 0
                if waitpid(pid, &status, WNOHANG) == pid, let code = exitCode(status) { (exit, rootEnded) = (code, true) }
            }
            for signalNumber in interruptions { signal(signalNumber, SIG_DFL) }
        }
        client?.close()
        waiting: while !rootEnded {
            let status = try failing { try waitFor(pid) }
            switch status {
            case .exited(let code): exit = code; break waiting
            case .signaled(let signal): exit = 128 + signal; break waiting
            case .stopped: continue  // not reported without WUNTRACED
            }
        }
        if let lazy = tree.lazy, let error = lazy.waitUntilLoaded() {
            printError("cryo: \(error)\n")
            throw ExitCode(1)
        }
        throw ExitCode(exit)
    }

    /// A wait status as cryo's exit status (128+signal when killed); nil when only stopped.
    func exitCode(_ status: Int32) -> Int32? {
        if status & 0x7f == 0 { return (status >> 8) & 0xff }
        return status & 0xff == 0x7f ? nil : 128 + (status & 0x7f)
    }

    /// -d with --lazy-pages: a child process restores and keeps serving pages
    /// until all are in; this process returns as soon as the tree runs (a byte
    /// on a pipe), or with the child's status when the restore fails. The child
    /// is cryo again, started with the same arguments and --loader-ready-fd,
    /// the pipe's descriptor: a fork of this process would inherit the Swift
    /// runtime's cached thread id, and two of the child's threads contending
    /// for a lock keyed by it spun forever.
    func runDetachedLazy() throws -> Never {
        if let loaderReadyFD { serveDetached(ready: FileDescriptor(rawValue: loaderReadyFD)) }
        let ready = try FileObjects.pipe(object: "ready pipe")
        let child = try Processes.spawnDetached(Processes.ownExecutable, Array(CommandLine.arguments.dropFirst()) + ["--loader-ready-fd", "3"],
                                                passing: [ready.write], keepStdio: true, newSession: false)
        try? ready.write.close()
        var byte: UInt8 = 0
        let n = (try? withUnsafeMutableBytes(of: &byte) { try Files.readSome(ready.read, into: $0, object: "ready pipe") }) ?? 0
        if n == 1 { Glibc.exit(0) }
        switch try? waitFor(child) {
        case .exited(let code)?: Glibc.exit(code)
        case .signaled(let signal)?: Glibc.exit(128 + signal)
        default: Glibc.exit(1)
        }
    }

    /// The loader's side of runDetachedLazy: restores, says so on `ready`, serves pages until all are in.
    func serveDetached(ready: FileDescriptor) -> Never {
        let tree: RestoredTree
        let client: LazyPagesClient?
        do { (tree, client) = try restore() } catch { Glibc.exit(1) }  // `failing` printed the line
        sayRestored(tree)
        // The caller is gone from here on: no stdout to hold open, no hangup to die of.
        let null = open("/dev/null", O_WRONLY)
        if null >= 0 { dup2(null, 1); close(null) }
        signal(SIGHUP, SIG_IGN)
        var byte: UInt8 = 1
        _ = try? withUnsafeBytes(of: &byte) { try ready.write($0) }
        try? ready.close()
        guard let lazy = tree.lazy else {
            client?.close()
            Glibc.exit(0)
        }
        // The root is this process's child until it exits: reap it if it ends first.
        var rootReaped = false
        while !lazy.waitLoaded(for: 0.05) {
            if !rootReaped { var status: Int32 = 0; rootReaped = waitpid(tree.childPid, &status, WNOHANG) == tree.childPid }
        }
        client?.close()
        if let error = lazy.failed {
            printError("cryo: \(error)\n")
            Glibc.exit(1)
        }
        Glibc.exit(0)
    }
}

struct PreDumpCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pre-dump",
        abstract: "Copy a process's memory while it keeps running, and track what it writes until `dump --prev-images-dir`.")
    @Option(name: [.customShort("t"), .customLong("tree")], help: "The pid to pre-dump.")
    var pid: Int32
    @Option(name: [.customShort("D"), .customLong("images-dir")], help: "Folder for the pre-dump (created if missing).")
    var directory: String
    @Flag(name: .customLong("track-mem"), help: "Accepted for CRIU: pre-dump always tracks the pages written after it.")
    var trackMemory = false
    @Option(name: .customLong("prev-images-dir"), help: .hidden)
    var previousImages: String?
    @Flag(name: [.customShort("R"), .customLong("leave-running")], help: "Accepted for CRIU: a pre-dump always leaves the tree running.")
    var leaveRunning = false
    @OptionGroup var criu: CriuOptions
    @OptionGroup var common: CommonOptions

    func validate() throws {
        // Each cryo pre-dump tracks from its own copy; chaining them is not implemented.
        if previousImages != nil { throw CriuCommandLine.Refusal.unsupported("pre-dump --prev-images-dir") }
    }

    func run() throws {
        if common.logFile.map({ !$0.hasPrefix("/") }) == true && criu.workDirectory == nil { _ = mkdir(directory, 0o700) }
        let statistics = try failing {
            var options = PreDumpOptions(pid: pid, directory: directory)
            if let timeout = criu.timeout { options.freezeTimeout = timeout }
            return try PreDumper(options: options,
                                 logger: common.logger(relativeTo: criu.workDirectory ?? directory)).run()
        }
        if common.verbose > 0 {
            print(String(printf: "pre-dumped pid %d: frozen %.3f s, copied %.3f s, %llu pages of %llu scanned",
                         pid, statistics.frozenSeconds, statistics.memoryDumpSeconds, statistics.pagesWritten, statistics.pagesScanned))
        }
        if criu.displayStatistics { StatisticsDisplay.dump(statistics, verb: "pre-dump") }
    }
}

/// Started by pre-dump, not by hand: holds the write tracking (see PreCopy.swift).
struct PreDumpHolderCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pre-dump-holder", shouldDisplay: false)
    @Option var directory: String
    @Option(help: "pid:starttime:uffd-fd:pidfd") var track: [String] = []

    func run() throws {
        let tracked = track.compactMap { item -> PreCopyHolder.Tracked? in
            let f = item.split(separator: ":").compactMap { Int64($0) }
            guard f.count == 4 else { return nil }
            return PreCopyHolder.Tracked(pid: Int32(f[0]), startTime: UInt64(f[1]),
                                         uffd: FileDescriptor(rawValue: Int32(f[2])), pidfd: FileDescriptor(rawValue: Int32(f[3])))
        }
        // The pre-dump passes its listening socket as descriptor 3.
        PreCopyHolder.run(listening: FileDescriptor(rawValue: 3), directory: directory, tracked: tracked)
    }
}

/// `cryo lazy-guard`: kills a lazily restored tree if its loader dies (Sources/Cryo/Memory/LazyGuard.swift).
struct LazyGuardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "lazy-guard", shouldDisplay: false)
    func run() throws { LazyGuard.run(fd: 3) }
}
