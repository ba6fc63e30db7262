import CCryo
import CryoInjector
import CryoSystem
import Dispatch
import FoundationEssentials
import Glibc
import Logging
import SystemPackage

public struct DumpOptions: Sendable {
    public var pid: pid_t
    public var directory: String
    public var leaveRunning: Bool
    public var shellJob: Bool
    /// Checkpoint established TCP connections (TCP_REPAIR) instead of refusing them.
    public var tcpEstablished: Bool
    /// --tcp-close: connections are dumped without their state (the kill ends them), to come back closed.
    public var tcpClose = false
    /// --skip-in-flight: connections not yet accepted are left out of their listeners.
    public var skipInFlight = false
    /// --network-lock: firewall rules keep the dumped connections quiet until restore (nil: none, CRIU's `skip`).
    public var networkLock: NetworkLockMode?
    /// Write page images as zstd frames.
    public var compress: Bool
    /// A `pre-dump` folder (relative to `directory`, or absolute): only pages written since are read while frozen.
    public var previousImages: String?
    /// Largest file unlinked while open whose contents are saved (CRIU's --ghost-limit); a larger one is refused.
    public var ghostLimit: UInt64
    public static let defaultGhostLimit: UInt64 = 1 << 20
    /// Which System V objects of the IPC namespace are taken (SysVObjects.swift), and ones added by id ("sem:3").
    public var sysvSelection: SysVSelection = .tree
    public var sysvExtra: [String] = []
    /// --ext-unix-sk: unix datagram sockets connected to a peer outside the tree are dumped.
    public var externalUnixSockets = false
    /// For `cryo migrate` and `dump --page-server`: called with the complete image while the tree
    /// is still frozen. Returning goes on as usual (kill, or release with leaveRunning); throwing
    /// releases it. Pages left to the pre-dump are not filled in (the destination holds them).
    public var handOver: (@Sendable (FrozenImage) throws -> Void)?
    /// With `handOver` after a pre-dump: pages written since are not read into the pages file (it keeps
    /// holes there); the hand-over reads from the frozen tree those it needs (`FrozenImage.freshInTree`).
    public var freshPagesInTree = false
    /// With `freshPagesInTree`: told each process's page runs and the [offset, length] ranges of its pages file
    /// left to the pre-dump as soon as they are known (the tree frozen), so it may send the rest meanwhile.
    public var pagesScanned: (@Sendable (_ pid: Int32, _ runs: [PageRun], _ unchanged: [[UInt64]]) -> Void)?
    /// Each process's smaps read just before the freeze (while it ran): where the frozen layout is the same, the
    /// image takes their VmFlags, and smaps is read again from the frozen tree only to confirm them
    /// (`FrozenImage.confirmFlags`, which the hand-over must call before the tree may run elsewhere).
    /// That read walks every page table entry (30-150 ms for 2 GiB) and held off the parasite's mmap.
    var flagsBeforeFreeze: [Int32: [ProcMapping]] = [:]
    /// CRIU's --timeout: seconds the freeze waits for each task to stop.
    public var freezeTimeout = FrozenTree.defaultTimeout
    /// --manage-cgroups: anything but `ignore` records the tree's cgroups.
    public var cgroupMode: CgroupManagement = .soft
    public init(pid: pid_t, directory: String, leaveRunning: Bool, shellJob: Bool, tcpEstablished: Bool = false,
                compress: Bool = false, previousImages: String? = nil, ghostLimit: UInt64 = defaultGhostLimit,
                handOver: (@Sendable (FrozenImage) throws -> Void)? = nil) {
        self.pid = pid
        self.handOver = handOver
        self.ghostLimit = ghostLimit
        self.compress = compress
        self.previousImages = previousImages
        self.tcpEstablished = tcpEstablished
        self.directory = directory
        self.leaveRunning = leaveRunning
        self.shellJob = shellJob
    }
}

/// The image as `DumpOptions.handOver` sees it, the tree still frozen.
public struct FrozenImage: Sendable {
    public var directory: String
    /// File names in `directory` that make up the image.
    public var files: [String]
    /// Per pid, the [offset, length] ranges of pages-PID.img left out: pages unchanged since the pre-dump.
    public var unchangedPages: [Int32: [[UInt64]]]
    /// Per pid, where pages-PID.img's runs go in memory.
    public var pageRuns: [Int32: [PageRun]]
    /// The pages not in `unchangedPages` are holes in the file: read them from the tree (still frozen).
    public var freshInTree = false
    /// With `DumpOptions.flagsBeforeFreeze`: waits for the frozen tree's smaps and throws unless every mapping
    /// has the VmFlags the image took from before the freeze. The tree must not run elsewhere before it returned.
    public var confirmFlags: (@Sendable () throws -> Void)?
}

