import CCryo
import Glibc
import SystemPackage

/// One run of bytes that hold data in a file (everything else is a hole).
public struct FileExtent: Codable, Sendable, Equatable {
    public var offset: Int64
    public var length: Int64
    public init(offset: Int64, length: Int64) {
        self.offset = offset
        self.length = length
    }
}

/// What the kernel says of a file beyond its bytes: where its data is, its
/// owner and times, a handle that names it without a path.
public enum FileFacts {
    // SEEK_DATA and SEEK_HOLE are hidden from Swift (glibc defines them under _GNU_SOURCE).
    static let seekData: Int32 = 3
    static let seekHole: Int32 = 4

    /// The runs of data of a file `size` bytes long, from SEEK_DATA/SEEK_HOLE
    /// (a file system without them reports the whole file as data).
    public static func dataExtents(_ fd: FileDescriptor, size: Int64, object: String) throws -> [FileExtent] {
        var extents: [FileExtent] = []
        var at: Int64 = 0
        while at < size {
            let start = Kernel.rawSyscall(SYS_lseek, [fd, at, seekData])
            if start == -Int(ENXIO) { break }  // only a hole from here to the end
            let dataStart = Int64(try check(start, "lseek(SEEK_DATA)", object: object))
            if dataStart >= size { break }
            let end = Int64(try Kernel.syscall(SYS_lseek, fd, dataStart, seekHole, name: "lseek(SEEK_HOLE)", object: object))
            let dataEnd = min(end, size)
            extents.append(FileExtent(offset: dataStart, length: dataEnd - dataStart))
            at = dataEnd
        }
        return extents
    }

