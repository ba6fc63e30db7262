import CCryo
import CryoInjector
import CryoSystem
import Dispatch
import FoundationEssentials
import Glibc
import Logging
import SystemPackage

// `cryo migrate`: pre-copy rounds while the tree runs, then a frozen dump whose
// image goes over the same connection; the tree is killed once the destination
// says the restored tree runs, and released if anything fails before that.
//
// Round 1 is an ordinary pre-dump (which starts write tracking). Every later
// round asks PAGEMAP_SCAN for the pages written since, write-protecting them
// again in the same call (PM_SCAN_WP_MATCHING), and sends them while the tree
// runs: a write after the scan marks the page for the next round. The final
// dump takes from the tree only pages written since the last round; the rest
// is already on the destination. The source keeps no image on disk: its
// scratch folder is on tmpfs, and each round's pages file is emptied once sent.

public struct MigrateOptions: Sendable {
    public var pid: pid_t
    public var destination: String
    public var shellJob: Bool
    public var tcpEstablished: Bool
    /// Stop the rounds once one carries at most this many bytes.
    public var smallEnough: UInt64
    public var maxRounds: Int
    /// Ask the destination to start the tree before its memory is loaded.
    public var lazyPages: Bool
    /// --network-lock: the moved connections stay quiet from the freeze until the destination says the tree runs.
    public var networkLock: NetworkLockMode?
    /// --move-address: the service address taken off the tree's network namespace once it is frozen, for the destination.
    public var moveAddress: String?
    public init(pid: pid_t, destination: String, shellJob: Bool = false, tcpEstablished: Bool = false,
                smallEnough: UInt64 = 4 << 20, maxRounds: Int = 10, lazyPages: Bool = false) {
        self.lazyPages = lazyPages
        self.pid = pid
        self.destination = destination
        self.shellJob = shellJob
        self.tcpEstablished = tcpEstablished
        self.smallEnough = smallEnough
        self.maxRounds = maxRounds
    }
}

public struct MigrationStatistics: Codable, Sendable {
    public struct Round: Codable, Sendable {
        public var bytes: UInt64
        public var seconds: Double
    }
    /// Pre-copy rounds while the tree ran (the first is the full copy).
    public var rounds: [Round] = []
    /// Pages sent while frozen (written since the last round), and all image bytes sent while frozen.
    public var frozenPageBytes: UInt64 = 0
    public var frozenBytes: UInt64 = 0
    /// From the freeze until the destination said the tree runs (the tree ran nowhere meanwhile).
    public var frozenSeconds: Double = 0
    /// Of that, the destination's restore.
    public var restoreSeconds: Double = 0
    /// From the freeze until the destination said the tree runs there: the downtime, give or take one
    /// message (with post-copy the source tree stays frozen after that, until the last page is sent).
    public var downtimeSeconds: Double = 0
    /// Post-copy: bytes sent after the destination started the tree, and how many page requests it made.
    public var postCopyBytes: UInt64 = 0
    public var postCopyRequests = 0
    /// The final dump's own figures (stats-dump).
    public var dump: DumpStatistics?

    /// `migrate -D DIR`: stats-dump, as JSON like every stats file.
    public static func write(_ statistics: MigrationStatistics, to path: String) throws {
        try writeStatistics(statistics, to: path)
    }
    public var totalSeconds: Double = 0
    public var bytesSent: UInt64 = 0
}

public struct Migrator {
    let options: MigrateOptions
    let logger: Logger
    public init(options: MigrateOptions, logger: Logger) {
        self.options = options
        self.logger = logger
    }

