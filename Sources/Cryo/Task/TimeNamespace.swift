import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// Time namespaces: a process in one sees CLOCK_MONOTONIC and CLOCK_BOOTTIME
/// shifted by the namespace's offsets, and `unshare(CLONE_NEWTIME)` gives a
/// process a new one for the children it forks from then on (its own clocks
/// stay). Dump records, per namespace of the tree, both clocks as its
/// processes read them; restore makes each namespace again with offsets
/// chosen so that those clocks go on from where they stopped (on this host or
/// another, whose clocks started elsewhere), as CRIU does.
///
/// How each comes back: the root's namespace is made by a short-lived helper
/// and joined by the root (setns); a process that gives its children another
/// one unshares it itself, right before it clones the first child that lives
/// there (or once all its children exist), and cryo writes the offsets before
/// anyone enters. Children inherit the rest. Shapes this cannot rebuild (a
/// thread in a namespace of its own, a process that joined one with setns,
/// one namespace reached twice) are refused at dump in one line.
public struct TimeNamespaceRecord: Codable, Sendable, Equatable {
    /// The namespace's inode at dump: how processes name it in the image.
    public var id: UInt64
    /// CLOCK_MONOTONIC and CLOCK_BOOTTIME in the namespace at dump, in nanoseconds.
    public var monotonic: Int64
    public var boottime: Int64
    /// Its offsets at dump (nanoseconds), for people reading the image.
    public var monotonicOffset: Int64
    public var boottimeOffset: Int64
}

enum TimeNamespace {
    static let cloneNewTime: UInt64 = 0x80
    static let syscallUnshare = 272, syscallSetns = 308, syscallClose = 3

    struct Dumped {
        var records: [TimeNamespaceRecord] = []
        /// Per process: its namespace and its children's, nil where that is cryo's.
        var byPid: [pid_t: (time: UInt64?, children: UInt64?)] = [:]
    }

    static func dump(_ tree: FrozenTree, root: pid_t) throws -> Dumped {
        let mine = try identity(getpid(), "time")
        var dumped = Dumped()
        let live = tree.live
        // Nothing to record when the whole tree uses cryo's clocks (the common case: one stat per process).
        var differs = false
        var seen: [pid_t: (time: UInt64, children: UInt64)] = [:]
        for process in live {
            let own = try identity(process.pid, "time"), children = try identity(process.pid, "time_for_children")
            seen[process.pid] = (own, children)
            if own != mine || children != mine { differs = true }
        }
        guard differs else { return dumped }
        let byPid = Dictionary(uniqueKeysWithValues: live.map { ($0.pid, $0) })
        var madeBy: [UInt64: String] = [:]
        func made(_ id: UInt64, by who: String) throws {
            if let other = madeBy[id] {
                throw CryoError("time namespace time:[\(id)] is entered separately by \(other) and by \(who) (setns); not supported yet")
            }
            madeBy[id] = who
        }
        for process in live {
            let (own, children) = seen[process.pid]!
            let name = "pid \(process.pid) (\(process.comm))"
            for thread in process.threads.dropFirst() {
                let path = "/proc/\(process.pid)/task/\(thread.pid)/ns"
                let threadOwn = UInt64(try Files.stat("\(path)/time").st_ino)
                let threadChildren = UInt64(try Files.stat("\(path)/time_for_children").st_ino)
                if threadOwn != own || threadChildren != children {
                    throw CryoError("\(name) thread \(thread.pid) is in time namespace time:[\(threadOwn)] (children time:[\(threadChildren)]) "
                        + "while its leader is in time:[\(own)] (children time:[\(children)]); not supported yet")
                }
            }
            if process.pid == root {
                if own != mine { try made(own, by: name) }
            } else if let parent = byPid[process.ppid], let (parentOwn, parentChildren) = seen[parent.pid], own != parentOwn && own != parentChildren {
                throw CryoError("\(name) is in time namespace time:[\(own)], neither its parent \(parent.pid)'s time:[\(parentOwn)] "
                    + "nor the one it gives its children, time:[\(parentChildren)] (it joined with setns); not supported yet")
            }
            if children != own {
                guard children != mine else {
                    throw CryoError("\(name) is in time namespace time:[\(own)] but gives its children cryo's, time:[\(mine)] (setns); "
                        + "not supported yet")
                }
                try made(children, by: name)
                // Its children in its own namespace were forked before the unshare, those in the new one after:
                // restore clones them in image order, so the first kind must all come first.
                var sawNew = false
                for child in live where child.ppid == process.pid {
                    if seen[child.pid]!.time == children { sawNew = true } else if sawNew {
                        throw CryoError("\(name): child \(child.pid) is in its time namespace time:[\(own)] but comes after a child in "
                            + "time:[\(children)], the one it unshared for its children; not supported yet")
                    }
                }
            }
            dumped.byPid[process.pid] = (own == mine ? nil : own, children == mine ? nil : children)
        }
        for id in madeBy.keys.sorted() {
            // /proc/PID/timens_offsets shows the offsets of PID's children's namespace.
            guard let holder = live.first(where: { seen[$0.pid]!.children == id }) else {
                throw CryoError("time namespace time:[\(id)] of pid \(root): no process of the tree gives it to its children, "
                    + "so its offsets cannot be read; not supported yet")
            }
            let offsets = try readOffsets(holder.pid)
            dumped.records.append(TimeNamespaceRecord(id: id, monotonic: now(CLOCK_MONOTONIC) + offsets.monotonic,
                                                      boottime: now(CLOCK_BOOTTIME) + offsets.boottime,
                                                      monotonicOffset: offsets.monotonic, boottimeOffset: offsets.boottime))
        }
        return dumped
    }

