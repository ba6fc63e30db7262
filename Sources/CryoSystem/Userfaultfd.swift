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
        _ = try check(cryo_uffd_api(fd.rawValue, CRYO_UFFD_FEATURE_WP_ASYNC), "ioctl(UFFDIO_API, WP_ASYNC)", pid: pid, object: "userfaultfd")
    }

    public func registerWriteProtect(start: UInt64, length: UInt64) throws {
        _ = try check(cryo_uffd_register_wp(fd.rawValue, start, length), "ioctl(UFFDIO_REGISTER, MODE_WP)", pid: pid,
                      object: "address 0x\(String(start, radix: 16))")
    }

    public func writeProtect(start: UInt64, length: UInt64) throws {
        _ = try check(cryo_uffd_writeprotect(fd.rawValue, start, length), "ioctl(UFFDIO_WRITEPROTECT)", pid: pid,
                      object: "address 0x\(String(start, radix: 16))")
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
            let n = cryo_copy_file_range(source.rawValue, sourceOffset + done, target.rawValue, targetOffset + done, UInt64(length - done))
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
        var failed: Int32 = 0
        let r = cryo_uffd_probe(features, &failed)
        if r < 0 {
            throw SyscallError(failed == 0 ? "userfaultfd" : "ioctl(UFFDIO_API)", errno: Errno(rawValue: Int32(-r)))
        }
    }

    /// Messages waiting now (none: empty).
    public func read(into events: inout [cryo_uffd_event]) throws -> Int {
        let count = events.count
        let r = events.withUnsafeMutableBufferPointer { cryo_uffd_read(fd.rawValue, $0.baseAddress, Int32(count)) }
        return try check(r, "read(userfaultfd)", object: "fd \(fd.rawValue)")
    }

    /// UFFDIO_COPY: installs `source` at `address` and wakes whoever waits there.
    public func copy(to address: UInt64, from source: UnsafeRawPointer, length: UInt64) -> Fill {
        var done: Int64 = 0
        let r = cryo_uffd_copy(fd.rawValue, address, source, length, &done)
        return Fill(bytes: UInt64(done), errno: r < 0 ? Errno(rawValue: Int32(-r)) : nil)
    }

    /// UFFDIO_ZEROPAGE: maps the zero page at `address`.
    public func zeroPage(at address: UInt64, length: UInt64) -> Fill {
        var done: Int64 = 0
        let r = cryo_uffd_zeropage(fd.rawValue, address, length, &done)
        return Fill(bytes: UInt64(done), errno: r < 0 ? Errno(rawValue: Int32(-r)) : nil)
    }

    /// UFFDIO_WAKE: wakes threads waiting on a range someone else filled.
    public func wake(_ address: UInt64, length: UInt64) {
        _ = cryo_uffd_wake(fd.rawValue, address, length)
    }

    public func close() { try? fd.close() }
}
