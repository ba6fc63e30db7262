import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// A terminal descriptor. Three roles:
/// - `controllingTerminal`: the terminal cryo itself ran in at dump (a
///   `--shell-job`); restore hands over the terminal cryo runs in then.
/// - `ptyMaster` / `ptySlave`: both ends of a pseudo-terminal made inside the
///   tree; restore makes a new pair with the same index when it is free (else
///   another, saying so) and puts back
///   termios, window size, lock and the bytes waiting on either side.
/// - `currentTerminal`: `/dev/tty`: of a shell job (no index), reopened by cryo at restore;
///   of a session whose terminal is a pty of the tree (its index), opened by the session's
///   leader at restore once it has the pty again (ControllingTerminals.swift).
public struct TerminalState: DescriptorKind {
    static let name = "terminal"
    public enum Role: String, Codable, Sendable { case controllingTerminal, currentTerminal, ptyMaster, ptySlave }
    public var role: Role
    /// The pty's index at dump (/dev/pts/N): pairs master and slaves; kept at restore when free.
    public var index: Int32?
    public var termios: Termios?
    public var rows: UInt16?, columns: UInt16?, xPixels: UInt16?, yPixels: UInt16?
    public var locked: Bool?
    /// Slave only: its master was closed, so it is hung up (reads end of file, writes and terminal
    /// calls fail with EIO). Its index may be another pty's now; restore makes it a pair of its own.
    public var hungUp: Bool? = nil
    /// Master only: no slave was ever opened (it showed no hang-up until dump's own slave
    /// closed): restore opens none either, so reads wait instead of failing with EIO.
    public var slaveNeverOpened: Bool? = nil
    /// Master only: packet mode (TIOCPKT).
    public var packetMode: Bool? = nil
    /// Master only: the slave's /dev/pts node: owner, group and permission bits.
    public var slaveOwner: [UInt32]? = nil
    public var slaveMode: UInt32? = nil
    /// Master only: bytes written into the master not yet read from the slave, and the reverse.
    public var toSlave: Data?
    public var toMaster: Data?

    public struct Termios: Codable, Sendable {
        public var iflag, oflag, cflag, lflag: UInt32
        public var line: UInt8
        public var cc: [UInt8]
        public var ispeed, ospeed: UInt32

        init(_ t: Glibc.termios) {
            var t = t
            iflag = t.c_iflag; oflag = t.c_oflag; cflag = t.c_cflag; lflag = t.c_lflag; line = t.c_line
            cc = withUnsafeBytes(of: t.c_cc) { Array($0) }
            ispeed = cfgetispeed(&t); ospeed = cfgetospeed(&t)
        }
        var raw: Glibc.termios {
            var t = Glibc.termios()
            t.c_iflag = iflag; t.c_oflag = oflag; t.c_cflag = cflag; t.c_lflag = lflag; t.c_line = line
            withUnsafeMutableBytes(of: &t.c_cc) { dst in for (i, b) in cc.prefix(dst.count).enumerated() { dst[i] = b } }
            cfsetispeed(&t, ispeed); cfsetospeed(&t, ospeed)
            return t
        }
    }

    static let slaveMajors: ClosedRange<UInt32> = 136...143
    static let ptmxDevice = FileObjects.deviceNumber(major: 5, minor: 2)

    /// The terminal device cryo's own session has (tty_nr of /proc/self/stat), or nil.
    static func ownControllingTerminal() -> UInt64? {
        guard let text = try? Files.readString("/proc/self/stat"), let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 4, let tty = UInt64(fields[4]), tty != 0 else { return nil }  // state ppid pgrp session tty_nr
        return tty
    }

    /// nil for a character device that is no terminal cryo knows (CharacterDevice comes next).
    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> TerminalState? {
        guard let state = try dumpHeld(p, into: table) else { return nil }
        if let found = p.inFlight {
            // A terminal's state belongs to the session holding it; a refused dump puts any queued bytes back.
            throw CryoError("\(found) is a terminal; in flight (SCM_RIGHTS) it cannot be dumped, not supported")
        }
        return state
    }

