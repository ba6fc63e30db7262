import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// A session of the tree whose controlling terminal is a pty made in the tree.
public struct SessionTerminal: Codable, Sendable {
    public var session: Int32
    /// /dev/pts index at dump: the pty whose master the file table holds.
    public var index: Int32
    /// The foreground process group (tcgetpgrp), nil when it has none.
    public var foregroundGroup: Int32?
}

/// Controlling terminals of the tree's own sessions. A process's terminal is
/// per process (`/proc/PID/stat` tty_nr): it is inherited at fork, taken by a
/// session leader with TIOCSCTTY and dropped with TIOCNOTTY. So at restore the
/// leader takes the new pty right after its setsid, before its session's other
/// processes are cloned (they inherit it), and once every group exists the
/// processes that had none drop it and the leader sets the foreground group.
/// `/dev/tty` descriptions of such a terminal are opened by the leader then.
enum ControllingTerminals {
    static let slaveMajors: ClosedRange<UInt64> = 136...143

    /// The /dev/pts index of a tty_nr (new_encode_dev), or nil when it is no pty slave.
    static func ptyIndex(ttyNr: UInt64) -> Int32? {
        let major = (ttyNr >> 8) & 0xfff, minor = (ttyNr & 0xff) | ((ttyNr >> 12) & ~0xff)
        guard slaveMajors.contains(major) else { return nil }
        return Int32((major - 136) * 256 + minor)
    }

    static func deviceName(ttyNr: UInt64) -> String {
        if let index = ptyIndex(ttyNr: ttyNr) { return "/dev/pts/\(index)" }
        return "tty \((ttyNr >> 8) & 0xfff):\((ttyNr & 0xff) | ((ttyNr >> 12) & ~0xff))"
    }

    /// Reads and checks the terminals of the frozen tree before anything else is taken from
    /// it: each process's terminal must be a pty whose master a process of the tree holds
    /// (or, for a shell job's session, cryo's own), the terminal of its session, whose leader
    /// is in the tree, with a foreground group of the tree. Returns each process's pty index
    /// and the sessions' terminals; a terminal that is no pty (a console, a virtual terminal,
    /// a serial line) is refused once the descriptors are read (`Analysis.refusal`), so that
    /// a descriptor of it is refused by its own kind first, by name.
    static func dump(_ tree: FrozenTree, root: pid_t, shellJob: Bool) throws -> Analysis {
        let live = tree.live
        // tty_nr (field 7 of /proc/PID/stat): frozen, no process can change it now.
        var ttyNr: [pid_t: UInt64] = [:]
        for p in live { ttyNr[p.pid] = try ProcStat(pid: p.pid).field(7) }
        let rootSession = live.first { $0.pid == root }?.sid
        let own = TerminalState.ownControllingTerminal()
        let others = live.filter { p in ttyNr[p.pid]! != 0 && !(shellJob && p.sid == rootSession && ttyNr[p.pid]! == own) }
        let withTerminal = others.filter { ptyIndex(ttyNr: ttyNr[$0.pid]!) != nil }
        let refusal = others.first { ptyIndex(ttyNr: ttyNr[$0.pid]!) == nil }.map { p in
            "pid \(p.pid) (\(p.comm)): its controlling terminal \(deviceName(ttyNr: ttyNr[p.pid]!)) is no pseudo-terminal of the dumped tree; not supported"
        }
        guard !withTerminal.isEmpty else { return Analysis(byPid: [:], sessions: [], refusal: refusal) }
        let masters = try mastersByIndex(live)
        defer { for m in masters.values { try? m.handle.close() } }
        var byPid: [pid_t: Int32] = [:]
        var sessions: [Int32: SessionTerminal] = [:]
        for p in withTerminal {
            let name = deviceName(ttyNr: ttyNr[p.pid]!)
            guard let index = ptyIndex(ttyNr: ttyNr[p.pid]!), let master = masters[index] else {
                throw CryoError("pid \(p.pid) (\(p.comm)): its controlling terminal \(name) is not a pty whose master the dumped tree holds; not supported")
            }
            if sessions[p.sid] == nil {
                let object = "\(master.object) (pty \(index))"
                let session = try Terminals.session(master.handle, object: object)
                guard session == p.sid, live.contains(where: { $0.pid == p.sid && $0.sid == p.sid }) else {
                    throw CryoError("pid \(p.pid) (\(p.comm)): its controlling terminal \(name) belongs to session \(session.map(String.init) ?? "none"), "
                        + "not to its own session \(p.sid) led by a process of the tree; not supported")
                }
                let group = try Terminals.foregroundGroup(master.handle, object: object)
                if group != 0 && !live.contains(where: { $0.pgid == group && $0.sid == p.sid }) {
                    throw CryoError("\(name), the controlling terminal of session \(p.sid): its foreground process group \(group) "
                        + "has no live process in the dumped tree; not supported")
                }
                sessions[p.sid] = SessionTerminal(session: p.sid, index: index, foregroundGroup: group == 0 ? nil : group)
            }
            guard sessions[p.sid]?.index == index else {
                throw CryoError("pid \(p.pid) (\(p.comm)): its controlling terminal \(name) is not its session's (\(p.sid)); not supported")
            }
            byPid[p.pid] = index
        }
        // A leader that no longer has its terminal took it from the whole session (TIOCNOTTY):
        // any member still showing it would be a state the kernel does not make.
        for s in sessions.values where byPid[s.session] == nil {
            throw CryoError("pid \(s.session): session \(s.session)'s members have controlling terminal /dev/pts/\(s.index) but its leader has none; not supported")
        }
        return Analysis(byPid: byPid, sessions: sessions.values.sorted { $0.session < $1.session }, refusal: refusal)
    }

