import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc
import Logging
import SystemPackage

// Pre-copy: `cryo pre-dump` copies memory while the process keeps running and
// starts tracking writes; `cryo dump --prev-images-dir` then copies, while the
// process is frozen, only what was written since, and fills in the rest from
// the pre-dump's pages after the process is released (or killed). The final
// image is self-contained: restore never reads the pre-dump folder.
//
// Writes are tracked without soft-dirty bits (this kernel has none): a
// userfaultfd created inside the target (an injected syscall), taken out with
// pidfd_getfd and closed there, write-protects its private mappings in async
// mode; the kernel lifts a page's protection at its first write, and
// PAGEMAP_SCAN reports such pages as PAGE_IS_WRITTEN. Closing the last
// reference of that userfaultfd unregisters the mappings and drops every
// protection, so a small holder process (`cryo pre-dump-holder`, spawned by
// pre-dump) keeps it open until the dump tells it to go, or the target exits.
// Nothing of cryo stays in the target. The check is self-validating: pages
// are taken from the pre-dump only where PAGEMAP_SCAN reports the mapping as
// still write-protect tracked (PAGE_IS_WPALLOWED) and the page as not written,
// so a lost holder, an exec or a remapped range just means copying more.

/// What `pre-dump` leaves in its folder (`predump.img`, plus pages-PID.img per process).
public struct PreDumpRecord: Codable, Sendable {
    public var tool = "cryo"
    public var rootPid: Int32
    /// The abstract unix socket of the holder keeping the tracking alive.
    public var holderSocket: String
    public struct Process: Codable, Sendable {
        public var pid: Int32
        /// Field 22 of /proc/PID/stat: a pid reused by another process does not match.
        public var startTime: UInt64
        /// Runs of pages-PID.img (offsets in the file; never compressed).
        public var pageIndex: PageIndex
    }
    public var processes: [Process]

    /// Written in format version 4: the processes' runs are binary `pageRuns` records, one per process in
    /// the order of `processes` (as JSON, a million runs took half a second to read back before the final dump).
    func write(to fd: FileDescriptor, path: String) throws {
        var writer = RecordWriter(version: ImageFormat.pageRunsVersion)
        var header = self
        for i in header.processes.indices { header.processes[i].pageIndex.runs = [] }
        try writer.append(.preDump, header)
        for process in processes { writer.append(.pageRuns, bytes: PageRunTable.encode(process.pageIndex.runs)) }
        try writer.write(to: fd, path: path)
    }

    /// Reads predump.img: before version 4 its runs are JSON inside `preDump`, from 4 on binary records.
    static func read(_ path: String) throws -> PreDumpRecord {
        let reader = try RecordReader(path: path)
        var record = try reader.one(.preDump, as: PreDumpRecord.self)
        guard reader.version >= ImageFormat.pageRunsVersion else { return record }
        let name = fileName(of: path)
        let tables = reader.records.filter { $0.kind == .pageRuns }
        guard tables.count == record.processes.count else {
            throw ImageError(file: name, record: "pageRuns", "\(tables.count) run tables for \(record.processes.count) processes")
        }
        for i in record.processes.indices {
            guard record.processes[i].pageIndex.runs.isEmpty else {
                throw ImageError(file: name, record: "preDump", "pid \(record.processes[i].pid) lists runs beside its pageRuns record")
            }
            record.processes[i].pageIndex.runs = try PageRunTable.decode(tables[i].payload, file: name)
        }
        return record
    }
}

public struct PreDumpOptions: Sendable {
    public var pid: pid_t
    public var directory: String
    /// `cryo migrate`: the pages go here (pid, address, bytes) as they are read, not into pages-PID.img,
    /// which is left a hole of their size (the final dump checks sizes and needs none of its bytes).
    /// Takes `count` bytes at an address of a pid: calls the closure with the buffer to read them into
    /// (its own, so they are not copied again), and sends them unless the closure throws.
    public typealias PageSink = @Sendable (pid_t, UInt64, Int, (UnsafeMutableRawBufferPointer) throws -> Void) throws -> Void
    public var pageSink: PageSink?
    /// CRIU's --timeout: seconds the freeze waits for each task to stop.
    public var freezeTimeout = FrozenTree.defaultTimeout
    public init(pid: pid_t, directory: String, pageSink: PageSink? = nil) {
        self.pid = pid
        self.directory = directory
        self.pageSink = pageSink
    }
}

enum PreCopy {
    static let recordFile = "predump.img"

