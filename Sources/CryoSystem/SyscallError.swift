import CCryo
import Glibc
import SystemPackage

/// A failed system call: which call, on which pid or object, and the errno.
/// Its description is the one-line message users see.
public struct SyscallError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let errno: Errno
    public let pid: pid_t?
    public let object: String?

    public init(_ call: String, errno: Errno, pid: pid_t? = nil, object: String? = nil) {
        self.call = call
        self.errno = errno
        self.pid = pid
        self.object = object
    }

    public var description: String {
        var where_ = ""
        if let pid { where_ += " pid \(pid)" }
        if let object { where_ += " \(object)" }
        return "\(call)\(where_): \(errno.name) (\(errno.description))"
    }
}

extension Errno {
    /// The symbolic name, which people search for more often than the text.
    public var name: String {
        return errnoNames[rawValue] ?? "errno \(rawValue)"
    }
}

private let errnoNames: [Int32: String] = [
            EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EINTR: "EINTR", EIO: "EIO", ENXIO: "ENXIO",
            E2BIG: "E2BIG", EBADF: "EBADF", ECHILD: "ECHILD", EAGAIN: "EAGAIN", ENOMEM: "ENOMEM",
            EACCES: "EACCES", EFAULT: "EFAULT", EBUSY: "EBUSY", EEXIST: "EEXIST", ENODEV: "ENODEV",
            ENOTDIR: "ENOTDIR", EISDIR: "EISDIR", EINVAL: "EINVAL", ENFILE: "ENFILE", EMFILE: "EMFILE",
            ENOTTY: "ENOTTY", ENOSPC: "ENOSPC", ESPIPE: "ESPIPE", EROFS: "EROFS", EPIPE: "EPIPE",
            ERANGE: "ERANGE", ENOSYS: "ENOSYS", ENAMETOOLONG: "ENAMETOOLONG", ELOOP: "ELOOP",
            EOPNOTSUPP: "EOPNOTSUPP", ECONNREFUSED: "ECONNREFUSED", EPROTO: "EPROTO", EOVERFLOW: "EOVERFLOW",
            EDQUOT: "EDQUOT", EFBIG: "EFBIG",
]

/// Turns a raw C-layer result (>= 0 or -errno) into a value or a typed error.
@inlinable
public func check(_ result: Int, _ call: @autoclosure () -> String, pid: pid_t? = nil,
                  object: @autoclosure () -> String? = nil) throws -> Int {
    if result < 0 {
        throw SyscallError(call(), errno: Errno(rawValue: Int32(-result)), pid: pid, object: object())
    }
    return result
}

/// The same for libc calls that return -1 and set errno.
@inlinable
public func checkLibc(_ result: Int, _ call: @autoclosure () -> String, pid: pid_t? = nil,
                      object: @autoclosure () -> String? = nil) throws -> Int {
    if result == -1 {
        throw SyscallError(call(), errno: Errno(rawValue: Glibc.errno), pid: pid, object: object())
    }
    return result
}
