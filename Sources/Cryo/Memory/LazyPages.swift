import CCryo
import CryoInjector
import CryoSystem
import Dispatch
import FoundationEssentials
import Glibc
import Logging
import SystemPackage

// Lazy restore (`restore --lazy-pages`): private anonymous memory is mapped
// but left empty; a userfaultfd made inside each restored task (MISSING mode
// over those mappings) lets cryo fill a page when it is first touched, while
// a background loop pushes the rest. Once every page of the image is in, the
// userfaultfds are closed and cryo exits.

/// Which pages of one task load lazily, and the runs the parasite still reads eagerly.
struct LazySplit {
    /// The page index without the lazy parts: what RESTORE_MEMORY reads at once.
    var eagerIndex: PageIndex
    /// Mappings to register with the userfaultfd.
    var ranges: [cryo_range]
    /// [address, length, offset in the pages file] still to load.
    var pending: [PendingRun]
    var pendingBytes: UInt64 { pending.reduce(0) { $0 + ($1.end - $1.start) } }

    /// Only private anonymous memory (anonymous, heap, stack) can take
    /// missing-page faults (a private file mapping cannot be registered); file, memfd and shared memory stay eager. Pages
    /// the kernel itself writes while cryo still drives the task (each
    /// thread's rseq area) and the page of the leader's rip (where cryo
    /// places its last injected syscall) stay eager too, so nothing during
    /// the restore waits on a fault. The pages around each thread's stack pointer are eager as well: the
    /// process needs them first thing.
    /// `eagerMappings`: starts of mappings that stay eager too (shared with a parent or child, CopyOnWrite.swift).
    init(task: TaskImage, eagerMappings: Set<UInt64> = []) {
        var eagerPages = Set<UInt64>()
        for thread in task.threads {
            if let rseq = thread.rseq, rseq.address != 0 {
                var page = rseq.address & ~0xfff
                while page < rseq.address + UInt64(max(rseq.length, 32)) { eagerPages.insert(page); page += 4096 }
            }
        }
        let rip = task.threads[0].registers.rip
        eagerPages.insert(rip & ~0xfff)
        eagerPages.insert((rip &+ 16) & ~0xfff)
        // The top of each stack is touched at once (and a signal frame is pushed below it): not worth a fault each.
        for thread in task.threads {
            let sp = thread.registers.rsp & ~0xfff
            for page in [sp &+ 4096, sp, sp &- 4096, sp &- 8192] { eagerPages.insert(page) }
        }

        // MADV_WIPEONFORK memory stays eager: a child forked later must see it zeroed, not filled from the image.
        // So does mlocked memory (not on fault): the lock brings in every page at once, as zeros if none came yet.
        let lazyMappings = task.memory.mappings.filter {
            // hugetlb memory takes no 4 KiB UFFDIO_COPY: eager.
            !$0.shared && [.anonymous, .heap, .stack].contains($0.kind) && $0.hugePageSize == nil
                && $0.advice & UInt32(CRYO_MADV_WIPEONFORK) == 0 && !eagerMappings.contains($0.start)
                && $0.advice & UInt32(CRYO_VMA_LOCKED | CRYO_VMA_LOCKONFAULT) != UInt32(CRYO_VMA_LOCKED)
        }
        ranges = lazyMappings.map { cryo_range(start: $0.start, end: $0.end) }
        var eagerRuns: [PageRun] = []
        pending = []
        // Runs, mappings and eager pages are all in address order: one walk over each, so that a
        // million runs in ten thousand mappings cost no more than their sum.
        let eagerSorted = eagerPages.sorted()
        var mappingCursor = 0, eagerCursor = 0
        for run in task.pageIndex.runs {
            let (address, length, offset) = (run.address, run.length, run.offset)
            while mappingCursor < lazyMappings.count && lazyMappings[mappingCursor].end <= address { mappingCursor += 1 }
            while eagerCursor < eagerSorted.count && eagerSorted[eagerCursor] < address { eagerCursor += 1 }
            guard mappingCursor < lazyMappings.count, lazyMappings[mappingCursor].start <= address,
                  address + length <= lazyMappings[mappingCursor].end else {
                eagerRuns.append(run)
                continue
            }
            // Cut the run at its eager pages (a handful: walking a gigabyte run page by page would cost milliseconds).
            var page = address
            while eagerCursor < eagerSorted.count && eagerSorted[eagerCursor] < address + length {
                let eager = eagerSorted[eagerCursor]
                if eager > page { pending.append(PendingRun(start: page, end: eager, offset: offset + (page - address))) }
                eagerRuns.append(PageRun(address: eager, length: 4096, offset: offset + (eager - address)))
                page = eager + 4096
                eagerCursor += 1
            }
            if page < address + length {
                pending.append(PendingRun(start: page, end: address + length, offset: offset + (page - address)))
            }
        }
        eagerIndex = task.pageIndex
        eagerIndex.runs = eagerRuns
    }