    /// One holder per (root pid, pre-dump folder): the folder by its real path.
    static func holderSocketName(pid: pid_t, directory: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a
        for byte in directory.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return "cryo-predump-\(pid)-\(String(hash, radix: 16))"
    }

    static func realPath(_ path: String) throws -> String {
        try Files.realPath(path)
    }

    static func startTime(_ pid: pid_t) throws -> UInt64 { try ProcStat(pid: pid).field(22) }
}

/// The write protection of one process: a userfaultfd made inside it, now held by cryo only.
struct WriteTracker {
    let uffd: Userfaultfd
    let pid: pid_t
    /// The pages listed when tracking started, which it protected.
    var regions: [cryo_page_region] = []

    /// Runs userfaultfd() in the frozen task, takes the descriptor out and closes it there.
    static func open(_ tracee: Tracee) throws -> Userfaultfd {
        let pid = tracee.pid
        let flags = UInt64(O_CLOEXEC | O_NONBLOCK) | UInt64(CRYO_UFFD_USER_MODE_ONLY)
        let remote = try tracee.syscall(Int(CRYO_NR_USERFAULTFD), flags)
        if remote < 0 { throw SyscallError("injected userfaultfd", errno: Errno(rawValue: Int32(-remote)), pid: pid) }
        let taken = Result { try Pidfd.copy(of: Int32(remote), from: pid) }
        // The task's own table gets its slot back before anything else can fail.
        let closed = try tracee.syscall(3 /* close */, UInt64(remote))
        let fd = try taken.get()
        if closed < 0 {
            try? fd.close()
            throw SyscallError("injected close", errno: Errno(rawValue: Int32(-closed)), pid: pid, object: "fd \(remote)")
        }
        return Userfaultfd(fd: fd, pid: pid)
    }

    /// With the task running: reads its layout, registers every private mapping and write-protects the
    /// pages `list` returns (the saved ones), listed after the registration. Only those: protecting a
    /// never-touched page leaves a marker that PAGEMAP_SCAN reports as swapped. A mapping that cannot
    /// be registered (or changed meanwhile) is left alone: its pages will count as written, and one
    /// made after the layout was read is not tracked (the dump reads such mappings whole).
    /// Takes `uffd` over: closed on failure.
    static func start(_ uffd: Userfaultfd, pid: pid_t, protect list: (MemoryRecord) throws -> [cryo_page_region],
                      logger: Logger) throws -> WriteTracker {
        do {
            try uffd.enableAsyncWriteProtect()
            let memory = try MemoryRecord.dump(pid: pid)
            var registered: [MemoryRecord.Mapping] = []
            for m in memory.mappings where !m.shared && memory.pageCategories(m) != nil {
                do {
                    try uffd.registerWriteProtect(start: m.start, length: m.length)
                    registered.append(m)
                } catch {
                    logger.debug("pid \(pid): mapping 0x\(hex(m.start)) is not write-tracked: \(error)")
                }
            }
            let regions = try list(memory)
            var ranges: [Range<UInt64>] = []
            for region in regions {
                if let last = ranges.last, last.upperBound == region.start {
                    ranges[ranges.count - 1] = last.lowerBound..<region.end
                } else {
                    ranges.append(region.start..<region.end)
                }
            }
            var r = 0
            for m in registered {
                while r < ranges.count && ranges[r].upperBound <= m.start { r += 1 }
                var k = r
                do {
                    while k < ranges.count && ranges[k].lowerBound < m.end {
                        let a = max(ranges[k].lowerBound, m.start), b = min(ranges[k].upperBound, m.end)
                        if a < b { try uffd.writeProtect(start: a, length: b - a) }
                        k += 1
                    }
                } catch {
                    // Unprotected pages of a registered mapping read as written: sent again, never lost.
                    logger.debug("pid \(pid): mapping 0x\(hex(m.start)) is partly write-tracked: \(error)")
                }
            }
            return WriteTracker(uffd: uffd, pid: pid, regions: regions)
        } catch {
            try? uffd.fd.close()
            throw error
        }
    }

    func close() { try? uffd.fd.close() }
}

/// `cryo pre-dump`: freeze briefly to start tracking, copy while running, leave a holder.
public struct PreDumper {
    let options: PreDumpOptions
    let logger: Logger
    public init(options: PreDumpOptions, logger: Logger) {
        self.options = options
        self.logger = logger
    }

