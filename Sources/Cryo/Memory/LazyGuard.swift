import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

// A lazily restored tree runs before its memory is in. Should its loader
// (cryo) die, the kernel would close the userfaultfds and fill every page
// still missing with zeros: the tree would run on wrong memory. So a small
// guard process (`cryo lazy-guard`, its own session) holds a copy of every
// userfaultfd and a pidfd of every restored process while loading runs: a
// fault then waits instead of reading zeros, and when the loader's end of the
// socket closes without a word that loading ended, the guard kills the tree
// (every held process and its descendants) and exits.

/// The loader's side of the guard.
public final class LazyGuard: @unchecked Sendable {
    private let socket: FileDescriptor
    private let lock = Lock()
    private var nextIndex: UInt32 = 0
    private var released = false

    /// Message kinds, one byte each, then a descriptor (F, P) or an index (D).
    static let holdUffd = UInt8(ascii: "F"), holdProcess = UInt8(ascii: "P"), dropUffd = UInt8(ascii: "D"), loaded = UInt8(ascii: "E")

    init() throws {
        let (ours, theirs) = try Sockets.unixPair(type: Int32(SOCK_SEQPACKET.rawValue), blocking: true, object: "lazy guard")
        socket = ours
        defer { try? theirs.close() }
        do {
            _ = try Processes.spawnDetached(Processes.ownExecutable, ["lazy-guard"], passing: [theirs])
        } catch {
            try? socket.close()
            throw error
        }
    }

    /// Never used (a migration that failed before its restore): the guard sees the socket
    /// close, has nothing to kill, and exits.
    deinit {
        lock.withLock { if !released { try? socket.close() } }
    }

    /// Keeps a copy of a userfaultfd; the index drops it.
    func hold(uffd: FileDescriptor) throws -> UInt32 {
        try lock.withLock {
            try Pidfd.send(uffd, over: socket, byte: Self.holdUffd)
            defer { nextIndex += 1 }
            return nextIndex
        }
    }

    /// The process (and whatever it forks) dies if the loader does.
    func hold(pid: pid_t) throws {
        let pidfd = try Pidfd.open(pid)
        defer { try? pidfd.close() }
        try lock.withLock { try Pidfd.send(pidfd, over: socket, byte: Self.holdProcess) }
    }

    /// The loader is done with this userfaultfd: the guard's copy must not keep its ranges registered.
    func drop(_ index: UInt32) {
        let message = [Self.dropUffd] + withUnsafeBytes(of: index.littleEndian) { [UInt8]($0) }
        // Best effort: a guard that is gone has nothing to drop.
        lock.withLock { _ = try? message.withUnsafeBytes { try Sockets.sendAll(socket, $0, object: "lazy guard") } }
    }

    /// Every page is in (or the tree is dead): the guard lets go and exits.
    func release() {
        lock.withLock {
            guard !released else { return }
            released = true
            _ = try? [Self.loaded].withUnsafeBytes { try Sockets.sendAll(socket, $0, object: "lazy guard") }
            try? socket.close()
        }
    }

    /// The guard process: `fd` is its end of the socket.
    public static func run(fd: Int32) -> Never {
        for sig in [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE] { signal(sig, SIG_IGN) }
        let socket = FileDescriptor(rawValue: fd)
        var uffds: [UInt32: FileDescriptor] = [:]
        var processes: [FileDescriptor] = []
        var next: UInt32 = 0
        while true {
            let message: (bytes: [UInt8], fd: FileDescriptor?)
            do { message = try Pidfd.receive(over: socket, capacity: 16) } catch { break } // as good as the loader gone
            guard let kind = message.bytes.first else { break }  // EOF: the loader died
            switch kind {
            case holdUffd:
                if let fd = message.fd { uffds[next] = fd }
                next += 1
            case holdProcess:
                if let fd = message.fd { processes.append(fd) }
            case dropUffd where message.bytes.count >= 5:
                let index = message.bytes[1..<5].withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
                try? uffds.removeValue(forKey: index)?.close()
            case loaded:
                exit(0)
            default:
                break
            }
        }
        // Descendants first (found through the living parents), then the held processes themselves.
        var pids = processes.compactMap { pidOf(pidfd: $0) }
        var i = 0
        while i < pids.count {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pids[i])/task")) ?? []
            for tid in tasks {
                let children = (try? Files.readString("/proc/\(pids[i])/task/\(tid)/children")) ?? ""
                pids += children.split(separator: " ").compactMap { pid_t($0.trimmed()) }
            }
            i += 1
        }
        for pid in pids.dropFirst(processes.count).reversed() { kill(pid, SIGKILL) }
        for pidfd in processes { try? Pidfd.signal(pidfd, SIGKILL) }
        exit(0)
    }

    private static func pidOf(pidfd: FileDescriptor) -> pid_t? {
        let text = (try? Files.readString("/proc/self/fdinfo/\(pidfd.rawValue)")) ?? ""
        for line in text.split(separator: "\n") where line.hasPrefix("Pid:") {
            return pid_t(line.dropFirst(4).trimmed()).flatMap { $0 > 0 ? $0 : nil }
        }
        return nil
    }
}
