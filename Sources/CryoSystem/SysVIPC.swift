import Glibc
import SystemPackage

/// System V shared memory segments, by id, in the caller's IPC namespace.
public enum SysVShm {
    static let shmget: Int32 = 29, shmat: Int32 = 30, shmctl: Int32 = 31, shmdt: Int32 = 67

    /// IPC_STAT; nil when no segment has that id (EINVAL, EIDRM).
    public static func status(_ id: Int32) throws -> shmid_ds? {
        var ds = shmid_ds()
        let r = withUnsafeMutableBytes(of: &ds) { Kernel.rawSyscall(shmctl, [id, IPC_STAT, $0.baseAddress]) }
        if r == -Int(EINVAL) || r == -Int(EIDRM) { return nil }
        _ = try check(r, "shmctl(IPC_STAT)", object: "System V segment \(id)")
        return ds
    }

    public static func set(_ id: Int32, _ ds: shmid_ds) throws {
        var copy = ds
        try withUnsafeMutableBytes(of: &copy) {
            _ = try Kernel.syscall(shmctl, id, IPC_SET, $0.baseAddress, name: "shmctl(IPC_SET)", object: "System V segment \(id)")
        }
    }

    public static func remove(_ id: Int32) throws {
        try Kernel.syscall(shmctl, id, IPC_RMID, 0, name: "shmctl(IPC_RMID)", object: "System V segment \(id)")
    }

