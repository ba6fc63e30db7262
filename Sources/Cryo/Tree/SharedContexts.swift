import CryoSystem
import FoundationEssentials
import Glibc

/// Processes that are not threads of one another but share a descriptor table
/// (clone with CLONE_FILES) or cwd, root and umask (CLONE_FS). Found with kcmp at
/// dump; a child that shares with its parent is recorded so (ProcessEntry.sharesFiles,
/// .sharesFS) and its own descriptors are not dumped again: restore clones it from
/// its parent with the same flag, and only the parent installs the table. Siblings
/// that share with each other but not with their parent (clone with CLONE_PARENT,
/// or a parent that unshared after cloning them) are cloned from the first of them
/// with CLONE_PARENT and the flag (ProcessEntry.sharesWith). Sharing that neither
/// can make again (between processes of different parents, with a process outside
/// the tree) is refused.
struct SharedContexts {
    /// Pids whose descriptor table, and whose fs context, is their creator's: their parent's,
    /// or the sibling in `creator`.
    var files: Set<pid_t> = []
    var fs: Set<pid_t> = []
    /// Processes cloned at restore from a sibling (CLONE_PARENT), with which they share.
    var creator: [pid_t: pid_t] = [:]

    static let kcmpVM: Int32 = 1, kcmpFiles: Int32 = 2, kcmpFS: Int32 = 3

    /// Finds the sharing among the live processes of `tree` (root first) and refuses what cannot come back.
    static func dump(_ tree: FrozenTree, root: pid_t) throws -> SharedContexts {
        let live = tree.live
        let byPid = Dictionary(uniqueKeysWithValues: live.map { ($0.pid, $0) })
        var result = SharedContexts()
        if let top = byPid[root], top.ppid > 0 {
            // The root's parent is not dumped: nothing at restore could share with it.
            for (kind, what) in [(kcmpVM, "address space (CLONE_VM)"), (kcmpFiles, "descriptor table (CLONE_FILES)"),
                                 (kcmpFS, "cwd, root and umask (CLONE_FS)")]
            where (try? Pidfd.share(root, top.ppid, resource: kind)) == true {
                let name = (try? ProcStat(pid: top.ppid).comm) ?? "?"
                throw CryoError("pid \(root) (\(top.comm)) shares its \(what) with its parent \(top.ppid) (\(name)), "
                    + "which is not dumped; not supported")
            }
        }
        let order = Dictionary(uniqueKeysWithValues: live.enumerated().map { ($1.pid, $0) })
        var withSibling: [Int32: [pid_t: pid_t]] = [:]  // by kind: sharer -> the first sibling of its group
        var withParents: [Int32: Set<pid_t>] = [:]
        for (kind, what) in [(kcmpFiles, "descriptor table (CLONE_FILES)"), (kcmpFS, "cwd, root and umask (CLONE_FS)")] {
            var withParent: Set<pid_t> = []
            for p in live where p.pid != root {
                if byPid[p.ppid] != nil, try Pidfd.share(p.pid, p.ppid, resource: kind) { withParent.insert(p.pid) }
            }
            // Each chain of children that share with their parents has one table: its topmost member stands for it.
            func top(_ pid: pid_t) -> pid_t {
                var pid = pid
                while withParent.contains(pid), let parent = byPid[pid]?.ppid { pid = parent }
                return pid
            }
            // Two chains with one table between them: kcmp orders the kernel's objects, so sorting
            // puts equal ones side by side (O(n log n) kcmp, not one per pair).
            var tops = Array(Set(live.map { top($0.pid) }))
            var failure: Error?
            tops.sort { a, b in
                guard failure == nil else { return a < b }
                do { return try Pidfd.compare(a, b, resource: kind) == 1 } catch { failure = error; return a < b }
            }
            if let failure { throw failure }
            // Runs of equal tables: siblings of a live parent share again through the first of them.
            var group: [pid_t] = []
            func close() throws {
                defer { group = [] }
                guard group.count > 1 else { return }
                let ppid = byPid[group[0]]!.ppid
                guard group.allSatisfy({ $0 != root && byPid[$0]!.ppid == ppid }), byPid[ppid] != nil else {
                    let (first, second) = (min(group[0], group[1]), max(group[0], group[1]))
                    throw CryoError("pid \(first) (\(byPid[first]!.comm)) and pid \(second) (\(byPid[second]!.comm)) share their \(what) "
                        + "but neither is the other's parent nor are they siblings; only sharing with a parent or a sibling can be rebuilt, not supported")
                }
                let first = group.min { order[$0]! < order[$1]! }!
                for pid in group where pid != first { withSibling[kind, default: [:]][pid] = first }
            }
            for (i, pid) in tops.enumerated() {
                if i > 0, try Pidfd.compare(tops[i - 1], pid, resource: kind) != 0 { try close() }
                group.append(pid)
            }
            try close()
            if kind == kcmpFiles { result.files = withParent } else { result.fs = withParent }
            withParents[kind] = withParent
        }
        // One clone makes a process: from its parent, or from one sibling, sharing what it shares with that one.
        let files = withSibling[kcmpFiles] ?? [:], fs = withSibling[kcmpFS] ?? [:]
        for pid in Set(files.keys).union(fs.keys).sorted() {
            let p = byPid[pid]!
            let f = files[pid], g = fs[pid]
            if let f, let g, f != g {
                throw CryoError("pid \(pid) (\(p.comm)) shares its descriptor table with its sibling pid \(f) and its cwd, root and umask "
                    + "with its sibling pid \(g); one clone cannot share with both, not supported")
            }
            if (f != nil && withParents[kcmpFS]?.contains(pid) == true) || (g != nil && withParents[kcmpFiles]?.contains(pid) == true) {
                throw CryoError("pid \(pid) (\(p.comm)) shares its \(f != nil ? "descriptor table" : "cwd, root and umask") with its sibling pid \((f ?? g)!) "
                    + "and its \(f != nil ? "cwd, root and umask" : "descriptor table") with its parent pid \(p.ppid); one clone cannot share with both, not supported")
            }
            result.creator[pid] = f ?? g
            if f != nil { result.files.insert(pid) }
            if g != nil { result.fs.insert(pid) }
        }
        return result
    }