    /// `link` is connected to a `cryo receive` (and authenticated, where the transport does that).
    public func run(over link: MigrationLink) throws -> MigrationStatistics {
        let wire = MigrationWire(link)
        let pid = options.pid
        let started = ContinuousClock.now
        var statistics = MigrationStatistics()
        // Refusals that need no freezing come before the destination hears anything.
        try Dumper(options: DumpOptions(pid: pid, directory: "/", leaveRunning: true, shellJob: options.shellJob), logger: logger)
            .checkRequest()
        if options.moveAddress != nil && options.networkLock == nil {
            throw CryoError("--move-address needs the network lock (leave out --network-lock skip): the peers' packets must be dropped while the address moves")
        }
        let moving = try options.moveAddress.map { try SourceAddress($0, treePid: pid) }
        try wire.hello(rootPid: pid, lazyPages: options.lazyPages, movedAddress: moving?.address, other: "destination \(link.peer)")

        // The pid in the name tells whose it is: a cleaner removes only those whose cryo is gone.
        let scratch = try Files.makeTemporaryDirectory(prefix: Self.scratchRoot() + "/cryo-migrate-\(getpid())-")
        defer { Self.removeScratch(scratch) }
        var tracking = false
        var flagsBeforeFreeze: [Int32: [ProcMapping]] = [:]
        do {
            // Round 1: a pre-dump (start tracking, copy everything) whose pages go straight onto the wire.
            let roundStart = ContinuousClock.now
            let sink: PreDumpOptions.PageSink = { [wire] pid, address, count, fill in
                var header = FrameHeader()
                header.pid = pid
                header.address = address
                try wire.send(.pages, header, filling: count, fill)
            }
            _ = try PreDumper(options: PreDumpOptions(pid: pid, directory: scratch, pageSink: sink), logger: logger).run()
            tracking = true
            let record = try PreDumpRecord.read("\(scratch)/\(PreCopy.recordFile)")
            let bytes = record.processes.reduce(0) { $0 + $1.pageIndex.pagesFileSize }
            try endRound(1, wire: wire)
            statistics.rounds.append(.init(bytes: bytes, seconds: seconds(since: roundStart)))
            logger.debug("round 1: \(bytes) bytes")
            // Later rounds: pages written since the last one.
            var previous = bytes
            while statistics.rounds.count < options.maxRounds && previous > options.smallEnough {
                let sent = try laterRound(record, wire: wire, statistics: &statistics)
                // Not shrinking any more: the tree writes as fast as the link carries.
                if sent > previous * 4 / 5 { break }
                previous = sent
            }
            // The VmFlags are read now, while the tree runs, not frozen (smaps walks every page table entry:
            // 30-150 ms for 2 GiB); the final dump only confirms them, while the destination restores. One
            // more round then takes what the tree wrote meanwhile, which would otherwise be read and sent
            // while frozen (eager) or after the start (post-copy).
            // One that exits meanwhile has none: the final dump finds it gone, or reads its smaps frozen.
            for process in record.processes where Processes.isAlive(process.pid) {
                flagsBeforeFreeze[process.pid] = try? readMappings(pid: process.pid, withFlags: true)
            }
            timelineMark(logger, "VmFlags read before the freeze")
            killPoint("flags read")  // a test changes them now, for the confirmation to fail
            if statistics.rounds.count < options.maxRounds { _ = try laterRound(record, wire: wire, statistics: &statistics) }
        } catch {
            if tracking { releaseHolder(scratch) }
            wire.fail("the source gave up: \(error)")
            throw error
        }

        // The final dump: frozen until the destination answers.
        let sentBefore = wire.bytesSent
        let frozenStart = ContinuousClock.now
        let verdict = Verdict()
        let postCopy = options.lazyPages
        // Eager: the pages written since the last round go while the dump reads the rest of the state.
        let fresh = postCopy ? nil : FreshPagesSender(wire: wire, logger: logger)
        let handOver: @Sendable (FrozenImage) throws -> Void = { [wire, verdict, logger, moving, fresh] image in
            var image = image
            if let fresh {
                // Held by the destination now, as the earlier rounds' pages are: the pages files leave them out.
                let (sent, bytes) = try fresh.finish()
                for (pid, ranges) in sent { image.unchangedPages[pid, default: []] += ranges }
                verdict.pageBytes += bytes
                timelineMark(logger, "pages written since the last round sent (\(bytes) bytes)")
            }
            // Frozen, the connections locked: the address leaves this host (back on any failure, before the release).
            try moving?.remove()
            if let moving { timelineMark(logger, "moved address \(moving.address) removed from \(moving.device)") }
            do {
                try Self.sendImage(image, wire: wire, verdict: verdict, postCopy: postCopy, logger: logger)
            } catch {
                do { try moving?.putBack() } catch let putBack {
                    throw CryoError("\(error); and the address did not come back: \(putBack)")
                }
                throw error
            }
        }
        do {
            var dumpOptions = DumpOptions(pid: pid, directory: "\(scratch)/final", leaveRunning: false, shellJob: options.shellJob,
                                          tcpEstablished: options.tcpEstablished, previousImages: scratch, handOver: handOver)
            // Pages written since the last round are read once, from the frozen tree, when sent; not into a
            // file while frozen (eagerly: as soon as the dump has scanned them; post-copy: mostly after the start).
            dumpOptions.freshPagesInTree = true
            if let fresh { dumpOptions.pagesScanned = { pid, runs, unchanged in fresh.send(pid: pid, runs: runs, unchanged: unchanged) } }
            dumpOptions.networkLock = options.networkLock
            dumpOptions.flagsBeforeFreeze = flagsBeforeFreeze
            statistics.dump = try Dumper(options: dumpOptions, logger: logger).run()
        } catch {
            // Nothing else may write to the connection while the fresh pages still go.
            _ = try? fresh?.finish()
            releaseHolder(scratch)
            if !verdict.heard { wire.fail("the source gave up: \(error)") }
            throw error
        }
        statistics.frozenSeconds = seconds(since: frozenStart)
        statistics.downtimeSeconds = verdict.restoredAt.map { seconds(from: frozenStart, to: $0) } ?? statistics.frozenSeconds
        statistics.postCopyBytes = verdict.postCopyBytes
        statistics.postCopyRequests = verdict.postCopyRequests
        statistics.restoreSeconds = verdict.restoreSeconds
        statistics.frozenPageBytes = verdict.pageBytes
        statistics.frozenBytes = wire.bytesSent - sentBefore
        statistics.bytesSent = wire.bytesSent
        statistics.totalSeconds = seconds(since: started)
        if let lost = verdict.lostAfterStart {
            throw CryoError("lost the destination \(link.peer) after it started the tree (post-copy, \(verdict.postCopyLeft) bytes of memory "
                + "not sent): \(lost); killed pid \(pid) here too")
        }
        return statistics
    }