    /// What LAZY_UFFD registers: `ranges` (in address order), each run of neighbours as one range
    /// when nothing in `occupied` (everything else the task has mapped: its other mappings, the
    /// parasite) lies between them. UFFDIO_REGISTER takes a range with holes and registers each
    /// mapping in it, so 10,000 small mappings cost a few ioctls instead of one each.
    static func registrationRanges(_ ranges: [cryo_range], occupied: [Range<UInt64>]) -> [cryo_range] {
        let obstacles = occupied.sorted { $0.lowerBound < $1.lowerBound }
        var merged: [cryo_range] = []
        merged.reserveCapacity(ranges.count)
        var cursor = 0
        for range in ranges {
            guard let last = merged.last, last.end <= range.start else { merged.append(range); continue }
            // The first obstacle that ends after the gap's start decides: does it start before the gap's end?
            while cursor < obstacles.count && obstacles[cursor].upperBound <= last.end { cursor += 1 }
            var blocked = false
            var i = cursor
            while i < obstacles.count && obstacles[i].lowerBound < range.start {
                if obstacles[i].upperBound > last.end && !obstacles[i].isEmpty { blocked = true; break }
                i += 1
            }
            if blocked { merged.append(range) } else { merged[merged.count - 1].end = range.end }
        }
        return merged
    }
}

/// Where lazy restore gets page bytes: the image's PageReader (raw or
/// compressed pages), by offset in the page stream, since pending pages keep
/// their offset when the process moves them (mremap).
final class PageSource {
    let reader: PageReader
    /// Post-copy: pages still coming from the source, and the pid they are filed under.
    let remote: (RemotePages, Int32)?
    /// A raw page stream's files mapped read-only here: UFFDIO_COPY takes the pages straight from
    /// the page cache, one copy instead of a pread into a buffer and a copy from there (the same
    /// CPU time again for 1.5 GiB). A file truncated meanwhile makes UFFDIO_COPY fail with EFAULT,
    /// not cryo fault. Nil for compressed and post-copy streams.
    let mapped: [(part: UnsafeMutableRawBufferPointer, start: UInt64)]?

    init(reader: PageReader, remote: (RemotePages, Int32)? = nil) {
        self.reader = reader
        self.remote = remote
        mapped = remote == nil && reader.index.compression == nil ? PageSource.map(reader) : nil
    }

    deinit { for (part, _) in mapped ?? [] where part.count > 0 { SharedMemory.unmap(part) } }

    /// Every file of the stream mapped, or nil if one cannot be (then pages are read as before).
    private static func map(_ reader: PageReader) -> [(part: UnsafeMutableRawBufferPointer, start: UInt64)]? {
        var parts: [(part: UnsafeMutableRawBufferPointer, start: UInt64)] = []
        var start: UInt64 = 0
        for (i, size) in reader.index.fileSizes.enumerated() {
            let path = ImagePaths.part(i, of: reader.path)
            let mapping: UnsafeMutableRawBufferPointer? = size == 0 ? UnsafeMutableRawBufferPointer(start: nil, count: 0) : {
                guard let fd = try? Files.open(path, .readOnly) else { return nil }
                defer { try? fd.close() }
                return try? SharedMemory.mapShared(fd, length: Int(size), writable: false, object: path)
            }()
            guard let mapping else {
                for (part, _) in parts where part.count > 0 { SharedMemory.unmap(part) }
                return nil
            }
            parts.append((mapping, start))
            start += size
        }
        return parts
    }

    /// Where `length` bytes of the stream at `offset` are mapped, if in one file.
    func mappedBytes(at offset: UInt64, length: UInt64) -> UnsafeRawPointer? {
        guard let mapped else { return nil }
        for (part, start) in mapped where offset >= start && offset - start < UInt64(part.count) {
            guard length <= UInt64(part.count) - (offset - start) else { return nil }
            return UnsafeRawPointer(part.baseAddress!) + Int(offset - start)
        }
        return nil
    }

    /// The error for pages of the mapped stream that could not be read (EFAULT: the file shrank).
    func unreadable(at offset: UInt64, label: String, address: UInt64) -> CryoError {
        CryoError("\(label): page 0x\(String(address, radix: 16)): \(fileName(of: reader.path)): offset \(offset) of the page stream cannot be read (truncated)")
    }

    /// `buffer.count` bytes of the page stream at `offset`; a short or damaged file is an error.
    /// After a post-copy start, pages not received yet are asked for and waited for.
    func bytes(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        if let (pages, pid) = remote { try pages.require(pid: pid, offset: offset, count: buffer.count) }
        try reader.readStream(offset: offset, into: buffer)
    }
}

