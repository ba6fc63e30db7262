import CCryo
import Glibc
import SystemPackage

/// A userfaultfd used only to write-protect memory in async mode: the kernel
/// lifts the protection of a page at its first write, and PAGEMAP_SCAN then
/// reports it as written. Its ioctls act on the mm it was created in.
public struct Userfaultfd: Sendable {
    public let fd: FileDescriptor
    public let pid: pid_t
    public init(fd: FileDescriptor, pid: pid_t) {
        self.fd = fd
        self.pid = pid
    }

    /// UFFDIO_API with WP_ASYNC. Not WP_UNPOPULATED: its markers on never-touched
    /// pages make PAGEMAP_SCAN report them as swapped, so they would look like
    /// memory to save (and reading them would populate them).
    public func enableAsyncWriteProtect() throws {
        let offered = try Userfaultfd.handshake(fd, features: CRYO_UFFD_FEATURE_WP_ASYNC, name: "ioctl(UFFDIO_API, WP_ASYNC)", pid: pid)
        if offered & CRYO_UFFD_FEATURE_WP_ASYNC == 0 {
            throw SyscallError("ioctl(UFFDIO_API, WP_ASYNC)", errno: .notSupported, pid: pid, object: "userfaultfd")
        }
    }

    public func registerWriteProtect(start: UInt64, length: UInt64) throws {
        var request = uffdio_register(range: uffdio_range(start: start, len: length), mode: UInt64(UFFDIO_REGISTER_MODE_WP), ioctls: 0)
        try ioctl(CRYO_UFFDIO_REGISTER, &request, name: "ioctl(UFFDIO_REGISTER, MODE_WP)", address: start)
    }

    public func writeProtect(start: UInt64, length: UInt64) throws {
        var request = uffdio_writeprotect(range: uffdio_range(start: start, len: length), mode: UInt64(UFFDIO_WRITEPROTECT_MODE_WP))
        try ioctl(CRYO_UFFDIO_WRITEPROTECT, &request, name: "ioctl(UFFDIO_WRITEPROTECT)", address: start)
    }

    private func ioctl<T>(_ request: UInt, _ argument: inout T, name: String, address: UInt64) throws {
        try withUnsafeMutablePointer(to: &argument) {
            try Kernel.syscall(SYS_ioctl, fd, request, $0, name: name, pid: pid, object: "address 0x\(String(address, radix: 16))")
        }
    }

    /// UFFDIO_API asking for `features`: the features the kernel offers.
    static func handshake(_ fd: FileDescriptor, features: UInt64, name: String, pid: pid_t? = nil) throws -> UInt64 {
        var api = uffdio_api(api: UInt64(UFFD_API), features: features, ioctls: 0)
        try withUnsafeMutablePointer(to: &api) {
            try Kernel.syscall(SYS_ioctl, fd, CRYO_UFFDIO_API, $0, name: name, pid: pid, object: "userfaultfd")
        }
        return api.features
    }

    /// A userfaultfd of this process (close-on-exec, non-blocking), with `extraFlags` such as UFFD_USER_MODE_ONLY.
    static func create(extraFlags: Int32 = 0) throws -> FileDescriptor {
        FileDescriptor(rawValue: Int32(try Kernel.syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | extraFlags, name: "userfaultfd")))
    }

    /// Whether userfaultfd offers write-protect in async mode (UFFD_FEATURE_WP_ASYNC, 6.7); throws when userfaultfd itself fails.
    public static func offersAsyncWriteProtect() throws -> Bool {
        let fd = try create(extraFlags: CRYO_UFFD_USER_MODE_ONLY)
        defer { try? fd.close() }
        // Asking for no features reports every feature the kernel has.
        let offered = try handshake(fd, features: 0, name: "ioctl(UFFDIO_API)")
        return offered & CRYO_UFFD_FEATURE_WP_ASYNC != 0 && offered & UInt64(UFFD_FEATURE_PAGEFAULT_FLAG_WP) != 0
    }
}

public enum FileRanges {
    /// Copies `length` bytes between two files inside the kernel (copy_file_range, pread/pwrite where it is refused).
    public static func copy(from source: FileDescriptor, at sourceOffset: Int64, to target: FileDescriptor, at targetOffset: Int64,
                            length: Int64, object: String) throws {
        var done: Int64 = 0
        var buffer: UnsafeMutableRawBufferPointer? = nil
        defer { buffer?.deallocate() }
        while done < length {
            var offsets = [sourceOffset + done, targetOffset + done]
            let n = offsets.withUnsafeMutableBufferPointer {
                Kernel.rawSyscall(SYS_copy_file_range, [source, $0.baseAddress, target, $0.baseAddress! + 1, length - done, 0])
            }
            if n > 0 { done += Int64(n); continue }
            if n == 0 { throw SyscallError("copy_file_range", errno: .ioError, object: "\(object) (source ends early)") }
            guard n == -Int(EXDEV) || n == -Int(EINVAL) || n == -Int(EOPNOTSUPP) else {
                throw SyscallError("copy_file_range", errno: Errno(rawValue: Int32(-n)), object: object)
            }
            if buffer == nil { buffer = .allocate(byteCount: 1 << 20, alignment: 4096) }
            let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer![0..<Int(min(Int64(1 << 20), length - done))])
            let got = try source.read(fromAbsoluteOffset: sourceOffset + done, into: chunk)
            if got != chunk.count { throw SyscallError("pread", errno: .ioError, object: "\(object) (source ends early)") }
            _ = try target.write(toAbsoluteOffset: targetOffset + done, UnsafeRawBufferPointer(chunk))
            done += Int64(got)
        }
    }

    /// Refuses (ENOSPC) when the file system of `fd` has less than `bytes` free
    /// (plus 1% slack) for an unprivileged writer.
    public static func requireSpace(_ fd: FileDescriptor, bytes: UInt64, object: String) throws {
        var st = statvfs()
        _ = try checkLibc(Int(fstatvfs(fd.rawValue, &st)), "fstatvfs", object: object)
        let free = UInt64(st.f_bavail) * UInt64(st.f_frsize)
        if free < bytes + bytes / 100 {
            throw SyscallError("fstatvfs", errno: .noSpace, object: "\(object): \(bytes) bytes needed, \(free) free")
        }
    }
}

