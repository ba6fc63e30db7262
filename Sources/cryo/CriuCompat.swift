import ArgumentParser
import Cryo
import CryoSystem
import FoundationEssentials
import Glibc

/// CRIU's command line as cryo reads it. A script written for CRIU runs
/// against cryo unchanged where the two mean the same; a CRIU option cryo
/// does not implement is refused by name in one line, never with a usage dump.
enum CriuCommandLine {
    struct Refusal: Error, CustomStringConvertible {
        let description: String
        static func unsupported(_ flag: String) -> Refusal { Refusal(description: "\(flag) is not supported") }
    }

    /// Rewrites the spellings argument-parser cannot read as they stand.
    /// CRIU's `-vN` and `--verbosity=N` set a level (2, warnings, is its default):
    /// 3 and 4 are cryo's `-v` and `-vv`, 0 to 2 its default; a bare `--verbosity`
    /// is one `-v`. `-vvv...` stays as it is. CRIU's `--manage-cgroups` takes its
    /// mode optionally: bare, it means `soft`. `--no-default-config` goes: cryo
    /// reads no configuration files.
    static func normalize(_ arguments: [String]) -> [String] {
        var result: [String] = []
        var passedEnd = false
        for (i, argument) in arguments.enumerated() {
            if argument == "--" { passedEnd = true }
            if passedEnd {
                result.append(argument)
                continue
            }
            if argument == "--manage-cgroups"
                && !(i + 1 < arguments.count && CgroupManagement(rawValue: arguments[i + 1]) != nil) {
                result.append("--manage-cgroups=soft")
                continue
            }
            if argument == "--no-default-config" { continue }
            if argument == "--verbosity" {
                result.append("-v")
                continue
            }
            guard let level = verbosityLevel(argument) else {
                result.append(argument)
                continue
            }
            result += Array(repeating: "-v", count: max(0, min(level, 4) - 2))
        }
        return result
    }

    /// The level in `-vN`, `--verbosity=N` or `-verbosity=N` (as CRIU's own test suite spells it).
    private static func verbosityLevel(_ argument: String) -> Int? {
        if argument.count == 3, argument.hasPrefix("-v") { return Int(argument.dropFirst(2)) }
        for prefix in ["--verbosity=", "-verbosity="] where argument.hasPrefix(prefix) {
            return Int(argument.dropFirst(prefix.count))
        }
        return nil
    }

    /// The option named in argument-parser's "Unknown option '--x'" (or a
    /// short one), so it can be refused as CRIU's users expect.
    static func unknownOption(in message: String) -> String? {
        // A value CRIU takes and cryo does not (`--ext-unix-sk=INODE`): refused as written.
        let valued = "The option '"
        if message.hasPrefix(valued), message.contains("' does not take any value, but '") {
            let parts = message.dropFirst(valued.count).split(separator: "'", omittingEmptySubsequences: false)
            if parts.count >= 3, parts[0].hasPrefix("-") { return "\(parts[0])=\(parts[2])" }
        }
        for prefix in ["Unknown option '", "Unexpected argument '"] {
            guard message.hasPrefix(prefix) else { continue }
            let rest = message.dropFirst(prefix.count)
            guard let end = rest.firstIndex(of: "'") else { return nil }
            let option = String(rest[..<end])
            return option.hasPrefix("-") ? option : nil
        }
        return nil
    }

    /// CRIU's commands that cryo has no counterpart for.
    static let unsupportedCommands: Set<String> = ["service", "swrk", "cpuinfo", "dedup", "exec"]

    /// "1M", "64K", "2G" or plain bytes, as CRIU's --ghost-limit takes them.
    static func size(_ text: String) throws -> UInt64 {
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
        var digits = Substring(text)
        var scale: UInt64 = 1
        if let last = digits.last?.uppercased().first, let unit = units[last] {
            scale = unit
            digits = digits.dropLast()
        }
        guard let value = UInt64(digits), value <= UInt64.max / scale else {
            throw ValidationError("a size is bytes, or a number with K, M or G: not \(text)")
        }
        return value * scale
    }
}

/// CRIU's --pre-dump-mode values.
enum PreDumpMode: String, ExpressibleByArgument, CaseIterable {
    case splice, read
}

/// How cgroups are handled (CRIU's --manage-cgroups, with CRIU's meanings: Cgroups.swift).
typealias CgroupMode = CgroupManagement
extension CgroupManagement: ExpressibleByArgument {}

/// The firewall lock over dumped TCP connections (CRIU's --network-lock).
/// Without the option, as CRIU: iptables when established connections are dumped; `skip` places none.
enum NetworkLock: String, ExpressibleByArgument, CaseIterable {
    case iptables, nftables, skip

    /// The backend for a dump (nil: no lock), the default filled in.
    static func mode(_ chosen: NetworkLock?, tcpEstablished: Bool) -> NetworkLockMode? {
        guard let chosen else { return NetworkLockMode.defaultMode(tcpEstablished: tcpEstablished) }
        return NetworkLockMode(rawValue: chosen.rawValue)
    }
}