    /// What the destination said, for the dump's hand-over closure.
    final class Verdict: @unchecked Sendable {
        var heard = false
        var restoreSeconds = 0.0
        var pageBytes: UInt64 = 0
        /// When the destination said the tree runs there.
        var restoredAt: ContinuousClock.Instant?
        var postCopyBytes: UInt64 = 0
        var postCopyRequests = 0
        /// Post-copy: bytes not sent when the connection was lost after the start, and why.
        var postCopyLeft: UInt64 = 0
        var lostAfterStart: Error?
    }

    /// One round after the first: the pages each process wrote since the last; returns their bytes.
    func laterRound(_ record: PreDumpRecord, wire: MigrationWire, statistics: inout MigrationStatistics) throws -> UInt64 {
        let roundStart = ContinuousClock.now
        var sent: UInt64 = 0
        for process in record.processes where Processes.isAlive(process.pid) {
            sent += try sendWritten(pid: process.pid, wire: wire)
        }
        let round = statistics.rounds.count + 1
        try endRound(round, wire: wire)
        statistics.rounds.append(.init(bytes: sent, seconds: seconds(since: roundStart)))
        logger.debug("round \(round): \(sent) bytes")
        return sent
    }

    /// Ends a round and waits until the destination holds all of it: what it still had to write would
    /// otherwise be written after the freeze, in the downtime (and the next round measures the whole path).
    func endRound(_ round: Int, wire: MigrationWire) throws {
        var header = FrameHeader()
        header.round = round
        try wire.send(.roundEnd, header)
        let (kind, answer, _) = try wire.receive()
        switch kind {
        case .roundHeld where answer.round == round: return
        case .failed: throw CryoError("destination \(wire.link.peer) failed: \(answer.message ?? "no reason given")")
        default: throw CryoError("destination \(wire.link.peer) answered \(kind) to the end of round \(round)")
        }
    }

