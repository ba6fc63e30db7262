// Helpers for the suites that look at what cryo reports rather than at a
// round trip: the shapes of `cryo show --json` and `cryo inspect --json`
// (decoded with the field names the tools promise, so a renamed or missing
// field fails the decoding), /proc lookups for pid namespaces and stopped
// tasks, and the symbol table of a fixture binary.

import Foundation
import Glibc
import Testing

// MARK: - cryo show --json

/// `cryo show DIR --json`: the fields the tests read; others are ignored.
struct ShownImage: Decodable {
    struct Inventory: Decodable {
        struct Process: Decodable {
            let pid: Int32
            let ppid: Int32
            let pgid: Int32
            let sid: Int32
            let comm: String
            let zombieStatus: Int32?
        }
        let rootPid: Int32
        let processes: [Process]
    }

    struct FileTable: Decodable {
        struct File: Decodable {
            struct Regular: Decodable {
                let size: Int64
                let unlinked: Bool
            }
            struct Pipe: Decodable {
                let inode: UInt64
                let isReadEnd: Bool
                let capacity: Int
                let buffered: Data?
            }
            let id: Int
            let kind: String
            let flags: Int32
            let position: Int64
            let path: String?
            let regular: Regular?
            let pipe: Pipe?
        }
        let files: [File]

        func file(_ id: Int) -> File? { files.first { $0.id == id } }
    }

    struct Task: Decodable {
        struct Core: Decodable {
            let pid: Int32
            let ppid: Int32
            let pgid: Int32
            let sid: Int32
            let comm: String
            let exe: String
        }
        struct Thread: Decodable {
            let tid: Int32
            let name: String
            let general: [UInt64]
            let extendedState: Data
            let blockedSignals: UInt64
            let altstackAddress: UInt64
            let altstackSize: UInt64
            let altstackFlags: Int32
            let pending: [Pending]

            var rip: UInt64 { general[16] }   // user_regs_struct order
            var rsp: UInt64 { general[19] }
            var altstackEnabled: Bool { altstackFlags & 2 == 0 }   // SS_DISABLE clear
        }
        struct Pending: Decodable {
            let signal: Int32
            let shared: Bool
            let siginfo: Data
        }
        struct Memory: Decodable {
            struct Mapping: Decodable {
                let start: UInt64
                let end: UInt64
                let kind: String
                let path: String?
                let fileOffset: UInt64
                let protection: String
                let shared: Bool
            }
            let mappings: [Mapping]

            func mapping(containing address: UInt64) -> Mapping? {
                mappings.first { $0.start <= address && address < $0.end }
            }
        }
        struct PageIndex: Decodable {
            let runs: [[UInt64]]
            let pagesFileSize: UInt64
        }
        struct Signals: Decodable {
            let actions: [SignalAction]
            let timers: [IntervalTimer]
            let pending: [Pending]

            func action(_ signal: Int32) -> SignalAction? { actions.first { $0.signal == signal } }
        }
        struct Descriptors: Decodable {
            struct Descriptor: Decodable {
                let fd: Int32
                let closeOnExec: Bool
                let file: Int
            }
            let descriptors: [Descriptor]

            func fd(_ fd: Int32) -> Descriptor? { descriptors.first { $0.fd == fd } }
        }
        let core: Core
        let threads: [Thread]
        let memory: Memory
        let pageIndex: PageIndex
        let signals: Signals
        let descriptors: Descriptors
    }

    let inventory: Inventory
    let files: FileTable
    let tasks: [Task]

    func task(_ pid: Int32) -> Task? { tasks.first { $0.core.pid == pid } }
}

struct SignalAction: Decodable {
    let signal: Int32
    let handler: UInt64
    let flags: UInt64
    let restorer: UInt64
    let mask: UInt64
}

struct IntervalTimer: Decodable {
    let which: Int32
    let intervalMicroseconds: Int64
    let valueMicroseconds: Int64
}

/// `cryo inspect -t PID --json`.
struct InspectedProcess: Decodable {
    struct Thread: Decodable {
        let tid: Int32
        let rip: UInt64
        let blockedSignals: UInt64
        let altstackAddress: UInt64
        let altstackSize: UInt64
        let altstackEnabled: Bool
        let pending: [Int32]
    }
    let pid: Int32
    let comm: String
    let actions: [SignalAction]
    let timers: [IntervalTimer]
    let pendingShared: [Int32]
    let threads: [Thread]
    let stoppedSeconds: Double

    func action(_ signal: Int32) -> SignalAction? { actions.first { $0.signal == signal } }
}

/// Decodes `text` as `T`, recording the error (with the start of the text) as an issue.
func decodeJSON<T: Decodable>(_ type: T.Type, _ text: String, what: String,
                              sourceLocation: SourceLocation = #_sourceLocation) -> T? {
    do {
        return try JSONDecoder().decode(T.self, from: Data(text.utf8))
    } catch {
        Issue.record("\(what) is not the expected JSON: \(error)\n\(text.prefix(3000))", sourceLocation: sourceLocation)
        return nil
    }
}

