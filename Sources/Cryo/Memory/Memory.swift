import CCryo
import CryoInjector
import CryoSystem
import Dispatch
import FoundationEssentials
import Glibc
import SystemPackage

/// The address space: every mapping with its origin, and the pages that only
/// the image can give back (present, private or anonymous, not the zero page).
public struct MemoryRecord: Codable, Sendable {
    public enum Kind: String, Codable, Sendable, CaseIterable {
        case anonymous, sharedAnonymous, file, memfd, heap, stack, vdso, vvar, vvarClock, vsyscall
        /// An attached System V shared memory segment (its id is `inode`; SysVSharedMemory.swift).
        case sysvShm
        /// The ring of an AIO context (io_setup; AioRing.swift).
        case aioRing
        /// The rings of an AF_PACKET socket (PACKET_RX_RING/TX_RING; PacketRing.swift): `file` is the socket.
        case packetRing
    }
    public struct Mapping: Codable, Sendable {
        public var start: UInt64
        public var end: UInt64
        public var protection: String  // "rwx" subset, as /proc shows it
        public var shared: Bool
        public var kind: Kind
        public var path: String?
        public var fileOffset: UInt64
        public var device: UInt64?
        public var inode: UInt64?
        public var growsDown: Bool
        public var noReserve: Bool
        public var advice: UInt32  // CRYO_MADV_*
        /// For shared anonymous memory: the id of its object in shmem.img (SharedMemoryTable).
        public var shmem: Int?
        /// For a memfd mapping: the id in the file table of the memfd it maps; for a packet ring, the socket's.
        public var file: Int?
        /// A mapping of a file whose name was removed: `file` names its ghost in the file table.
        public var deleted: Bool? = nil
        /// Inherited from the parent at fork and still sharing pages with it: restore keeps the parent's
        /// copy-on-write and writes only this task's own pages (CopyOnWrite.swift). All of it, or
        /// the memory record's `inheritedRanges` inside it.
        public var inherited: Bool? = nil
        /// For an AIO ring: the number of events it holds (struct aio_ring's nr).
        public var aioEvents: UInt32? = nil
        /// hugetlb memory (MAP_HUGETLB, SHM_HUGETLB): the size of its pages (Hugetlb.swift).
        public var hugePageSize: UInt64? = nil
        /// A shared mapping that mprotect may make writable (VM_MAYWRITE, VmFlags mw): its file was opened
        /// read-write, even if the mapping is read-only now. Restore opens it so again.
        public var mayWrite: Bool? = nil
        /// MAP_DROPPABLE memory (VmFlags dp): the kernel may drop its pages at any time, and does at
        /// fork. It comes back droppable and empty (MemoryRestorePlan): its bytes are never restored.
        public var droppable: Bool? = nil
        var length: UInt64 { end - start }
        /// Its file is opened read-write at restore: the mapping writes through to it now, or may once mprotect adds PROT_WRITE.
        var needsWritableFile: Bool { shared && (protection.contains("w") || mayWrite == true) }
        var isSpecial: Bool { [.vdso, .vvar, .vvarClock, .vsyscall].contains(kind) }
        /// One pass over the bytes: a substring search per letter was most of building a restore plan.
        var prot: Int32 {
            protection.utf8.reduce(0) { bits, byte in
                switch byte {
                case UInt8(ascii: "r"): bits | PROT_READ
                case UInt8(ascii: "w"): bits | PROT_WRITE
                case UInt8(ascii: "x"): bits | PROT_EXEC
                default: bits
                }
            }
        }
        /// What it carries besides protection and backing, for people (cryo show): locks, advice, growth, reservation.
        public var attributeNames: [String] {
            let bits: [(UInt32, String)] = [
                (CRYO_VMA_LOCKED, advice & CRYO_VMA_LOCKONFAULT != 0 ? "locked on fault" : "locked"), (CRYO_MADV_MERGEABLE, "mergeable"),
                (CRYO_MADV_DONTFORK, "dontfork"), (CRYO_MADV_WIPEONFORK, "wipeonfork"), (CRYO_MADV_DONTDUMP, "dontdump"),
                (CRYO_MADV_HUGEPAGE, "hugepage"), (CRYO_MADV_NOHUGEPAGE, "nohugepage"), (CRYO_VMA_SEALED, "sealed"),
                (CRYO_MADV_SEQUENTIAL, "sequential"), (CRYO_MADV_RANDOM, "random"),
            ]
            return bits.filter { advice & $0.0 != 0 }.map(\.1) + (growsDown ? ["grows down"] : []) + (noReserve ? ["noreserve"] : [])
                + (mayWrite == true && !protection.contains("w") ? ["may write"] : []) + (droppable == true ? ["droppable"] : [])
        }
    }
    public var mappings: [Mapping]
    /// PR_GET_THP_DISABLE when not 0 (an mm flag: 1, or 3 with PR_THP_DISABLE_EXCEPT_ADVISED).
    public var thpDisable: Int32? = nil
    /// mlockall's flags for mappings made from now on (the address space's, not a mapping's): MCL_FUTURE,
    /// with MCL_ONFAULT or not; nil when none. Locks of the mappings already there are in their advice.
    public var lockFuture: Int32? = nil
    /// [start, end) ranges of inherited mappings whose pages the parent has and this task has not:
    /// dropped after fork at restore (CopyOnWrite.swift).
    public var discards: [[UInt64]]? = nil
    /// [start, end) guard regions (madvise MADV_GUARD_INSTALL, Linux 6.13) in address order, each inside one
    /// mapping: no page there, and a touch is SIGSEGV. Installed again once the pages are in (format version 9).
    public var guards: [[UInt64]]? = nil
    /// [start, end) ranges kept from the parent at fork, in address order, when some inherited
    /// mapping is not kept whole (format version 7); without it, every inherited mapping is.
    public var inheritedRanges: [[UInt64]]? = nil
    /// AIO rings not at their start at dump: head and unreaped events, per ring (format version 10).
    public var aioRings: [AioRingContents]? = nil

    /// The ranges kept from the parent at fork, in address order.
    var keptFromParent: [Range<UInt64>] {
        // A malformed range is left out here, refused by CopyOnWrite.validate.
        if let ranges = inheritedRanges { return ranges.compactMap { $0.count == 2 && $0[0] < $0[1] ? $0[0]..<$0[1] : nil } }
        return mappings.filter { $0.inherited == true }.map { $0.start..<$0.end }
    }
}

/// Where each saved page range lives in the page stream: [address, length, offset].
/// The stream is pages-PID.img, followed by the part files of `parts` if any.
/// With `compression`, offsets are in the uncompressed page stream and
/// `pagesFileSize` is the size of the compressed file.
public struct PageIndex: Codable, Sendable {
    public var runs: [PageRun]
    public var pagesFileSize: UInt64
    public var compression: PageFrames? = nil
    /// Sizes of pages-PID.1.img, pages-PID.2.img, ...: a large dump writes them in
    /// parallel with pages-PID.img (one file is written by one CPU at a time). Never compressed.
    public var parts: [UInt64]? = nil
    /// Bytes of saved pages (the uncompressed stream).
    public var pageBytes: UInt64 { runs.reduce(0) { $0 + $1.length } }

    /// Everything but the runs: the `pageIndex` record of a task file from format
    /// version 4 on, whose runs are the binary `pageRuns` record.
    public struct Header: Codable, Sendable {
        public var pagesFileSize: UInt64
        public var compression: PageFrames?
        public var parts: [UInt64]?
    }
    public var header: Header { Header(pagesFileSize: pagesFileSize, compression: compression, parts: parts) }
    public init(header: Header, runs: [PageRun]) {
        self.init(runs: runs, pagesFileSize: header.pagesFileSize, compression: header.compression, parts: header.parts)
    }
    public init(runs: [PageRun], pagesFileSize: UInt64, compression: PageFrames? = nil, parts: [UInt64]? = nil) {
        self.runs = runs
        self.pagesFileSize = pagesFileSize
        self.compression = compression
        self.parts = parts
    }
    /// The size of every file of the stream, pages-PID.img first (its indices are the parts).
    var fileSizes: [UInt64] { [pagesFileSize] + (parts ?? []) }

    /// The stream's bytes [offset, offset + length) as pieces of its files, in order.
    func pieces(offset: UInt64, length: UInt64) -> [(part: Int, offset: UInt64, length: UInt64)] {
        var result: [(part: Int, offset: UInt64, length: UInt64)] = []
        var start: UInt64 = 0
        var (at, end) = (offset, offset + length)
        for (part, size) in fileSizes.enumerated() where at < end {
            if at < start + size {
                let take = min(end, start + size) - at
                result.append((part, at - start, take))
                at += take
            }
            start += size
        }
        return result
    }
}

/// One line of /proc/PID/smaps with its VmFlags.
struct ProcMapping {
    var start: UInt64, end: UInt64
    var permissions: String
    var offset: UInt64
    var device: String
    var inode: UInt64
    var path: String
    var vmFlags: VmFlags = []
}

/// The two-letter codes of a VmFlags line of smaps, as pairs of bytes: one small array per
/// mapping (a Set of Strings per mapping cost more than the rest of parsing smaps).
struct VmFlags: ExpressibleByArrayLiteral, Equatable {
    private var codes: [UInt16] = []

    init(arrayLiteral codes: String...) {
        self.codes = codes.compactMap(VmFlags.code)
    }