/// Freezes a process, writes its image, then kills it or lets it go on.
/// Any failure leaves it running exactly as before: parasite cured, registers
/// and mask put back, detached, and the partial image removed.
public struct Dumper {
    let options: DumpOptions
    let logger: Logger
    public init(options: DumpOptions, logger: Logger) {
        self.options = options
        self.logger = logger
    }

    public func run() throws -> DumpStatistics {
        let pid = options.pid
        let lock = try DumpLock.acquire(pid: pid, doing: "this dump is")
        defer { lock.release() }
        faultHook("locked")
        try checkRequest()
        let paths = ImagePaths(options.directory)
        let madeDirectory = !Files.exists(options.directory)
        let inventoryFD = try paths.claim("inventory.img", holding: "an image")
        var created = [paths.inventory]
        // Until the last step the folder says it is incomplete, so a cryo killed mid-dump leaves no image that looks whole.
        do { try IncompleteMark.write(paths, "dump of pid \(pid) by cryo pid \(getpid()) did not finish") } catch {
            try? inventoryFD.close()
            unlink(paths.inventory)
            if madeDirectory { rmdir(options.directory) }
            throw error
        }
        // Set when the storage filled up: the folder keeps the mark, with the reason, and nothing else.
        var storageFailure: Error?
        let fileTable = FileTableBuilder(paths: paths, options: KindOptions(tcpEstablished: options.tcpEstablished,
                                                                            tcpClose: options.tcpClose, skipInFlight: options.skipInFlight,
                                                                            shellJob: options.shellJob, leaveRunning: options.leaveRunning,
                                                                            ghostLimit: options.ghostLimit,
                                                                            externalUnixSockets: options.externalUnixSockets,
                                                                            networkLock: options.networkLock.map { NetworkLock(mode: $0, rootPid: pid) }))
        defer { fileTable.release() }
        let sharedMemory = SharedMemoryDump(paths: paths)
        var success = false
        defer {
            try? inventoryFD.close()
            if !success {
                fileTable.options.networkLock?.removeAll()
                for file in created + fileTable.created + sharedMemory.created { unlink(file) }
                unlink("\(options.directory)/stats-dump")
                if let storageFailure {
                    try? IncompleteMark.write(paths, "dump of pid \(pid) failed: \(storageFailure)")
                } else {
                    IncompleteMark.remove(paths)
                    if madeDirectory { rmdir(options.directory) }
                }
            }
        }
        let previous = try options.previousImages.map {
            try PreCopyBase(path: $0, imageDirectory: options.directory, rootPid: pid, logger: logger)
        }
        defer { previous?.close() }
        var fills: [PendingFill] = []
        var pageRuns: [Int32: [PageRun]] = [:]
        // With --compress after a pre-dump: task files written once their pages are compressed, after the release.
        var compressLater: [TaskImage] = []
        // After a pre-dump: task files written after the release too. Their page runs (131k for a fragmented
        // 2 GiB heap) took 11-19 ms of the freeze to encode and write; the folder stays marked incomplete
        // until they are, as it does for the pages the fill copies then.
        var writeLater: [TaskImage] = []
        // Sized from what the tracked processes wrote so far, touched now, before the freeze.
        let held = options.handOver != nil ? nil : previous.map { base in
            HeldPages(bytes: base.record.processes.reduce(0) { $0 + HeldPages.estimate(pid: $1.pid) } * 5 / 4 + (1 << 20))
        }
        var statistics = DumpStatistics()
        let frozenAt = ContinuousClock.now
        let tree = try FrozenTree.freeze(root: pid, timeout: options.freezeTimeout)
        faultHook("seized")
        timelineMark(logger, "froze")
        logger.debug("froze \(tree.processes.count) processes, \(tree.live.reduce(0) { $0 + $1.threads.count }) threads")
        let taskWriter = BackgroundWriter()
        // Processes whose image took the VmFlags read before the freeze, to confirm against the frozen tree.
        var flagsToConfirm: [(pid: pid_t, memory: MemoryRecord)] = []
        do {
            try checkTree(tree)
            let sharing = try SharedContexts.dump(tree, root: pid)
            // Before any descriptor is read: a terminal that cannot come back refuses the dump untouched.
            let terminals = try ControllingTerminals.dump(tree, root: pid, shellJob: options.shellJob)
            fileTable.sessionTerminals = terminals.sessions
            fileTable.treePids = tree.live.map(\.pid)
            fileTable.treeTids = Set(tree.live.flatMap { $0.threads.map(\.pid) })
            let namespaces = try NamespaceRecord.dump(root: pid, live: tree.live.map { ($0.pid, $0.comm) })
            let timeNamespaces = try TimeNamespace.dump(tree, root: pid)
            let prefetch = MappingsPrefetch()
            var sysvSegments: [Int32: SysVSegment] = [:]
            // Each process's layout and every range its restore fills, for its children's copy-on-write
            // sharing (CopyOnWrite.swift). Not after a pre-dump (its pages come from elsewhere), nor for a
            // hand-over (migration: pages may arrive after the tree starts, too late for a fork).
            var dumpedMemory: [pid_t: (memory: MemoryRecord, saved: [Range<UInt64>], frames: CopyOnWrite.Frames)] = [:]
            let parents = Set(tree.live.map(\.ppid))
            for process in tree.live {
                // Memory first, from the layout alone: smaps (VmFlags) is read alongside from here on and joined
                // after the task state. Its reader locks one mapping at a time (Linux 6.17+ reads maps under the
                // mapping's own lock), so a parasite coming in meanwhile waits for one mapping's walk at most,
                // and starting after the parasite left smaps (60 ms of 10,000 mappings) mostly to the end.
                // With flags read before the freeze, smaps is read only to confirm them, once the parasite is gone:
                // a 2 GiB mapping's walk holds the whole mapping, and the parasite's mmap waited for all of it.
                let flagsBefore = options.flagsBeforeFreeze[process.pid]
                if flagsBefore == nil { prefetch.start(process.pid) }
                // Then the parasite goes first, and the confirming read starts as soon as it left: it is the
                // longest step of such a freeze, and the tree may run elsewhere only once it ends.
                let stateFirst = try flagsBefore.map { _ in try readTaskState(process) }
                if flagsBefore != nil {
                    timelineMark(logger, "pid \(process.pid): parasite done")
                    prefetch.start(process.pid)
                }
                var memory = try MemoryRecord.dump(pid: process.pid, flags: false)
                timelineMark(logger, "pid \(process.pid): layout read")
                let sharedStart = ContinuousClock.now
                for i in memory.mappings.indices where memory.mappings[i].kind == .aioRing {
                    let ring = try AioRing.dump(pid: process.pid, mapping: memory.mappings[i])
                    memory.mappings[i].aioEvents = ring.events
                    if let contents = ring.contents { memory.aioRings = (memory.aioRings ?? []) + [contents] }
                }
                for m in memory.mappings where m.kind == .sysvShm {
                    try SysVSegment.dump(pid: process.pid, mapping: m, paths: paths, into: &sysvSegments, created: &created)
                }
                for i in memory.mappings.indices where memory.mappings[i].kind == .sharedAnonymous {
                    memory.mappings[i].shmem = try sharedMemory.object(pid: process.pid, mapping: memory.mappings[i], statistics: &statistics)
                }
                statistics.memoryDumpSeconds += seconds(since: sharedStart)
                // A table shared with the parent is the parent's: dumped (and installed) once, there.
                let descriptors = sharing.files.contains(process.pid) ? fileTable.sharedTable(pid: process.pid)
                    : try fileTable.dump(pid: process.pid)
                for i in memory.mappings.indices where memory.mappings[i].deleted == true {
                    memory.mappings[i].file = try fileTable.deletedFileMapping(pid: process.pid, start: memory.mappings[i].start,
                                                                               end: memory.mappings[i].end)
                }
                for i in memory.mappings.indices where memory.mappings[i].kind == .memfd {
                    memory.mappings[i].file = try fileTable.memfdMapping(pid: process.pid, start: memory.mappings[i].start,
                                                                         end: memory.mappings[i].end)
                }
                for i in memory.mappings.indices where memory.mappings[i].kind == .packetRing {
                    memory.mappings[i].file = try fileTable.packetRingMapping(pid: process.pid, mapping: memory.mappings[i])
                }
                timelineMark(logger, "pid \(process.pid): descriptors dumped")
                created.append(paths.pages(process.pid))
                let memoryStart = ContinuousClock.now
                let pageIndex: PageIndex
                var compressAfterRelease = false
                var writeAfterRelease = false
                var saved: [Range<UInt64>]? = nil
                var frames = CopyOnWrite.Frames()
                do {
                    if let base = previous?.pages(of: process.pid) {
                        compressAfterRelease = options.compress
                        // A hand-over (migration) sends the files while the tree is frozen: written now.
                        writeAfterRelease = options.handOver == nil
                        let target = options.compress ? paths.pages(process.pid) + ".raw" : paths.pages(process.pid)
                        if options.compress { created.append(target) }
                        let (index, fill) = try memory.dumpPages(pid: process.pid, to: target, previous: base, held: held,
                                                                 readFresh: !options.freshPagesInTree,
                                                                 statistics: &statistics)
                        pageIndex = index
                        fills.append(fill)
                        if options.freshPagesInTree { options.pagesScanned?(process.pid, index.runs, fill.pieces.map { [$0[1], $0[2]] }) }
                    } else {
                        // One cloned from a sibling at restore starts with the sibling's memory, not its parent's: nothing kept.
                        let parent = options.handOver == nil && sharing.creator[process.pid] == nil ? dumpedMemory[process.ppid] : nil
                        // The advice of each mapping decides what fork passes on: read before the pages.
                        if parent != nil { try memory.applyFlags(prefetch.mappings(of: process.pid), pid: process.pid) }
                        let layout = memory
                        var split: CopyOnWrite.Split? = nil
                        pageIndex = try memory.dumpPages(pid: process.pid, to: paths.pages(process.pid), compress: options.compress,
                                                         statistics: &statistics,
                                                         inTask: InTaskPageCopy(leader: process.leader, log: parasiteLog(logger)),
                                                         select: { present in
                                                             saved = present
                                                             // Before any page is read (CopyOnWrite.Frames says why).
                                                             if options.handOver == nil && parents.contains(process.pid) {
                                                                 frames = try CopyOnWrite.Frames(pid: process.pid, regions: present)
                                                             }
                                                             guard let parent else { return present }
                                                             let pagemap = try Files.open("/proc/\(process.pid)/pagemap", .readOnly)
                                                             defer { try? pagemap.close() }
                                                             split = try CopyOnWrite.split(child: layout, childSaved: present, parent: parent.memory,
                                                                                           parentSaved: parent.saved) { range in
                                                                 try parent.frames.shared(with: pagemap, pid: process.pid, range)
                                                             }
                                                             return split!.stored
                                                         },
                                                         settled: { prefetch.start(process.pid) })
                        if let split, !split.inherited.isEmpty {
                            var whole = true
                            var k = 0
                            for i in memory.mappings.indices {
                                let m = memory.mappings[i]
                                while k < split.inherited.count && split.inherited[k].upperBound <= m.start { k += 1 }
                                var here = k
                                while here < split.inherited.count && split.inherited[here].lowerBound < m.end {
                                    memory.mappings[i].inherited = true
                                    if split.inherited[here] != m.start..<m.end { whole = false }
                                    here += 1
                                }
                            }
                            // Ranges only when some mapping is not kept whole (a version 7 task file).
                            memory.inheritedRanges = whole ? nil : split.inherited.map { [$0.lowerBound, $0.upperBound] }
                            memory.discards = split.discards.isEmpty ? nil : split.discards.map { [$0.lowerBound, $0.upperBound] }
                        }
                    }
                } catch {
                    // A device mapping fails the copy its own way: its refusal says more.
                    try memory.applyFlags(prefetch.mappings(of: process.pid), pid: process.pid)
                    throw error
                }
                pageRuns[process.pid] = pageIndex.runs
                created += (pageIndex.parts ?? []).indices.map { paths.pages(process.pid, part: $0 + 1) }
                statistics.memoryDumpSeconds += seconds(since: memoryStart)
                timelineMark(logger, "pid \(process.pid): pages scanned")
                let (state, threadStates, posixTimers, thpDisable, injected) = try stateFirst ?? readTaskState(process)
                memory.thpDisable = thpDisable == 0 ? nil : thpDisable
                memory.lockFuture = try MemoryRecord.lockFuture(state.lock_future, pid: process.pid)
                if stateFirst == nil { timelineMark(logger, "pid \(process.pid): parasite done") }
                let core = try TaskCore.dump(pid: process.pid, state: state, membarrier: injected.membarrier)
                var threads = try zip(process.threads.indices, threadStates).map {
                    try ThreadRecord.dump(process.threads[$0.0], state: $0.1, timerSlack: injected.timerSlacks[$0.0])
                }
                for i in threads.indices.dropFirst() {
                    threads[i].seccomp = try SeccompState.dumpThread(tid: threads[i].tid, process: process.pid, leader: core.seccomp)
                }
                var signals = try SignalsRecord.dump(pid: process.pid, state: state)
                signals.posixTimers = posixTimers.isEmpty ? nil : posixTimers
                timelineMark(logger, "pid \(process.pid): task state read")
                if let flagsBefore, memory.sameRanges(as: flagsBefore) {
                    try memory.applyFlags(flagsBefore, pid: process.pid)
                    flagsToConfirm.append((process.pid, memory))
                } else {
                    try memory.applyFlags(prefetch.mappings(of: process.pid), pid: process.pid)
                }
                timelineMark(logger, "pid \(process.pid): smaps joined")
                if let saved, parents.contains(process.pid), options.handOver == nil { dumpedMemory[process.pid] = (memory, saved, frames) }
                created.append(paths.task(process.pid))
                let task = TaskImage(core: core, threads: threads, memory: memory, pageIndex: pageIndex, signals: signals,
                                     descriptors: descriptors)
                if compressAfterRelease {
                    compressLater.append(task)
                } else if writeAfterRelease {
                    writeLater.append(task)
                } else {
                    let taskPath = paths.task(process.pid)
                    taskWriter.submit { try task.write(to: taskPath) }
                }
            }
            let (semaphores, queues) = try SysVObjects.dump(pids: Set(tree.live.map(\.pid)), selection: options.sysvSelection,
                                                            extra: options.sysvExtra, paths: paths, segments: &sysvSegments,
                                                            created: &created)
            timelineMark(logger, "System V objects read")
            try taskWriter.finish()
            timelineMark(logger, "task files written")
            try sharedMemory.write()
            try fileTable.finish()
            try fileTable.options.networkLock?.releaseConnectionsWithinTree()
            if let refusal = terminals.refusal { throw CryoError(refusal) }
            created.append(paths.files)
            try fileTable.table.write(to: paths.files)
            // Version 8: a cryo that does not know `sharesWith` would clone such a process from its parent.
            var inventory = RecordWriter(version: sharing.creator.isEmpty ? ImageFormat.baseVersion : ImageFormat.siblingSharingVersion)
            var record = Inventory(rootPid: pid, processes: tree.processes.map { p in
                                       var entry = p.entry
                                       entry.terminal = terminals.byPid[p.pid]
                                       entry.sharesFiles = sharing.files.contains(p.pid) ? true : nil
                                       entry.sharesFS = sharing.fs.contains(p.pid) ? true : nil
                                       entry.sharesWith = sharing.creator[p.pid]
                                       entry.timeNamespace = timeNamespaces.byPid[p.pid]?.time
                                       entry.timeForChildren = timeNamespaces.byPid[p.pid]?.children
                                       return entry
                                   },
                                   kernel: kernelRelease(), shellJob: options.shellJob,
                                   namespaces: namespaces.uts == nil ? nil : namespaces,
                                   sysvSharedMemory: sysvSegments.isEmpty ? nil : sysvSegments.values.sorted { $0.id < $1.id })
            record.sysvSemaphores = semaphores.isEmpty ? nil : semaphores
            record.sysvMessageQueues = queues.isEmpty ? nil : queues
            record.terminals = terminals.sessions.isEmpty ? nil : terminals.sessions
            record.timeNamespaces = timeNamespaces.records.isEmpty ? nil : timeNamespaces.records
            if options.cgroupMode != .ignore { record.cgroups = try CgroupRecord.dump(tree, root: pid) }
            try inventory.append(.inventory, record)
            try inventory.write(to: inventoryFD, path: paths.inventory)
            timelineMark(logger, "inventory written")
            if let handOver = options.handOver {
                timelineMark(logger, "image written")
                // The connections' lock record goes along: a migration's destination drops their packets too
                // until its restored tree runs (the rules here stay until the hand-over returns).
                if let lock = fileTable.options.networkLock, let path = try lock.save(into: options.directory) { created.append(path) }
                let all = created + fileTable.created + sharedMemory.created
                var seen = Set<String>()
                let names = all.filter { Files.exists($0) && seen.insert($0).inserted }.map { String($0.split(separator: "/").last!) }
                var unchanged: [Int32: [[UInt64]]] = [:]
                for fill in fills { unchanged[fill.pid] = fill.pieces.map { [$0[1], $0[2]] } }
                var image = FrozenImage(directory: options.directory, files: names, unchangedPages: unchanged, pageRuns: pageRuns,
                                        freshInTree: options.freshPagesInTree && previous != nil)
                if !flagsToConfirm.isEmpty {
                    image.confirmFlags = { [flagsToConfirm, prefetch, logger] in
                        for (pid, memory) in flagsToConfirm {
                            try memory.confirmFlags(prefetch.mappings(of: pid), pid: pid)
                        }
                        timelineMark(logger, "VmFlags read before the freeze confirmed")
                    }
                }
                try handOver(image)
            }
        } catch {
            try? taskWriter.finish() // before the partial image is removed
            fileTable.undoAll()
            let reported = tree.release(after: error)
            if IncompleteMark.isStorageFull(error) { storageFailure = reported }
            throw reported
        }
        statistics.frozenSeconds = seconds(since: frozenAt)
        statistics.processes = tree.processes.count
        killPoint("written")
        // The lock goes once the tree runs on; after a kill it stays for restore to remove.
        let unlockAtEnd = options.leaveRunning || options.handOver != nil
        defer { if unlockAtEnd { fileTable.options.networkLock?.removeAll() } }
        if !unlockAtEnd, let lock = fileTable.options.networkLock, let path = try lock.save(into: options.directory) {
            created.append(path)
        }
        success = true
        for line in fileTable.warnings { logger.warning("\(line)") }
        if options.leaveRunning {
            try tree.release()
        } else {
            // Dead while still traced: no process runs another instruction, and
            // as their tracer cryo sees each one die before it returns. Kinds prepare
            // first what cryo still holds (established connections go into repair mode:
            // cryo's duplicates are their last references, and closing those sends nothing).
            fileTable.prepareForKill()
            tree.kill()
        }
        // Unchanged pages come from the pre-dump now that nothing waits on us (the file was allocated while frozen).
        do {
            for fill in fills where options.handOver == nil { try fill.run() }
            for task in writeLater { try task.write(to: paths.task(task.core.pid)) }
            for var task in compressLater {
                let pid = task.core.pid
                let raw = paths.pages(pid) + ".raw"
                task.pageIndex = try compressPagesFile(raw, to: paths.pages(pid), index: task.pageIndex)
                unlink(raw)
                try task.write(to: paths.task(pid))
            }
        } catch {
            for fill in fills { unlink(fill.target) }
            for task in compressLater { unlink(paths.pages(task.core.pid)) }
            for task in writeLater { unlink(paths.task(task.core.pid)) }
            let failure = CryoError("\(error); the image in \(options.directory) is incomplete and its pages files were removed")
            try? IncompleteMark.write(paths, "dump of pid \(pid) failed: \(failure)")
            throw failure
        }
        IncompleteMark.remove(paths)
        previous?.finish()
        try? writeStatistics(statistics, to: "\(options.directory)/stats-dump")
        return statistics
    }

