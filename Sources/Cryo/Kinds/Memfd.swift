import CCryo
import CryoSystem
import Foundation
import Glibc
import SystemPackage

/// memfd: name, size, mode, seals; the contents go to filedata-ID.img.
public struct MemfdState: Codable, Sendable {
    static let prefix = "/memfd:"
    public var name: String
    public var size: Int64
    public var mode: UInt32
    public var seals: Int32
    /// The memfd's inode: descriptions and mappings of one memfd share it, and so one memfd again after restore.
    public var inode: UInt64?

    static func dump(_ handle: FileDescriptor, object: String, into context: FileTableBuilder, id: Int) throws -> MemfdState {
        let link = try Files.readLink("/proc/self/fd/\(handle.rawValue)")
        var name = String(link.dropFirst(prefix.count))
        if name.hasSuffix(RegularFileState.deletedSuffix) { name.removeLast(RegularFileState.deletedSuffix.count) }
        let st = try Files.stat(handle, object: object)
        try saveContents(of: handle, object: object, to: context.paths.fileData(id), context: context)
        return MemfdState(name: name, size: Int64(st.st_size), mode: st.st_mode & 0o7777,
                          seals: Int32(try check(cryo_get_seals(handle.rawValue), "fcntl(F_GET_SEALS)", object: object)),
                          inode: UInt64(st.st_ino))
    }

    /// `sibling`: a description already restored for the same memfd (same inode at dump): reopened, not made anew.
    func open(flags: UInt32, position: Int64, object: String, paths: ImagePaths, id: Int, sibling: FileDescriptor? = nil) throws -> FileDescriptor {
        if let sibling { return try reopen(path: "/proc/self/fd/\(sibling.rawValue)", flags: flags, position: position, object: object) }
        let fd = Int32(try check(cryo_memfd_create(name, 1), "memfd_create", object: "\(object) (\(name))"))
        let memfd = FileDescriptor(rawValue: fd)
        defer { try? memfd.close() }
        let data = try Files.read(paths.fileData(id))
        guard data.count == size else {
            throw ImageError(file: (paths.fileData(id) as NSString).lastPathComponent, "holds \(data.count) bytes, the memfd had \(size)")
        }
        try data.withUnsafeBytes { try Files.write(memfd, $0, at: 0, path: "memfd \(name)") }
        _ = fchmod(fd, mode_t(mode))
        if seals != 0 { _ = try check(cryo_add_seals(fd, seals), "fcntl(F_ADD_SEALS)", object: object) }
        return try reopen(path: "/proc/self/fd/\(fd)", flags: flags, position: position, object: object)
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
