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
    /// A FIFO's st_dev: FIFOs on two file systems may have one inode number. nil for
    /// anonymous pipes (all on pipefs) and in older images.
    public var device: UInt64?
    /// Bytes buffered in the pipe at dump, read without draining it.
    public var buffered: Data?
    /// The lengths of the packets (writes in O_DIRECT mode) that `buffered` starts with;
    /// bytes past them were written outside packet mode. nil when there are none.
    public var packets: [Int]?
    /// For a FIFO's read-only end: whether poll() showed POLLHUP at dump (a writer
    /// came and went since it was opened). nil for other ends and older images.
    public var hungUp: Bool?
}

extension PipeEndState {
    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> PipeEndState? {
        guard p.stat.st_mode & S_IFMT == S_IFIFO, p.link.hasPrefix("pipe:") else { return nil }
        return try dumpEnd(p, into: table, fifo: false)
    }

    /// An end of a pipe or FIFO; its buffered bytes stay with the first end dumped.
    static func dumpEnd(_ p: DescriptorProbe, into table: FileTableBuilder, fifo: Bool) throws -> PipeEndState {
        let accessMode = Int32(bitPattern: p.flags) & O_ACCMODE
        let capacity = try FileObjects.pipeCapacity(p.handle, object: p.object)
        let inode = UInt64(p.stat.st_ino)
        let device = fifo ? UInt64(p.stat.st_dev) : nil
        // A set, not a scan of the table per end: that grew with the square of the number of pipes.
        let kept = fifo ? !table.fifoBytesTaken.insert(PipeIdentity(device: device ?? 0, inode: inode)).inserted
            : !table.pipeBytesTaken.insert(inode).inserted
        var state = PipeEndState(inode: inode, isReadEnd: accessMode == O_RDONLY, capacity: capacity, device: device)
        if !kept {
            let (bytes, packets) = try peek(p, capacity: capacity, scratch: table.scratchPipes)
            state.buffered = Data(bytes)
            state.packets = packets
        }
        return state
    }

    func validate() -> String? {
        guard let packets else { return nil }
        guard let buffered, packets.allSatisfy({ $0 > 0 }), packets.reduce(0, +) <= buffered.count else {
            return "pipe:[\(inode)]: packets \(packets) do not fit its \(buffered?.count ?? 0) buffered bytes"
        }
        return nil
    }

    /// Which pipe or FIFO this end is of.
    var identity: PipeIdentity { PipeIdentity(device: device ?? 0, inode: inode) }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        try context.rebuilder(PipeRebuilder.self).end(self, file: file, object: object)
    }

    func summary(_ file: FileTable.OpenFile) -> String {
        "pipe:[\(inode)] \(isReadEnd ? "read" : "write") end" + bufferedSummary
    }

    var bufferedSummary: String {
        guard let buffered, !buffered.isEmpty else { return "" }
        return " (\(buffered.count) bytes buffered)"
    }

    /// The buffered bytes, and the lengths of the packets they start with (nil: none).
    ///
    /// tee() copies the pipe's buffers, packet marks included, into a scratch pipe
    /// without consuming them. A read stops at the end of a packet, so reading the
    /// copy in reads of the pipe's size cuts it into pieces that each end with a
    /// packet, but the last one, which may be bytes written outside packet mode.
    /// Those are told apart on a second copy: one byte short of a packet's end, a
    /// read drops the rest of it, of plain bytes it leaves one. (Plain bytes right
    /// before a packet come back as part of it: a read that has them gets both.)
    static func peek(_ p: DescriptorProbe, capacity: Int32, scratch: ScratchPipes) throws -> (bytes: [UInt8], packets: [Int]?) {
        // A read end on the same pipe: a write end's description cannot be read from.
        let reader: FileDescriptor
        do { reader = try Files.open("/proc/\(p.pid)/fd/\(p.fd)", .readOnly, options: [.nonBlocking]) } catch {
            throw CryoError("\(p.object) (pipe, to peek): \(error)")
        }
        defer { try? reader.close() }
        let what = "scratch pipe for \(p.object)"
        func copy() throws -> (pipe: ScratchPipes.Pipe, count: Int) {
            let pipe = try scratch.take(capacity: capacity, object: what)
            do {
                return (pipe, try FileObjects.tee(from: reader, to: pipe.write, length: Int(capacity), object: p.object))
            } catch {
                scratch.giveBack(pipe, empty: false)
                throw error
            }
        }
        let first = try copy()
        var data: [UInt8] = []
        // Empty once all it was given is read: cryo alone writes to it.
        defer { scratch.giveBack(first.pipe, empty: data.count == first.count) }
        var pieces: [Int] = []
        while data.count < first.count {
            let got = try FileObjects.read(first.pipe.read, upTo: first.count - data.count, object: what)
            if got.isEmpty { throw CryoError("\(what): \(data.count) of \(first.count) bytes came back") }
            data += got
            pieces.append(got.count)
        }
        guard let last = pieces.last else { return (data, nil) }
        // Is the last piece a packet too? A lone byte cannot tell: it is taken for one only after others.
        var lastIsPacket = pieces.count > 1
        if last > 1 {
            let second = try copy()
            var drained = false
            defer { scratch.giveBack(second.pipe, empty: drained) }
            for piece in pieces.dropLast() {
                guard try FileObjects.read(second.pipe.read, upTo: piece, object: what).count == piece else {
                    throw CryoError("\(what): a second copy of the pipe came back in other pieces")
                }
            }
            _ = try FileObjects.read(second.pipe.read, upTo: last - 1, object: what)
            let left = try FileObjects.bytesReadable(second.pipe.read, object: what)
            lastIsPacket = left == 0
            if left > 0 { _ = try FileObjects.read(second.pipe.read, upTo: left, object: what) }
            drained = left <= 1
        }
        let packets = lastIsPacket ? pieces : pieces.dropLast()
        return (data, packets.isEmpty ? nil : Array(packets))
    }
}