/// One address space being filled: a restored process, or a child it forked meanwhile.
final class LazyProcess {
    let uffd: Userfaultfd
    let source: PageSource
    var pending: PendingPages
    /// The pid it was restored as; nil for a child forked after the restore.
    let pid: pid_t?
    let label: String
    /// Faults that met an mm change (EAGAIN): retried once the events are read.
    var deferred: [UInt64] = []
    var gone = false
    /// Its userfaultfd's copy in the lazy guard, if one watches.
    var guardIndex: UInt32?

    init(uffd: Userfaultfd, source: PageSource, pending: PendingPages, pid: pid_t?, label: String) {
        self.uffd = uffd
        self.source = source
        self.pending = pending
        self.pid = pid
        self.label = label
    }
}

/// What lazy loading did, for stats-restore.
public struct LazyStatistics: Codable, Sendable {
    public var pagesOnDemand: UInt64 = 0
    public var pagesPushed: UInt64 = 0
    public var zeroPages: UInt64 = 0
    public var forks: Int = 0
    public var loadedSeconds: Double = 0
}

/// Serves faults and pushes pages on its own thread (no ptrace here, so any
/// thread will do), from the first registered process until every page is
/// in. A page that cannot be read (the pages file shrank) kills the restored
/// tree: its memory would otherwise silently read as zeros.
public final class LazyServer: @unchecked Sendable {
    static let faultChunk: UInt64 = 64 << 10
    static let pushChunk: UInt64 = 256 << 10

    private let lock = Lock()
    private var incoming: [LazyProcess] = []
    private var addingDone = false
    private var stopRequested = false
    private let wakeup: Int32
    private var serving = false
    private let finished = DispatchSemaphore(value: 0)
    private var failure: Error?
    private let logger: Logger
    private let started: ContinuousClock.Instant
    /// Background pushing off: only faults load pages, apart from one page a second of each
    /// forked process to notice its exit (CRYO_LAZY_NO_PUSH=1, for tests that must catch loading half-way).
    private let push: Bool
    public private(set) var statistics = LazyStatistics()
    /// stats-restore and its figures so far, rewritten with the lazy figures once loading ends.
    private var statisticsFile: (RestoreStatistics, String)?
    /// The pids as restored (this namespace), to kill with their descendants on failure.
    private var treePids: [pid_t] = []
    /// Holds the userfaultfds and kills the tree should cryo die before loading ends (--lazy-pages).
    var guardian: LazyGuard?

    /// --lazy-pages: pushes run at a low priority (BackgroundPusher), not for an eager restore, which waits for them.
    private let background: Bool
    /// Made and used by the serving thread only.
    private var pusher: BackgroundPusher?

    init(logger: Logger, started: ContinuousClock.Instant, background: Bool = false) {
        self.logger = logger
        self.started = started
        self.background = background
        wakeup = (try? FileObjects.eventfd(count: 0, semaphore: false, nonBlocking: true, object: "lazy wakeup"))?.rawValue ?? -1
        push = !TestHooks.current.lazyNoPush
    }

    /// cryo must be able to create a userfaultfd with the events it needs; checked before anything is created.
    static func check() throws {
        do { try Userfaultfd.probe(features: Userfaultfd.lazyFeatures) } catch let error as SyscallError {
            let hint = error.errno == .permissionDenied || error.errno == .notPermitted
                ? " (needs root or CAP_SYS_PTRACE; see vm.unprivileged_userfaultfd)" : ""
            throw CryoError("--lazy-pages: the kernel refuses userfaultfd with fork/remap/remove/unmap events: \(error)\(hint)")
        }
    }

    func add(_ process: LazyProcess) throws {
        if let guardian {
            process.guardIndex = try guardian.hold(uffd: process.uffd.fd)
            if let pid = process.pid { try guardian.hold(pid: pid) }
        }
        // Restore lanes (RestoreLanes.swift) add from two threads.
        let start = lock.withLock { () -> Bool in
            incoming.append(process)
            if let pid = process.pid { treePids.append(pid) }
            defer { serving = true }
            return !serving
        }
        var one: UInt64 = 1
        _ = Glibc.write(wakeup, &one, 8)
        if start { startThread(name: "cryo-lazy-pages") { [self] in serve() } }
    }

    var hasWork: Bool { serving }

    /// No more processes will come: the server ends once everything is in, and then
    /// adds its figures to `statistics` and writes them to `path`.
    func finishAdding(statistics: RestoreStatistics, path: String) {
        lock.withLock { statisticsFile = (statistics, path) }
        finishAdding()
    }

    public func finishAdding() {
        lock.withLock { addingDone = true }
        var one: UInt64 = 1
        _ = Glibc.write(wakeup, &one, 8)
    }

