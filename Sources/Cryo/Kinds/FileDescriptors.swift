import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// Open file descriptions of the whole tree (files.img), each stored once
/// however many descriptors in however many processes refer to it, so they
/// share offset and flags again after restore.
public struct FileTable: Codable, Sendable {
    public struct OpenFile: Codable, Sendable {
        public var id: Int
        /// O_* status flags and access mode of the description (no O_CLOEXEC).
        public var flags: UInt32
        public var position: Int64
        public var path: String?
        /// F_SETOWN_EX, F_SETSIG and O_ASYNC, when any is set.
        public var owner: FileOwner?
        /// The kind and its state (DescriptorKind.swift: `kind` and the kind's object in JSON).
        var state: any DescriptorKind

        init(id: Int, flags: UInt32, position: Int64, path: String? = nil, state: any DescriptorKind) {
            self.id = id
            self.flags = flags
            self.position = position
            self.path = path
            self.state = state
        }

        /// `kind` in files.img: regular, pipe, unixSocket...
        public var kind: String { type(of: state).name }
        /// One line for `cryo show`.
        public var summary: String { state.summary(self) + (owner.map { " (\($0.summary))" } ?? "") }
    }
    public var files: [OpenFile]
}

/// One process's descriptor table: which fd number names which description.
public struct DescriptorsRecord: Codable, Sendable {
    public struct Descriptor: Codable, Sendable {
        public var fd: Int32
        public var closeOnExec: Bool
        public var file: Int  // id in FileTable
        public var locks: [FileLock]?
        /// Not the process's own: a file another process of the tree holds, put here by restore only
        /// for the kinds' after-install work (an epoll watch) and closed right after it.
        public var borrowed: Bool? = nil
    }
    public var descriptors: [Descriptor]
}

/// What dump knows of one descriptor before asking its kind.
struct DescriptorProbe {
    let pid: pid_t
    let fd: Int32
    let link: String
    let flags: UInt32
    let position: Int64
    let info: FDInfo
    let stat: Glibc.stat
    let handle: FileDescriptor  // our duplicate (pidfd_getfd): same open file description
    /// For a descriptor in flight in a socket queue (then `pid` and `fd` are cryo's own): where it was found.
    var inFlight: String? = nil
    var object: String { inFlight ?? "pid \(pid) fd \(fd)" }
}

/// Builds the file table while descriptor tables are dumped, one process after another.
final class FileTableBuilder {
    let paths: ImagePaths
    let options: KindOptions
    var table = FileTable(files: [])
    /// Side files written so far, removed again if the dump fails.
    var created: [String] = []
    /// "pid P fd N" of the first descriptor of each description, for refusals made once the whole tree is seen.
    private(set) var objects: [Int: String] = [:]
    /// Processes whose descriptor tables were dumped: the tree (pidfds may name only these).
    private(set) var dumpedPids = Set<pid_t>()
    /// Descriptions seen so far by device, inode, position and status flags: only these can be the
    /// same description (one description has one position and one set of flags; the tree is frozen).
    /// Most keys have one description: no kcmp at all for them.
    private var seen: [DescriptionKey: KcmpTree] = [:]
    /// Whether the file system of a device is mqueue (PosixMqueue.isQueue), asked once per device.
    private var mqueueDevices: [UInt64: Bool] = [:]
    /// Duplicates a kind holds until the tree is dead, with what to do to each right before the kill.
    private var held: [(handle: FileDescriptor, beforeKill: (FileDescriptor) -> Void)] = []
    /// Descriptors in flight (SCM_RIGHTS) found in socket queues, open in cryo until the dump ends,
    /// with what to do with the file id each gets.
    private var inFlight: [(handle: FileDescriptor, object: String, resolved: (FileTableBuilder, Int) -> Void)] = []
    private var inFlightDone = 0
    /// Pipes (by inode: all are on pipefs) and FIFOs (by device and inode), apart: a pipefs
    /// inode number may also be a FIFO's on disk, whose buffered bytes went with an end dumped already.
    var pipeBytesTaken = Set<UInt64>(), fifoBytesTaken = Set<PipeIdentity>()
    /// Where pipes' bytes are copied to be read without draining them (PipeEndState.peek).
    let scratchPipes = ScratchPipes()
    /// What the dump lets go, one line each, for the log (e.g. queued inotify events).
    private(set) var warnings: [String] = []
    func warn(_ line: String) { warnings.append(line) }
    /// The tree's live processes (set once frozen).
    var treePids: [pid_t] = []
    /// Every thread of those (leaders too).
    var treeTids = Set<pid_t>()
    /// The tree's sessions whose terminal is a pty of the tree (read before any descriptor).
    var sessionTerminals: [SessionTerminal] = []
    /// What kinds look up once per dump (the tree is frozen meanwhile): sock_diag tables..., by key.
    var lookups: [String: Any] = [:]
    /// Duplicates a kind keeps for its finishDump, by file id.
    private var keptForFinish: [Int: FileDescriptor] = [:]
    /// Of the process being dumped: numbers above all its own where restore puts a file that another
    /// process of the tree holds (borrow), and the next such number.
    private var borrowed: [(fd: Int32, from: pid_t, fromFd: Int32)] = []
    private var nextBorrowedFd: Int32 = 0
    /// Every descriptor of the tree by its file's inode number, made on first use (borrow's candidates).
    private var treeDescriptorsByInode: [UInt64: [(pid: pid_t, fd: Int32)]]?