    static let chunk = 4 << 20

    /// A later round: pages written since the last scan, protected again by the same scan, copied while the tree runs.
    func sendWritten(pid: pid_t, wire: MigrationWire) throws -> UInt64 {
        // The layout only: smaps (VmFlags) walks every page table entry (30-150 ms for 2 GiB here,
        // holding off the tree's own mmap calls), and the scan below needs no flags.
        let memory = try MemoryRecord.dump(pid: pid, flags: false)
        let pagemap = try Files.open("/proc/\(pid)/pagemap", .readOnly)
        defer { try? pagemap.close() }
        var found: [cryo_page_region] = []
        var regions = [cryo_page_region](repeating: cryo_page_region(), count: 512)
        let tracked = UInt64(CRYO_PAGE_IS_WPALLOWED | CRYO_PAGE_IS_WRITTEN)
        for m in memory.mappings where !m.shared && memory.pageCategories(m) != nil {
            var cursor = m.start
            while cursor < m.end {
                var arg = cryo_pm_scan_arg()
                arg.flags = 1  // PM_SCAN_WP_MATCHING
                arg.start = cursor
                arg.end = m.end
                arg.category_mask = tracked
                arg.category_anyof_mask = UInt64(CRYO_PAGE_IS_PRESENT | CRYO_PAGE_IS_SWAPPED)
                arg.return_mask = UInt64(CRYO_PAGE_IS_WRITTEN)
                let count = try regions.withUnsafeMutableBufferPointer {
                    try Pagemap.scan(pagemap, &arg, into: $0, pid: pid, object: "address 0x\(String(cursor, radix: 16))")
                }
                found += regions.prefix(count)
                cursor = arg.walk_end > cursor ? arg.walk_end : m.end
            }
        }
        var total: UInt64 = 0
        for region in found {
            var address = region.start
            while address < region.end {
                let n = Int(min(UInt64(Self.chunk), region.end - address))
                var header = FrameHeader()
                header.pid = pid
                header.address = address
                do {
                    // Read out of the tree straight into the frame's send buffer.
                    try wire.send(.pages, header, filling: n) { view in try RemoteMemory.read(pid, at: header.address!, into: view) }
                } catch let error as SyscallError where error.errno == .badAddress {
                    // Unmapped meanwhile (nothing of the frame went): the final dump sees what is there then.
                    address += UInt64(n)
                    continue
                } catch let error as SyscallError where error.errno == .noSuchProcess {
                    throw CryoError("pid \(pid) exited during the migration")
                }
                total += UInt64(n)
                address += UInt64(n)
            }
        }
        return total
    }

