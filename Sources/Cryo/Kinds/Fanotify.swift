import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// fanotify: the group's init flags and event flags, and each mark on a file
/// (found again from its file handle, as inotify's watches), on a mount or on
/// a whole file system, with its event mask, ignore mask and mark flags.
/// Events queued and not read yet are dropped (droppedEventsWarning, Inotify.swift).
public struct FanotifyState: DescriptorKind {
    static let name = "fanotify"

    public enum Target: String, Codable, Sendable { case inode, mount, filesystem }
    public struct Mark: Codable, Sendable {
        public var target: Target
        /// The marked file, or the mount point of the marked mount or file system.
        public var path: String
        /// st_dev of `path` at dump (inode and file system marks): restore refuses another file system there.
        public var device: UInt64?
        /// The marked inode (inode marks): restore refuses another file at the path.
        public var inode: UInt64?
        /// FAN_MARK_* flags fdinfo reports (ignored-survives-modify, evictable, ignore).
        public var flags: UInt32
        public var mask: UInt64
        public var ignoredMask: UInt64
    }
    /// fanotify_init's flags (class, reporting, limits) and event_f_flags.
    public var initFlags: UInt32
    public var eventFlags: UInt32
    public var marks: [Mark]
    /// Bytes of events queued and not read at dump: dropped.
    public var droppedEventBytes: Int?

    // FAN_MARK_* values of <linux/fanotify.h>.
    private static let markMount: UInt32 = 0x10, markFilesystem: UInt32 = 0x100, markIgnoredMask: UInt32 = 0x20
    private static let markIgnoredSurviveModify: UInt32 = 0x40, markEvictable: UInt32 = 0x200, markIgnore: UInt32 = 0x400
    private static let markDontFollow: UInt32 = 0x04

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> FanotifyState? {
        guard p.link == "anon_inode:[fanotify]" else { return nil }
        let queued = try FileObjects.bytesReadable(p.handle, object: p.object)
        if queued > 0 { table.warn(droppedEventsWarning(p.object, "fanotify group", bytes: queued)) }
        var initFlags: UInt32?, eventFlags: UInt32?
        var marks: [Mark] = []
        for (line, fields) in fdinfoFields(p.info, prefix: "fanotify ") {
            func hexField(_ key: String) -> UInt64? { fields[key].flatMap { UInt64($0, radix: 16) } }
            if let flags = hexField("flags"), let events = hexField("event-flags") {
                initFlags = UInt32(truncatingIfNeeded: flags)
                eventFlags = UInt32(truncatingIfNeeded: events)
                continue
            }
            guard let markFlags = hexField("mflags"), let mask = hexField("mask"), let ignored = hexField("ignored_mask") else {
                throw CryoError("\(p.object): unreadable fanotify line in fdinfo: \(line)")
            }
            var mark = Mark(target: .inode, path: "", flags: UInt32(truncatingIfNeeded: markFlags), mask: mask, ignoredMask: ignored)
            if let inode = hexField("ino"), let sdev = hexField("sdev") {
                mark.path = try InotifyState.resolve(fields, kernelDevice: sdev, inode: inode, object: "\(p.object) (fanotify mark)")
                mark.device = FileObjects.deviceNumber(kernelEncoded: sdev)
                mark.inode = inode
            } else if let mountID = hexField("mnt_id") {
                mark.target = .mount
                mark.path = try mountPoint(pid: p.pid, object: p.object) { $0 == mountID }
            } else if let sdev = hexField("sdev") {
                mark.target = .filesystem
                let wanted = "\(sdev >> 20):\(sdev & 0xfffff)"
                mark.path = try mountPoint(pid: p.pid, object: p.object) { _, device, _ in device == wanted }
                mark.device = FileObjects.deviceNumber(kernelEncoded: sdev)
            } else {
                throw CryoError("\(p.object): a fanotify mark of an unknown kind: \(line)")
            }
            marks.append(mark)
        }
        guard let initFlags, let eventFlags else { throw CryoError("\(p.object): fdinfo shows no fanotify flags line") }
        return FanotifyState(initFlags: initFlags, eventFlags: eventFlags, marks: marks, droppedEventBytes: queued > 0 ? queued : nil)
    }

    /// The mount point (as `pid` sees it) of the first mount `matches` takes, those of a file system's root first.
    private static func mountPoint(pid: pid_t, object: String, matching matches: (UInt64, String, String) -> Bool) throws -> String {
        var found: [(root: String, point: String)] = []
        for line in try Files.readString("/proc/\(pid)/mountinfo").split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count > 4, let id = UInt64(f[0]), matches(id, String(f[2]), String(f[3])) else { continue }
            found.append((String(f[3]), unescapeMountPath(String(f[4]))))
        }
        guard let best = found.first(where: { $0.root == "/" }) ?? found.first else {
            throw CryoError("\(object): the mount a fanotify mark is on is not in /proc/\(pid)/mountinfo")
        }
        return best.point
    }

    private static func mountPoint(pid: pid_t, object: String, id matches: (UInt64) -> Bool) throws -> String {
        try mountPoint(pid: pid, object: object) { id, _, _ in matches(id) }
    }

    func validate() -> String? {
        marks.first { $0.path.isEmpty || !$0.path.hasPrefix("/") }.map { "a fanotify mark has no absolute path (\($0.path))" }
    }

    func summary(_ file: FileTable.OpenFile) -> String {
        "fanotify flags 0x\(hex(UInt64(initFlags))) " + marks.map { mark in
            "\(mark.target.rawValue) \(mark.path) mask 0x\(hex(mark.mask))" + (mark.ignoredMask != 0 ? " ignoring 0x\(hex(mark.ignoredMask))" : "")
        }.joined(separator: ", ") + (droppedEventBytes.map { " (\($0) bytes of queued events dropped at dump)" } ?? "")
    }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        let fd = try FileObjects.fanotify(flags: initFlags, eventFlags: eventFlags, object: object)
        do {
            for mark in marks {
                var dontFollow: UInt32 = 0
                if let device = mark.device {
                    // An inode mark's path is a symlink only when the symlink itself is marked (FAN_MARK_DONT_FOLLOW,
                    // which fdinfo does not show): not followed, then.
                    guard let st = try? Files.stat(mark.path, follow: mark.target != .inode), UInt64(st.st_dev) == device,
                          mark.inode.map({ UInt64(st.st_ino) == $0 }) ?? true else {
                        throw CryoError("\(object): fanotify-marked path \(mark.path) is gone or is another file since the dump")
                    }
                    if mark.target == .inode && st.st_mode & S_IFMT == S_IFLNK { dontFollow = Self.markDontFollow }
                }
                let target: UInt32 = switch mark.target { case .inode: 0; case .mount: Self.markMount; case .filesystem: Self.markFilesystem }
                let type = target | dontFollow
                if mark.mask != 0 {
                    try FileObjects.addFanotifyMark(fd, flags: type | (mark.flags & Self.markEvictable), mask: mark.mask,
                                                    path: mark.path, object: object)
                }
                if mark.ignoredMask != 0 {
                    let ignore = mark.flags & Self.markIgnore != 0 ? Self.markIgnore : Self.markIgnoredMask
                    let kept = mark.flags & (Self.markIgnoredSurviveModify | Self.markEvictable)
                    try FileObjects.addFanotifyMark(fd, flags: type | ignore | kept, mask: mark.ignoredMask, path: mark.path, object: object)
                }
            }
        } catch {
            try? fd.close()
            throw error
        }
        return fd
    }
}
