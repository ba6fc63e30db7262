import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// Which System V objects of the IPC namespace a dump takes (`--sysv-ipc`).
/// A tree in cryo's (the host's) IPC namespace shares it with everyone, so
/// "the tree's objects" has to be decided from what the kernel records:
/// - `tree` (the default): segments the tree has attached, created
///   (shm_cpid) or last attached or detached (shm_lpid); semaphore sets one
///   of whose semaphores a tree process operated on last (GETPID); message
///   queues a tree process sent to or received from last (msg_lspid,
///   msg_lrpid);
/// - `attached`: only the segments the tree has attached;
/// - `all`: every object of the namespace (what CRIU saves when the tree
///   owns its IPC namespace).
/// `--sysv-ipc-object shm:ID|sem:ID|msg:ID` adds one object by id.
public enum SysVSelection: String, Codable, Sendable, CaseIterable {
    case tree, attached, all
}

/// A System V semaphore set: at restore one that still exists with the same
/// id, key and size is used as it is now (others may have moved it since); one
/// that is gone is made again with its id (kernel.sem_next_id), key, owner,
/// mode and values.
public struct SysVSemaphoreSet: Codable, Sendable {
    public var id: Int32
    public var key: Int32
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var values: [UInt16]

    var what: String { "System V semaphore set \(id) (key 0x\(String(UInt32(bitPattern: key), radix: 16)), \(values.count) semaphores)" }
}

/// A System V message queue: found again as it is, or made again with its
/// id (kernel.msg_next_id), key, owner, mode, size limit and messages, in
/// their order, each with its type (read with msgrcv's MSG_COPY, which
/// leaves the queue untouched).
public struct SysVMessageQueue: Codable, Sendable {
    public struct Message: Codable, Sendable {
        public var type: Int
        public var text: Data
    }
    public var id: Int32
    public var key: Int32
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// msg_qbytes: the most bytes the queue holds.
    public var limit: UInt64
    public var messages: [Message]

    var what: String { "System V message queue \(id) (key 0x\(String(UInt32(bitPattern: key), radix: 16)))" }
}

enum SysVObjects {
    /// A process with semaphore undo entries (it used SEM_UNDO) is refused: the kernel shows
    /// them to no other process, and the tree's death applies them to the values. KCMP_SYSVSEM
    /// tells whether a task has an undo list at all, against a fresh forked child (no list).
    /// But the kernel gives every process that ever made a thread an empty list (CLONE_SYSVSEM,
    /// glibc's pthread_create), so a list is taken for entries only when some semaphore set of
    /// the namespace was last moved by a tree process (GETPID): other tests' or programs' sets
    /// do not refuse a threaded tree. An entry on a set someone outside the tree moved since
    /// goes unseen.
    static func checkUndo(_ tree: FrozenTree) throws {
        let pids = Set(tree.live.map(\.pid))
        var moved: (id: Int32, by: pid_t)? = nil
        for row in try SysVTable.rows("sem") where moved == nil {
            guard let raw = row["semid"], let id = Int32(exactly: raw), let ds = try SysVSem.status(id) else { continue }
            for index in 0..<Int(ds.sem_nsems) {
                let last = try SysVSem.lastPid(id, index: index)
                if pids.contains(last) { moved = (id, last); break }
            }
        }
        guard let moved else { return }
        let reference = try Processes.fork()
        if reference == 0 { while true { pause() } }
        defer {
            try? Processes.kill(reference, SIGKILL)
            var status: Int32 = 0
            _ = waitpid(reference, &status, 0)
        }
        for process in tree.live {
            for thread in process.threads where !(try Pidfd.share(thread.pid, reference, resource: 6 /* KCMP_SYSVSEM */)) {
                throw CryoError("pid \(process.pid) (\(process.comm)) thread \(thread.pid) has System V semaphore undo entries (SEM_UNDO; "
                    + "set \(moved.id) was last moved by pid \(moved.by)); not supported: the kernel shows them to no other process")
            }
        }
    }

    /// Parses `--sysv-ipc-object` values ("shm:ID", "sem:ID", "msg:ID").
    static func parseExtra(_ values: [String]) throws -> [(kind: String, id: Int32)] {
        try values.map { value in
            let parts = value.split(separator: ":", maxSplits: 1).map(String.init)
            guard parts.count == 2, ["shm", "sem", "msg"].contains(parts[0]), let id = Int32(parts[1]), id >= 0 else {
                throw CryoError("--sysv-ipc-object \(value): expected shm:ID, sem:ID or msg:ID")
            }
            return (parts[0], id)
        }
    }

