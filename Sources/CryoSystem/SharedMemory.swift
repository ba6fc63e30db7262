import CCryo
import Glibc
import SystemPackage

/// Shared memory as the kernel's object (a shmem file): where its data is, and a new one.
public enum SharedMemory {
    // <unistd.h> defines these only under _GNU_SOURCE, which Swift's Glibc lacks.
    static let seekData: Int32 = 3
    static let seekHole: Int32 = 4

    /// The ranges of [0, size) of `file` that hold data (SEEK_DATA/SEEK_HOLE): pages
    /// that were written or read in some mapping, or swapped out; holes read as zeros.
    public static func dataRanges(_ file: FileDescriptor, size: UInt64, object: String) throws -> [Range<UInt64>] {
        var ranges: [Range<UInt64>] = []
        var at: off_t = 0
        while UInt64(at) < size {
            let data = lseek(file.rawValue, at, seekData)
            if data < 0 {
                if Glibc.errno == ENXIO { break }  // no data after `at`
                throw SyscallError("lseek(SEEK_DATA)", errno: Errno(rawValue: Glibc.errno), object: object)
            }
            let hole = try checkLibc(Int(lseek(file.rawValue, data, seekHole)), "lseek(SEEK_HOLE)", object: object)
            let end = min(UInt64(hole), size)
            if UInt64(data) < end { ranges.append(UInt64(data)..<end) }
            at = off_t(hole)
        }
        return ranges
    }

    /// Copies `length` bytes of `source` at `sourceOffset` into `target` at `targetOffset` with sendfile.
    public static func copy(from source: FileDescriptor, at sourceOffset: UInt64, to target: FileDescriptor, at targetOffset: UInt64,
                            length: UInt64, object: String) throws {
        var offset = off_t(sourceOffset)
        var done: UInt64 = 0
        _ = try checkLibc(Int(lseek(target.rawValue, off_t(targetOffset), SEEK_SET)), "lseek", object: object)
        while done < length {
            let n = try checkLibc(sendfile(target.rawValue, source.rawValue, &offset, Int(min(length - done, 1 << 30))), "sendfile", object: object)
            if n == 0 { throw SyscallError("sendfile", errno: .ioError, object: "\(object): ends before \(sourceOffset + length) (truncated)") }
            done += UInt64(n)
        }
    }

    /// Runs `body` on `size` bytes of `fd` mapped shared and writable here: hugetlbfs has no write(2),
    /// its pages are filled through a mapping (pread into it).
    public static func withMapped<T>(_ fd: FileDescriptor, size: UInt64, object: String,
                                     _ body: (UnsafeMutableRawPointer) throws -> T) throws -> T {
        guard let mapped = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, 0), mapped != MAP_FAILED else {
            throw SyscallError("mmap(MAP_SHARED)", errno: Errno(rawValue: Glibc.errno), object: object)
        }
        defer { munmap(mapped, Int(size)) }
        return try body(mapped)
    }

    /// A new anonymous shared memory object of `size` bytes, the kind
    /// MAP_SHARED|MAP_ANONYMOUS makes ("/dev/zero (deleted)" in maps), opened
    /// read-write: mapped here for a moment and reopened through /proc/self/map_files.
    /// `hugePageSize`: hugetlb memory (MAP_HUGETLB) of pages of that size, reserved now (ENOMEM if the pool is short).
    public static func makeAnonymous(size: UInt64, hugePageSize: UInt64? = nil) throws -> FileDescriptor {
        let huge = hugePageSize.map { 0x40000 /* MAP_HUGETLB */ | (Int32($0.trailingZeroBitCount) << 26) } ?? 0
        guard let mapped = mmap(nil, Int(size), PROT_NONE, MAP_SHARED | MAP_ANONYMOUS | huge, -1, 0), mapped != MAP_FAILED else {
            throw SyscallError(huge != 0 ? "mmap(MAP_SHARED|MAP_ANONYMOUS|MAP_HUGETLB)" : "mmap(MAP_SHARED|MAP_ANONYMOUS)",
                               errno: Errno(rawValue: Glibc.errno), object: "\(size) bytes of shared memory")
        }
        defer { munmap(mapped, Int(size)) }
        let start = UInt64(UInt(bitPattern: mapped))
        let path = "/proc/self/map_files/\(String(start, radix: 16))-\(String(start + size, radix: 16))"
        return try Files.open(path, .readWrite)
    }

    /// A MAP_SHARED mapping in cryo of `length` bytes of `fd` from offset 0 (a packet socket's ring, read
    /// through cryo's own copy of the descriptor); `unmap` it when done.
    public static func mapShared(_ fd: FileDescriptor, length: Int, writable: Bool, object: String) throws -> UnsafeMutableRawBufferPointer {
        guard let mapped = mmap(nil, length, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd.rawValue, 0), mapped != MAP_FAILED else {
            throw SyscallError("mmap(MAP_SHARED)", errno: Errno(rawValue: Glibc.errno), object: "\(object): \(length) bytes")
        }
        return UnsafeMutableRawBufferPointer(start: mapped, count: length)
    }

    public static func unmap(_ mapping: UnsafeMutableRawBufferPointer) {
        munmap(mapping.baseAddress, mapping.count)
    }
}
