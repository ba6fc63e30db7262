import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// A POSIX message queue descriptor (mq_open). The queue is an object of
/// the IPC namespace, like a System V one: its name, owner, mode, limits
/// and messages are kept with the first descriptor of it that is dumped.
/// No call reads a queue without taking the messages out, so dump receives
/// them all (highest priority first, oldest first within a priority) and
/// sends them straight back in that order, which leaves the queue as it was
/// (processes outside the tree using it meanwhile could see it empty).
/// At restore a queue that still exists under its name with the same
/// limits is used as it is now; one that is gone is made again and filled;
/// one that was unlinked is made under a passing name and unlinked again.
/// The O_NONBLOCK of each description is in its flags. A queue with an
/// mq_notify registration is refused.
public struct MqueueState: DescriptorKind {
    static let name = "mqueue"
    public struct Message: Codable, Sendable {
        public var priority: UInt32
        public var data: Data
    }
    public var inode: UInt64
    public var queue: String
    public var unlinked: Bool
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var maxMessages: Int
    public var messageSize: Int
    /// With the first description of the queue dumped; nil on the others.
    public var messages: [Message]?

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> MqueueState? {
        guard p.link.hasPrefix("/"), table.isMqueue(p) else { return nil }
        let unlinked = p.link.hasSuffix(" (deleted)")
        let queue = unlinked ? String(p.link.dropLast(" (deleted)".count)) : p.link
        let what = "\(p.object) (POSIX message queue \(queue))"
        // A description of our own, read-write and non-blocking, on the same queue.
        let own = try FileObjects.open("/proc/\(p.pid)/fd/\(p.fd)", flags: O_RDWR | O_NONBLOCK, object: what)
        defer { try? own.close() }
        // read() of a queue gives "QSIZE:n NOTIFY:n SIGNO:n NOTIFY_PID:n".
        let status = String(decoding: try FileObjects.read(own, upTo: 256, object: what), as: UTF8.self)
        let words = status.split(whereSeparator: { $0 == " " || $0 == "\n" })
        if let notify = words.first(where: { $0.hasPrefix("NOTIFY_PID:") }), notify != "NOTIFY_PID:0" {
            throw CryoError("\(what) has an mq_notify registration (\(notify)); not supported yet")
        }
        let attributes = try PosixMqueue.attributes(own, object: what)
        let inode = UInt64(p.stat.st_ino)
        var state = MqueueState(inode: inode, queue: queue, unlinked: unlinked, mode: UInt32(p.stat.st_mode & 0o777),
                                uid: p.stat.st_uid, gid: p.stat.st_gid, maxMessages: attributes.maxMessages,
                                messageSize: attributes.messageSize, messages: nil)
        let kept = table.table.files.contains { ($0.state as? MqueueState)?.inode == inode }
        if !kept {
            var messages: [Message] = []
            while let m = try PosixMqueue.receive(own, messageSize: attributes.messageSize, object: what) {
                messages.append(Message(priority: m.priority, data: Data(m.bytes)))
            }
            for m in messages {
                try PosixMqueue.send(own, [UInt8](m.data), priority: m.priority, object: "\(what), putting its messages back")
            }
            state.messages = messages
        }
        return state
    }

    func recordedPath(_ p: DescriptorProbe) -> String? { queue }

    func validate() -> String? {
        guard queue.hasPrefix("/"), queue.count > 1, !queue.dropFirst().contains("/"), maxMessages > 0, messageSize > 0 else {
            return "POSIX message queue \(queue): bad name or limits"
        }
        if let messages, messages.count > maxMessages || messages.contains(where: { $0.data.count > messageSize }) {
            return "POSIX message queue \(queue): more or longer messages than its limits"
        }
        return nil
    }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        let queue = try context.rebuilder(MqueueRebuilder.self).queue(self, object: object)
        return try reopen(path: "/proc/self/fd/\(queue.rawValue)", flags: file.flags, position: 0, object: object)
    }

    func summary(_ file: FileTable.OpenFile) -> String {
        "mqueue \(queue)\(unlinked ? " (unlinked)" : ""), \(maxMessages) x \(messageSize) bytes"
            + (messages.map { ", \($0.count) messages" } ?? "")
    }
}

/// Finds or makes each queue once; descriptions are opened from cryo's own descriptor of it.
final class MqueueRebuilder: KindRebuilder {
    private let files: [FileTable.OpenFile]
    private var queues: [UInt64: FileDescriptor] = [:]

    init(_ context: OpenContext) { files = context.files }

    func queue(_ state: MqueueState, object: String) throws -> FileDescriptor {
        if let fd = queues[state.inode] { return fd }
        let what = "\(object) (POSIX message queue \(state.queue))"
        if !state.unlinked, let existing = try PosixMqueue.openExisting(state.queue, object: object) {
            let now = try PosixMqueue.attributes(existing, object: what)
            guard now.maxMessages == state.maxMessages && now.messageSize == state.messageSize else {
                try? existing.close()
                throw CryoError("\(what) exists with other limits (\(now.maxMessages) x \(now.messageSize) bytes, not "
                    + "\(state.maxMessages) x \(state.messageSize)); remove it to restore")
            }
            queues[state.inode] = existing  // used as it is now
            return existing
        }
        let name = state.unlinked ? "/cryo-restore-\(getpid())-\(state.inode)" : state.queue
        let made: FileDescriptor
        do {
            made = try PosixMqueue.create(name, mode: 0o600, maxMessages: state.maxMessages, messageSize: state.messageSize, object: object)
        } catch let error as SyscallError where error.errno == .invalidArgument {
            let limit = (try? Files.readString("/proc/sys/fs/mqueue/msg_max")).map { String($0.filter(\.isNumber)) } ?? "?"
            throw CryoError("\(what): \(error) (fs.mqueue.msg_max is \(limit); more messages than that need CAP_SYS_RESOURCE)")
        }
        queues[state.inode] = made
        if state.unlinked { try PosixMqueue.remove(name, object: object) }
        try FileObjects.setMode(made, state.mode, object: what)
        try PosixMqueue.setOwner(made, uid: state.uid, gid: state.gid, object: what)
        // The messages travel with whichever description of the queue was dumped first.
        let messages = files.lazy.compactMap { ($0.state as? MqueueState).flatMap { $0.inode == state.inode ? $0.messages : nil } }.first ?? []
        for m in messages { try PosixMqueue.send(made, [UInt8](m.data), priority: m.priority, object: what) }
        return made
    }

    func closeAll() {
        for fd in queues.values { try? fd.close() }
        queues = [:]
    }
}