    struct Analysis {
        var byPid: [pid_t: Int32]
        var sessions: [SessionTerminal]
        var refusal: String?
    }

    /// The pty masters the tree's processes hold, by index (`tty-index` in fdinfo), each with a duplicate.
    private static func mastersByIndex(_ live: [FrozenProcess]) throws -> [Int32: (handle: FileDescriptor, object: String)] {
        var result: [Int32: (handle: FileDescriptor, object: String)] = [:]
        do {
            for p in live {
                let numbers = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(p.pid)/fd").compactMap { Int32($0) }.sorted()
                for fd in numbers {
                    guard let link = try? Files.readLink("/proc/\(p.pid)/fd/\(fd)"), link.hasSuffix("ptmx") else { continue }
                    let info = (try? Files.readString("/proc/\(p.pid)/fdinfo/\(fd)")) ?? ""
                    guard let line = info.split(separator: "\n").first(where: { $0.hasPrefix("tty-index:") }),
                          let index = Int32(line.dropFirst("tty-index:".count).trimmed()), result[index] == nil else { continue }
                    result[index] = (try Pidfd.copy(of: fd, from: p.pid), "pid \(p.pid) fd \(fd)")
                }
            }
        } catch {
            for m in result.values { try? m.handle.close() }
            throw error
        }
        return result
    }
}

extension Restorer {
    /// Right after a session leader's setsid: it takes its pty as controlling terminal
    /// (TIOCSCTTY on the new slave, reached through cryo's own descriptor), then opens
    /// the image's `/dev/tty` descriptions of that terminal, which cryo takes over.
    func acquireTerminal(_ process: RestoringProcess, image: Image, opened: OpenedFiles) throws {
        let pid = process.image.core.pid
        guard let terminal = image.inventory.terminals?.first(where: { $0.session == pid }) else { return }
        let what = "controlling terminal of session \(pid) (pty \(terminal.index))"
        let slave = try opened.terminalSlave(index: terminal.index, object: what)
        let fd = try openIn(process, path: "/proc/\(getpid())/fd/\(slave.rawValue)", flags: O_RDWR | O_NOCTTY | O_NONBLOCK, what: what)
        defer { _ = try? inject(process.tracee, 3 /* close */, UInt64(fd), what: "close") }
        try inject(process.tracee, 16 /* ioctl */, UInt64(fd), UInt64(TIOCSCTTY), 0, what: "ioctl(TIOCSCTTY) of the \(what)")
        for (file, state) in TerminalState.entries(image.fileTable.files) where state.role == .currentTerminal && state.index == terminal.index {
            let flags = Int32(bitPattern: file.flags) & (O_ACCMODE | O_NONBLOCK | O_APPEND)
            let tty = try openIn(process, path: "/dev/tty", flags: flags | O_NOCTTY, what: "/dev/tty (file #\(file.id)) of the \(what)")
            defer { _ = try? inject(process.tracee, 3 /* close */, UInt64(tty), what: "close") }
            try opened.replace(file.id, with: try Pidfd.copy(of: tty, from: process.pid))
        }
    }

