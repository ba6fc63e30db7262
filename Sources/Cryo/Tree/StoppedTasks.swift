import CryoSystem
import Glibc

/// Processes stopped by a signal come back stopped by the same signal: restore
/// sends it to them before they first run. SIGTSTP, SIGTTIN and SIGTTOU are
/// discarded by the kernel in an orphaned process group (one where no member
/// has a parent in another group of its session), so such a stop is refused
/// where the restored group would be orphaned.
enum StoppedTasks {
    static func check(_ tree: FrozenTree, root: pid_t, shellJob: Bool) throws {
        let byPid = Dictionary(uniqueKeysWithValues: tree.processes.map { ($0.pid, $0) })
        for process in tree.live {
            guard let signal = process.stopSignal, signal != SIGSTOP else { continue }
            let group = process.pgid
            let anchored = tree.live.contains { member in
                guard member.pgid == group else { return false }
                // The root's restored parent is cryo: in the root's session only for a shell job.
                if member.pid == root { return shellJob && member.sid != member.pid }
                guard let parent = byPid[member.ppid] else { return false }
                return parent.pgid != group && parent.sid == member.sid
            }
            if !anchored {
                throw CryoError("pid \(process.pid) (\(process.comm)) is stopped by signal \(signal) in process group \(group), "
                    + "which would be orphaned after restore; the kernel would discard that signal, so it cannot come back stopped")
            }
        }
    }
}