    /// Sends the image (pages files without what the destination has), then waits for the restore.
    static func sendImage(_ image: FrozenImage, wire: MigrationWire, verdict: Verdict, postCopy: Bool = false,
                          logger: Logger = Logger(label: "cryo", factory: { _ in SwiftLogNoOpLogHandler() }),
                          only: (String) -> Bool = { _ in true }) throws {
        var later = PostCopySource()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        for name in image.files.sorted() where only(name) {
            let path = "\(image.directory)/\(name)"
            let fd = try Files.open(path, .readOnly)
            defer { try? fd.close() }
            let size = UInt64(try Files.stat(fd, object: path).st_size)
            var begin = FrameHeader()
            begin.name = name
            begin.size = size
            var ranges: [[UInt64]] = [[0, size]]
            if let pid = pagesFilePid(name), let unchanged = image.unchangedPages[pid] {
                begin.sparse = true
                begin.pid = pid
                begin.runs = image.pageRuns[pid]
                ranges = FreshPagesSender.complement(of: unchanged, size: size)
                if postCopy {
                    let split = later.split(ranges, pid: pid, task: try TaskImage.read("\(image.directory)/task-\(pid).img"))
                    ranges = split.now
                    begin.omitted = split.omitted
                }
                verdict.pageBytes += ranges.reduce(0) { $0 + $1[1] }
            }
            try wire.send(.fileBegin, begin)
            for range in ranges {
                var done: UInt64 = 0
                while done < range[1] {
                    let n = Int(min(UInt64(chunk), range[1] - done))
                    let view = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
                    if image.freshInTree, let pid = pagesFilePid(name), let runs = image.pageRuns[pid], begin.sparse == true {
                        try readTree(pid: pid, runs: runs, offset: range[0] + done, into: view)
                    } else {
                        let got = try fd.read(fromAbsoluteOffset: Int64(range[0] + done), into: view)
                        guard got == n else { throw CryoError("\(path): short read at \(range[0] + done)") }
                    }
                    var header = FrameHeader()
                    header.offset = range[0] + done
                    try wire.send(.fileData, header, data: UnsafeRawBufferPointer(view))
                    done += UInt64(n)
                }
            }
            try wire.send(.fileEnd)
        }
        var commit = FrameHeader()
        commit.confirm = image.confirmFlags != nil ? true : nil
        try wire.send(.commit, commit)
        timelineMark(logger, "commit sent")
        if let confirm = image.confirmFlags {
            // While the destination restores: what was read before the freeze still holds, or its tree never
            // runs. Post-copy too: page requests of the restore wait meanwhile, and it needs the release anyway.
            try confirm()
            try wire.send(.release)
            timelineMark(logger, "release sent")
        }
        if !later.ranges.isEmpty { return try servePostCopy(later, wire: wire, verdict: verdict, logger: logger) }
        let asked = ContinuousClock.now
        let (kind, header, _): (FrameKind, FrameHeader, Int)
        do { (kind, header, _) = try wire.receive() } catch is MigrationLinkClosed {
            throw CryoError("connection to \(wire.link.peer) closed before the destination reported the restored tree running")
        }
        verdict.heard = true
        verdict.restoreSeconds = seconds(since: asked)
        verdict.restoredAt = .now
        timelineMark(logger, "destination answered")
        switch kind {
        case .restored: return
        case .failed: throw CryoError("destination \(wire.link.peer) failed: \(header.message ?? "no reason given")")
        default: throw CryoError("destination \(wire.link.peer) answered \(kind) to the image")
        }
    }

