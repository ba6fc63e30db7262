import CCryo
import CryoInjector
import CryoSystem
import Dispatch
import FoundationEssentials
import Glibc
import SystemPackage

/// The dump's copy of large memory, done with the parasite so that each byte is
/// copied once (process_vm_readv into a buffer and then write() would copy it
/// twice). Worth an extra parasite visit only for large amounts.
///
/// Preferred: the frozen task pwritev()s its own pages into the pages file,
/// which it receives over a socketpair: the very copy a plain write() of that
/// memory makes. With two CPUs, the second half of the stream goes into a part
/// file (PageIndex.parts), written at the same time by a short-lived thread the
/// parasite starts in the task: ext4 serialises the writers of one file on its
/// inode and extent locks, while two files fill in about two thirds of the time
/// one takes (measured here: 0.19-0.21 s against 0.29-0.30 s for 1.5 GiB).
/// The thread is left out where the task has seccomp filters (they would apply
/// to it: it is not traced), and the parasite writes the part itself after the
/// first if it cannot start one.
/// Pages the task cannot read itself (no PROT_READ) keep their place in the
/// stream: the task reads them through /proc/PID/mem, which cryo opens and
/// sends with the files, and writes them in turn (a cryo thread writing them
/// meanwhile waited for the task's pwritev each time: ext4 lets one writer of
/// a file in at a time; through the pipe they made every piece of it a splice
/// of its own: 10,000 small mappings cost 15,000 poll+splice calls).
/// Where the task cannot write the files (its RLIMIT_FSIZE, say), the parasite
/// vmsplices all the pages into a pipe instead (no copy: the pipe holds
/// references to the frozen pages) and a cryo thread splices them into the file.
struct InTaskPageCopy {
    static let threshold: UInt64 = 16 << 20
    /// Per writer in the task, for pages read through /proc/PID/mem.
    static let scratchSize = 256 << 10
    let leader: Tracee
    let log: ((pid_t, String, String) -> Void)?
    /// Test switches: CRYO_PAGE_COPY=pipe takes the pipe at once, =task writes one file with no thread.
    private let mode = TestHooks.current.pageCopy

    /// Copies the page stream `regions` into `out` and, with two CPUs, its second half
    /// into a new file at `partPath`; returns the size of that part (0: none, and no
    /// such file). `injected` is called once the parasite is in, before the copy starts.
    /// `unreadable`: mappings the task cannot read (no PROT_READ): the task leaves their
    /// place in the files empty and cryo fills it through /proc/PID/mem meanwhile (or,
    /// through the pipe, between the parasite's pieces).
    func copy(_ regions: [Range<UInt64>], unreadable: [Range<UInt64>] = [], to out: FileDescriptor, path: String,
              partPath: String, injected: () -> Void) throws -> UInt64 {
        let total = regions.reduce(0) { $0 + UInt64($1.count) }
        let segments = InTaskPageCopy.segments(regions, unreadable: unreadable)
        let twoWriters = mode == nil && ProcessInfo.processInfo.activeProcessorCount >= 2
        let split = twoWriters ? (total / 2) & ~0xfff : total
        let (head, tail) = InTaskPageCopy.cut(segments, at: split)
        let readable = InTaskPageCopy.iovecs(segments.filter { !$0.forced }.map(\.range))
        var part: FileDescriptor? = nil
        defer { try? part?.close() }
        do {
            if !tail.isEmpty {
                part = try Files.open(partPath, .writeOnly, options: [.create, .exclusiveCreate, .noFollow],
                                      permissions: [.ownerReadWrite])
            }
            let request = max(MemoryLayout<cryo_dump_pages>.size, MemoryLayout<cryo_write_pages>.size)
            let entries = max(head.count + tail.count, readable.count)
            let scratch = segments.contains { $0.forced } ? 2 * InTaskPageCopy.scratchSize + 16 : 0
            let parasite = try Parasite.inject(into: leader, argumentBytes: request + entries * 16 + 16 + scratch + Int(CRYO_WRITE_PAGES_STACK),
                                               log: log)
            injected()
            do {
                var partBytes = total - split
                let written = mode == "pipe" ? false
                    : try writeInTask(parasite, head, to: out, path: path, part: part.map { ($0, tail, partPath) })
                if !written {
                    try throughPipe(parasite, readable, segments: segments, to: out, path: path)
                    partBytes = 0
                }
                try parasite.cure()
                if partBytes == 0, part != nil { unlink(partPath) }
                return partBytes
            } catch {
                _ = try? parasite.cure()
                throw error
            }
        } catch {
            if part != nil { unlink(partPath) }
            throw error
        }
    }

