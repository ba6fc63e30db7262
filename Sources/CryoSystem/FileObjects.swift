import CCryo
import Glibc
import SystemPackage

/// The result of a libc call that returns -1 and sets errno, or the error naming the call and object.
@inline(__always)
func returnOrThrow<T: BinaryInteger>(_ result: T, _ call: @autoclosure () -> String, object: @autoclosure () -> String?) throws -> T {
    if result < 0 { throw SyscallError(call(), errno: Errno(rawValue: Glibc.errno), object: object()) }
    return result
}

/// The same, calling again while the call is interrupted by a signal.
@inline(__always)
func retryingEINTR<T: BinaryInteger>(_ call: @autoclosure () -> String, object: @autoclosure () -> String?, _ body: () -> T) throws -> T {
    while true {
        let result = body()
        if result >= 0 { return result }
        if Glibc.errno == EINTR { continue }
        throw SyscallError(call(), errno: Errno(rawValue: Glibc.errno), object: object())
    }
}

/// Calls on the kernel objects behind descriptors (duplicates, eventfd,
/// timerfd, epoll, inotify, memfd...), each throwing the call, the object and errno.
public enum FileObjects {
    /// A new descriptor (close-on-exec) for the same open file description.
    public static func duplicate(_ fd: FileDescriptor, object: String) throws -> FileDescriptor {
        FileDescriptor(rawValue: try returnOrThrow(Glibc.fcntl(fd.rawValue, F_DUPFD_CLOEXEC, 0), "fcntl(F_DUPFD_CLOEXEC)", object: object))
    }

    public static func statusFlags(_ fd: FileDescriptor, object: String) throws -> Int32 {
        try returnOrThrow(Glibc.fcntl(fd.rawValue, F_GETFL), "fcntl(F_GETFL)", object: object)
    }

    /// O_DIRECT (a pipe's packet mode) and O_NOATIME of x86_64, which Glibc exports only under _GNU_SOURCE.
    public static let directFlag: Int32 = 0o40000
    public static let noAccessTimeFlag: Int32 = 0o1000000
    /// The status flags F_SETFL sets, O_ASYNC apart: that one is armed once the owner is set (FileOwner).
    public static let settableStatusFlags: Int32 = O_APPEND | O_NONBLOCK | directFlag | noAccessTimeFlag

    public static func setStatusFlags(_ fd: FileDescriptor, _ flags: Int32, object: String) throws {
        _ = try returnOrThrow(Glibc.fcntl(fd.rawValue, F_SETFL, flags), "fcntl(F_SETFL)", object: object)
    }

    public static func setMode(_ fd: FileDescriptor, _ mode: UInt32, object: String) throws {
        _ = try returnOrThrow(Glibc.fchmod(fd.rawValue, mode_t(mode)), "fchmod", object: object)
    }

    /// Bytes waiting to be read (FIONREAD).
    public static func bytesReadable(_ fd: FileDescriptor, object: String) throws -> Int {
        var count: Int32 = 0
        _ = try returnOrThrow(Glibc.ioctl(fd.rawValue, UInt(FIONREAD), &count), "ioctl(FIONREAD)", object: object)
        return Int(count)
    }

    /// An eventfd holding `count`, which a write puts there whole (the initial value is only 32 bits).
    public static func eventfd(count: UInt64, semaphore: Bool, nonBlocking: Bool, object: String) throws -> FileDescriptor {
        let flags = Int32(EFD_CLOEXEC) | (semaphore ? Int32(EFD_SEMAPHORE) : 0) | (nonBlocking ? Int32(EFD_NONBLOCK) : 0)
        let fd = FileDescriptor(rawValue: try returnOrThrow(CCryo.eventfd(0, flags), "eventfd", object: object))
        guard count != 0 else { return fd }
        do {
            var value = count
            _ = try returnOrThrow(Glibc.write(fd.rawValue, &value, 8), "write", object: "\(object) (eventfd count)")
        } catch {
            try? fd.close()
            throw error
        }
        return fd
    }