    public func run() throws -> DumpStatistics {
        let pid = options.pid
        let lock = try DumpLock.acquire(pid: pid, doing: "this pre-dump is")
        defer { lock.release() }
        // The same refusals as dump (a pre-dump of what cannot be dumped is of no use).
        let dumper = Dumper(options: DumpOptions(pid: pid, directory: options.directory, leaveRunning: true, shellJob: true),
                            logger: logger)
        try dumper.checkRequest()
        let directory = options.directory
        let madeDirectory = !Files.exists(directory)
        let recordPath = "\(directory)/\(PreCopy.recordFile)"
        let claim: FileDescriptor
        do { claim = try ImagePaths(directory).claim(PreCopy.recordFile, holding: "a pre-dump") } catch {
            if madeDirectory { rmdir(directory) }
            throw error
        }
        var created = [recordPath]
        var trackers: [WriteTracker] = []
        var success = false
        defer {
            try? claim.close()
            if !success {
                for tracker in trackers { tracker.close() }
                for file in created { unlink(file) }
                unlink("\(directory)/stats-dump")
                if madeDirectory { rmdir(directory) }
            }
        }
        let socketName = PreCopy.holderSocketName(pid: pid, directory: try PreCopy.realPath(directory))
        let listener: ControlListener
        do { listener = try ControlListener(name: socketName) } catch let error as SyscallError where error.errno == .addressInUse {
            throw CryoError("pid \(pid) is already tracked for a pre-dump into \(directory) (holder socket @\(socketName) is taken)")
        }
        defer { listener.close() }

        var statistics = DumpStatistics()
        let frozenAt = ContinuousClock.now
        let tree = try FrozenTree.freeze(root: pid, timeout: options.freezeTimeout)
        timelineMark(logger, "pre-dump: froze")
        // Frozen only for what needs the tasks stopped: each one's userfaultfd is made in it. Listing and
        // write-protecting 2 GiB (hundreds of ms on busy CPUs) are done once the tree runs again.
        var opened: [(process: FrozenProcess, uffd: Userfaultfd)] = []
        do {
            try dumper.checkSeccompSuspended(tree)
            for process in tree.live { opened.append((process, try WriteTracker.open(process.leader))) }
        } catch {
            for (_, uffd) in opened { try? uffd.fd.close() }
            throw tree.release(after: error)
        }
        do { try tree.release() } catch {
            for (_, uffd) in opened { try? uffd.fd.close() }
            throw error
        }
        timelineMark(logger, "pre-dump: released")
        statistics.frozenSeconds = seconds(since: frozenAt)
        var plans: [(pid: pid_t, startTime: UInt64, regions: [cryo_page_region])] = []
        var untracked = opened
        for (process, uffd) in opened {
            // Listed, then protected, then read: a page written after its protection counts as written,
            // and one written before it is read with that write. One faulted in after the listing is
            // not protected, so it counts as written too.
            untracked.removeFirst()
            do {
                let tracker = try WriteTracker.start(uffd, pid: process.pid, protect: { memory in
                    let pagemap = try Files.open("/proc/\(process.pid)/pagemap", .readOnly)
                    defer { try? pagemap.close() }
                    return try memory.scanPages(pid: process.pid, pagemap: pagemap, statistics: &statistics)
                }, logger: logger)
                trackers.append(tracker)
                timelineMark(logger, "pre-dump: pid \(process.pid): listed and write-protected")
                plans.append((process.pid, try PreCopy.startTime(process.pid), tracker.regions))
            } catch where !Processes.isAlive(process.pid) {
                // Exited since the freeze (a short-lived child): nothing of it to pre-dump.
                for tracker in trackers where tracker.pid == process.pid { tracker.close() }
                trackers.removeAll { $0.pid == process.pid }
            } catch {
                for (_, uffd) in untracked { try? uffd.fd.close() }
                throw error
            }
        }
        statistics.processes = tree.processes.count

        // The tree runs again: copy what was listed. A range unmapped meanwhile is left out.
        let copying = ContinuousClock.now
        var record = PreDumpRecord(rootPid: pid, holderSocket: socketName, processes: [])
        for plan in plans {
            let path = "\(directory)/pages-\(plan.pid).img"
            created.append(path)
            let index = try options.pageSink.map { try sendRunning(pid: plan.pid, regions: plan.regions, to: $0, leaving: path) }
                ?? copyRunning(pid: plan.pid, regions: plan.regions, to: path)
            statistics.pagesWritten += index.pagesFileSize / 4096
            record.processes.append(.init(pid: plan.pid, startTime: plan.startTime, pageIndex: index))
        }
        statistics.memoryDumpSeconds = seconds(since: copying)
        try record.write(to: claim, path: recordPath)

        let exe = Processes.ownExecutable
        var arguments = ["pre-dump-holder", "--directory", try PreCopy.realPath(directory)]
        var passing = [listener.socket]
        var pidfds: [FileDescriptor] = []
        defer { for fd in pidfds { try? fd.close() } }
        for (i, tracker) in trackers.enumerated() {
            let pidfd = try Pidfd.open(tracker.pid)
            pidfds.append(pidfd)
            passing += [tracker.uffd.fd, pidfd]
            arguments += ["--track", "\(tracker.pid):\(plans[i].startTime):\(4 + 2 * i):\(5 + 2 * i)"]
        }
        let holder = try Processes.spawnDetached(exe, arguments, passing: passing)
        logger.debug("pre-dump holder is pid \(holder) on @\(socketName)")
        success = true
        for tracker in trackers { tracker.close() }  // the holder has its own references now
        try? writeStatistics(statistics, to: "\(directory)/stats-dump")
        return statistics
    }

