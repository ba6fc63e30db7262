import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// CRIU's --manage-cgroups modes, with CRIU's meanings. Every mode but
/// `ignore` puts each task back into its cgroups; they differ in what is
/// made and set:
/// - `none`: the cgroups must exist; nothing is set;
/// - `props`: the cgroups must exist; their recorded settings are written;
/// - `soft` (the default): missing cgroups are made and given their settings,
///   existing ones are left as they are;
/// - `full`: missing cgroups are made; every cgroup gets its settings;
/// - `strict`: every cgroup to make must be missing; all are made and set;
/// - `ignore`: cgroups are neither recorded nor restored (tasks stay where
///   cryo's restore puts them).
public enum CgroupManagement: String, Codable, Sendable, CaseIterable {
    case none, props, soft, full, strict, ignore
}

/// The cgroups of a tree, per hierarchy (cgroup v2, and every v1 hierarchy,
/// named ones included). A task in the same cgroup as the dumping cryo is
/// "in no cgroup of its own": at restore it stays in the restoring cryo's.
/// Others go back to their path (under `--cgroup-root`, if given, in place
/// of the root task's cgroup); the cgroups cryo may have to make are those
/// on the way from cryo's own down to each task's, recorded with their
/// settings (`properties`, in the order they are written back).
public struct CgroupRecord: Codable, Sendable {
    public struct Member: Codable, Sendable {
        public var pid: Int32
        /// Index of a thread whose cgroup differs from its process's (nil: the whole process).
        public var thread: Int?
        public var path: String
    }
    public struct Cgroup: Codable, Sendable {
        public var path: String
        /// [file, value] pairs.
        public var properties: [[String]]
    }
    public struct Hierarchy: Codable, Sendable {
        /// As /proc/PID/cgroup names it: "" for v2, "pids", "cpu,cpuacct", "name=systemd"...
        public var controllers: String
        /// The dumping cryo's own cgroup.
        public var dumper: String
        /// The root task's cgroup.
        public var root: String
        public var members: [Member]
        public var cgroups: [Cgroup]
        var what: String { controllers.isEmpty ? "cgroup v2" : "cgroup v1 \(controllers)" }
    }
    public var hierarchies: [Hierarchy]

    /// Files whose values are kept, per controller (v1) or for v2; in the order they are written.
    static let v1Properties: [String: [String]] = [
        "cpu": ["cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us"],
        "cpuset": ["cpuset.cpus", "cpuset.mems"],
        "memory": ["memory.limit_in_bytes", "memory.soft_limit_in_bytes", "memory.swappiness"],
        "pids": ["pids.max"],
        "blkio": ["blkio.weight"],
    ]
    static let v2Properties = ["cgroup.type", "cgroup.subtree_control", "cgroup.max.depth", "cgroup.max.descendants",
                               "cpuset.cpus", "cpuset.mems", "cpu.weight", "cpu.max", "memory.min", "memory.low", "memory.high",
                               "memory.max", "memory.swap.max", "pids.max", "io.weight"]

