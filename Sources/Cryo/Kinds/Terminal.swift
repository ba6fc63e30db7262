import CCryo
import CryoSystem
import Foundation
import Glibc
import SystemPackage

/// A terminal descriptor. Three roles:
/// - `controllingTerminal`: the terminal cryo itself ran in at dump (a
///   `--shell-job`); restore hands over the terminal cryo runs in then.
/// - `ptyMaster` / `ptySlave`: both ends of a pseudo-terminal made inside the
///   tree; restore makes a new pair (its index may differ) and puts back
///   termios, window size, lock and the bytes waiting on either side.
/// - `currentTerminal`: `/dev/tty` opened by a shell job: reopened by cryo at restore.
public struct TerminalState: DescriptorKind {
    static let name = "terminal"
    public enum Role: String, Codable, Sendable { case controllingTerminal, currentTerminal, ptyMaster, ptySlave }
    public var role: Role
    /// The pty's index at dump (/dev/pts/N): pairs master and slaves; not kept at restore.
    public var index: Int32?
    public var termios: Termios?
    public var rows: UInt16?, columns: UInt16?, xPixels: UInt16?, yPixels: UInt16?
    public var locked: Bool?
    /// Master only: bytes written into the master not yet read from the slave, and the reverse.
    public var toSlave: Data?
    public var toMaster: Data?

    public struct Termios: Codable, Sendable {
        public var iflag, oflag, cflag, lflag: UInt32
        public var line: UInt8
        public var cc: [UInt8]
        public var ispeed, ospeed: UInt32

        init(_ t: cryo_termios) {
            iflag = t.iflag; oflag = t.oflag; cflag = t.cflag; lflag = t.lflag; line = t.line
            cc = withUnsafeBytes(of: t.cc) { Array($0) }
            ispeed = t.ispeed; ospeed = t.ospeed
        }
        var raw: cryo_termios {
            var t = cryo_termios()
            t.iflag = iflag; t.oflag = oflag; t.cflag = cflag; t.lflag = lflag; t.line = line
            withUnsafeMutableBytes(of: &t.cc) { dst in for (i, b) in cc.prefix(dst.count).enumerated() { dst[i] = b } }
            t.ispeed = ispeed; t.ospeed = ospeed
            return t
        }
    }

    static let slaveMajors: ClosedRange<UInt32> = 136...143
    static let ptmxDevice = cryo_makedev(5, 2)

    /// The terminal device cryo's own session has (tty_nr of /proc/self/stat), or nil.
    static func ownControllingTerminal() -> UInt64? {
        guard let text = try? Files.readString("/proc/self/stat"), let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 4, let tty = UInt64(fields[4]), tty != 0 else { return nil }  // state ppid pgrp session tty_nr
        return tty
    }

    /// nil for a character device that is no terminal cryo knows (CharacterDevice comes next).
    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> TerminalState? {
        guard p.stat.st_mode & S_IFMT == S_IFCHR else { return nil }
        let (shellJob, leaveRunning) = (table.options.shellJob, table.options.leaveRunning)
        let rdev = UInt64(p.stat.st_rdev)
        let major = UInt32((rdev >> 8) & 0xfff), minor = UInt32((rdev & 0xff) | ((rdev >> 12) & ~0xff))
        if p.link == "/dev/tty" {
            guard shellJob else {
                throw CryoError("\(p.object): /dev/tty (the process's controlling terminal) can only be restored for a shell job: dump with --shell-job from that terminal")
            }
            return TerminalState(role: .currentTerminal)
        }
        if let own = ownControllingTerminal(), own == rdev {
            guard shellJob else {
                throw CryoError("\(p.object): cryo's own terminal (\(p.link)); dump with --shell-job to hand it cryo's terminal at restore")
            }
            return TerminalState(role: .controllingTerminal)
        }
        let handle = p.handle.rawValue
        let ptn = cryo_get_ptn(handle)
        if ptn >= 0 && (rdev == ptmxDevice || p.link.hasSuffix("/ptmx")) {
            var state = try withTermios(handle, role: .ptyMaster, index: Int32(ptn), object: p.object)
            state.locked = try check(cryo_get_ptlock(handle), "ioctl(TIOCGPTLCK)", object: p.object) != 0
            try state.takeQueues(master: p.handle, object: p.object, putBack: leaveRunning)
            return state
        }
        if slaveMajors.contains(major) && p.link.hasPrefix("/dev/pts/") {
            return try withTermios(handle, role: .ptySlave, index: Int32((major - 136) * 256 + minor), object: p.object)
        }
        return nil  // not a terminal cryo knows
    }

    func recordedPath(_ p: DescriptorProbe) -> String? { p.link }

    /// A pty slave needs its master: a new pair is made from the master's state.
    static func finishDump(_ table: FileTableBuilder) throws {
        let terminals = entries(table.table.files)
        for (f, slave) in terminals where slave.role == .ptySlave {
            guard terminals.contains(where: { $0.state.role == .ptyMaster && $0.state.index == slave.index }) else {
                throw CryoError("file \(f.path ?? "") (pty \(slave.index ?? -1)): the slave of a pseudo-terminal whose master is outside the dumped tree, not supported yet")
            }
        }
    }

