import CCryo
import Glibc
import SystemPackage

/// Terminal and pseudo-terminal calls on descriptors.
public enum Terminals {
    public static func attributes(_ fd: FileDescriptor, object: String) throws -> termios {
        var t = termios()
        _ = try returnOrThrow(tcgetattr(fd.rawValue, &t), "tcgetattr", object: object)
        return t
    }

    public static func setAttributes(_ fd: FileDescriptor, _ attributes: termios, object: String) throws {
        var t = attributes
        _ = try returnOrThrow(tcsetattr(fd.rawValue, TCSANOW, &t), "tcsetattr", object: object)
    }

    public static func windowSize(_ fd: FileDescriptor, object: String) throws -> winsize {
        var w = winsize()
        _ = try returnOrThrow(ioctl(fd.rawValue, UInt(TIOCGWINSZ), &w), "ioctl(TIOCGWINSZ)", object: object)
        return w
    }

    public static func setWindowSize(_ fd: FileDescriptor, _ size: winsize, object: String) throws {
        var w = size
        _ = try returnOrThrow(ioctl(fd.rawValue, UInt(TIOCSWINSZ), &w), "ioctl(TIOCSWINSZ)", object: object)
    }

    /// Whether a pty master's slave is locked (TIOCGPTLCK).
    public static func isLocked(_ master: FileDescriptor, object: String) throws -> Bool {
        var locked: Int32 = 0
        _ = try returnOrThrow(ioctl(master.rawValue, CRYO_TIOCGPTLCK, &locked), "ioctl(TIOCGPTLCK)", object: object)
        return locked != 0
    }

    public static func setLocked(_ master: FileDescriptor, _ locked: Bool, object: String) throws {
        var value: Int32 = locked ? 1 : 0
        _ = try returnOrThrow(ioctl(master.rawValue, CRYO_TIOCSPTLCK, &value), "ioctl(TIOCSPTLCK)", object: object)
    }

    /// Whether a pty master is in packet mode (TIOCGPKT).
    public static func packetMode(_ master: FileDescriptor, object: String) throws -> Bool {
        var on: Int32 = 0
        _ = try returnOrThrow(ioctl(master.rawValue, 0x8004_5438 /* TIOCGPKT */, &on), "ioctl(TIOCGPKT)", object: object)
        return on != 0
    }

    public static func setPacketMode(_ master: FileDescriptor, _ on: Bool, object: String) throws {
        var value: Int32 = on ? 1 : 0
        _ = try returnOrThrow(ioctl(master.rawValue, UInt(TIOCPKT), &value), "ioctl(TIOCPKT)", object: object)
    }

    /// The session whose controlling terminal the pty is (TIOCGSID on its master, which
    /// answers whoever asks), or nil when it is no session's.
    public static func session(_ master: FileDescriptor, object: String) throws -> Int32? {
        var sid: Int32 = 0
        if ioctl(master.rawValue, UInt(TIOCGSID), &sid) == 0 { return sid }
        if Glibc.errno == ENOTTY { return nil }
        throw SyscallError("ioctl(TIOCGSID)", errno: Errno(rawValue: Glibc.errno), object: object)
    }

    /// The foreground process group of a pty (TIOCGPGRP on its master), 0 for none.
    public static func foregroundGroup(_ master: FileDescriptor, object: String) throws -> Int32 {
        var pgrp: Int32 = 0
        _ = try returnOrThrow(ioctl(master.rawValue, UInt(TIOCGPGRP), &pgrp), "ioctl(TIOCGPGRP)", object: object)
        return pgrp
    }

    /// Whether a terminal descriptor was hung up (a pty slave whose master was closed): its
    /// poll says POLLHUP and its terminal calls fail with EIO.
    public static func isHungUp(_ fd: FileDescriptor) -> Bool {
        var entry = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
        guard Glibc.poll(&entry, 1, 0) == 1, entry.revents & Int16(POLLHUP) != 0 else { return false }
        var w = winsize()
        return ioctl(fd.rawValue, UInt(TIOCGWINSZ), &w) < 0 && Glibc.errno == EIO
    }

    /// Whether a pty master's slave side was closed (its poll says POLLHUP: reads fail with EIO).
    public static func slaveSideClosed(_ master: FileDescriptor) -> Bool {
        var entry = pollfd(fd: master.rawValue, events: Int16(POLLIN), revents: 0)
        return Glibc.poll(&entry, 1, 0) == 1 && entry.revents & Int16(POLLHUP) != 0
    }

    /// The slave node of a master (owner, mode) without opening the slave: through an O_PATH descriptor.
    public static func slaveNode(_ master: FileDescriptor, object: String) throws -> stat {
        let node = FileDescriptor(rawValue: try returnOrThrow(ioctl(master.rawValue, CRYO_TIOCGPTPEER, CRYO_O_PATH | O_CLOEXEC),
                                                              "ioctl(TIOCGPTPEER, O_PATH)", object: object))
        defer { try? node.close() }
        var st = stat()
        _ = try returnOrThrow(fstat(node.rawValue, &st), "fstat", object: object)
        return st
    }

    /// Owner and mode of a master's slave node without opening the slave (a first open and its
    /// close would leave the master reading EIO): through an O_PATH descriptor of the node.
    public static func setSlaveNode(_ master: FileDescriptor, uid: UInt32, gid: UInt32, mode: UInt32?, object: String) throws {
        let node = FileDescriptor(rawValue: try returnOrThrow(ioctl(master.rawValue, CRYO_TIOCGPTPEER, CRYO_O_PATH | O_CLOEXEC),
                                                              "ioctl(TIOCGPTPEER, O_PATH)", object: object))
        defer { try? node.close() }
        _ = try returnOrThrow(fchownat(node.rawValue, "", uid, gid, 0x1000 /* AT_EMPTY_PATH */), "fchownat", object: object)
        if let mode { _ = try returnOrThrow(chmod("/proc/self/fd/\(node.rawValue)", mode_t(mode)), "chmod", object: object) }
    }

    /// The pty index of a master (TIOCGPTN), or nil when `fd` is none.
    public static func ptyIndex(_ fd: FileDescriptor) -> Int32? {
        var index: UInt32 = 0
        return ioctl(fd.rawValue, CRYO_TIOCGPTN, &index) < 0 ? nil : Int32(bitPattern: index)
    }

    /// The slave of a master (TIOCGPTPEER), opened with `flags`, close-on-exec and not as controlling terminal.
    public static func openPeer(_ master: FileDescriptor, flags: Int32, object: String) throws -> FileDescriptor {
        FileDescriptor(rawValue: try returnOrThrow(ioctl(master.rawValue, CRYO_TIOCGPTPEER, flags | O_CLOEXEC | O_NOCTTY),
                                                   "ioctl(TIOCGPTPEER)", object: object))
    }
}

extension Terminals {
    /// Reads everything waiting, until the terminal has no more (EAGAIN on a
    /// non-blocking descriptor, EIO once the other side is gone, or end of file).
    public static func drain(_ fd: FileDescriptor, object: String) throws -> [UInt8] {
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd.rawValue, $0.baseAddress, $0.count) }
            if n > 0 { data += buffer[0..<n]; continue }
            if n == 0 || Glibc.errno == EAGAIN || Glibc.errno == EIO { return data }
            if Glibc.errno == EINTR { continue }
            throw SyscallError("read", errno: Errno(rawValue: Glibc.errno), object: object)
        }
    }
}
