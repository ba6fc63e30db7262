import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// A regular file: reopened by path; when the name it was opened by is gone but
/// other hard links remain, reopened by its file handle (no copy); when no name
/// reaches it at all (a "ghost"), recreated unlinked from the image: its data
/// runs at their offsets (holes stay holes), size, owner, mode and times.
public struct RegularFileState: DescriptorKind {
    static let name = "regular"
    public var path: String
    public var size: Int64
    public var mode: UInt32
    public var device: UInt64
    public var inode: UInt64
    /// No name reaches the file: its contents were saved to filedata-ID.img
    /// (by the first description of the file; later ones share it).
    public var unlinked: Bool
    // Of a ghost: what fstat showed, put back on the recreated file.
    public var uid: UInt32?
    public var gid: UInt32?
    /// Nanoseconds since the epoch.
    public var accessTime: Int64?
    public var modificationTime: Int64?
    /// The runs of data in filedata-ID.img, at the file's own offsets; the rest are holes.
    public var extents: [FileExtent]?
    /// The name it was opened by is gone but other hard links remain: reopened by this handle.
    public var handle: FileHandleRecord?
}

/// A file handle (name_to_handle_at) of a file on the dumped file system.
public struct FileHandleRecord: Codable, Sendable {
    public var type: Int32
    /// The handle's bytes in hex.
    public var bytes: String
}

extension RegularFileState {
    static let deletedSuffix = " (deleted)"

    /// A memfd is a regular file too: MemfdState comes first in the registry.
    static func dump(_ p: DescriptorProbe, into context: FileTableBuilder, id: Int) throws -> RegularFileState? {
        guard p.stat.st_mode & S_IFMT == S_IFREG else { return nil }
        var path = p.link
        let nameGone = path.hasSuffix(deletedSuffix) && !(Files.exists(path) && sameFile(path, p.stat))
        if nameGone { path.removeLast(deletedSuffix.count) }
        guard path.hasPrefix("/") else { throw CryoError("\(p.object): regular file \(p.link) has no usable path") }
        var state = RegularFileState(path: path, size: Int64(p.stat.st_size), mode: p.stat.st_mode & 0o7777,
                                     device: UInt64(p.stat.st_dev), inode: UInt64(p.stat.st_ino), unlinked: false)
        guard nameGone else { return state }
        if p.stat.st_nlink > 0 {
            // Another hard link still reaches it: the handle finds it again, whatever that name is.
            let handle: (type: Int32, bytes: [UInt8])
            do { handle = try FileFacts.handle(of: p.handle, object: p.object) } catch {
                throw CryoError("\(p.object): \(path) was unlinked but has \(p.stat.st_nlink) other hard link(s), and its file system "
                    + "gives no file handle to reopen it by (\(error)); not supported")
            }
            state.handle = FileHandleRecord(type: handle.type, bytes: handle.bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined())
            return state
        }
        state.unlinked = true
        state.uid = p.stat.st_uid
        state.gid = p.stat.st_gid
        state.accessTime = Int64(p.stat.st_atim.tv_sec) * 1_000_000_000 + Int64(p.stat.st_atim.tv_nsec)
        state.modificationTime = Int64(p.stat.st_mtim.tv_sec) * 1_000_000_000 + Int64(p.stat.st_mtim.tv_nsec)
        if let first = ghostSibling(of: state, among: context.table.files) {
            // Another description of the same ghost: its contents are saved once.
            state.extents = first.state.extents
            return state
        }
        // Read through a new description: this one may be write-only or O_PATH.
        let readable = try FileObjects.open("/proc/self/fd/\(p.handle.rawValue)", flags: O_RDONLY, object: p.object)
        defer { try? readable.close() }
        let extents = try FileFacts.dataExtents(readable, size: state.size, object: "\(p.object) (\(path))")
        let data = extents.reduce(0) { $0 + $1.length }
        guard UInt64(data) <= context.options.ghostLimit else {
            throw CryoError("\(p.object): \(path) was unlinked while open and holds \(data) bytes of data, "
                + "over the ghost limit of \(context.options.ghostLimit) (raise it with --ghost-limit)")
        }
        try saveContents(of: readable, extents: extents, size: state.size, object: p.object, to: context.paths.fileData(id), context: context)
        state.extents = extents
        return state
    }

    /// The first entry of the same ghost file (same device and inode), if there is one.
    static func ghostSibling(of state: RegularFileState, among files: [FileTable.OpenFile]) -> (file: FileTable.OpenFile, state: RegularFileState)? {
        entries(files).first { $0.state.unlinked && $0.state.device == state.device && $0.state.inode == state.inode }
    }

