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

    /// One memfd is made per inode of the dump; every description of it is a description of that memfd.
    /// memfd_create's own description does not count as a writer of the file (it is not made by open()),
    /// while every open() for writing does, and exec refuses a file with writers (ETXTBSY): so the first
    /// read-write description of each memfd is memfd_create's own (`ownDescriptions`), the others are opened
    /// through it, and a writable shared mapping maps memfd_create's too (Restore.openSlots). Before the
    /// dump a program could exec the memfd it wrote through its memfd_create descriptor; so it can after.
    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        let made = try context.rebuilder(MemfdRebuilder.self)
        let memfd: FileDescriptor
        var madeHere: FileDescriptor?
        if let inode {
            if let known = made.memfds[inode] {
                memfd = known
            } else {
                memfd = try make(object: object, paths: context.paths, id: file.id)
                made.memfds[inode] = memfd
            }
        } else {
            // Images made before inodes were recorded: a memfd of its own for each description, as then.
            memfd = try make(object: object, paths: context.paths, id: file.id)
            madeHere = memfd
        }
        defer { try? madeHere?.close() }
        guard made.ownDescriptions[file.id] == file.id else {
            return try reopen(path: "/proc/self/fd/\(memfd.rawValue)", flags: file.flags, position: file.position, object: object)
        }
        let fd = try FileObjects.duplicate(memfd, object: object)
        do {
            // What F_SETFL can change, as open() would have set it (O_ASYNC waits for the owner: FileOwner).
            let settable = Int32(bitPattern: file.flags) & FileObjects.settableStatusFlags
            if settable != 0 { try FileObjects.setStatusFlags(fd, settable, object: object) }
            if file.position != 0 {
                do { _ = try fd.seek(offset: file.position, from: .start) } catch {
                    throw SyscallError("lseek", errno: error as? Errno ?? .ioError, object: object)
                }
            }
        } catch {
            try? fd.close()
            throw error
        }
        return fd
    }

    /// By memfd entry, the entry that gets memfd_create's own description: the first read-write one
    /// of the same memfd; none when it has no read-write description. One pass over the table.
    static func ownDescriptions(_ files: [FileTable.OpenFile]) -> [Int: Int] {
        func readWrite(_ f: FileTable.OpenFile) -> Bool { Int32(bitPattern: f.flags) & (O_ACCMODE | CRYO_O_PATH) == O_RDWR }
        let memfds = entries(files)
        var firstReadWrite: [UInt64: Int] = [:]
        for (file, state) in memfds where readWrite(file) {
            if let inode = state.inode, firstReadWrite[inode] == nil { firstReadWrite[inode] = file.id }
        }
        var own: [Int: Int] = [:]
        for (file, state) in memfds {
            // Images made before inodes were recorded: each entry is a memfd of its own.
            if let id = state.inode.map({ firstReadWrite[$0] }) ?? (readWrite(file) ? file.id : nil) { own[file.id] = id }
        }
        return own
    }

    /// The memfd with its contents, mode and seals.
    private func make(object: String, paths: ImagePaths, id: Int) throws -> FileDescriptor {
        let memfd = try FileObjects.memfd(name: name, allowSealing: true, hugePageSize: hugePageSize, object: "\(object) (\(name))")
        do {
            try fill(memfd, object: object, paths: paths, id: id)
            try FileObjects.setMode(memfd, mode, object: object)
            if seals != 0 { try FileObjects.addSeals(memfd, seals, object: object) }
        } catch {
            try? memfd.close()
            throw error
        }
        return memfd
    }

    private func fill(_ memfd: FileDescriptor, object: String, paths: ImagePaths, id: Int) throws {
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
    }
}

/// The memfds made so far, by inode of the dump: cryo's copies of memfd_create's own descriptions,
/// closed once every description is open.
final class MemfdRebuilder: KindRebuilder {
    var memfds: [UInt64: FileDescriptor] = [:]
    /// MemfdState.ownDescriptions of the table.
    let ownDescriptions: [Int: Int]

    init(_ context: OpenContext) {
        ownDescriptions = MemfdState.ownDescriptions(context.files)
    }

    func closeAll() {
        for fd in memfds.values { try? fd.close() }
        memfds = [:]
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
