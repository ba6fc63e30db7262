import Glibc

/// The switches tests set in cryo's environment, read in this one place.
/// A cryo started with AT_SECURE (setuid, or file capabilities as Scripts/
/// setup.sh can give it) ignores them all: its environment comes from a less
/// privileged caller, who must not steer a privileged process.
public struct TestHooks: Sendable {
    /// CRYO_KILL_AT=<phase>[#<n>]: SIGKILL cryo at that phase (the n-th time).
    public let killAt: String?
    /// CRYO_STOP_AT=<phase>: SIGSTOP cryo at that phase of a restore.
    public let stopAt: String?
    /// CRYO_TEST_PARASITE_FAULT=<hex address>: the parasite writes there, to test the crash report.
    public let parasiteFault: UInt64?
    /// CRYO_PAGE_COPY=pipe|task: force one way of copying pages in the task.
    public let pageCopy: String?
    /// CRYO_LAZY_NO_PUSH=1: lazy restore loads pages on faults only.
    public let lazyNoPush: Bool
    /// CRYO_EAGER_UFFD_MIN=<bytes>: an eager restore loads a process's private anonymous memory
    /// through a userfaultfd from this size on (0: always).
    public let eagerUffdMinimumBytes: Int?
    /// CRYO_RESTORE_LANES=1: a restore drives every process from one thread.
    public let restoreLanes: Int?
    /// CRYO_NO_WAY_HOME=1: a live task is driven as one without a way home (ReturnPath.swift) is.
    public let noWayHome: Bool

    /// `lookup` reads one variable; `secure` (AT_SECURE) turns every hook off.
    public init(secure: Bool, lookup: (String) -> String?) {
        func value(_ name: String) -> String? { secure ? nil : lookup(name) }
        killAt = value("CRYO_KILL_AT")
        stopAt = value("CRYO_STOP_AT")
        parasiteFault = value("CRYO_TEST_PARASITE_FAULT").flatMap { UInt64($0, radix: 16) }
        pageCopy = value("CRYO_PAGE_COPY")
        lazyNoPush = value("CRYO_LAZY_NO_PUSH") == "1"
        eagerUffdMinimumBytes = value("CRYO_EAGER_UFFD_MIN").flatMap { Int($0) }
        restoreLanes = value("CRYO_RESTORE_LANES").flatMap { Int($0) }
        noWayHome = value("CRYO_NO_WAY_HOME") == "1"
    }

    /// This process's hooks, read once.
    public static let current = TestHooks(secure: processIsSecure()) { name in
        getenv(name).map { String(cString: $0) }
    }

    /// AT_SECURE from /proc/self/auxv (getauxval is hidden from Swift's Glibc);
    /// an unreadable auxv counts as secure.
    static func processIsSecure() -> Bool {
        guard let auxv = try? Files.read("/proc/self/auxv") else { return true }
        return isSecure(auxv: auxv)
    }

    /// Whether an auxiliary vector (pairs of 64-bit type and value) sets AT_SECURE (23).
    public static func isSecure(auxv: [UInt8]) -> Bool {
        let atSecure: UInt64 = 23
        var offset = 0
        while offset + 16 <= auxv.count {
            let (type, value) = auxv.withUnsafeBytes {
                (UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self)),
                 UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self)))
            }
            if type == 0 { break }  // AT_NULL ends the vector
            if type == atSecure { return value != 0 }
            offset += 16
        }
        return false
    }
}
