// Helpers for the end-to-end tests: build the C fixtures, start them in their
// own session, run the real `cryo` binary, and wait on pids with deadlines.
//
// Processes are started with posix_spawn rather than Foundation's Process so
// that the harness alone reaps its children (a dumped-and-killed fixture is
// our child and must be reaped before its pid can be restored), and so that
// no descriptor or ignored signal of the test runner leaks into a fixture.

import Foundation
import Glibc
import Testing

/// Every end-to-end suite lives inside this one so that they all run one test
/// at a time: they share pids, and bigmem needs gigabytes of memory.
@Suite(.serialized, .enabled(if: getuid() == 0, "checkpoint/restore tests need root"))
struct EndToEnd {}

// MARK: - Errors

struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

// MARK: - Locations

enum Locations {
    /// The package root: this file is Tests/CryoTests/Support.swift.
    static let packageRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    static var fixturesDirectory: String { packageRoot + "/Tests/Fixtures" }

    /// The `cryo` executable built next to the test bundle (e.g. .build/debug/cryo),
    /// found by walking up from the running test executable; CRYO_BIN otherwise.
    static func cryoBinary() throws -> String {
        var starts: [String] = []
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { starts.append(exe) }
        if let arg0 = CommandLine.arguments.first { starts.append(arg0) }
        if let path = Bundle.main.executablePath { starts.append(path) }
        for start in starts {
            var dir = URL(fileURLWithPath: start).standardizedFileURL.resolvingSymlinksInPath().deletingLastPathComponent()
            for _ in 0..<4 {
                let candidate = dir.appendingPathComponent("cryo").path
                if isExecutableFile(candidate) { return candidate }
                dir.deleteLastPathComponent()
            }
        }
        if let env = ProcessInfo.processInfo.environment["CRYO_BIN"], !env.isEmpty {
            guard isExecutableFile(env) else { throw HarnessError("CRYO_BIN=\(env) is not an executable file") }
            return env
        }
        throw HarnessError("cannot find the cryo executable next to the test binary (\(starts)); build it or set CRYO_BIN")
    }

    static func isExecutableFile(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG && access(path, X_OK) == 0
    }
}

// MARK: - Time

func monotonicNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func sleepSeconds(_ seconds: Double) {
    usleep(useconds_t(max(0, seconds) * 1_000_000))
}

/// Polls `condition` every `interval` seconds until it holds or `timeout` passes.
@discardableResult
func waitUntil(timeout: Double, interval: Double = 0.02, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicNow() + timeout
    while true {
        if condition() { return true }
        if monotonicNow() >= deadline { return false }
        sleepSeconds(interval)
    }
}

// MARK: - Scratch folders

/// A unique folder under /tmp for one test, removed by `remove()` unless
/// CRYO_KEEP_TMP is set (handy when a test fails).
final class Scratch {
    let path: String
    private var counter = 0

    init(_ label: String) throws {
        var template = Array("/tmp/cryo-test-\(label)-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw HarnessError("mkdtemp: \(String(cString: strerror(errno)))")
        }
        path = String(cString: made)
    }

    func file(_ name: String) -> String { path + "/" + name }

