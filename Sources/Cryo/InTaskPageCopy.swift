import CCryo
import CryoInjector
import CryoSystem
import Foundation
import Glibc
import SystemPackage

/// The dump's copy of large memory, done with the parasite so that each byte is
/// copied once (process_vm_readv into a buffer and then write() would copy it
/// twice). Worth an extra parasite visit only for large amounts.
///
/// Preferred: the frozen task pwritev()s its own pages into the pages file,
/// which it receives over a socketpair: the very copy a plain write() of that
/// memory makes. Meanwhile, on another CPU, a cryo thread copies the tail of the
/// stream with process_vm_readv straight into a shared mapping of the same file
/// (writes to one file are serialised by its inode lock; a mapping is not).
/// Where the task cannot write the file (its RLIMIT_FSIZE, say), the parasite
/// vmsplices its part into a pipe instead (no copy: the pipe holds references
/// to the frozen pages) and another cryo thread splices it into the file.
struct InTaskPageCopy {
    static let threshold: UInt64 = 16 << 20
    /// The task's share of the bytes when cryo copies the rest alongside: measured here, the
    /// mapped copy runs at a bit over half the speed of the task's write, so both end together.
    static let taskShare = 0.65
    let leader: Tracee
    let log: (pid_t, String, String) -> Void
    /// Test switches: CRYO_PAGE_COPY=pipe takes the pipe at once, =task leaves all of it to the task.
    private let mode = ProcessInfo.processInfo.environment["CRYO_PAGE_COPY"]

    /// `injected` is called once the parasite is in, before the copy starts.
    func copy(_ regions: [Range<UInt64>], to out: FileDescriptor, path: String, injected: () -> Void) throws {
        let total = regions.reduce(0) { $0 + UInt64($1.count) }
        let alongside = mode == nil && ProcessInfo.processInfo.activeProcessorCount >= 2
        let split = alongside ? UInt64(Double(total) * InTaskPageCopy.taskShare) & ~0xfff : total
        let (head, cryoPart) = InTaskPageCopy.cut(regions, at: split)
        var taskPart = head
        var helper: CopyThread? = nil
        if !cryoPart.isEmpty {
            do {
                try Files.truncate(out, to: total, path: path)   // the mapping must lie inside the file
                helper = try mappedCopy(cryoPart, into: SharedFileMapping(out, offset: split, length: Int(total - split), path: path))
            } catch {
                // A file system without shared writable mappings: the task writes it all.
                log(leader.pid, "WRITE_PAGES", "cryo cannot copy alongside the task: \(error)")
                taskPart = regions
            }
        }
        let iovecs = taskPart.map { cryo_iovec(base: $0.lowerBound, length: UInt64($0.count)) }
        do {
            let request = max(MemoryLayout<cryo_dump_pages>.size, MemoryLayout<cryo_write_pages>.size)
            let parasite = try Parasite.inject(into: leader, argumentBytes: request + iovecs.count * 16, log: log)
            injected()
            do {
                let written = mode == "pipe" ? false : try writeInTask(parasite, iovecs, to: out, path: path)
                if !written { try throughPipe(parasite, iovecs, to: out, path: path) }
                try parasite.cure()
            } catch {
                _ = try? parasite.cure()
                throw error
            }
        } catch {
            helper?.abandon()
            throw error
        }
        try helper?.finish()
    }

    /// Regions up to `split` bytes of the stream, and the rest.
    static func cut(_ regions: [Range<UInt64>], at split: UInt64) -> (head: [Range<UInt64>], tail: [Range<UInt64>]) {
        var head: [Range<UInt64>] = [], tail: [Range<UInt64>] = []
        var offset: UInt64 = 0
        for region in regions {
            let length = UInt64(region.count)
            if offset + length <= split {
                head.append(region)
            } else if offset >= split {
                tail.append(region)
            } else {
                let middle = region.lowerBound + (split - offset)
                head.append(region.lowerBound..<middle)
                tail.append(middle..<region.upperBound)
            }
            offset += length
        }
        return (head, tail)
    }