    init(paths: ImagePaths, options: KindOptions) {
        self.paths = paths
        self.options = options
    }

    /// What kinds took out of kernel objects (bytes waiting on a terminal), put back if the dump fails.
    private var undo: [() -> Void] = []

    /// `putBack` runs if the dump fails, while the tree is still frozen (last registered first).
    func onFailure(_ putBack: @escaping () -> Void) {
        undo.append(putBack)
    }

    /// The dump failed: everything taken goes back, before the tree is let go.
    func undoAll() {
        for putBack in undo.reversed() { putBack() }
        undo = []
    }

    /// Keeps a duplicate of `handle` until `release()`, calling `beforeKill` on it right before the tree is killed.
    func hold(_ handle: FileDescriptor, object: String, beforeKill: @escaping (FileDescriptor) -> Void) throws {
        held.append((try FileObjects.duplicate(handle, object: object), beforeKill))
    }

    /// Right before the dumped tree is killed.
    func prepareForKill() {
        for h in held { h.beforeKill(h.handle) }
    }

    /// After the kill (or instead of it): drops cryo's own references.
    func release() {
        undo = []
        for h in held { try? h.handle.close() }
        held = []
        for f in inFlight { try? f.handle.close() }
        inFlight = []
        for h in keptForFinish.values { try? h.close() }
        keptForFinish = [:]
        scratchPipes.closeAll()
    }

    /// Keeps a duplicate of `handle` for the kind's finishDump (`kept(id)`), until `release()`.
    func keepForFinish(_ handle: FileDescriptor, id: Int, object: String) throws {
        keptForFinish[id] = try FileObjects.duplicate(handle, object: object)
    }

    func kept(_ id: Int) -> FileDescriptor? { keptForFinish[id] }

    /// A descriptor received in cryo from a socket queue: it is dumped (or found to be one
    /// already dumped) in `finish`, once every process's own descriptors are known.
    func addInFlight(_ handle: FileDescriptor, object: String, resolved: @escaping (FileTableBuilder, Int) -> Void) {
        inFlight.append((handle, object, resolved))
    }

    func dumpInFlight() throws {
        let me = Kernel.currentPid()
        // Dumping one may find more: a socket in flight with descriptors in its own queue.
        while inFlightDone < inFlight.count {
            let (handle, object, resolved) = inFlight[inFlightDone]
            inFlightDone += 1
            let fd = handle.rawValue
            let link = try Files.readLink("/proc/self/fd/\(fd)")
            let info = try parseFDInfo(try Files.readString("/proc/self/fdinfo/\(fd)"))
            // A kind whose state means nothing in flight refuses it in its own dump (probe.inFlight).
            let id = try describe(pid: me, fd: fd, link: link, info: info, handle: handle, inFlight: "\(object) (\(link))")
            resolved(self, id)
        }
    }