    /// The codes of `line`, what follows "VmFlags:".
    init(line: Slice<UnsafeBufferPointer<UInt8>>) {
        var i = line.startIndex
        while i < line.endIndex {
            while i < line.endIndex && line[i] == UInt8(ascii: " ") { i += 1 }
            var end = i
            while end < line.endIndex && line[end] != UInt8(ascii: " ") { end += 1 }
            // The kernel prints every code as two characters.
            if end - i == 2 { codes.append(UInt16(line[i]) << 8 | UInt16(line[i + 1])) }
            i = end
        }
    }

    private static func code(_ text: String) -> UInt16? {
        var bytes = text.utf8.makeIterator()
        guard let a = bytes.next(), let b = bytes.next(), bytes.next() == nil else { return nil }
        return UInt16(a) << 8 | UInt16(b)
    }

    var isEmpty: Bool { codes.isEmpty }
    func contains(_ code: String) -> Bool { VmFlags.code(code).map { codes.contains($0) } ?? false }
    func contains(_ code: UInt16) -> Bool { codes.contains(code) }

    /// The codes the dump looks at, as numbers.
    enum Known {
        static let io = pair("io"), pf = pair("pf"), ht = pair("ht"), dd = pair("dd"), dc = pair("dc")
        static let hg = pair("hg"), nh = pair("nh"), wf = pair("wf"), gd = pair("gd"), nr = pair("nr")
        static let mg = pair("mg"), lo = pair("lo"), lf = pair("lf"), sl = pair("sl"), sr = pair("sr"), rr = pair("rr")
        static let mw = pair("mw"), dp = pair("dp")
        private static func pair(_ text: StaticString) -> UInt16 {
            UInt16(text.utf8Start[0]) << 8 | UInt16(text.utf8Start[1])
        }
    }
    func isSuperset(of codes: [String]) -> Bool { codes.allSatisfy(contains) }
}

/// Parses /proc/PID/maps (or smaps, for VmFlags) on bytes: a process has
/// thousands of smaps lines, and character-wise String work on them was most
/// of a small process's dump time. Read and parsed piece by piece: 10,000
/// mappings are 11 MB of smaps, and an array of all of it grew by copies into
/// fresh memory (page faults and memmove were a third of reading it).
func readMappings(pid: pid_t, withFlags: Bool) throws -> [ProcMapping] {
    let path = "/proc/\(pid)/\(withFlags ? "smaps" : "maps")"
    let fd = try Files.open(path, .readOnly)
    defer { try? fd.close() }
    return try readMappings(fd, path: path)
}

/// The mappings of maps or smaps text read from `fd` to its end, `bufferSize` bytes at most per read.
func readMappings(_ fd: FileDescriptor, path: String, bufferSize: Int = 128 << 10) throws -> [ProcMapping] {
    var parser = MappingsParser()
    var buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bufferSize, 1), alignment: 16)
    defer { buffer.deallocate() }
    var kept = 0  // bytes of an unfinished line at the start of `buffer`
    while true {
        if kept == buffer.count {
            // A line longer than the buffer (a path is at most 4096 bytes: not from the kernel, but never cut).
            let larger = UnsafeMutableRawBufferPointer.allocate(byteCount: buffer.count * 2, alignment: 16)
            larger.copyMemory(from: UnsafeRawBufferPointer(buffer))
            buffer.deallocate()
            buffer = larger
        }
        let n = try Files.readSome(fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[kept...]), object: path)
        let filled = kept + n
        let bytes = UnsafeBufferPointer(start: buffer.baseAddress!.assumingMemoryBound(to: UInt8.self), count: filled)
        if n == 0 {
            parser.feed(bytes[...])  // the last line, even without its newline
            return parser.result
        }
        guard let lastNewline = bytes.lastIndex(of: UInt8(ascii: "\n")) else { kept = filled; continue }
        parser.feed(bytes[..<lastNewline])
        kept = filled - (lastNewline + 1)
        if kept > 0 { buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + lastNewline + 1, byteCount: kept) }
    }
}

/// The content of /proc/PID/maps or smaps. One pass over the bytes: smaps has some
/// twenty lines per mapping that only need skipping, and 10,000 mappings are 11 MB.
func parseMappings(_ bytes: [UInt8]) -> [ProcMapping] {
    var parser = MappingsParser()
    bytes.withUnsafeBufferPointer { parser.feed($0[...]) }
    return parser.result
}

/// Whole lines of maps or smaps, fed in order (a piece ends at a line's end).
struct MappingsParser {
    var result: [ProcMapping] = []

    mutating func feed(_ all: Slice<UnsafeBufferPointer<UInt8>>) {
        var lineStart = all.startIndex
        while lineStart < all.endIndex {
            var lineEnd = lineStart
            while lineEnd < all.endIndex && all[lineEnd] != UInt8(ascii: "\n") { lineEnd += 1 }
            defer { lineStart = lineEnd + 1 }
            guard lineEnd > lineStart else { continue }
            let line = all[lineStart..<lineEnd]
            let first = line[lineStart]
            if first == UInt8(ascii: "V") {
                if line.starts(with: "VmFlags:".utf8), !result.isEmpty {
                    result[result.count - 1].vmFlags = VmFlags(line: line.dropFirst(8))
                }
                continue
            }
            // A mapping's line starts with its range in hex; the others are "Name: value" counters.
            guard hexValue(first) != nil else { continue }
            var fields: [Slice<UnsafeBufferPointer<UInt8>>] = []
            fields.reserveCapacity(5)
            var rest = line[...]
            while fields.count < 5 {
                rest = rest.drop { $0 == UInt8(ascii: " ") }
                guard let space = rest.firstIndex(of: UInt8(ascii: " ")) else { fields.append(rest); rest = rest[rest.endIndex...]; break }
                fields.append(rest[..<space])
                rest = rest[space...]
            }
            guard fields.count == 5, let dash = fields[0].firstIndex(of: UInt8(ascii: "-")),
                  let start = parseHex(fields[0][..<dash]), let end = parseHex(fields[0][(dash + 1)...]) else { continue }
            // The path may hold spaces: it is the rest of the line.
            let path = rest.drop { $0 == UInt8(ascii: " ") }
            result.append(ProcMapping(start: start, end: end, permissions: String(decoding: fields[1], as: UTF8.self),
                                      offset: parseHex(fields[2]) ?? 0, device: String(decoding: fields[3], as: UTF8.self),
                                      inode: parseDecimal(fields[4]) ?? 0, path: path.isEmpty ? "" : String(decoding: path, as: UTF8.self)))
        }
    }
}

private func parseDecimal(_ digits: Slice<UnsafeBufferPointer<UInt8>>) -> UInt64? {
    guard !digits.isEmpty, digits.count <= 19 else { return nil }
    var value: UInt64 = 0
    for d in digits {
        guard d >= UInt8(ascii: "0"), d <= UInt8(ascii: "9") else { return nil }
        value = value * 10 + UInt64(d - UInt8(ascii: "0"))
    }
    return value
}

private func hexValue(_ byte: UInt8) -> UInt64? {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt64(byte - UInt8(ascii: "0"))
    case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt64(byte - UInt8(ascii: "a") + 10)
    default: nil
    }
}

private func parseHex<C: Collection>(_ digits: C) -> UInt64? where C.Element == UInt8 {
    guard !digits.isEmpty, digits.count <= 16 else { return nil }
    var value: UInt64 = 0
    for d in digits {
        guard let v = hexValue(d) else { return nil }
        value = value << 4 | v
    }
    return value
}

/// /proc/PID/smaps walks every page table to count pages (15 ms for 2 GiB), and
/// the dump needs only its VmFlags: it is read on another thread while the pages
/// are copied, which need only the layout (/proc/PID/maps). Started as soon as
/// the process is frozen: smaps holds a lock only while it walks one mapping
/// (the address space's on older kernels), so an injected mmap or munmap waits
/// at most for that walk. A parasite seen in smaps is harmless: flags are
/// looked up by the address of each mapping of the layout.
final class MappingsPrefetch: @unchecked Sendable {
    private let queue = DispatchQueue(label: "cryo-smaps")
    private let lock = Lock()
    private var results: [pid_t: Result<[ProcMapping], Error>] = [:]
    private var ready: [pid_t: DispatchSemaphore] = [:]

    func start(_ pid: pid_t) {
        let semaphore = DispatchSemaphore(value: 0)
        let first = lock.withLock { () -> Bool in
            guard ready[pid] == nil else { return false }
            ready[pid] = semaphore
            return true
        }
        guard first else { return }
        queue.async { [self] in
            let result = Result { try readMappings(pid: pid, withFlags: true) }
            lock.withLock { results[pid] = result }
            semaphore.signal()
        }
    }

    /// `pid`'s smaps entries (read now if nobody started it).
    func mappings(of pid: pid_t) throws -> [ProcMapping] {
        start(pid)
        let semaphore = lock.withLock { ready[pid]! }
        semaphore.wait()
        semaphore.signal()
        return try lock.withLock { results[pid]! }.get()
    }
}