    static func sameFile(_ path: String, _ st: Glibc.stat) -> Bool {
        guard let other = try? Files.stat(path) else { return false }
        return other.st_dev == st.st_dev && other.st_ino == st.st_ino
    }

    func recordedPath(_ p: DescriptorProbe) -> String? { path }

    // In the binary file table: a file opened by its name (the common case) is size, mode, device, inode and path.
    static var packCode: UInt16? { 1 }
    func pack() -> PackedState? {
        guard !unlinked, uid == nil, gid == nil, accessTime == nil, modificationTime == nil, extents == nil, handle == nil else { return nil }
        return PackedState(w0: UInt64(bitPattern: size), w1: UInt64(mode), w2: device, w3: inode, text: path)
    }
    static func unpack(_ p: PackedState) -> RegularFileState? {
        guard let path = p.text, let mode = UInt32(exactly: p.w1) else { return nil }
        return RegularFileState(path: path, size: Int64(bitPattern: p.w0), mode: mode, device: p.w2, inode: p.w3, unlinked: false)
    }

    func validate() -> String? {
        if size < 0 { return "\(path): negative size \(size)" }
        for e in extents ?? [] where e.offset < 0 || e.length <= 0 || e.offset + e.length > size {
            return "\(path): data run \(e.offset)+\(e.length) lies outside its \(size) bytes"
        }
        if let handle, handle.bytes.count % 2 != 0 || handle.bytes.count > 256 || UInt64(handle.bytes.prefix(16), radix: 16) == nil {
            return "\(path): bad file handle \(handle.bytes)"
        }
        return nil
    }

    func summary(_ file: FileTable.OpenFile) -> String {
        let data = (extents ?? []).reduce(0) { $0 + $1.length }
        return (file.path ?? path) + (unlinked ? " (unlinked, \(size) bytes, \(data) of data in image)" : "")
            + (handle != nil ? " (unlinked name, reopened by handle through another link)" : "")
    }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        let (flags, position) = (file.flags, file.position)
        if let handle {
            let bytes = stride(from: 0, to: handle.bytes.count, by: 2).map { i -> UInt8 in
                let start = handle.bytes.index(handle.bytes.startIndex, offsetBy: i)
                return UInt8(handle.bytes[start..<handle.bytes.index(start, offsetBy: 2)], radix: 16) ?? 0
            }
            let found = try FileFacts.open(handle: bytes, type: handle.type, device: device, inode: inode, object: object)
            defer { try? found.close() }
            let st = try Files.stat(found, object: object)
            guard Int64(st.st_size) == size else {
                throw CryoError("\(object): \(path) (reached through another hard link) is \(st.st_size) bytes, it was \(size) at dump; the file changed since")
            }
            return try reopen(path: "/proc/self/fd/\(found.rawValue)", flags: flags, position: position, object: object)
        }
        if !unlinked {
            // Opened first and checked through the descriptor: one path lookup, not two (10,000 files add up).
            let fd: FileDescriptor
            do { fd = try reopen(path: path, flags: flags, position: position, object: object) } catch {
                do { _ = try Files.stat(path) } catch { throw CryoError("\(object): \(error)") }  // gone: said as before
                throw error
            }
            let st: Glibc.stat
            do { st = try Files.stat(fd, object: object) } catch { try? fd.close(); throw error }
            guard Int64(st.st_size) == size else {
                try? fd.close()
                throw CryoError("\(object): \(path) is \(st.st_size) bytes, it was \(size) at dump; the file changed since")
            }
            return fd
        }
        if let first = Self.ghostSibling(of: self, among: context.files), first.file.id < file.id {
            return try reopen(path: "/proc/self/fd/\(context.opened[first.file.id].rawValue)", flags: flags, position: position, object: object)
        }
        let ghost = try recreate(object: object, paths: context.paths, id: file.id)
        defer { try? ghost.close() }
        // Reopening through /proc gives a description with exactly the old access mode and flags.
        return try reopen(path: "/proc/self/fd/\(ghost.rawValue)", flags: flags, position: position, object: object)
    }

    /// The ghost again: an unnamed file in its old folder (else the image's) with
    /// its data runs, size, owner, mode and times.
    func recreate(object: String, paths: ImagePaths, id: Int) throws -> FileDescriptor {
        let oldFolder = folder(of: path)
        let inOldFolder = Files.exists(oldFolder)
        var ghost: FileDescriptor
        do { ghost = try Descriptors.openTemporaryFile(in: inOldFolder ? oldFolder : paths.directory, flags: O_RDWR, mode: 0o600) } catch {
            ghost = try Descriptors.openTemporaryFile(in: paths.directory, flags: O_RDWR, mode: 0o600, object: "\(object) for \(path)")
        }
        do {
            try restoreContents(to: ghost, extents: extents, size: size, from: paths.fileData(id), object: "\(object) for \(path)")
            if inOldFolder && !Files.exists(path), (try? FileFacts.link(ghost, to: path, object: object)) != nil {
                // Named for a moment and opened by that name, so /proc shows "NAME (deleted)" again;
                // a name taken meanwhile only costs that.
                let named = try? FileObjects.open(path, flags: O_RDWR | O_NOFOLLOW, object: object)
                try FileObjects.remove(path, object: "\(object) (the ghost's name for a moment)")
                if let named, let st = try? Files.stat(named, object: object), let old = try? Files.stat(ghost, object: object),
                   st.st_ino == old.st_ino, st.st_dev == old.st_dev {
                    try? ghost.close()
                    ghost = named
                } else {
                    try? named?.close()
                }
            }
            if let uid, let gid { try FileFacts.setOwner(ghost, uid: uid, gid: gid, object: "\(object) for \(path)") }
            // After fchown, which clears set-id bits.
            try FileObjects.setMode(ghost, mode, object: "\(object) for \(path)")
            if let accessTime, let modificationTime {
                try FileFacts.setTimes(ghost, access: accessTime, modification: modificationTime, object: "\(object) for \(path)")
            }
        } catch {
            try? ghost.close()
            throw error
        }
        return ghost
    }
}