    /// A fresh, empty sub-folder.
    func folder(_ name: String) throws -> String {
        let dir = file(name)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// A name not used before in this scratch folder.
    func unique(_ stem: String) -> String {
        counter += 1
        return file("\(stem)-\(counter)")
    }

    func remove() {
        if ProcessInfo.processInfo.environment["CRYO_KEEP_TMP"] != nil { return }
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Total apparent size (st_size) of the regular files under `path`.
func folderSize(_ path: String) -> UInt64 {
    var total: UInt64 = 0
    guard let walker = FileManager.default.enumerator(atPath: path) else { return 0 }
    while let relative = walker.nextObject() as? String {
        var st = stat()
        if lstat(path + "/" + relative, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG {
            total += UInt64(st.st_size)
        }
    }
    return total
}

/// The whole file, read until EOF: FileManager reads a /proc file of size 0 in one
/// read (4057 of /proc/net/unix's 6726 bytes here), so later lines went missing.
func readText(_ path: String) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        bytes += chunk[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

// MARK: - Processes

enum ExitStatus: Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    init?(waitStatus status: Int32) {
        let low = status & 0x7f
        if low == 0 { self = .exited((status >> 8) & 0xff) }
        else if low != 0x7f { self = .signaled(low) }
        else { return nil }   // stopped/continued: not an exit
    }

    var description: String {
        switch self {
        case .exited(let code): return "exit status \(code)"
        case .signaled(let sig): return "killed by signal \(sig) (\(String(cString: strsignal(sig))))"
        }
    }
}

/// Starts `path` with `arguments`; stdin is /dev/null, stdout is appended to
/// `stdoutPath`, stderr to `stderrPath` (or the same description as stdout).
/// Only fds 0-2 are passed on, every signal starts at its default action and
/// unblocked. With `newSession` the child calls setsid (pid == sid == pgid).
/// `environment` adds (or replaces) variables of our own environment.
func spawnProcess(_ path: String, _ arguments: [String], stdoutPath: String, stderrPath: String? = nil,
                  newSession: Bool = false, environment: [String: String] = [:]) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }

    let outFlags = O_WRONLY | O_CREAT | O_APPEND
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, stdoutPath, outFlags, 0o644)
    if let stderrPath {
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, outFlags, 0o644)
    } else {
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
    }
    closeOtherDescriptors(&actions)

    var flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
    if newSession { flags |= spawnSetSID }
    posix_spawnattr_setflags(&attributes, Int16(truncatingIfNeeded: flags))
    var none = sigset_t()
    sigemptyset(&none)
    posix_spawnattr_setsigmask(&attributes, &none)
    var all = sigset_t()
    sigfillset(&all)
    posix_spawnattr_setsigdefault(&attributes, &all)

    var argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) }
    argv.append(nil)
    defer { for arg in argv { free(arg) } }

    var envp: [UnsafeMutablePointer<CChar>?] = []
    if !environment.isEmpty {
        var merged = ProcessInfo.processInfo.environment
        merged.merge(environment) { _, new in new }
        envp = merged.map { strdup("\($0.key)=\($0.value)") }
    }
    envp.append(nil)
    defer { for entry in envp { free(entry) } }

    var pid: pid_t = 0
    let rc = environment.isEmpty ? posix_spawn(&pid, path, &actions, &attributes, argv, environ)
        : posix_spawn(&pid, path, &actions, &attributes, argv, envp)
    guard rc == 0 else { throw HarnessError("posix_spawn \(path): \(String(cString: strerror(rc)))") }
    return pid
}

/// POSIX_SPAWN_SETSID (glibc >= 2.26); the macro is not visible from Swift.
private let spawnSetSID: Int32 = 0x80

private typealias CloseFromAction = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32

/// Closes every fd >= 3 in the child: glibc's addclosefrom_np when present,
/// else one close action per fd open in this process right now.
private func closeOtherDescriptors(_ actions: inout posix_spawn_file_actions_t) {
    if let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, "posix_spawn_file_actions_addclosefrom_np") {
        let closeFrom = unsafeBitCast(symbol, to: CloseFromAction.self)
        if closeFrom(&actions, 3) == 0 { return }
    }
    let open = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    for fd in open.compactMap({ Int32($0) }) where fd > 2 {
        posix_spawn_file_actions_addclose(&actions, fd)
    }
}

/// Is there a process (possibly a zombie) with this pid?
func pidExists(_ pid: pid_t) -> Bool {
    kill(pid, 0) == 0 || errno == EPERM
}

/// Fields of /proc/PID/status, or nil when the process is gone.
struct ProcStatus {
    let name: String
    let state: Character
    let tracerPid: Int
    let caughtSignals: UInt64
    let blockedSignals: UInt64