    /// A process whose descriptor table is its parent's (CLONE_FILES): it is of the tree, its descriptors are the parent's.
    func sharedTable(pid: pid_t) -> DescriptorsRecord {
        dumpedPids.insert(pid)
        return DescriptorsRecord(descriptors: [])
    }

    /// Whether `p` is a POSIX message queue: the file system of its device, asked once per device.
    func isMqueue(_ p: DescriptorProbe) -> Bool {
        let device = UInt64(p.stat.st_dev)
        if let known = mqueueDevices[device] { return known }
        let queue = PosixMqueue.isQueue(p.handle)
        mqueueDevices[device] = queue
        return queue
    }

    /// A number of the process being dumped, above all its descriptors and `above`, at which restore
    /// puts `from`'s `fromFd` (another process of the tree) for the after-install work, then closes it.
    func borrow(_ from: pid_t, fd fromFd: Int32, above: Int32) -> Int32 {
        let fd = max(nextBorrowedFd, above + 1)
        nextBorrowedFd = fd + 1
        borrowed.append((fd, from, fromFd))
        return fd
    }

    /// The tree's descriptors whose file has inode number `inode` (on any device): one pass over the
    /// tree the first time, so each lookup is cheap however many descriptors the tree holds.
    func treeDescriptors(inode: UInt64) -> [(pid: pid_t, fd: Int32)] {
        if treeDescriptorsByInode == nil {
            var byInode: [UInt64: [(pid: pid_t, fd: Int32)]] = [:]
            for pid in treePids {
                // A process whose table cannot be read holds nothing that could be borrowed.
                let numbers = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd"))?.compactMap { Int32($0) } ?? []
                for fd in numbers {
                    if let st = try? Files.stat("/proc/\(pid)/fd/\(fd)") { byInode[UInt64(st.st_ino), default: []].append((pid, fd)) }
                }
            }
            treeDescriptorsByInode = byInode
        }
        return treeDescriptorsByInode?[inode] ?? []
    }

    func dump(pid: pid_t) throws -> DescriptorsRecord {
        dumpedPids.insert(pid)
        let pidfd = try Pidfd.open(pid)
        defer { try? pidfd.close() }
        // Names looked up in these two folders, not from / each time (10,000 descriptors are 20,000 lookups).
        let links = try Files.open("/proc/\(pid)/fd", .readOnly, options: [.directory])
        defer { try? links.close() }
        let infos = try Files.open("/proc/\(pid)/fdinfo", .readOnly, options: [.directory])
        defer { try? infos.close() }
        var descriptors: [DescriptorsRecord.Descriptor] = []
        let numbers = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").compactMap { Int32($0) }.sorted()
        descriptors.reserveCapacity(numbers.count)
        borrowed = []
        nextBorrowedFd = (numbers.last ?? -1) + 1
        for fd in numbers {
            let link = try Files.readLink(in: links, String(fd), object: "/proc/\(pid)/fd/\(fd)")
            let info = try parseFDInfo(try Files.readString(in: infos, String(fd), singleRecord: true, object: "/proc/\(pid)/fdinfo/\(fd)"))
            let handle = try Pidfd.getfd(pidfd, pid: pid, fd: fd)
            defer { try? handle.close() }
            let closeOnExec = info.flags & UInt32(O_CLOEXEC) != 0
            let lockList = try FileLock.parse(info, object: "pid \(pid) fd \(fd) (\(link))")
            let locks = lockList.isEmpty ? nil : lockList
            let id = try describe(pid: pid, fd: fd, link: link, info: info, handle: handle, inFlight: nil)
            descriptors.append(.init(fd: fd, closeOnExec: closeOnExec, file: id, locks: locks))
        }
        // Described once the process's own are: a kind's dump may not describe another file in the middle of its own.
        for b in borrowed {
            let fromPidfd = try Pidfd.open(b.from)
            defer { try? fromPidfd.close() }
            let handle = try Pidfd.getfd(fromPidfd, pid: b.from, fd: b.fromFd)
            defer { try? handle.close() }
            let link = try Files.readLink("/proc/\(b.from)/fd/\(b.fromFd)")
            let info = try parseFDInfo(try Files.readString("/proc/\(b.from)/fdinfo/\(b.fromFd)"))
            let id = try describe(pid: b.from, fd: b.fromFd, link: link, info: info, handle: handle, inFlight: nil)
            descriptors.append(.init(fd: b.fd, closeOnExec: true, file: id, locks: nil, borrowed: true))
        }
        borrowed = []
        return DescriptorsRecord(descriptors: descriptors)
    }

