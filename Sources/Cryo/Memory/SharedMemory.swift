import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// Anonymous shared memory (MAP_SHARED|MAP_ANONYMOUS, shared /dev/zero) of the
/// tree: one object however many processes map it. Its pages are read from the
/// object itself, not from one process's page table: a page that only a child
/// wrote is in no other process's page table, yet in the object. shmem.img
/// lists the objects, shmem-ID.img holds each one's saved pages.
public struct SharedMemoryTable: Codable, Sendable {
    public struct Object: Codable, Sendable {
        /// Its index in `objects`: mappings name it by this (`Mapping.shmem`).
        public var id: Int
        /// The object's size (the first mapping's length, or as mremap grew it).
        public var size: UInt64
        /// [offset in the object, length, offset in shmem-ID.img]; pages in no run are zero.
        public var runs: [[UInt64]]
        /// MAP_SHARED|MAP_ANONYMOUS|MAP_HUGETLB: made again of pages of this size (Hugetlb.swift).
        public var hugePageSize: UInt64? = nil
        public var dataBytes: UInt64 { runs.last.map { $0[2] + $0[1] } ?? 0 }
    }
    public var objects: [Object]

    static let maxObjectSize: UInt64 = 1 << 46

    func validate(file: String, dataSizes: [UInt64]) throws {
        for (i, object) in objects.enumerated() {
            let label = "object #\(i)"
            guard object.id == i, object.size > 0, object.size % 4096 == 0, object.size <= Self.maxObjectSize,
                  object.hugePageSize.map({ $0.nonzeroBitCount == 1 && $0 >= 1 << 16 && $0 <= 1 << 34 && object.size % $0 == 0 }) ?? true else {
                throw ImageError(file: file, record: "sharedMemory", "\(label): id or size \(object.size) invalid")
            }
            var previousEnd: UInt64 = 0
            var expectedOffset: UInt64 = 0
            for run in object.runs {
                guard run.count == 3, run[1] > 0, run[0] % 4096 == 0, run[1] % 4096 == 0, run[0] >= previousEnd,
                      run[0] < object.size, run[1] <= object.size - run[0], run[2] == expectedOffset else {
                    throw ImageError(file: file, record: "sharedMemory", "\(label): run \(run) is malformed, out of order or beyond \(object.size) bytes")
                }
                previousEnd = run[0] + run[1]
                expectedOffset += run[1]
            }
            if dataSizes[i] != expectedOffset {
                throw ImageError(file: "shmem-\(i).img", "is \(dataSizes[i]) bytes, its runs need \(expectedOffset) (truncated or replaced)")
            }
        }
    }

    /// Every object made anew, in order, filled from the image, before any task exists:
    /// each task maps its object from the descriptor (the restored tree's one object).
    func create(paths: ImagePaths) throws -> [FileDescriptor] {
        var made: [FileDescriptor] = []
        do {
            for object in objects {
                let fd = try SharedMemory.makeAnonymous(size: object.size, hugePageSize: object.hugePageSize)
                made.append(fd)
                guard !object.runs.isEmpty else { continue }
                let path = paths.sharedMemory(object.id)
                let data = try Files.open(path, .readOnly)
                defer { try? data.close() }
                if object.hugePageSize != nil {
                    // hugetlbfs has no write(2): read into a mapping of it (its pages reserved when it was made).
                    let what = "shared memory #\(object.id) from \(fileName(of: path))"
                    try SharedMemory.withMapped(fd, size: object.size, object: what) { base in
                        for run in object.runs {
                            let view = UnsafeMutableRawBufferPointer(start: base + Int(run[0]), count: Int(run[1]))
                            let n = try data.read(fromAbsoluteOffset: Int64(run[2]), into: view)
                            guard n == view.count else { throw ImageError(file: fileName(of: path), "short read at \(run[2]) (truncated)") }
                        }
                    }
                    continue
                }
                for run in object.runs {
                    // In the kernel (sendfile), without a copy through cryo.
                    try SharedMemory.copy(from: data, at: run[2], to: fd, at: run[0], length: run[1],
                                          object: "shared memory #\(object.id) from \(fileName(of: path))")
                }
            }
        } catch {
            for fd in made { try? fd.close() }
            throw error
        }
        return made
    }

