import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// inotify: every watch with its watch descriptor, event mask and the path it
/// watches. The path is found from the file handle fdinfo prints, resolved on
/// a mount of the watched file system, so it is right even when the watched
/// file was renamed after the watch was added.
public struct InotifyState: DescriptorKind {
    static let name = "inotify"
    public struct Watch: Codable, Sendable {
        public var wd: Int32
        public var mask: UInt32
        public var path: String
        /// Device and inode of the watched file at dump; restore refuses another file at the path.
        public var device: UInt64
        public var inode: UInt64
    }
    public var watches: [Watch]

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> InotifyState? {
        guard p.link == "anon_inode:inotify" else { return nil }
        let queued = try FileObjects.bytesReadable(p.handle, object: p.object)
        if queued > 0 {
            throw CryoError("\(p.object): inotify instance with \(queued) bytes of events not yet read; they cannot be queued again, not supported yet")
        }
        var watches: [Watch] = []
        for (line, fields) in fdinfoFields(p.info, prefix: "inotify ") {
            guard let (wd, mask, sdev, ino) = watchNumbers(fields) else {
                throw CryoError("\(p.object): unreadable inotify line in fdinfo: \(line)")
            }
            let path = try resolve(fields, kernelDevice: sdev, inode: ino, object: "\(p.object) (inotify wd \(wd))")
            // The kernel prints dev_t as MAJOR << 20 | MINOR; stat gives the glibc encoding.
            let device = FileObjects.deviceNumber(kernelEncoded: sdev)
            watches.append(Watch(wd: wd, mask: mask, path: path, device: device, inode: ino))
        }
        return InotifyState(watches: watches.sorted { $0.wd < $1.wd })
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
                lastError = "the watched file (inode \(inode)) has no path any more (\(path))"
                continue
            }
            return path
        }
        throw CryoError("\(object): cannot find the watched path: \(lastError)")
    }

    func summary(_ file: FileTable.OpenFile) -> String {
        "inotify " + watches.map { "wd \($0.wd) \($0.path) mask 0x\(hex(UInt64($0.mask)))" }.joined(separator: ", ")
    }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        let fd = try FileObjects.inotify(nonBlocking: Int32(bitPattern: file.flags) & O_NONBLOCK != 0, object: object)
        do {
            for w in watches {
                guard let st = try? Files.stat(w.path), UInt64(st.st_ino) == w.inode, UInt64(st.st_dev) == w.device else {
                    throw CryoError("\(object): watched path \(w.path) is gone or is another file since the dump")
                }
                let got = try FileObjects.addInotifyWatch(fd, path: w.path, mask: w.mask, wd: w.wd, object: object)
                guard got == Int(w.wd) else {
                    throw CryoError("\(object): \(w.path) was given watch descriptor \(got), not \(w.wd) (two watches of one file?)")
                }
            }
        } catch {
            try? fd.close()
            throw error
        }
        return fd
    }
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