    /// Copies `extents` from `source` to the same offsets of `target`, then sets
    /// `target`'s size: what lies between stays a hole.
    public static func copyExtents(_ extents: [FileExtent], from source: FileDescriptor, to target: FileDescriptor, size: Int64,
                                   object: String) throws {
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        for e in extents {
            var done: Int64 = 0
            while done < e.length {
                let want = Int(min(Int64(chunk.count), e.length - done))
                let n: Int
                do {
                    n = try chunk.withUnsafeMutableBytes {
                        try source.read(fromAbsoluteOffset: e.offset + done, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<want]))
                    }
                } catch { throw SyscallError("pread", errno: error as? Errno ?? .ioError, object: object) }
                if n == 0 { throw CryoSystemError("\(object): ends at \(e.offset + done), before the end of its data at \(e.offset + e.length)") }
                try chunk.withUnsafeBytes { try Files.write(target, UnsafeRawBufferPointer(rebasing: $0[0..<n]), at: e.offset + done, path: object) }
                done += Int64(n)
            }
        }
        try Files.truncate(target, to: UInt64(size), path: object)
    }

    /// What the symbolic link behind an O_PATH|O_NOFOLLOW descriptor says (readlinkat with an empty path).
    public static func linkTarget(_ fd: FileDescriptor, object: String) throws -> String {
        var buffer = [UInt8](repeating: 0, count: 4097)
        let n = try buffer.withUnsafeMutableBytes { raw in
            try "".withCString { try Kernel.syscall(SYS_readlinkat, fd, $0, raw.baseAddress, 4096, name: "readlinkat", object: object) }
        }
        return String(decoding: buffer[0..<n], as: UTF8.self)
    }

    public static func makeSymlink(_ path: String, target: String, object: String) throws {
        try target.withCString { t in
            try path.withCString { try Kernel.syscall(SYS_symlinkat, t, AT_FDCWD, $0, name: "symlink", object: object) }
        }
    }

    /// Whether the file behind `fd` is on hugetlbfs (fstatfs: HUGETLBFS_MAGIC), as an MFD_HUGETLB memfd is.
    public static func isHugetlb(_ fd: FileDescriptor, object: String) throws -> Bool {
        // struct statfs (120 bytes on x86_64) starts with f_type; Glibc's module does not show it to Swift.
        var buffer = [UInt64](repeating: 0, count: 16)
        try buffer.withUnsafeMutableBytes { try Kernel.syscall(SYS_fstatfs, fd, $0.baseAddress, name: "fstatfs", object: object) }
        return buffer[0] == 0x9584_58f6
    }

    /// The page size of the hugetlbfs file behind `fd` (fstatfs f_bsize), nil when it is not on hugetlbfs.
    public static func hugePageSize(_ fd: FileDescriptor, object: String) throws -> UInt64? {
        var buffer = [UInt64](repeating: 0, count: 16)  // struct statfs: f_type, f_bsize, ...
        try buffer.withUnsafeMutableBytes { try Kernel.syscall(SYS_fstatfs, fd, $0.baseAddress, name: "fstatfs", object: object) }
        return buffer[0] == 0x9584_58f6 ? buffer[1] : nil
    }

    /// mkfifo(3), as mknodat.
    public static func makeFifo(_ path: String, mode: UInt32, object: String) throws {
        try path.withCString {
            try Kernel.syscall(SYS_mknodat, AT_FDCWD, $0, UInt32(S_IFIFO) | (mode & 0o7777), 0, name: "mknod(S_IFIFO)", object: object)
        }
    }

    public static func setOwner(_ fd: FileDescriptor, uid: UInt32, gid: UInt32, object: String) throws {
        try Kernel.syscall(SYS_fchown, fd, uid, gid, name: "fchown", object: object)
    }

    /// futimens with access and modification times in nanoseconds since the epoch.
    public static func setTimes(_ fd: FileDescriptor, access: Int64, modification: Int64, object: String) throws {
        func spec(_ ns: Int64) -> timespec {
            let (seconds, rest) = ns.quotientAndRemainder(dividingBy: 1_000_000_000)
            return rest < 0 ? timespec(tv_sec: Int(seconds - 1), tv_nsec: Int(rest + 1_000_000_000)) : timespec(tv_sec: Int(seconds), tv_nsec: Int(rest))
        }
        var times = [spec(access), spec(modification)]
        try times.withUnsafeMutableBufferPointer {
            try Kernel.syscall(SYS_utimensat, fd, 0, $0.baseAddress, 0, name: "futimens", object: object)
        }
    }

    /// Gives the unnamed file behind `fd` the name `path` (linkat through /proc, AT_SYMLINK_FOLLOW).
    public static func link(_ fd: FileDescriptor, to path: String, object: String) throws {
        try "/proc/self/fd/\(fd.rawValue)".withCString { from in
            try path.withCString { to in
                try Kernel.syscall(SYS_linkat, AT_FDCWD, from, AT_FDCWD, to, 0x400 /* AT_SYMLINK_FOLLOW */, name: "linkat", object: object)
            }
        }
    }

    /// A file handle of the file behind `fd` (name_to_handle_at with AT_EMPTY_PATH): its type and bytes.
    public static func handle(of fd: FileDescriptor, object: String) throws -> (type: Int32, bytes: [UInt8]) {
        // struct file_handle: handle_bytes (u32), handle_type (i32), f_handle[MAX_HANDLE_SZ = 128].
        var buffer = [UInt8](repeating: 0, count: 8 + 128)
        buffer.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(128), toByteOffset: 0, as: UInt32.self) }
        var mountID: Int32 = 0
        try buffer.withUnsafeMutableBytes { raw in
            try "".withCString { empty in
                try withUnsafeMutablePointer(to: &mountID) { mount in
                    try Kernel.syscall(SYS_name_to_handle_at, fd, empty, raw.baseAddress, mount, 0x1000 /* AT_EMPTY_PATH */,
                                       name: "name_to_handle_at", object: object)
                }
            }
        }
        let (count, type) = buffer.withUnsafeBytes { (Int($0.load(fromByteOffset: 0, as: UInt32.self)), $0.load(fromByteOffset: 4, as: Int32.self)) }
        return (type, Array(buffer[8..<(8 + min(count, 128))]))
    }

    /// An O_PATH descriptor of the file `handle` names, through some mount of `device`
    /// (stat's st_dev) in cryo's mount namespace, checked to be `inode`.
    public static func open(handle: [UInt8], type: Int32, device: UInt64, inode: UInt64, object: String) throws -> FileDescriptor {
        let major = ((device >> 8) & 0xfff) | ((device >> 32) & ~UInt64(0xfff))
        let minor = (device & 0xff) | ((device >> 12) & ~UInt64(0xff))
        let wanted = "\(major):\(minor)"
        var points: [String] = []
        for line in try Files.readString("/proc/self/mountinfo").split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count > 4, f[2] == wanted else { continue }
            points.append(unescapeMountPath(String(f[4])))
        }
        var lastError = "no mount of device \(wanted) in cryo's mount namespace"
        for point in points {
            // Not O_PATH: open_by_handle_at refuses those as the mount.
            guard let mount = try? Files.open(point, .readOnly, options: [.directory]) else { continue }
            defer { try? mount.close() }
            let fd: FileDescriptor
            do { fd = try FileObjects.open(handle: handle, type: type, on: mount, object: "\(object) through \(point)") } catch {
                lastError = "\(error)"
                continue
            }
            if let st = try? Files.stat(fd, object: object), UInt64(st.st_ino) == inode, UInt64(st.st_dev) == device { return fd }
            try? fd.close()
            lastError = "the handle names another file through \(point)"
        }
        throw CryoSystemError("\(object): cannot reopen the file (device \(wanted) inode \(inode)) by its handle: \(lastError)")
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo.
    static func unescapeMountPath(_ s: String) -> String {
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 3 < b.count, let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// A failure of CryoSystem that is no single syscall's errno; its text is the one-line message.
public struct CryoSystemError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