    /// The saved bytes of object `id` at `offset` (zeros where it had no data), for `show --pages` and `bt`.
    func read(_ id: Int, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer, paths: ImagePaths) throws {
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        guard objects.indices.contains(id) else { return }
        let end = offset + UInt64(buffer.count)
        let overlapping = objects[id].runs.filter { $0[0] < end && offset < $0[0] + $0[1] }
        guard !overlapping.isEmpty else { return }
        let data = try Files.open(paths.sharedMemory(id), .readOnly)
        defer { try? data.close() }
        for run in overlapping {
            let from = max(offset, run[0]), to = min(end, run[0] + run[1])
            let view = UnsafeMutableRawBufferPointer(rebasing: buffer[Int(from - offset)..<Int(to - offset)])
            _ = try data.read(fromAbsoluteOffset: Int64(run[2] + from - run[0]), into: view)
        }
    }
}

/// The shared memory of a tree being dumped: each object saved the first time a
/// mapping of it is met, while the tree is frozen, and only named after that.
final class SharedMemoryDump {
    let paths: ImagePaths
    private(set) var table = SharedMemoryTable(objects: [])
    private(set) var created: [String] = []
    private var ids: [String: Int] = [:]  // by "device:inode" of the object

    init(paths: ImagePaths) { self.paths = paths }

    /// The id of the object behind the shared anonymous mapping `m` of `pid`, saving it if it is new.
    func object(pid: pid_t, mapping m: MemoryRecord.Mapping, statistics: inout DumpStatistics) throws -> Int {
        let range = "\(hex(m.start))-\(hex(m.end))"
        let what = "pid \(pid): shared memory 0x\(range)"
        let handle = try Files.open("/proc/\(pid)/map_files/\(range)", .readOnly)
        defer { try? handle.close() }
        let st = try Files.stat(handle, object: what)
        let key = "\(st.st_dev):\(st.st_ino)"
        if let id = ids[key] { return id }
        let size = UInt64(st.st_size)
        guard size > 0, size % 4096 == 0, size <= SharedMemoryTable.maxObjectSize else {
            throw CryoError("\(what) is an object of \(size) bytes, which cannot be rebuilt")
        }
        let id = table.objects.count
        let path = paths.sharedMemory(id)
        created.append(path)
        let out = try Files.open(path, .writeOnly, options: [.create, .exclusiveCreate, .noFollow], permissions: [.ownerReadWrite])
        defer { try? out.close() }
        var runs: [[UInt64]] = []
        var written: UInt64 = 0
        let chunk = 4 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        for range in try SharedMemory.dataRanges(handle, size: size, object: what) {
            var at = range.lowerBound
            while at < range.upperBound {
                let view = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(min(UInt64(chunk), range.upperBound - at))])
                let n: Int
                do { n = try handle.read(fromAbsoluteOffset: Int64(at), into: view) } catch {
                    throw SyscallError("pread", errno: error as? Errno ?? .ioError, object: what)
                }
                guard n == view.count else { throw CryoError("\(what): read \(n) of \(view.count) bytes at offset \(at) of the object") }
                // Pages that are all zeros (only read, or zeroed) stay holes: they read the same.
                var page = 0
                while page < n {
                    if isZero(UnsafeRawBufferPointer(rebasing: view[page..<(page + 4096)])) { page += 4096; continue }
                    var end = page + 4096
                    while end < n && !isZero(UnsafeRawBufferPointer(rebasing: view[end..<(end + 4096)])) { end += 4096 }
                    let offset = at + UInt64(page), length = UInt64(end - page)
                    if let last = runs.last, last[0] + last[1] == offset {
                        runs[runs.count - 1][1] += length
                    } else {
                        runs.append([offset, length, written])
                    }
                    try Files.write(out, UnsafeRawBufferPointer(rebasing: view[page..<end]), at: Int64(written), path: path)
                    written += length
                    page = end
                }
                at += UInt64(n)
            }
        }
        statistics.pagesWritten += written / 4096
        table.objects.append(.init(id: id, size: size, runs: runs, hugePageSize: m.hugePageSize))
        ids[key] = id
        return id
    }

    /// shmem.img, when the tree has shared memory.
    func write() throws {
        guard !table.objects.isEmpty else { return }
        var records = RecordWriter()
        try records.append(.sharedMemory, table)
        created.append(paths.sharedMemoryTable)
        try records.write(to: paths.sharedMemoryTable)
    }
}

/// One page of zeros to compare with: memcmp is vectorised, a Swift loop over words is not in a debug build.
nonisolated(unsafe) private let zeroPage = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096).initializeMemory(as: UInt8.self, repeating: 0, count: 4096)

private func isZero(_ page: UnsafeRawBufferPointer) -> Bool {
    memcmp(page.baseAddress!, zeroPage, 4096) == 0
}
