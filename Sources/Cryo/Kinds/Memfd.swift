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

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> MemfdState? {
        guard p.stat.st_mode & S_IFMT == S_IFREG, p.link.hasPrefix(prefix) else { return nil }
        return try dump(p.handle, object: p.object, into: table, id: id)
    }

    static func dump(_ handle: FileDescriptor, object: String, into context: FileTableBuilder, id: Int) throws -> MemfdState {
        let link = try Files.readLink("/proc/self/fd/\(handle.rawValue)")
        var name = String(link.dropFirst(prefix.count))
        if name.hasSuffix(RegularFileState.deletedSuffix) { name.removeLast(RegularFileState.deletedSuffix.count) }
        let st = try Files.stat(handle, object: object)
        try saveContents(of: handle, object: object, to: context.paths.fileData(id), context: context)
        return MemfdState(name: name, size: Int64(st.st_size), mode: st.st_mode & 0o7777,
                          seals: try FileObjects.seals(handle, object: object),
                          inode: UInt64(st.st_ino))
    }

    func summary(_ file: FileTable.OpenFile) -> String {
        "memfd \(name) (\(size) bytes, seals 0x\(hex(UInt64(seals))))"
    }

    /// A description of a memfd already restored (same inode at dump) is a new description of that memfd.
    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        let sibling = inode == nil ? nil : Self.entries(context.files).first { $0.file.id < file.id && $0.state.inode == inode }
        return try open(flags: file.flags, position: file.position, object: object, paths: context.paths, id: file.id,
                        sibling: sibling.map { context.opened[$0.file.id] })
    }

    func open(flags: UInt32, position: Int64, object: String, paths: ImagePaths, id: Int, sibling: FileDescriptor?) throws -> FileDescriptor {
        if let sibling { return try reopen(path: "/proc/self/fd/\(sibling.rawValue)", flags: flags, position: position, object: object) }
        let memfd = try FileObjects.memfd(name: name, allowSealing: true, object: "\(object) (\(name))")
        defer { try? memfd.close() }
        let data = try Files.read(paths.fileData(id))
        guard data.count == size else {
            throw ImageError(file: fileName(of: paths.fileData(id)), "holds \(data.count) bytes, the memfd had \(size)")
        }
        try data.withUnsafeBytes { try Files.write(memfd, $0, at: 0, path: "memfd \(name)") }
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

/// Copies a file's whole contents (through our duplicate of its descriptor) into the image.
func saveContents(of handle: FileDescriptor, object: String, to path: String, context: FileTableBuilder) throws {
    context.created.append(path)
    let out = try Files.open(path, .writeOnly, options: [.create, .exclusiveCreate, .noFollow], permissions: [.ownerReadWrite])
    defer { try? out.close() }
    var offset: Int64 = 0
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let n: Int
        do { n = try chunk.withUnsafeMutableBytes { try handle.read(fromAbsoluteOffset: offset, into: $0) } } catch {
            throw SyscallError("pread", errno: error as? Errno ?? .ioError, object: object)
        }
        if n == 0 { return }
        try chunk.withUnsafeBytes { raw in try Files.write(out, UnsafeRawBufferPointer(rebasing: raw[0..<n]), at: offset, path: path) }
        offset += Int64(n)
    }
}
