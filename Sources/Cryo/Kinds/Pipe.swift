import CCryo
import CryoSystem
import Foundation
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
        let capacity = try Files.fcntl(p.handle.rawValue, CRYO_F_GETPIPE_SZ, object: p.object)
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
        let reader = Glibc.open("/proc/\(p.pid)/fd/\(p.fd)", O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        if reader < 0 { throw SyscallError("open", errno: Errno(rawValue: cryo_errno()), object: "\(p.object) (pipe, to peek)") }
        defer { close(reader) }
        var scratch: [Int32] = [0, 0]
        _ = try check(cryo_pipe2(&scratch, O_CLOEXEC | O_NONBLOCK), "pipe2", object: p.object)
        defer { close(scratch[0]); close(scratch[1]) }
        _ = try Files.fcntl(scratch[1], CRYO_F_SETPIPE_SZ, capacity, object: "scratch pipe for \(p.object)")
        let copied = cryo_tee(reader, scratch[1], Int(capacity), UInt32(CRYO_SPLICE_F_NONBLOCK))
        if copied == -Int(EAGAIN) { return [] }
        let count = try check(copied, "tee", pid: p.pid, object: "fd \(p.fd)")
        var data = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = data.withUnsafeMutableBytes { read(scratch[0], $0.baseAddress! + got, count - got) }
            if n <= 0 { throw SyscallError("read", errno: Errno(rawValue: cryo_errno()), object: "scratch pipe for \(p.object)") }
            got += n
        }
        return data
    }
}

/// A named FIFO: its path, and the state of a pipe end (`pipe` in files.img).
struct FifoState: DescriptorKind {
    static let name = "fifo"
    static let key: String? = "pipe"
    var end: PipeEndState

    init(end: PipeEndState) { self.end = end }
    init(from decoder: Decoder) throws { end = try PipeEndState(from: decoder) }
    func encode(to encoder: Encoder) throws { try end.encode(to: encoder) }

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> FifoState? {
        guard p.stat.st_mode & S_IFMT == S_IFIFO, !p.link.hasPrefix("pipe:") else { return nil }
        return FifoState(end: try PipeEndState.dumpEnd(p, into: table))
    }

    func recordedPath(_ p: DescriptorProbe) -> String? { p.link }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        try context.rebuilder(PipeRebuilder.self).fifoEnd(end, path: file.path ?? "", flags: file.flags, object: object)
    }

    func summary(_ file: FileTable.OpenFile) -> String { (file.path ?? Self.name) + end.bufferedSummary }
}

/// Creates each pipe once and hands out its ends with their own flags.
final class PipeRebuilder: KindRebuilder {
    init(_ context: OpenContext) {}

    private var pipes: [UInt64: (read: Int32, write: Int32)] = [:]
    private var holders: [UInt64: Int32] = [:]

    func end(_ state: PipeEndState, flags: UInt32, object: String) throws -> FileDescriptor {
        let ends: (read: Int32, write: Int32)
        if let existing = pipes[state.inode] {
            ends = existing
        } else {
            var fds: [Int32] = [0, 0]
            _ = try check(cryo_pipe2(&fds, O_CLOEXEC), "pipe2", object: object)
            ends = (fds[0], fds[1])
            pipes[state.inode] = ends
            _ = try Files.fcntl(ends.write, CRYO_F_SETPIPE_SZ, state.capacity, object: object)
        }
        if let buffered = state.buffered, !buffered.isEmpty {
            // The bytes travel with whichever end was dumped first; write them once.
            let written = buffered.withUnsafeBytes { write(ends.write, $0.baseAddress!, $0.count) }
            guard written == buffered.count else {
                throw SyscallError("write", errno: Errno(rawValue: cryo_errno()), object: "\(object): refilling the pipe")
            }
        }
        // Each end gets a description of its own, with the old status flags.
        let mine = state.isReadEnd ? ends.read : ends.write
        let copy = try reopen(path: "/proc/self/fd/\(mine)", flags: flags, position: 0, object: object)
        return copy
    }

    /// A named FIFO: one holder opened read-write per FIFO keeps it alive
    /// (so no open blocks) while its bytes are put back and its ends reopened.
    func fifoEnd(_ state: PipeEndState, path: String, flags: UInt32, object: String) throws -> FileDescriptor {
        if holders[state.inode] == nil {
            let holder = Glibc.open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC)
            if holder < 0 { throw SyscallError("open", errno: Errno(rawValue: cryo_errno()), object: "\(object): FIFO \(path)") }
            holders[state.inode] = holder
            _ = try Files.fcntl(holder, CRYO_F_SETPIPE_SZ, state.capacity, object: object)
        }
        if let buffered = state.buffered, !buffered.isEmpty {
            let written = buffered.withUnsafeBytes { write(holders[state.inode]!, $0.baseAddress!, $0.count) }
            guard written == buffered.count else {
                throw SyscallError("write", errno: Errno(rawValue: cryo_errno()), object: "\(object): refilling FIFO \(path)")
            }
        }
        return try reopen(path: path, flags: flags, position: 0, object: object)
    }

    func closeAll() {
        for ends in pipes.values { close(ends.read); close(ends.write) }
        for holder in holders.values { close(holder) }
    }
}