    /// /proc/PID/cgroup (or a thread's): controllers -> path.
    static func membership(_ path: String) throws -> [String: String] {
        var result: [String: String] = [:]
        for line in try Files.readString(path).split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            result[String(parts[1])] = String(parts[2])
        }
        return result
    }

    static func dump(_ tree: FrozenTree, root: pid_t) throws -> CgroupRecord {
        let mine = try membership("/proc/self/cgroup")
        let mounts = try CgroupMounts()
        defer { mounts.release() }
        var hierarchies: [String: Hierarchy] = [:]
        for process in tree.live {
            let theirs = try membership("/proc/\(process.pid)/cgroup")
            for (controllers, path) in theirs {
                guard let dumper = mine[controllers] else {
                    throw CryoError("pid \(process.pid) (\(process.comm)) is in a cgroup hierarchy (\(controllers)) cryo is not in")
                }
                var h = hierarchies[controllers] ?? Hierarchy(controllers: controllers, dumper: dumper, root: path, members: [], cgroups: [])
                if process.pid == root { h.root = path }
                h.members.append(Member(pid: process.pid, thread: nil, path: path))
                for (index, thread) in process.threads.enumerated().dropFirst() {
                    let threadPath = try membership("/proc/\(process.pid)/task/\(thread.pid)/cgroup")[controllers] ?? path
                    if threadPath != path { h.members.append(Member(pid: process.pid, thread: index, path: threadPath)) }
                }
                hierarchies[controllers] = h
            }
        }
        var result: [Hierarchy] = []
        for var h in hierarchies.values.sorted(by: { $0.controllers < $1.controllers }) {
            var paths = Set<String>()
            for m in h.members where m.path != h.dumper {
                var p = m.path
                while p != "/" && !isWithin(h.dumper, p) {
                    paths.insert(p)
                    p = parent(p)
                }
            }
            let files = h.controllers.isEmpty ? v2Properties
                : h.controllers.split(separator: ",").flatMap { v1Properties[String($0)] ?? [] }
            // Mounted (by cryo, if need be) only where there are cgroups to read.
            let mount = paths.isEmpty ? "" : try mounts.root(of: h.controllers, what: "the tree's \(h.what) hierarchy")
            for path in paths.sorted(by: { $0.count < $1.count || ($0.count == $1.count && $0 < $1) }) {
                var properties: [[String]] = []
                for file in files {
                    guard let text = try? Files.readString("\(mount)\(path)/\(file)") else { continue }
                    var value = text.hasSuffix("\n") ? String(text.dropLast()) : text
                    // Written back as "+memory +pids"; a cgroup.type other than threaded follows from its place.
                    if file == "cgroup.subtree_control" {
                        if value.isEmpty { continue }
                        value = value.split(separator: " ").map { "+\($0)" }.joined(separator: " ")
                    }
                    if file == "cgroup.type" && value != "threaded" { continue }
                    properties.append([file, value])
                }
                h.cgroups.append(Cgroup(path: path, properties: properties))
            }
            result.append(h)
        }
        return CgroupRecord(hierarchies: result)
    }

    func validate() throws {
        for h in hierarchies {
            for path in [h.dumper, h.root] + h.members.map(\.path) + h.cgroups.map(\.path)
            where !path.hasPrefix("/") || path.split(separator: "/").contains("..") {
                throw ImageError(file: "inventory.img", record: "inventory", "\(h.what): cgroup path \(path) is not absolute")
            }
            for c in h.cgroups where c.properties.contains(where: { $0.count != 2 || $0[0].contains("/") }) {
                throw ImageError(file: "inventory.img", record: "inventory", "\(h.what): cgroup \(c.path): malformed property")
            }
        }
    }
}

/// Is `path` the cgroup `ancestor` or below it?
private func isWithin(_ path: String, _ ancestor: String) -> Bool {
    ancestor == "/" || path == ancestor || path.hasPrefix(ancestor + "/")
}

private func parent(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
    return String(path[..<slash])
}

/// Where each cgroup hierarchy is mounted (its root), by /proc/PID/cgroup's controllers field.
///
/// A hierarchy mounted nowhere here (a named v1 one whose mount went, say) is
/// mounted by cryo for as long as it needs it, as CRIU does: in a folder of its
/// own, held by a descriptor and detached at once, so that no one else sees it
/// and nothing is left mounted, whatever happens next. Paths through
/// /proc/self/fd/N reach into it until `release()`.
final class CgroupMounts {
    private var roots: [String: String]
    private var held: [FileDescriptor] = []

    init() throws { roots = Self.parse(try Files.readString("/proc/self/mountinfo")) }

    deinit { release() }