    /// Reads the listed regions out of the running task into `sink`; `path` becomes a hole of their size.
    func sendRunning(pid: pid_t, regions: [cryo_page_region], to sink: PreDumpOptions.PageSink,
                     leaving path: String) throws -> PageIndex {
        let out = try Files.open(path, .writeOnly, options: [.create, .exclusiveCreate, .noFollow], permissions: [.ownerReadWrite])
        defer { try? out.close() }
        let chunk = 4 << 20
        var runs: [PageRun] = []
        var offset: UInt64 = 0
        for region in regions {
            var address = region.start
            while address < region.end {
                let n = Int(min(UInt64(chunk), region.end - address))
                do {
                    let from = address
                    try sink(pid, address, n) { view in try RemoteMemory.read(pid, at: from, into: view) }
                } catch let error as SyscallError where error.errno == .badAddress {
                    logger.debug("pid \(pid): 0x\(hex(address)) went away during the pre-dump: \(error)")
                    address += UInt64(n)
                    continue
                } catch let error as SyscallError where error.errno == .noSuchProcess {
                    throw CryoError("pid \(pid) exited during the pre-dump")
                }
                if let last = runs.last, last.end == address, last.offset + last.length == offset {
                    runs[runs.count - 1].length += UInt64(n)
                } else {
                    runs.append(PageRun(address: address, length: UInt64(n), offset: offset))
                }
                offset += UInt64(n)
                address += UInt64(n)
            }
        }
        try Files.truncate(out, to: offset, path: path)
        return PageIndex(runs: runs, pagesFileSize: offset)
    }

    /// Copies the listed regions out of the running task into `path`.
    func copyRunning(pid: pid_t, regions: [cryo_page_region], to path: String) throws -> PageIndex {
        let out = try Files.open(path, .writeOnly, options: [.create, .exclusiveCreate, .noFollow], permissions: [.ownerReadWrite])
        defer { try? out.close() }
        let writer = PageWriter(file: out, path: path)
        defer { writer.close() }
        var runs: [PageRun] = []
        var offset: UInt64 = 0
        for region in regions {
            var address = region.start
            while address < region.end {
                let chunk = Int(min(UInt64(writer.bufferSize), region.end - address))
                let source = address
                do {
                    try writer.write(count: chunk, at: Int64(offset)) { view in try RemoteMemory.read(pid, at: source, into: view) }
                    if let last = runs.last, last.end == source, last.offset + last.length == offset {
                        runs[runs.count - 1].length += UInt64(chunk)
                    } else {
                        runs.append(PageRun(address: source, length: UInt64(chunk), offset: offset))
                    }
                    offset += UInt64(chunk)
                } catch let error as SyscallError where error.errno == .badAddress {
                    logger.debug("pid \(pid): 0x\(hex(source)) went away during the pre-dump: \(error)")
                } catch let error as SyscallError where error.errno == .noSuchProcess {
                    throw CryoError("pid \(pid) exited during the pre-dump")
                }
                address += UInt64(chunk)
            }
        }
        try writer.finish()
        return PageIndex(runs: runs, pagesFileSize: offset)
    }
}

// MARK: - The holder

/// `cryo pre-dump-holder`: keeps the userfaultfds (so the protection stays)
/// until a dump says "done" or every tracked process has exited.
public enum PreCopyHolder {
    public struct Tracked {
        public var pid: pid_t, startTime: UInt64, uffd: FileDescriptor, pidfd: FileDescriptor
        public init(pid: pid_t, startTime: UInt64, uffd: FileDescriptor, pidfd: FileDescriptor) {
            self.pid = pid
            self.startTime = startTime
            self.uffd = uffd
            self.pidfd = pidfd
        }
    }

