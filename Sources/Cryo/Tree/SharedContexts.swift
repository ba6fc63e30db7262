import CryoSystem
import FoundationEssentials
import Glibc

/// Processes that are not threads of one another but share a descriptor table
/// (clone with CLONE_FILES) or cwd, root and umask (CLONE_FS). Found with kcmp at
/// dump; a child that shares with its parent is recorded so (ProcessEntry.sharesFiles,
/// .sharesFS) and its own descriptors are not dumped again: restore clones it from
/// its parent with the same flag, and only the parent installs the table. Sharing
/// that a clone from the parent cannot make again (between siblings, with a process
/// outside the tree) is refused.
struct SharedContexts {
    /// Pids whose descriptor table, and whose fs context, is their parent's.
    var files: Set<pid_t> = []
    var fs: Set<pid_t> = []

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
            for (a, b) in zip(tops, tops.dropFirst()) where try Pidfd.compare(a, b, resource: kind) == 0 {
                let (first, second) = (min(a, b), max(a, b))
                throw CryoError("pid \(first) (\(byPid[first]!.comm)) and pid \(second) (\(byPid[second]!.comm)) share their \(what) "
                    + "but neither is the other's parent; only sharing with the parent can be rebuilt, not supported")
            }
            if kind == kcmpFiles { result.files = withParent } else { result.fs = withParent }
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
    /// The clone3 flags that make a process share with its parent again what it shared at dump.
    static func cloneFlags(_ entry: Inventory.ProcessEntry) -> UInt64 {
        (entry.sharesFiles == true ? 0x400 /* CLONE_FILES */ : 0) | (entry.sharesFS == true ? 0x200 /* CLONE_FS */ : 0)
    }
}