    init?(pid: pid_t) {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/status") else { return nil }
        var fields: [String: String] = [:]
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            fields[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        guard let name = fields["Name"], let state = fields["State"]?.first else { return nil }
        self.name = name
        self.state = state
        tracerPid = Int(fields["TracerPid"] ?? "") ?? -1
        caughtSignals = UInt64(fields["SigCgt"] ?? "", radix: 16) ?? 0
        blockedSignals = UInt64(fields["SigBlk"] ?? "", radix: 16) ?? 0
    }

    func catches(_ signal: Int32) -> Bool { caughtSignals & (UInt64(1) << UInt64(signal - 1)) != 0 }

    /// Running or sleeping, not stopped, traced, or dead.
    var isRunning: Bool { "RSD".contains(state) }

    var summary: String { "name \(name), state \(state), tracer \(tracerPid), SigCgt \(String(caughtSignals, radix: 16))" }
}

func describeProcess(_ pid: pid_t) -> String {
    ProcStatus(pid: pid).map { "pid \(pid): \($0.summary)" } ?? "pid \(pid): gone"
}

// MARK: - Fixtures

/// Compiles Tests/Fixtures/NAME.c once per test run.
enum FixtureBuilder {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var built: [String: String] = [:]
    nonisolated(unsafe) private static var outputDirectory: String?

    /// Extra compiler arguments for fixtures that need them.
    private static let extraFlags: [String: [String]] = ["threads": ["-pthread"], "sigtrap": ["-pthread"], "leaderexit": ["-pthread"], "cgroups": ["-pthread"], "restartblock": ["-pthread"], "rseqcs": ["-pthread"], "ptimers": ["-pthread"], "pidfdthread": ["-pthread"], "callchain": ["-fno-omit-frame-pointer"]]

    static func binary(for name: String) throws -> String {
        lock.lock()
        defer { lock.unlock() }
        if let path = built[name] { return path }
        if outputDirectory == nil {
            let scratch = try Scratch("fixtures-\(getpid())")
            outputDirectory = scratch.path
            buildDirectoryToRemove = scratch.path
            atexit {
                if let dir = buildDirectoryToRemove, ProcessInfo.processInfo.environment["CRYO_KEEP_TMP"] == nil {
                    try? FileManager.default.removeItem(atPath: dir)
                }
            }
        }
        let source = Locations.fixturesDirectory + "/\(name).c"
        guard FileManager.default.fileExists(atPath: source) else { throw HarnessError("no fixture source \(source)") }
        let output = outputDirectory! + "/\(name)"
        let log = outputDirectory! + "/\(name).cc.log"
        let arguments = ["-O1", "-g", "-Wall", "-o", output, source] + (extraFlags[name] ?? [])
        let pid = try spawnProcess("/usr/bin/env", ["cc"] + arguments, stdoutPath: log)
        guard let status = reap(pid, timeout: 120), status == .exited(0) else {
            throw HarnessError("cc \(arguments.joined(separator: " ")) failed:\n\(readText(log))")
        }
        built[name] = output
        return output
    }
}

nonisolated(unsafe) private var buildDirectoryToRemove: String?

/// Waits up to `timeout` seconds for our child `pid` to exit and reaps it.
func reap(_ pid: pid_t, timeout: Double) -> ExitStatus? {
    var result: ExitStatus?
    waitUntil(timeout: timeout, interval: 0.01) {
        result = tryReap(pid)
        return result != nil
    }
    return result
}

/// Reaps our child `pid` if it has exited; nil while it runs (or if it is not ours).
func tryReap(_ pid: pid_t) -> ExitStatus? {
    var status: Int32 = 0
    let rc = waitpid(pid, &status, WNOHANG)
    guard rc == pid else { return nil }
    return ExitStatus(waitStatus: status)
}

/// A fixture program started in its own session, its output in a log file.
final class Fixture {
    let name: String
    let pid: pid_t
    let logPath: String
    /// Set once the original process (our child) has been reaped.
    private(set) var originalExit: ExitStatus?

    /// Default arguments per fixture; `files`, `events` and `unix` get a fresh folder, `bigmem`
    /// its size in MiB (CRYO_TEST_BIGMEM_MIB overrides 2048 for quick runs).
    static func defaultArguments(for name: String, in scratch: Scratch) throws -> [String] {
        switch name {
        case "files": return [try scratch.folder("files-work")]
        case "events": return [try scratch.folder("events-work")]
        case "locks": return [try scratch.folder("locks-work")]
        case "leases": return [try scratch.folder("leases-work")]
        case "unix": return [try scratch.folder("unix-work")]
        case "inotify": return [try scratch.folder("inotify-work")]
        case "bigmem": return [String(bigmemMiB)]
        case "tcp": return ["listen"] // the established connections need --tcp-established: InetTests
        default: return []
        }
    }

