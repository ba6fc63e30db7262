import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// inotify: every watch with its watch descriptor, event mask and the path it
/// watches. The path is found from the file handle fdinfo prints, resolved on
/// a mount of the watched file system, so it is right even when the watched
/// file was renamed after the watch was added. A watched file that was unlinked
/// but that the tree still holds open or maps comes back as that file does (a
/// ghost, from the image), and is watched again through it.
public struct InotifyState: DescriptorKind {
    static let name = "inotify"
    public struct Watch: Codable, Sendable {
        public var wd: Int32
        public var mask: UInt32
        /// The watched path; of an unlinked file, the name it had.
        public var path: String
        /// Device and inode of the watched file at dump; restore refuses another file at the path.
        public var device: UInt64
        public var inode: UInt64
        /// An unlinked file: the file table entry that brings it back (a ghost), watched through that.
        public var file: Int? = nil

        /// Whether `path` still names the watched file; its mode (a symlink itself may be watched, IN_DONT_FOLLOW).
        @discardableResult
        func checkPath(object: String) throws -> mode_t {
            // Not followed: the path found from the file handle is a symlink only if the symlink is what is watched.
            guard let st = try? Files.stat(path, follow: false), UInt64(st.st_ino) == inode, UInt64(st.st_dev) == device else {
                throw CryoError("\(object): watched path \(path) is gone or is another file since the dump")
            }
            return st.st_mode
        }
    }
    public var watches: [Watch]
    /// Bytes of events queued and not read at dump: dropped (see `droppedEventsWarning`).
    public var droppedEventBytes: Int?

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> InotifyState? {
        guard p.link == "anon_inode:inotify" else { return nil }
        let queued = try FileObjects.bytesReadable(p.handle, object: p.object)
        if queued > 0 { table.warn(droppedEventsWarning(p.object, "inotify instance", bytes: queued)) }
        var watches: [Watch] = []
        for (line, fields) in fdinfoFields(p.info, prefix: "inotify ") {
            guard let (wd, mask, sdev, ino) = watchNumbers(fields) else {
                throw CryoError("\(p.object): unreadable inotify line in fdinfo: \(line)")
            }
            // No path: an unlinked file, whose entry finishDump looks for once every descriptor is dumped.
            let path = try resolveIfLinked(fields, kernelDevice: sdev, inode: ino, object: "\(p.object) (inotify wd \(wd))") ?? ""
            // The kernel prints dev_t as MAJOR << 20 | MINOR; stat gives the glibc encoding.
            let device = FileObjects.deviceNumber(kernelEncoded: sdev)
            watches.append(Watch(wd: wd, mask: mask, path: path, device: device, inode: ino))
        }
        return InotifyState(watches: watches.sorted { $0.wd < $1.wd }, droppedEventBytes: queued > 0 ? queued : nil)
    }

    /// A watch of an unlinked file: the file comes back only if a process of the tree holds it
    /// open or maps it (its entry then holds its contents); it is watched again through that.
    static func finishDump(_ table: FileTableBuilder) throws {
        for (file, state) in entries(table.table.files) where state.watches.contains(where: { $0.path.isEmpty }) {
            var state = state
            for i in state.watches.indices where state.watches[i].path.isEmpty {
                let w = state.watches[i]
                guard let ghost = RegularFileState.entries(table.table.files).first(where: {
                    $0.state.unlinked && $0.state.device == w.device && $0.state.inode == w.inode
                }) else {
                    throw CryoError("\(table.objects[file.id] ?? "file #\(file.id)") (inotify wd \(w.wd)): the watched file (inode \(w.inode)) "
                        + "was unlinked, and no process of the tree holds it open or maps it, so it cannot come back; not supported")
                }
                state.watches[i].file = ghost.file.id
                state.watches[i].path = ghost.state.path
            }
            table.table.files[file.id].state = state
        }
    }

    func validate() -> String? {
        watches.first { !$0.path.hasPrefix("/") }.map { "inotify watch \($0.wd) of no absolute path (\($0.path))" }
    }