extension MemoryRecord {
    /// Classifies every mapping; refuses what cannot be brought back faithfully.
    /// `flags: false` reads only the layout (/proc/PID/maps): `applyFlags` adds the VmFlags later.
    static func dump(pid: pid_t, flags: Bool = true) throws -> MemoryRecord {
        var mappings: [Mapping] = []
        for m in try readMappings(pid: pid, withFlags: flags) {
            let shared = m.permissions.dropFirst(3).first == "s"
            func refuse(_ what: String) -> CryoError {
                let address = "0x\(String(m.start, radix: 16))-0x\(String(m.end, radix: 16))"
                return CryoError("pid \(pid): mapping \(address) \(m.path.isEmpty ? "" : "(\(m.path)) ")is \(what), not supported yet")
            }
            var kind: Kind
            var path: String? = nil
            switch m.path {
            case "[vdso]": kind = .vdso
            case "[vvar]": kind = .vvar
            case "[vvar_vclock]": kind = .vvarClock
            case "[vsyscall]": kind = .vsyscall
            case "[heap]": kind = .heap
            case "[stack]": kind = .stack
            case "":
                kind = shared ? .sharedAnonymous : .anonymous
            case let p where p.hasPrefix("[anon:") || p.hasPrefix("[anon_shmem:"):
                kind = shared ? .sharedAnonymous : .anonymous
            case let p where p.hasPrefix("/dev/zero") && shared:
                // MAP_SHARED|MAP_ANONYMOUS shows as "/dev/zero (deleted)" too: one shmem object each.
                kind = .sharedAnonymous
            case "/dev/zero (deleted)":
                // A private mapping of such an object (mmap of /proc/PID/map_files/...): the pages it
                // never wrote are the object's, and must go on following it, so it maps the object.
                kind = .sharedAnonymous
            case let p where p.hasPrefix(MemfdState.prefix):
                // Its memfd joins the file table once descriptors are dumped (FileTableBuilder.memfdMapping).
                kind = .memfd
                path = p
            case let p where p.hasPrefix("/SYSV"):
                kind = .sysvShm
                path = p
            case let p where p.hasPrefix("/anon_hugepage"):
                // MAP_HUGETLB: private pages are read like any anonymous ones, a shared object from the object.
                kind = shared ? .sharedAnonymous : .anonymous
            case let p where p.hasPrefix("/[aio]"):
                // Its event count is read from its header by the dump (AioRing.dump).
                kind = .aioRing
                path = p
            case let p where p.hasSuffix(" (deleted)") && p.hasPrefix("/"):
                // Its file joins the file table as a ghost once descriptors are dumped (FileTableBuilder.deletedFileMapping).
                kind = .file
                path = String(p.dropLast(" (deleted)".count))
            case let p where p.hasPrefix("/"):
                kind = .file
                path = p
            case let p where p.hasPrefix("socket:["):
                // An AF_PACKET socket's rings are made again on a new socket and mapped from it; its
                // descriptor, once dumped, tells (FileTableBuilder.packetRingMapping). Others are refused there.
                kind = .packetRing
                path = p
            case "anon_inode:[io_uring]":
                // Its requests in flight and the kernel's side of its queues cannot be read back.
                throw refuse("the rings of an io_uring instance (io_uring_setup); a program may have a setting to do without io_uring")
            default:
                throw refuse("an unknown kind of mapping")
            }
            let (major, minor) = parseDevice(m.device)
            var mapping = Mapping(start: m.start, end: m.end, protection: String(m.permissions.prefix(3).filter { $0 != "-" }),
                                  shared: shared, kind: kind, path: path, fileOffset: m.offset,
                                  device: kind == .file ? FileObjects.deviceNumber(major: major, minor: minor) : nil,
                                  inode: kind == .file || kind == .sysvShm || kind == .packetRing ? m.inode : nil,
                                  growsDown: false, noReserve: false, advice: 0,
                                  shmem: nil, file: nil)
            if kind == .file && m.path.hasSuffix(" (deleted)") { mapping.deleted = true }
            if m.path.hasPrefix("/anon_hugepage") || kind == .sysvShm || kind == .memfd {
                mapping.hugePageSize = try Hugetlb.pageSize(pid: pid, start: m.start, end: m.end)
                if mapping.hugePageSize == nil && (kind == .anonymous || kind == .sharedAnonymous) {
                    throw refuse("hugetlb memory that is not on hugetlbfs")
                }
            }
            if flags { try mapping.take(m.vmFlags, pid: pid) }
            mappings.append(mapping)
        }
        return MemoryRecord(mappings: mappings)
    }

    static let lockFutureFlags: Int32 = 2  // MCL_FUTURE

    /// The parasite's finding on mlockall(MCL_FUTURE) (cryo_task_state.lock_future): the flags, nil for none.
    static func lockFuture(_ found: Int64, pid: pid_t) throws -> Int32? {
        guard found >= 0 else {
            throw SyscallError("mmap, madvise and mincore of a page in the parasite (whether mlockall(MCL_FUTURE) is in effect)",
                               errno: Errno(rawValue: Int32(-found)), pid: pid)
        }
        return found == 0 ? nil : Int32(found)
    }

    /// Adds the VmFlags of /proc/PID/smaps to a layout read without them (`dump(pid:flags: false)`).
    mutating func applyFlags(_ smaps: [ProcMapping], pid: pid_t) throws {
        for i in mappings.indices {
            let start = mappings[i].start
            // smaps is in address order: the last entry starting at or below `start`.
            var low = 0, high = smaps.count
            while low < high {
                let mid = (low + high) / 2
                if smaps[mid].start <= start { low = mid + 1 } else { high = mid }
            }
            guard low > 0, case let entry = smaps[low - 1], start < entry.end else {
                throw CryoError("pid \(pid): mapping 0x\(String(start, radix: 16)) is missing from /proc/\(pid)/smaps")
            }
            try mappings[i].take(entry.vmFlags, pid: pid)
        }
    }

    /// Every mapping starts and ends where one of `smaps` does (read at another time: nothing was mapped,
    /// unmapped or split between).
    func sameRanges(as smaps: [ProcMapping]) -> Bool {
        let ranges = Set(smaps.map { [$0.start, $0.end] })
        return mappings.allSatisfy { ranges.contains([$0.start, $0.end]) }
    }

    /// Throws unless `smaps` (read later) gives every mapping the same VmFlags-derived state as the record
    /// has: the flags were read before the freeze, and a madvise meanwhile would be lost on restore.
    func confirmFlags(_ smaps: [ProcMapping], pid: pid_t) throws {
        var now = self
        try now.applyFlags(smaps, pid: pid)
        for (before, after) in zip(mappings, now.mappings)
        where before.advice != after.advice || before.growsDown != after.growsDown || before.noReserve != after.noReserve
            || before.mayWrite != after.mayWrite || before.droppable != after.droppable {
            throw CryoError("pid \(pid): mapping 0x\(String(before.start, radix: 16))-0x\(String(before.end, radix: 16)) changed its flags "
                + "(advice \(before.advice) to \(after.advice)) between their reading and the freeze")
        }
    }

    /// Which pages of a mapping hold state the image must keep.
    func pageCategories(_ m: Mapping) -> (inverted: UInt64, mask: UInt64, anyOf: UInt64)? {
        // Restored empty (where the flags are known only after the scan, its pages are saved and left out then).
        if m.droppable == true { return nil }
        switch m.kind {
        case .vdso, .vvar, .vvarClock, .vsyscall: return nil
        case .file where m.shared, .memfd where m.shared: return nil  // the file itself holds them
        case .sharedAnonymous where m.shared, .sysvShm: return nil  // saved once from the object itself
        case .aioRing: return nil  // made again empty by io_setup
        case .packetRing: return nil  // the socket's own memory, made again empty with its rings
        case .anonymous, .heap, .stack:
            // Nothing but anonymous pages here, so no PAGE_IS_FILE test: asking for it
            // makes the kernel look up every page's struct page (5x the scan time).
            let notZero = UInt64(CRYO_PAGE_IS_PFNZERO)
            return (notZero, notZero, UInt64(CRYO_PAGE_IS_PRESENT | CRYO_PAGE_IS_SWAPPED))
        default:
            // Private: written (anonymous) pages only; file pages still come from the file.
            let notFileNotZero = UInt64(CRYO_PAGE_IS_FILE | CRYO_PAGE_IS_PFNZERO)
            return (notFileNotZero, notFileNotZero, UInt64(CRYO_PAGE_IS_PRESENT | CRYO_PAGE_IS_SWAPPED))
        }
    }

    /// The page ranges to save, in address order, as PAGEMAP_SCAN reports them
    /// (`extraCategories` are returned too, splitting regions where they differ),
    /// each inside one mapping.
    /// One ioctl covers many mappings of the same categories (gaps between them cost
    /// the kernel nothing): 10,000 small mappings took 10,000 ioctls one by one.
    /// The kernel walks every page table entry (about 4 ms for 2 GiB here): the
    /// address space is cut into pieces of at most `piece` mapped bytes that both
    /// CPUs take turns at.
    /// Guard regions (MADV_GUARD_INSTALL) are never among them: the kernel reports a guard page as
    /// swapped, and reading it fails with EIO.
    func scanPages(pid: pid_t, pagemap: FileDescriptor, extraCategories: UInt64 = 0,
                   statistics: inout DumpStatistics) throws -> [cryo_page_region] {
        try scanPagesAndGuards(pid: pid, pagemap: pagemap, extraCategories: extraCategories, statistics: &statistics,
                               sharedGuards: false).pages
    }