    static func identity(_ pid: pid_t, _ name: String) throws -> UInt64 {
        UInt64(try Files.stat("/proc/\(pid)/ns/\(name)").st_ino)
    }

    static func now(_ clock: clockid_t) -> Int64 {
        var ts = timespec()
        clock_gettime(clock, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    /// "monotonic S NS" and "boottime S NS" lines of /proc/PID/timens_offsets, in nanoseconds.
    static func readOffsets(_ pid: pid_t) throws -> (monotonic: Int64, boottime: Int64) {
        let text = try Files.readString("/proc/\(pid)/timens_offsets")
        var result: (monotonic: Int64, boottime: Int64) = (0, 0)
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count == 3, let seconds = Int64(fields[1]), let nanoseconds = Int64(fields[2]) else {
                throw CryoError("pid \(pid): /proc/\(pid)/timens_offsets: cannot parse \"\(line)\"")
            }
            let value = seconds * 1_000_000_000 + nanoseconds
            switch fields[0] {
            case "monotonic", "1": result.monotonic = value
            case "boottime", "7": result.boottime = value
            default: break
            }
        }
        return result
    }

    /// What /proc/PID/timens_offsets takes so that the namespace's clocks read `record`'s values now.
    static func offsetsText(for record: TimeNamespaceRecord) -> String {
        func line(_ name: String, _ offset: Int64) -> String {
            // Whole seconds rounded down, so the nanoseconds are never negative (the kernel wants 0..<1e9).
            let seconds = offset >= 0 ? offset / 1_000_000_000 : -((-offset + 999_999_999) / 1_000_000_000)
            return "\(name) \(seconds) \(offset - seconds * 1_000_000_000)\n"
        }
        return line("monotonic", record.monotonic - now(CLOCK_MONOTONIC)) + line("boottime", record.boottime - now(CLOCK_BOOTTIME))
    }

    static func writeOffsets(_ pid: pid_t, _ record: TimeNamespaceRecord) throws {
        let path = "/proc/\(pid)/timens_offsets"
        let file = try Files.open(path, .writeOnly)
        defer { try? file.close() }
        try Files.write(file, Array(offsetsText(for: record).utf8), path: path)
    }
}

/// Restore's side: which namespace each image id became, and who unshared already.
final class TimeNamespaceRestore: @unchecked Sendable {
    typealias Inject = (_ tracee: Tracee, _ number: Int, _ arguments: [UInt64], _ what: String) throws -> Void
    private let records: [UInt64: TimeNamespaceRecord]
    private let entries: [pid_t: Inventory.ProcessEntry]
    private let rootPid: pid_t
    private let own: UInt64
    private let lock = Lock()
    private var live: [UInt64: UInt64] = [:]
    private var unshared: Set<pid_t> = []
    /// The root's namespace, made before any task: the root (and a --pidns init) inherit this descriptor.
    private(set) var rootNamespace: FileDescriptor?