    struct Hello: Codable {
        var directory: String
        var processes: [[UInt64]]  // [pid, startTime] of those still tracked
    }

    public static func run(listening: FileDescriptor, directory: String, tracked: [Tracked]) -> Never {
        var tracked = tracked
        // Nothing else of the pre-dump's stays open here.
        let highest = ([listening] + tracked.flatMap { [$0.uffd, $0.pidfd] }).map(\.rawValue).max()!
        try? Descriptors.closeAll(from: highest + 1)
        while true {
            var fds = [pollfd(fd: listening.rawValue, events: Int16(POLLIN), revents: 0)]
                + tracked.map { pollfd(fd: $0.pidfd.rawValue, events: Int16(POLLIN), revents: 0) }
            // `try?` would flatten the nil of an interrupted wait into a failure.
            let polled: Int?
            do { polled = try Files.poll(&fds, milliseconds: -1, object: "pre-dump holder") } catch { exit(1) }
            if polled == nil { continue } // a signal interrupted the wait
            for (i, entry) in tracked.enumerated().reversed() where fds[i + 1].revents != 0 {
                try? entry.uffd.close()
                try? entry.pidfd.close()
                tracked.remove(at: i)
            }
            if tracked.isEmpty { exit(0) }
            if fds[0].revents & Int16(POLLIN) != 0 {
                guard let connection = try? Sockets.acceptBlocking(listening, object: "pre-dump holder") else { continue }
                if serve(connection, directory: directory, tracked: tracked) { exit(0) }
                try? connection.close()
            }
        }
    }

    /// Tells a dump what is tracked, then waits for its verdict: true when it says "done".
    static func serve(_ connection: FileDescriptor, directory: String, tracked: [Tracked]) -> Bool {
        let object = "pre-dump holder connection"
        guard (try? Sockets.peerUid(connection)) == geteuid() else { return false }
        let hello = Hello(directory: directory, processes: tracked.map { [UInt64($0.pid), $0.startTime] })
        guard let data = try? JSONEncoder().encode(hello),
              (try? Sockets.setReceiveTimeout(connection, seconds: 3600, object: object)) != nil,
              (try? Sockets.sendMessage(connection, Array(data), object: object)) != nil,
              let verdict = try? Sockets.receiveMessage(connection, limit: 16, object: object) else { return false }
        return verdict == Array("done".utf8)
    }
}

/// The dump's side: the pre-dump image and the holder it talks to.
final class PreCopyBase {
    let directory: String
    let record: PreDumpRecord
    private var connection: FileDescriptor?
    private var trackedPids: [Int32: UInt64] = [:]

    /// `path` is relative to the new image folder, as CRIU has it, or absolute.
    init(path: String, imageDirectory: String, rootPid: pid_t, logger: Logger) throws {
        let joined = path.hasPrefix("/") ? path : "\(imageDirectory)/\(path)"
        guard Files.exists(joined) else { throw CryoError("--prev-images-dir \(path): \(joined) does not exist") }
        directory = try PreCopy.realPath(joined)
        let recordPath = "\(directory)/\(PreCopy.recordFile)"
        guard Files.exists(recordPath) else { throw CryoError("--prev-images-dir \(joined) holds no pre-dump (no \(PreCopy.recordFile))") }
        record = try PreDumpRecord.read(recordPath)
        guard record.rootPid == rootPid else {
            throw ImageError(file: PreCopy.recordFile, record: "preDump", "is a pre-dump of pid \(record.rootPid), not \(rootPid)")
        }
        for p in record.processes {
            let name = "pages-\(p.pid).img"
            guard let st = try? Files.stat("\(directory)/\(name)"), UInt64(st.st_size) == p.pageIndex.pagesFileSize else {
                throw ImageError(file: name, "of the pre-dump is missing or not \(p.pageIndex.pagesFileSize) bytes (truncated or replaced)")
            }
            var expected: UInt64 = 0
            var previousEnd: UInt64 = 0
            for run in p.pageIndex.runs {
                guard run.address % 4096 == 0, run.length % 4096 == 0, run.length > 0, run.offset == expected,
                      run.length <= p.pageIndex.pagesFileSize - expected, run.address >= previousEnd,
                      run.length <= UInt64.max - run.address else {
                    throw ImageError(file: PreCopy.recordFile, record: "preDump", "pid \(p.pid): page run \(run) is malformed or out of order")
                }
                expected += run.length
                previousEnd = run.end
            }
        }
        let socketName = PreCopy.holderSocketName(pid: rootPid, directory: directory)
        connection = connectHolder(socketName)
        guard let connection else {
            logger.warning("no pre-dump holder on @\(socketName) (the pre-dump's process tree changed, or its holder was killed): every page is copied")
            return
        }
        let answer = (try? Sockets.receiveMessage(connection, limit: 1 << 16, object: "pre-dump holder @\(socketName)")) ?? []
        guard !answer.isEmpty, let hello = try? JSONDecoder().decode(PreCopyHolder.Hello.self, from: Data(answer)),
              hello.directory == directory else {
            logger.warning("the pre-dump holder on @\(socketName) answered something else: every page is copied")
            return
        }
        for p in hello.processes where p.count == 2 { trackedPids[Int32(truncatingIfNeeded: p[0])] = p[1] }
    }