    /// The same, and the guard regions (MADV_GUARD_INSTALL), in address order, where the kernel reports them
    /// (PAGE_IS_GUARD, Linux 6.15; without it the kernel has none to find, or is 6.13 or 6.14, whose guard pages fail
    /// the copy with EIO). Those of private mappings come from the same walk; `sharedGuards` walks the
    /// shared mappings too (a guard region of a file, Linux 6.15), whose pages are never read.
    func scanPagesAndGuards(pid: pid_t, pagemap: FileDescriptor, extraCategories: UInt64 = 0,
                            statistics: inout DumpStatistics, sharedGuards: Bool) throws -> (pages: [cryo_page_region], guards: [Range<UInt64>]) {
        let guardBit = Pagemap.reportsGuards(pagemap) ? UInt64(CRYO_PAGE_IS_GUARD) : 0
        let scanned = try scanPages(pid: pid, pagemap: pagemap, extraCategories: extraCategories | guardBit, statistics: &statistics,
                                    categories: pageCategories)
        var pages: [cryo_page_region] = []
        pages.reserveCapacity(scanned.count)
        var guards: [Range<UInt64>] = []
        for region in scanned {
            if region.categories & guardBit == 0 { pages.append(region) } else { guards.append(region.start..<region.end) }
        }
        guard guardBit != 0, sharedGuards, mappings.contains(where: { $0.shared }) else { return (pages, guards) }
        var unused = DumpStatistics()
        let shared = try scanPages(pid: pid, pagemap: pagemap, extraCategories: guardBit, statistics: &unused) { m in
            // Not the kernel's own mappings or a socket's rings, nor hugetlb memory: no guard region goes there.
            m.shared && !m.isSpecial && m.kind != .aioRing && m.kind != .packetRing && m.hugePageSize == nil ? (0, 0, guardBit) : nil
        }
        if shared.isEmpty { return (pages, guards) }
        // Each range lies inside one mapping, private or shared: no two overlap.
        return (pages, (guards + shared.map { $0.start..<$0.end }).sorted { $0.lowerBound < $1.lowerBound })
    }

    private func scanPages(pid: pid_t, pagemap: FileDescriptor, extraCategories: UInt64, statistics: inout DumpStatistics,
                           categories pageCategories: (Mapping) -> (inverted: UInt64, mask: UInt64, anyOf: UInt64)?) throws -> [cryo_page_region] {
        let piece: UInt64 = 64 << 20
        typealias Categories = (inverted: UInt64, mask: UInt64, anyOf: UInt64)
        // `mappings`: the indices of the mappings the range covers, in order.
        var work: [(range: Range<UInt64>, categories: Categories, mappings: Range<Int>)] = []
        var cuts: Set<UInt64> = []  // piece boundaries inside a mapping
        var batch: (range: Range<UInt64>, categories: Categories, mappings: Range<Int>, bytes: UInt64)? = nil
        func flush() {
            if let b = batch { work.append((b.range, b.categories, b.mappings)) }
            batch = nil
        }
        for (i, m) in mappings.enumerated() {
            // A mapping left out ends the batch: the scan must not reach its pages.
            guard let categories = pageCategories(m) else { flush(); continue }
            statistics.pagesScanned += m.length / 4096
            if let b = batch, b.categories == categories, b.bytes + m.length <= piece {
                batch = (b.range.lowerBound..<m.end, categories, b.mappings.lowerBound..<(i + 1), b.bytes + m.length)
                continue
            }
            flush()
            if m.length <= piece {
                batch = (m.start..<m.end, categories, i..<(i + 1), m.length)
                continue
            }
            for start in stride(from: m.start, to: m.end, by: Int(piece)) {
                work.append((start..<min(start + piece, m.end), categories, i..<(i + 1)))
                if start != m.start { cuts.insert(start) }
            }
        }
        flush()
        let found = UnsafeMutableBufferPointer<[cryo_page_region]>.allocate(capacity: work.count)
        found.initialize(repeating: [])
        defer { found.deinitialize(); found.deallocate() }
        // A second thread costs more than scanning a small process (a tree has many).
        let scanned = work.reduce(0) { $0 + UInt64($1.range.count) }
        try shareWork(count: work.count, share: scanned >= 4 * piece) { i in
            // Not more than 512: with 1024 or 4096 entries Linux 6.18 reported some regions twice
            // (over 10,000 mappings of the bench's shape, 11,296 regions instead of 10,000).
            var regions = [cryo_page_region](repeating: cryo_page_region(), count: 512)
            let (range, categories, covered) = work[i]
            var cursor = range.lowerBound
            var m = covered.lowerBound  // the mapping the next region starts in or after
            while cursor < range.upperBound {
                var arg = cryo_pm_scan_arg()
                arg.start = cursor
                arg.end = range.upperBound
                arg.category_inverted = categories.inverted
                arg.category_mask = categories.mask
                arg.category_anyof_mask = categories.anyOf
                arg.return_mask = categories.anyOf | extraCategories
                let count = try regions.withUnsafeMutableBufferPointer { (vec) throws -> Int in
                    try Pagemap.scan(pagemap, &arg, into: vec, pid: pid, object: "address 0x\(String(cursor, radix: 16))")
                }
                // The kernel joins like pages across adjacent mappings: cut them apart again, and keep
                // nothing outside the mappings covered (no other mapping lies between them in a frozen
                // task, but only these were asked for).
                for r in regions.prefix(count) {
                    var start = r.start
                    while start < r.end {
                        while m < covered.upperBound && mappings[m].end <= start { m += 1 }
                        guard m < covered.upperBound else { break }
                        let mapping = mappings[m]
                        if mapping.start >= r.end { break }
                        start = max(start, mapping.start)
                        var part = r
                        part.start = start
                        part.end = min(r.end, mapping.end)
                        // An image with a page twice would be refused at restore: refuse it now.
                        if let last = found[i].last, last.end > part.start {
                            throw CryoError("pid \(pid): PAGEMAP_SCAN reported the page at 0x\(String(part.start, radix: 16)) twice")
                        }
                        found[i].append(part)
                        start = part.end
                    }
                }
                cursor = arg.walk_end > cursor ? arg.walk_end : range.upperBound
            }
        }
        // A region cut by a piece boundary is put back together.
        var result: [cryo_page_region] = []
        result.reserveCapacity(found.reduce(0) { $0 + $1.count })
        for region in found.joined() {
            if let last = result.last, last.end == region.start, last.categories == region.categories, cuts.contains(region.start) {
                result[result.count - 1].end = region.end
            } else {
                result.append(region)
            }
        }
        return result
    }

    /// The address ranges whose pages go into the image, in order (PAGEMAP_SCAN); the guard regions go into `guards`.
    mutating func presentPages(pid: pid_t, statistics: inout DumpStatistics) throws -> [Range<UInt64>] {
        let pagemap = try Files.open("/proc/\(pid)/pagemap", .readOnly)
        defer { try? pagemap.close() }
        let (pages, guards) = try scanPagesAndGuards(pid: pid, pagemap: pagemap, statistics: &statistics, sharedGuards: true)
        self.guards = guards.isEmpty ? nil : guards.map { [$0.lowerBound, $0.upperBound] }
        return pages.map { $0.start..<$0.end }
    }

    /// Copies the pages that matter into `pagesPath` (and, for a large copy, its part files) and returns their index.
    /// `inTask`, when given, copies large amounts through the parasite (InTaskPageCopy);
    /// `compress` writes them as zstd frames (PageFrames), read with process_vm_readv.
    /// `settled` is called once the address space will change no more (for MappingsPrefetch).
    /// `select`, when given, picks from the present pages those to write (CopyOnWrite: not the ones shared with the parent).
    mutating func dumpPages(pid: pid_t, to pagesPath: String, compress: Bool = false, statistics: inout DumpStatistics,
                   inTask: InTaskPageCopy? = nil, select: (([Range<UInt64>]) throws -> [Range<UInt64>])? = nil,
                   settled: () -> Void = {}) throws -> PageIndex {
        let out = try Files.open(pagesPath, .writeOnly, options: [.create, .exclusiveCreate, .noFollow], permissions: [.ownerReadWrite])
        defer { try? out.close() }
        let present = try presentPages(pid: pid, statistics: &statistics)
        let regions = try select?(present) ?? present
        var runs: [PageRun] = []
        runs.reserveCapacity(regions.count)
        var total: UInt64 = 0
        for region in regions {
            runs.append(PageRun(address: region.lowerBound, length: UInt64(region.count), offset: total))
            total += UInt64(region.count)
        }
        statistics.pagesWritten += total / 4096
        if compress {
            settled()
            let frames = try copyCompressed(pid: pid, runs: runs, total: total, to: out, path: pagesPath)
            return PageIndex(runs: runs, pagesFileSize: frames.fileSize, compression: frames.frames)
        }
        if let inTask, total >= InTaskPageCopy.threshold {
            let unreadable = mappings.filter { !$0.protection.contains("r") }.map { $0.start..<$0.end }
            let tail = try inTask.copy(regions, unreadable: unreadable, to: out, path: pagesPath,
                                       partPath: ImagePaths.part(1, of: pagesPath), injected: settled)
            return PageIndex(runs: runs, pagesFileSize: total - tail, parts: tail > 0 ? [tail] : nil)
        }
        settled()
        do {
            try copyByReading(pid: pid, regions: regions, to: out, path: pagesPath)
        } catch let error as SyscallError where error.errno == .ioError && !Pagemap.reportsGuards(pid: pid) {
            throw CryoError("\(error); a guard region (MADV_GUARD_INSTALL) reads so, and this kernel cannot report them (PAGEMAP_SCAN's PAGE_IS_GUARD, Linux 6.15)")
        }
        return PageIndex(runs: runs, pagesFileSize: total)
    }