    /// The page stream in order, cut where it enters or leaves an unreadable mapping.
    static func segments(_ regions: [Range<UInt64>], unreadable: [Range<UInt64>]) -> [Segment] {
        guard !unreadable.isEmpty else { return regions.map { ($0, false) } }
        var result: [Segment] = []
        var u = 0
        for region in regions {
            var start = region.lowerBound
            while start < region.upperBound {
                while u < unreadable.count && unreadable[u].upperBound <= start { u += 1 }
                if u < unreadable.count && unreadable[u].lowerBound <= start {
                    let end = min(region.upperBound, unreadable[u].upperBound)
                    result.append((start..<end, true))
                    start = end
                } else {
                    let end = min(region.upperBound, u < unreadable.count ? unreadable[u].lowerBound : region.upperBound)
                    result.append((start..<end, false))
                    start = end
                }
            }
        }
        return result
    }

    static func iovecs(_ regions: [Range<UInt64>]) -> [cryo_iovec] {
        regions.map { cryo_iovec(base: $0.lowerBound, length: UInt64($0.count)) }
    }

    typealias Segment = (range: Range<UInt64>, forced: Bool)

    /// Segments up to `split` bytes of the stream, and the rest.
    static func cut(_ segments: [Segment], at split: UInt64) -> (head: [Segment], tail: [Segment]) {
        var head: [Segment] = [], tail: [Segment] = []
        var offset: UInt64 = 0
        for segment in segments {
            let region = segment.range
            let length = UInt64(region.count)
            if offset + length <= split {
                head.append(segment)
            } else if offset >= split {
                tail.append(segment)
            } else {
                let middle = region.lowerBound + (split - offset)
                head.append((region.lowerBound..<middle, segment.forced))
                tail.append((middle..<region.upperBound, segment.forced))
            }
            offset += length
        }
        return (head, tail)
    }

    /// One file's segments for WRITE_PAGES: the forced ones the task reads through /proc/PID/mem.
    static func taskIovecs(_ segments: [Segment]) -> [cryo_iovec] {
        segments.map {
            cryo_iovec(base: $0.forced ? $0.range.lowerBound | CRYO_IOVEC_FROM_MEM : $0.range.lowerBound, length: UInt64($0.range.count))
        }
    }

    /// False when the task could not write the files: the pipe is tried next, over all the bytes.
    /// Pages the task cannot read it reads through cryo's /proc/PID/mem (where the kernel lets only
    /// the tracer itself read them, proc_mem.force_override=ptrace, that fails and the pipe is tried).
    private func writeInTask(_ parasite: Parasite, _ segments: [Segment], to out: FileDescriptor, path: String,
                             part: (file: FileDescriptor, segments: [Segment], path: String)?) throws -> Bool {
        let pid = leader.pid
        let iovecs = InTaskPageCopy.taskIovecs(segments)
        let partIovecs = part.map { InTaskPageCopy.taskIovecs($0.segments) } ?? []
        let size = { (s: [Segment]) in s.reduce(UInt64(0)) { $0 + UInt64($1.range.count) } }
        let (total, partTotal) = (size(segments), part.map { size($0.segments) } ?? 0)
        let (expected, partExpected) = (total, partTotal)
        let fromMemory = segments.contains { $0.forced } || part?.segments.contains { $0.forced } == true
        let sockets = try parasite.run(CRYO_CMD_PAGE_SOCKET, input: cryo_page_socket(), output: cryo_page_socket.self)
        parasite.openDescriptors = [sockets.task_fd, sockets.cryo_fd]
        do {
            let ours = try Pidfd.copy(of: sockets.cryo_fd, from: pid)
            defer { try? ours.close() }
            try Pidfd.send(out, over: ours, to: pid)
            if let part { try Pidfd.send(part.file, over: ours, to: pid) }
            if fromMemory {
                let memory = try RemoteMemory.openForced(pid)
                defer { try? memory.close() }
                try Pidfd.send(memory, over: ours, to: pid)
            }
        }
        var arguments = cryo_write_pages()
        arguments.task_fd = sockets.task_fd
        arguments.cryo_fd = sockets.cryo_fd
        arguments.count = UInt32(iovecs.count)
        arguments.part_count = UInt32(partIovecs.count)
        arguments.total = total
        arguments.part_total = partTotal
        if fromMemory {
            arguments.flags |= CRYO_WRITE_PAGES_MEM
            arguments.scratch_size = UInt32(InTaskPageCopy.scratchSize)
        }
        // An untraced thread would run under the task's seccomp filters.
        if part != nil, (try? ProcStatus(pid: pid).values["Seccomp"]) == "0" { arguments.flags |= CRYO_WRITE_PAGES_THREAD }
        killPoint("pages")
        do {
            let reply = try parasite.run(CRYO_CMD_WRITE_PAGES, payload: bytes(of: arguments) + bytes(of: iovecs + partIovecs),
                                         replyBytes: MemoryLayout<cryo_write_pages>.size)
            parasite.openDescriptors = []
            let result = reply.payload.withUnsafeBytes { $0.loadUnaligned(as: cryo_write_pages.self) }
            guard result.written == expected, result.part_written == partExpected else {
                throw CryoError("pid \(pid): \(path): the task wrote \(result.written) of \(expected) bytes of its pages"
                    + (part.map { " and \(result.part_written) of \(partExpected) into \(fileName(of: $0.path))" } ?? ""))
            }
            if part != nil && result.threaded == 0 { log?(pid, "WRITE_PAGES", "the task wrote its pages without a second thread") }
            return true
        } catch InjectionError.parasite(_, _, let result, _, _, _) {
            // The command ended cleanly with the task's descriptors closed.
            parasite.openDescriptors = []
            // Whatever it wrote is written again, by the pipe, or removed with the image.
            // A full file system is no reason for the pipe: it would fill up the same way.
            let errno = Errno(rawValue: Int32(truncatingIfNeeded: -result))
            if errno == .noSpace || errno == .diskQuotaExceeded {
                throw SyscallError("the task's pwritev of its pages", errno: errno, pid: pid, object: path)
            }
            log?(pid, "WRITE_PAGES", "the task cannot write its pages (errno \(-result)); through a pipe instead")
            return false
        }
    }