    private func connectHolder(_ name: String) -> FileDescriptor? {
        guard let fd = try? Sockets.connected(unix: [0] + Array(name.utf8), type: Int32(SOCK_SEQPACKET.rawValue),
                                              object: "pre-dump holder @\(name)") else { return nil }
        // Only a holder running as cryo's own user is believed.
        guard (try? Sockets.peerUid(fd)) == geteuid() else {
            try? fd.close()
            return nil
        }
        return fd
    }

    /// The pre-dump's pages of `pid`, when that very process is still tracked.
    func pages(of pid: pid_t) -> PreDumpPages? {
        guard let p = record.processes.first(where: { $0.pid == pid }), trackedPids[pid] == p.startTime,
              (try? PreCopy.startTime(pid)) == p.startTime else { return nil }
        return PreDumpPages(path: "\(directory)/pages-\(pid).img", index: p.pageIndex)
    }

    /// The dump succeeded: the holder may let go.
    func finish() {
        if let connection { try? Sockets.sendMessage(connection, Array("done".utf8), object: "pre-dump holder") }
        close()
    }

    /// Without "done" the holder keeps tracking, for another try.
    func close() {
        try? connection?.close()
        connection = nil
    }

    deinit { close() }
}

/// One process's pages in the pre-dump folder.
struct PreDumpPages {
    let path: String
    let index: PageIndex
}

/// A buffer, touched before the tree is frozen, that takes the pages read
/// from the frozen task so they reach the pages file only after it is
/// released: writing fresh page-cache pages costs about 4 µs a page here,
/// reading into already-touched memory a fraction of that.
final class HeldPages {
    let buffer: UnsafeMutableRawBufferPointer
    private(set) var used = 0
    /// The most it will hold, whatever the estimate.
    static let limit = 256 << 20

    init(bytes: Int) {
        buffer = .allocate(byteCount: max(4096, min(bytes, HeldPages.limit)), alignment: 4096)
        for page in stride(from: 0, to: buffer.count, by: 4096) { buffer[page] = 0 }
    }

    deinit { buffer.deallocate() }

    /// Room for `count` more bytes, or nil.
    func take(_ count: Int) -> UnsafeMutableRawBufferPointer? {
        guard buffer.count - used >= count else { return nil }
        defer { used += count }
        return UnsafeMutableRawBufferPointer(rebasing: buffer[used..<(used + count)])
    }

    /// Bytes written since tracking began in `pid`'s private memory (and all of
    /// its untracked memory): what the frozen dump will read, give or take what
    /// is written meanwhile.
    static func estimate(pid: pid_t) -> Int {
        guard let pagemap = try? Files.open("/proc/\(pid)/pagemap", .readOnly) else { return 0 }
        defer { try? pagemap.close() }
        var total = 0
        var regions = [cryo_page_region](repeating: cryo_page_region(), count: 512)
        var cursor: UInt64 = 0
        // PAGE_IS_FILE is slow to ask for (see pageCategories), but this runs before the freeze.
        let notFileNotZero = UInt64(CRYO_PAGE_IS_FILE | CRYO_PAGE_IS_PFNZERO)
        while cursor < 0x7fff_ffff_f000 {
            var arg = cryo_pm_scan_arg()
            arg.start = cursor
            arg.end = 0x7fff_ffff_f000
            arg.category_inverted = notFileNotZero
            arg.category_mask = notFileNotZero | UInt64(CRYO_PAGE_IS_WRITTEN)
            arg.category_anyof_mask = UInt64(CRYO_PAGE_IS_PRESENT | CRYO_PAGE_IS_SWAPPED)
            arg.return_mask = UInt64(CRYO_PAGE_IS_WRITTEN)
            let found = regions.withUnsafeMutableBufferPointer { Pagemap.scanRaw(pagemap, &arg, into: $0) }
            guard found >= 0 else { return total }
            for region in regions.prefix(found) { total += Int(region.end - region.start) }
            guard arg.walk_end > cursor else { break }
            cursor = arg.walk_end
        }
        return total
    }
}