    /// Nil when the image's tree used cryo's clocks only.
    init?(_ inventory: Inventory) throws {
        guard let records = inventory.timeNamespaces, !records.isEmpty else { return nil }
        self.records = Dictionary(records.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        entries = Dictionary(inventory.processes.map { ($0.pid, $0) }, uniquingKeysWith: { first, _ in first })
        rootPid = inventory.rootPid
        own = try TimeNamespace.identity(getpid(), "time")
        if let id = inventory.processes.first?.timeNamespace { rootNamespace = try make(id) }
    }

    deinit { try? rootNamespace?.close() }

    private func record(_ id: UInt64, for pid: pid_t) throws -> TimeNamespaceRecord {
        guard let record = records[id] else { throw CryoError("pid \(pid): time namespace time:[\(id)] is not in the image") }
        return record
    }

    /// A helper forks, unshares a time namespace for its children, and waits; cryo writes the
    /// offsets, keeps a descriptor of the namespace, and kills the helper (no task entered it).
    private func make(_ id: UInt64) throws -> FileDescriptor {
        let record = try record(id, for: rootPid)
        let object = "pid \(rootPid): time namespace"
        let helper = try Processes.forkUnsharingTimeNamespace()
        defer {
            try? Processes.kill(helper, SIGKILL)
            var status: Int32 = 0
            _ = waitpid(helper, &status, 0)
        }
        let deadline = TimeNamespace.now(CLOCK_MONOTONIC) + 5_000_000_000
        while try TimeNamespace.identity(helper, "time_for_children") == own {
            var status: Int32 = 0
            if waitpid(helper, &status, WNOHANG) == helper {
                throw CryoError("\(object): unshare(CLONE_NEWTIME) failed in a helper (it needs CAP_SYS_ADMIN)")
            }
            guard TimeNamespace.now(CLOCK_MONOTONIC) < deadline else { throw CryoError("\(object): the helper never unshared") }
            usleep(200)
        }
        try TimeNamespace.writeOffsets(helper, record)
        let namespace = try Files.open("/proc/\(helper)/ns/time_for_children", .readOnly)
        lock.withLock { live[id] = UInt64((try? Files.stat(namespace, object: object).st_ino) ?? 0) }
        return namespace
    }

    /// The root joins its namespace (it has one thread yet) and drops the inherited descriptor.
    func enterRoot(_ tracee: Tracee, inject: Inject) throws {
        guard let namespace = rootNamespace else { return }
        let fd = UInt64(namespace.rawValue)
        try inject(tracee, TimeNamespace.syscallSetns, [fd, TimeNamespace.cloneNewTime], "setns(CLONE_NEWTIME)")
        try inject(tracee, TimeNamespace.syscallClose, [fd], "close(time namespace)")
    }

    /// Before `parent` clones `child`: the parent unshares its children's namespace when the child is the first to live there.
    func beforeClone(child: pid_t, parent: RestoringProcess, parentPid: pid_t, inject: Inject) throws {
        guard let parentEntry = entries[parentPid], let childEntry = entries[child],
              parentEntry.timeForChildren != parentEntry.timeNamespace else { return }
        let done = lock.withLock { unshared.contains(parentPid) }
        if childEntry.timeNamespace == parentEntry.timeForChildren {
            if !done { try unshare(parent, imagePid: parentPid, inject: inject) }
        } else if done {
            throw CryoError("pid \(child): must be cloned in its parent \(parentPid)'s time namespace, which its parent has left for its children")
        }
    }

    /// After the tree exists: the rest unshare (no child of theirs lives there yet), then every
    /// process is checked to be where the image says (nothing quietly on other clocks).
    func finish(_ process: RestoringProcess, imagePid: pid_t, inject: Inject) throws {
        guard let entry = entries[imagePid] else { return }
        if entry.timeForChildren != entry.timeNamespace && !lock.withLock({ unshared.contains(imagePid) }) {
            try unshare(process, imagePid: imagePid, inject: inject)
        }
        for (name, id) in [("time", entry.timeNamespace), ("time_for_children", entry.timeForChildren)] {
            let actual = try TimeNamespace.identity(process.pid, name)
            let expected = try id.map { id in
                guard let made = lock.withLock({ live[id] }) else { throw CryoError("pid \(imagePid): time namespace time:[\(id)] was never made") }
                return made
            } ?? own
            guard actual == expected else {
                throw CryoError("pid \(imagePid): restored with \(name) time:[\(actual)], not the namespace made for the image's time:[\(id ?? 0)]")
            }
        }
    }

    private func unshare(_ process: RestoringProcess, imagePid: pid_t, inject: Inject) throws {
        guard let id = entries[imagePid]?.timeForChildren else { return }
        try inject(process.tracee, TimeNamespace.syscallUnshare, [TimeNamespace.cloneNewTime], "unshare(CLONE_NEWTIME)")
        try TimeNamespace.writeOffsets(process.pid, try record(id, for: imagePid))
        let made = try TimeNamespace.identity(process.pid, "time_for_children")
        lock.withLock {
            unshared.insert(imagePid)
            live[id] = made
        }
    }
}