    /// False when the task could not write the file: the pipe is tried next, over the same bytes.
    private func writeInTask(_ parasite: Parasite, _ iovecs: [cryo_iovec], to out: FileDescriptor, path: String) throws -> Bool {
        let pid = leader.pid
        let total = iovecs.reduce(0) { $0 + $1.length }
        let sockets = try parasite.run(CRYO_CMD_PAGE_SOCKET, input: cryo_page_socket(), output: cryo_page_socket.self)
        parasite.openDescriptors = [sockets.task_fd, sockets.cryo_fd]
        do {
            let ours = try Pidfd.copy(of: sockets.cryo_fd, from: pid)
            defer { try? ours.close() }
            try Pidfd.send(out, over: ours.rawValue, to: pid)
        }
        var arguments = cryo_write_pages()
        arguments.task_fd = sockets.task_fd
        arguments.cryo_fd = sockets.cryo_fd
        arguments.count = UInt32(iovecs.count)
        arguments.total = total
        killPoint("pages")
        do {
            let reply = try parasite.run(CRYO_CMD_WRITE_PAGES, payload: bytes(of: arguments) + bytes(of: iovecs),
                                         replyBytes: MemoryLayout<cryo_write_pages>.size)
            parasite.openDescriptors = []
            let written = reply.payload.withUnsafeBytes { $0.loadUnaligned(as: cryo_write_pages.self) }.written
            guard written == total else {
                throw CryoError("pid \(pid): \(path): the task wrote \(written) of \(total) bytes of its pages")
            }
            return true
        } catch InjectionError.parasite(_, _, let result, _, _, _) {
            // The command ended cleanly with the task's descriptors closed; its reason is only logged.
            parasite.openDescriptors = []
            log(pid, "WRITE_PAGES", "the task cannot write its pages (errno \(-result)); through a pipe instead")
            return false
        }
    }

    private func throughPipe(_ parasite: Parasite, _ iovecs: [cryo_iovec], to out: FileDescriptor, path: String) throws {
        let pid = leader.pid
        var request = cryo_page_pipe()
        request.size = 1 << 20
        let pipe = try parasite.run(CRYO_CMD_PAGE_PIPE, input: request, output: cryo_page_pipe.self)
        parasite.openDescriptors = [pipe.read_fd, pipe.write_fd]
        let readEnd = try Pidfd.copy(of: pipe.read_fd, from: pid)
        let total = iovecs.reduce(0) { $0 + $1.length }
        let drain = spliceDrain(from: readEnd, to: out, total: total, path: path, chunk: Int(pipe.size))
        var arguments = cryo_dump_pages()
        arguments.read_fd = pipe.read_fd
        arguments.write_fd = pipe.write_fd
        arguments.count = UInt32(iovecs.count)
        do {
            try parasite.run(CRYO_CMD_DUMP_PAGES, payload: bytes(of: arguments) + bytes(of: iovecs), replyBytes: 0)
        } catch {
            drain.abandon()
            throw error
        }
        parasite.openDescriptors = []
        try drain.finish()
    }

    /// cryo's share of the copy: process_vm_readv from the frozen task straight into
    /// a shared mapping of the pages file, chunk by chunk.
    private func mappedCopy(_ regions: [Range<UInt64>], into mapping: SharedFileMapping) -> CopyThread {
        let pid = leader.pid
        return CopyThread { stopped in
            var at = 0
            for region in regions {
                var address = region.lowerBound
                while address < region.upperBound && !stopped() {
                    let count = Int(min(4 << 20, region.upperBound - address))
                    try mapping.populate(at..<(at + count))
                    try RemoteMemory.read(pid, at: address, into: UnsafeMutableRawBufferPointer(rebasing: mapping.buffer[at..<(at + count)]))
                    at += count
                    address += UInt64(count)
                    killPoint("pages")
                }
            }
        }
    }

    /// The cryo side of the pipe: everything from the pipe into the file, in order from offset 0.
    private func spliceDrain(from pipe: FileDescriptor, to file: FileDescriptor, total: UInt64, path: String,
                             chunk: Int) -> CopyThread {
        CopyThread { stopped in
            var offset: Int64 = 0
            // Closing our end makes the parasite's vmsplice fail rather than wait forever.
            defer { try? pipe.close() }
            while UInt64(offset) < total && !stopped() {
                guard try Files.waitReadable(pipe, milliseconds: 100, object: path),
                      let n = try Files.spliceToFile(from: pipe, to: file, offset: &offset, length: chunk, object: path)
                else { continue }
                if n == 0 { break }
                killPoint("pages")
            }
            if UInt64(offset) != total && !stopped() {
                throw CryoError("\(path): the parasite's pipe ended after \(offset) of \(total) bytes")
            }
        }
    }
}

/// A copy running on a thread of its own from creation: `abandon` asks it to stop
/// and waits, `finish` waits and rethrows what it failed with.
private final class CopyThread: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var stopRequested = false
    private var failure: Error?

    init(_ body: @escaping @Sendable (_ stopped: () -> Bool) throws -> Void) {
        Thread.detachNewThread { [self] in
            do { try body { lock.withLock { stopRequested } } } catch { lock.withLock { failure = error } }
            done.signal()
        }
    }

    /// The other part failed: stop early.
    func abandon() {
        lock.withLock { stopRequested = true }
        done.wait()
    }

    func finish() throws {
        done.wait()
        try lock.withLock { if let failure { throw failure } }
    }
}