    static var bigmemMiB: Int {
        Int(ProcessInfo.processInfo.environment["CRYO_TEST_BIGMEM_MIB"] ?? "") ?? 2048
    }

    /// `binary` runs another copy of the fixture; `launcher` goes before it (e.g. setpriv
    /// to run as another user: it must exec, keeping the pid); `logPath` moves the log.
    init(_ name: String, arguments: [String]? = nil, in scratch: Scratch, binary: String? = nil,
         launcher: [String] = [], logPath: String? = nil) throws {
        self.name = name
        let binary = try binary ?? FixtureBuilder.binary(for: name)
        self.logPath = logPath ?? scratch.file("\(name).log")
        let args = try arguments ?? Fixture.defaultArguments(for: name, in: scratch)
        pid = try spawnProcess(launcher.first ?? binary, Array(launcher.dropFirst()) + (launcher.isEmpty ? [] : [binary]) + args,
                               stdoutPath: self.logPath, newSession: true)
    }

    var log: String { readText(logPath) }

    var lines: [String] { log.split(separator: "\n", omittingEmptySubsequences: true).map(String.init) }

    var lastLine: String? { lines.last }

    /// The words after `tag` on the first line that starts with it ("MAP 7f.. 123").
    func tagged(_ tag: String) -> [String]? {
        for line in lines {
            let words = line.split(separator: " ").map(String.init)
            if words.first == tag { return Array(words.dropFirst()) }
        }
        return nil
    }

    /// Waits for the READY line; throws with the log if the fixture dies or
    /// times out (bigmem writes gigabytes first, so it gets longer).
    func waitReady(timeout: Double? = nil) throws {
        let timeout = timeout ?? (name == "bigmem" ? 120 : 20)
        var died: ExitStatus?
        let ready = waitUntil(timeout: timeout) {
            if lines.contains("READY") { return true }
            if originalExit == nil, let status = tryReap(pid) { originalExit = status; died = status }
            return died != nil
        }
        if let died { throw HarnessError("fixture \(name) (pid \(pid)) ended before READY: \(died)\nlog:\n\(log)") }
        if !ready { throw HarnessError("fixture \(name) (pid \(pid)) printed no READY in \(timeout) s\nlog:\n\(log)") }
    }

    /// Reaps the original process if it has ended (does not wait).
    @discardableResult
    func pollOriginal() -> ExitStatus? {
        if originalExit == nil { originalExit = tryReap(pid) }
        return originalExit
    }

    /// Waits for the original process (our child) to end and reaps it.
    @discardableResult
    func reapOriginal(timeout: Double) -> ExitStatus? {
        if originalExit == nil { originalExit = reap(pid, timeout: timeout) }
        return originalExit
    }

    func signal(_ sig: Int32) {
        kill(pid, sig)
    }

    /// Kills whatever still runs under this fixture's pid and name, and reaps
    /// the original if it is still our child. Safe to call more than once.
    func cleanUp() {
        if let status = ProcStatus(pid: pid), status.name == String(name.prefix(15)), status.state != "Z" {
            kill(pid, SIGKILL)
        }
        // Until reaped, the original holds the pid, so this pid is still our child.
        if originalExit == nil { originalExit = reap(pid, timeout: 5) }
        // A restored copy is not our child: give its parent (cryo or init) a moment to reap it.
        waitUntil(timeout: 5) { !(ProcStatus(pid: pid).map { $0.name == String(name.prefix(15)) } ?? false) }
        // A fixture killed before its checks leaves the file it names by its pid in /dev/shm (shmem.c).
        unlink("/dev/shm/cryo-\(name)-\(pid)")
    }