    func summary(_ file: FileTable.OpenFile) -> String { "terminal (\(role.rawValue)\(index.map { " pts \($0)" } ?? ""))" }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        try context.rebuilder(TerminalRebuilder.self).open(file, self, object: object)
    }

    static func withTermios(_ fd: Int32, role: Role, index: Int32, object: String) throws -> TerminalState {
        var t = cryo_termios()
        _ = try check(cryo_tcgetattr(fd, &t), "tcgetattr", object: object)
        var w = cryo_winsize()
        _ = try check(cryo_get_winsize(fd, &w), "ioctl(TIOCGWINSZ)", object: object)
        return TerminalState(role: role, index: index, termios: Termios(t), rows: w.rows, columns: w.cols, xPixels: w.xpixel, yPixels: w.ypixel)
    }

    /// Reads what waits on each side of the pair. A terminal cannot be read
    /// without consuming, so the bytes are taken (through a slave description
    /// of cryo's own, and the master description set non-blocking for a
    /// moment) and, when the process goes on running, written back.
    mutating func takeQueues(master: FileDescriptor, object: String, putBack: Bool) throws {
        // A locked pty gives no slave: unlocked for the moment it takes to open one.
        if locked == true { _ = try check(cryo_set_ptlock(master.rawValue, 0), "ioctl(TIOCSPTLCK)", object: object) }
        let opened = cryo_open_peer(master.rawValue, O_RDWR | O_NONBLOCK)
        if locked == true { _ = try check(cryo_set_ptlock(master.rawValue, 1), "ioctl(TIOCSPTLCK)", object: object) }
        let slave = try check(opened, "ioctl(TIOCGPTPEER)", object: object)
        let slaveFD = FileDescriptor(rawValue: Int32(slave))
        defer { try? slaveFD.close() }
        toSlave = try drain(slaveFD.rawValue, object: object)
        let flags = fcntl(master.rawValue, F_GETFL)
        _ = fcntl(master.rawValue, F_SETFL, flags | O_NONBLOCK)
        let fromSlave: Data
        do { fromSlave = try drain(master.rawValue, object: object) } catch {
            _ = fcntl(master.rawValue, F_SETFL, flags)
            throw error
        }
        _ = fcntl(master.rawValue, F_SETFL, flags)
        toMaster = fromSlave
        if putBack { try TerminalState.fill(master: master.rawValue, slave: slaveFD.rawValue, toSlave: toSlave, toMaster: toMaster, object: object) }
        if toSlave?.isEmpty == true { toSlave = nil }
        if toMaster?.isEmpty == true { toMaster = nil }
    }

    private func drain(_ fd: Int32, object: String) throws -> Data {
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n > 0 { data.append(contentsOf: buffer[0..<n]); continue }
            if n < 0 && (errno == EAGAIN || errno == EIO) || n == 0 { return data }
            if n < 0 && errno == EINTR { continue }
            throw SyscallError("read", errno: Errno(rawValue: errno), object: "\(object) (pending terminal bytes)")
        }
    }

    /// Writes bytes into both queues of a pair without the line discipline
    /// acting on them (no echo, no input or output processing) and waits
    /// until they are queued, then puts the slave's termios back.
    static func fill(master: Int32, slave: Int32, toSlave: Data?, toMaster: Data?, object: String) throws {
        guard (toSlave?.count ?? 0) > 0 || (toMaster?.count ?? 0) > 0 else { return }
        var saved = cryo_termios()
        _ = try check(cryo_tcgetattr(slave, &saved), "tcgetattr", object: object)
        var plain = saved
        plain.iflag = 0
        plain.oflag &= ~UInt32(OPOST)
        plain.lflag &= ~UInt32(ECHO | ECHONL | ICANON | ISIG | IEXTEN)
        _ = try check(cryo_tcsetattr(slave, &plain), "tcsetattr", object: object)
        defer { var s = saved; _ = cryo_tcsetattr(slave, &s) }
        if let bytes = toSlave, !bytes.isEmpty {
            let before = max(0, cryo_fionread(slave))
            try writeAll(master, bytes, object: object)
            // The pty passes input on through a work queue: wait until the line discipline has it all.
            _ = waitFor { cryo_fionread(slave) >= before + bytes.count }
        }
        if let bytes = toMaster, !bytes.isEmpty {
            try writeAll(slave, bytes, object: object)
            _ = waitFor { cryo_fionread(master) >= bytes.count }
        }
    }

    private static func writeAll(_ fd: Int32, _ data: Data, object: String) throws {
        var offset = 0
        let bytes = [UInt8](data)
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EAGAIN { usleep(1000); continue }
            if n <= 0 { throw SyscallError("write", errno: Errno(rawValue: errno), object: "\(object) (terminal bytes)") }
            offset += n
        }
    }

    private static func waitFor(_ condition: () -> Bool) -> Bool {
        for _ in 0..<2000 {
            if condition() { return true }
            usleep(1000)
        }
        return false
    }

    func apply(to fd: Int32, object: String) throws {
        if var t = termios?.raw { _ = try check(cryo_tcsetattr(fd, &t), "tcsetattr", object: object) }
        if let rows, let columns {
            var w = cryo_winsize(rows: rows, cols: columns, xpixel: xPixels ?? 0, ypixel: yPixels ?? 0)
            _ = try check(cryo_set_winsize(fd, &w), "ioctl(TIOCSWINSZ)", object: object)
        }
    }
}