/// CRIU's options that dump, pre-dump and restore share, with CRIU's
/// meaning where cryo has it, and a one-line refusal where it has not.
struct CriuOptions: ParsableArguments {
    @Option(name: [.customShort("W"), .customLong("work-dir")],
            help: "Folder for the log file and the pid file when their paths are relative (default: the images dir).")
    var workDirectory: String?
    @Flag(name: [.customShort("l"), .customLong("file-locks")],
          help: "Accepted for CRIU: cryo always saves flock, POSIX and OFD locks.")
    var fileLocks = false
    @Flag(name: [.customShort("x"), .customLong("ext-unix-sk")],
          help: "Dump unix datagram sockets connected to a named socket outside the tree (connected to it again at restore).")
    var externalUnixSockets = false
    @Flag(name: .customLong("link-remap"),
          help: "Accepted for CRIU: files unlinked while open are always kept (their contents go into the image, up to --ghost-limit).")
    var linkRemap = false
    @Option(name: .customLong("manage-cgroups"),
            help: "CRIU's cgroup handling: none, props, soft (the default), full, strict or ignore.")
    var manageCgroups: CgroupMode?
    @Option(name: .customLong("cgroup-root"),
            help: "[CONTROLLERS:]/PATH: restore the root task's cgroup (and those below it) at PATH (repeatable).")
    var cgroupRoot: [String] = []
    @Option(name: .customLong("network-lock"),
            help: "dump: drop the dumped TCP connections' packets with iptables (the default with --tcp-established) or nftables rules until restore removes them; `skip`: no lock.")
    var networkLock: NetworkLock?
    @Flag(name: .customLong("tcp-close"),
          help: "Dump connected TCP sockets without their connection (the dump ends it); restore them closed (end of stream, EPIPE).")
    var tcpClose = false
    @Flag(name: .customLong("skip-in-flight"), help: "Dump listeners without their connections not yet accepted or still in SYN_RECV (those are dropped).")
    var skipInFlight = false
    @Flag(name: .customLong("display-stats"), help: "Print the dump or restore statistics when done.")
    var displayStatistics = false
    @Flag(name: .customLong("ghost-fiemap"), inversion: .prefixedNo,
          help: "Accepted for CRIU: cryo always keeps only the data of a sparse unlinked file (SEEK_DATA, SEEK_HOLE).")
    var ghostFiemap: Bool?
    @Flag(name: .customLong("force-irmap"),
          help: "Accepted for CRIU: cryo finds each inotify and fanotify watch's path through its file handle.")
    var forceIrmap = false
    @Option(name: .customLong("pre-dump-mode"),
            help: "Accepted for CRIU (splice or read): cryo copies pages one way.")
    var preDumpMode: PreDumpMode?
    @Option(name: .customLong("timeout"),
            help: "dump, pre-dump: seconds each task has to stop once the freeze starts (default 10, as CRIU's); one in an uninterruptible wait fails the dump after that.")
    var timeout: Double?

    func validate() throws {
        if let timeout, !(timeout > 0 && timeout < 1e6) { throw ValidationError("--timeout takes a number of seconds above 0") }
    }

    /// A path as CRIU resolves it: relative ones against --work-dir, which defaults to the images dir.
    func resolve(_ path: String, imagesDirectory: String) -> String {
        if path.hasPrefix("/") { return path }
        return "\(workDirectory ?? imagesDirectory)/\(path)"
    }
}

/// What --display-stats prints: CRIU's figures, in cryo's words.
enum StatisticsDisplay {
    static func microseconds(_ seconds: Double) -> String { "\(Int((seconds * 1e6).rounded())) us" }

    static func dump(_ s: DumpStatistics, verb: String = "dump") {
        print("Displaying \(verb) stats:")
        print("Frozen time: \(microseconds(s.frozenSeconds))")
        print("Memory dump time: \(microseconds(s.memoryDumpSeconds))")
        print("Pages scanned: \(s.pagesScanned)")
        print("Pages written: \(s.pagesWritten)")
        if let fromPreDump = s.pagesFromPreDump { print("Pages from the pre-dump: \(fromPreDump)") }
    }

    static func restore(directory: String) {
        guard let text = try? Files.readString("\(directory)/stats-restore"),
              let s = try? JSONDecoder().decode(RestoreStatistics.self, from: Data(text.utf8)) else {
            print("Displaying restore stats: none were written")
            return
        }
        print("Displaying restore stats:")
        print("Processes: \(s.processes)")
        print("Image read time: \(microseconds(s.imageReadSeconds))")
        print("Forking time: \(microseconds(s.forkingSeconds))")
        print("Restore time: \(microseconds(s.restoreSeconds))")
        print("Pages restored: \(s.pagesRestored)")
    }
}

/// cryo's release; the commit comes from the build (Plugins/VersionStamp).
let cryoVersion = "0.11"

extension SysVSelection: ExpressibleByArgument {}