    /// Runs the parasite once per process (and once in each thread) to read
    /// what only the task can see, then cures it.
    func readTaskState(_ process: FrozenProcess) throws -> (cryo_task_state, [cryo_thread_state], [PosixTimer], Int32,
                                                             (membarrier: UInt32?, timerSlacks: [UInt64])) {
        let parasite = try Parasite.inject(into: process.leader, argumentBytes: MemoryLayout<cryo_thread_state>.size + 64 * 1024, log: parasiteLog(logger))
        timelineMark(logger, "pid \(process.pid): parasite injected")
        do {
            if let address = TestHooks.current.parasiteFault {
                // For tests of the crash report: the parasite writes to this address.
                _ = try parasite.run(CRYO_CMD_FAIL_TEST, payload: [], replyBytes: 0, failAddress: address)
            }
            let state = try parasite.run(CRYO_CMD_DUMP_PROCESS, input: UInt8(0), output: cryo_task_state.self)
            var threads: [cryo_thread_state] = []
            for thread in process.threads {
                // Only the fixed part: the signal slots are filled at restore.
                let reply = try parasite.run(CRYO_CMD_DUMP_THREAD, payload: [0], replyBytes: MemoryLayout<cryo_thread_state>.offset(of: \.signals)!, on: thread)
                var t = cryo_thread_state()
                reply.payload.withUnsafeBytes { payload in withUnsafeMutableBytes(of: &t) { $0.copyMemory(from: payload) } }
                threads.append(t)
            }
            let timers = try PosixTimer.dump(pid: process.pid, parasite: parasite)
            timelineMark(logger, "pid \(process.pid): parasite commands run")
            try parasite.cure()
            // What only the task can ask, asked by DUMP_PROCESS and DUMP_THREAD in the stops above: an
            // injected syscall each cost the frozen tree a ptrace round trip more. PR_GET_THP_DISABLE:
            // /proc/PID/status shows only the complete disable, not "except advised".
            guard state.thp_disable >= 0 else {
                throw SyscallError("prctl(PR_GET_THP_DISABLE) in the parasite", errno: Errno(rawValue: Int32(-state.thp_disable)), pid: process.pid)
            }
            let injected = (membarrier: try ProcessAttributes.membarrierRegistrations(result: state.membarrier, pid: process.pid),
                            timerSlacks: try zip(process.threads, threads).map { thread, t in
                                guard t.timer_slack >= 0 else {
                                    throw SyscallError("prctl(PR_GET_TIMERSLACK) in the parasite", errno: Errno(rawValue: Int32(-t.timer_slack)), pid: thread.pid)
                                }
                                return UInt64(t.timer_slack)
                            })
            return (state, threads, timers, Int32(state.thp_disable), injected)
        } catch {
            _ = try? parasite.cure()
            throw error
        }
    }

