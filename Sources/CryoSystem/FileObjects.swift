import CCryo
import Glibc
import SystemPackage

/// Calls on the kernel objects behind descriptors (duplicates, eventfd,
/// timerfd, epoll, inotify, memfd...), each throwing the call, the object and errno.
public enum FileObjects {
    /// A new descriptor (close-on-exec) for the same open file description.
    public static func duplicate(_ fd: FileDescriptor, object: String) throws -> FileDescriptor {
        let copy = Glibc.fcntl(fd.rawValue, F_DUPFD_CLOEXEC, 0)
        if copy < 0 { throw SyscallError("fcntl(F_DUPFD_CLOEXEC)", errno: Errno(rawValue: Glibc.errno), object: object) }
        return FileDescriptor(rawValue: copy)
    }
}