// MARK: - Lazy restore (missing-page faults)

extension Userfaultfd {
    /// The result of an ioctl that fills pages: how many bytes went in, and the errno that stopped it.
    public struct Fill: Sendable {
        public let bytes: UInt64
        public let errno: Errno?
    }

    /// Whether this process may create a userfaultfd with `features`; the error names the refusing call.
    public static func probe(features: UInt64) throws {
        let fd = try create()
        defer { try? fd.close() }
        _ = try handshake(fd, features: features, name: "ioctl(UFFDIO_API)")
    }

    /// Messages waiting now (none: empty).
    /// One message read from a userfaultfd, decoded.
    public struct Event: Sendable {
        public var event: UInt32 = 0   // CRYO_UFFD_EVENT_*
        public var ufd: UInt32 = 0     // fork: the child's new userfaultfd
        public var address: UInt64 = 0 // pagefault: the address; remap: from; remove/unmap: start
        public var flags: UInt64 = 0   // pagefault: UFFD_PAGEFAULT_FLAG_*
        public var to: UInt64 = 0      // remap: new address
        public var length: UInt64 = 0  // remap: length; remove/unmap: end - start
        public init() {}
    }

    public func read(into events: inout [Event]) throws -> Int {
        let size = MemoryLayout<uffd_msg>.size
        var messages = [uffd_msg](repeating: uffd_msg(), count: min(events.count, 64))
        let n = messages.withUnsafeMutableBytes { Kernel.rawSyscall(SYS_read, [fd, $0.baseAddress, $0.count]) }
        if n == -Int(EAGAIN) { return 0 }
        let count = try check(n, "read(userfaultfd)", object: "fd \(fd.rawValue)") / size
        for i in 0..<count {
            let m = messages[i]
            var e = Event()
            e.event = UInt32(m.event)
            switch Int32(m.event) {
            case CRYO_UFFD_EVENT_PAGEFAULT: e.address = m.arg.pagefault.address; e.flags = m.arg.pagefault.flags
            case CRYO_UFFD_EVENT_FORK: e.ufd = m.arg.fork.ufd
            case CRYO_UFFD_EVENT_REMAP: e.address = m.arg.remap.from; e.to = m.arg.remap.to; e.length = m.arg.remap.len
            case CRYO_UFFD_EVENT_REMOVE, CRYO_UFFD_EVENT_UNMAP:
                e.address = m.arg.remove.start; e.length = m.arg.remove.end - m.arg.remove.start
            default: break
            }
            events[i] = e
        }
        return count
    }

    /// UFFDIO_COPY: installs `source` at `address` and wakes whoever waits there.
    public func copy(to address: UInt64, from source: UnsafeRawPointer, length: UInt64) -> Fill {
        var request = uffdio_copy(dst: address, src: UInt64(UInt(bitPattern: source)), len: length, mode: 0, copy: 0)
        let r = withUnsafeMutablePointer(to: &request) { Kernel.rawSyscall(SYS_ioctl, [fd, CRYO_UFFDIO_COPY, $0]) }
        return Fill(bytes: UInt64(max(request.copy, 0)), errno: Kernel.errno(of: r))
    }

    /// UFFDIO_ZEROPAGE: maps the zero page at `address`.
    public func zeroPage(at address: UInt64, length: UInt64) -> Fill {
        var request = uffdio_zeropage(range: uffdio_range(start: address, len: length), mode: 0, zeropage: 0)
        let r = withUnsafeMutablePointer(to: &request) { Kernel.rawSyscall(SYS_ioctl, [fd, CRYO_UFFDIO_ZEROPAGE, $0]) }
        return Fill(bytes: UInt64(max(request.zeropage, 0)), errno: Kernel.errno(of: r))
    }

    /// UFFDIO_WAKE: wakes threads waiting on a range someone else filled.
    public func wake(_ address: UInt64, length: UInt64) {
        var range = uffdio_range(start: address, len: length)
        _ = withUnsafeMutablePointer(to: &range) { Kernel.rawSyscall(SYS_ioctl, [fd, CRYO_UFFDIO_WAKE, $0]) }
    }

    public func close() { try? fd.close() }

    /// The features lazy restore needs: fork, mremap, madvise(DONTNEED) and munmap
    /// events, so no change the restored process makes to its lazy memory goes unseen.
    public static let lazyFeatures = UInt64(UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE
                                            | UFFD_FEATURE_EVENT_UNMAP)
}