    /// Loading cannot finish (post-copy: the source is gone): the restored tree is killed now, whether or not
    /// a fault waits on a missing page yet.
    public func abort(_ error: Error) {
        lock.withLock { if aborted == nil { aborted = error } }
        var one: UInt64 = 1
        _ = Glibc.write(wakeup, &one, 8)
    }

    private var aborted: Error?

    /// Ends serving now (the restore failed and its tasks are being killed).
    func stop() {
        lock.withLock { stopRequested = true; addingDone = true }
        var one: UInt64 = 1
        _ = Glibc.write(wakeup, &one, 8)
        if serving { finished.wait(); finished.signal() }
    }

    /// Waits until every page is in (or loading failed); the error says why loading failed.
    public func waitUntilLoaded() -> Error? {
        finishAdding()
        if serving { finished.wait(); finished.signal() }
        return lock.withLock { failure }
    }

    /// Has loading ended, waiting at most `seconds` for it?
    public func waitLoaded(for seconds: Double) -> Bool {
        if !serving { return true }
        if finished.wait(timeout: .now() + seconds) == .success { finished.signal(); return true }
        return false
    }

    public var failed: Error? { lock.withLock { failure } }

    // MARK: - The serving loop

    private func serve() {
        var processes: [LazyProcess] = []
        var events = [Userfaultfd.Event](repeating: Userfaultfd.Event(), count: 64)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(LazyServer.pushChunk), alignment: 4096)
        defer { buffer.deallocate() }
        var cursor = 0
        var loadingAnnounced = false
        pusher = background ? BackgroundPusher.make() : nil
        do {
            while true {
                let (more, done, stopping, abort) = lock.withLock { () -> ([LazyProcess], Bool, Bool, Error?) in
                    defer { incoming = [] }
                    return (incoming, addingDone, stopRequested, aborted)
                }
                processes += more
                if let abort { throw abort }
                if stopping { break }
                // A process with nothing left to load is still served until every task has closed its own
                // copy of the userfaultfd (INSTALL_FDS, before adding is done): until then the kernel or the
                // parasite may touch a page that was never in the image, and only a zero page releases it.
                let finished = { (p: LazyProcess) in p.gone || (done && p.pending.isEmpty) }
                for p in processes where finished(p) {
                    if let index = p.guardIndex { guardian?.drop(index) }
                    p.uffd.close()
                }
                processes.removeAll(where: finished)
                if processes.isEmpty && done { break }
                if done && !loadingAnnounced { loadingAnnounced = true; killPoint("lazy-loading") }

                // Wait only when there is nothing to push.
                var fds = [pollfd(fd: wakeup, events: Int16(POLLIN), revents: 0)]
                    + processes.map { pollfd(fd: $0.uffd.fd.rawValue, events: Int16(POLLIN), revents: 0) }
                let idle = !push || processes.allSatisfy { $0.pending.isEmpty }
                let ready = try Files.poll(&fds, milliseconds: idle ? 1000 : 0, object: "userfaultfds") ?? -1
                if fds[0].revents != 0 { var count: UInt64 = 0; _ = Glibc.read(wakeup, &count, 8) }
                if ready == 0 && idle {
                    // Without pushing, an exited process is noticed only here: a restored one by its
                    // state, a forked one (pid unknown) by copying one page (ESRCH once its mm is gone).
                    for p in processes {
                        if let pid = p.pid {
                            if (try? ProcStat(pid: pid)).map({ $0.state == "Z" || $0.state == "X" }) ?? true { p.gone = true }
                        } else {
                            try pushChunk(p, buffer, limit: 4096)
                        }
                    }
                }
                var forked: [LazyProcess] = []
                for (i, p) in processes.enumerated() where fds[i + 1].revents != 0 || !p.deferred.isEmpty {
                    forked += try drain(p, &events, buffer)
                }
                processes += forked
                if push && ready <= 0 && !processes.isEmpty {
                    cursor = (cursor + 1) % processes.count
                    let p = processes[cursor]
                    if let pusher {
                        // Pushed at a low priority while this thread waits for it, or for anything else: a fault
                        // raises the push to cryo's priority to end it at once, and is served right after.
                        try pusher.run(watching: fds) {
                            try self.pushChunk(p, buffer, bothCPUs: done)
                            return !p.gone && !p.pending.isEmpty
                        }
                    } else {
                        // Both CPUs once no process is being restored any more: till then one is cryo's.
                        try pushChunk(p, buffer, bothCPUs: done)
                    }
                }
            }
        } catch {
            lock.withLock { failure = CryoError("lazy pages: \(error); killed the restored tree") }
            killTree(processes)
        }
        pusher?.stop()
        // Everything is in, or the tree is dead: the guard lets go before the last copies close.
        guardian?.release()
        for p in processes { p.uffd.close() }
        lock.withLock { for p in incoming { p.uffd.close() }; incoming = [] }
        statistics.loadedSeconds = seconds(since: started)
        if let (stored, path) = lock.withLock({ statisticsFile }) {
            var figures = stored
            figures.lazy = statistics
            try? writeStatistics(figures, to: path)
        }
        finished.signal()
    }

    /// Reads every message of one userfaultfd and answers faults; returns children it forked.
    private func drain(_ p: LazyProcess, _ events: inout [Userfaultfd.Event], _ buffer: UnsafeMutableRawBufferPointer) throws -> [LazyProcess] {
        var forked: [LazyProcess] = []
        var faults = p.deferred
        p.deferred = []
        while true {
            let count: Int
            do { count = try p.uffd.read(into: &events) } catch {
                p.gone = true  // the mm is gone
                return forked
            }
            if count == 0 { break }
            for e in events.prefix(count) {
                switch Int32(e.event) {
                case CRYO_UFFD_EVENT_PAGEFAULT: faults.append(e.address & ~0xfff)
                case CRYO_UFFD_EVENT_FORK:
                    // The child got a copy of everything present; what is pending for the parent is pending for it.
                    statistics.forks += 1
                    let child = LazyProcess(uffd: Userfaultfd(fd: FileDescriptor(rawValue: Int32(bitPattern: e.ufd)), pid: 0), source: p.source,
                                            pending: p.pending, pid: nil, label: "a child forked by \(p.label)")
                    logger.debug("lazy pages: \(child.label), \(child.pending.bytes / 4096) pages to load")
                    child.guardIndex = try guardian?.hold(uffd: child.uffd.fd) // the guard kills it as a descendant
                    forked.append(child)
                case CRYO_UFFD_EVENT_REMAP: p.pending.move(from: e.address, to: e.to, length: e.length)
                case CRYO_UFFD_EVENT_REMOVE, CRYO_UFFD_EVENT_UNMAP: p.pending.remove(e.address, e.address + e.length)
                default: break
                }
            }
        }
        for address in faults where !p.gone { try serveFault(p, at: address, buffer) }
        return forked
    }

    private func serveFault(_ p: LazyProcess, at address: UInt64, _ buffer: UnsafeMutableRawBufferPointer) throws {
        if let run = p.pending.find(address) {
            let length = min(LazyServer.faultChunk, run.end - address)
            let fill = try copy(p, run: run, at: address, length: length, buffer)
            if fill.errno == nil || fill.bytes > 0 { statistics.pagesOnDemand += max(fill.bytes, 4096) / 4096 }
            if let errno = fill.errno, fill.bytes == 0 { try settle(p, errno, at: address) }
            return
        }
        let fill = p.uffd.zeroPage(at: address, length: 4096)
        if let errno = fill.errno { try settle(p, errno, at: address) } else { statistics.zeroPages += 1 }
    }

    /// A fault that could not be filled: someone else did (wake the waiter), the mm is
    /// changing (retry after its event), or the mapping or the process is gone.
    private func settle(_ p: LazyProcess, _ errno: Errno, at address: UInt64) throws {
        switch errno {
        case .fileExists: p.uffd.wake(address, length: 4096)
        case .resourceTemporarilyUnavailable: p.deferred.append(address)
        case .noSuchProcess: p.gone = true
        case .noSuchFileOrDirectory: p.uffd.wake(address, length: 4096)  // no longer registered; the unmap event follows
        default:
            throw SyscallError("ioctl(UFFDIO_COPY/ZEROPAGE)", errno: errno, pid: p.pid, object: "\(p.label) address 0x\(String(address, radix: 16))")
        }
    }

    /// Copies [address, address + length) of `run` in; what went in, or was already there, leaves `pending`.
    private func copy(_ p: LazyProcess, run: PendingRun, at address: UInt64, length: UInt64,
                      _ buffer: UnsafeMutableRawBufferPointer, alreadyRead: Bool = false) throws -> Userfaultfd.Fill {
        let offset = run.offset + (address - run.start)
        let source: UnsafeRawPointer
        if !alreadyRead, let mapped = p.source.mappedBytes(at: offset, length: length) {
            source = mapped
        } else {
            let view = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(length)])
            if !alreadyRead {
                do { try p.source.bytes(at: offset, into: view) } catch {
                    throw CryoError("\(p.label): page 0x\(String(address, radix: 16)): \(error)")
                }
            }
            source = UnsafeRawPointer(view.baseAddress!)
        }
        let fill = p.uffd.copy(to: address, from: source, length: length)
        try settleCopy(p, fill, at: address, length: length, offset: offset)
        return fill
    }

    /// What one UFFDIO_COPY of [address, address + length) (stream `offset`) leaves pending.
    private func settleCopy(_ p: LazyProcess, _ fill: Userfaultfd.Fill, at address: UInt64, length: UInt64, offset: UInt64) throws {
        switch fill.errno {
        case nil: p.pending.remove(address, address + length)
        case .fileExists?: p.pending.remove(address, address + fill.bytes + 4096)  // that page was present already
        case .noSuchProcess?: p.gone = true
        case .noSuchFileOrDirectory?: p.pending.remove(address, address + fill.bytes + 4096)  // not registered any more
        case .badAddress? where p.source.mapped != nil:
            throw p.source.unreadable(at: offset + fill.bytes, label: p.label, address: address + fill.bytes)
        default:
            p.pending.remove(address, address + fill.bytes)  // EAGAIN: the mm changes; try again after its event
        }
    }

    /// Pushes the lowest pending pages: up to `limit` bytes of runs that follow each other in the
    /// page stream are read with one pread (a fragmented heap has runs of a few pages), then
    /// copied in run by run. From a mapped stream: see pushMapped.
    private func pushChunk(_ p: LazyProcess, _ buffer: UnsafeMutableRawBufferPointer, limit: UInt64 = LazyServer.pushChunk,
                           bothCPUs: Bool = false) throws {
        if p.source.mapped != nil && limit == LazyServer.pushChunk { return try pushMapped(p, buffer, bothCPUs: bothCPUs) }
        let runs = p.pending.leading(upTo: limit)
        guard let first = runs.first else { return }
        let lengths = runs.map { min($0.end - $0.start, limit - ($0.offset - first.offset)) }
        let total = runs.last!.offset - first.offset + lengths.last!
        if runs.count > 1 {
            do { try p.source.bytes(at: first.offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(total)])) } catch {
                throw CryoError("\(p.label): page 0x\(String(first.start, radix: 16)): \(error)")
            }
        }
        for (run, length) in zip(runs, lengths) {
            let at = Int(run.offset - first.offset)
            let fill = try copy(p, run: run, at: run.start, length: length,
                                UnsafeMutableRawBufferPointer(rebasing: buffer[at..<(at + Int(length))]), alreadyRead: runs.count > 1)
            statistics.pagesPushed += fill.bytes / 4096
            try refuseUnexpected(fill, p, at: run.start)
            // The rest waits for the next round: the mm changes, or the process is gone.
            if fill.errno != nil && fill.errno != .fileExists { break }
        }
    }

    private func refuseUnexpected(_ fill: Userfaultfd.Fill, _ p: LazyProcess, at address: UInt64) throws {
        if let errno = fill.errno, errno != .fileExists, errno != .resourceTemporarilyUnavailable, errno != .noSuchProcess,
           errno != .noSuchFileOrDirectory {
            throw SyscallError("ioctl(UFFDIO_COPY)", errno: errno, pid: p.pid, object: "address 0x\(String(address, radix: 16))")
        }
    }

    static let processors = ProcessInfo.processInfo.activeProcessorCount

    /// Bytes of pending runs one push from a mapped stream copies in.
    static let mappedPushChunk: UInt64 = 4 << 20
    /// The same while the tree runs on one CPU (BackgroundPusher). A fault that comes meanwhile ends the
    /// push after the run being copied (BackgroundPusher.interrupted), so the size bounds no fault's wait;
    /// with both CPUs the whole mappedPushChunk is taken (fewer hand-overs to the second thread).
    static let backgroundPushChunk: UInt64 = 1 << 20

    /// Pushes the lowest pending runs, up to `mappedPushChunk` bytes of them wherever they are in
    /// the stream, from the mapped pages file: one UFFDIO_COPY per run and no read (a heap with
    /// every 4th page untouched is 131k runs of 3 pages for 2 GiB), with `bothCPUs` on both (each
    /// copies half of the bytes), and what went in leaves the pending set as one range.
    private func pushMapped(_ p: LazyProcess, _ buffer: UnsafeMutableRawBufferPointer, bothCPUs: Bool) throws {
        let limit = pusher == nil || bothCPUs ? LazyServer.mappedPushChunk : LazyServer.backgroundPushChunk
        var pieces = p.pending.leading(upTo: limit, streamContiguous: false)
        guard !pieces.isEmpty else { return }
        var total = pieces.reduce(0) { $0 + ($1.end - $1.start) }
        if total > limit {  // a long run goes in pieces
            pieces[pieces.count - 1].end -= total - limit
            total = limit
        }
        var halves = [0..<pieces.count]
        if bothCPUs && total >= 1 << 20 && LazyServer.processors >= 2 {
            // The piece holding the middle byte is cut there (one run of a gigabyte is shared too).
            var bytes: UInt64 = 0
            let i = pieces.firstIndex { bytes += $0.end - $0.start; return bytes >= total / 2 }!
            let cut = (pieces[i].end - (bytes - total / 2)) & ~0xfff
            if cut > pieces[i].start && cut < pieces[i].end {
                let tail = PendingRun(start: cut, end: pieces[i].end, offset: pieces[i].offset + (cut - pieces[i].start))
                pieces[i].end = cut
                pieces.insert(tail, at: i + 1)
            }
            if i + 1 < pieces.count { halves = [0..<(i + 1), (i + 1)..<pieces.count] }
        }
        // nil: not tried (a copy before it in the same half failed, or its pages span two files of the stream).
        var fills = [Userfaultfd.Fill?](repeating: nil, count: pieces.count)
        fills.withUnsafeMutableBufferPointer { slots in
            // Each half writes only its own slots; everything else is only read.
            nonisolated(unsafe) let slots = slots
            nonisolated(unsafe) let p = p
            let (pieces, halves) = (pieces, halves)
            // In the background both halves run at nice 19 (the pusher's threads), else at cryo's priority.
            let perform: (Int, @escaping @Sendable (Int) -> Void) -> Void = pusher.map { pusher in { pusher.parallel($0, $1) } }
                ?? { DispatchQueue.concurrentPerform(iterations: $0, execute: $1) }
            let pusher = pusher
            perform(halves.count) { half in
                for i in halves[half] {
                    // A fault waits: what is left stays pending for the next push (nil slots).
                    if let pusher, pusher.interrupted { break }
                    let piece = pieces[i]
                    guard let source = p.source.mappedBytes(at: piece.offset, length: piece.end - piece.start) else { continue }
                    let fill = p.uffd.copy(to: piece.start, from: source, length: piece.end - piece.start)
                    slots[i] = fill
                    if fill.errno != nil && fill.errno != .fileExists { break }
                }
            }
        }
        // Pieces copied whole from the first on leave the pending set at once: they are its lowest runs.
        let whole = fills.firstIndex { $0 == nil || $0!.errno != nil } ?? pieces.count
        if whole > 0 {
            p.pending.remove(pieces[0].start, pieces[whole - 1].end)
            statistics.pagesPushed += pieces[..<whole].reduce(0) { $0 + ($1.end - $1.start) } / 4096
        }
        for (piece, fill) in zip(pieces, fills).dropFirst(whole) where !p.gone {
            let length = piece.end - piece.start
            guard let fill else {
                if p.source.mappedBytes(at: piece.offset, length: length) != nil { continue }  // stopped early: next round
                // Across two files of the stream: read, as much as the buffer holds.
                let fill = try copy(p, run: piece, at: piece.start, length: min(length, UInt64(buffer.count)), buffer)
                statistics.pagesPushed += fill.bytes / 4096
                try refuseUnexpected(fill, p, at: piece.start)
                continue
            }
            statistics.pagesPushed += fill.bytes / 4096
            try settleCopy(p, fill, at: piece.start, length: length, offset: piece.offset)
            try refuseUnexpected(fill, p, at: piece.start)
        }
    }

    /// Loading failed: the restored processes and everything they forked are killed.
    private func killTree(_ processes: [LazyProcess]) {
        var pids = lock.withLock { treePids }
        var i = 0
        while i < pids.count {
            let children = (try? Files.readString("/proc/\(pids[i])/task/\(pids[i])/children")) ?? ""
            pids += children.split(separator: " ").compactMap { pid_t($0.trimmed()) }
            i += 1
        }
        for pid in pids { kill(pid, SIGKILL) }
    }

    deinit { Glibc.close(wakeup) }
}