    /// Saves the objects the selection takes (attached segments are already in `segments`).
    static func dump(pids: Set<pid_t>, selection: SysVSelection, extra: [String], paths: ImagePaths,
                     segments: inout [Int32: SysVSegment], created: inout [String])
        throws -> (semaphores: [SysVSemaphoreSet], queues: [SysVMessageQueue]) {
        let extra = try parseExtra(extra)
        func wanted(_ kind: String, _ id: Int32, byTree: () throws -> Bool) rethrows -> Bool {
            if extra.contains(where: { $0.kind == kind && $0.id == id }) { return true }
            switch selection {
            case .all: return true
            case .attached: return false
            case .tree: return try byTree()
            }
        }
        func inTree(_ value: Int64?) -> Bool { value.map { pids.contains(pid_t(truncatingIfNeeded: $0)) } ?? false }

        let shmRows = try SysVTable.rows("shm")
        for row in shmRows {
            guard let raw = row["shmid"], let id = Int32(exactly: raw), segments[id] == nil,
                  wanted("shm", id, byTree: { inTree(row["cpid"]) || inTree(row["lpid"]) }),
                  let ds = try SysVShm.status(id) else { continue }
            segments[id] = try SysVSegment.save(id: id, ds: ds, paths: paths, created: &created)
        }
        var semaphores: [SysVSemaphoreSet] = []
        for row in try SysVTable.rows("sem") {
            guard let raw = row["semid"], let id = Int32(exactly: raw), let ds = try SysVSem.status(id) else { continue }
            let count = Int(ds.sem_nsems)
            guard try wanted("sem", id, byTree: { try (0..<count).contains { pids.contains(try SysVSem.lastPid(id, index: $0)) } }) else {
                continue
            }
            semaphores.append(SysVSemaphoreSet(id: id, key: ds.sem_perm.__key, mode: UInt32(ds.sem_perm.mode & 0o777),
                                               uid: ds.sem_perm.uid, gid: ds.sem_perm.gid, values: try SysVSem.values(id, count: count)))
        }
        var queues: [SysVMessageQueue] = []
        for row in try SysVTable.rows("msg") {
            guard let raw = row["msqid"], let id = Int32(exactly: raw),
                  wanted("msg", id, byTree: { inTree(row["lspid"]) || inTree(row["lrpid"]) }),
                  let ds = try SysVMsg.status(id) else { continue }
            var queue = SysVMessageQueue(id: id, key: ds.msg_perm.__key, mode: UInt32(ds.msg_perm.mode & 0o777),
                                         uid: ds.msg_perm.uid, gid: ds.msg_perm.gid, limit: UInt64(ds.msg_qbytes), messages: [])
            // No single message is longer than all of them together.
            let bound = max(Int(ds.__msg_cbytes), 1)
            for index in 0..<Int(ds.msg_qnum) {
                let message: (type: Int, text: [UInt8])
                do { message = try SysVMsg.copy(id, index: index, bufferBytes: bound) } catch let error as SyscallError where error.errno == .noFunction {
                    throw CryoError("\(queue.what): msgrcv(MSG_COPY) is missing (ENOSYS): the kernel lacks CONFIG_CHECKPOINT_RESTORE")
                }
                queue.messages.append(.init(type: message.type, text: Data(message.text)))
            }
            queues.append(queue)
        }
        return (semaphores, queues)
    }

    /// Checks what restore would meet.
    static func validate(_ semaphores: [SysVSemaphoreSet], _ queues: [SysVMessageQueue]) throws {
        for set in semaphores where set.values.isEmpty || set.values.count > 32000 {
            throw ImageError(file: "inventory.img", record: "inventory", "\(set.what): \(set.values.count) semaphores")
        }
        for queue in queues {
            let bytes = queue.messages.reduce(0) { $0 + UInt64($1.text.count) }
            guard bytes <= queue.limit, queue.messages.allSatisfy({ $0.type > 0 }) else {
                throw ImageError(file: "inventory.img", record: "inventory",
                                 "\(queue.what): \(bytes) bytes of messages over its \(queue.limit)-byte limit, or a message type below 1")
            }
        }
        let ids = semaphores.map(\.id), queueIds = queues.map(\.id)
        guard Set(ids).count == ids.count, Set(queueIds).count == queueIds.count else {
            throw ImageError(file: "inventory.img", record: "inventory", "a System V id appears twice")
        }
    }
}