    /// The file id of a description: one already dumped (a dup, or a description inherited
    /// from a parent, is stored once), or a new entry. `pid`'s `fd` must stay open until the dump ends.
    private func describe(pid: pid_t, fd: Int32, link: String, info: FDInfo, handle: FileDescriptor,
                          inFlight: String?) throws -> Int {
        let stat = try Files.stat(handle, object: inFlight ?? "pid \(pid) fd \(fd)")
        let key = DescriptionKey(device: UInt64(stat.st_dev), inode: UInt64(stat.st_ino), position: info.position,
                                 flags: info.flags & ~UInt32(O_CLOEXEC))
        if let id = try seen[key]?.find(pid: pid, fd: fd) { return id }
        let probe = DescriptorProbe(pid: pid, fd: fd, link: link, flags: info.flags & ~UInt32(O_CLOEXEC),
                                    position: info.position, info: info, stat: stat, handle: handle, inFlight: inFlight)
        let id = table.files.count
        guard let state = try DescriptorKinds.dump(probe, into: self, id: id) else {
            let what = link.hasPrefix("anon_inode:") ? "an \(link) descriptor" : "\(link)"
            throw CryoError("\(probe.object): \(what) is not supported yet")
        }
        var file = FileTable.OpenFile(id: id, flags: probe.flags, position: probe.position, path: state.recordedPath(probe), state: state)
        file.owner = try FileOwner.dump(handle, flags: probe.flags, object: probe.object)
        add(file, object: probe.object)
        try seen[key, default: KcmpTree()].insert(pid: pid, fd: fd, id: id)
        return id
    }

    /// Adds an entry (a kind may add one that no descriptor names, such as a mapped memfd).
    func add(_ file: FileTable.OpenFile, object: String) {
        table.files.append(file)
        objects[file.id] = object
    }

    /// Checks that need every process's descriptors: how unix sockets connect...
    func finish() throws {
        try dumpInFlight()
        for kind in DescriptorKinds.all { try kind.finishDump(self) }
    }
}

/// What every descriptor of one open file description shows alike.
struct DescriptionKey: Hashable {
    var device: UInt64, inode: UInt64
    var position: Int64
    var flags: UInt32
}

/// Descriptions of one DescriptionKey in kcmp's order (a fixed order of the kernel's file
/// pointers), as a treap: O(log n) kcmp and work per lookup or insert however many share
/// the key (a sorted array cost O(n) moves per insert: quadratic at a million).
struct KcmpTree {
    private struct Node {
        var pid: pid_t, fd: Int32, id: Int
        var priority: UInt32
        var left = -1, right = -1
    }
    private var nodes: [Node] = []
    private var root = -1

    /// The id of the description `pid`'s `fd` is, if it is here.
    func find(pid: pid_t, fd: Int32) throws -> Int? {
        var at = root
        while at >= 0 {
            let n = nodes[at]
            switch try Pidfd.compareFiles(n.pid, n.fd, pid, fd) {
            case 0: return n.id
            case 1: at = n.right  // the node's file comes first
            default: at = n.left
            }
        }
        return nil
    }

    /// Adds `pid`'s `fd` as description `id` (not here yet: `find` said so).
    mutating func insert(pid: pid_t, fd: Int32, id: Int) throws {
        // Priorities only need to look random to kcmp's order: a mix of the node's number
        // (the system generator was a getrandom call per description).
        var x = UInt64(nodes.count) &+ 0x9e37_79b9_7f4a_7c15
        x = (x ^ (x >> 30)) &* 0xbf58_476d_1ce4_e5b9
        x = (x ^ (x >> 27)) &* 0x94d0_49bb_1331_11eb
        nodes.append(Node(pid: pid, fd: fd, id: id, priority: UInt32(truncatingIfNeeded: x ^ (x >> 31))))
        let new = nodes.count - 1
        if nodes.count == 1 { root = new; return }
        root = try insert(new, under: root)
    }