    /// What this version can rebuild: sessions and groups that restore can recreate.
    func checkTree(_ tree: FrozenTree) throws {
        let byPid = Dictionary(uniqueKeysWithValues: tree.processes.map { ($0.pid, $0) })
        // An ordinary user's cryo reads only processes with the user's own credentials (before any parasite goes in).
        for p in tree.live { try Caller.current.checkOwn(pid: p.pid, doing: "dumps") }
        try checkSeccompSuspended(tree)
        try StoppedTasks.check(tree, root: options.pid, shellJob: options.shellJob)
        try SysVObjects.checkUndo(tree)
        for p in tree.processes where p.pid != options.pid {
            guard let parent = byPid[p.ppid] else { continue }
            if p.zombieStatus == nil && parent.zombieStatus == nil {
                // A descriptor table or fs context shared with the parent comes back (SharedContexts.swift).
                if try Pidfd.share(p.pid, parent.pid, resource: SharedContexts.kcmpVM) {
                    throw CryoError("pid \(p.pid) (\(p.comm)) shares its address space (CLONE_VM) with its parent \(parent.pid); not supported yet")
                }
            }
            // A live one comes back in its parent's old session when cloned before the parent's setsid (SessionOrder).
            if p.sid != p.pid && p.sid != parent.sid && (p.zombieStatus != nil || parent.zombieStatus != nil) {
                let zombie = p.zombieStatus != nil ? "it is a zombie, which comes back from its parent and in its session"
                    : "its parent is a zombie, which comes back only after its children"
                throw CryoError("pid \(p.pid) (\(p.comm)) is in session \(p.sid)\(leaderNote(p.sid, byPid)) but its parent \(parent.pid) is in "
                    + "session \(parent.sid): \(zombie); such a session cannot be rebuilt yet")
            }
            // Only the session's leader could create it again, and a zombie leader comes back after every live process.
            if p.zombieStatus == nil, p.sid != p.pid, p.sid != parent.sid, byPid[p.sid]?.zombieStatus != nil {
                throw CryoError("pid \(p.pid) (\(p.comm)) is in session \(p.sid)\(leaderNote(p.sid, byPid)) but its parent \(parent.pid) is in "
                    + "session \(parent.sid); a live process in the session of a zombie leader cannot be rebuilt yet")
            }
            if p.pgid != p.pid, byPid[p.pgid] == nil, p.sid == p.pid {
                throw CryoError("pid \(p.pid) (\(p.comm)) leads session \(p.sid) but not its group \(p.pgid)")
            }
        }
        _ = try SessionOrder.plan(tree.live.map { (pid: $0.pid, sid: $0.sid, creator: $0.ppid) }, root: options.pid,
                                  comm: { byPid[$0]?.comm ?? "?" })
        for p in tree.processes where p.pid != options.pid && p.pgid != p.pid && byPid[p.pgid] == nil {
            // A group whose leader is gone comes back through a helper that needs the group's session.
            if p.sid == byPid[options.pid]!.sid && options.shellJob && p.pgid == byPid[options.pid]!.pgid { continue }
            if byPid[p.pgid] == nil && p.sid != byPid[p.ppid]?.sid {
                throw CryoError("pid \(p.pid) (\(p.comm)): process group \(p.pgid) has no leader in the tree and no member's parent in its session")
            }
        }
    }