    private static func dumpHeld(_ p: DescriptorProbe, into table: FileTableBuilder) throws -> TerminalState? {
        guard p.stat.st_mode & S_IFMT == S_IFCHR else { return nil }
        let (shellJob, leaveRunning) = (table.options.shellJob, table.options.leaveRunning)
        let rdev = UInt64(p.stat.st_rdev)
        let major = UInt32((rdev >> 8) & 0xfff), minor = UInt32((rdev & 0xff) | ((rdev >> 12) & ~0xff))
        if p.link == "/dev/tty" {
            // Whatever terminal it was opened on: the holder's controlling terminal now, as the kernel gives no other way to tell.
            let holder = (try? ProcStat(pid: p.pid).field(7)) ?? 0
            if let index = ControllingTerminals.ptyIndex(ttyNr: holder), table.sessionTerminals.contains(where: { $0.index == index }) {
                return TerminalState(role: .currentTerminal, index: index)
            }
            if holder == 0 || p.inFlight != nil {
                throw CryoError("\(p.object): /dev/tty held by a process without a controlling terminal (it gave it up since); not supported")
            }
            guard shellJob, holder == ownControllingTerminal() else {
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
        if let ptn = Terminals.ptyIndex(p.handle), rdev == ptmxDevice || p.link.hasSuffix("/ptmx") {
            // Read before: the terminal of a session of the tree comes back as such; of another session, it would not.
            if let session = try Terminals.session(p.handle, object: p.object), !table.sessionTerminals.contains(where: { $0.index == ptn }) {
                throw CryoError("\(p.object): /dev/pts/\(ptn) is the controlling terminal of session \(session), which the dumped tree does not lead; not supported")
            }
            var state = try withTermios(p.handle, role: .ptyMaster, index: ptn, object: p.object)
            state.locked = try Terminals.isLocked(p.handle, object: p.object)
            // Off while the queues are read: in packet mode each read starts with a status byte.
            let packet = try Terminals.packetMode(p.handle, object: p.object)
            if packet { try Terminals.setPacketMode(p.handle, false, object: p.object) }
            // A slave opened and closed by cryo where none was ever opened would leave the master reading
            // EIO: a tree that goes on running gets none (what waits for such a slave is not read then).
            let closedBefore = Terminals.slaveSideClosed(p.handle)
            let held = table.sessionTerminals.contains { $0.index == ptn } || treeHoldsSlave(index: ptn, pids: table.treePids)
            let openSlave = closedBefore || held || !leaveRunning
            let taken = Result { try state.takeQueues(master: p.handle, object: p.object, putBack: leaveRunning, openSlave: openSlave) }
            if !closedBefore && (!openSlave || Terminals.slaveSideClosed(p.handle)) { state.slaveNeverOpened = true }
            if packet { try Terminals.setPacketMode(p.handle, true, object: p.object) }
            try taken.get()
            state.packetMode = packet ? true : nil
            if !leaveRunning && (state.toSlave != nil || state.toMaster != nil) {
                // A dump refused later leaves the tree as it was: the bytes go back in.
                let master = try FileObjects.duplicate(p.handle, object: p.object)
                let (toSlave, toMaster, locked, object) = (state.toSlave, state.toMaster, state.locked == true, p.object)
                table.onFailure {
                    defer { try? master.close() }
                    try? TerminalState.putBack(master: master, locked: locked, packet: packet, toSlave: toSlave, toMaster: toMaster, object: object)
                }
            }
            return state
        }
        if slaveMajors.contains(major) && p.link.hasPrefix("/dev/pts/") {
            if Terminals.isHungUp(p.handle) {
                return TerminalState(role: .ptySlave, index: Int32((major - 136) * 256 + minor), hungUp: true)
            }
            return try withTermios(p.handle, role: .ptySlave, index: Int32((major - 136) * 256 + minor), object: p.object)
        }
        return nil  // not a terminal cryo knows
    }

    func recordedPath(_ p: DescriptorProbe) -> String? { p.link }

    /// A pty slave needs its master: a new pair is made from the master's state.
    static func finishDump(_ table: FileTableBuilder) throws {
        let terminals = entries(table.table.files)
        for (f, slave) in terminals where slave.role == .ptySlave && slave.hungUp != true {
            guard terminals.contains(where: { $0.state.role == .ptyMaster && $0.state.index == slave.index }) else {
                throw CryoError("file \(f.path ?? "") (pty \(slave.index ?? -1)): the slave of a pseudo-terminal whose master is outside the dumped tree, not supported yet")
            }
        }
    }

    func summary(_ file: FileTable.OpenFile) -> String {
        "terminal (\(role.rawValue)\(index.map { " pts \($0)" } ?? "")\(hungUp == true ? ", hung up" : ""))"
    }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        try context.rebuilder(TerminalRebuilder.self).open(file, self, object: object)
    }

    static func withTermios(_ fd: FileDescriptor, role: Role, index: Int32, object: String) throws -> TerminalState {
        let t = try Terminals.attributes(fd, object: object)
        let w = try Terminals.windowSize(fd, object: object)
        return TerminalState(role: role, index: index, termios: Termios(t), rows: w.ws_row, columns: w.ws_col, xPixels: w.ws_xpixel, yPixels: w.ws_ypixel)
    }

    /// Reads what waits on each side of the pair. A terminal cannot be read
    /// without consuming, so the bytes are taken (through a slave description
    /// of cryo's own, and the master description set non-blocking for a
    /// moment) and, when the process goes on running, written back.
    /// `openSlave` false: no slave is opened unless bytes from one wait in the master (then one
    /// is open elsewhere), and what waits for the slave is not read.
    mutating func takeQueues(master: FileDescriptor, object: String, putBack: Bool, openSlave: Bool = true) throws {
        func open() throws -> FileDescriptor {
            // A locked pty gives no slave: unlocked for the moment it takes to open one.
            if locked == true { try Terminals.setLocked(master, false, object: object) }
            let opened = Result { try Terminals.openPeer(master, flags: O_RDWR | O_NONBLOCK, object: object) }
            if locked == true { try Terminals.setLocked(master, true, object: object) }
            return try opened.get()
        }
        var slave = openSlave ? try open() : nil
        defer { try? slave?.close() }
        let node = try slave.map { try Files.stat($0, object: object) } ?? Terminals.slaveNode(master, object: object)
        slaveOwner = [node.st_uid, node.st_gid]
        slaveMode = UInt32(node.st_mode) & 0o7777
        let what = "\(object) (pending terminal bytes)"
        toSlave = try slave.map { Data(try Terminals.drain($0, object: what)) }
        let flags = try FileObjects.statusFlags(master, object: object)
        try FileObjects.setStatusFlags(master, flags | O_NONBLOCK, object: object)
        let fromSlave = Result { try Terminals.drain(master, object: what) }
        try FileObjects.setStatusFlags(master, flags, object: object)
        toMaster = Data(try fromSlave.get())
        if putBack && slave == nil && toMaster?.isEmpty == false { slave = try open() }
        if putBack, let slave { try TerminalState.fill(master: master, slave: slave, toSlave: toSlave, toMaster: toMaster, object: object) }
        if toSlave?.isEmpty == true { toSlave = nil }
        if toMaster?.isEmpty == true { toMaster = nil }
    }

    /// Whether a process of the tree holds a slave of pty `index` open (a descriptor of /dev/pts/N).
    static func treeHoldsSlave(index: Int32, pids: [pid_t]) -> Bool {
        for pid in pids {
            guard let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd") else { continue }
            if fds.contains(where: { (try? Files.readLink("/proc/\(pid)/fd/\($0)")) == "/dev/pts/\(index)" }) { return true }
        }
        return false
    }

    /// Puts taken bytes back into a pair of the frozen tree (through a slave of cryo's own).
    static func putBack(master: FileDescriptor, locked: Bool, packet: Bool, toSlave: Data?, toMaster: Data?, object: String) throws {
        if locked { try Terminals.setLocked(master, false, object: object) }
        let opened = Result { try Terminals.openPeer(master, flags: O_RDWR | O_NONBLOCK, object: object) }
        if locked { try Terminals.setLocked(master, true, object: object) }
        let slave = try opened.get()
        defer { try? slave.close() }
        if packet { try Terminals.setPacketMode(master, false, object: object) }
        defer { if packet { try? Terminals.setPacketMode(master, true, object: object) } }
        try fill(master: master, slave: slave, toSlave: toSlave, toMaster: toMaster, object: object)
    }

    /// Writes bytes into both queues of a pair without the line discipline
    /// acting on them (no echo, no input or output processing) and waits
    /// until they are queued, then puts the slave's termios back.
    static func fill(master: FileDescriptor, slave: FileDescriptor, toSlave: Data?, toMaster: Data?, object: String) throws {
        guard (toSlave?.count ?? 0) > 0 || (toMaster?.count ?? 0) > 0 else { return }
        let saved = try Terminals.attributes(slave, object: object)
        var plain = saved
        plain.c_iflag = 0
        plain.c_oflag &= ~UInt32(OPOST)
        plain.c_lflag &= ~UInt32(ECHO | ECHONL | ICANON | ISIG | IEXTEN)
        try Terminals.setAttributes(slave, plain, object: object)
        defer { try? Terminals.setAttributes(slave, saved, object: object) }
        func queued(_ fd: FileDescriptor) -> Int { (try? FileObjects.bytesReadable(fd, object: object)) ?? 0 }
        let what = "\(object) (terminal bytes)"
        if let bytes = toSlave, !bytes.isEmpty {
            let before = queued(slave)
            try FileObjects.writeAll(master, bytes, object: what)
            // The pty passes input on through a work queue: wait until the line discipline has it all.
            _ = waitFor { queued(slave) >= before + bytes.count }
        }
        if let bytes = toMaster, !bytes.isEmpty {
            try FileObjects.writeAll(slave, bytes, object: what)
            _ = waitFor { queued(master) >= bytes.count }
        }
    }

    private static func waitFor(_ condition: () -> Bool) -> Bool {
        for _ in 0..<2000 {
            if condition() { return true }
            usleep(1000)
        }
        return false
    }

    func apply(to fd: FileDescriptor, object: String) throws {
        if let t = termios?.raw { try Terminals.setAttributes(fd, t, object: object) }
        if let rows, let columns {
            try Terminals.setWindowSize(fd, winsize(ws_row: rows, ws_col: columns, ws_xpixel: xPixels ?? 0, ws_ypixel: yPixels ?? 0), object: object)
        }
    }
}

/// Rebuilds the terminals of the file table in the controller: one new pty
/// pair per pty index of the image.
final class TerminalRebuilder: KindRebuilder {
    let terminals: [(file: FileTable.OpenFile, state: TerminalState)]
    let shellJob: Bool
    private var masters: [Int32: FileDescriptor] = [:]
    private var slaves: [FileDescriptor] = []

