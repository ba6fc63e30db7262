import CCryo
import Glibc
import SystemPackage

/// The PAGEMAP_SCAN ioctl on /proc/PID/pagemap (Linux 6.7).
public enum Pagemap {
    /// Fills `regions` from `argument` (its vec is set here): the number of regions, or -errno.
    public static func scanRaw(_ pagemap: FileDescriptor, _ argument: inout cryo_pm_scan_arg,
                               into regions: UnsafeMutableBufferPointer<cryo_page_region>) -> Int {
        argument.size = UInt64(MemoryLayout<cryo_pm_scan_arg>.size)
        argument.vec = UInt64(UInt(bitPattern: regions.baseAddress))
        argument.vec_len = UInt64(regions.count)
        return withUnsafeMutablePointer(to: &argument) { Kernel.rawSyscall(SYS_ioctl, [pagemap, CRYO_PAGEMAP_SCAN, $0]) }
    }

    /// Whether this kernel's PAGEMAP_SCAN reports guard regions (PAGE_IS_GUARD, Linux 6.15): an empty
    /// scan that asks for them is refused with EINVAL where it does not.
    public static func reportsGuards(_ pagemap: FileDescriptor) -> Bool {
        var argument = cryo_pm_scan_arg()
        argument.return_mask = UInt64(CRYO_PAGE_IS_GUARD)
        return scanRaw(pagemap, &argument, into: UnsafeMutableBufferPointer(start: nil, count: 0)) >= 0
    }

    /// The same, for `pid`'s pagemap (false where it does not open).
    public static func reportsGuards(pid: pid_t) -> Bool {
        guard let pagemap = try? Files.open("/proc/\(pid)/pagemap", .readOnly) else { return false }
        defer { try? pagemap.close() }
        return reportsGuards(pagemap)
    }

    /// The /proc/PID/pagemap entries (one 64-bit word per page: bit 63 present, bit 61 a page of a
    /// file or shared memory, not a private anonymous copy) of `count` pages from `start`.
    public static func entries(pid: pid_t, start: UInt64, count: Int) throws -> [UInt64] {
        let path = "/proc/\(pid)/pagemap"
        let pagemap = try Files.open(path, .readOnly)
        defer { try? pagemap.close() }
        var words = [UInt64](repeating: 0, count: count)
        let wanted = count * 8
        let read = try words.withUnsafeMutableBytes { buffer in
            do {
                return try pagemap.read(fromAbsoluteOffset: Int64(start / UInt64(sysconf(Int32(_SC_PAGESIZE)))) * 8, into: buffer, retryOnInterrupt: true)
            } catch {
                throw SyscallError("pread", errno: error as? Errno ?? .ioError, pid: pid, object: path)
            }
        }
        guard read == wanted else { throw SyscallError("pread", errno: .ioError, pid: pid, object: "\(path): \(read) of \(wanted) bytes") }
        return words
    }

    /// The same, throwing a SyscallError for pid and object.
    public static func scan(_ pagemap: FileDescriptor, _ argument: inout cryo_pm_scan_arg,
                            into regions: UnsafeMutableBufferPointer<cryo_page_region>, pid: pid_t? = nil,
                            object: @autoclosure () -> String? = nil) throws -> Int {
        try check(scanRaw(pagemap, &argument, into: regions), "ioctl(PAGEMAP_SCAN)", pid: pid, object: object())
    }
}
