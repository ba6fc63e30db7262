import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// A System V shared memory segment that processes of the tree have attached.
/// Segments belong to the IPC namespace, not to a process, and outlive the
/// tree: at restore a segment that still exists with the same id, key and
/// size is attached again as it is (others may have written it since, as
/// they may write a file); one that is gone is made again with its old id
/// (kernel.shm_next_id), key, owner and mode, and filled from the image.
/// Every attach is a real `shmat` by the task, so `shmdt` and the attach
/// count behave as before.
public struct SysVSegment: Codable, Sendable {
    public var id: Int32
    public var key: Int32
    public var size: UInt64
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// Marked for removal (IPC_RMID) while attached: made again, it is marked again once attached.
    public var destroyed: Bool
    /// [offset, length, offset in sysvshm-ID.img] of its non-zero pages; the rest reads as zeros.
    public var runs: [[UInt64]]
    /// SHM_HUGETLB: made again of pages of this size (Hugetlb.swift).
    public var hugePageSize: UInt64? = nil

    static func dataPath(_ paths: ImagePaths, id: Int32) -> String { "\(paths.directory)/sysvshm-\(id).img" }
    var pagedSize: UInt64 { (size + 4095) & ~4095 }

    /// Checks an attach of `m` by `pid` and saves its segment the first time it is met.
    static func dump(pid: pid_t, mapping m: MemoryRecord.Mapping, paths: ImagePaths, into segments: inout [Int32: SysVSegment],
                     created: inout [String]) throws {
        let what = "pid \(pid): System V shared memory at 0x\(hex(m.start))"
        guard let raw = m.inode, let id = Int32(exactly: raw), let ds = try SysVShm.status(id) else {
            throw CryoError("\(what): segment \(m.inode.map(String.init) ?? "?") is gone")
        }
        let page = m.hugePageSize ?? 4096
        let pagedSize = (UInt64(ds.shm_segsz) + page - 1) & ~(page - 1)
        // shmat maps a whole segment: a part of one (munmap after shmat) cannot be rebuilt by it.
        guard m.fileOffset == 0 && m.length == pagedSize else {
            throw CryoError("\(what) maps \(m.length) bytes at offset \(m.fileOffset) of segment \(id) (\(ds.shm_segsz) bytes); "
                + "a partly unmapped segment is not supported yet")
        }
        if segments[id] != nil { return }
        segments[id] = try save(id: id, ds: ds, paths: paths, created: &created)
        if segments[id]!.hugePageSize != m.hugePageSize {
            throw CryoError("\(what): segment \(id) is hugetlb memory to cryo but not to the task, or the other way round")
        }
    }

    /// Saves segment `id` (attached or not): its figures and its non-zero pages.
    static func save(id: Int32, ds: shmid_ds, paths: ImagePaths, created: inout [String]) throws -> SysVSegment {
        var segment = SysVSegment(id: id, key: ds.shm_perm.__key, size: UInt64(ds.shm_segsz), mode: UInt32(ds.shm_perm.mode & 0o777),
                                  uid: ds.shm_perm.uid, gid: ds.shm_perm.gid,
                                  destroyed: Int32(ds.shm_perm.mode) & SHM_DEST != 0, runs: [])
        let path = dataPath(paths, id: id)
        created.append(path)
        let out = try Files.open(path, .writeOnly, options: [.create, .exclusiveCreate, .noFollow], permissions: [.ownerReadWrite])
        defer { try? out.close() }
        try SysVShm.withAttached(id, readOnly: true) { base in
            // A SHM_HUGETLB segment is read through its hugetlbfs file: touching a page of it that was never
            // written would take a huge page from the pool (SIGBUS here when the pool is empty).
            let start = UInt64(UInt(bitPattern: base))
            let what = "System V segment \(id)"
            let mapped = try readMappings(pid: getpid(), withFlags: false).first { $0.start == start }
            guard let mapped else { throw CryoError("\(what): attached at 0x\(hex(start)) but not in /proc/self/maps") }
            let file = try Files.open("/proc/self/map_files/\(hex(start))-\(hex(mapped.end))", .readOnly)
            defer { try? file.close() }
            segment.hugePageSize = try FileFacts.hugePageSize(file, object: what)
            // Read in windows: a hugetlb one through a buffer of one window, not the whole segment.
            let window = 4 << 20
            let buffer = segment.hugePageSize == nil ? nil : UnsafeMutableRawBufferPointer.allocate(byteCount: window, alignment: 4096)
            defer { buffer?.deallocate() }
            let size = Int(segment.size)
            var written: UInt64 = 0
            var from = 0
            while from < size {
                let count = min(window, size - from)
                let bytes: UnsafeRawBufferPointer
                if let buffer {
                    var done = 0
                    while done < count {
                        let n = try file.read(fromAbsoluteOffset: Int64(from + done), into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<count]))
                        guard n > 0 else { throw CryoError("\(what): read \(from + done) of its \(size) bytes") }
                        done += n
                    }
                    bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<count])
                } else {
                    bytes = UnsafeRawBufferPointer(start: base + from, count: count)
                }
                var page = 0
                while page < count {
                    let end = min(page + 4096, count)
                    if UnsafeRawBufferPointer(rebasing: bytes[page..<end]).allSatisfy({ $0 == 0 }) { page = end; continue }
                    let at = UInt64(from + page)
                    if let last = segment.runs.last, last[0] + last[1] == at {
                        segment.runs[segment.runs.count - 1][1] += UInt64(end - page)
                    } else {
                        segment.runs.append([at, UInt64(end - page), written])
                    }
                    try Files.write(out, UnsafeRawBufferPointer(rebasing: bytes[page..<end]), at: Int64(written), path: path)
                    written += UInt64(end - page)
                    page = end
                }
                from += count
            }
        }
        return segment
    }

    /// Checks what restore would meet; the image's own figures are checked by `Image`.
    func validate() throws {
        var end: UInt64 = 0, offset: UInt64 = 0
        for run in runs {
            guard run.count == 3, run[0] >= end, run[1] > 0, run[1] <= size, run[0] <= size - run[1], run[2] == offset else {
                throw ImageError(file: "inventory.img", record: "inventory", "System V segment \(id): run \(run) is malformed")
            }
            end = run[0] + run[1]
            offset += run[1]
        }
    }
}