    /// process_vm_readv into buffers that a second thread writes out. A buffer takes
    /// as many regions as fit (small mappings are many: one read for up to 1024 of them).
    private func copyByReading(pid: pid_t, regions: [Range<UInt64>], to out: FileDescriptor, path: String) throws {
        let writer = PageWriter(file: out, path: path)
        defer { writer.close() }
        var forced: FileDescriptor? = nil
        defer { try? forced?.close() }
        var fileOffset: UInt64 = 0
        var pending: [Range<UInt64>] = []  // the next buffer's share of the stream
        var pendingBytes = 0
        func flush() throws {
            guard pendingBytes > 0 else { return }
            let sources = pending
            try writer.write(count: pendingBytes, at: Int64(fileOffset)) { view in
                try RemoteMemory.read(pid, ranges: sources, into: view, forced: &forced)
            }
            fileOffset += UInt64(pendingBytes)
            pending.removeAll(keepingCapacity: true)
            pendingBytes = 0
            killPoint("pages")
        }
        for region in regions {
            var address = region.lowerBound
            while address < region.upperBound {
                let chunk = Int(min(UInt64(PageWriter.bufferSize - pendingBytes), region.upperBound - address))
                pending.append(address..<(address + UInt64(chunk)))
                pendingBytes += chunk
                address += UInt64(chunk)
                if pendingBytes == PageWriter.bufferSize { try flush() }
            }
        }
        try flush()
        try writer.finish()
    }

    /// The same, cut into frames at fixed offsets of the page stream (across
    /// runs), each compressed by the writer thread.
    private func copyCompressed(pid: pid_t, runs: [PageRun], total: UInt64, to out: FileDescriptor,
                                path: String) throws -> (frames: PageFrames, fileSize: UInt64) {
        let writer = PageWriter(file: out, path: path, compress: true)
        defer { writer.close() }
        let frameSize = PageFrames.defaultFrameSize
        var runIndex = 0
        var runOffset: UInt64 = 0
        for frameStart in stride(from: UInt64(0), to: total, by: Int(frameSize)) {
            let count = Int(min(frameSize, total - frameStart))
            try writer.writeFrame(count: count) { view in
                var filled = 0
                while filled < count {
                    let run = runs[runIndex]
                    let take = Int(min(run.length - runOffset, UInt64(count - filled)))
                    try RemoteMemory.read(pid, at: run.address + runOffset,
                                          into: UnsafeMutableRawBufferPointer(rebasing: view[filled..<(filled + take)]))
                    filled += take
                    runOffset += UInt64(take)
                    if runOffset == run.length { runIndex += 1; runOffset = 0 }
                }
            }
            killPoint("pages")
        }
        let (frames, fileSize) = try writer.finishFrames()
        return (PageFrames(frameSize: frameSize, frames: frames), fileSize)
    }

    /// Everything is checked before any task is created: order, overlap, sizes, page runs.
    /// `pagesFiles`: the name and size of every file of the page stream, pages-PID.img first.
    func validate(file: String, index: PageIndex, pagesFiles: [(name: String, size: UInt64)]) throws {
        if let flags = lockFuture, flags != MemoryRecord.lockFutureFlags, flags != MemoryRecord.lockFutureFlags | 4 /* MCL_ONFAULT */ {
            throw ImageError(file: file, record: "memory", "mlockall flags \(flags) are not MCL_FUTURE, with MCL_ONFAULT or not")
        }
        var previousEnd: UInt64 = 0
        for m in mappings {
            // Only for an error: formatting it for every one of 10,000 mappings was most of this check.
            var label: String { "mapping 0x\(String(m.start, radix: 16))" }
            guard m.start < m.end, m.start % 4096 == 0, m.end % 4096 == 0, m.start >= previousEnd else {
                throw ImageError(file: file, record: "memory", "\(label): misaligned, empty or overlapping")
            }
            guard m.kind == .vsyscall || m.end <= 0x7fff_ffff_f000 else {
                throw ImageError(file: file, record: "memory", "\(label): beyond the user address space")
            }
            if m.kind == .file && (m.path ?? "").isEmpty { throw ImageError(file: file, record: "memory", "\(label): file mapping without a path") }
            if (m.kind == .aioRing) != (m.aioEvents != nil) || m.aioEvents == 0 {
                throw ImageError(file: file, record: "memory", "\(label): AIO ring without its event count, or the reverse")
            }
            if m.kind == .memfd || m.kind == .packetRing ? m.file == nil : (m.file != nil) != (m.kind == .file && m.deleted == true) { throw ImageError(file: file, record: "memory", "\(label): memfd mapping without its file, or the reverse") }
            if m.droppable == true && (m.shared || m.kind != .anonymous || m.hugePageSize != nil) {
                throw ImageError(file: file, record: "memory", "\(label): droppable memory that is not private and anonymous")
            }
            if m.kind == .packetRing && m.fileOffset != 0 {
                throw ImageError(file: file, record: "memory", "\(label): a packet ring mapped from an offset")
            }
            previousEnd = m.end
        }
        for contents in aioRings ?? [] {
            let ring = mappings.first { $0.kind == .aioRing && $0.start == contents.ring }
            guard let events = ring?.aioEvents, contents.head < events, contents.events.count % AioRing.eventBytes == 0,
                  contents.events.count / AioRing.eventBytes < Int(events) else {
                throw ImageError(file: file, record: "memory", "AIO ring 0x\(String(contents.ring, radix: 16)): no such ring, or a head or events that do not fit it")
            }
        }
        // Guard regions: in order, each inside one mapping that is not the kernel's, and holding no saved page (below).
        var mappingCursor = 0, guardEnd: UInt64 = 0
        for range in guards ?? [] {
            while mappingCursor < mappings.count && mappings[mappingCursor].end <= (range.first ?? 0) { mappingCursor += 1 }
            guard range.count == 2, range[0] < range[1], range[0] % 4096 == 0, range[1] % 4096 == 0, range[0] >= guardEnd,
                  mappingCursor < mappings.count, mappings[mappingCursor].start <= range[0], range[1] <= mappings[mappingCursor].end,
                  !mappings[mappingCursor].isSpecial else {
                throw ImageError(file: file, record: "memory", "guard region \(range) is malformed, out of order or outside every mapping")
            }
            guardEnd = range[1]
        }
        guard index.parts == nil || (index.compression == nil && index.parts!.allSatisfy { $0 > 0 && $0 % 4096 == 0 }) else {
            throw ImageError(file: file, record: "pageIndex", "parts \(index.parts!) are empty, unaligned or compressed")
        }
        for (expected, found) in zip(index.fileSizes, pagesFiles) where expected != found.size {
            throw ImageError(file: found.name, "is \(found.size) bytes, the page index expects \(expected) (truncated or replaced)")
        }
        // Run offsets are in the page stream: the files one after another, or the uncompressed frames.
        let streamSize = index.compression == nil ? index.fileSizes.reduce(0, +) : UInt64.max
        // Runs in address order, each inside one mapping: one walk over runs and mappings together.
        var expectedOffset: UInt64 = 0, previousRunEnd: UInt64 = 0
        var cursor = 0
        let guardRanges = guards ?? []
        var guardCursor = 0
        for run in index.runs {
            while guardCursor < guardRanges.count && guardRanges[guardCursor][1] <= run.address { guardCursor += 1 }
            if guardCursor < guardRanges.count && guardRanges[guardCursor][0] < run.end {
                throw ImageError(file: file, record: "pageIndex", "page run \(run) holds part of guard region \(guardRanges[guardCursor])")
            }
            while cursor < mappings.count && mappings[cursor].end <= run.address { cursor += 1 }
            // Compressed streams are cut into frames by offset: consecutive there. Raw ones may point anywhere
            // inside the stream (a migrated image keeps each page where it arrived, in whichever round).
            guard run.length > 0, run.address % 4096 == 0, run.length % 4096 == 0,
                  index.compression == nil ? run.offset % 4096 == 0 : run.offset == expectedOffset,
                  run.offset <= streamSize, run.length <= streamSize - run.offset, run.address >= previousRunEnd,
                  run.length <= UInt64.max - run.address, cursor < mappings.count, mappings[cursor].start <= run.address,
                  run.end <= mappings[cursor].end, !mappings[cursor].isSpecial else {
                throw ImageError(file: file, record: "pageIndex", "page run \(run) is malformed, out of order or outside every mapping")
            }
            expectedOffset += run.length
            previousRunEnd = run.end
        }
        if let frames = index.compression {
            try frames.validate(file: file, pageBytes: expectedOffset, pagesFileSize: index.pagesFileSize)
        }
    }
}

/// Copies pages out of the frozen task into one buffer while the previous
/// one is written to the image by a second thread, so reading the task and
/// writing the page cache overlap instead of adding up. When compressing,
/// that thread also compresses each buffer as one frame. (No ptrace here:
/// process_vm_readv works from any thread.)
final class PageWriter: @unchecked Sendable {
    static let bufferSize = 8 << 20
    let bufferSize: Int
    private let file: FileDescriptor
    private let path: String
    private let queue = DispatchQueue(label: "cryo.page-writer")
    private let free = DispatchSemaphore(value: 3)
    private let lock = Lock()
    private var idle: [UnsafeMutableRawBufferPointer] = []
    private var all: [UnsafeMutableRawBufferPointer] = []
    private var failure: Error?
    // Used on `queue` only.
    private var compressor: OpaquePointer?
    private var scratch: UnsafeMutableRawBufferPointer?
    private var fileEnd: UInt64 = 0
    private var frames: [[UInt64]] = []

