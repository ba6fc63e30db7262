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
/// memory makes. Where the task cannot write the file (its RLIMIT_FSIZE, say),
/// the parasite vmsplices the pages into a pipe instead (no copy: the pipe
/// holds references to the frozen pages) and a cryo thread splices them into
/// the file.
struct InTaskPageCopy {
    static let threshold: UInt64 = 16 << 20
    let leader: Tracee
    let log: (pid_t, String, String) -> Void
    /// Test switch: CRYO_PAGE_COPY=pipe takes the pipe at once.
    private let pipeOnly = ProcessInfo.processInfo.environment["CRYO_PAGE_COPY"] == "pipe"

    func copy(_ regions: [Range<UInt64>], to out: FileDescriptor, path: String) throws {
        let iovecs = regions.map { cryo_iovec(base: $0.lowerBound, length: UInt64($0.count)) }
        let request = max(MemoryLayout<cryo_dump_pages>.size, MemoryLayout<cryo_write_pages>.size)
        let parasite = try Parasite.inject(into: leader, argumentBytes: request + iovecs.count * 16, log: log)
        do {
            let written = pipeOnly ? false : try writeInTask(parasite, iovecs, to: out, path: path)
            if !written { try throughPipe(parasite, iovecs, to: out, path: path) }
            try parasite.cure()
        } catch {
            _ = try? parasite.cure()
            throw error
        }
    }

    /// False when the task could not write the file: the pipe is tried next, from an empty file.
    private func writeInTask(_ parasite: Parasite, _ iovecs: [cryo_iovec], to out: FileDescriptor, path: String) throws -> Bool {
        let pid = leader.pid
        let total = iovecs.reduce(0) { $0 + $1.length }
        let sockets = try parasite.run(CRYO_CMD_PAGE_SOCKET, input: cryo_page_socket(), output: cryo_page_socket.self)
        parasite.openDescriptors = [sockets.task_fd, sockets.cryo_fd]
        do {
            let pidfd = try Pidfd.open(pid)
            defer { try? pidfd.close() }
            let ours = try Pidfd.getfd(pidfd, pid: pid, fd: sockets.cryo_fd)
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
            try Files.truncate(out, to: 0, path: path)
            return false
        }
    }

    private func throughPipe(_ parasite: Parasite, _ iovecs: [cryo_iovec], to out: FileDescriptor, path: String) throws {
        let pid = leader.pid
        var request = cryo_page_pipe()
        request.size = 1 << 20
        let pipe = try parasite.run(CRYO_CMD_PAGE_PIPE, input: request, output: cryo_page_pipe.self)
        parasite.openDescriptors = [pipe.read_fd, pipe.write_fd]
        let pidfd = try Pidfd.open(pid)
        defer { try? pidfd.close() }
        let readEnd = try Pidfd.getfd(pidfd, pid: pid, fd: pipe.read_fd)
        let total = iovecs.reduce(0) { $0 + $1.length }
        let drain = SpliceDrain(from: readEnd, to: out, total: total, path: path, chunk: Int(pipe.size))
        drain.start()
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
}

/// The cryo side of the pipe: a thread moving everything from the pipe into
/// the file, in order from offset 0.
private final class SpliceDrain: @unchecked Sendable {
    private let pipe: FileDescriptor
    private let file: FileDescriptor
    private let total: UInt64
    private let path: String
    private let chunk: Int
    private let done = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var stopRequested = false
    private var failure: Error?
    private var copied: UInt64 = 0

    init(from pipe: FileDescriptor, to file: FileDescriptor, total: UInt64, path: String, chunk: Int) {
        self.pipe = pipe
        self.file = file
        self.total = total
        self.path = path
        self.chunk = chunk
    }

    func start() {
        Thread.detachNewThread { [self] in
            var offset: Int64 = 0
            do {
                while UInt64(offset) < total && !lock.withLock({ stopRequested }) {
                    guard try Files.waitReadable(pipe, milliseconds: 100, object: path),
                          let n = try Files.spliceToFile(from: pipe, to: file, offset: &offset, length: chunk, object: path)
                    else { continue }
                    if n == 0 { break }
                    killPoint("pages")
                }
            } catch {
                lock.withLock { failure = error }
            }
            lock.withLock { copied = UInt64(offset) }
            // Closing our end makes the parasite's vmsplice fail rather than wait forever.
            try? pipe.close()
            done.signal()
        }
    }

    /// The parasite failed: stop waiting for bytes that will not come.
    func abandon() {
        lock.withLock { stopRequested = true }
        done.wait()
    }

    func finish() throws {
        done.wait()
        try lock.withLock {
            if let failure { throw failure }
            if copied != total {
                throw CryoError("\(path): the parasite's pipe ended after \(copied) of \(total) bytes")
            }
        }
    }
}