    /// What became of a session's leader, for a refusal: a zombie of the tree, exited, or outside the tree.
    func leaderNote(_ sid: pid_t, _ byPid: [pid_t: FrozenProcess]) -> String {
        if let leader = byPid[sid] { return leader.zombieStatus != nil ? ", whose leader \(sid) is a zombie of the tree," : "" }
        return Files.exists("/proc/\(sid)") ? ", whose leader \(sid) is outside the tree," : ", whose leader \(sid) has exited,"
    }

    /// A seccomp filter cryo could not suspend (PTRACE_O_SUSPEND_SECCOMP needs CAP_SYS_ADMIN) would
    /// act on the parasite's syscalls, and might kill the task: refused before any is injected.
    func checkSeccompSuspended(_ tree: FrozenTree) throws {
        for p in tree.live {
            for thread in p.threads where !thread.seccompSuspended {
                guard let mode = try? ProcStatus(pid: thread.pid, thread: p.pid).values["Seccomp"], mode != "0" else { continue }
                let which = thread.pid == p.pid ? "" : " thread \(thread.pid)"
                throw CryoError("pid \(p.pid) (\(p.comm))\(which) runs under seccomp (mode \(mode)) and cryo cannot suspend its filters "
                    + "without CAP_SYS_ADMIN (PTRACE_O_SUSPEND_SECCOMP: EPERM); dump it as root")
            }
        }
    }

