import CCryo
import Glibc
import SystemPackage

extension Processes {
    /// This program's file, to start it again: its path while that still names it (so the new
    /// process shows the same name), else /proc/self/exe.
    public static var ownExecutable: String {
        if let path = try? Files.readLink("/proc/self/exe"), access(path, X_OK) == 0 { return path }
        return "/proc/self/exe"
    }

    /// Starts `path` with exactly the descriptors `passing` at 3, 4, ... (nothing else of ours),
    /// without waiting for it: by default in a new session with stdio on /dev/null;
    /// `keepStdio` gives it our stdin, stdout and stderr, and `newSession` false keeps it in ours.
    public static func spawnDetached(_ path: String, _ arguments: [String], passing: [FileDescriptor],
                                     keepStdio: Bool = false, newSession: Bool = true) throws -> pid_t {
        // Fresh close-on-exec copies far above the targets, so no dup2 is a no-op that keeps close-on-exec.
        var copies: [Int32] = []
        defer { for fd in copies { Glibc.close(fd) } }
        for fd in passing {
            copies.append(Int32(try checkLibc(Int(Glibc.fcntl(fd.rawValue, F_DUPFD_CLOEXEC, 1000)), "fcntl(F_DUPFD_CLOEXEC)", object: "fd \(fd.rawValue)")))
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if !keepStdio {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDWR, 0)
            posix_spawn_file_actions_adddup2(&actions, 0, 1)
            posix_spawn_file_actions_adddup2(&actions, 0, 2)
        }
        for (i, fd) in copies.enumerated() { posix_spawn_file_actions_adddup2(&actions, fd, Int32(3 + i)) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, Int16((newSession ? 0x80 /* POSIX_SPAWN_SETSID */ : 0) | POSIX_SPAWN_SETSIGMASK))
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var pid: pid_t = 0
        let r = posix_spawn(&pid, path, &actions, &attributes, argv, environ)
        if r != 0 { throw SyscallError("posix_spawn", errno: Errno(rawValue: r), object: path) }
        return pid
    }
}

extension Processes {
    /// Runs a program (found on PATH) to its end with stdin on /dev/null: its exit
    /// status (or -1 when killed) and what it wrote to stdout and stderr together.
    public static func run(_ program: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let (readEnd, writeEnd) = try FileObjects.pipe(object: program)
        let fds = [readEnd.rawValue, writeEnd.rawValue]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        let argv = ([program] + arguments).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var pid: pid_t = 0
        let r = posix_spawnp(&pid, program, &actions, &attributes, argv, environ)
        Glibc.close(fds[1])
        defer { Glibc.close(fds[0]) }
        if r != 0 { throw SyscallError("posix_spawnp", errno: Errno(rawValue: r), object: program) }
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fds[0], $0.baseAddress, $0.count) }
            if n < 0 && Glibc.errno == EINTR { continue }
            if n <= 0 { break }
            output += buffer[0..<n]
        }
        var status: Int32 = 0
        while Glibc.waitpid(pid, &status, 0) < 0 {
            if Glibc.errno != EINTR { throw SyscallError("waitpid", errno: Errno(rawValue: Glibc.errno), object: program) }
        }
        let exited = status & 0x7f == 0
        return (exited ? (status >> 8) & 0xff : -1, String(decoding: output, as: UTF8.self))
    }
}

/// A program that is not installed: posix_spawnp found it nowhere on PATH, or the nsenter that was
/// to run it could not.
public struct ProgramNotFound: Error, CustomStringConvertible {
    public let program: String
    public var description: String { "\(program) is not installed (not found on PATH)" }
}

extension Processes {
    /// Runs a network tool (iptables, nft, ip) to its end in the network namespace at `namespace` (a
    /// path such as /proc/PID/ns/net, entered with nsenter), or in ours when nil. Throws ProgramNotFound
    /// when the tool, or nsenter, is not installed.
    public static func run(_ command: [String], inNetworkNamespace namespace: String?) throws -> (status: Int32, output: String) {
        let argv = (namespace.map { ["nsenter", "--net=\($0)", "--"] } ?? []) + command
        let result: (status: Int32, output: String)
        do {
            result = try run(argv[0], Array(argv.dropFirst()))
        } catch let error as SyscallError where error.errno == .noSuchFileOrDirectory {
            throw ProgramNotFound(program: argv[0])
        }
        // 127: nsenter could not find the program to execute (the shell's convention, which it follows).
        if namespace != nil && result.status == 127 { throw ProgramNotFound(program: command[0]) }
        return result
    }
}
