import CCryo
import Glibc
import SystemPackage

/// The PROCMAP_QUERY ioctl on /proc/PID/maps (Linux 6.11): the mappings that match some
/// flags, one ioctl each, without the kernel printing (and cryo parsing) a line for every
/// other mapping. A process with 10,000 anonymous mappings and a dozen of code has its
/// code found in a dozen calls.
public enum ProcmapQuery {
    public struct Mapping: Sendable {
        public var start: UInt64, end: UInt64
        /// CRYO_PROCMAP_QUERY_VMA_* bits.
        public var flags: UInt64
        public var offset: UInt64
        public var inode: UInt64
        public var deviceMajor: UInt32, deviceMinor: UInt32
        /// As /proc/PID/maps names it ("" for none).
        public var name: String
    }

    /// Every mapping of `pid` whose flags include all of `required` (CRYO_PROCMAP_QUERY_VMA_READABLE ...
    /// and CRYO_PROCMAP_QUERY_FILE_BACKED_VMA), in address order. Throws ENOTTY before Linux 6.11.
    public static func mappings(pid: pid_t, required: UInt64) throws -> [Mapping] {
        let path = "/proc/\(pid)/maps"
        let fd = try Files.open(path, .readOnly)
        defer { try? fd.close() }
        var found: [Mapping] = []
        var name = [UInt8](repeating: 0, count: 4096 + 1)  // PATH_MAX and its NUL
        var address: UInt64 = 0
        while true {
            var query = cryo_procmap_query()
            query.size = UInt64(MemoryLayout<cryo_procmap_query>.size)
            query.query_flags = required | CRYO_PROCMAP_QUERY_COVERING_OR_NEXT
            query.query_addr = address
            let result = name.withUnsafeMutableBytes { buffer in
                query.vma_name_addr = UInt64(UInt(bitPattern: buffer.baseAddress))
                query.vma_name_size = UInt32(buffer.count)
                return withUnsafeMutablePointer(to: &query) { Kernel.rawSyscall(SYS_ioctl, [fd, CRYO_PROCMAP_QUERY, $0]) }
            }
            if result == -Int(ENOENT) { return found }  // no mapping at or above `address`
            try check(result, "ioctl(PROCMAP_QUERY)", pid: pid, object: "\(path) at 0x\(String(address, radix: 16))")
            // vma_name_size comes back with the name's NUL (0: no name).
            let nameLength = max(Int(query.vma_name_size), 1) - 1
            found.append(Mapping(start: query.vma_start, end: query.vma_end, flags: query.vma_flags, offset: query.vma_offset,
                                 inode: query.inode, deviceMajor: query.dev_major, deviceMinor: query.dev_minor,
                                 name: String(decoding: name[..<nameLength], as: UTF8.self)))
            guard query.vma_end > address else { return found }
            address = query.vma_end
        }
    }
}