    static func validate(_ files: [FileTable.OpenFile]) -> String? {
        for (file, state) in entries(files) {
            for w in state.watches {
                guard let ghost = w.file else { continue }
                guard files.indices.contains(ghost), let target = files[ghost].state as? RegularFileState, target.unlinked else {
                    return "file #\(file.id): inotify watch \(w.wd) names file #\(ghost), which is no unlinked regular file"
                }
            }
        }
        return nil
    }

    /// The numbers of one watch line. The kernel prints every one of them in hex, the
    /// watch descriptor too: "wd:1a" is watch 26.
    static func watchNumbers(_ fields: [String: String]) -> (wd: Int32, mask: UInt32, kernelDevice: UInt64, inode: UInt64)? {
        guard let wd = fields["wd"].flatMap({ Int32($0, radix: 16) }), let mask = fields["mask"].flatMap({ UInt32($0, radix: 16) }),
              let sdev = fields["sdev"].flatMap({ UInt64($0, radix: 16) }), let ino = fields["ino"].flatMap({ UInt64($0, radix: 16) }) else {
            return nil
        }
        return (wd, mask, sdev, ino)
    }

    /// The path of the watched inode: open_by_handle_at through a mount of its device.
    static func resolve(_ fields: [String: String], kernelDevice: UInt64, inode: UInt64, object: String) throws -> String {
        guard let path = try resolveIfLinked(fields, kernelDevice: kernelDevice, inode: inode, object: object) else {
            throw CryoError("\(object): cannot find the watched path: the watched file (inode \(inode)) has no path any more")
        }
        return path
    }

    /// As `resolve`, but nil when the file was found and no name reaches it any more (unlinked).
    static func resolveIfLinked(_ fields: [String: String], kernelDevice: UInt64, inode: UInt64, object: String) throws -> String? {
        guard let length = fields["fhandle-bytes"].flatMap({ UInt32($0, radix: 16) }), length > 0,
              let type = fields["fhandle-type"].flatMap({ Int32($0, radix: 16) }), let hexHandle = fields["f_handle"],
              hexHandle.count == Int(length) * 2 else {
            throw CryoError("\(object): the watched file system gives no file handle, so the watched path cannot be found; not supported")
        }
        var bytes: [UInt8] = []
        var index = hexHandle.startIndex
        while index < hexHandle.endIndex {
            let next = hexHandle.index(index, offsetBy: 2)
            guard let byte = UInt8(hexHandle[index..<next], radix: 16) else { throw CryoError("\(object): bad f_handle \(hexHandle)") }
            bytes.append(byte)
            index = next
        }
        let wanted = "\(kernelDevice >> 20):\(kernelDevice & 0xfffff)"
        // Mounts of that device, those of its root first.
        var mounts: [(root: String, point: String)] = []
        for line in try Files.readString("/proc/self/mountinfo").split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count > 4, f[2] == wanted else { continue }
            mounts.append((String(f[3]), unescapeMountPath(String(f[4]))))
        }
        mounts.sort { ($0.root == "/" ? 0 : 1) < ($1.root == "/" ? 0 : 1) }
        var lastError = "no mount of device \(wanted) in cryo's mount namespace"
        var unlinked = false
        for mount in mounts {
            // Not O_PATH: open_by_handle_at refuses those.
            guard let mountFD = try? Files.open(mount.point, .readOnly, options: [.directory]) else { continue }
            defer { try? mountFD.close() }
            let fd: FileDescriptor
            do { fd = try FileObjects.open(handle: bytes, type: type, on: mountFD, object: "through \(mount.point)") } catch {
                lastError = "\(error)"
                continue
            }
            defer { try? fd.close() }
            guard let st = try? Files.stat(fd, object: object), UInt64(st.st_ino) == inode else { continue }
            let path = try Files.readLink("/proc/self/fd/\(fd.rawValue)")
            guard path.hasPrefix("/"), !path.hasSuffix(RegularFileState.deletedSuffix) || Files.exists(path) else {
                // Another mount of the device may still show a path (a bind mount of a folder that lost it).
                unlinked = unlinked || st.st_nlink == 0
                lastError = "the watched file (inode \(inode)) has no path any more (\(path))"
                continue
            }
            return path
        }
        if unlinked { return nil }
        throw CryoError("\(object): cannot find the watched path: \(lastError)")
    }

    func summary(_ file: FileTable.OpenFile) -> String {
        "inotify " + watches.map {
            "wd \($0.wd) \($0.path)\($0.file.map { " (unlinked, file #\($0))" } ?? "") mask 0x\(hex(UInt64($0.mask)))"
        }.joined(separator: ", ") + (droppedEventBytes.map { " (\($0) bytes of queued events dropped at dump)" } ?? "")
    }

    /// The watches go on once every description is open (InotifyRebuilder): cryo's own opening,
    /// creating and unlinking of files meanwhile (ghosts are named for a moment) queues no events.
    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        let fd = try FileObjects.inotify(nonBlocking: Int32(bitPattern: file.flags) & O_NONBLOCK != 0, object: object)
        do {
            // Refused now, before any process is made, when a watched path is gone.
            for w in watches where w.file == nil { try w.checkPath(object: object) }
            if !watches.isEmpty { try context.rebuilder(InotifyRebuilder.self).instances.append((file.id, object)) }
        } catch {
            try? fd.close()
            throw error
        }
        return fd
    }

    /// Adds the watches to `fd`, each under its own descriptor; `opened` are the descriptions by file id.
    func addWatches(_ fd: FileDescriptor, opened: [FileDescriptor], object: String) throws {
        for w in watches {
            // An unlinked file through the restored one: /proc/self/fd leads to it without a name.
            let path = w.file.map { "/proc/self/fd/\(opened[$0].rawValue)" } ?? w.path
            // A watch of a symlink itself was added with IN_DONT_FOLLOW, which the mask does not keep.
            let dontFollow = try w.file == nil && w.checkPath(object: object) & S_IFMT == S_IFLNK
            let got = try FileObjects.addInotifyWatch(fd, path: path, mask: w.mask | (dontFollow ? UInt32(IN_DONT_FOLLOW) : 0),
                                                      wd: w.wd, object: object)
            guard got == Int(w.wd) else {
                throw CryoError("\(object): \(w.path) was given watch descriptor \(got), not \(w.wd) (two watches of one file?)")
            }
        }
    }
}