/// The segments a restore attaches: found again, or made again before any task exists.
final class SysVSegmentsRestore {
    private(set) var made: [Int32] = []
    private let segments: [SysVSegment]

    init(_ segments: [SysVSegment], paths: ImagePaths) throws {
        self.segments = segments
        do {
            for segment in segments { try ensure(segment, paths: paths) }
        } catch {
            removeMade()
            throw error
        }
    }

    private func ensure(_ segment: SysVSegment, paths: ImagePaths) throws {
        let what = "System V segment \(segment.id) (key 0x\(String(UInt32(bitPattern: segment.key), radix: 16)), \(segment.size) bytes)"
        if let ds = try SysVShm.status(segment.id) {
            guard UInt64(ds.shm_segsz) == segment.size && (segment.key == IPC_PRIVATE || ds.shm_perm.__key == segment.key) else {
                throw CryoError("\(what): id \(segment.id) is now another segment (key 0x\(String(UInt32(bitPattern: ds.shm_perm.__key), radix: 16)), "
                    + "\(ds.shm_segsz) bytes); remove it (ipcrm -m \(segment.id)) to restore")
            }
            return  // still there: attached as it is now
        }
        try SysVNextID.set("shm", segment.id, what: what)
        let got: Int32
        do { got = try SysVShm.create(key: segment.key, size: segment.size, mode: segment.mode, hugePageSize: segment.hugePageSize) } catch {
            try? SysVNextID.set("shm", -1, what: what)
            throw CryoError("\(what): \(error)")
        }
        made.append(got)
        guard got == segment.id else {
            throw CryoError("\(what): the kernel gave id \(got) instead (kernel.shm_next_id was not honoured)")
        }
        if !segment.runs.isEmpty {
            let path = SysVSegment.dataPath(paths, id: segment.id)
            let data = try Files.open(path, .readOnly)
            defer { try? data.close() }
            try SysVShm.withAttached(got, readOnly: false) { base in
                for run in segment.runs {
                    let view = UnsafeMutableRawBufferPointer(start: base + Int(run[0]), count: Int(run[1]))
                    let n = try data.read(fromAbsoluteOffset: Int64(run[2]), into: view)
                    guard n == view.count else { throw ImageError(file: "sysvshm-\(segment.id).img", "short read at \(run[2]) (truncated)") }
                }
            }
        }
        guard var ds = try SysVShm.status(got) else { throw CryoError("\(what): vanished right after it was made") }
        ds.shm_perm.uid = segment.uid
        ds.shm_perm.gid = segment.gid
        ds.shm_perm.mode = segment.mode
        try SysVShm.set(got, ds)
    }

    /// Once every task has attached: segments that were marked for removal are marked again.
    func finish() throws {
        for segment in segments where segment.destroyed && made.contains(segment.id) {
            try SysVShm.remove(segment.id)
        }
        made = []
    }

    /// A failed restore leaves no segment it made.
    func removeMade() {
        for id in made { try? SysVShm.remove(id) }
        made = []
    }
}

/// kernel.{shm,sem,msg}_next_id: the id the next get call of that kind makes (-1: the kernel's choice again).
enum SysVNextID {
    static func set(_ kind: String, _ id: Int32, what: String) throws {
        let path = "/proc/sys/kernel/\(kind)_next_id"
        let fd: FileDescriptor
        do { fd = try Files.open(path, .writeOnly) } catch { throw CryoError("\(what): \(error)") }
        defer { try? fd.close() }
        try Files.write(fd, Array("\(id)\n".utf8), path: path)
    }
}