/// The scratch pipes the dump tees pipes' bytes into, made once and kept for the next pipe
/// (a pipe2, a resize and two closes saved per pipe, twice where its bytes are copied twice).
/// Each is drained before it is given back; one that may not be empty is closed, not reused.
final class ScratchPipes {
    struct Pipe {
        var read: FileDescriptor
        var write: FileDescriptor
        var capacity: Int32
    }
    private var free: [Pipe] = []

    /// An empty scratch pipe holding at least `capacity` bytes.
    func take(capacity: Int32, object: String) throws -> Pipe {
        if let i = free.firstIndex(where: { $0.capacity >= capacity }) { return free.remove(at: i) }
        var pipe: Pipe
        if let small = free.popLast() {
            pipe = small
        } else {
            let ends = try FileObjects.pipe(nonBlocking: true, object: object)
            pipe = Pipe(read: ends.read, write: ends.write, capacity: 0)
        }
        do { try FileObjects.setPipeCapacity(pipe.write, capacity, object: object) } catch {
            close(pipe)
            throw error
        }
        pipe.capacity = capacity
        return pipe
    }

    /// `empty`: known to hold nothing (all that was teed into it was read); else it is closed.
    func giveBack(_ pipe: Pipe, empty: Bool) {
        if empty { free.append(pipe) } else { close(pipe) }
    }

    func closeAll() {
        for pipe in free { close(pipe) }
        free = []
    }

    private func close(_ pipe: Pipe) {
        try? pipe.read.close()
        try? pipe.write.close()
    }
}

/// A pipe or FIFO: FIFOs on two file systems may share an inode number.
struct PipeIdentity: Hashable {
    var device: UInt64
    var inode: UInt64
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
        var end = try PipeEndState.dumpEnd(p, into: table, fifo: true)
        if Int32(bitPattern: p.flags) & O_ACCMODE == O_RDONLY {
            // A reader shows POLLHUP only once a writer has come since its open and all have gone:
            // one that shows none must not see the writer restore uses to put the FIFO back.
            end.hungUp = try Sockets.pollEvents(p.handle, object: p.object) & Int16(POLLHUP) != 0
        }
        return FifoState(end: end,
                         removed: removed ? RemovedFifo(removedMode: p.stat.st_mode & 0o7777, removedUid: p.stat.st_uid, removedGid: p.stat.st_gid) : nil)
    }

    func validate() -> String? { end.validate() }

    func recordedPath(_ p: DescriptorProbe) -> String? {
        removed == nil ? p.link : String(p.link.dropLast(RegularFileState.deletedSuffix.count))
    }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        try context.rebuilder(PipeRebuilder.self).fifoEnd(file, object: object)
    }

    func summary(_ file: FileTable.OpenFile) -> String {
        (file.path ?? Self.name) + (removed != nil ? " (unlinked while open)" : "") + end.bufferedSummary
    }
}

