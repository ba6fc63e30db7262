import Glibc

/// The kernel's struct sched_attr (SCHED_ATTR_SIZE_VER1, 56 bytes): policy,
/// flags, nice, real-time priority, deadline parameters, utilization clamps.
public struct SchedulingAttributes: Equatable, Sendable {
    public var size: UInt32 = 56
    public var policy: UInt32 = 0
    public var flags: UInt64 = 0
    public var nice: Int32 = 0
    public var priority: UInt32 = 0
    public var runtime: UInt64 = 0
    public var deadline: UInt64 = 0
    public var period: UInt64 = 0
    public var utilMin: UInt32 = 0
    public var utilMax: UInt32 = 0
    public init() {}
}

/// sched_getattr/sched_setattr on a thread by tid; glibc 2.36 wraps neither.
public enum Scheduling {
    static let getattr: Int32 = 315, setattr: Int32 = 314

    public static func attributes(_ tid: pid_t) throws -> SchedulingAttributes {
        var attributes = SchedulingAttributes()
        try withUnsafeMutableBytes(of: &attributes) { raw in
            try Kernel.syscall(getattr, tid, raw.baseAddress, UInt32(raw.count), 0, name: "sched_getattr", pid: tid)
        }
        return attributes
    }

    /// The nice value, which sched_getattr leaves out under a real-time policy (getpriority returns 20 - nice).
    public static func nice(_ tid: pid_t) throws -> Int32 {
        20 - Int32(try Kernel.syscall(140 /* getpriority */, Int32(PRIO_PROCESS.rawValue), tid, name: "getpriority", pid: tid))
    }

    /// setpriority(PRIO_PROCESS, tid, nice): one thread's nice value (raising it back needs CAP_SYS_NICE).
    public static func setNice(_ tid: pid_t, _ nice: Int32) throws {
        try Kernel.syscall(141 /* setpriority */, Int32(PRIO_PROCESS.rawValue), tid, nice, name: "setpriority", pid: tid)
    }

    /// The calling thread's id (gettid).
    public static var currentThread: pid_t { pid_t(truncatingIfNeeded: Kernel.rawSyscall(186 /* gettid */, [])) }

    public static func setAttributes(_ tid: pid_t, _ attributes: SchedulingAttributes) throws {
        var attributes = attributes
        attributes.size = UInt32(MemoryLayout<SchedulingAttributes>.size)
        try withUnsafeBytes(of: &attributes) { raw in
            try Kernel.syscall(setattr, tid, raw.baseAddress, 0, name: "sched_setattr", pid: tid)
        }
    }
}