    /// A new segment (IPC_CREAT|IPC_EXCL) and its id.
    /// `hugePageSize`: a SHM_HUGETLB segment of pages of that size.
    public static func create(key: Int32, size: UInt64, mode: UInt32, hugePageSize: UInt64? = nil) throws -> Int32 {
        let huge = hugePageSize.map { 0o4000 /* SHM_HUGETLB */ | (Int32($0.trailingZeroBitCount) << 26) } ?? 0
        return Int32(try Kernel.syscall(shmget, key, size, IPC_CREAT | IPC_EXCL | huge | Int32(mode & 0o777),
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

/// System V semaphore sets, by id, in the caller's IPC namespace.
public enum SysVSem {
    static let semget: Int32 = 64, semop: Int32 = 65, semctl: Int32 = 66
    static let getPid: Int32 = 11, getAll: Int32 = 13, setAll: Int32 = 17

    /// IPC_STAT; nil when no set has that id.
    public static func status(_ id: Int32) throws -> semid_ds? {
        var ds = semid_ds()
        let r = withUnsafeMutableBytes(of: &ds) { Kernel.rawSyscall(semctl, [id, Int32(0), IPC_STAT, $0.baseAddress]) }
        if r == -Int(EINVAL) || r == -Int(EIDRM) { return nil }
        _ = try check(r, "semctl(IPC_STAT)", object: "System V semaphore set \(id)")
        return ds
    }

    public static func set(_ id: Int32, _ ds: semid_ds) throws {
        var copy = ds
        try withUnsafeMutableBytes(of: &copy) {
            _ = try Kernel.syscall(semctl, id, Int32(0), IPC_SET, $0.baseAddress, name: "semctl(IPC_SET)",
                                   object: "System V semaphore set \(id)")
        }
    }

    public static func values(_ id: Int32, count: Int) throws -> [UInt16] {
        var values = [UInt16](repeating: 0, count: count)
        try values.withUnsafeMutableBytes { buffer in
            _ = try Kernel.syscall(semctl, id, Int32(0), getAll, buffer.baseAddress, name: "semctl(GETALL)",
                                   object: "System V semaphore set \(id)")
        }
        return values
    }

    public static func setValues(_ id: Int32, _ values: [UInt16]) throws {
        var copy = values
        try copy.withUnsafeMutableBytes { buffer in
            _ = try Kernel.syscall(semctl, id, Int32(0), setAll, buffer.baseAddress, name: "semctl(SETALL)",
                                   object: "System V semaphore set \(id)")
        }
    }

    /// The pid of the last semop on semaphore `index`.
    public static func lastPid(_ id: Int32, index: Int) throws -> pid_t {
        pid_t(try Kernel.syscall(semctl, id, Int32(index), getPid, 0, name: "semctl(GETPID)",
                                 object: "System V semaphore set \(id) semaphore \(index)"))
    }

    public static func remove(_ id: Int32) throws {
        try Kernel.syscall(semctl, id, Int32(0), IPC_RMID, 0, name: "semctl(IPC_RMID)", object: "System V semaphore set \(id)")
    }

    public static func create(key: Int32, count: Int, mode: UInt32) throws -> Int32 {
        Int32(try Kernel.syscall(semget, key, Int32(count), IPC_CREAT | IPC_EXCL | Int32(mode & 0o777),
                                 name: "semget", object: "System V semaphore set of key 0x\(String(UInt32(bitPattern: key), radix: 16))"))
    }
}

/// System V message queues, by id, in the caller's IPC namespace.
public enum SysVMsg {
    static let msgget: Int32 = 68, msgsnd: Int32 = 69, msgrcv: Int32 = 70, msgctl: Int32 = 71
    /// msgrcv's MSG_COPY (CONFIG_CHECKPOINT_RESTORE): a copy of the message at an index, left in the queue.
    static let msgCopy: Int32 = 0o40000

    public static func status(_ id: Int32) throws -> msqid_ds? {
        var ds = msqid_ds()
        let r = withUnsafeMutableBytes(of: &ds) { Kernel.rawSyscall(msgctl, [id, IPC_STAT, $0.baseAddress]) }
        if r == -Int(EINVAL) || r == -Int(EIDRM) { return nil }
        _ = try check(r, "msgctl(IPC_STAT)", object: "System V message queue \(id)")
        return ds
    }

    public static func set(_ id: Int32, _ ds: msqid_ds) throws {
        var copy = ds
        try withUnsafeMutableBytes(of: &copy) {
            _ = try Kernel.syscall(msgctl, id, IPC_SET, $0.baseAddress, name: "msgctl(IPC_SET)",
                                   object: "System V message queue \(id)")
        }
    }

    public static func remove(_ id: Int32) throws {
        try Kernel.syscall(msgctl, id, IPC_RMID, 0, name: "msgctl(IPC_RMID)", object: "System V message queue \(id)")
    }

    public static func create(key: Int32, mode: UInt32) throws -> Int32 {
        Int32(try Kernel.syscall(msgget, key, IPC_CREAT | IPC_EXCL | Int32(mode & 0o777),
                                 name: "msgget", object: "System V message queue of key 0x\(String(UInt32(bitPattern: key), radix: 16))"))
    }

    /// A copy of message `index` (type and bytes), the queue unchanged (MSG_COPY); `bufferBytes` bounds the text.
    public static func copy(_ id: Int32, index: Int, bufferBytes: Int) throws -> (type: Int, text: [UInt8]) {
        var buffer = [UInt8](repeating: 0, count: 8 + bufferBytes)
        let n = try buffer.withUnsafeMutableBytes { raw in
            try Kernel.syscall(msgrcv, id, raw.baseAddress, bufferBytes, index, IPC_NOWAIT | msgCopy | MSG_NOERROR,
                               name: "msgrcv(MSG_COPY)", object: "System V message queue \(id) message \(index)")
        }
        let type = buffer.withUnsafeBytes { $0.load(as: Int.self) }
        return (type, Array(buffer[8..<(8 + n)]))
    }

    public static func send(_ id: Int32, type: Int, text: [UInt8]) throws {
        var buffer = [UInt8](repeating: 0, count: 8) + text
        withUnsafeBytes(of: type) { t in buffer.withUnsafeMutableBytes { $0.copyMemory(from: t) } }
        try buffer.withUnsafeMutableBytes { raw in
            _ = try Kernel.syscall(msgsnd, id, raw.baseAddress, text.count, IPC_NOWAIT, name: "msgsnd",
                                   object: "System V message queue \(id)")
        }
    }
}

/// The System V objects of the caller's IPC namespace, as /proc/sysvipc lists them.
public enum SysVTable {
    /// One row per object: column name -> value.
    public static func rows(_ kind: String) throws -> [[String: Int64]] {
        let text = try Files.readString("/proc/sysvipc/\(kind)")
        let lines = text.split(separator: "\n")
        guard let header = lines.first?.split(separator: " ").map(String.init) else { return [] }
        return lines.dropFirst().map { line in
            var row: [String: Int64] = [:]
            for (name, value) in zip(header, line.split(separator: " ")) { row[name] = Int64(value) }
            return row
        }
    }
}