/// Creates each pipe once and hands out its ends with their own flags.
///
/// An anonymous pipe's own pipe2() descriptions go to the descriptions that were
/// pipe()'s: open() adds O_LARGEFILE, which pipe() never sets and F_SETFL cannot
/// clear, so only a second description of an end (opened through /proc) is reopened.
///
/// A FIFO's descriptions are all opened at once, at the first: a read-write holder
/// keeps it open (no open blocks) while its bytes go back. A reader opened while a
/// writer is there reports POLLHUP once the writers are gone; one that had seen no
/// writer at dump is opened after the holder is closed, so it still has seen none.
final class PipeRebuilder: KindRebuilder {
    private let context: OpenContext
    /// By inode, the file ids of each pipe's descriptions and of each FIFO's, in file table order.
    private var pipeDescriptions: [UInt64: [Int]] = [:]
    private var fifoDescriptions: [PipeIdentity: [Int]] = [:]
    private var pipes: [UInt64: (read: FileDescriptor, write: FileDescriptor)] = [:]
    /// Pipe ends whose pipe2() description went to a description already.
    private var ownEndsGiven = Set<PipeEnd>()
    /// Descriptions opened with the rest of their FIFO, by file id, until handed out.
    private var fifoReady: [Int: FileDescriptor] = [:]
    private var fifosOpened = Set<PipeIdentity>()
    /// cryo's own holders of FIFOs (read-write, or read-only once a quiet reader is open), closed at the end.
    private var holders: [FileDescriptor] = []

    private struct PipeEnd: Hashable {
        var inode: UInt64
        var isReadEnd: Bool
    }

    private static let largeFileFlag: UInt32 = 0o100000  // O_LARGEFILE

    init(_ context: OpenContext) {
        self.context = context
        for f in context.files {
            // The metatype test first: a dynamic cast of every entry costs more.
            if type(of: f.state) == PipeEndState.self, let state = f.state as? PipeEndState {
                pipeDescriptions[state.inode, default: []].append(f.id)
            } else if type(of: f.state) == FifoState.self, let state = f.state as? FifoState {
                fifoDescriptions[state.end.identity, default: []].append(f.id)
            }
        }
    }

    func end(_ state: PipeEndState, file: FileTable.OpenFile, object: String) throws -> FileDescriptor {
        let ends = try pipe(state.inode, capacity: state.capacity, object: object)
        let mine = state.isReadEnd ? ends.read : ends.write
        let access = Int32(bitPattern: file.flags) & O_ACCMODE
        let fd: FileDescriptor
        let given: Int32
        if file.flags & Self.largeFileFlag == 0, access == (state.isReadEnd ? O_RDONLY : O_WRONLY),
           ownEndsGiven.insert(PipeEnd(inode: state.inode, isReadEnd: state.isReadEnd)).inserted {
            fd = try FileObjects.duplicate(mine, object: object)
            given = 0
        } else {
            (fd, given) = try Self.reopenWithoutDirect(path: "/proc/self/fd/\(mine.rawValue)", flags: file.flags, object: object)
        }
        try Self.setStatusFlags(fd, to: file.flags, given: given, object: object)
        return fd
    }

    /// The pipe of `inode`, made at its first description with its size and buffered bytes.
    private func pipe(_ inode: UInt64, capacity: Int32, object: String) throws -> (read: FileDescriptor, write: FileDescriptor) {
        if let existing = pipes[inode] { return existing }
        let ends = try FileObjects.pipe(object: object)
        pipes[inode] = ends
        try FileObjects.setPipeCapacity(ends.write, capacity, object: object)
        // Before any end gets its flags: an O_DIRECT writer would cut the bytes into packets.
        for id in pipeDescriptions[inode] ?? [] {
            guard let state = context.files[id].state as? PipeEndState, let buffered = state.buffered, !buffered.isEmpty else { continue }
            try Self.refill(ends.write, buffered, packets: state.packets, flags: 0, object: "\(object): refilling the pipe")
        }
        return ends
    }

    /// Writes a pipe's dumped bytes back through `writer`, its packets as packets: O_DIRECT
    /// is on for them, then the writer's status flags go back to `flags`.
    private static func refill(_ writer: FileDescriptor, _ bytes: Data, packets: [Int]?, flags: Int32, object: String) throws {
        var offset = 0
        if let packets, !packets.isEmpty {
            try FileObjects.setStatusFlags(writer, flags | FileObjects.directFlag, object: object)
            for length in packets {
                // One write is one packet (up to a page; the kernel cut longer writes the same way).
                try FileObjects.writeAll(writer, bytes[bytes.startIndex + offset ..< bytes.startIndex + offset + length], object: object)
                offset += length
            }
            try FileObjects.setStatusFlags(writer, flags, object: object)
        }
        if offset < bytes.count { try FileObjects.writeAll(writer, bytes[(bytes.startIndex + offset)...], object: object) }
    }