/// Pushing while the restored tree runs is background work: it must not take the CPUs from the tree
/// (pushes at cryo's priority on both cores stalled a migrated service for up to 0.3 s). The pushes run
/// on this thread at nice 19, one at a time, while the serving thread waits at cryo's own priority;
/// once no process is being restored, a push is split with a second thread, also at nice 19, so that
/// an idle machine still loads on both CPUs. When a fault comes meanwhile, the push under way is
/// raised back to cryo's priority on both threads (a fault must not wait behind a starved push) and
/// the fault is served once it ends. Pending sets are touched by one thread at a time: the serving
/// thread does nothing else while a push runs, and the halves copy disjoint runs. Only with
/// CAP_SYS_NICE (raising a thread's priority back needs it); otherwise the serving thread pushes
/// itself, as before.
final class BackgroundPusher: @unchecked Sendable {
    static let nice: Int32 = 19
    /// How long the pushing thread goes on from push to push before the serving thread looks around
    /// (other processes to push, processes added or gone).
    static let slice: Duration = .milliseconds(20)
    private let go = DispatchSemaphore(value: 0)
    private let helperGo = DispatchSemaphore(value: 0)
    private let helperDone = DispatchSemaphore(value: 0)
    private let done: FileDescriptor
    private let lock = Lock()
    /// One push; true while there is more to push.
    private var job: (() throws -> Bool)?
    private var helperJob: (() -> Void)?
    private var failure: Error?
    /// The pushing thread's and the helper's; a push lowers them, a fault raises them, under `lock`.
    private var tids: [pid_t] = []
    private var raised = false
    private let ownNice: Int32