    init(file: FileDescriptor, path: String, compress: Bool = false) {
        self.file = file
        self.path = path
        bufferSize = compress ? Int(PageFrames.defaultFrameSize) : PageWriter.bufferSize
        if compress {
            compressor = PageCompression.makeCompressor()
            scratch = .allocate(byteCount: PageCompression.bound(bufferSize), alignment: 4096)
        }
        for _ in 0..<3 {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 4096)
            idle.append(buffer)
            all.append(buffer)
        }
    }

    /// Fills a free buffer on this thread with `fill`, then writes it at `offset` in the background.
    func write(count: Int, at offset: Int64, fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        try submit(count: count, fill: fill) { [self] bytes in try Files.write(file, bytes, at: offset, path: path) }
    }

    /// Fills a buffer with one frame's worth of pages, then compresses it and
    /// appends it to the file in the background (frames stay in order: one queue).
    func writeFrame(count: Int, fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        try submit(count: count, fill: fill) { [self] bytes in
            let size = try PageCompression.compress(compressor!, bytes, into: scratch!)
            let stored = UnsafeRawBufferPointer(rebasing: scratch![0..<size])
            try Files.write(file, stored, at: Int64(fileEnd), path: path)
            frames.append([fileEnd, UInt64(stored.count)])
            fileEnd += UInt64(stored.count)
        }
    }

    private func submit(count: Int, fill: (UnsafeMutableRawBufferPointer) throws -> Void,
                        job: @escaping @Sendable (UnsafeRawBufferPointer) throws -> Void) throws {
        try raiseFailure()
        free.wait()
        let buffer = lock.withLock { idle.removeLast() }
        let view = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
        do { try fill(view) } catch {
            lock.withLock { idle.append(buffer) }
            free.signal()
            throw error
        }
        let address = UInt(bitPattern: buffer.baseAddress)
        let size = bufferSize
        queue.async { [self] in
            let bytes = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: count)
            if lock.withLock({ failure == nil }) {
                do { try job(bytes) } catch {
                    lock.withLock { if failure == nil { failure = error } }
                }
            }
            let back = UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: address), count: size)
            lock.withLock { idle.append(back) }
            free.signal()
        }
    }

    /// Waits for every write and reports the first that failed.
    func finish() throws {
        queue.sync {}
        try raiseFailure()
    }

    /// The frames written, [file offset, stored bytes] each, and the file's size.
    func finishFrames() throws -> ([[UInt64]], UInt64) {
        try finish()
        return queue.sync { (frames, fileEnd) }
    }

    private func raiseFailure() throws {
        if let error = lock.withLock({ failure }) { throw error }
    }

    func close() {
        queue.sync {}
        for buffer in all { buffer.deallocate() }
        all = []
        scratch?.deallocate()
        scratch = nil
        if let compressor { PageCompression.freeCompressor(compressor) }
        compressor = nil
    }
}

/// The saved pages of one process, read back through its page index: the one
/// way restore, `show --pages` and lazy restore get page bytes, whether the
/// file is raw or compressed (only the frames that hold the bytes are read).
final class PageReader {
    let index: PageIndex
    let path: String
    /// Every file of the stream, pages-PID.img first (then PageIndex.parts).
    private var files: [FileDescriptor] = []
    private var file: FileDescriptor { files[0] }
    private var decompressor: OpaquePointer?
    private var frameBuffer: UnsafeMutableRawBufferPointer?
    private var compressedBuffer: UnsafeMutableRawBufferPointer?
    private var cachedFrame = -1

    /// Bytes of the whole page stream: `index.pageBytes`, unless `index` holds only some of the runs
    /// (lazy restore fills the others later) and `streamBytes` gives the whole.
    let streamBytes: UInt64

    init(path: String, index: PageIndex, streamBytes: UInt64? = nil) throws {
        self.path = path
        self.index = index
        self.streamBytes = streamBytes ?? index.pageBytes
        do {
            for part in index.fileSizes.indices { files.append(try Files.open(ImagePaths.part(part, of: path), .readOnly)) }
        } catch {
            for fd in files { try? fd.close() }
            throw error
        }
        if let frames = index.compression {
            decompressor = PageCompression.makeDecompressor()
            frameBuffer = .allocate(byteCount: Int(frames.frameSize), alignment: 4096)
            compressedBuffer = .allocate(byteCount: PageCompression.bound(Int(frames.frameSize)), alignment: 4096)
        }
    }

    deinit {
        for fd in files { try? fd.close() }
        frameBuffer?.deallocate()
        compressedBuffer?.deallocate()
        if let decompressor { PageCompression.freeDecompressor(decompressor) }
    }

    private var name: String { fileName(of: path) }

    /// The saved run holding `address`, if any.
    func run(containing address: UInt64) -> PageRun? {
        let runs = index.runs
        var low = 0, high = runs.count
        while low < high {
            let mid = (low + high) / 2
            if runs[mid].end <= address { low = mid + 1 } else { high = mid }
        }
        return low < runs.count && runs[low].address <= address ? runs[low] : nil
    }

    /// The saved bytes of [address, address + buffer.count); every byte must be in a saved run.
    func read(address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            let at = address + UInt64(done)
            guard let run = run(containing: at) else {
                throw CryoError("\(name): address 0x\(String(at, radix: 16)) is not among the saved pages")
            }
            let take = Int(min(UInt64(buffer.count - done), run.end - at))
            try readStream(offset: run.offset + (at - run.address), into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + take)]))
            done += take
        }
    }

    /// Every saved byte in address order, in pieces that do not cross a run
    /// or a frame: `body(address, bytes)`.
    func forEachPiece(_ body: (UInt64, UnsafeRawBufferPointer) throws -> Void) throws {
        let piece: UInt64 = index.compression?.frameSize ?? UInt64(PageWriter.bufferSize)
        let scratch = index.compression == nil ? UnsafeMutableRawBufferPointer.allocate(byteCount: Int(piece), alignment: 4096) : nil
        defer { scratch?.deallocate() }
        for run in index.runs {
            var done: UInt64 = 0
            while done < run.length {
                let offset = run.offset + done
                let take = min(run.length - done, piece - offset % piece)
                if let scratch {
                    let view = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<Int(take)])
                    try readStream(offset: offset, into: view)
                    try body(run.address + done, UnsafeRawBufferPointer(view))
                } else {
                    let frame = try decodedFrame(Int(offset / piece))
                    let start = Int(offset % piece)
                    try body(run.address + done, UnsafeRawBufferPointer(rebasing: frame[start..<(start + Int(take))]))
                }
                done += take
            }
        }
    }

    /// Bytes of the page stream at `offset` (lazy restore reads by offset: pages keep theirs when moved).
    func readStream(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        guard let frames = index.compression else {
            var done = 0
            for piece in index.pieces(offset: offset, length: UInt64(buffer.count)) {
                let fd = files[piece.part]
                let view = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + Int(piece.length))])
                let n = try fd.read(fromAbsoluteOffset: Int64(piece.offset), into: view)
                if n != view.count {
                    throw CryoError("\(fileName(of: ImagePaths.part(piece.part, of: path))): short read at offset \(piece.offset) (truncated)")
                }
                done += view.count
            }
            if done != buffer.count { throw CryoError("\(name): offset \(offset) is beyond the saved pages") }
            return
        }
        var done = 0
        while done < buffer.count {
            let at = offset + UInt64(done)
            let frame = try decodedFrame(Int(at / frames.frameSize))
            let start = Int(at % frames.frameSize)
            let take = min(buffer.count - done, frame.count - start)
            UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + take)])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: frame[start..<(start + take)]))
            done += take
        }
    }

    /// One frame, uncompressed (the last one decoded is kept).
    private func decodedFrame(_ i: Int) throws -> UnsafeMutableRawBufferPointer {
        let frames = index.compression!
        let length = Int(min(frames.frameSize, streamBytes - UInt64(i) * frames.frameSize))
        let out = UnsafeMutableRawBufferPointer(rebasing: frameBuffer![0..<length])
        if cachedFrame == i { return out }
        cachedFrame = -1
        let (offset, stored) = (frames.frames[i][0], Int(frames.frames[i][1]))
        let target = UnsafeMutableRawBufferPointer(rebasing: compressedBuffer![0..<stored])
        let n = try file.read(fromAbsoluteOffset: Int64(offset), into: target)
        guard n == stored else {
            throw ImageError(file: name, "compressed frame #\(i) at offset \(offset): \(n) of \(stored) bytes present (truncated)")
        }
        if let problem = PageCompression.decompress(decompressor!, UnsafeRawBufferPointer(target), into: out) {
            throw ImageError(file: name, "compressed frame #\(i) at offset \(offset): \(problem) (corrupt)")
        }
        cachedFrame = i
        return out
    }
}

func parseDevice(_ text: String) -> (UInt32, UInt32) {
    // On bytes: once per mapping, and split() made arrays of substrings for it.
    let bytes = text.utf8
    guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")), bytes[bytes.index(after: colon)...].firstIndex(of: UInt8(ascii: ":")) == nil,
          let major = parseHex(bytes[..<colon]), let minor = parseHex(bytes[bytes.index(after: colon)...]),
          major <= UInt32.max, minor <= UInt32.max else { return (0, 0) }
    return (UInt32(major), UInt32(minor))
}