    /// Bytes at `offset` of a pages file the dump left as holes, from the frozen task (runs: offsets consecutive).
    static func readTree(pid: Int32, runs: [PageRun], offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        var low = 0, high = runs.count
        while low < high {
            let mid = (low + high) / 2
            if runs[mid].offset + runs[mid].length <= offset { low = mid + 1 } else { high = mid }
        }
        var done = 0, r = low
        while done < buffer.count {
            guard r < runs.count else { throw CryoError("pid \(pid): offset \(offset) is beyond its pages") }
            let at = offset + UInt64(done)
            let take = Int(min(UInt64(buffer.count - done), runs[r].offset + runs[r].length - at))
            try RemoteMemory.read(pid, at: runs[r].address + (at - runs[r].offset),
                                  into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + take)]))
            done += take
            r += 1
        }
    }

    /// Post-copy, the tree still frozen: streams the pages left out of the image in address order while
    /// answering the destination's requests first, from before its restore ends until it has them all.
    /// Failing before the destination said the tree runs throws (the source tree is released); after
    /// that it returns with `verdict.lostAfterStart` set, so the dump kills the source tree.
    /// `read` fills a buffer with the memory of a process at an address (default: the frozen tree's own).
    static func servePostCopy(_ later: PostCopySource, wire: MigrationWire, verdict: Verdict, logger: Logger,
                              read: (Int32, UInt64, UnsafeMutableRawBufferPointer) throws -> Void = { pid, address, buffer in
                                  try RemoteMemory.read(pid, at: address, into: buffer)
                              }) throws {
        let asked = ContinuousClock.now
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        var next = 0, doneInRange: UInt64 = 0
        var pagesDone = false
        // CRYO_LAZY_NO_PUSH=1: only what the destination asks for goes (tests catch the tree half-loaded).
        let push = !TestHooks.current.lazyNoPush
        func send(_ pid: Int32, _ address: UInt64, _ length: UInt64) throws {
            var done: UInt64 = 0
            while done < length {
                let n = Int(min(UInt64(chunk), length - done))
                let view = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
                // The tree is frozen: these bytes are the ones it will never write here again.
                try read(pid, address + done, view)
                var header = FrameHeader()
                header.pid = pid
                header.address = address + done
                try wire.send(.pages, header, data: UnsafeRawBufferPointer(view))
                done += UInt64(n)
            }
        }
        do {
            while true {
                // Requests first: a fault may be waiting on them.
                // Streaming waits for the start: until then the destination's CPU is the restore's.
                while pagesDone || !push || verdict.restoredAt == nil || wire.link.readable() {
                    let (kind, header, length) = try wire.receive()
                    guard length == 0 else { throw CryoError("destination \(wire.link.peer) sent data with a \(kind) frame") }
                    switch kind {
                    case .restored:
                        timelineMark(logger, "destination says restored")
                        verdict.heard = true
                        verdict.restoreSeconds = seconds(since: asked)
                        verdict.restoredAt = .now
                    case .pageRequest:
                        guard let pid = header.pid, let address = header.address, let size = header.size, size <= UInt64(MigrationWire.maxData),
                              later.covers(pid: pid, address: address, length: size) else {
                            throw CryoError("destination \(wire.link.peer) asked for pages that were not left out")
                        }
                        try send(pid, address, size)
                        verdict.postCopyRequests += 1
                    case .loaded:
                        guard verdict.restoredAt != nil, pagesDone else { throw CryoError("destination \(wire.link.peer) said loaded too early") }
                        return
                    case .failed:
                        throw CryoError("destination \(wire.link.peer) failed: \(header.message ?? "no reason given")")
                    default:
                        throw CryoError("destination \(wire.link.peer) answered \(kind) during post-copy")
                    }
                }
                if next < later.ranges.count {
                    let range = later.ranges[next]
                    let n = min(UInt64(1 << 20), range.length - doneInRange)
                    try send(range.pid, range.address + doneInRange, n)
                    verdict.postCopyBytes += n
                    doneInRange += n
                    if doneInRange == range.length { next += 1; doneInRange = 0 }
                } else {
                    try wire.send(.pagesDone)
                    pagesDone = true
                }
            }
        } catch let error as MigrationLinkClosed {
            guard verdict.restoredAt != nil else {
                throw CryoError("connection to \(wire.link.peer) closed before the destination reported the restored tree running")
            }
            verdict.lostAfterStart = error
        } catch {
            guard verdict.restoredAt != nil else { throw error }
            verdict.lostAfterStart = error
        }
        verdict.postCopyLeft = later.bytes - min(later.bytes, verdict.postCopyBytes)
    }

    /// `dump --page-server`: the pages files go to a `cryo page-server` while the tree is frozen
    /// and are removed here once it has them; the other files stay in the image folder.
    public static func pageServerHandOver(over link: MigrationLink, rootPid: pid_t) throws -> @Sendable (FrozenImage) throws -> Void {
        let wire = MigrationWire(link)
        try wire.hello(rootPid: rootPid, other: "page server \(link.peer)")
        return { [wire] image in
            let isPages = { (name: String) in name.hasPrefix("pages-") && name.hasSuffix(".img") }
            do {
                try sendImage(image, wire: wire, verdict: Verdict(), only: isPages)
            } catch {
                wire.fail("the dump gave up: \(error)")
                throw error
            }
            for name in image.files where isPages(name) { unlink("\(image.directory)/\(name)") }
        }
    }

    static func pagesFilePid(_ name: String) -> Int32? {
        guard name.hasPrefix("pages-"), name.hasSuffix(".img") else { return nil }
        return Int32(name.dropFirst(6).dropLast(4))
    }

    /// The holder that keeps write tracking for the pre-dump is told to let go.
    func releaseHolder(_ scratch: String) {
        if let base = try? PreCopyBase(path: scratch, imageDirectory: scratch, rootPid: options.pid, logger: logger) { base.finish() }
    }

    /// tmpfs when there is one: the source writes nothing to disk.
    static func scratchRoot() -> String {
        let mounts = (try? Files.readString("/proc/self/mounts")) ?? ""
        return mounts.split(separator: "\n").contains { $0.hasPrefix("tmpfs /dev/shm tmpfs ") } ? "/dev/shm" : "/tmp"
    }

    static func removeScratch(_ directory: String) {
        Scratch.remove(directory)
    }
}