    public static func signalfd(mask: UInt64, nonBlocking: Bool, object: String) throws -> FileDescriptor {
        var set = sigset_t()
        withUnsafeMutableBytes(of: &set) { $0.storeBytes(of: mask, as: UInt64.self) }
        let flags = Int32(SFD_CLOEXEC) | (nonBlocking ? Int32(SFD_NONBLOCK) : 0)
        return FileDescriptor(rawValue: try returnOrThrow(CCryo.signalfd(-1, &set, flags), "signalfd", object: object))
    }

    /// A relative timerfd with `valueNanoseconds` left, its interval, and `ticks` expirations not yet read.
    public static func timerfd(clock: Int32, nonBlocking: Bool, valueNanoseconds: Int64, intervalNanoseconds: Int64,
                               ticks: UInt64, object: String) throws -> FileDescriptor {
        let flags = Int32(TFD_CLOEXEC) | (nonBlocking ? Int32(TFD_NONBLOCK) : 0)
        let fd = FileDescriptor(rawValue: try returnOrThrow(timerfd_create(clock, flags), "timerfd_create", object: object))
        do {
            // A periodic timer whose expiry already passed shows 0 time left; 0 would disarm it.
            let value = valueNanoseconds == 0 && intervalNanoseconds != 0 ? 1 : valueNanoseconds
            var spec = itimerspec(it_interval: timespec(tv_sec: Int(intervalNanoseconds / 1_000_000_000), tv_nsec: Int(intervalNanoseconds % 1_000_000_000)),
                                  it_value: timespec(tv_sec: Int(value / 1_000_000_000), tv_nsec: Int(value % 1_000_000_000)))
            _ = try returnOrThrow(timerfd_settime(fd.rawValue, 0, &spec, nil), "timerfd_settime", object: object)
            if ticks != 0 {
                // Expirations not yet read: TFD_IOC_SET_TICKS, a checkpoint/restore ioctl.
                var count = ticks
                _ = try returnOrThrow(Glibc.ioctl(fd.rawValue, CRYO_TFD_IOC_SET_TICKS, &count), "ioctl(TFD_IOC_SET_TICKS)", object: object)
            }
        } catch {
            try? fd.close()
            throw error
        }
        return fd
    }

    public static func epoll(object: String) throws -> FileDescriptor {
        FileDescriptor(rawValue: try returnOrThrow(epoll_create1(Int32(EPOLL_CLOEXEC)), "epoll_create1", object: object))
    }

    /// `hugePageSize`: an MFD_HUGETLB memfd of pages of that size (MFD_HUGE_<size> in bits 26-31).
    public static func memfd(name: String, allowSealing: Bool, hugePageSize: UInt64? = nil, object: String) throws -> FileDescriptor {
        let huge = hugePageSize.map { 0x4 /* MFD_HUGETLB */ | (UInt32($0.trailingZeroBitCount) << 26) } ?? 0
        let flags = UInt32(CRYO_MFD_CLOEXEC | (allowSealing ? CRYO_MFD_ALLOW_SEALING : 0)) | huge
        return FileDescriptor(rawValue: try returnOrThrow(memfd_create(name, flags), "memfd_create", object: object))
    }

    public static func seals(_ fd: FileDescriptor, object: String) throws -> Int32 {
        try returnOrThrow(Glibc.fcntl(fd.rawValue, CRYO_F_GET_SEALS), "fcntl(F_GET_SEALS)", object: object)
    }

    public static func addSeals(_ fd: FileDescriptor, _ seals: Int32, object: String) throws {
        _ = try returnOrThrow(Glibc.fcntl(fd.rawValue, CRYO_F_ADD_SEALS, seals), "fcntl(F_ADD_SEALS)", object: object)
    }