/// Figures like CRIU's stats-dump, kept in the image folder.
public struct DumpStatistics: Codable, Sendable {
    public var processes: Int = 0
    public var frozenSeconds: Double = 0
    public var memoryDumpSeconds: Double = 0
    public var pagesScanned: UInt64 = 0
    public var pagesWritten: UInt64 = 0
    /// After a pre-dump: pages taken from its image instead of the frozen task.
    public var pagesFromPreDump: UInt64? = nil
}

// MARK: - Restore

/// Builds the RESTORE_MEMORY command for a new task whose current layout is
/// `current`, with the parasite at `parasite`.
struct MemoryRestorePlan {
    var payload: [UInt8]
    /// MAP_DROPPABLE (Linux 6.11), which Debian 12's headers lack.
    static let mapDroppable: Int32 = 0x08

    /// What a new task has that goes: all but the parasite and the kernel's
    /// special mappings (those are moved, not dropped).
    /// Ranges in `keep` (mappings inherited from the parent, CopyOnWrite.swift) stay.
    static func dropped(_ current: [ProcMapping], parasite: Range<UInt64>, keep: [Range<UInt64>] = [])
        -> (unmaps: [cryo_range], specials: [(kind: MemoryRecord.Kind, range: Range<UInt64>)]) {
        let specialNames: [String: MemoryRecord.Kind] = ["[vdso]": .vdso, "[vvar]": .vvar, "[vvar_vclock]": .vvarClock]
        var unmaps: [cryo_range] = []
        var specials: [(kind: MemoryRecord.Kind, range: Range<UInt64>)] = []
        for m in current {
            if m.start >= parasite.lowerBound && m.end <= parasite.upperBound { continue }
            if m.path == "[vsyscall]" { continue }
            if let kind = specialNames[m.path] {
                specials.append((kind, m.start..<m.end))
                continue
            }
            for piece in CopyOnWrite.subtract(keep, from: [m.start..<m.end]) {
                if let last = unmaps.last, last.end == piece.lowerBound { unmaps[unmaps.count - 1].end = piece.upperBound } else {
                    unmaps.append(cryo_range(start: piece.lowerBound, end: piece.upperBound))
                }
            }
        }
        return (unmaps, specials)
    }

    /// RESTORE_MEMORY that only drops the controller's address space a task
    /// cloned from cryo starts with, so that its children do not copy it again.
    static func shedding(current: [ProcMapping], parasite: Range<UInt64>, oldRseq: cryo_rseq_config) -> [UInt8] {
        let unmaps = dropped(current, parasite: parasite).unmaps
        var header = cryo_restore_memory()
        header.unmap_count = UInt64(unmaps.count)
        header.old_rseq = oldRseq.rseq_abi_pointer
        header.old_rseq_length = oldRseq.rseq_abi_size
        header.old_rseq_signature = oldRseq.signature
        return bytes(of: header) + bytes(of: unmaps)
    }

    init(record: MemoryRecord, index: PageIndex, current: [ProcMapping], parasite: Range<UInt64>,
         temporary: UInt64, pagesFDs: [Int32], fileFD: (MemoryRecord.Mapping) throws -> Int32,
         oldRseq: cryo_rseq_config, keepInherited: Bool = true, extraRuns: [cryo_page_run] = [], ancestorGuards: Bool = false) throws {
        // Mappings inherited from the parent are in place already, shared copy-on-write: they stay.
        // Without (keepInherited false) they are mapped afresh and `extraRuns` (the parent's pages) fill them.
        let kept = keepInherited ? record.keptFromParent : []
        for range in kept where !CopyOnWrite.subtract(current.map { $0.start..<$0.end }, from: [range]).isEmpty {
            throw CryoError("mapping 0x\(hex(range.lowerBound))-0x\(hex(range.upperBound)) inherited from the parent is not in the new task's layout")
        }
        var (unmaps, currentSpecials) = MemoryRestorePlan.dropped(current, parasite: parasite, keep: kept)
        // The kernel's vDSO pages move to where the image had them: first aside,
        // then into place, so no move lands on another special mapping.
        var remaps: [cryo_remap] = []
        var aside = temporary
        var parked: [(MemoryRecord.Kind, UInt64, UInt64)] = []
        for special in currentSpecials {
            let length = UInt64(special.range.count)
            guard let wanted = record.mappings.first(where: { $0.kind == special.kind }) else {
                unmaps.append(cryo_range(start: special.range.lowerBound, end: special.range.upperBound))
                continue
            }
            guard wanted.length == length else {
                throw CryoError("the image's \(special.kind) is \(wanted.length) bytes, this kernel's is \(length): "
                    + "restore on the kernel the image was made on")
            }
            remaps.append(cryo_remap(from: special.range.lowerBound, length: length, to: aside))
            parked.append((special.kind, aside, length))
            aside += length
        }
        for (kind, from, length) in parked {
            let wanted = record.mappings.first(where: { $0.kind == kind })!
            remaps.append(cryo_remap(from: from, length: length, to: wanted.start))
        }
        for wanted in record.mappings where [.vdso, .vvar, .vvarClock].contains(wanted.kind) {
            if !currentSpecials.contains(where: { $0.kind == wanted.kind }) {
                throw CryoError("the image has \(wanted.kind) at 0x\(String(wanted.start, radix: 16)) but this kernel gave the new task none")
            }
        }

        var vmas: [cryo_vma] = []
        var runs: [cryo_page_run] = []
        vmas.reserveCapacity(record.mappings.count + kept.count)
        runs.reserveCapacity(index.runs.count + extraRuns.count)
        var runCursor = 0, keptCursor = 0
        let sortedRuns = index.runs
        // The parent's runs, walked with the mappings (a filter per mapping cost mappings × runs).
        let sortedExtra = extraRuns.sorted { $0.address < $1.address }
        var extraCursor = 0
        for m in record.mappings where !m.isSpecial && m.kind != .aioRing {  // rings come from io_setup afterwards
            var vma = cryo_vma()
            vma.prot = UInt32(m.prot)
            // MAP_DROPPABLE is a mapping type of its own, in place of MAP_PRIVATE.
            var flags = m.shared ? MAP_SHARED : m.droppable == true ? MemoryRestorePlan.mapDroppable : MAP_PRIVATE
            let backedByFile = m.kind == .file || m.kind == .memfd || m.kind == .sharedAnonymous || m.kind == .packetRing
            if !backedByFile { flags |= MAP_ANONYMOUS }
            if m.growsDown { flags |= MAP_GROWSDOWN }
            if m.noReserve { flags |= MAP_NORESERVE }
            if let size = m.hugePageSize, !backedByFile { flags |= Hugetlb.mapFlags(size) }
            vma.flags = UInt32(flags)
            vma.fd = backedByFile ? try fileFD(m) : -1
            vma.madvise = m.advice | (m.needsWritableFile ? CRYO_VMA_MAYWRITE : 0)
            if m.kind == .sysvShm, let id = m.inode { vma.sysv_shm = UInt32(id) + 1 }
            var mappingRuns: [cryo_page_run] = []
            // Compressed pages are not the parasite's to read: fillPages writes them afterwards.
            while index.compression == nil && runCursor < sortedRuns.count && sortedRuns[runCursor].address < m.end {
                let run = sortedRuns[runCursor]
                var address = run.address
                for piece in index.pieces(offset: run.offset, length: run.length) {
                    mappingRuns.append(cryo_page_run(address: address, length: piece.length, file_offset: piece.offset,
                                                     fd: pagesFDs[piece.part], pad: 0))
                    address += piece.length
                }
                runCursor += 1
            }
            var extra: [cryo_page_run] = []
            while extraCursor < sortedExtra.count && sortedExtra[extraCursor].address < m.start { extraCursor += 1 }
            while extraCursor < sortedExtra.count && sortedExtra[extraCursor].address < m.end {
                extra.append(sortedExtra[extraCursor])
                extraCursor += 1
            }
            if !extra.isEmpty {
                mappingRuns += extra
                mappingRuns.sort { $0.address < $1.address }
            }
            // Droppable memory comes back empty, as if the kernel had dropped it: its saved bytes (a dump
            // before this rule saved them) are the kind nobody may count on, vgetrandom's state for one,
            // which must not come back twice from one image.
            if m.droppable == true { mappingRuns = [] }
            // The ranges kept from the parent, each its own piece; what lies between them is mapped afresh.
            var keptHere: [Range<UInt64>] = []
            while keptCursor < kept.count && kept[keptCursor].lowerBound < m.end {
                if kept[keptCursor].upperBound > m.start { keptHere.append(kept[keptCursor].clamped(to: m.start..<m.end)) }
                keptCursor += 1
            }
            let pieces = keptHere.isEmpty ? [(m.start..<m.end, false)]
                : (keptHere.map { ($0, true) } + CopyOnWrite.subtract(keptHere, from: [m.start..<m.end]).map { ($0, false) })
                    .sorted { $0.0.lowerBound < $1.0.lowerBound }
            var r = 0
            for (piece, keep) in pieces {
                vma.start = piece.lowerBound
                vma.end = piece.upperBound
                vma.file_offset = backedByFile ? m.fileOffset + (piece.lowerBound - m.start) : 0
                vma.keep = keep ? 1 : 0
                vma.first_run = UInt64(runs.count)
                while r < mappingRuns.count && mappingRuns[r].address < piece.upperBound {
                    var run = mappingRuns[r]
                    let end = run.address + run.length
                    if end <= piece.lowerBound { r += 1; continue }
                    // A run across a piece's end goes on in the next piece.
                    let cut = max(run.address, piece.lowerBound)..<min(end, piece.upperBound)
                    run.file_offset += cut.lowerBound - run.address
                    run.address = cut.lowerBound
                    run.length = UInt64(cut.count)
                    runs.append(run)
                    if end > piece.upperBound { break }
                    r += 1
                }
                vma.run_count = UInt64(runs.count) - vma.first_run
                vmas.append(vma)
            }
        }
        var header = cryo_restore_memory()
        header.unmap_count = UInt64(unmaps.count)
        header.remap_count = UInt64(remaps.count)
        header.vma_count = UInt64(vmas.count)
        header.run_count = UInt64(runs.count)
        header.old_rseq = oldRseq.rseq_abi_pointer
        header.old_rseq_length = oldRseq.rseq_abi_size
        header.old_rseq_signature = oldRseq.signature
        let discards = keepInherited ? (record.discards ?? []).map { cryo_range(start: $0[0], end: $0[1]) } : []
        header.discard_count = UInt64(discards.count)
        let guards = (record.guards ?? []).map { cryo_range(start: $0[0], end: $0[1]) }
        header.guard_count = UInt64(guards.count)
        // A kept mapping comes with the guard regions its parent had at fork, which this task may have removed since.
        header.drop_kept_guards = ancestorGuards && !kept.isEmpty ? 1 : 0
        payload = bytes(of: header) + bytes(of: unmaps) + bytes(of: remaps) + bytes(of: vmas) + bytes(of: runs) + bytes(of: discards)
            + bytes(of: guards)
    }
}

