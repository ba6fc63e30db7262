import CryoSystem
import Glibc

/// Time namespaces: a process in one (or one that set a time namespace for its
/// children with unshare(CLONE_NEWTIME)) sees CLOCK_MONOTONIC and
/// CLOCK_BOOTTIME shifted by offsets; restored into cryo's it would read other
/// clocks without a word. Not rebuilt yet, so refused at dump in one line.
enum TimeNamespace {
    static func check(_ tree: FrozenTree) throws {
        let mine = try identity(getpid(), "time")
        for process in tree.live {
            let own = try identity(process.pid, "time")
            if own != mine {
                throw CryoError("pid \(process.pid) (\(process.comm)) is in a time namespace of its own (time:[\(own)], "
                    + "offsets \(offsets(process.pid))); restoring it with cryo's clocks would change CLOCK_MONOTONIC and "
                    + "CLOCK_BOOTTIME under it, not supported yet")
            }
            let children = try identity(process.pid, "time_for_children")
            if children != mine {
                throw CryoError("pid \(process.pid) (\(process.comm)) has a time namespace set for its children "
                    + "(time_for_children:[\(children)], unshare(CLONE_NEWTIME)); not supported yet")
            }
        }
    }

    static func identity(_ pid: pid_t, _ name: String) throws -> UInt64 {
        UInt64(try Files.stat("/proc/\(pid)/ns/\(name)").st_ino)
    }

    /// "monotonic S NS, boottime S NS" as /proc/PID/timens_offsets gives them.
    static func offsets(_ pid: pid_t) -> String {
        let text = (try? Files.readString("/proc/\(pid)/timens_offsets")) ?? ""
        return text.split(separator: "\n").map { $0.split(separator: " ").joined(separator: " ") }.joined(separator: ", ")
    }
}