    /// `iovecs`: the readable segments, which the parasite vmsplices; the drain puts them and the forced ones in order.
    private func throughPipe(_ parasite: Parasite, _ iovecs: [cryo_iovec], segments: [(range: Range<UInt64>, forced: Bool)],
                             to out: FileDescriptor, path: String) throws {
        let pid = leader.pid
        var request = cryo_page_pipe()
        request.size = 1 << 20
        let pipe = try parasite.run(CRYO_CMD_PAGE_PIPE, input: request, output: cryo_page_pipe.self)
        parasite.openDescriptors = [pipe.read_fd, pipe.write_fd]
        let readEnd = try Pidfd.copy(of: pipe.read_fd, from: pid)
        let drain = spliceDrain(from: readEnd, to: out, segments: segments, pid: pid, path: path, chunk: Int(pipe.size))
        var arguments = cryo_dump_pages()
        arguments.read_fd = pipe.read_fd
        arguments.write_fd = pipe.write_fd
        arguments.count = UInt32(iovecs.count)
        do {
            try parasite.run(CRYO_CMD_DUMP_PAGES, payload: bytes(of: arguments) + bytes(of: iovecs), replyBytes: 0)
        } catch {
            // The file side failing (ENOSPC...) is why the parasite's vmsplice met a closed pipe: say that.
            throw drain.abandon() ?? error
        }
        parasite.openDescriptors = []
        try drain.finish()
    }

    /// The cryo side of the pipe: everything from the pipe into the file, in order from offset 0.
    private func spliceDrain(from pipe: FileDescriptor, to file: FileDescriptor, segments: [(range: Range<UInt64>, forced: Bool)],
                             pid: pid_t, path: String, chunk: Int) -> CopyThread {
        CopyThread { stopped in
            var offset: Int64 = 0
            // Closing our end makes the parasite's vmsplice fail rather than wait forever.
            defer { try? pipe.close() }
            var buffer: UnsafeMutableRawBufferPointer?
            defer { buffer?.deallocate() }
            var memory: FileDescriptor?
            defer { try? memory?.close() }
            for segment in segments where !stopped() {
                let end = offset + Int64(segment.range.count)
                if segment.forced {
                    // Not in the pipe: the task cannot read it (vmsplice would fail with EFAULT).
                    let scratch = buffer ?? UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
                    buffer = scratch
                    var address = segment.range.lowerBound
                    while offset < end {
                        let n = Int(min(Int64(scratch.count), end - offset))
                        let view = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<n])
                        let mem = try memory ?? RemoteMemory.openForced(pid)
                        memory = mem
                        try RemoteMemory.readForced(mem, pid: pid, at: address, into: view)
                        try Files.write(file, UnsafeRawBufferPointer(view), at: offset, path: path)
                        offset += Int64(n)
                        address += UInt64(n)
                    }
                    continue
                }
                while offset < end && !stopped() {
                    guard try Files.waitReadable(pipe, milliseconds: 100, object: path),
                          let n = try Files.spliceToFile(from: pipe, to: file, offset: &offset, length: Int(min(Int64(chunk), end - offset)),
                                                         object: path)
                    else { continue }
                    if n == 0 {
                        throw CryoError("\(path): the parasite's pipe ended after \(offset) bytes of the page stream")
                    }
                    killPoint("pages")
                }
            }
        }
    }
}

/// A copy running on a thread of its own from creation: `abandon` asks it to stop
/// and waits, `finish` waits and rethrows what it failed with (either, any number of times).
private final class CopyThread: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let lock = Lock()
    private var stopRequested = false
    private var failure: Error?

    init(_ body: @escaping @Sendable (_ stopped: () -> Bool) throws -> Void) {
        startThread { [self] in
            do { try body { lock.withLock { stopRequested } } } catch { lock.withLock { failure = error } }
            done.signal()
        }
    }

    /// The other part failed: stop early. Returns what the copy itself failed with, if it did.
    @discardableResult
    func abandon() -> Error? {
        lock.withLock { stopRequested = true }
        waitDone()
        return lock.withLock { failure }
    }

    func finish() throws {
        waitDone()
        try lock.withLock { if let failure { throw failure } }
    }

    /// Stays signalled once done: `abandon` after `finish` does not wait forever.
    private func waitDone() {
        done.wait()
        done.signal()
    }
}