/// Pages the final dump takes from the pre-dump, copied once the tree is released.
final class PendingFill {
    let source: String
    let target: String
    let pid: pid_t
    /// [source offset, target offset, length]
    var pieces: [[UInt64]] = []
    /// Pages read from the frozen task into a HeldPages buffer: (bytes, target offset).
    var held: [(UnsafeMutableRawBufferPointer, UInt64)] = []
    var heldBuffer: HeldPages?
    init(source: String, target: String, pid: pid_t) {
        self.source = source
        self.target = target
        self.pid = pid
    }

    var bytes: UInt64 { pieces.reduce(0) { $0 + $1[2] } }

    func add(from: UInt64, to: UInt64, length: UInt64) {
        if let last = pieces.last, last[0] + last[2] == from, last[1] + last[2] == to {
            pieces[pieces.count - 1][2] += length
        } else {
            pieces.append([from, to, length])
        }
    }

    func run() throws {
        guard !pieces.isEmpty || !held.isEmpty else { return }
        let output = try Files.open(target, .writeOnly, options: [.noFollow])
        defer { try? output.close() }
        for (bytes, offset) in held {
            try Files.write(output, UnsafeRawBufferPointer(bytes), at: Int64(offset), path: target)
        }
        guard !pieces.isEmpty else { return }
        let input = try Files.open(source, .readOnly)
        defer { try? input.close() }
        for piece in pieces {
            try FileRanges.copy(from: input, at: Int64(piece[0]), to: output, at: Int64(piece[1]), length: Int64(piece[2]),
                                object: "pid \(pid): pages from \(source)")
        }
    }
}