    /// A path to the root of the hierarchy of `controllers` ("" for v2, as /proc/PID/cgroup names them).
    func root(of controllers: String, what: String) throws -> String {
        if let root = roots[controllers] { return root }
        let dir = try Files.makeTemporaryDirectory(prefix: "/tmp/.cryo-cgroup-")
        defer { try? Files.removeDirectory(dir) }
        do {
            try Files.mountCgroup(at: dir, options: controllers.isEmpty ? nil : Self.mountOptions(controllers))
        } catch {
            throw CryoError("\(what) is not mounted here, and mounting it failed: \(error); mount it, or use --manage-cgroups ignore")
        }
        let fd: FileDescriptor
        do { fd = try Files.open(dir, .readOnly, options: [.directory]) } catch {
            try? Files.detachMount(dir)
            throw CryoError("\(what), mounted by cryo: \(error)")
        }
        held.append(fd)
        try Files.detachMount(dir)
        let root = "/proc/self/fd/\(fd.rawValue)"
        roots[controllers] = root
        return root
    }

    /// mount(2) options for a v1 hierarchy: a named one without controllers needs "none".
    static func mountOptions(_ controllers: String) -> String {
        controllers.split(separator: ",").allSatisfy { $0.hasPrefix("name=") } ? "none," + controllers : controllers
    }

    /// Closes the descriptors that kept cryo's own mounts: the kernel then drops them.
    func release() {
        for fd in held { try? fd.close() }
        held = []
        roots = roots.filter { !$0.value.hasPrefix("/proc/self/fd/") }
    }

    static func parse(_ mountinfo: String) -> [String: String] {
        var result: [String: String] = [:]
        for line in mountinfo.split(separator: "\n") {
            let tokens = line.split(separator: " ")
            guard let dash = tokens.firstIndex(of: "-") else { continue }
            let fields = tokens[..<dash], tail = Array(tokens[(dash + 1)...])
            guard fields.count >= 5, tail.count >= 3, fields[3] == "/" else { continue }
            let mountPoint = String(fields[4])
            if tail[0] == "cgroup2" {
                if result[""] == nil { result[""] = mountPoint }
            } else if tail[0] == "cgroup" {
                let options = tail[2].split(separator: ",").map(String.init)
                let names = options.filter { $0.hasPrefix("name=") }
                let controllers = options.filter { !["rw", "ro", "relatime", "noatime", "nosuid", "nodev", "noexec", "xattr",
                                                     "clone_children", "cpuset_v2_mode", "noprefix"].contains($0)
                    && !$0.hasPrefix("name=") && !$0.hasPrefix("release_agent=") }
                // /proc/PID/cgroup lists the controllers in the kernel's order, then the name.
                for key in [controllers.joined(separator: ","), (controllers + names).joined(separator: ","), names.joined(separator: ",")]
                where !key.isEmpty && result[key] == nil {
                    result[key] = mountPoint
                }
            }
        }
        return result
    }
}

/// Puts the restored tasks into their cgroups, making and setting cgroups as the mode says.
final class CgroupRestore {
    private let record: CgroupRecord
    private let mode: CgroupManagement
    /// --cgroup-root: controllers ("" for every hierarchy not named) -> new root.
    private let roots: [String: String]
    private var made: [String] = []
    private var mounts: CgroupMounts?

    init(_ record: CgroupRecord, mode: CgroupManagement, roots: [String: String]) {
        self.record = record
        self.mode = mode
        self.roots = roots
    }

    /// Parses --cgroup-root values, "[controllers:]/path".
    static func parseRoots(_ values: [String]) throws -> [String: String] {
        var roots: [String: String] = [:]
        for value in values {
            var key = "", path = value
            if !value.hasPrefix("/"), let colon = value.firstIndex(of: ":") {
                key = String(value[..<colon])
                path = String(value[value.index(after: colon)...])
            }
            guard path.hasPrefix("/"), !path.split(separator: "/").contains("..") else {
                throw CryoError("--cgroup-root \(value): expected [CONTROLLER:]/PATH")
            }
            roots[key] = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        }
        return roots
    }

    /// The --cgroup-root that applies to a hierarchy, if any.
    private func newRoot(of h: CgroupRecord.Hierarchy) -> String? {
        roots[h.controllers] ?? (h.controllers.isEmpty ? roots[""] : roots[""] ?? roots.first { key, _ in
            Set(key.split(separator: ",")) == Set(h.controllers.split(separator: ","))
        }?.value)
    }