extension FileTableBuilder {
    /// The file table entry of the deleted file behind a mapping of `pid`: the entry of a
    /// descriptor (or an earlier mapping) of the same file, else a new entry, read through
    /// /proc/PID/map_files, that no descriptor names (a ghost, or a file other links still reach).
    func deletedFileMapping(pid: pid_t, start: UInt64, end: UInt64) throws -> Int {
        let object = "pid \(pid): mapping 0x\(String(start, radix: 16))-0x\(String(end, radix: 16))"
        let path = "/proc/\(pid)/map_files/\(String(start, radix: 16))-\(String(end, radix: 16))"
        let handle: FileDescriptor
        do { handle = try Files.open(path, .readOnly) } catch { throw CryoError("\(object): \(error)") }
        defer { try? handle.close() }
        let st = try Files.stat(handle, object: object)
        guard st.st_mode & S_IFMT == S_IFREG else { throw CryoError("\(object): a mapping of a deleted file that is not a regular file; not supported") }
        if let known = RegularFileState.entries(table.files).first(where: {
            $0.state.inode == UInt64(st.st_ino) && $0.state.device == UInt64(st.st_dev) && ($0.state.unlinked || $0.state.handle != nil)
        }) { return known.file.id }
        let id = table.files.count
        let link = try Files.readLink(path)
        let probe = DescriptorProbe(pid: pid, fd: -1, link: link, flags: UInt32(O_RDWR), position: 0, info: FDInfo(), stat: st,
                                    handle: handle, inFlight: object)
        guard let state = try RegularFileState.dump(probe, into: self, id: id), state.unlinked || state.handle != nil else {
            throw CryoError("\(object): \(link) was deleted but its file has a path again; not supported")
        }
        add(FileTable.OpenFile(id: id, flags: UInt32(O_RDWR), position: 0, path: state.path, state: state), object: object)
        return id
    }
}

/// Copies a file's data runs (read through `handle`) into an image file at
/// their own offsets, the image file as long as the file: holes stay holes.
func saveContents(of handle: FileDescriptor, extents: [FileExtent], size: Int64, object: String, to path: String,
                  context: FileTableBuilder) throws {
    context.created.append(path)
    let out = try Files.open(path, .writeOnly, options: [.create, .exclusiveCreate, .noFollow], permissions: [.ownerReadWrite])
    defer { try? out.close() }
    try FileFacts.copyExtents(extents, from: handle, to: out, size: size, object: object)
}

/// Fills `target` from an image file `saveContents` wrote: only the data runs
/// (the whole file for an image that predates them), then the size.
func restoreContents(to target: FileDescriptor, extents: [FileExtent]?, size: Int64, from path: String, object: String) throws {
    let source = try Files.open(path, .readOnly)
    defer { try? source.close() }
    let st = try Files.stat(source, object: path)
    guard Int64(st.st_size) == size else {
        throw ImageError(file: fileName(of: path), "holds \(st.st_size) bytes, the file had \(size)")
    }
    try FileFacts.copyExtents(extents ?? (size > 0 ? [FileExtent(offset: 0, length: size)] : []), from: source, to: target,
                              size: size, object: object)
}