extension MemoryRecord {
    /// Writes the saved pages into a restored task whose mappings are already in
    /// place, piece by piece from `reader` (for images the parasite cannot read
    /// itself: compressed ones). Private mappings are written through the task's
    /// memory (/proc/PID/mem where protection forbids process_vm_writev), shared
    /// ones through their shmem file, so no mapping needs its protection changed.
    func fillPages(pid: pid_t, from reader: PageReader) throws {
        var memory: FileDescriptor? = nil
        var shared: [UInt64: FileDescriptor] = [:]
        defer {
            try? memory?.close()
            for fd in shared.values { try? fd.close() }
        }
        var cursor = 0
        try reader.forEachPiece { address, bytes in
            while cursor < mappings.count && mappings[cursor].end <= address { cursor += 1 }
            guard cursor < mappings.count, mappings[cursor].start <= address else {
                throw CryoError("pid \(pid): saved pages at 0x\(hex(address)) are in no mapping")
            }
            let m = mappings[cursor]
            if m.droppable == true { return }  // comes back empty (MemoryRestorePlan)
            if m.shared {
                if shared[m.start] == nil {
                    shared[m.start] = try Files.open("/proc/\(pid)/map_files/\(hex(m.start))-\(hex(m.end))", .readWrite)
                }
                try Files.write(shared[m.start]!, bytes, at: Int64(m.fileOffset + (address - m.start)), path: "shared memory 0x\(hex(m.start)) of pid \(pid)")
                return
            }
            if m.protection.contains("w"), (try? RemoteMemory.write(pid, at: address, bytes)) != nil { return }
            if memory == nil { memory = try Files.open("/proc/\(pid)/mem", .readWrite) }
            try Files.write(memory!, bytes, at: Int64(bitPattern: address), path: "/proc/\(pid)/mem at 0x\(hex(address))")
        }
    }
}

func bytes<T>(of value: T) -> [UInt8] { withUnsafeBytes(of: value) { [UInt8]($0) } }
func bytes<T>(of values: [T]) -> [UInt8] { values.withUnsafeBytes { [UInt8]($0) } }
/// A parasite structure that ends in an array of queued signals, sent up to its `count` entries: the
/// whole array is 34 KiB, almost always empty, and written into fresh pages of every task.
func trimmedSignals<T>(of value: T, signalsAt offset: Int, count: Int) -> [UInt8] {
    withUnsafeBytes(of: value) { [UInt8]($0.prefix(offset + count * MemoryLayout<cryo_queued_signal>.stride)) }
}

/// A free range of `size` bytes outside every range in `occupied`, as high as possible below the usual mmap area top.
func findFreeRange(size: UInt64, occupied: [Range<UInt64>]) -> UInt64? {
    let margin: UInt64 = 0x10_0000
    var ceiling: UInt64 = 0x7fff_0000_0000
    for range in occupied.sorted(by: { $0.lowerBound > $1.lowerBound }) {
        if range.upperBound <= ceiling && ceiling - range.upperBound >= size + 2 * margin {
            return (ceiling - margin - size) & ~0xfff
        }
        ceiling = min(ceiling, range.lowerBound)
    }
    return ceiling >= size + 0x100_0000 ? (ceiling - margin - size) & ~0xfff : nil
}

extension MemoryRecord.Mapping {
    /// What the VmFlags of /proc/PID/smaps say: growth, reservation, madvise advice, mlock and mseal; device
    /// mappings are refused. (mlockall's MCL_FUTURE is the address space's: MemoryRecord.lockFuture.)
    mutating func take(_ vmFlags: VmFlags, pid: pid_t) throws {
        // Codes as numbers once, not a String per flag per mapping (10,000 mappings are 100,000 lookups).
        typealias F = VmFlags.Known
        func refuse(_ what: String) -> CryoError {
            let address = "0x\(String(start, radix: 16))-0x\(String(end, radix: 16))"
            return CryoError("pid \(pid): mapping \(address) \(path.map { "(\($0)) " } ?? "")is \(what), not supported yet")
        }
        if !isSpecial && (vmFlags.contains(F.io) || vmFlags.contains(F.pf)) { throw refuse("a device (VM_IO/VM_PFNMAP) mapping") }
        // hugetlb pages (MAP_HUGETLB, MFD_HUGETLB) would come back as small pages, or not at all.
        if vmFlags.contains(F.ht) && hugePageSize == nil { throw refuse("hugetlb memory") }

        var advice: UInt32 = 0
        if vmFlags.contains(F.dd) { advice |= CRYO_MADV_DONTDUMP }
        if vmFlags.contains(F.dc) { advice |= CRYO_MADV_DONTFORK }
        if vmFlags.contains(F.hg) { advice |= CRYO_MADV_HUGEPAGE }
        if vmFlags.contains(F.nh) { advice |= CRYO_MADV_NOHUGEPAGE }
        if vmFlags.contains(F.wf) { advice |= CRYO_MADV_WIPEONFORK }
        if vmFlags.contains(F.mg) { advice |= CRYO_MADV_MERGEABLE }
        if vmFlags.contains(F.sr) { advice |= CRYO_MADV_SEQUENTIAL }
        if vmFlags.contains(F.rr) { advice |= CRYO_MADV_RANDOM }
        if vmFlags.contains(F.lo) { advice |= CRYO_VMA_LOCKED | (vmFlags.contains(F.lf) ? CRYO_VMA_LOCKONFAULT : 0) }
        // A kernel that seals its own vDSO and vvar seals the new task's as well.
        if vmFlags.contains(F.sl) && !isSpecial { advice |= CRYO_VMA_SEALED }
        self.advice = advice
        growsDown = vmFlags.contains(F.gd)
        noReserve = vmFlags.contains(F.nr)
        // Every private mapping may be written; a shared one only if its file was opened for writing.
        mayWrite = shared && vmFlags.contains(F.mw) ? true : nil
        droppable = vmFlags.contains(F.dp) ? true : nil
    }
}

/// Runs `body(i)` for every i in 0..<count on this thread and one more, each
/// taking the next index until none is left: work the frozen tree waits for,
/// shared by both CPUs. After the first error no new index is taken; it is thrown.
func shareWork(count: Int, share: Bool = true, _ body: (Int) throws -> Void) throws {
    guard share, count > 1, ProcessInfo.processInfo.activeProcessorCount >= 2 else {
        for i in 0..<count { try body(i) }
        return
    }
    let queue = SharedWork(count: count)
    try withoutActuallyEscaping(body) { body in
        // The helper drops its use of `body` before it signals, and the box lets go of it
        // after that, so `body` does not outlive this call (which the runtime checks).
        let box = BodyBox(body)
        let helperDone = DispatchSemaphore(value: 0)
        startThread {
            if let body = box.body { queue.run(body) }
            helperDone.signal()
        }
        queue.run(body)
        helperDone.wait()
        box.body = nil
    }
    if let failure = queue.failure { throw failure }
}

private final class BodyBox: @unchecked Sendable {
    var body: ((Int) throws -> Void)?
    init(_ body: @escaping (Int) throws -> Void) { self.body = body }
}

private final class SharedWork: @unchecked Sendable {
    private let lock = Lock()
    private var next = 0
    private let count: Int
    private(set) var failure: Error?
    init(count: Int) { self.count = count }

    func run(_ body: (Int) throws -> Void) {
        while let i = take() {
            do { try body(i) } catch { lock.withLock { if failure == nil { failure = error } } }
        }
    }

    private func take() -> Int? {
        lock.withLock {
            guard failure == nil, next < count else { return nil }
            defer { next += 1 }
            return next
        }
    }
}