/// The semaphore sets and message queues of an image: found again, or made again
/// before any task exists; a failed restore removes the ones it made.
final class SysVObjectsRestore {
    private var madeSets: [Int32] = []
    private var madeQueues: [Int32] = []

    init(semaphores: [SysVSemaphoreSet], queues: [SysVMessageQueue]) throws {
        do {
            for set in semaphores { try ensure(set) }
            for queue in queues { try ensure(queue) }
        } catch {
            removeMade()
            throw error
        }
    }

    private func ensure(_ set: SysVSemaphoreSet) throws {
        if let ds = try SysVSem.status(set.id) {
            guard Int(ds.sem_nsems) == set.values.count && (set.key == IPC_PRIVATE || ds.sem_perm.__key == set.key) else {
                throw CryoError("\(set.what): id \(set.id) is now another set (key 0x\(String(UInt32(bitPattern: ds.sem_perm.__key), radix: 16)), "
                    + "\(ds.sem_nsems) semaphores); remove it (ipcrm -s \(set.id)) to restore")
            }
            return
        }
        try SysVNextID.set("sem", set.id, what: set.what)
        let got: Int32
        do { got = try SysVSem.create(key: set.key, count: set.values.count, mode: set.mode) } catch {
            try? SysVNextID.set("sem", -1, what: set.what)
            throw CryoError("\(set.what): \(error)")
        }
        madeSets.append(got)
        guard got == set.id else { throw CryoError("\(set.what): the kernel gave id \(got) instead (kernel.sem_next_id was not honoured)") }
        try SysVSem.setValues(got, set.values)
        guard var ds = try SysVSem.status(got) else { throw CryoError("\(set.what): vanished right after it was made") }
        ds.sem_perm.uid = set.uid
        ds.sem_perm.gid = set.gid
        ds.sem_perm.mode = set.mode
        try SysVSem.set(got, ds)
    }

    private func ensure(_ queue: SysVMessageQueue) throws {
        if let ds = try SysVMsg.status(queue.id) {
            guard queue.key == IPC_PRIVATE || ds.msg_perm.__key == queue.key else {
                throw CryoError("\(queue.what): id \(queue.id) is now another queue (key 0x\(String(UInt32(bitPattern: ds.msg_perm.__key), radix: 16))); "
                    + "remove it (ipcrm -q \(queue.id)) to restore")
            }
            return
        }
        try SysVNextID.set("msg", queue.id, what: queue.what)
        let got: Int32
        do { got = try SysVMsg.create(key: queue.key, mode: queue.mode) } catch {
            try? SysVNextID.set("msg", -1, what: queue.what)
            throw CryoError("\(queue.what): \(error)")
        }
        madeQueues.append(got)
        guard got == queue.id else { throw CryoError("\(queue.what): the kernel gave id \(got) instead (kernel.msg_next_id was not honoured)") }
        guard var ds = try SysVMsg.status(got) else { throw CryoError("\(queue.what): vanished right after it was made") }
        ds.msg_perm.uid = queue.uid
        ds.msg_perm.gid = queue.gid
        ds.msg_perm.mode = queue.mode
        let raise = UInt64(ds.msg_qbytes) < queue.limit
        ds.msg_qbytes = msglen_t(queue.limit)
        do { try SysVMsg.set(got, ds) } catch let error as SyscallError where raise && error.errno == .notPermitted {
            throw CryoError("\(queue.what): raising its limit to \(queue.limit) bytes, above kernel.msgmnb, needs CAP_SYS_RESOURCE (\(error))")
        }
        for message in queue.messages { try SysVMsg.send(got, type: message.type, text: [UInt8](message.text)) }
    }

    /// The restore went through: what was made stays.
    func keep() {
        madeSets = []
        madeQueues = []
    }

    func removeMade() {
        for id in madeSets { try? SysVSem.remove(id) }
        for id in madeQueues { try? SysVMsg.remove(id) }
        keep()
    }
}
