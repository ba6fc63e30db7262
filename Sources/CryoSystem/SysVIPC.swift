import Glibc
import SystemPackage

/// System V shared memory segments, by id, in the caller's IPC namespace.
public enum SysVShm {
    static let shmget: Int32 = 29, shmat: Int32 = 30, shmctl: Int32 = 31, shmdt: Int32 = 67

    /// IPC_STAT; nil when no segment has that id (EINVAL, EIDRM).
    public static func status(_ id: Int32) throws -> shmid_ds? {
        var ds = shmid_ds()
        let r = Kernel.rawSyscall(shmctl, [id, IPC_STAT, UnsafeMutableRawPointer(&ds)])
        if r == -Int(EINVAL) || r == -Int(EIDRM) { return nil }
        _ = try check(r, "shmctl(IPC_STAT)", object: "System V segment \(id)")
        return ds
    }

    public static func set(_ id: Int32, _ ds: shmid_ds) throws {
        var copy = ds
        try Kernel.syscall(shmctl, id, IPC_SET, UnsafeMutableRawPointer(&copy), name: "shmctl(IPC_SET)", object: "System V segment \(id)")
    }

    public static func remove(_ id: Int32) throws {
        try Kernel.syscall(shmctl, id, IPC_RMID, 0, name: "shmctl(IPC_RMID)", object: "System V segment \(id)")
    }

    /// A new segment (IPC_CREAT|IPC_EXCL) and its id.
    public static func create(key: Int32, size: UInt64, mode: UInt32) throws -> Int32 {
        Int32(try Kernel.syscall(shmget, key, size, IPC_CREAT | IPC_EXCL | Int32(mode & 0o777),
                                 name: "shmget", object: "System V segment of key 0x\(String(UInt32(bitPattern: key), radix: 16))"))
    }

    /// Runs `body` on the segment attached in this process, detached again afterwards.
    public static func withAttached<T>(_ id: Int32, readOnly: Bool, _ body: (UnsafeMutableRawPointer) throws -> T) throws -> T {
        let address = try Kernel.syscall(shmat, id, 0, readOnly ? SHM_RDONLY : 0, name: "shmat", object: "System V segment \(id)")
        let base = UnsafeMutableRawPointer(bitPattern: address)!
        defer { _ = Kernel.rawSyscall(shmdt, [base]) }
        return try body(base)
    }
}