extension MemoryRecord {
    /// dumpPages after a pre-dump: every page the scan lists keeps its place in
    /// the stream, but only pages written since the pre-dump (or not in it, or
    /// in mappings no longer tracked) are read from the frozen task now; the
    /// others are left to `PendingFill`, after the task is released. The file
    /// system must have room for that fill before anything is written.
    mutating func dumpPages(pid: pid_t, to pagesPath: String, previous: PreDumpPages, held: HeldPages?, readFresh: Bool = true,
                   statistics: inout DumpStatistics) throws -> (PageIndex, PendingFill) {
        let pagemap = try Files.open("/proc/\(pid)/pagemap", .readOnly)
        defer { try? pagemap.close() }
        let fill = PendingFill(source: previous.path, target: pagesPath, pid: pid)
        var runs: [PageRun] = []
        var fresh: [[UInt64]] = []  // [address, length, offset]: read from the task now
        var total: UInt64 = 0
        let old = previous.index.runs
        var j = 0
        let unchanged = UInt64(CRYO_PAGE_IS_WPALLOWED)
        let (scanned, guards) = try scanPagesAndGuards(pid: pid, pagemap: pagemap, extraCategories: UInt64(CRYO_PAGE_IS_WPALLOWED | CRYO_PAGE_IS_WRITTEN),
                                                       statistics: &statistics, sharedGuards: true)
        self.guards = guards.isEmpty ? nil : guards.map { [$0.lowerBound, $0.upperBound] }
        for region in try Self.withoutMarkers(scanned, pagemap: pagemap, pid: pid) {
            let (start, end) = (region.start, region.end)
            runs.append(PageRun(address: start, length: end - start, offset: total))  // never merged: a run stays inside one mapping
            let offset = { (address: UInt64) in total + (address - start) }
            func takeFresh(_ a: UInt64, _ b: UInt64) {
                guard a < b else { return }
                if let last = fresh.last, last[0] + last[1] == a { fresh[fresh.count - 1][1] += b - a } else { fresh.append([a, b - a, offset(a)]) }
            }
            if region.categories & (unchanged | UInt64(CRYO_PAGE_IS_WRITTEN)) == unchanged {
                while j < old.count && old[j].end <= start { j += 1 }
                var cursor = start
                var k = j
                while k < old.count && old[k].address < end {
                    let a = max(cursor, old[k].address), b = min(end, old[k].end)
                    if a < b {
                        takeFresh(cursor, a)
                        fill.add(from: old[k].offset + (a - old[k].address), to: offset(a), length: b - a)
                        cursor = b
                    }
                    k += 1
                }
                takeFresh(cursor, end)
            } else {
                takeFresh(start, end)
            }
            total += end - start
        }
        let out = try Files.open(pagesPath, .writeOnly, options: [.create, .exclusiveCreate, .noFollow], permissions: [.ownerReadWrite])
        defer { try? out.close() }
        try Files.truncate(out, to: total, path: pagesPath)
        // Pages left in the frozen task (a migration sends them from there): the file stays a sparse
        // placeholder, so a /dev/shm smaller than the tree's memory must not refuse it.
        if !readFresh {
            // Counted as read all the same: the migration reads them out of the frozen tree as it sends them.
            statistics.pagesWritten += fresh.reduce(0) { $0 + $1[1] } / 4096
            statistics.pagesFromPreDump = (statistics.pagesFromPreDump ?? 0) + fill.bytes / 4096
            return (PageIndex(runs: runs, pagesFileSize: total), fill)
        }
        // Room for the fill, checked now (statvfs: fallocate of the whole file costs frozen time).
        try FileRanges.requireSpace(out, bytes: total, object: pagesPath)
        let writer = PageWriter(file: out, path: pagesPath)
        defer { writer.close() }
        var copied: UInt64 = 0
        fill.heldBuffer = held
        // What fits in the held buffer is read by both CPUs, in pieces of up to 4 MiB; the rest goes to the file.
        var heldReads: [(source: UInt64, room: UnsafeMutableRawBufferPointer)] = []
        var toFile: [[UInt64]] = []
        for piece in fresh {
            guard let room = held?.take(Int(piece[1])) else {
                toFile.append(piece)
                continue
            }
            fill.held.append((room, piece[2]))
            for start in stride(from: 0, to: room.count, by: 4 << 20) {
                let end = min(start + (4 << 20), room.count)
                heldReads.append((piece[0] + UInt64(start), UnsafeMutableRawBufferPointer(rebasing: room[start..<end])))
            }
            copied += piece[1]
        }
        try shareWork(count: heldReads.count) { i in try RemoteMemory.read(pid, at: heldReads[i].source, into: heldReads[i].room) }
        for piece in toFile {
            var done: UInt64 = 0
            while done < piece[1] {
                let chunk = Int(min(UInt64(writer.bufferSize), piece[1] - done))
                let source = piece[0] + done
                try writer.write(count: chunk, at: Int64(piece[2] + done)) { view in try RemoteMemory.read(pid, at: source, into: view) }
                done += UInt64(chunk)
            }
            copied += piece[1]
        }
        try writer.finish()
        statistics.pagesWritten += copied / 4096
        statistics.pagesFromPreDump = (statistics.pagesFromPreDump ?? 0) + fill.bytes / 4096
        return (PageIndex(runs: runs, pagesFileSize: total), fill)
    }

    /// PAGEMAP_SCAN counts a write-protect marker (left where a protected page of
    /// a file mapping was dropped) as a swapped page; it holds nothing. The
    /// pagemap entry tells them apart: swap type 31 is the marker type.
    static func withoutMarkers(_ regions: [cryo_page_region], pagemap: FileDescriptor, pid: pid_t) throws -> [cryo_page_region] {
        let swappedOnly = UInt64(CRYO_PAGE_IS_SWAPPED | CRYO_PAGE_IS_PRESENT)
        var result: [cryo_page_region] = []
        for region in regions {
            guard region.categories & swappedOnly == UInt64(CRYO_PAGE_IS_SWAPPED),
                  region.categories & UInt64(CRYO_PAGE_IS_WRITTEN) == 0 else {
                result.append(region)
                continue
            }
            let pages = Int((region.end - region.start) / 4096)
            var entries = [UInt64](repeating: 0, count: pages)
            let n = try entries.withUnsafeMutableBytes { try pagemap.read(fromAbsoluteOffset: Int64(region.start / 4096 * 8), into: $0) }
            guard n == pages * 8 else { throw SyscallError("pread", errno: .ioError, pid: pid, object: "pagemap at 0x\(hex(region.start))") }
            var runStart: UInt64? = nil
            for (i, entry) in entries.enumerated() {
                let address = region.start + UInt64(i) * 4096
                let marker = entry & (1 << 62) != 0 && entry & 0x1f == 0x1f
                if marker, let s = runStart {
                    result.append(cryo_page_region(start: s, end: address, categories: region.categories))
                    runStart = nil
                } else if !marker && runStart == nil {
                    runStart = address
                }
            }
            if let s = runStart { result.append(cryo_page_region(start: s, end: region.end, categories: region.categories)) }
        }
        return result
    }
}