    /// Puts `new` in the subtree at `at`, returning that subtree's root after rotations.
    private mutating func insert(_ new: Int, under at: Int) throws -> Int {
        guard at >= 0 else { return new }
        let n = nodes[at]
        if try Pidfd.compareFiles(n.pid, n.fd, nodes[new].pid, nodes[new].fd) == 1 {
            let child = try insert(new, under: n.right)
            nodes[at].right = child
            if nodes[child].priority > nodes[at].priority {  // rotate left
                nodes[at].right = nodes[child].left
                nodes[child].left = at
                return child
            }
        } else {
            let child = try insert(new, under: n.left)
            nodes[at].left = child
            if nodes[child].priority > nodes[at].priority {  // rotate right
                nodes[at].left = nodes[child].right
                nodes[child].right = at
                return child
            }
        }
        return at
    }
}

extension DescriptorsRecord {
    func validate(file: String, table: FileTable) throws {
        var seen = Set<Int32>()
        for d in descriptors {
            guard d.fd >= 0, d.fd < 1 << 20, seen.insert(d.fd).inserted, table.files.indices.contains(d.file) else {
                throw ImageError(file: file, record: "descriptors", "descriptor \(d.fd) is duplicated, out of range or names no file")
            }
        }
    }
}

extension FileTable {
    func validate(file: String) throws {
        for (i, f) in files.enumerated() where f.id != i {
            throw ImageError(file: file, record: "files", "file #\(i) carries id \(f.id)")
        }
        for f in files {
            if let problem = f.state.validate() ?? f.owner?.validate() { throw ImageError(file: file, record: "files", "file #\(f.id): \(problem)") }
        }
        for kind in DescriptorKinds.all {
            if let problem = kind.validate(files) { throw ImageError(file: file, record: "files", problem) }
        }
    }

    /// Opens every description in the controller, ready to be passed to the tasks.
    /// `holders` names, per file id, a descriptor that holds it ("pid 42 fd 3"), for error messages.
    func open(paths: ImagePaths, options: KindOptions, holders: [Int: String] = [:]) throws -> OpenedFiles {
        let context = OpenContext(files: files, paths: paths, options: options, holders: holders)
        do {
            for f in files {
                context.opened.append(try f.state.open(f, object: context.object(f), context: context))
            }
        } catch {
            context.closeRebuilders()
            for h in context.opened { try? h.close() }
            throw error
        }
        return OpenedFiles(context)
    }
}

/// A file table's descriptions, open in the controller, and what the kinds do once the
/// tree's processes exist (queued unix messages go back with their senders' pids).
final class OpenedFiles {
    private(set) var descriptors: [FileDescriptor]
    private let context: OpenContext

    init(_ context: OpenContext) {
        self.context = context
        descriptors = context.opened
    }

    /// Puts `fd` in place of description `id` (made later, inside a restored process), closing the stand-in.
    func replace(_ id: Int, with fd: FileDescriptor) throws {
        try? descriptors[id].close()
        descriptors[id] = fd
    }

    /// The new slave of the image's pty `index`, open in cryo until the descriptions are finished.
    func terminalSlave(index: Int32, object: String) throws -> FileDescriptor {
        try context.rebuilder(TerminalRebuilder.self).slave(index: index, object: object)
    }

    func finish(pids: RestoredPids) throws {
        defer { context.closeRebuilders() }
        try context.finishRebuilders(pids: pids)
    }

    func close() {
        context.closeRebuilders()
        for fd in descriptors { try? fd.close() }
    }
}