/// Eager migration: the pages a process wrote since the last round go onto the wire as soon as the final
/// dump has scanned it, read from the frozen tree on a thread of their own while the dump goes on (parasite,
/// descriptors, task files). Sent after the whole dump they added their transfer to the freeze. They are
/// `.pages` frames like a round's, so the destination holds them in its pool and the pages file leaves them
/// out like the earlier rounds' pages. Nothing else writes to the connection until `finish` returned.
final class FreshPagesSender: @unchecked Sendable {
    private let wire: MigrationWire
    private let logger: Logger
    private let queue = DispatchQueue(label: "cryo.fresh-pages")
    private let lock = Lock()
    private var failure: Error?
    /// Per pid, the [offset, length] ranges of its pages file sent.
    private var sent: [Int32: [[UInt64]]] = [:]
    private var bytes: UInt64 = 0

    init(wire: MigrationWire, logger: Logger) {
        self.wire = wire
        self.logger = logger
    }

    /// Sends the pages of `pid`'s pages file not in `unchanged` (runs: offsets consecutive from 0).
    func send(pid: Int32, runs: [PageRun], unchanged: [[UInt64]]) {
        queue.async { [self] in
            guard lock.withLock({ failure == nil }) else { return }
            do {
                let ranges = Self.complement(of: unchanged, size: runs.last.map { $0.offset + $0.length } ?? 0)
                var r = 0
                for range in ranges {
                    var offset = range[0]
                    let end = range[0] + range[1]
                    while r < runs.count && runs[r].offset + runs[r].length <= offset { r += 1 }
                    while offset < end {
                        guard r < runs.count else { throw CryoError("pid \(pid): offset \(offset) is beyond its pages") }
                        let runEnd = runs[r].offset + runs[r].length
                        let n = min(UInt64(Migrator.chunk), end - offset, runEnd - offset)
                        let address = runs[r].address + (offset - runs[r].offset)
                        var header = FrameHeader()
                        header.pid = pid
                        header.address = address
                        try wire.send(.pages, header, filling: Int(n)) { view in try RemoteMemory.read(pid, at: address, into: view) }
                        offset += n
                        if offset == runEnd { r += 1 }
                    }
                }
                lock.withLock {
                    sent[pid] = ranges
                    bytes += ranges.reduce(0) { $0 + $1[1] }
                }
                timelineMark(logger, "pid \(pid): pages written since the last round sent")
            } catch {
                lock.withLock { failure = error }
            }
        }
    }

    /// Waits for everything started; the ranges sent per pid and their bytes, or the first failure.
    func finish() throws -> (ranges: [Int32: [[UInt64]]], bytes: UInt64) {
        queue.sync {}
        return try lock.withLock {
            if let failure { throw failure }
            return (sent, bytes)
        }
    }

    /// The [offset, length] ranges of [0, size) that no range of `pieces` covers.
    static func complement(of pieces: [[UInt64]], size: UInt64) -> [[UInt64]] {
        var ranges: [[UInt64]] = []
        var cursor: UInt64 = 0
        for piece in pieces.sorted(by: { $0[0] < $1[0] }) {
            if piece[0] > cursor { ranges.append([cursor, piece[0] - cursor]) }
            cursor = max(cursor, piece[0] + piece[1])
        }
        if cursor < size { ranges.append([cursor, size - cursor]) }
        return ranges
    }
}

enum Scratch {
    /// Removes a folder of files, and folders of files, that cryo made.
    static func remove(_ directory: String) {
        guard let dir = opendir(directory) else { return }
        var names: [(String, Bool)] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if name == "." || name == ".." { continue }
            names.append((name, entry.pointee.d_type == UInt8(DT_DIR)))
        }
        closedir(dir)
        for (name, isDirectory) in names {
            if isDirectory { remove("\(directory)/\(name)") } else { unlink("\(directory)/\(name)") }
        }
        rmdir(directory)
    }
}
