import CCryo
import Glibc
import SystemPackage

public enum Descriptors {
    /// Closes every descriptor from `first` up (close_range).
    public static func closeAll(from first: Int32) throws {
        try Kernel.syscall(SYS_close_range, UInt32(first), UInt32.max, 0, name: "close_range", object: "fd \(first) and up")
    }

    /// An unnamed regular file in `folder` (O_TMPFILE), for content that must
    /// outlive its name; `flags` add to O_TMPFILE | O_CLOEXEC.
    public static func openTemporaryFile(in folder: String, flags: Int32, mode: mode_t,
                                         object: @autoclosure () -> String? = nil) throws -> FileDescriptor {
        let fd = try folder.withCString {
            try Kernel.syscall(SYS_openat, AT_FDCWD, $0, CRYO_O_TMPFILE | O_CLOEXEC | flags, mode, name: "open(O_TMPFILE)",
                               object: object() ?? folder, retryingInterrupts: true)
        }
        return FileDescriptor(rawValue: Int32(fd))
    }
}

extension Sockets {
    /// accept4 with close-on-exec, leaving the new socket blocking; EINTR retried.
    public static func acceptBlocking(_ listening: FileDescriptor, object: @autoclosure () -> String?) throws -> FileDescriptor {
        FileDescriptor(rawValue: Int32(try Kernel.syscall(SYS_accept4, listening, 0, 0, SOCK_CLOEXEC.rawValue, name: "accept4",
                                                          object: object(), retryingInterrupts: true)))
    }

    /// The uid of a connected unix socket's peer (SO_PEERCRED).
    public static func peerUid(_ socket: FileDescriptor) throws -> uid_t {
        var credentials: [UInt32] = [0, 0, 0] // struct ucred: pid, uid, gid
        var length = socklen_t(12)
        try credentials.withUnsafeMutableBufferPointer { c in
            try withUnsafeMutablePointer(to: &length) {
                try Kernel.syscall(SYS_getsockopt, socket, SOL_SOCKET, CRYO_SO_PEERCRED, c.baseAddress, $0,
                                   name: "getsockopt(SO_PEERCRED)", object: "fd \(socket.rawValue)")
            }
        }
        return credentials[1]
    }
}