/// /proc/PID/fdinfo/FD: position and flags, plus every kind-specific line.
struct FDInfo {
    var position: Int64 = 0
    var flags: UInt32 = 0
    var text: String = ""
    /// Any "lock:" line (most descriptors have none: their lock parsing is skipped).
    var hasLockLines = false
    /// The value of the first "key: value" line with this key.
    func value(_ key: String) -> String? {
        var rest = text[...]
        while !rest.isEmpty {
            let end = rest.firstIndex(of: "\n") ?? rest.endIndex
            let line = rest[..<end]
            if line.hasPrefix(key), let colon = line.firstIndex(of: ":"), line[..<colon].trimmed() == key {
                return line[line.index(after: colon)...].trimmed()
            }
            rest = end == rest.endIndex ? "" : rest[rest.index(after: end)...]
        }
        return nil
    }
}

/// One pass over the bytes (10,000 descriptors are 10,000 of these): pos, flags, and whether
/// any lock line follows. A missing or unreadable field reads as 0, as before.
func parseFDInfo(_ text: String) throws -> FDInfo {
    var info = FDInfo(text: text)
    var copy = text
    copy.withUTF8 { bytes in
        func number(_ from: Int, _ end: Int, radix: Int64) -> Int64? {
            var i = from
            while i < end && (bytes[i] == 32 || bytes[i] == 9) { i += 1 }
            let negative = i < end && bytes[i] == 45  // "-"
            if negative { i += 1 }
            var value: Int64 = 0
            var digits = 0
            while i < end, bytes[i] >= 48, Int64(bytes[i] - 48) < radix {
                let (times, o1) = value.multipliedReportingOverflow(by: radix)
                let (sum, o2) = times.addingReportingOverflow(Int64(bytes[i] - 48))
                if o1 || o2 { return nil }
                value = sum
                digits += 1
                i += 1
            }
            while i < end && (bytes[i] == 32 || bytes[i] == 9) { i += 1 }
            return digits > 0 && i == end ? (negative ? -value : value) : nil
        }
        func starts(_ at: Int, _ end: Int, _ prefix: StaticString) -> Bool {
            let count = prefix.utf8CodeUnitCount
            guard end - at >= count else { return false }
            for k in 0..<count where bytes[at + k] != prefix.utf8Start[k] { return false }
            return true
        }
        var seenPosition = false, seenFlags = false
        var start = 0
        while start < bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != 10 { end += 1 }
            if !seenPosition && starts(start, end, "pos:") {
                seenPosition = true
                info.position = number(start + 4, end, radix: 10) ?? 0
            } else if !seenFlags && starts(start, end, "flags:") {
                seenFlags = true
                info.flags = number(start + 6, end, radix: 8).flatMap { UInt32(exactly: $0) } ?? 0
            } else if starts(start, end, "lock:") {
                info.hasLockLines = true
            }
            start = end + 1
        }
    }
    return info
}

/// O_TMPFILE (__O_TMPFILE | O_DIRECTORY), which Glibc does not export.
let temporaryFileFlag: Int32 = CRYO_O_TMPFILE

/// Opens `path` as the description was opened (never creating or truncating) and seeks.
func reopen(path: String, flags: UInt32, position: Int64, object: String) throws -> FileDescriptor {
    // O_ASYNC is armed by F_SETFL once the owner is set (FileOwner), not by open().
    var openFlags = Int32(bitPattern: flags & ~FileOwner.asyncFlag) & ~(O_CREAT | O_TRUNC | O_EXCL | O_NOCTTY) | O_CLOEXEC | O_NOCTTY
    // A file made with O_TMPFILE keeps that flag (which includes O_DIRECTORY) in its
    // description; reopening the file itself with it would fail with ENOTDIR or make another.
    if openFlags & temporaryFileFlag == temporaryFileFlag { openFlags &= ~temporaryFileFlag }
    // O_NOFOLLOW (mkstemp's) applies to the name it was opened by; on a /proc/self/fd
    // link it would open the link itself (O_PATH) or fail with ELOOP.
    if path.hasPrefix("/proc/self/fd/") { openFlags &= ~O_NOFOLLOW }
    let fd = try FileObjects.open(path, flags: openFlags, object: object)
    if position != 0 {
        do { _ = try fd.seek(offset: position, from: .start) } catch {
            try? fd.close()
            throw SyscallError("lseek", errno: error as? Errno ?? .ioError, object: object)
        }
    }
    return fd
}
