import CCryo
import CryoInjector
import CryoSystem
import Foundation
import Glibc
import SystemPackage

/// The dump's copy of large memory: the parasite vmsplices the task's own pages
/// into a pipe (no copy: the pipe holds references to the frozen pages) while
/// a second cryo thread splices them into the pages file, so each byte is
/// copied once instead of twice (process_vm_readv into a buffer, then write).
/// Worth an extra parasite visit only for large amounts.
struct PagePipe {
    static let threshold: UInt64 = 16 << 20
    let leader: Tracee
    let log: (pid_t, String, String) -> Void

    func copy(_ regions: [Range<UInt64>], to out: FileDescriptor, path: String) throws {
        let pid = leader.pid
        let iovecs = regions.map { cryo_iovec(base: $0.lowerBound, length: UInt64($0.count)) }
        let parasite = try Parasite.inject(into: leader, argumentBytes: MemoryLayout<cryo_dump_pages>.size + iovecs.count * 16,
                                           log: log)
        do {
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
            try parasite.cure()
        } catch {
            _ = try? parasite.cure()
            throw error
        }
    }
}

/// The cryo side of a PagePipe: a thread moving everything from the pipe into
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
