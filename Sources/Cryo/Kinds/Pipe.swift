import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// One end of an anonymous pipe. The pipe's buffered bytes and size are kept
/// with the first end seen; both ends of one pipe are rebuilt from one pipe().
public struct PipeEndState: DescriptorKind {
    static let name = "pipe"
    public var inode: UInt64
    public var isReadEnd: Bool
    public var capacity: Int32
    /// Bytes buffered in the pipe at dump, read without draining it.
    public var buffered: Data?
}

extension PipeEndState {
    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> PipeEndState? {
        guard p.stat.st_mode & S_IFMT == S_IFIFO, p.link.hasPrefix("pipe:") else { return nil }
        return try dumpEnd(p, into: table)
    }

    /// An end of a pipe or FIFO; its buffered bytes stay with the first end dumped.
    static func dumpEnd(_ p: DescriptorProbe, into table: FileTableBuilder) throws -> PipeEndState {
        let accessMode = Int32(bitPattern: p.flags) & O_ACCMODE
        let capacity = try FileObjects.pipeCapacity(p.handle, object: p.object)
        let inode = UInt64(p.stat.st_ino)
        let kept = table.table.files.contains { f in
            (f.state as? PipeEndState)?.inode == inode || (f.state as? FifoState)?.end.inode == inode
        }
        return PipeEndState(inode: inode, isReadEnd: accessMode == O_RDONLY, capacity: capacity,
                            buffered: kept ? nil : Data(try peek(p, capacity: capacity)))
    }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        try context.rebuilder(PipeRebuilder.self).end(self, flags: file.flags, object: object)
    }

    func summary(_ file: FileTable.OpenFile) -> String {
        "pipe:[\(inode)] \(isReadEnd ? "read" : "write") end" + bufferedSummary
    }

    var bufferedSummary: String {
        guard let buffered, !buffered.isEmpty else { return "" }
        return " (\(buffered.count) bytes buffered)"
    }

    /// tee() copies the buffered bytes into a scratch pipe without consuming them.
    static func peek(_ p: DescriptorProbe, capacity: Int32) throws -> [UInt8] {
        // A read end on the same pipe: a write end's description cannot be read from.
        let reader: FileDescriptor
        do { reader = try Files.open("/proc/\(p.pid)/fd/\(p.fd)", .readOnly, options: [.nonBlocking]) } catch {
            throw CryoError("\(p.object) (pipe, to peek): \(error)")
        }
        defer { try? reader.close() }
        let scratch = try FileObjects.pipe(nonBlocking: true, object: p.object)
        defer { try? scratch.read.close(); try? scratch.write.close() }
        try FileObjects.setPipeCapacity(scratch.write, capacity, object: "scratch pipe for \(p.object)")
        let count = try FileObjects.tee(from: reader, to: scratch.write, length: Int(capacity), object: p.object)
        var data: [UInt8] = []
        while data.count < count {
            let got = try FileObjects.read(scratch.read, upTo: count - data.count, object: "scratch pipe for \(p.object)")
            if got.isEmpty { throw CryoError("scratch pipe for \(p.object): \(data.count) of \(count) bytes came back") }
            data += got
        }
        return data
    }
}

/// A named FIFO: its path, and the state of a pipe end (`pipe` in files.img).
struct FifoState: DescriptorKind {
    static let name = "fifo"
    static let key: String? = "pipe"
    var end: PipeEndState
    /// Set when the FIFO's name was unlinked while it was open.
    var removed: RemovedFifo?

    /// What a FIFO unlinked while open gets back when it is made again.
    struct RemovedFifo: Codable {
        var removedMode: UInt32
        var removedUid: UInt32
        var removedGid: UInt32
    }

    init(end: PipeEndState, removed: RemovedFifo? = nil) {
        self.end = end
        self.removed = removed
    }
    // Beside the pipe end's own fields, in the same object.
    init(from decoder: Decoder) throws {
        end = try PipeEndState(from: decoder)
        removed = try? RemovedFifo(from: decoder)
    }
    func encode(to encoder: Encoder) throws {
        try end.encode(to: encoder)
        try removed?.encode(to: encoder)
    }

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> FifoState? {
        guard p.stat.st_mode & S_IFMT == S_IFIFO, !p.link.hasPrefix("pipe:") else { return nil }
        let removed = p.link.hasSuffix(RegularFileState.deletedSuffix) && p.stat.st_nlink == 0
        return FifoState(end: try PipeEndState.dumpEnd(p, into: table),
                         removed: removed ? RemovedFifo(removedMode: p.stat.st_mode & 0o7777, removedUid: p.stat.st_uid, removedGid: p.stat.st_gid) : nil)
    }