    /// Waits until a restored process runs under this pid: right name, not
    /// stopped or traced, with a SIGTERM handler in place. `keepWaiting`
    /// returning false stops early (e.g. cryo exited).
    func waitRestored(timeout: Double, keepWaiting: () -> Bool = { true }) -> Bool {
        var stableSince: Double?
        return waitUntil(timeout: timeout) {
            guard keepWaiting() else { return true }
            guard let status = ProcStatus(pid: pid), status.name == String(name.prefix(15)), status.isRunning,
                  status.tracerPid == 0, status.catches(SIGTERM) else {
                stableSince = nil
                return false
            }
            let now = monotonicNow()
            if stableSince == nil { stableSince = now }
            return now - stableSince! >= 0.1
        } && keepWaiting() && ProcStatus(pid: pid) != nil
    }

    /// The log, for failure messages.
    var report: String { "fixture \(name) (pid \(pid)) log:\n\(log)" }
}

// MARK: - Running cryo

struct CryoResult: CustomStringConvertible {
    let arguments: [String]
    let status: ExitStatus?   // nil: timed out (and was killed)
    let stdout: String
    let stderr: String

    var succeeded: Bool { status == .exited(0) }
    var failed: Bool { if case .exited(let code) = status { return code != 0 } else { return false } }

    var stderrLines: [String] {
        stderr.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    var description: String {
        "cryo \(arguments.joined(separator: " ")): \(status.map(\.description) ?? "timed out")\n"
            + "stdout:\n\(stdout)stderr:\n\(stderr)"
    }
}

/// A cryo process started in the background.
final class CryoProcess {
    let arguments: [String]
    let pid: pid_t
    private let stdoutPath: String
    private let stderrPath: String
    private(set) var status: ExitStatus?

    /// `executable` runs another cryo binary; `launcher` goes before it (e.g. setpriv).
    init(_ arguments: [String], in scratch: Scratch, environment: [String: String] = [:], executable: String? = nil,
         launcher: [String] = []) throws {
        self.arguments = arguments
        let stem = scratch.unique("cryo-\(arguments.first ?? "")")
        stdoutPath = stem + ".out"
        stderrPath = stem + ".err"
        let binary = try executable ?? Locations.cryoBinary()
        pid = try spawnProcess(launcher.first ?? binary, Array(launcher.dropFirst()) + (launcher.isEmpty ? [] : [binary]) + arguments,
                               stdoutPath: stdoutPath, stderrPath: stderrPath, environment: environment)
    }

    /// What it wrote to stderr so far.
    var stderrSoFar: String { readText(stderrPath) }

    /// Still running?
    var isRunning: Bool {
        if status == nil { status = tryReap(pid) }
        return status == nil
    }

    /// Waits for cryo to exit (killing it after `timeout`). While waiting it
    /// also reaps `fixture`'s original process if that ends, so cryo never
    /// waits on a zombie that only we could reap.
    func wait(timeout: Double, reaping fixture: Fixture? = nil) -> CryoResult {
        waitUntil(timeout: timeout, interval: 0.01) {
            fixture?.pollOriginal()
            return !isRunning
        }
        if status == nil {
            kill(pid, SIGKILL)
            _ = reap(pid, timeout: 10)
        }
        return CryoResult(arguments: arguments, status: status, stdout: readText(stdoutPath), stderr: readText(stderrPath))
    }