/// Rebuilds the terminals of the file table in the controller: one new pty
/// pair per pty index of the image.
final class TerminalRebuilder: KindRebuilder {
    let terminals: [(file: FileTable.OpenFile, state: TerminalState)]
    let shellJob: Bool
    private var masters: [Int32: FileDescriptor] = [:]

    init(_ context: OpenContext) {
        terminals = TerminalState.entries(context.files)
        shellJob = context.options.shellJob
    }

    func open(_ f: FileTable.OpenFile, _ state: TerminalState, object: String) throws -> FileDescriptor {
        let flags = Int32(bitPattern: f.flags) & (O_ACCMODE | O_NONBLOCK | O_APPEND | O_ASYNC)
        switch state.role {
        case .controllingTerminal, .currentTerminal:
            guard shellJob else { throw CryoError("\(object): the image holds the terminal of a shell job: restore it with --shell-job") }
            // cryo's controlling terminal: by its own name when cryo's stdin, stdout or stderr
            // is that terminal, else (and for a descriptor of /dev/tty) through /dev/tty.
            var path = "/dev/tty"
            if state.role == .controllingTerminal, let own = TerminalState.ownControllingTerminal() {
                for n in 0...2 {
                    var st = Glibc.stat()
                    if isatty(Int32(n)) != 0, fstat(Int32(n), &st) == 0, UInt64(st.st_rdev) == own,
                       let link = try? Files.readLink("/proc/self/fd/\(n)"), link.hasPrefix("/dev/") {
                        path = link
                        break
                    }
                }
            }
            let fd = Glibc.open(path, flags | O_CLOEXEC | O_NOCTTY)
            if fd < 0 {
                throw SyscallError("open", errno: Errno(rawValue: cryo_errno()), object: "\(object): /dev/tty (restore --shell-job needs cryo to run in a terminal)")
            }
            return FileDescriptor(rawValue: fd)
        case .ptyMaster:
            let master = try pair(index: state.index ?? -1, object: object)
            // The master's own description: the one made with the pair, with its flags.
            _ = fcntl(master.rawValue, F_SETFL, flags & ~O_ACCMODE)
            return try dupDescriptor(master, object: object)
        case .ptySlave:
            let master = try pair(index: state.index ?? -1, object: object)
            let fd = try check(cryo_open_peer(master.rawValue, flags), "ioctl(TIOCGPTPEER)", object: object)
            return FileDescriptor(rawValue: Int32(fd))
        }
    }

    /// The new master for the image's pty `index`, made on first use with
    /// termios, window size, queued bytes and lock of the image.
    private func pair(index: Int32, object: String) throws -> FileDescriptor {
        if let master = masters[index] { return master }
        guard let (masterFile, state) = terminals.first(where: { $0.state.role == .ptyMaster && $0.state.index == index }) else {
            throw CryoError("\(object): pty \(index) has no master in the image")
        }
        let access = Int32(bitPattern: masterFile.flags) & O_ACCMODE
        let raw = Glibc.open("/dev/ptmx", access | O_CLOEXEC | O_NOCTTY)
        if raw < 0 { throw SyscallError("open", errno: Errno(rawValue: cryo_errno()), object: "\(object) /dev/ptmx") }
        let master = FileDescriptor(rawValue: raw)
        masters[index] = master
        _ = try check(cryo_set_ptlock(raw, 0), "ioctl(TIOCSPTLCK)", object: object)
        let slave = try check(cryo_open_peer(raw, O_RDWR | O_NONBLOCK), "ioctl(TIOCGPTPEER)", object: object)
        defer { Glibc.close(Int32(slave)) }
        // Each side has its own termios; the window size is the pair's.
        try state.apply(to: raw, object: object)
        if let slaveState = terminals.first(where: { $0.state.role == .ptySlave && $0.state.index == index })?.state {
            try slaveState.apply(to: Int32(slave), object: object)
        }
        try TerminalState.fill(master: raw, slave: Int32(slave), toSlave: state.toSlave, toMaster: state.toMaster, object: object)
        if state.locked == true { _ = try check(cryo_set_ptlock(raw, 1), "ioctl(TIOCSPTLCK)", object: object) }
        return master
    }

    private func dupDescriptor(_ fd: FileDescriptor, object: String) throws -> FileDescriptor {
        let copy = fcntl(fd.rawValue, F_DUPFD_CLOEXEC, 0)
        if copy < 0 { throw SyscallError("dup", errno: Errno(rawValue: errno), object: object) }
        return FileDescriptor(rawValue: copy)
    }

    func closeAll() {
        for fd in masters.values { try? fd.close() }
        masters = [:]
    }
}