/// The inotify instances restored, whose watches go on once every description is open.
final class InotifyRebuilder: KindRebuilder {
    var instances: [(id: Int, object: String)] = []

    init(_ context: OpenContext) {}

    func finish(_ context: OpenContext, pids: RestoredPids) throws {
        for (id, object) in instances {
            guard let state = context.files[id].state as? InotifyState else { continue }
            try state.addWatches(context.opened[id], opened: context.opened, object: object)
        }
        instances = []
    }

    func closeAll() { instances = [] }
}

/// fdinfo lines starting with `prefix` ("inotify ", "fanotify "), each with its "key:value" words.
func fdinfoFields(_ info: FDInfo, prefix: String) -> [(line: Substring, fields: [String: String])] {
    info.text.split(separator: "\n").filter { $0.hasPrefix(prefix) }.map { line in
        var fields: [String: String] = [:]
        for token in line.dropFirst(prefix.count).split(separator: " ") {
            let parts = token.split(separator: ":", maxSplits: 1)
            if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
        }
        return (line, fields)
    }
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
func unescapeMountPath(_ text: String) -> String {
    guard text.contains("\\") else { return text }
    var out: [UInt8] = []
    let b = Array(text.utf8)
    var i = 0
    while i < b.count {
        if b[i] == UInt8(ascii: "\\"), i + 3 < b.count, let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
            out.append(v)
            i += 4
        } else {
            out.append(b[i])
            i += 1
        }
    }
    return String(decoding: out, as: UTF8.self)
}

/// Queued inotify and fanotify events are dropped at dump, as CRIU drops them: no
/// call puts an event into a queue, and making the events happen again would touch
/// the watched files and could not give back their cookies or the names of files
/// gone since. A dump that refused them would refuse any busy watcher, while a
/// watcher must already expect to miss events (a full queue drops them). The
/// dump says so, and the image keeps how many bytes went (`cryo show`).
func droppedEventsWarning(_ object: String, _ what: String, bytes: Int) -> String {
    "\(object): \(what) had \(bytes) bytes of queued events not yet read; they are dropped (no call can queue them again)"
}