    func recordedPath(_ p: DescriptorProbe) -> String? {
        removed == nil ? p.link : String(p.link.dropLast(RegularFileState.deletedSuffix.count))
    }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        try context.rebuilder(PipeRebuilder.self).fifoEnd(end, path: file.path ?? "", removed: removed, flags: file.flags, object: object,
                                                          fallback: context.paths.directory)
    }

    func summary(_ file: FileTable.OpenFile) -> String {
        (file.path ?? Self.name) + (removed != nil ? " (unlinked while open)" : "") + end.bufferedSummary
    }
}

/// Creates each pipe once and hands out its ends with their own flags.
final class PipeRebuilder: KindRebuilder {
    init(_ context: OpenContext) {}

    private var pipes: [UInt64: (read: FileDescriptor, write: FileDescriptor)] = [:]
    private var holders: [UInt64: FileDescriptor] = [:]

    func end(_ state: PipeEndState, flags: UInt32, object: String) throws -> FileDescriptor {
        let ends: (read: FileDescriptor, write: FileDescriptor)
        if let existing = pipes[state.inode] {
            ends = existing
        } else {
            ends = try FileObjects.pipe(object: object)
            pipes[state.inode] = ends
            try FileObjects.setPipeCapacity(ends.write, state.capacity, object: object)
        }
        if let buffered = state.buffered, !buffered.isEmpty {
            // The bytes travel with whichever end was dumped first; write them once.
            try FileObjects.writeAll(ends.write, buffered, object: "\(object): refilling the pipe")
        }
        // Each end gets a description of its own, with the old status flags.
        let mine = state.isReadEnd ? ends.read : ends.write
        return try reopen(path: "/proc/self/fd/\(mine.rawValue)", flags: flags, position: 0, object: object)
    }

    /// A named FIFO: one holder opened read-write per FIFO keeps it alive
    /// (so no open blocks) while its bytes are put back and its ends reopened.
    func fifoEnd(_ state: PipeEndState, path: String, removed: FifoState.RemovedFifo?, flags: UInt32, object: String,
                 fallback: String) throws -> FileDescriptor {
        let holder: FileDescriptor
        if let existing = holders[state.inode] {
            holder = existing
        } else {
            if let removed {
                holder = try makeRemovedFifo(path: path, removed, inode: state.inode, object: object, fallback: fallback)
            } else {
                do { holder = try Files.open(path, .readWrite, options: [.nonBlocking]) } catch {
                    throw CryoError("\(object): FIFO \(path): \(error)")
                }
            }
            holders[state.inode] = holder
            try FileObjects.setPipeCapacity(holder, state.capacity, object: object)
        }
        if let buffered = state.buffered, !buffered.isEmpty {
            try FileObjects.writeAll(holder, buffered, object: "\(object): refilling FIFO \(path)")
        }
        // An unlinked FIFO is reached through its holder; the holder reads and writes, so no open blocks.
        return try reopen(path: removed == nil ? path : "/proc/self/fd/\(holder.rawValue)", flags: flags, position: 0, object: object)
    }

    /// A FIFO unlinked while open: made under its old name (else a new one in its
    /// old folder, else in `fallback`), opened read-write, unlinked again.
    private func makeRemovedFifo(path: String, _ removed: FifoState.RemovedFifo, inode: UInt64, object: String,
                                 fallback: String) throws -> FileDescriptor {
        let base = path.split(separator: "/").last.map(String.init) ?? "fifo"
        var lastError: Error = CryoError("\(object): nowhere to make FIFO \(path) again")
        for name in [path] + [folder(of: path), fallback].map({ "\($0)/.cryo-\(base)-\(Kernel.currentPid())-\(inode)" }) {
            do { try FileFacts.makeFifo(name, mode: 0o600, object: "\(object): FIFO \(path) made again as \(name)") } catch {
                lastError = error
                continue
            }
            defer { unlink(name) }
            let holder = try FileObjects.open(name, flags: O_RDWR | O_NONBLOCK | O_NOFOLLOW, object: object)
            do {
                try FileFacts.setOwner(holder, uid: removed.removedUid, gid: removed.removedGid, object: "\(object): FIFO \(path)")
                try FileObjects.setMode(holder, removed.removedMode, object: "\(object): FIFO \(path)")
            } catch {
                try? holder.close()
                throw error
            }
            return holder
        }
        throw lastError
    }

    func closeAll() {
        for ends in pipes.values { try? ends.read.close(); try? ends.write.close() }
        for holder in holders.values { try? holder.close() }
    }
}