    /// Where a dumped cgroup path goes at restore.
    func target(_ path: String, in h: CgroupRecord.Hierarchy, own: String) -> String {
        if let newRoot = newRoot(of: h), isWithin(path, h.root) {
            let rest = h.root == "/" ? path : String(path.dropFirst(h.root.count))
            return newRoot == "/" ? (rest.isEmpty ? "/" : rest) : newRoot + rest
        }
        return path == h.dumper ? own : path
    }

    /// Once every task exists (`pids` maps image pids to the new tasks and their threads).
    func apply(pids: [Int32: (pid: pid_t, threads: [pid_t])]) throws {
        guard mode != .ignore else { return }
        let mine = try CgroupRecord.membership("/proc/self/cgroup")
        let mounts = try CgroupMounts()
        // Kept on failure, for removeMade(); released with it or once every task is in.
        self.mounts = mounts
        for h in record.hierarchies {
            // The tree was where cryo was, and stays where cryo is: the hierarchy need not even exist
            // (every process is in every v1 hierarchy, one made and gone meanwhile included).
            if h.cgroups.isEmpty && newRoot(of: h) == nil && h.members.allSatisfy({ $0.path == h.dumper }) { continue }
            let mount = try mounts.root(of: h.controllers, what: "the tree's \(h.what) hierarchy")
            guard let own = mine[h.controllers] else {
                throw CryoError("cryo is in no cgroup of the tree's \(h.what) hierarchy; restore with --manage-cgroups ignore")
            }
            for c in h.cgroups {
                let path = target(c.path, in: h, own: own)
                if isWithin(own, path) { continue }  // cryo's own cgroup or one above it: never made nor set
                let dir = mount + path
                let exists = Files.exists(dir)
                switch mode {
                case .none, .props:
                    guard exists else {
                        throw CryoError("\(h.what) cgroup \(path) does not exist (--manage-cgroups \(mode.rawValue) restores into existing cgroups only)")
                    }
                case .strict:
                    guard !exists else {
                        throw CryoError("\(h.what) cgroup \(path) exists already (--manage-cgroups strict makes every cgroup afresh)")
                    }
                default: break
                }
                if !exists {
                    do { try Files.makeDirectory(dir, mode: 0o755, object: "\(h.what) cgroup \(path)") } catch {
                        throw CryoError("\(error)")
                    }
                    made.append(dir)
                }
                if mode == .props || mode == .full || mode == .strict || (mode == .soft && !exists) {
                    for property in c.properties { try write(property[1], to: "\(dir)/\(property[0])", what: "\(h.what) cgroup \(path)") }
                }
            }
            for m in h.members {
                guard let task = pids[m.pid] else { continue }
                let path = target(m.path, in: h, own: own)
                let dir = mount + path
                if let index = m.thread {
                    guard index < task.threads.count else { continue }
                    try write("\(task.threads[index])", to: dir + (h.controllers.isEmpty ? "/cgroup.threads" : "/tasks"),
                              what: "\(h.what) cgroup \(path), thread \(task.threads[index]) of pid \(task.pid)")
                } else if path != own {
                    try write("\(task.pid)", to: dir + "/cgroup.procs", what: "\(h.what) cgroup \(path), pid \(task.pid)")
                }
            }
        }
        mounts.release()
        self.mounts = nil
    }

    private func write(_ value: String, to path: String, what: String) throws {
        let fd: FileDescriptor
        do { fd = try Files.open(path, .writeOnly) } catch { throw CryoError("\(what): \(error)") }
        defer { try? fd.close() }
        let lines = value.isEmpty ? [""] : value.split(separator: "\n").map(String.init)
        for line in lines {
            do { try Files.write(fd, Array(line.utf8), path: path) } catch { throw CryoError("\(what): writing \"\(line)\": \(error)") }
        }
    }

    /// A failed restore removes the cgroups it made (its tasks dead by then), deepest first.
    func removeMade() {
        for dir in made.reversed() { try? Files.removeDirectory(dir) }
        made = []
        mounts?.release()
        mounts = nil
    }
}