    /// A fault or wakeup raised the push under way: it ends after the copy in progress.
    var interrupted: Bool { lock.withLock { raised } }

    static func make() -> BackgroundPusher? {
        guard Caller.current.effectiveCapabilities & (1 << 23) != 0,
              let own = try? Scheduling.nice(Scheduling.currentThread), own < nice,
              let done = try? FileObjects.eventfd(count: 0, semaphore: false, nonBlocking: false, object: "lazy push done") else { return nil }
        return BackgroundPusher(done: done, ownNice: own, helper: LazyServer.processors >= 2)
    }

    private init(done: FileDescriptor, ownNice: Int32, helper: Bool) {
        self.done = done
        self.ownNice = ownNice
        let started = DispatchSemaphore(value: 0)
        startThread(name: "cryo-lazy-push") { [self] in
            let me = Scheduling.currentThread
            lock.withLock { tids.append(me) }
            started.signal()
            while true {
                go.wait()
                guard let job = lock.withLock({ self.job }) else { return }  // no job: stop()
                lower(me)
                let error: Error?
                // Push after push without waking the serving thread in between (a hand-over costs about as
                // much as copying 100 KiB), until a fault or wakeup raised the push, or for a slice of time.
                let slice = ContinuousClock.now + BackgroundPusher.slice
                do {
                    while try job(), !lock.withLock({ raised }), ContinuousClock.now < slice {}
                    error = nil
                } catch let caught { error = caught }
                lock.withLock { self.job = nil; failure = error }
                var one: UInt64 = 1
                _ = Glibc.write(self.done.rawValue, &one, 8)
            }
        }
        started.wait()
        guard helper else { return }
        startThread(name: "cryo-lazy-push2") { [self] in
            let me = Scheduling.currentThread
            lock.withLock { tids.append(me) }
            started.signal()
            while true {
                helperGo.wait()
                guard let job = lock.withLock({ helperJob }) else { return }  // no job: stop()
                lower(me)
                job()
                lock.withLock { helperJob = nil }
                helperDone.signal()
            }
        }
        started.wait()
    }