    /// Refusals that need no freezing: one clear line, nothing touched.
    func checkRequest() throws {
        let pid = options.pid
        guard pid > 0, Files.exists("/proc/\(pid)") else { throw CryoError("pid \(pid): no such process") }
        let stat = try ProcStat(pid: pid)
        if stat.flags & 0x0020_0000 != 0 { throw CryoError("pid \(pid) (\(stat.comm)) is a kernel thread; it cannot be dumped") }
        var ancestor = getpid()
        while ancestor > 1 {
            if ancestor == pid { throw CryoError("pid \(pid) (\(stat.comm)) is cryo itself or one of its ancestors") }
            ancestor = (try? ProcStat(pid: ancestor).ppid) ?? 0
        }
        if stat.state == "Z" { throw FrozenTree.zombieRefusal(pid, comm: stat.comm) }
        try Caller.current.checkOwn(pid: pid, doing: "dumps")
        let tracer = try ProcStatus(pid: pid).tracerPid
        if tracer != 0 {
            let name = (try? ProcStat(pid: tracer).comm) ?? "?"
            throw CryoError("pid \(pid) (\(stat.comm)) is already traced by pid \(tracer) (\(name)); detach the debugger first")
        }
        if stat.sid != pid && !options.shellJob {
            throw CryoError("pid \(pid) (\(stat.comm)) belongs to session \(stat.sid), whose leader is not dumped; "
                + "start it with setsid, or dump with --shell-job to restore it into cryo's session")
        }
    }
}

