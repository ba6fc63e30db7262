import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// memfd: name, size, mode, seals; the contents go to filedata-ID.img.
public struct MemfdState: DescriptorKind {
    static let name = "memfd"
    static let prefix = "/memfd:"
    public var name: String
    public var size: Int64
    public var mode: UInt32
    public var seals: Int32
    /// The memfd's inode: descriptions and mappings of one memfd share it, and so one memfd again after restore.
    public var inode: UInt64?
    /// The runs of data in filedata-ID.img; the rest are holes (nil: all of it, images made before).
    public var extents: [FileExtent]?
    /// MFD_HUGETLB: made again of pages of this size, filled through a mapping (Hugetlb.swift).
    public var hugePageSize: UInt64? = nil

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> MemfdState? {
        guard p.stat.st_mode & S_IFMT == S_IFREG, p.link.hasPrefix(prefix) else { return nil }
        return try dump(p.handle, object: p.object, into: table, id: id)
    }

    static func dump(_ handle: FileDescriptor, object: String, into context: FileTableBuilder, id: Int) throws -> MemfdState {
        let link = try Files.readLink("/proc/self/fd/\(handle.rawValue)")
        var name = String(link.dropFirst(prefix.count))
        if name.hasSuffix(RegularFileState.deletedSuffix) { name.removeLast(RegularFileState.deletedSuffix.count) }
        let st = try Files.stat(handle, object: object)
        // hugetlbfs reads holes as zeros without taking pages from the pool: read like any memfd.
        let hugePageSize = try FileFacts.hugePageSize(handle, object: object)
        // Read through a new description: the memfd's own may be write-only or O_PATH.
        let readable = try FileObjects.open("/proc/self/fd/\(handle.rawValue)", flags: O_RDONLY, object: object)
        defer { try? readable.close() }
        let extents = try FileFacts.dataExtents(readable, size: Int64(st.st_size), object: object)
        try saveContents(of: readable, extents: extents, size: Int64(st.st_size), object: object, to: context.paths.fileData(id), context: context)
        return MemfdState(name: name, size: Int64(st.st_size), mode: st.st_mode & 0o7777,
                          seals: try FileObjects.seals(handle, object: object),
                          inode: UInt64(st.st_ino), extents: extents, hugePageSize: hugePageSize)
    }

    func summary(_ file: FileTable.OpenFile) -> String {
        "memfd \(name) (\(size) bytes, seals 0x\(hex(UInt64(seals)))\(hugePageSize.map { ", MFD_HUGETLB of \($0 >> 10) kB pages" } ?? ""))"
    }

    func validate() -> String? {
        guard let page = hugePageSize else { return nil }
        return page.nonzeroBitCount == 1 && page >= 1 << 16 && page <= 1 << 34 && size >= 0 && UInt64(size) % page == 0
            ? nil : "memfd \(name) of \(size) bytes with huge pages of \(page) bytes"
    }

    /// A description of a memfd already restored (same inode at dump) is a new description of that memfd.
    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        let sibling = inode == nil ? nil : Self.entries(context.files).first { $0.file.id < file.id && $0.state.inode == inode }
        return try open(flags: file.flags, position: file.position, object: object, paths: context.paths, id: file.id,
                        sibling: sibling.map { context.opened[$0.file.id] })
    }

    func open(flags: UInt32, position: Int64, object: String, paths: ImagePaths, id: Int, sibling: FileDescriptor?) throws -> FileDescriptor {
        if let sibling { return try reopen(path: "/proc/self/fd/\(sibling.rawValue)", flags: flags, position: position, object: object) }
        let memfd = try FileObjects.memfd(name: name, allowSealing: true, hugePageSize: hugePageSize, object: "\(object) (\(name))")
        defer { try? memfd.close() }
        if let page = hugePageSize {
            // hugetlbfs has no write(2): sized, then filled through a mapping, which reserves its pages first.
            let what = "\(object) (memfd \(name))"
            guard size >= 0, UInt64(size) % page == 0 else { throw CryoError("\(what): \(size) bytes is not a whole number of huge pages") }
            try Files.truncate(memfd, to: UInt64(size), path: what)
            let source = try Files.open(paths.fileData(id), .readOnly)
            defer { try? source.close() }
            let st = try Files.stat(source, object: paths.fileData(id))
            guard Int64(st.st_size) == size else { throw ImageError(file: fileName(of: paths.fileData(id)), "holds \(st.st_size) bytes, the file had \(size)") }
            if size > 0 {
                try SharedMemory.withMapped(memfd, size: UInt64(size), object: what) { base in
                    for e in extents ?? [FileExtent(offset: 0, length: size)] {
                        guard e.offset >= 0, e.length >= 0, e.offset <= size - e.length else { throw ImageError(file: fileName(of: paths.fileData(id)), "extent beyond \(size) bytes") }
                        var done: Int64 = 0
                        while done < e.length {
                            let view = UnsafeMutableRawBufferPointer(start: base + Int(e.offset + done), count: Int(e.length - done))
                            let n = try source.read(fromAbsoluteOffset: e.offset + done, into: view)
                            guard n > 0 else { throw ImageError(file: fileName(of: paths.fileData(id)), "short read at \(e.offset + done) (truncated)") }
                            done += Int64(n)
                        }
                    }
                }
            }
        } else {
            try restoreContents(to: memfd, extents: extents, size: size, from: paths.fileData(id), object: "\(object) (memfd \(name))")
        }
        try FileObjects.setMode(memfd, mode, object: object)
        if seals != 0 { try FileObjects.addSeals(memfd, seals, object: object) }
        return try reopen(path: "/proc/self/fd/\(memfd.rawValue)", flags: flags, position: position, object: object)
    }
}

extension FileTableBuilder {
    /// The file table entry of the memfd behind a mapping of `pid`: the entry of a
    /// descriptor (or an earlier mapping) of the same memfd, else a new entry, read
    /// through /proc/PID/map_files, that no descriptor names.
    func memfdMapping(pid: pid_t, start: UInt64, end: UInt64) throws -> Int {
        let object = "pid \(pid): mapping 0x\(String(start, radix: 16))-0x\(String(end, radix: 16))"
        let path = "/proc/\(pid)/map_files/\(String(start, radix: 16))-\(String(end, radix: 16))"
        let handle: FileDescriptor
        do { handle = try Files.open(path, .readOnly) } catch { throw CryoError("\(object): \(error)") }
        defer { try? handle.close() }
        let st = try Files.stat(handle, object: object)
        if let known = MemfdState.entries(table.files).first(where: { $0.state.inode == UInt64(st.st_ino) }) { return known.file.id }
        let id = table.files.count
        let state = try MemfdState.dump(handle, object: object, into: self, id: id)
        add(FileTable.OpenFile(id: id, flags: UInt32(O_RDWR), position: 0, state: state), object: object)
        return id
    }
}
