import CryoSystem
import Glibc
import SystemPackage

/// A short-lived child of cryo that stands in for a process that is gone (Pidfd.swift,
/// ProcFile.swift): it parks on `park` while descriptors are opened on it or through its
/// /proc directory, then is let go to end, and is reaped.
enum StandIn {
    /// `open` adds the descriptors (by file id) while `child` waits; `ended` checks how it ended.
    /// On any failure the child is killed and reaped, and nothing opened is kept.
    static func descriptors(through child: pid_t, park: (read: FileDescriptor, write: FileDescriptor), what: String,
                            open: (inout [Int: FileDescriptor]) throws -> Void,
                            ended: (WaitStatus) throws -> Void = { _ in }) throws -> [Int: FileDescriptor] {
        var opened: [Int: FileDescriptor] = [:]
        do {
            try open(&opened)
            try FileObjects.writeAll(park.write, [1], object: what)
            try ended(try waitFor(child))
        } catch {
            _ = try? Processes.kill(child, SIGKILL)
            _ = try? waitFor(child)
            for fd in opened.values { try? fd.close() }
            throw error
        }
        return opened
    }
}
