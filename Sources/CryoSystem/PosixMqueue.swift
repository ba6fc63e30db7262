import Glibc
import SystemPackage

/// POSIX message queues (mq_overview(7)) through their system calls, on
/// descriptors. Names are given as mq_open(3) takes them, with the leading
/// slash; the system call itself takes the name without it.
public enum PosixMqueue {
    static let open: Int32 = 240, unlink: Int32 = 241, timedSend: Int32 = 242, timedReceive: Int32 = 243, getSetAttr: Int32 = 245
    /// statfs f_type of the mqueue file system.
    public static let magic: Int = 0x1980_0202

    public struct Attributes: Sendable {
        public var flags: Int
        public var maxMessages: Int
        public var messageSize: Int
        public var current: Int
    }

    /// Whether `fd` is a message queue descriptor (fstatfs).
    public static func isQueue(_ fd: FileDescriptor) -> Bool {
        // struct statfs (120 bytes on x86_64) begins with f_type; Glibc's module lacks sys/vfs.h.
        var s = [Int](repeating: 0, count: 16)
        let r = s.withUnsafeMutableBytes { Kernel.rawSyscall(138 /* fstatfs */, [fd, $0.baseAddress]) }
        return r == 0 && s[0] == magic
    }

    public static func attributes(_ fd: FileDescriptor, object: String) throws -> Attributes {
        // struct mq_attr: flags, maxmsg, msgsize, curmsgs, then reserved words (Glibc's module lacks mqueue.h).
        var a = [Int](repeating: 0, count: 8)
        try a.withUnsafeMutableBytes { _ = try Kernel.syscall(getSetAttr, fd, 0, $0.baseAddress, name: "mq_getsetattr", object: object) }
        return Attributes(flags: a[0], maxMessages: a[1], messageSize: a[2], current: a[3])
    }

    /// A new queue (O_CREAT|O_EXCL), open read-write and non-blocking.
    public static func create(_ name: String, mode: UInt32, maxMessages: Int, messageSize: Int, object: String) throws -> FileDescriptor {
        var a = [0, maxMessages, messageSize, 0, 0, 0, 0, 0]
        let bare = String(name.drop(while: { $0 == "/" }))
        let fd = try bare.withCString { path in
            try a.withUnsafeMutableBytes { attr in
                try Kernel.syscall(open, path, O_RDWR | O_NONBLOCK | O_CREAT | O_EXCL | O_CLOEXEC, mode, attr.baseAddress,
                                   name: "mq_open", object: "\(object) (queue \(name))")
            }
        }
        return FileDescriptor(rawValue: Int32(fd))
    }

    /// An existing queue, open read-write and non-blocking; nil when there is none of that name.
    public static func openExisting(_ name: String, object: String) throws -> FileDescriptor? {
        let bare = String(name.drop(while: { $0 == "/" }))
        let r = bare.withCString { Kernel.rawSyscall(open, [$0, O_RDWR | O_NONBLOCK | O_CLOEXEC, 0, 0]) }
        if r == -Int(ENOENT) { return nil }
        return FileDescriptor(rawValue: Int32(try check(r, "mq_open", object: "\(object) (queue \(name))")))
    }

    public static func remove(_ name: String, object: String) throws {
        let bare = String(name.drop(while: { $0 == "/" }))
        _ = try bare.withCString { try Kernel.syscall(unlink, $0, name: "mq_unlink", object: "\(object) (queue \(name))") }
    }

    /// The next message (highest priority first), or nil when the queue is empty (the descriptor must be non-blocking).
    public static func receive(_ fd: FileDescriptor, messageSize: Int, object: String) throws -> (priority: UInt32, bytes: [UInt8])? {
        var buffer = [UInt8](repeating: 0, count: max(messageSize, 1))
        var priority: UInt32 = 0
        let r = buffer.withUnsafeMutableBytes { bytes in
            withUnsafeMutableBytes(of: &priority) { Kernel.rawSyscall(timedReceive, [fd, bytes.baseAddress, bytes.count, $0.baseAddress, 0]) }
        }
        if r == -Int(EAGAIN) { return nil }
        let n = try check(r, "mq_timedreceive", object: object)
        return (priority, Array(buffer.prefix(n)))
    }

    public static func send(_ fd: FileDescriptor, _ bytes: [UInt8], priority: UInt32, object: String) throws {
        try bytes.withUnsafeBytes { raw in
            _ = try Kernel.syscall(timedSend, fd, raw.baseAddress, raw.count, priority, 0, name: "mq_timedsend", object: object)
        }
    }
}

extension PosixMqueue {
    /// fchown(2) of a queue made again.
    public static func setOwner(_ fd: FileDescriptor, uid: UInt32, gid: UInt32, object: String) throws {
        try Kernel.syscall(93 /* fchown */, fd, uid, gid, name: "fchown", object: object)
    }
}