    /// open() refuses O_DIRECT on a pipe or FIFO (EINVAL); F_SETFL takes it after.
    /// Returns the descriptor and the settable flags it got.
    private static func reopenWithoutDirect(path: String, flags: UInt32, object: String) throws -> (FileDescriptor, Int32) {
        let flags = flags & ~UInt32(FileObjects.directFlag)
        return (try reopen(path: path, flags: flags, position: 0, object: object), Int32(bitPattern: flags) & FileObjects.settableStatusFlags)
    }

    /// F_SETFL to the dumped status flags where the open gave others (`given`); closes `fd` if that fails.
    private static func setStatusFlags(_ fd: FileDescriptor, to flags: UInt32, given: Int32, object: String) throws {
        let wanted = Int32(bitPattern: flags) & FileObjects.settableStatusFlags
        guard wanted != given else { return }
        do { try FileObjects.setStatusFlags(fd, wanted, object: object) } catch {
            try? fd.close()
            throw error
        }
    }

    func fifoEnd(_ file: FileTable.OpenFile, object: String) throws -> FileDescriptor {
        if let state = file.state as? FifoState, fifosOpened.insert(state.end.identity).inserted {
            try openFifo(state.end.identity, first: file, object: object)
        }
        guard let fd = fifoReady.removeValue(forKey: file.id) else {
            throw CryoError("\(object): FIFO \(file.path ?? "") was not opened with the other descriptions of its inode")
        }
        return fd
    }

    /// Opens every description of the FIFO `identity`, `first` being the first of them in the file table.
    private func openFifo(_ identity: PipeIdentity, first: FileTable.OpenFile, object: String) throws {
        let inode = identity.inode
        guard let firstState = first.state as? FifoState else { return }
        let path = first.path ?? ""
        let removed = firstState.removed
        var holder: FileDescriptor
        if let removed {
            holder = try makeRemovedFifo(path: path, removed, inode: inode, object: object, fallback: context.paths.directory)
        } else {
            do { holder = try Files.open(path, .readWrite, options: [.nonBlocking]) } catch {
                throw CryoError("\(object): FIFO \(path): \(error)")
            }
        }
        holders.append(holder)
        try FileObjects.setPipeCapacity(holder, firstState.end.capacity, object: object)
        let members = (fifoDescriptions[identity] ?? [first.id]).map { context.files[$0] }
        for f in members {
            guard let end = (f.state as? FifoState)?.end, let buffered = end.buffered, !buffered.isEmpty else { continue }
            try Self.refill(holder, buffered, packets: end.packets, flags: O_NONBLOCK, object: "\(object): refilling FIFO \(path)")
        }
        // Quiet readers only where nothing in the image writes: a writer restored
        // with them would be one they have seen.
        let writes = members.contains { Int32(bitPattern: $0.flags) & O_ACCMODE != O_RDONLY }
        func isQuiet(_ f: FileTable.OpenFile) -> Bool { !writes && (f.state as? FifoState)?.end.hungUp == false }
        // An unlinked FIFO is reached through a holder of cryo's.
        func name(_ f: FileTable.OpenFile) -> String { removed == nil ? (f.path ?? path) : "/proc/self/fd/\(holder.rawValue)" }

        for f in members where !isQuiet(f) {
            let what = context.object(f)
            let (fd, given) = try Self.reopenWithoutDirect(path: name(f), flags: f.flags, object: what)
            try Self.setStatusFlags(fd, to: f.flags, given: given, object: what)
            fifoReady[f.id] = fd
        }
        guard members.contains(where: isQuiet) else { return }
        // A read-only holder keeps the FIFO and its bytes while no writer is left.
        let keeper = try reopen(path: "/proc/self/fd/\(holder.rawValue)", flags: UInt32(O_RDONLY | O_NONBLOCK), position: 0, object: object)
        holders.append(keeper)
        holders.removeAll { $0 == holder }
        try holder.close()
        holder = keeper
        for f in members where isQuiet(f) {
            // With O_NONBLOCK: a reader's open waits for a writer otherwise.
            let what = context.object(f)
            let (fd, given) = try Self.reopenWithoutDirect(path: name(f), flags: f.flags | UInt32(O_NONBLOCK), object: what)
            try Self.setStatusFlags(fd, to: f.flags, given: given, object: what)
            fifoReady[f.id] = fd
        }
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
        for holder in holders { try? holder.close() }
        for fd in fifoReady.values { try? fd.close() }
        fifoReady = [:]
    }
}