    /// To nice 19 for this push, unless a fault raised the push already (then it stays raised).
    private func lower(_ tid: pid_t) {
        lock.withLock { if !raised { try? Scheduling.setNice(tid, BackgroundPusher.nice) } }
    }

    private func raise() {
        lock.withLock {
            guard !raised else { return }
            raised = true
            for tid in tids { try? Scheduling.setNice(tid, ownNice) }
        }
    }

    /// The server ends: so do the pushing threads (no push runs now).
    func stop() {
        lock.withLock { job = nil; helperJob = nil }
        go.signal()
        helperGo.signal()
    }

    deinit { try? done.close() }

    /// From within a push: `body(0)` on this thread and `body(1)` on the helper, both done on return
    /// (without a helper, or for another count, one after the other here).
    func parallel(_ iterations: Int, _ body: @escaping @Sendable (Int) -> Void) {
        guard iterations == 2, lock.withLock({ tids.count }) == 2 else {
            for i in 0..<iterations { body(i) }
            return
        }
        lock.withLock { helperJob = { body(1) } }
        helperGo.signal()
        body(0)
        helperDone.wait()
    }

    /// Runs `body` on the pushing thread, again and again while it returns true, for up to `slice`,
    /// and returns when it has ended (rethrowing its error). While it runs, any of `fds` becoming
    /// readable (a fault, a wakeup) raises the push under way to cryo's priority and ends the series.
    func run(watching fds: [pollfd], _ body: @escaping () throws -> Bool) throws {
        lock.withLock { job = body; failure = nil; raised = false }
        go.signal()
        var waiting = [pollfd(fd: done.rawValue, events: Int16(POLLIN), revents: 0)] + fds.map { pollfd(fd: $0.fd, events: $0.events, revents: 0) }
        while true {
            let ready: Int?
            // A failed poll: the end is waited for below all the same (the pending sets are the push's till then).
            do { ready = try Files.poll(&waiting, milliseconds: -1, object: "userfaultfds") } catch { raise(); break }
            guard let ready else { continue }  // EINTR
            if ready > 0 && waiting[0].revents != 0 { break }
            raise()
            waiting = [waiting[0]]  // only the push's end matters now
        }
        var count: UInt64 = 0
        while Glibc.read(done.rawValue, &count, 8) < 0 && Glibc.errno == EINTR {}
        if let failure = lock.withLock({ failure }) { throw failure }
    }
}