    /// Kills cryo if it still runs (cleanup).
    func stop() {
        if isRunning {
            kill(pid, SIGKILL)
            status = reap(pid, timeout: 10)
        }
    }
}

/// Runs cryo to completion.
func cryo(_ arguments: [String], in scratch: Scratch, timeout: Double = 120, reaping fixture: Fixture? = nil,
          environment: [String: String] = [:], executable: String? = nil, launcher: [String] = []) throws -> CryoResult {
    let process = try CryoProcess(arguments, in: scratch, environment: environment, executable: executable, launcher: launcher)
    return process.wait(timeout: timeout, reaping: fixture)
}

/// Timeout for one cryo command on `fixture`: big images take a while.
func cryoTimeout(for fixture: String) -> Double {
    fixture == "bigmem" ? 600 : 120
}

// MARK: - Checks shared by the suites

/// Image folder bounds for bigmem: the written three quarters must be in the
/// image, the never-touched quarter must not.
func checkBigmemImageSize(_ images: String, fixture: Fixture) {
    let size = folderSize(images)
    let mapped = fixture.tagged("MAP").flatMap { $0.count == 2 ? UInt64($0[1]) : nil } ?? 0
    #expect(mapped == UInt64(Fixture.bigmemMiB) << 20, "MAP line missing or wrong: \(fixture.log)")
    guard mapped > 0 else { return }
    let lower = UInt64(Double(mapped) * 0.74)
    let upper = UInt64(Double(mapped) * 0.80)
    #expect(size >= lower, "image is \(size) bytes, less than 0.74 of the \(mapped)-byte mapping: written pages are missing")
    #expect(size <= upper, "image is \(size) bytes, more than 0.80 of the \(mapped)-byte mapping: the never-touched quarter was saved")
}

/// Starts `name` with `arguments`, dumps it, restores it and expects its own check to pass.
func selfCheckingRoundTrip(_ name: String, arguments: [String], scratch stem: String, dumpOptions: [String] = [],
                           restoreOptions: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) throws {
    let scratch = try Scratch(stem)
    defer { scratch.remove() }
    let fixture = try Fixture(name, arguments: arguments, in: scratch)
    defer { fixture.cleanUp() }
    try fixture.waitReady()
    let (images, _) = try dumpAndReap(fixture, in: scratch, options: dumpOptions, sourceLocation: sourceLocation)
    let restore = try CryoProcess(["restore", "-D", images] + restoreOptions, in: scratch)
    defer { restore.stop() }
    try expectRestoredAndPassing(fixture, by: restore, sourceLocation: sourceLocation)
}

/// Dumps a ready fixture (which kills it) into scratch/img and waits until the original is gone.
func dumpAndReap(_ fixture: Fixture, in scratch: Scratch, options: [String] = [],
                 sourceLocation: SourceLocation = #_sourceLocation) throws -> (images: String, dump: CryoResult) {
    let images = scratch.file("img")
    let dump = try cryo(["dump"] + options + ["-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
    try #require(dump.succeeded, "\(dump)\n\(fixture.report)", sourceLocation: sourceLocation)
    try #require(fixture.reapOriginal(timeout: 20) != nil, "pid \(fixture.pid) still runs after the dump", sourceLocation: sourceLocation)
    return (images, dump)
}

/// A foreground `cryo restore` (already started) must bring the fixture back running;
/// `whileRunning` checks it then, SIGTERM (followed by `afterSignal`) must make it
/// check itself and pass, and cryo must exit with its status 0.
func expectRestoredAndPassing(_ fixture: Fixture, by restore: CryoProcess, timeout: Double = 120,
                              whileRunning: () throws -> Void = {}, afterSignal: () throws -> Void = {},
                              sourceLocation: SourceLocation = #_sourceLocation) throws {
    let up = fixture.waitRestored(timeout: timeout) { restore.isRunning }
    try #require(up, "pid \(fixture.pid) did not come back running \(fixture.name) (\(describeProcess(fixture.pid)))\n\(restore.wait(timeout: 5))\n\(fixture.report)",
                 sourceLocation: sourceLocation)
    try whileRunning()
    kill(fixture.pid, SIGTERM)
    try afterSignal()
    let result = restore.wait(timeout: 120)
    #expect(result.status == .exited(0), "cryo restore should exit with the fixture's status 0\n\(result)\n\(fixture.report)",
            sourceLocation: sourceLocation)
    expectPass(fixture, "\(result)", sourceLocation: sourceLocation)
}

/// SIGTERM must make the fixture check itself and say PASS as its last line.
func expectPass(_ fixture: Fixture, _ context: @autoclosure () -> String = "",
                sourceLocation: SourceLocation = #_sourceLocation) {
    let last = fixture.lastLine
    #expect(last == "PASS", "\(fixture.name) did not pass (last line: \(last ?? "none"))\n\(fixture.report)\n\(context())",
            sourceLocation: sourceLocation)
}

/// Does `text` contain `word` as a whole token (not inside a longer number or word)?
func containsToken(_ text: String, _ word: String) -> Bool {
    let tokens = text.split(whereSeparator: { !($0.isLetter || $0.isNumber) })
    return tokens.contains { $0 == word }
}