/// The parasite's own log lines, shown at -v with task and command.
/// Task images are encoded (JSON) and written on the other core while the
/// next process is dumped; the first failure is kept and later work skipped.
final class BackgroundWriter: @unchecked Sendable {
    private let queue = DispatchQueue(label: "cryo.task-writer")
    private let lock = Lock()
    private var failure: Error?

    func submit(_ work: @escaping @Sendable () throws -> Void) {
        queue.async { [self] in
            guard lock.withLock({ failure == nil }) else { return }
            do { try work() } catch { lock.withLock { if failure == nil { failure = error } } }
        }
    }

    /// Waits for everything submitted; throws the first failure.
    func finish() throws {
        queue.sync {}
        try lock.withLock { if let failure { throw failure } }
    }
}

/// The parasite's own log lines go to the debug log; below -v there is none, and the lines are not
/// even read back from the task (one process_vm_readv per command saved).
func parasiteLog(_ logger: Logger) -> ((pid_t, String, String) -> Void)? {
    guard logger.logLevel <= .debug else { return nil }
    return { pid, command, line in logger.debug("pid \(pid) parasite \(command): \(line)") }
}

func seconds(from start: ContinuousClock.Instant, to end: ContinuousClock.Instant) -> Double {
    let d = end - start
    return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

func seconds(since start: ContinuousClock.Instant) -> Double {
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

func kernelRelease() -> String {
    var u = utsname()
    uname(&u)
    return withUnsafeBytes(of: u.release) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
}

func writeStatistics<T: Encodable>(_ value: T, to path: String) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    let data = try encoder.encode(value)
    unlink(path)
    let fd = try Files.open(path, .writeOnly, options: [.create, .exclusiveCreate, .noFollow], permissions: [.ownerReadWrite])
    defer { try? fd.close() }
    try Files.write(fd, [UInt8](data) + [10], path: path)
}