    public static func inotify(nonBlocking: Bool, object: String) throws -> FileDescriptor {
        let flags = Int32(IN_CLOEXEC) | (nonBlocking ? Int32(IN_NONBLOCK) : 0)
        return FileDescriptor(rawValue: try returnOrThrow(inotify_init1(flags), "inotify_init1", object: object))
    }

    /// fanotify_init: `flags` as fdinfo shows them, `eventFlags` the events' open flags.
    public static func fanotify(flags: UInt32, eventFlags: UInt32, object: String) throws -> FileDescriptor {
        // Not FAN_CLOEXEC added: the group keeps its init flags, which fdinfo shows. The controller's
        // copy is made close-on-exec after; the task's descriptor gets its own flag.
        let fd = FileDescriptor(rawValue: Int32(try Kernel.syscall(SYS_fanotify_init, flags, eventFlags, name: "fanotify_init", object: object)))
        if Glibc.fcntl(fd.rawValue, F_SETFD, FD_CLOEXEC) < 0 {
            let error = SyscallError("fcntl(F_SETFD, FD_CLOEXEC)", errno: Errno(rawValue: Glibc.errno), object: object)
            try? fd.close()
            throw error
        }
        return fd
    }

    /// fanotify_mark(FAN_MARK_ADD | `flags`) of `mask` on `path` (a file, its mount or its file system, by `flags`).
    public static func addFanotifyMark(_ fd: FileDescriptor, flags: UInt32, mask: UInt64, path: String, object: String) throws {
        let add: UInt32 = 0x1 // FAN_MARK_ADD
        try path.withCString { name in
            try Kernel.syscall(SYS_fanotify_mark, fd, add | flags, mask, Int32(AT_FDCWD), name, name: "fanotify_mark",
                               object: "\(object) \(path)")
        }
    }

    /// Adds a watch that gets watch descriptor `wd` (INOTIFY_IOC_SETNEXTWD first); returns the one given.
    public static func addInotifyWatch(_ fd: FileDescriptor, path: String, mask: UInt32, wd: Int32, object: String) throws -> Int32 {
        _ = try returnOrThrow(Glibc.ioctl(fd.rawValue, CRYO_INOTIFY_IOC_SETNEXTWD, wd), "ioctl(INOTIFY_IOC_SETNEXTWD)", object: object)
        return try returnOrThrow(inotify_add_watch(fd.rawValue, path, mask), "inotify_add_watch", object: "\(object) \(path)")
    }

    /// An O_PATH descriptor of the file a file handle (fdinfo's f_handle) names on the file system of `mount`.
    public static func open(handle: [UInt8], type: Int32, on mount: FileDescriptor, object: String) throws -> FileDescriptor {
        // struct file_handle: handle_bytes (u32), handle_type (i32), then the bytes.
        var buffer = [UInt8](repeating: 0, count: 8 + handle.count)
        buffer.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: UInt32(handle.count), toByteOffset: 0, as: UInt32.self)
            raw.storeBytes(of: type, toByteOffset: 4, as: Int32.self)
            for (i, b) in handle.enumerated() { raw[8 + i] = b }
        }
        let fd = buffer.withUnsafeMutableBytes { open_by_handle_at(mount.rawValue, OpaquePointer($0.baseAddress!), CRYO_O_PATH | O_CLOEXEC) }
        return FileDescriptor(rawValue: try returnOrThrow(fd, "open_by_handle_at", object: object))
    }
}

extension FileObjects {
    /// dev_t as stat reports it, from a major and minor number.
    public static func deviceNumber(major: UInt32, minor: UInt32) -> UInt64 {
        let (major, minor) = (UInt64(major), UInt64(minor))
        return (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12) | ((major & ~0xfff) << 32)
    }

    /// dev_t as stat reports it, from the kernel's own MAJOR << 20 | MINOR (fdinfo, sock_diag).
    public static func deviceNumber(kernelEncoded device: UInt64) -> UInt64 {
        deviceNumber(major: UInt32(truncatingIfNeeded: device >> 20), minor: UInt32(device & 0xfffff))
    }