// MARK: - Signal numbers and sets

let sigRTMin: Int32 = 34   // glibc's SIGRTMIN (two real-time signals are its own)
let saSigInfo: UInt64 = 0x4, saOnStack: UInt64 = 0x0800_0000, saRestart: UInt64 = 0x1000_0000
let saNoDefer: UInt64 = 0x4000_0000, saResetHand: UInt64 = 0x8000_0000, saRestorer: UInt64 = 0x0400_0000

/// The sigset_t bit of `signal` (signal 1 is bit 0).
func sigbit(_ signal: Int32) -> UInt64 { UInt64(1) << UInt64(signal - 1) }

func sigset(_ signals: Int32...) -> UInt64 { signals.reduce(0) { $0 | sigbit($1) } }

// MARK: - /proc

/// The "Key:" lines of /proc/PID/status (or /proc/PID/task/TID/status), or nil when gone.
func statusFields(_ path: String) -> [String: String]? {
    guard let data = FileManager.default.contents(atPath: path) else { return nil }
    var fields: [String: String] = [:]
    for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
        guard let colon = line.firstIndex(of: ":") else { continue }
        fields[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }
    return fields
}

/// A process's ids from /proc/PID/status `NSpid:` (or `NSpgid:`, `NSsid:`):
/// one per pid namespace it is in, outermost (ours) first.
func namespacePids(_ pid: pid_t, field: String = "NSpid") -> [pid_t] {
    (statusFields("/proc/\(pid)/status")?[field] ?? "").split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { pid_t($0) }
}

/// Every process's parent, from /proc/*/stat.
func parentsOfAllProcesses() -> [pid_t: pid_t] {
    var result: [pid_t: pid_t] = [:]
    for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
        guard let pid = pid_t(entry), let ids = ProcIDs(pid: pid) else { continue }
        result[pid] = ids.ppid
    }
    return result
}

func childrenOf(_ pid: pid_t, in parents: [pid_t: pid_t]? = nil) -> [pid_t] {
    (parents ?? parentsOfAllProcesses()).filter { $0.value == pid }.map(\.key).sorted()
}

/// All descendants of `pid` (not `pid` itself).
func descendantsOf(_ pid: pid_t) -> [pid_t] {
    let parents = parentsOfAllProcesses()
    var result: [pid_t] = []
    var queue = [pid]
    while let next = queue.popLast() {
        let kids = childrenOf(next, in: parents)
        result += kids
        queue += kids
    }
    return result
}

/// Where `path` is mapped at file offset 0 in a live process (its load base).
func loadBase(of pid: pid_t, path: String) -> UInt64? {
    for line in readProcFile("/proc/\(pid)/maps").split(separator: "\n") {
        let words = line.split(separator: " ", omittingEmptySubsequences: true)
        guard words.count >= 6, String(words[5...].joined(separator: " ")) == path,
              UInt64(words[2], radix: 16) == 0 else { continue }
        return UInt64(words[0].split(separator: "-")[0], radix: 16)
    }
    return nil
}

/// The mappings of a live process: (start, end, path or "").
func liveMappings(_ pid: pid_t) -> [(start: UInt64, end: UInt64, path: String)] {
    readProcFile("/proc/\(pid)/maps").split(separator: "\n").compactMap { line in
        let words = line.split(separator: " ", omittingEmptySubsequences: true)
        let range = words.first?.split(separator: "-") ?? []
        guard range.count == 2, let start = UInt64(range[0], radix: 16), let end = UInt64(range[1], radix: 16) else { return nil }
        return (start, end, words.count >= 6 ? words[5...].joined(separator: " ") : "")
    }
}

/// A /proc file read to its end with read(2): such files report size 0, and
/// a reader that trusts one read or the size gets only their first page.
func readProcFile(_ path: String) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let got = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if got < 0 && errno == EINTR { continue }
        if got <= 0 { break }
        bytes += chunk[0..<got]
    }
    return String(decoding: bytes, as: UTF8.self)
}

// MARK: - Fixture binaries

/// Offsets of the functions in a fixture binary, from `nm` (static ones too).
func functionOffsets(_ binary: String, scratch: Scratch) throws -> [String: UInt64] {
    let output = scratch.unique("nm")
    let pid = try spawnProcess("/usr/bin/env", ["nm", "--defined-only", binary], stdoutPath: output)
    guard reap(pid, timeout: 30) == .exited(0) else { throw HarnessError("nm \(binary) failed:\n\(readText(output))") }
    var result: [String: UInt64] = [:]
    for line in readText(output).split(separator: "\n") {
        let words = line.split(separator: " ")
        guard words.count == 3, "tT".contains(words[1]), let address = UInt64(words[0], radix: 16) else { continue }
        result[String(words[2])] = address
    }
    return result
}