    /// Once every process and group exists: processes of such a session that had no
    /// terminal drop the one they inherited, and each leader sets the foreground group.
    func finishTerminals(_ image: Image, session: RestoreSession) throws {
        guard let terminals = image.inventory.terminals, !terminals.isEmpty else { return }
        for entry in image.inventory.processes where entry.zombieStatus == nil && entry.terminal == nil
            && terminals.contains(where: { $0.session == entry.sid }) {
            let process = session.processes[entry.pid]!
            let tty = try openIn(process, path: "/dev/tty", flags: O_RDWR | O_NOCTTY | O_NONBLOCK, what: "/dev/tty of pid \(entry.pid)")
            defer { _ = try? inject(process.tracee, 3 /* close */, UInt64(tty), what: "close") }
            try inject(process.tracee, 16 /* ioctl */, UInt64(tty), UInt64(TIOCNOTTY), 0, what: "ioctl(TIOCNOTTY) of pid \(entry.pid)")
        }
        for terminal in terminals {
            guard let group = terminal.foregroundGroup, let leader = session.processes[terminal.session] else { continue }
            let tty = try openIn(leader, path: "/dev/tty", flags: O_RDWR | O_NOCTTY | O_NONBLOCK, what: "/dev/tty of pid \(terminal.session)")
            defer { _ = try? inject(leader.tracee, 3 /* close */, UInt64(tty), what: "close") }
            let address = try leader.parasite.place(withUnsafeBytes(of: group) { Array($0) })
            try inject(leader.tracee, 16 /* ioctl */, UInt64(tty), UInt64(TIOCSPGRP), address,
                       what: "ioctl(TIOCSPGRP \(group)) on the controlling terminal of session \(terminal.session)")
        }
    }

    /// An injected openat in the task: its new descriptor.
    private func openIn(_ process: RestoringProcess, path: String, flags: Int32, what: String) throws -> Int32 {
        let address = try process.parasite.place(Array(path.utf8) + [0])
        let fd = try inject(process.tracee, 257 /* openat */, UInt64(bitPattern: Int64(AT_FDCWD)), address, UInt64(UInt32(bitPattern: flags | O_CLOEXEC)), 0,
                            what: "openat(\(path)) for the \(what)")
        return Int32(fd)
    }
}

extension Inventory {
    /// Each session's terminal names a listed session leader and a pty master of the file table.
    func validateTerminals(_ files: FileTable) throws {
        for t in terminals ?? [] {
            // The leader has the terminal itself: restore gives it the pty and never drops it from the leader.
            guard processes.contains(where: { $0.pid == t.session && $0.sid == t.session && $0.zombieStatus == nil && $0.terminal == t.index }),
                  TerminalState.entries(files.files).contains(where: { $0.state.role == .ptyMaster && $0.state.index == t.index }) else {
                throw ImageError(file: "inventory.img", record: "inventory", "session \(t.session)'s terminal (pty \(t.index)) has no leader or no master")
            }
        }
        for (file, state) in TerminalState.entries(files.files) where state.role == .currentTerminal {
            guard let index = state.index else { continue }
            guard terminals?.contains(where: { $0.index == index }) == true else {
                throw ImageError(file: "inventory.img", record: "inventory", "file #\(file.id), /dev/tty of pty \(index), names no session's terminal")
            }
        }
        for p in processes {
            guard let index = p.terminal else { continue }
            guard terminals?.contains(where: { $0.session == p.sid && $0.index == index }) == true else {
                throw ImageError(file: "inventory.img", record: "inventory", "pid \(p.pid)'s terminal (pty \(index)) is not its session's")
            }
        }
    }
}