    /// Before `pid` is seized: a child made with CLONE_VM but not CLONE_THREAD (vfork) holds its
    /// parent in an uninterruptible wait until it execs or exits, so the parent would never stop
    /// for ptrace; refused at once instead of waiting.
    static func refuseVforkChildren(of pid: pid_t, comm: String) throws {
        guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") else { return }
        for tid in tasks {
            guard let text = try? Files.readString("/proc/\(pid)/task/\(tid)/children") else { continue }
            for child in text.split(separator: " ").compactMap({ pid_t($0.trimmed()) })
            where (try? Pidfd.share(child, pid, resource: kcmpVM)) == true {
                let name = (try? ProcStat(pid: child).comm) ?? "?"
                throw CryoError("pid \(child) (\(name)) shares the address space of its parent pid \(pid) (\(comm)) "
                    + "(CLONE_VM without CLONE_THREAD, as vfork makes; the parent waits until the child execs or exits); not supported")
            }
        }
    }
}

extension SharedContexts {
    /// The clone3 flags that make a process share with its parent (or, cloned from a sibling, with
    /// that sibling) again what it shared at dump.
    static func cloneFlags(_ entry: Inventory.ProcessEntry) -> UInt64 {
        (entry.sharesFiles == true ? 0x400 /* CLONE_FILES */ : 0) | (entry.sharesFS == true ? 0x200 /* CLONE_FS */ : 0)
            | (entry.sharesWith != nil ? 0x8000 /* CLONE_PARENT */ : 0)
    }
}