    /// A new pipe, both ends close-on-exec.
    public static func pipe(nonBlocking: Bool = false, object: String) throws -> (read: FileDescriptor, write: FileDescriptor) {
        var fds: [Int32] = [-1, -1]
        try fds.withUnsafeMutableBufferPointer {
            try Kernel.syscall(SYS_pipe2, $0.baseAddress, O_CLOEXEC | (nonBlocking ? O_NONBLOCK : 0), name: "pipe2", object: object)
        }
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }

    public static func pipeCapacity(_ fd: FileDescriptor, object: String) throws -> Int32 {
        try returnOrThrow(Glibc.fcntl(fd.rawValue, CRYO_F_GETPIPE_SZ), "fcntl(F_GETPIPE_SZ)", object: object)
    }

    public static func setPipeCapacity(_ fd: FileDescriptor, _ bytes: Int32, object: String) throws {
        _ = try returnOrThrow(Glibc.fcntl(fd.rawValue, CRYO_F_SETPIPE_SZ, bytes), "fcntl(F_SETPIPE_SZ)", object: object)
    }

    /// tee() without blocking: the bytes copied, 0 when the source pipe is empty.
    public static func tee(from source: FileDescriptor, to target: FileDescriptor, length: Int, object: String) throws -> Int {
        let copied = Kernel.rawSyscall(SYS_tee, [source, target, length, CRYO_SPLICE_F_NONBLOCK])
        if copied == -Int(EAGAIN) { return 0 }
        return try check(copied, "tee", object: object)
    }

    /// Writes every byte, waiting out EAGAIN on a non-blocking descriptor.
    public static func writeAll<C: Collection>(_ fd: FileDescriptor, _ bytes: C, object: String) throws where C.Element == UInt8 {
        let buffer = [UInt8](bytes)
        var offset = 0
        while offset < buffer.count {
            let n = buffer[offset...].withUnsafeBytes { Glibc.write(fd.rawValue, $0.baseAddress, $0.count) }
            if n < 0 && (Glibc.errno == EINTR || Glibc.errno == EAGAIN) {
                if Glibc.errno == EAGAIN { usleep(1000) }
                continue
            }
            offset += try returnOrThrow(n, "write", object: object)
            if n == 0 { throw SyscallError("write", errno: .ioError, object: object) }
        }
    }

    /// Reads what is there, up to `count` bytes; an empty result at the end or when nothing waits (EAGAIN).
    public static func read(_ fd: FileDescriptor, upTo count: Int, object: String) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd.rawValue, $0.baseAddress, count) }
            if n >= 0 { return Array(buffer[0..<n]) }
            if Glibc.errno == EINTR { continue }
            if Glibc.errno == EAGAIN { return [] }
            throw SyscallError("read", errno: Errno(rawValue: Glibc.errno), object: object)
        }
    }
}

extension FileObjects {
    /// open(2) with O_* flags as an image keeps them (close-on-exec added).
    public static func open(_ path: String, flags: Int32, object: String) throws -> FileDescriptor {
        FileDescriptor(rawValue: try retryingEINTR("open", object: "\(object) \(path)") { Glibc.open(path, flags | O_CLOEXEC) })
    }
}

extension FileObjects {
    /// unlink(2).
    public static func remove(_ path: String, object: String) throws {
        _ = try returnOrThrow(unlink(path), "unlink", object: object)
    }

    /// rename(2): `to` is replaced if it exists.
    public static func rename(_ from: String, to: String, object: String) throws {
        _ = try returnOrThrow(Glibc.rename(from, to), "rename", object: "\(object) (\(from) to \(to))")
    }

    /// chmod, then lchown (a socket file left as it was found).
    public static func setModeAndOwner(_ path: String, mode: UInt32, uid: UInt32, gid: UInt32, object: String) throws {
        _ = try returnOrThrow(chmod(path, mode_t(mode)), "chmod", object: object)
        _ = try returnOrThrow(lchown(path, uid, gid), "lchown", object: object)
    }
}