    init(_ context: OpenContext) {
        terminals = TerminalState.entries(context.files)
        shellJob = context.options.shellJob
    }

    func open(_ f: FileTable.OpenFile, _ state: TerminalState, object: String) throws -> FileDescriptor {
        let flags = Int32(bitPattern: f.flags) & (O_ACCMODE | O_NONBLOCK | O_APPEND | O_ASYNC)
        switch state.role {
        case .currentTerminal where state.index != nil:
            // A stand-in until the session's leader opens /dev/tty on the pty (ControllingTerminals.swift).
            return try Terminals.openPeer(try pair(index: state.index!, object: object), flags: flags, object: object)
        case .controllingTerminal, .currentTerminal:
            guard shellJob else { throw CryoError("\(object): the image holds the terminal of a shell job: restore it with --shell-job") }
            // cryo's controlling terminal: by its own name when cryo's stdin, stdout or stderr
            // is that terminal, else (and for a descriptor of /dev/tty) through /dev/tty.
            var path = "/dev/tty"
            if state.role == .controllingTerminal, let own = TerminalState.ownControllingTerminal() {
                for n in [FileDescriptor.standardInput, .standardOutput, .standardError] {
                    if isatty(n.rawValue) != 0, let st = try? Files.stat(n, object: "cryo's fd \(n.rawValue)"), UInt64(st.st_rdev) == own,
                       let link = try? Files.readLink("/proc/self/fd/\(n.rawValue)"), link.hasPrefix("/dev/") {
                        path = link
                        break
                    }
                }
            }
            do { return try FileObjects.open(path, flags: flags | O_NOCTTY, object: object) } catch {
                throw CryoError("\(error) (restore --shell-job needs cryo to run in a terminal)")
            }
        case .ptyMaster:
            let master = try pair(index: state.index ?? -1, object: object)
            // The master's own description: the one made with the pair, with its flags.
            try FileObjects.setStatusFlags(master, flags & ~O_ACCMODE, object: object)
            return try FileObjects.duplicate(master, object: object)
        case .ptySlave where state.hungUp == true:
            // A pair of its own whose master goes at once: the kernel hangs the slave up (vhangup).
            let master = try FileObjects.open("/dev/ptmx", flags: O_RDWR | O_NOCTTY, object: object)
            defer { try? master.close() }
            try Terminals.setLocked(master, false, object: object)
            return try Terminals.openPeer(master, flags: flags, object: object)
        case .ptySlave:
            let master = try pair(index: state.index ?? -1, object: object)
            return try Terminals.openPeer(master, flags: flags, object: object)
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
        let master = try openMaster(index: index, flags: access | O_NOCTTY, object: object)
        masters[index] = master
        // A slave opened and closed here would leave the master reading EIO: when the tree never
        // opened one and nothing waits to be written through one, none is opened.
        let slaveUsed = terminals.contains {
            $0.state.index == index && (($0.state.role == .ptySlave && $0.state.hungUp != true) || $0.state.role == .currentTerminal)
        }
        if state.slaveNeverOpened == true && !slaveUsed && (state.toSlave?.isEmpty ?? true) && (state.toMaster?.isEmpty ?? true) {
            if let owner = state.slaveOwner, owner.count == 2 {
                try Terminals.setSlaveNode(master, uid: owner[0], gid: owner[1], mode: state.slaveMode.map { $0 & 0o7777 }, object: object)
            }
            // The master's termios and window size are the slave's (the kernel applies them to its peer).
            try state.apply(to: master, object: object)
            if state.locked != true { try Terminals.setLocked(master, false, object: object) }
            if state.packetMode == true { try Terminals.setPacketMode(master, true, object: object) }
            return master
        }
        try Terminals.setLocked(master, false, object: object)
        let slave = try Terminals.openPeer(master, flags: O_RDWR | O_NONBLOCK, object: object)
        defer { try? slave.close() }
        if let owner = state.slaveOwner, owner.count == 2 { try FileFacts.setOwner(slave, uid: owner[0], gid: owner[1], object: object) }
        if let mode = state.slaveMode { try FileObjects.setMode(slave, mode & 0o7777, object: object) }
        // Each side has its own termios; the window size is the pair's.
        try state.apply(to: master, object: object)
        if let slaveState = terminals.first(where: { $0.state.role == .ptySlave && $0.state.index == index && $0.state.hungUp != true })?.state {
            try slaveState.apply(to: slave, object: object)
        }
        try TerminalState.fill(master: master, slave: slave, toSlave: state.toSlave, toMaster: state.toMaster, object: object)
        if state.locked == true { try Terminals.setLocked(master, true, object: object) }
        if state.packetMode == true { try Terminals.setPacketMode(master, true, object: object) }
        return master
    }

    /// The kernel gives a new master the lowest free index and takes no wish: masters are opened
    /// (and the extra ones closed) until the image's index comes up. When it is taken, the pair
    /// gets another, and restore says so on stderr.
    private func openMaster(index: Int32, flags: Int32, object: String) throws -> FileDescriptor {
        var extra: [FileDescriptor] = []
        defer { for fd in extra { try? fd.close() } }
        while true {
            let master = try FileObjects.open("/dev/ptmx", flags: flags, object: object)
            let got = Terminals.ptyIndex(master) ?? -1
            if got == index || index < 0 { return master }
            if got > index || extra.count > 4096 {
                let line = Array("cryo: \(object): /dev/pts/\(index) is taken; the pty is restored as /dev/pts/\(got)\n".utf8)
                _ = try? FileDescriptor.standardError.writeAll(line)
                return master
            }
            extra.append(master)
        }
    }

    /// A slave of the image's pty `index` that cryo holds until the descriptions are finished.
    func slave(index: Int32, object: String) throws -> FileDescriptor {
        let slave = try Terminals.openPeer(try pair(index: index, object: object), flags: O_RDWR | O_NONBLOCK, object: object)
        slaves.append(slave)
        return slave
    }

    func closeAll() {
        for fd in masters.values { try? fd.close() }
        masters = [:]
        for fd in slaves { try? fd.close() }
        slaves = []
    }
}
