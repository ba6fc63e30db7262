import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc
import Logging
import SystemPackage

public struct RestoreOptions: Sendable {
    public var directory: String
    public var detached: Bool
    /// Restore the tree inside a new pid namespace, where its pids are free.
    public var newPidNamespace: Bool
    /// Leave every task stopped (SIGSTOP, not traced) right before it would resume, for a debugger.
    public var leaveStopped: Bool
    /// Rebuild established TCP connections of the image (TCP_REPAIR); without it they are refused.
    public var tcpEstablished: Bool
    /// --tcp-close: the image's connections come back closed (end of stream, EPIPE).
    public var tcpClose = false
    /// Start the tree before its private anonymous memory is in; cryo fills it on demand and in the background (LazyPages.swift).
    public var lazyPages: Bool
    /// --manage-cgroups and --cgroup-root ("[controllers:]/path"), with CRIU's meanings (Cgroups.swift).
    public var cgroupMode: CgroupManagement = .soft
    public var cgroupRoots: [String] = []
    /// Post-copy (`cryo receive`): pages of the pages files that are still on their way from the source.
    public var remotePages: RemotePages?
    /// `cryo receive`: its figures, for stats-restore.
    public var migration: ReceiveStatistics?
    /// `cryo receive`: per pid, the page runs as the pages arrived, in place of the task files' own
    /// (rewritten only after the restore, so not in the downtime); the folder is marked incomplete until then.
    public var receivedPageIndexes: [Int32: PageIndex]?
    /// A guard started before the tree froze (`cryo receive`), so that starting one is not downtime.
    public var lazyGuard: LazyGuard?
    /// Called once everything is restored, right before the tasks are let go; throwing fails the restore
    /// (a migration's destination waits here for the source to confirm the state it sent).
    public var beforeRelease: (@Sendable () throws -> Void)?
    public init(directory: String, detached: Bool, newPidNamespace: Bool = false, leaveStopped: Bool = false,
                tcpEstablished: Bool = false, lazyPages: Bool = false) {
        self.tcpEstablished = tcpEstablished
        self.lazyPages = lazyPages
        self.directory = directory
        self.detached = detached
        self.newPidNamespace = newPidNamespace
        self.leaveStopped = leaveStopped
    }
}

/// Which processes cryo started: the one to wait for, and the restored root as this namespace sees it.
public struct RestoredTree: Sendable {
    /// cryo's own child: the root, or the new namespace's init, which exits with the root's status.
    public var childPid: pid_t
    public var rootPid: pid_t
    public var rootPidInImage: pid_t
    /// With --lazy-pages: the server still loading memory; wait for it before exiting.
    public var lazy: LazyServer?
}

/// A process being rebuilt: traced, with the parasite inside.
final class RestoringProcess {
    let image: TaskImage
    let tracee: Tracee
    var threads: [Tracee]
    let parasite: Parasite
    var pid: pid_t { tracee.pid }
    /// SIGCHLDs of children cryo made exit (zombies, helpers): not the process's own.
    var discardChildSignals = false
    /// The lane (thread) that traces it (RestoreLanes.swift).
    var lane = 0
    /// The process group it is in now (pid in the image), nil when another one than the image names
    /// (a --shell-job root outside its own group): a child cloned from it starts in that group too.
    var group: Int32?
    /// Its memory is in place already: restored before its children were cloned (CopyOnWrite.swift),
    /// all but what it loads lazily, registered once its children exist (`lazyLater`).
    var memoryRestored = false
    var lazyLater: LazySplit?
    /// Set when it shares its parent's descriptor table (CLONE_FILES): the task whose descriptors
    /// fill that table. It then installs none, and never closes what is below its slots.
    var filesOwner: TaskImage?
    /// Starts of the mappings it passes on to its children or keeps from its parent: never lazy
    /// (a page a child inherits must be in the parent at fork, and an inherited page never faults).
    var sharedMappings: Set<UInt64> = []
    /// It keeps mappings from its parent or passes some on.
    var sharesMemory: Bool { !sharedMappings.isEmpty }
    /// Without sharing: where the pages it left to its ancestors are (CopyOnWrite.ancestorRuns),
    /// worked out once for its page files and again for its memory plan.
    private var ancestorRunsFound: [Int32: [PageRun]]?
    func ancestorRuns(in image: Image) -> [Int32: [PageRun]] {
        if let ancestorRunsFound { return ancestorRunsFound }
        let found = CopyOnWrite.ancestorRuns(of: self.image, in: image)
        ancestorRunsFound = found
        return found
    }
    /// Its limits, oom_score_adj, loginuid and timer slack as they are now (from its creator at clone).
    var inherited: InheritedAttributes
    init(image: TaskImage, tracee: Tracee, parasite: Parasite, inherited: InheritedAttributes) {
        self.image = image
        self.tracee = tracee
        self.threads = [tracee]
        self.parasite = parasite
        self.inherited = inherited
    }
}

/// Brings a process tree back from user space: the controller clones the
/// root with its pid, every other process is cloned by injecting clone3 into
/// its restored parent, sessions and groups are rebuilt with setsid and
/// setpgid (helpers stand in for group leaders that are gone), zombies are
/// made to exit with their status. Then each process's parasite rebuilds its
/// memory, threads, descriptors and signal state; the controller sets the
/// registers last and lets every task go together. A failure kills
/// everything created.
public struct Restorer {
    let options: RestoreOptions
    let logger: Logger
    public init(options: RestoreOptions, logger: Logger) {
        self.options = options
        self.logger = logger
    }

    /// The parasites' own log lines, read back after each command only when -v shows them
    /// (one process_vm_readv and a decoding less per stop otherwise).
    var restoreParasiteLog: ((pid_t, String, String) -> Void)? { parasiteLog(logger) }

    /// No TRACEFORK or TRACECLONE: every injected clone3 asks for CLONE_PTRACE instead, so that the
    /// child is traced from birth without a fork event stop of its parent (one stop less per clone).
    static let traceOptions: UInt = Ptrace.exitKill | Ptrace.traceSysGood
    /// PTRACE_O_SUSPEND_SECCOMP needs CAP_SYS_ADMIN; without it (an ordinary user's cryo)
    /// images with seccomp filters are refused up front.
    static let canSuspendSeccomp = Caller.current.effectiveCapabilities & (1 << 21) != 0

    /// Seizes a task cryo just created, for good: it dies if cryo does (EXITKILL).
    static func seizeNew(_ pid: pid_t) throws {
        try Ptrace.seize(pid, options: traceOptions | (canSuspendSeccomp ? Ptrace.suspendSeccomp : 0))
    }
    /// Private anonymous memory below this goes in through the parasite's reads in an eager restore.
    static let eagerUffdMinimumBytes: UInt64 = UInt64(TestHooks.current.eagerUffdMinimumBytes ?? (1 << 20))
    /// Pages shared copy-on-write at dump are shared again (CopyOnWrite.swift); not with --lazy-pages.
    var shareMemory: Bool { !options.lazyPages }
    static let syscallClone3 = 435, syscallSetsid = 112, syscallSetpgid = 109, syscallWait4 = 61, syscallExitGroup = 231

    public func run() throws -> RestoredTree {
        let started = ContinuousClock.now
        var statistics = RestoreStatistics()
        // Before the image read starts threads: a table grown while cryo has threads waits for an
        // RCU grace period at every doubling (expand_fdtable), 6-13 ms each here, three or four per tree.
        // (`cryo receive` has threads from the start: it did this before the source froze the tree.)
        Restorer.prepareDescriptorTable()
        let image = try Image(directory: options.directory, received: options.receivedPageIndexes)
        // A larger image: grown once more, to all it needs at once.
        Restorer.reserveDescriptors(image.fileTable.files.count + image.sharedMemory.objects.count + 1024)
        // A dump's --network-lock rules go once the tree runs, or the restore failed.
        let networkLock = try NetworkLock.saved(in: options.directory)
        defer { networkLock?.removeAll() }
        statistics.imageReadSeconds = seconds(since: started)
        timelineMark(logger, "image read")
        if options.lazyPages { try LazyServer.check() }
        let inventory = image.inventory
        let cgroups = try inventory.cgroups.map {
            CgroupRestore($0, mode: options.cgroupMode, roots: try CgroupRestore.parseRoots(options.cgroupRoots))
        }
        // Before anything is touched: what the image needs of the options.
        let kindOptions = KindOptions(tcpEstablished: options.tcpEstablished, tcpClose: options.tcpClose, shellJob: image.inventory.shellJob,
                                      newPidNamespace: options.newPidNamespace)
        try DescriptorKinds.checkBeforeRestore(image.fileTable.files, options: kindOptions)
        // An ordinary user gets back only processes with their own credentials and capabilities.
        for task in image.tasks { try Caller.current.checkOwn(task.core.credentials, pid: task.core.pid, doing: "restores") }
        if !Restorer.canSuspendSeccomp, let task = image.tasks.first(where: { $0.core.seccomp != nil || $0.threads.contains { $0.seccomp != nil } }) {
            throw CryoError("pid \(task.core.pid) has seccomp filters; restoring them needs CAP_SYS_ADMIN "
                + "(PTRACE_O_SUSPEND_SECCOMP), which cryo does not hold")
        }
        try ZombieDeath.checkBeforeRestore(inventory)
        try Hugetlb.checkBeforeRestore(image)
        let parents = Dictionary(inventory.processes.filter { $0.zombieStatus == nil }.map { ($0.pid, $0.ppid) }, uniquingKeysWith: { a, _ in a })
        // Processes whose children keep mappings inherited from them: their memory goes in before the children are cloned.
        var sharedMappings: [Int32: Set<UInt64>] = [:]
        // --lazy-pages: nothing is shared (a parent restored first could not load lazily); a child reads
        // the pages it left to its parent from the parent's image instead (CopyOnWrite.ancestorRuns).
        for task in image.tasks where shareMemory {
            let inherited = task.memory.mappings.filter { $0.inherited == true }.map(\.start)
            guard !inherited.isEmpty, let ppid = parents[task.core.pid], let parent = image.task(ppid) else { continue }
            sharedMappings[task.core.pid, default: []].formUnion(inherited)
            // The parent's mappings the kept ranges lie in (the same ones when the child kept them whole).
            let kept = task.memory.keptFromParent
            var k = 0
            for m in parent.memory.mappings {
                while k < kept.count && kept[k].upperBound <= m.start { k += 1 }
                if k < kept.count && kept[k].lowerBound < m.end { sharedMappings[ppid, default: []].insert(m.start) }
            }
        }
        let cowParents = Set(image.tasks.filter { shareMemory && $0.memory.mappings.contains { $0.inherited == true } }.compactMap { parents[$0.core.pid] })
        let helperPids = Set(inventory.processes.filter { p in
            p.pid != inventory.rootPid && p.pgid != p.pid && !inventory.processes.contains { $0.pid == p.pgid }
                && !(inventory.shellJob && p.pgid == inventory.processes[0].pgid)
        }.map(\.pgid))
        for pid in inventory.processes.map(\.pid) + image.tasks.flatMap({ $0.threads.dropFirst().map(\.tid) }) + helperPids
        where !options.newPidNamespace {
            if Files.exists("/proc/\(pid)") && !waitUntilReaped(pid) { throw pidInUse(pid) }
        }
        // Right after a dump killed the tree, its zombies may wait for their new parent (here the
        // container's init reaps about every 2 s): up to 1.4 s of a -v tree restore was this wait.
        timelineMark(logger, "image pids free")

        let session = RestoreSession()
        let sessionOrder = try SessionOrder.plan(inventory.processes.filter { $0.zombieStatus == nil }
            .map { (pid: $0.pid, sid: $0.sid, creator: $0.sharesWith ?? $0.ppid) }, root: inventory.rootPid,
            comm: { pid in inventory.processes.first { $0.pid == pid }?.comm ?? "?" })
        // Two threads restore independent subtrees side by side (RestoreLanes.swift).
        // Processes that share a descriptor table or fs context are restored one after the other, in one lane.
        let lanes = RestoreLanes(inventory: inventory, parallel: !options.lazyPages && !options.newPidNamespace
                                 && (inventory.terminals ?? []).isEmpty && TestHooks.current.restoreLanes != 1 && sessionOrder.isEmpty
                                 && !inventory.processes.contains { $0.sharesFiles == true || $0.sharesFS == true })
        if logger.logLevel <= .debug { lanes.log = { [logger] in logger.debug("\($0)") } }
        // Eager restores load private anonymous memory the lazy way too, but wait for it before the
        // tasks run: UFFDIO_COPY fills a new page without zeroing it first, and the copying runs on
        // the other core while the next process is restored. Without userfaultfd, the parasite reads.
        let eagerThroughUffd = !options.lazyPages && (try? LazyServer.check()) != nil
        session.lazy = options.lazyPages || eagerThroughUffd ? LazyServer(logger: logger, started: started, background: options.lazyPages) : nil
        session.eagerThroughUffd = eagerThroughUffd
        session.thpDisableMayBeInherited = Restorer.thpDisableMayBeInherited(image)
        // A lazily restored tree must not outlive its loader on zero-filled memory (LazyGuard.swift).
        if options.lazyPages { session.lazy?.guardian = try options.lazyGuard ?? LazyGuard() }
        // The new pid namespace's init parks in a read() on this pipe until cryo closes its write end.
        var park: (read: FileDescriptor, write: FileDescriptor?)? = nil
        defer { try? park?.read.close(); try? park?.write?.close() }
        do {
            // Before any task: the root (and a --pidns init) inherit the descriptor of the root's time namespace.
            let timeNamespaces = try TimeNamespaceRestore(inventory)
            var namespaceInit: (tracee: Tracee, parasite: Parasite)? = nil
            if options.newPidNamespace {
                let made = try FileObjects.pipe(object: "pid namespace init")
                park = (made.read, made.write)
                let initPid = try Processes.cloneNamespaceInit(park: made.read, rootPid: image.inventory.rootPid)
                session.noteCreated(initPid)
                // It arms PR_SET_PDEATHSIG itself right after clone3; caught before that, it would arm it
                // again after cryo clears it below and die when cryo exits. Wait until it parks in read().
                waitUntil(parkedIn: initPid)
                try Restorer.seizeNew(initPid)
                try Ptrace.interrupt(initPid)
                _ = try waitForStop(initPid)
                let tracee = try Tracee.adopt(initPid)
                namespaceInit = (tracee, try Parasite.inject(into: tracee, argumentBytes: argumentBytes(image), at: try parasitePlace(image, near: initPid), log: restoreParasiteLog))
                session.namespaceInit = tracee
            }
            let forking = ContinuousClock.now
            // Every open file description is made once, in the controller, before any task of
            // the tree exists (after the namespace's init, which must not inherit them).
            var holders: [Int: String] = [:]
            for task in image.tasks {
                for d in task.descriptors.descriptors where holders[d.file] == nil { holders[d.file] = "pid \(task.core.pid) fd \(d.fd)" }
            }
            let opened = try image.fileTable.open(paths: image.paths, options: kindOptions, holders: holders)
            defer { opened.close() }
            timelineMark(logger, "files opened")
            let sharedMemory = try image.sharedMemory.create(paths: image.paths)
            defer { for fd in sharedMemory { try? fd.close() } }
            let sysvSegments = try SysVSegmentsRestore(inventory.sysvSharedMemory ?? [], paths: image.paths)
            defer { sysvSegments.removeMade() }  // none left once finish() ran
            let sysvObjects = try SysVObjectsRestore(semaphores: inventory.sysvSemaphores ?? [], queues: inventory.sysvMessageQueues ?? [])
            defer { sysvObjects.removeMade() }  // none left once keep() ran
            let early = { (process: RestoringProcess) throws in
                let pid = process.image.core.pid
                process.sharedMappings = sharedMappings[pid] ?? []
                guard cowParents.contains(pid) else { return }
                try restoreMemoryEarly(process, image: image, descriptions: opened.descriptors, sharedMemory: sharedMemory, session: session)
            }
            // sched_setaffinity of another user's task needs CAP_SYS_NICE (the unpinning runs after the credentials).
            lanes.pin(unpinnable: Caller.current.effectiveCapabilities & (1 << 23 /* CAP_SYS_NICE */) != 0
                      || image.tasks.allSatisfy { $0.core.credentials.uids.prefix(2).contains(geteuid()) })
            let root = try createRoot(image, session: session, parent: namespaceInit, opened: opened, time: timeNamespaces, early: early)
            faultHook("root-created")
            timelineMark(logger, "root created")
            try createTree(image, root: root, session: session, lanes: lanes, sessionOrder: sessionOrder, helperPids: helperPids, opened: opened,
                           time: timeNamespaces, early: early)
            if let timeNamespaces {
                try lanes.run(step: "time namespaces") { lane in
                    for pid in inventory.livePids where session.processes[pid]!.lane == lane {
                        try timeNamespaces.finish(session.processes[pid]!, imagePid: pid, inject: injectArguments)
                    }
                }
            }
            faultHook("tree-created")
            // Complete now: /dev/tty descriptions of the tree's terminals were opened by their sessions' leaders.
            let descriptions = opened.descriptors
            // Queued unix messages go back with their senders' pids, which exist from here on.
            try opened.finish(pids: RestoredPids(host: { options.newPidNamespace ? session.processes[$0]?.pid : $0 },
                                                 namespace: session.namespaceInit.map { "/proc/\($0.pid)/ns/pid" }))
            statistics.forkingSeconds = seconds(since: forking)
            timelineMark(logger, "tree created")
            let restoring = ContinuousClock.now
            // Each process gets its registers right after the rest: no later step needs its parasite
            // (what follows works from outside), and a step of its own cost a wait of each lane for the other.
            try lanes.run(step: "processes") { lane in
                for process in inventory.livePids.map({ session.processes[$0]! }) where process.lane == lane {
                    try restoreProcess(process, image: image, descriptions: descriptions, sharedMemory: sharedMemory, session: session)
                    try sealMemory(process)
                    try restoreRegisters(process)
                    for thread in process.threads { try lanes.unpin(thread.pid) }
                }
            }
            lanes.unpinThreads()
            try sysvSegments.finish()
            sysvObjects.keep()
            try cgroups?.apply(pids: Dictionary(uniqueKeysWithValues: inventory.livePids.map { pid in
                let p = session.processes[pid]!
                return (pid, (p.pid, p.threads.map(\.pid)))
            }))
            statistics.restoreSeconds = seconds(since: restoring)
            timelineMark(logger, "processes restored")
            statistics.processes = inventory.processes.count
            statistics.pagesRestored = image.tasks.reduce(0) { $0 + $1.pageIndex.pageBytes / 4096 }
            if eagerThroughUffd, let server = session.lazy {
                if let failure = server.waitUntilLoaded() { throw failure }
                session.lazy = nil
            }
            // Scheduling last, from outside: a SCHED_IDLE or real-time policy would slow or starve the restore.
            // The CPUs first: a thread moved to SCHED_DEADLINE may no longer have them narrowed.
            let allowed = try Processes.affinity(0)
            for process in inventory.livePids.map({ session.processes[$0]! }) {
                for (thread, record) in zip(process.threads, process.image.threads) {
                    if let unavailable = try record.scheduling?.restoreAffinity(tid: thread.pid, imageTid: record.tid, allowed: allowed) {
                        logger.warning("\(unavailable)")
                    }
                    try record.scheduling?.restore(tid: thread.pid, imageTid: record.tid)
                }
            }
            // A pending SIGSTOP stops a task before its first instruction, untraced: for
            // --leave-stopped, and for processes that were stopped when dumped.
            for entry in inventory.processes where entry.zombieStatus == nil && (options.leaveStopped || entry.stopped == true) {
                try Processes.kill(session.processes[entry.pid]!.pid, options.leaveStopped ? SIGSTOP : entry.stopSignal ?? SIGSTOP)
            }
            try options.beforeRelease?()
            faultHook("before-release")
            // Not atomic: should cryo die in this loop, the tasks already let go run on while the
            // rest die with it (EXITKILL). The loop is kept short: detaching only.
            let releasing = ContinuousClock.now
            try lanes.run(step: "release") { lane in
                for process in inventory.livePids.map({ session.processes[$0]! }) where process.lane == lane {
                    for thread in process.threads { try thread.detach() }
                }
            }
            lanes.stop()
            timelineMark(logger, "released")
            logger.debug("released \(inventory.livePids.count) processes in \(Int(seconds(since: releasing) * 1e6)) µs")
            if let (tracee, parasite) = namespaceInit {
                // The init outlives cryo, and goes back to its read(): EOF on the
                // pipe (once its own copy of the write end is closed) sends it reaping.
                try inject(tracee, 157 /* prctl */, 1 /* PR_SET_PDEATHSIG */, 0, what: "prctl(PR_SET_PDEATHSIG)")
                // It keeps only its end of the pipe: not cryo's stdio nor anything else cryo had open.
                let kept = UInt64(park!.read.rawValue)
                if kept > 0 { try inject(tracee, 436 /* close_range */, 0, kept - 1, 0, what: "close_range") }
                try inject(tracee, 436 /* close_range */, kept + 1, UInt64(UInt32.max), 0, what: "close_range")
                try parasite.cure()
                try tracee.detach()
                try? park?.write?.close()
                park?.write = nil
            }
            session.done = true
            statistics.totalSeconds = seconds(since: started)
            statistics.migration = options.migration
            try? writeStatistics(statistics, to: "\(options.directory)/stats-restore")
            var lazy: LazyServer? = nil
            if let server = session.lazy, server.hasWork {
                server.finishAdding(statistics: statistics, path: "\(options.directory)/stats-restore")
                lazy = server
            }
            return RestoredTree(childPid: session.created[0], rootPid: root.pid, rootPidInImage: image.inventory.rootPid, lazy: lazy)
        } catch {
            session.lazy?.stop()
            session.killAll()
            lanes.unpinThreads()
            lanes.stop()  // after the kill: lane 1's thread takes its tracees along when it ends
            cgroups?.removeMade()
            // A task killed because its pages could not be loaded fails the restore for that reason.
            if let failure = session.lazy?.failed { throw failure }
            throw error
        }
    }

    // MARK: - The tree

    /// The root comes from the controller itself, or from the new namespace's init.
    func createRoot(_ image: Image, session: RestoreSession, parent: (tracee: Tracee, parasite: Parasite)?,
                    opened: OpenedFiles, time: TimeNamespaceRestore?, early: (RestoringProcess) throws -> Void) throws -> RestoringProcess {
        let core = image.tasks[0].core
        let namespaces = image.inventory.namespaces ?? NamespaceRecord()
        let tracee: Tracee
        if let parent {
            tracee = try clone(into: parent.tracee, parasite: parent.parasite, pid: core.pid, flags: namespaces.cloneFlags)
            session.noteCreated(tracee.pid)
        } else {
            let park = try FileObjects.pipe(object: "pid \(core.pid)")
            defer { try? park.read.close(); try? park.write.close() }
            let child: pid_t
            do { child = try Processes.cloneParked(pid: core.pid, flags: namespaces.cloneFlags, park: park.read) } catch let error as SyscallError where error.errno == .fileExists {
                throw pidInUse(core.pid)
            }
            session.noteCreated(child)
            do {
                try Restorer.seizeNew(child)
                try Ptrace.interrupt(child)
                _ = try waitForStop(child)
            } catch { throw CryoError("pid \(core.pid): cannot trace the new task: \(error)") }
            tracee = try Tracee.adopt(child)
        }
        if core.sid == core.pid {
            try inject(tracee, Restorer.syscallSetsid, what: "setsid")
        } else if !image.inventory.shellJob {
            throw CryoError("pid \(core.pid) was in session \(core.sid), which is not in the image; it can only come back with --shell-job")
        } else if core.pgid == core.pid {
            try inject(tracee, Restorer.syscallSetpgid, 0, 0, what: "setpgid")
        }
        let parasite: Parasite
        if let parent {
            parasite = Parasite.inherited(by: tracee, from: parent.parasite)
        } else {
            parasite = try Parasite.inject(into: tracee, argumentBytes: argumentBytes(image), at: try parasitePlace(image, near: tracee.pid), log: restoreParasiteLog)
        }
        try namespaces.restore(root: tracee.pid, place: { try parasite.place($0) }) { try injectArguments(tracee, $0, $1, $2) }
        try time?.enterRoot(tracee, inject: injectArguments)
        // It starts as a copy of cryo (or of the namespace's init, itself one):
        // every process of the tree would copy all of that again and drop it.
        let shed = MemoryRestorePlan.shedding(current: try readMappings(pid: tracee.pid, withFlags: false),
                                              parasite: parasite.base..<(parasite.base + parasite.size),
                                              oldRseq: try Ptrace.rseqConfiguration(tracee.pid))
        try parasite.run(CRYO_CMD_RESTORE_MEMORY, payload: shed, replyBytes: 0)
        // Read once here: every other task inherits them from its creator (InheritedAttributes).
        let root = RestoringProcess(image: image.tasks[0], tracee: tracee, parasite: parasite,
                                    inherited: try InheritedAttributes.read(pid: tracee.pid))
        root.group = core.sid == core.pid || core.pgid == core.pid ? core.pid : nil
        session.add(root, imagePid: core.pid)
        if core.sid == core.pid { try acquireTerminal(root, image: image, opened: opened) }
        try early(root)
        return root
    }

    /// One parasite address for the whole tree (children inherit the mapping):
    /// free in every process's final layout and in the new task's current one.
    func parasitePlace(_ image: Image, near pid: pid_t) throws -> UInt64 {
        let occupied = image.tasks.flatMap { $0.memory.mappings.map { $0.start..<$0.end } }
            + (try readMappings(pid: pid, withFlags: false)).map { $0.start..<$0.end }
        guard let place = findFreeRange(size: UInt64(argumentBytes(image)) + (8 << 20), occupied: occupied) else {
            throw CryoError("no address range is free for the parasite in every restored process")
        }
        return place
    }

    func argumentBytes(_ image: Image) -> Int {
        let ownMaps = (try? readMappings(pid: getpid(), withFlags: false).count) ?? 1000
        // A child cloned from a restored parent starts with the parent's layout, and unmaps it.
        let inheritedMaps = image.tasks.map { $0.memory.mappings.count }.max() ?? 0
        // Without sharing, a child also reads its parent's pages (at most every run of the image, each maybe cut in two).
        let allRuns = image.tasks.reduce(0) { $0 + $1.pageIndex.runs.count }
        return image.tasks.map { task in
            argumentBytesNeeded(task, files: image.fileTable, ownMaps: ownMaps + inheritedMaps)
                + (task.memory.mappings.contains { $0.inherited == true } ? allRuns * 2 * MemoryLayout<cryo_page_run>.stride : 0)
        }.max() ?? 0
    }

    /// Room for the largest command: the memory plan (which unmaps what the
    /// new task inherited from cryo, `ownMaps` mappings) or the state records.
    func argumentBytesNeeded(_ task: TaskImage, files: FileTable, ownMaps: Int) -> Int {
        return MemoryLayout<cryo_restore_memory>.size + (ownMaps + 64) * 16 + 6 * 24 * 2
            // A mapping partly kept from the parent is one piece per kept range and per gap, its runs cut at their ends.
            + (task.memory.mappings.count + 2 * (task.memory.inheritedRanges?.count ?? 0)) * MemoryLayout<cryo_vma>.stride
            + (task.pageIndex.runs.count + 2 * (task.memory.inheritedRanges?.count ?? 0)) * MemoryLayout<cryo_page_run>.stride
            + ((task.memory.discards?.count ?? 0) + (task.memory.guards?.count ?? 0)) * MemoryLayout<cryo_range>.stride
            + MemoryLayout<cryo_task_state>.size + MemoryLayout<cryo_restore_extra>.size
            + MemoryLayout<cryo_thread_state>.size
            + task.descriptors.descriptors.count * MemoryLayout<cryo_fd_install>.stride + 4096
            + DescriptorKinds.afterInstallBytes(InstalledDescriptors(descriptors: task.descriptors.descriptors, files: files.files,
                                                                     finishedOnce: { _ in true }))
            + (task.seccompPlan.map { $0.state.parasitePayload(synced: $0.synced).count }.max() ?? 0)
            + (task.signals.posixTimers?.count ?? 0) * MemoryLayout<cryo_posix_timer>.stride
            + task.core.parasiteCredentialsSize
    }

    /// Children are cloned by their parents; then groups; then zombies; helpers leave last.
    /// Each step runs in both lanes at once, each lane for the processes it traces (one lane when
    /// the tree has controlling terminals: those steps go from process to process).
    /// `early` runs for each process before its children are cloned (restoreMemoryEarly).
    func createTree(_ image: Image, root: RestoringProcess, session: RestoreSession, lanes: RestoreLanes, sessionOrder: SessionOrder,
                    helperPids: Set<Int32>, opened: OpenedFiles, time: TimeNamespaceRestore?, early: (RestoringProcess) throws -> Void) throws {
        let inventory = image.inventory
        // Session leaders whose setsid waits for their early children (one lane only then: SessionOrder).
        var pendingSetsid: [Int32: RestoringProcess] = [:]
        func setsidNow(_ process: RestoringProcess) throws {
            pendingSetsid[process.image.core.pid] = nil
            try inject(process.tracee, Restorer.syscallSetsid, what: "setsid")
            process.group = process.image.core.pid
            try acquireTerminal(process, image: image, opened: opened)
        }
        try lanes.run(step: "clones") { lane in
            defer { if lane == 0 { lanes.closeHandoff() } }
            let entries = sessionOrder.cloningOrder(Array(inventory.processes.dropFirst()), root: inventory.rootPid,
                                                    pid: \.pid, creator: { $0.sharesWith ?? $0.ppid })
            for entry in lane == 0 ? lanes.cloningOrder(entries, pid: \.pid) : entries where entry.zombieStatus == nil {
                // A child in its creator's new session: the creator's deferred setsid comes first.
                if let waiting = pendingSetsid[entry.sharesWith ?? entry.ppid], !sessionOrder.early.contains(entry.pid) {
                    try setsidNow(waiting)
                }
                let owner = lanes.lane(of: entry.pid)
                let handedOver = lanes.handedOver.contains(entry.pid)
                // Lane 0 clones what lane 1 takes over; lane 1 every other process of its own.
                guard owner == lane || (lane == 0 && handedOver) else { continue }
                // One lane 1 takes over exists once lane 0 parked it (its parent, lane 0's, is known by then).
                let taken = lane == 1 && handedOver ? try lanes.take(entry.pid, seize: Restorer.seizeNew) : nil
                guard let parent = session.processes[entry.ppid] else {
                    throw CryoError("pid \(entry.pid): its parent \(entry.ppid) is not a live process of the image")
                }
                let tracee: Tracee
                if let taken {
                    tracee = taken
                    _ = Parasite.inherited(by: tracee, from: parent.parasite)
                    try inject(tracee, 157 /* prctl */, 1 /* PR_SET_PDEATHSIG */, 0, what: "prctl(PR_SET_PDEATHSIG, 0)")
                } else {
                    // Sharing with a sibling: cloned from it, a child of the same parent (CLONE_PARENT).
                    let creatorPid = entry.sharesWith ?? entry.ppid
                    guard let creator = session.processes[creatorPid] else {
                        throw CryoError("pid \(entry.pid): its sibling \(creatorPid) is not restored before it")
                    }
                    try time?.beforeClone(child: entry.pid, parent: creator, parentPid: creatorPid, inject: injectArguments)
                    // Born with its control socket connected, unless it shares the creator's table (a socket
                    // placed there would land in the shared table), lives in a pid namespace of its own, or its
                    // socket's number is where the creator's own still waits for its first send.
                    let flags = SharedContexts.cloneFlags(entry)
                    let controlFD = Restorer.controlFD(image.task(entry.pid)!)
                    let connect = flags & 0x400 /* CLONE_FILES */ == 0 && !options.newPidNamespace
                        && !(session.hasConnection(for: creatorPid) && Restorer.controlFD(creator.image) == controlFD)
                        ? (listener: try session.listener(lane: creator.lane), controlFD: controlFD) : nil
                    tracee = try clone(into: creator.tracee, parasite: creator.parasite, pid: entry.pid, flags: flags,
                                       childrenOf: parent.pid, connect: connect, session: session)
                    session.noteCreated(tracee.pid)
                    if handedOver {
                        if entry.sid == entry.pid {
                            try inject(tracee, Restorer.syscallSetsid, what: "setsid")
                        } else if entry.pgid == entry.pid {
                            try inject(tracee, Restorer.syscallSetpgid, 0, 0, what: "setpgid")
                        }
                        _ = Parasite.inherited(by: tracee, from: parent.parasite)
                        try lanes.park(tracee) { try inject($0, $1, $2[0], $2[1], what: $3) }
                        continue
                    }
                }
                let creator = session.processes[entry.sharesWith ?? entry.ppid] ?? parent
                let process = RestoringProcess(image: image.task(entry.pid)!, tracee: tracee,
                                               parasite: .inherited(by: tracee, from: creator.parasite), inherited: creator.inherited)
                process.lane = owner
                if entry.sharesFiles == true { process.filesOwner = creator.filesOwner ?? creator.image }
                // A new task starts in the group of the one that cloned it. A group leader makes its group
                // now, before its children are cloned: those of them that belong to it are in it from birth
                // and need no setpgid stop of their own below. One lane 0 handed over did so before it parked.
                let deferred = sessionOrder.deferred.contains(entry.pid)
                if deferred {
                    process.group = creator.group  // its own group comes with its setsid
                } else if entry.sid == entry.pid || entry.pgid == entry.pid {
                    process.group = entry.pid
                } else {
                    process.group = creator.group
                }
                session.add(process, imagePid: entry.pid)
                if deferred {
                    pendingSetsid[entry.pid] = process
                } else if entry.sid == entry.pid && taken == nil {
                    try inject(tracee, Restorer.syscallSetsid, what: "setsid")
                    // Before its children are cloned: they inherit the terminal.
                    try acquireTerminal(process, image: image, opened: opened)
                } else if entry.pgid == entry.pid && taken == nil {
                    try inject(tracee, Restorer.syscallSetpgid, 0, 0, what: "setpgid")
                }
                try early(process)
            }
            // Leaders with only early children.
            for pid in pendingSetsid.keys.sorted() { try setsidNow(pendingSetsid[pid]!) }
        }
        // Every group leader made its group when it was cloned, so members can join them.
        final class Helpers { var list: [(tracee: Tracee, creator: RestoringProcess, group: Int32)] = [] }
        let helpers = [Helpers(), Helpers()]  // by lane
        try lanes.run(step: "stand-ins") { lane in
            for group in helperPids.sorted() {
                let member = inventory.processes.first { $0.pgid == group }!
                guard let creator = session.processes[member.ppid] ?? session.processes[member.pid] else {
                    if lane == 0 { throw CryoError("process group \(group): no process of its session can create its stand-in leader") }
                    continue
                }
                guard creator.lane == lane else { continue }
                let helper = try clone(into: creator, pid: group, flags: 0)
                session.noteCreated(helper.pid)
                try inject(helper, Restorer.syscallSetpgid, 0, 0, what: "setpgid (stand-in leader of group \(group))")
                creator.discardChildSignals = true
                helpers[lane].list.append((helper, creator, group))
            }
        }
        faultHook("stand-ins-created")
        let shellGroup = inventory.shellJob ? inventory.processes[0].pgid : -1
        try lanes.run(step: "groups") { lane in
            for entry in inventory.processes.dropFirst() where entry.zombieStatus == nil
                && entry.pgid != entry.pid && entry.sid != entry.pid && entry.pgid != shellGroup && lanes.lane(of: entry.pid) == lane {
                let process = session.processes[entry.pid]!
                // Born into its group: no stop.
                if process.group == entry.pgid { continue }
                try inject(process.tracee, Restorer.syscallSetpgid, 0, UInt64(entry.pgid), what: "setpgid")
                process.group = entry.pgid
            }
        }
        try finishTerminals(image, session: session)
        try lanes.run(step: "zombies") { lane in
            for entry in inventory.processes where entry.zombieStatus != nil && lanes.lane(of: entry.ppid) == lane {
                try createZombie(entry, session: session, shellGroup: shellGroup)
            }
        }
        try lanes.run(step: "stand-ins exit") { lane in
            for (helper, creator, group) in helpers[lane].list {
                try inject(helper, Restorer.syscallExitGroup, 0, what: "exit of stand-in leader", expectExit: true)
                // The creator knows its child by the pid of its own namespace: the group's, also under --pidns.
                try inject(creator.tracee, Restorer.syscallWait4, UInt64(UInt32(bitPattern: group)), 0, 0x4000_0000 /* __WALL */, 0,
                           what: "wait4 (reaping stand-in \(group))")
                session.forgetCreated(helper.pid) // reaped: its pid is free for anyone now
            }
        }
    }

    /// Injects clone3 with an exact pid into `parent`; the child is traced from birth.
    func clone(into parent: RestoringProcess, pid: pid_t, flags: UInt64, childTid: UInt64 = 0) throws -> Tracee {
        try clone(into: parent.tracee, parasite: parent.parasite, pid: pid, flags: flags, childTid: childTid)
    }

    /// The child and its own view of the parasite mapping (its memory is a copy now, not the parent's).
    func cloneWithParasite(into parent: RestoringProcess, pid: pid_t) throws -> (Tracee, Parasite) {
        let child = try clone(into: parent, pid: pid, flags: 0)
        return (child, Parasite.inherited(by: child, from: parent.parasite))
    }

    /// Injects clone3 with an exact pid (as the parent's namespace sees it) into
    /// `parent`; the child is traced from birth. Returns it under its pid here.
    /// `childrenOf`: with CLONE_PARENT, the parent of `parentTracee`, whose child the new task becomes.
    /// `connect`: the parent's parasite clones it (CLONE_CONNECTED) with a control socket to `listener`
    /// at `controlFD`, whose accepted end the session keeps for the child's first `send`.
    func clone(into parentTracee: Tracee, parasite: Parasite, pid: pid_t, flags: UInt64, childTid: UInt64 = 0,
               childrenOf: pid_t? = nil, connect: (listener: ControlListener, controlFD: Int32)? = nil,
               session: RestoreSession? = nil) throws -> Tracee {
        let isThread = flags & 0x10000 != 0
        let host = parentTracee.pid
        let parentPid = flags & 0x8000 /* CLONE_PARENT */ != 0 ? (childrenOf ?? host) : host
        // In cryo's own pid namespace the pid clone3 returns is the new task's here: no need to
        // list the parent's children (or threads, a directory scan per thread) before and after.
        let samePidNamespace = !options.newPidNamespace
        func known() -> Set<pid_t> {
            if samePidNamespace { return [] }
            let list = isThread ? ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(host)/task")) ?? []).joined(separator: " ")
                : (try? Files.readString("/proc/\(parentPid)/task/\(parentPid)/children")) ?? ""
            return Set(list.split(separator: " ").compactMap { pid_t($0.trimmed()) })
        }
        let before = known()
        var args = [UInt64](repeating: 0, count: 11) // struct clone_args, then set_tid[1]
        args[0] = flags | 0x2000 /* CLONE_PTRACE: traced by the parent's tracer from birth */
        // With CLONE_PARENT the exit signal is the creator's own, and clone3 refuses one given.
        if flags & (0x10000 /* CLONE_THREAD */ | 0x8000 /* CLONE_PARENT */) == 0 { args[4] = UInt64(SIGCHLD) }
        args[2] = childTid
        args[5] = parasite.scratchStack - 8192 // stack: the thread is stopped before it uses it
        args[6] = 4096
        args[9] = 1 // set_tid_size
        var connection: FileDescriptor?
        defer { try? connection?.close() }
        let result: Int64
        if let connect, let session {
            var request = cryo_clone_connected()
            request.connect = Restorer.connectRequest(connect.listener, controlFD: connect.controlFD)
            args.withUnsafeBytes { source in withUnsafeMutableBytes(of: &request.clone_args) { $0.copyMemory(from: source) } }
            request.set_tid = UInt64(UInt32(bitPattern: pid))
            killPoint("injecting clone3")  // the same moment as the injected clone3's
            result = try parasite.run(CRYO_CMD_CLONE_CONNECTED, input: request, output: cryo_clone_connected.self).result
            if result > 0 { connection = try connect.listener.accept() }
            if result == pid, let made = connection {
                session.keepConnection(made, for: pid)
                connection = nil
            }
        } else {
            args[8] = parasite.placeAddress + 88 // set_tid, right after the struct
            let address = try parasite.place(args.withUnsafeBytes { [UInt8]($0) } + withUnsafeBytes(of: UInt64(UInt32(bitPattern: pid))) { [UInt8]($0) })
            result = try parentTracee.syscall(Restorer.syscallClone3, address, 88)
        }
        if result < 0 {
            if result == -Int64(EEXIST) { throw pidInUse(pid) }
            throw SyscallError("injected clone3(set_tid=\(pid))", errno: .init(rawValue: Int32(-result)), pid: host)
        }
        // From here on the new task exists: a failure must not leave it behind (it is traced
        // and would die with cryo, but a failed restore cleans up before it returns).
        let made = samePidNamespace ? pid_t(result) : known().subtracting(before).first
        do {
            guard result == pid else { throw CryoError("injected clone3 in pid \(host) made pid \(result), not \(pid)") }
            guard let child = made else {
                throw CryoError("injected clone3 in pid \(host): the new task \(pid) is not among its \(isThread ? "threads" : "children")")
            }
            _ = try waitForStop(child)
            let tracee = try Tracee.adopt(child)
            _ = Parasite.inherited(by: tracee, from: parasite) // the mapping came along: use its gadget
            return tracee
        } catch {
            if let made {
                kill(made, SIGKILL)
                _ = try? waitFor(made)
            }
            throw error
        }
    }

    @discardableResult
    func inject(_ tracee: Tracee, _ number: Int, _ args: UInt64..., what: String, expectExit: Bool = false) throws -> Int64 {
        if expectExit {
            var regs = tracee.originalRegisters
            regs.rax = UInt64(number)
            regs.rdi = args.first ?? 0
            regs.orig_rax = UInt64(bitPattern: -1)
            guard let gadget = tracee.gadgetAddress else { throw CryoError("pid \(tracee.pid): no parasite gadget for \(what)") }
            regs.rip = gadget
            try Ptrace.setRegisters(tracee.pid, regs)
            try Ptrace.cont(tracee.pid)
            while true {
                switch try waitFor(tracee.pid) {
                case .exited, .signaled: return 0
                case .stopped: try Ptrace.cont(tracee.pid)
                }
            }
        }
        let result: Int64
        switch args.count {
        case 0: result = try tracee.syscall(number)
        case 1: result = try tracee.syscall(number, args[0])
        case 2: result = try tracee.syscall(number, args[0], args[1])
        case 3: result = try tracee.syscall(number, args[0], args[1], args[2])
        default: result = try tracee.syscall(number, args[0], args[1], args[2], args[3])
        }
        if result < 0 { throw SyscallError("injected \(what)", errno: .init(rawValue: Int32(-result)), pid: tracee.pid) }
        return result
    }

    /// `inject` with its arguments in an array, for code outside Restorer.
    func injectArguments(_ tracee: Tracee, _ number: Int, _ arguments: [UInt64], _ what: String) throws {
        switch arguments.count {
        case 0: _ = try inject(tracee, number, what: what)
        case 1: _ = try inject(tracee, number, arguments[0], what: what)
        case 2: _ = try inject(tracee, number, arguments[0], arguments[1], what: what)
        case 3: _ = try inject(tracee, number, arguments[0], arguments[1], arguments[2], what: what)
        default: _ = try inject(tracee, number, arguments[0], arguments[1], arguments[2], arguments[3], what: what)
        }
    }

    // MARK: - One process

    /// One process, in order: what it is sent, its memory, its threads, its task
    /// state, its descriptors and what their kinds do once installed, and last
    /// its limits, credentials and seccomp filters.
    func restoreProcess(_ process: RestoringProcess, image: Image, descriptions: [FileDescriptor], sharedMemory: [FileDescriptor],
                        session: RestoreSession) throws {
        let slots = try openSlots(process, image: image, descriptions: descriptions, sharedMemory: sharedMemory, session: session)
        defer { slots.closeOwned() }
        // The last receive of descriptors runs in one stop with the memory, the state with the descriptors' installing.
        let receive = try send(slots, to: process, session: session)
        // With its memory in already, the receive rides in the stop of the task state (nothing before it needs the slots).
        var pendingReceive: [ParasiteCommand] = []
        if !process.memoryRestored {
            // Commonly the whole process in this one stop: memory, state, descriptors, credentials.
            let tail = try oneStopTail(process, image: image, slots: slots)
            if try restoreMemory(process, image: image, slots: slots, session: session, after: receive, then: tail ?? []), tail != nil {
                logger.trace("pid \(process.pid): restored in one stop")
                try DescriptorKinds.afterInstall(InstalledDescriptors(descriptors: process.image.descriptors.descriptors, files: image.fileTable.files,
                                                                      finishedOnce: { session.finishOnce($0) }),
                                                 parasite: process.parasite)
                try restoreCredentials(process, limitsAndLeaderDone: true)
                return
            }
        } else if let lazy = process.lazyLater {
            try process.parasite.run(batch: receive)
            try registerLazy(process, lazy, image: image, slots: slots, session: session)
        } else {
            pendingReceive = receive
        }
        try restoreProcessAttributes(process)
        try cloneThreads(process)
        let state = try restoreTaskState(process, slots: slots, after: pendingReceive)
        // Commonly the credentials ride in that stop too, their limits set from outside before it.
        if !state.isEmpty && credentialsCanRide(process, image: image, slots: slots) {
            try restoreLimits(process)
            try installDescriptors(process, image: image, slots: slots, session: session, after: state,
                                   then: [ParasiteCommand(command: CRYO_CMD_RESTORE_CREDS, payload: process.image.core.parasiteCredentials)])
            try restoreCredentials(process, limitsAndLeaderDone: true)
        } else {
            try installDescriptors(process, image: image, slots: slots, session: session, after: state)
            try restoreCredentials(process)
        }
    }

    /// A single-threaded process with nothing to inject between its memory and its state (no loginuid or
    /// membarrier to set, no timers or timer slack, credentials that can ride): its state, descriptors and
    /// credentials, to run in the stop of its memory. Its resource limits are set from outside first, so
    /// they must not bite the memory or what it receives: RLIMIT_AS and RLIMIT_MEMLOCK unchanged or
    /// unlimited, every slot (and the userfaultfd's above them) below RLIMIT_NOFILE. Nil: the usual stops.
    func oneStopTail(_ process: RestoringProcess, image: Image, slots: TaskSlots) throws -> [ParasiteCommand]? {
        let task = process.image
        let why = task.threads.count != 1 ? "threads" : !(task.signals.posixTimers ?? []).isEmpty ? "timers"
            : !credentialsCanRide(process, image: image, slots: slots) ? "credentials" : !limitsHarmlessBeforeMemory(process, slots: slots) ? "limits"
            : attributesNeedInjection(process) ? "attributes" : timerSlackNeedsSetting(process) ? "timer slack" : nil
        if let why {
            logger.trace("pid \(process.pid): more than one stop (\(why))")
            return nil
        }
        try restoreLimits(process)
        return [taskStateCommand(process, slots: slots), installCommand(process, slots: slots, round: slots.firstDescription..<slots.sent, closeFrom: slots.controlFD),
                ParasiteCommand(command: CRYO_CMD_RESTORE_CREDS, payload: task.core.parasiteCredentials)]
    }

    func limitsHarmlessBeforeMemory(_ process: RestoringProcess, slots: TaskSlots) -> Bool {
        let limits = process.image.core.resourceLimits
        func soft(_ resource: Int) -> UInt64? { limits.indices.contains(resource) && limits[resource].count == 2 ? limits[resource][0] : nil }
        for resource in [9 /* RLIMIT_AS */, 8 /* RLIMIT_MEMLOCK */] {
            guard let wanted = soft(resource), wanted != UInt64.max else { continue }
            guard process.inherited.limits.indices.contains(resource), process.inherited.limits[resource].soft == wanted else { return false }
        }
        return soft(Int(RLIMIT_NOFILE.rawValue)).map { $0 > UInt64(slots.fd(slots.toSend.count)) } ?? true
    }

    /// Whether RESTORE_CREDS may run in the stop of the state and descriptors (one thread, one round of
    /// descriptors, nothing for their kinds to do once installed, no seccomp filter), with the resource limits set before
    /// them: none that they would meet (descriptors at or above RLIMIT_NOFILE, signals to queue against
    /// RLIMIT_SIGPENDING, PR_SET_MM_MAP checked against a finite RLIMIT_DATA).
    func credentialsCanRide(_ process: RestoringProcess, image: Image, slots: TaskSlots) -> Bool {
        let (task, files) = (process.image, image.fileTable.files)
        let limits = task.core.resourceLimits
        func soft(_ resource: Int) -> UInt64? { limits.indices.contains(resource) && limits[resource].count == 2 ? limits[resource][0] : nil }
        let installed = InstalledDescriptors(descriptors: task.descriptors.descriptors, files: files, finishedOnce: { _ in true })
        // Seccomp filters go in before the credentials (restoreCredentials).
        return process.threads.count == 1 && slots.sent == slots.toSend.count && task.seccompPlan.isEmpty
            && !DescriptorKinds.hasAfterInstallWork(installed)
            && !task.descriptors.descriptors.contains { files[$0.file].owner != nil || files[$0.file].kind == PidfdState.name }
            && task.signals.pending.isEmpty && task.threads.allSatisfy { $0.pending.isEmpty }
            && soft(Int(RLIMIT_DATA.rawValue)).map { $0 == UInt64.max } ?? true
            && soft(Int(RLIMIT_NOFILE.rawValue)).map { limit in task.descriptors.descriptors.allSatisfy { UInt64($0.fd) < limit } } ?? true
            // A receive that rides in the same stop (restoreProcess) puts every slot below the limit too.
            && soft(Int(RLIMIT_NOFILE.rawValue)).map { UInt64(slots.fd(slots.toSend.count)) < $0 } ?? true
    }

    /// A process whose children share its private memory copy-on-write gets its memory now,
    /// before they are cloned, so they start with it (CopyOnWrite.swift). It receives only
    /// what its mappings need and closes it again: its children must not inherit those.
    func restoreMemoryEarly(_ process: RestoringProcess, image: Image, descriptions: [FileDescriptor], sharedMemory: [FileDescriptor],
                            session: RestoreSession) throws {
        let slots = try openSlots(process, image: image, descriptions: descriptions, sharedMemory: sharedMemory, session: session,
                                  memoryOnly: true)
        defer { slots.closeOwned() }
        let receive = try send(slots, to: process, session: session)
        // In the same stop: an INSTALL_FDS of nothing closes every slot and the control socket after the memory is in.
        var close = cryo_install_fds()
        close.close_from = slots.controlFD
        try restoreMemory(process, image: image, slots: slots, session: session, early: true, after: receive,
                          then: [ParasiteCommand(command: CRYO_CMD_INSTALL_FDS, payload: bytes(of: close))])
        process.memoryRestored = true
    }

    /// Everything the task receives over its control socket: page files, cwd, root, exe,
    /// the files behind its mappings and its open file descriptions (`memoryOnly`: the first two kinds).
    func openSlots(_ process: RestoringProcess, image: Image, descriptions: [FileDescriptor], sharedMemory: [FileDescriptor],
                   session: RestoreSession, memoryOnly: Bool = false) throws -> TaskSlots {
        let task = process.image
        let pid = process.pid  // as this namespace sees it
        let imagePid = task.core.pid
        let slots = TaskSlots(controlFD: Restorer.controlFD(process.filesOwner ?? task))
        do {
            slots.pages = try task.pageIndex.fileSizes.indices.map { slots.add(try Files.open(image.paths.pages(imagePid, part: $0), .readOnly)) }
            if !shareMemory && task.pageIndex.compression == nil {
                for pid in process.ancestorRuns(in: image).keys.sorted() {
                    let index = image.task(pid)!.pageIndex
                    slots.ancestorPages[pid] = try index.fileSizes.indices.map { slots.add(try Files.open(image.paths.pages(pid, part: $0), .readOnly)) }
                }
            }
            if !memoryOnly {
            // A directory that still exists, the executable and mapped files are opened once for the whole
            // tree (they only need some description of the file): most processes share them.
            func directory(_ path: String, removed: RemovedDirectory?, what: String) throws -> Int {
                if removed != nil {
                    return slots.add(try openDirectory(path, removed: removed, what: what, image: image, descriptions: descriptions, session: session))
                }
                return slots.add(try session.sharedFile("dir:\(path)") { try openDirectory(path, what: what) }.fd, owned: false)
            }
            slots.cwd = try directory(task.core.cwd, removed: task.core.cwdRemoved, what: "working directory of pid \(pid)")
            slots.root = task.core.root == "/" ? nil : try directory(task.core.root, removed: task.core.rootRemoved, what: "root directory of pid \(pid)")
            slots.exe = (try? session.sharedFile("exe:\(task.core.exe)") { try Files.open(task.core.exe, .readOnly) }).map { slots.add($0.fd, owned: false) }
            }
            for m in task.memory.mappings {
                if let id = m.shmem {
                    // The object cryo made; read-write, as MAP_SHARED|MAP_ANONYMOUS opens it (mprotect may add PROT_WRITE).
                    let key = "shmem:\(id)"
                    if slots.mappings[key] == nil { slots.mappings[key] = slots.add(sharedMemory[id], owned: false) }
                } else if m.kind == .memfd, let file = m.file {
                    // A new description of the restored memfd, with the access the mapping needs (or may need: VM_MAYWRITE).
                    let writable = m.needsWritableFile
                    let key = "memfd\(writable ? "rw" : "r"):\(file)"
                    if slots.mappings[key] != nil { continue }
                    guard descriptions.indices.contains(file), image.fileTable.files[file].kind == MemfdState.name else {
                        throw CryoError("pid \(pid): mapping 0x\(hex(m.start)) names file #\(file), which is not a memfd")
                    }
                    if writable, let own = session.memfdOwnDescription(of: file, in: image.fileTable.files) {
                        // memfd_create's own description, which is no writer of the file: exec of the memfd works as before.
                        slots.mappings[key] = slots.add(descriptions[own], owned: false)
                    } else {
                        slots.mappings[key] = slots.add(try openForMapping("/proc/self/fd/\(descriptions[file].rawValue)", m, pid: imagePid))
                    }
                } else if m.kind == .packetRing, let file = m.file {
                    // The socket itself, its rings set up when it was made: a socket cannot be opened again by path.
                    let key = "packetRing:\(file)"
                    if slots.mappings[key] != nil { continue }
                    guard descriptions.indices.contains(file), image.fileTable.files[file].kind == PacketSocketState.name else {
                        throw CryoError("pid \(pid): mapping 0x\(hex(m.start)) names file #\(file), which is not a packet socket")
                    }
                    slots.mappings[key] = slots.add(descriptions[file], owned: false)
                } else if m.kind == .file, m.deleted == true, let file = m.file {
                    // A new description of the restored ghost (or the file other links reach), with the access the mapping needs.
                    let writable = m.needsWritableFile
                    let key = "deleted\(writable ? "rw" : "r"):\(file)"
                    if slots.mappings[key] != nil { continue }
                    guard descriptions.indices.contains(file), image.fileTable.files[file].kind == RegularFileState.name else {
                        throw CryoError("pid \(pid): mapping 0x\(hex(m.start)) names file #\(file), which is not a regular file")
                    }
                    slots.mappings[key] = slots.add(try openForMapping("/proc/self/fd/\(descriptions[file].rawValue)", m, pid: imagePid))
                } else if m.kind == .file {
                    let writable = m.needsWritableFile
                    let key = "\(writable ? "rw" : "r"):\(m.path!)"
                    if slots.mappings[key] != nil { continue }
                    let file = try session.sharedFile("map:\(key)") {
                        let fd = try openForMapping(m.path!, m, pid: imagePid)
                        do { return (fd, try Files.stat(fd, object: m.path!)) } catch { try? fd.close(); throw error }
                    }
                    let slot = slots.add(file.fd, owned: false)
                    let st = file.stat!
                    if let inode = m.inode, let device = m.device, UInt64(st.st_ino) != inode || UInt64(st.st_dev) != device {
                        throw CryoError("pid \(pid): mapped file \(m.path!) was replaced since the dump (inode \(inode) is now \(st.st_ino))")
                    }
                    slots.mappings[key] = slot
                }
            }
            slots.firstDescription = slots.toSend.count
            for d in task.descriptors.descriptors where slots.descriptions[d.file] == nil && !memoryOnly {
                slots.descriptions[d.file] = slots.add(descriptions[d.file], owned: false)
            }
        } catch {
            slots.closeOwned()
            throw error
        }
        return slots
    }

    /// The file behind mapping `m`, opened with the access it needs. A shared mapping that mprotect may
    /// make writable (VM_MAYWRITE) needs its file read-write even while it is read-only: opened read-only,
    /// that mprotect would fail with EACCES after the restore. A file that no longer opens so fails the restore.
    func openForMapping(_ path: String, _ m: MemoryRecord.Mapping, pid: pid_t) throws -> FileDescriptor {
        do {
            return try Files.open(path, m.needsWritableFile ? .readWrite : .readOnly)
        } catch {
            let range = "0x\(hex(m.start))-0x\(hex(m.end))"
            if m.needsWritableFile && !m.protection.contains("w") {
                throw CryoError("pid \(pid): mapping \(range) (\(m.path ?? path)) is shared and was mapped from a read-write "
                    + "descriptor, so mprotect may make it writable; its file must open read-write: \(error)")
            }
            throw CryoError("pid \(pid): mapping \(range) of a file: \(error)")
        }
    }

    /// The parasite connects to cryo and receives the slots' descriptors: all of them, or
    /// (when they would not fit under RLIMIT_NOFILE above the task's own descriptors) as many
    /// as fit; installDescriptors sends the other descriptions in rounds. Returns the last
    /// RECV_FDS, for the caller to run in the stop of its next command.
    func send(_ slots: TaskSlots, to process: RestoringProcess, session: RestoreSession) throws -> [ParasiteCommand] {
        var limit = rlimit()
        let soft = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 ? Int(min(limit.rlim_cur, 1 << 30)) : Int.max
        // One number above the slots stays free for the lazy userfaultfd.
        slots.capacity = soft == Int.max ? slots.toSend.count : max(0, soft - Int(slots.controlFD) - 2)
        if slots.capacity < slots.toSend.count && slots.capacity <= slots.firstDescription {
            throw CryoError("pid \(process.pid): its descriptors reach \(slots.controlFD - 1) and cryo's RLIMIT_NOFILE is \(soft): "
                + "no room above them for the \(slots.toSend.count) descriptors it must receive")
        }
        slots.sent = min(slots.toSend.count, slots.capacity)
        // A shared table holds its owner's descriptors (installed already, or to be): they stay.
        return try send(slots.toSend[0..<slots.sent], firstSlotFD: slots.fd(0), controlFD: slots.controlFD, closeOthers: process.filesOwner == nil,
                        to: process, session: session)
    }

    static func connectRequest(_ listener: ControlListener, controlFD: Int32) -> cryo_connect {
        var connect = cryo_connect()
        connect.target_fd = controlFD
        connect.address_length = UInt32(listener.address.count)
        withUnsafeMutableBytes(of: &connect.sun_path) { raw in
            for (i, b) in listener.address.enumerated() { raw[i] = b }
        }
        return connect
    }

    /// Where a task's control socket goes: above its own descriptors, with the slots above it.
    static func controlFD(_ task: TaskImage) -> Int32 {
        Int32(max((task.descriptors.descriptors.map(\.fd).max() ?? 2) + 1, 3))
    }

    /// Sends `fds` and runs every RECV_FDS but the last, which it returns (none for no descriptors).
    /// Its messages wait in the socket, closed on cryo's side, until the task reads them.
    func send(_ fds: ArraySlice<FileDescriptor>, firstSlotFD: Int32, controlFD: Int32, closeOthers: Bool,
              to process: RestoringProcess, session: RestoreSession) throws -> [ParasiteCommand] {
        let (pid, parasite) = (process.pid, process.parasite)
        let connection: FileDescriptor
        if let kept = session.takeConnection(for: process.image.core.pid) {
            connection = kept  // connected at its clone, at controlFD (the first send only)
        } else {
            let listener = try session.listener(lane: process.lane)
            _ = try parasite.run(CRYO_CMD_CONNECT, input: Restorer.connectRequest(listener, controlFD: controlFD), output: UInt8.self)
            connection = try listener.accept()
        }
        defer { try? connection.close() }
        // Descriptors travel up to 253 a message, and each command takes as many messages as the
        // socket buffer holds (64, as many one-descriptor messages fit) without the parasite
        // reading. An unprivileged sender may have at most RLIMIT_NOFILE descriptors in flight.
        let perMessage = Int(CRYO_FDS_PER_MESSAGE)
        var limit = rlimit()
        let inFlight = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 ? Int(min(limit.rlim_cur, 1 << 30)) / 2 : 1024
        let batch = max(perMessage, min(64 * perMessage, inFlight / perMessage * perMessage))
        var last: [ParasiteCommand] = []
        for start in stride(from: fds.startIndex, to: fds.endIndex, by: batch) {
            try parasite.run(batch: last)
            let end = min(start + batch, fds.endIndex)
            for first in stride(from: start, to: end, by: perMessage) {
                try Pidfd.send(fds[first..<min(first + perMessage, end)], over: connection, to: pid)
            }
            var recv = cryo_recv_fds()
            recv.control_fd = controlFD
            recv.first_slot_fd = firstSlotFD + Int32(start - fds.startIndex)
            recv.count = UInt32(end - start)
            recv.close_others = start == fds.startIndex && closeOthers ? 1 : 0
            last = [ParasiteCommand(command: CRYO_CMD_RECV_FDS, payload: bytes(of: recv))]
        }
        return last
    }

    /// `early`: before the children are cloned (restoreMemoryEarly): the lazy part is registered later,
    /// once they exist, so that no fork meets a registered userfaultfd.
    /// `after`: commands to run in the same stop, before RESTORE_MEMORY; `then`: after it, when no more memory
    /// work follows here (always `early`); returns whether they ran.
    @discardableResult
    func restoreMemory(_ process: RestoringProcess, image: Image, slots: TaskSlots, session: RestoreSession, early: Bool = false,
                       after pending: [ParasiteCommand] = [], then following: [ParasiteCommand] = []) throws -> Bool {
        let (task, pid, imagePid, parasite) = (process.image, process.pid, process.image.core.pid, process.parasite)
        let current = try readMappings(pid: pid, withFlags: false)
        let parasiteRange = parasite.base..<(parasite.base + parasite.size)
        // Eagerly, a small process's pages go in faster through the parasite's own reads than
        // through a userfaultfd (one more command, a descriptor copy, the loader's wakeups).
        let ancestors = shareMemory ? [:] : process.ancestorRuns(in: image)
        // Pages from the parent's image go in eagerly, with the child's own pages of those mappings.
        let eagerMappings = shareMemory ? process.sharedMappings : Set(task.memory.mappings.filter { $0.inherited == true }.map(\.start))
        var extraRuns: [cryo_page_run] = []
        for (pid, runs) in ancestors where task.pageIndex.compression == nil {
            let index = image.task(pid)!.pageIndex
            guard index.compression == nil else { continue }
            for run in runs {
                var address = run.address
                for piece in index.pieces(offset: run.offset, length: run.length) {
                    extraRuns.append(cryo_page_run(address: address, length: piece.length, file_offset: piece.offset,
                                                   fd: slots.fd(slots.ancestorPages[pid]![piece.part]), pad: 0))
                    address += piece.length
                }
            }
        }
        let lazy = session.lazy.map { _ in LazySplit(task: task, eagerMappings: eagerMappings) }.flatMap { split in
            session.eagerThroughUffd && split.pendingBytes < Restorer.eagerUffdMinimumBytes ? nil : split
        }
        let plan = try MemoryRestorePlan(
            record: task.memory, index: lazy?.eagerIndex ?? task.pageIndex, current: current, parasite: parasiteRange,
            temporary: parasiteRange.upperBound + 0x10_0000, pagesFDs: slots.pages.map(slots.fd),
            fileFD: { m in
                if let id = m.shmem { return slots.fd(slots.mappings["shmem:\(id)"]!) }
                if m.deleted == true { return slots.fd(slots.mappings["deleted\(m.needsWritableFile ? "rw" : "r"):\(m.file!)"]!) }
                if m.kind == .packetRing { return slots.fd(slots.mappings["packetRing:\(m.file!)"]!) }
                if m.kind == .memfd { return slots.fd(slots.mappings["memfd\(m.needsWritableFile ? "rw" : "r"):\(m.file!)"]!) }
                return slots.fd(slots.mappings["\(m.needsWritableFile ? "rw" : "r"):\(m.path!)"]!)
            },
            oldRseq: try Ptrace.rseqConfiguration(pid), keepInherited: shareMemory, extraRuns: extraRuns,
            ancestorGuards: shareMemory && task.memory.mappings.contains { $0.inherited == true } && image.tasks.contains { $0.memory.guards != nil })
        let thpToSet = task.memory.thpDisable != nil || (process.sharesMemory && session.thpDisableMayBeInherited)
        let compressed = task.pageIndex.compression != nil || ancestors.keys.contains { image.task($0)!.pageIndex.compression != nil }
        let moreFollows = !early && (lazy != nil || thpToSet || compressed || task.memory.mappings.contains { $0.kind == .aioRing })
        try parasite.run(batch: pending + [ParasiteCommand(command: CRYO_CMD_RESTORE_MEMORY, payload: plan.payload)] + (moreFollows ? [] : following))
        for m in task.memory.mappings where m.kind == .aioRing {
            try AioRing.restore(m, events: m.aioEvents!, contents: task.memory.aioRings?.first { $0.ring == m.start },
                                tracee: process.tracee, parasite: parasite)
        }
        if let thp = task.memory.thpDisable {
            // PR_SET_THP_DISABLE, with PR_THP_DISABLE_EXCEPT_ADVISED (bit 1) if it was set.
            let result = try process.tracee.syscall(157 /* prctl */, 41, 1, UInt64(thp & ~1), 0, 0)
            if result < 0 { throw SyscallError("injected prctl(PR_SET_THP_DISABLE)", errno: .init(rawValue: Int32(-result)), pid: pid) }
        } else if process.sharesMemory && session.thpDisableMayBeInherited {
            // The flag belongs to the address space, which a fork copies from the parent.
            let result = try process.tracee.syscall(157 /* prctl */, 41, 0, 0, 0, 0)
            if result < 0 { throw SyscallError("injected prctl(PR_SET_THP_DISABLE, 0)", errno: .init(rawValue: Int32(-result)), pid: pid) }
        }
        for (pid, runs) in ancestors where task.pageIndex.compression != nil || image.task(pid)!.pageIndex.compression != nil {
            // Compressed pages are not the parasite's to read: written from here, like the task's own.
            let index = image.task(pid)!.pageIndex
            try task.memory.fillPages(pid: process.pid, from: PageReader(path: image.paths.pages(pid), index: PageIndex(header: index.header, runs: runs),
                                                                          streamBytes: index.pageBytes))
        }
        if task.pageIndex.compression != nil {
            try task.memory.fillPages(pid: pid, from: PageReader(path: image.paths.pages(imagePid), index: lazy?.eagerIndex ?? task.pageIndex,
                                                                     streamBytes: task.pageIndex.pageBytes))
        }
        // Registered after the eager pages are in place, so filling them meets no fault.
        if early {
            process.lazyLater = lazy
        } else if let lazy {
            try registerLazy(process, lazy, image: image, slots: slots, session: session)
        }
        faultHook("memory-restored")
        return !moreFollows
    }

    /// Mappings sealed at dump are sealed last, when nothing changes them any more: a parent restored
    /// early (copy-on-write) has cloned its children by now, and they have unmapped what they do not keep.
    func sealMemory(_ process: RestoringProcess) throws {
        let ranges = process.image.memory.mappings.filter { $0.advice & CRYO_VMA_SEALED != 0 }.map { cryo_range(start: $0.start, end: $0.end) }
        guard !ranges.isEmpty else { return }
        var header = cryo_seal_memory()
        header.count = UInt32(ranges.count)
        try process.parasite.run(CRYO_CMD_SEAL_MEMORY, payload: bytes(of: header) + bytes(of: ranges), replyBytes: 0)
    }

    /// A task can inherit PR_SET_THP_DISABLE only from cryo or from a restored task that had it;
    /// when none did, clearing it costs an injected syscall per process for nothing.
    static func thpDisableMayBeInherited(_ image: Image) -> Bool {
        image.tasks.contains { $0.memory.thpDisable != nil } || (try? ProcessControl.transparentHugePagesDisabled()) != false
    }

    /// The userfaultfd that loads the pages left out of RESTORE_MEMORY, handed to the lazy server.
    func registerLazy(_ process: RestoringProcess, _ lazy: LazySplit, image: Image, slots: TaskSlots, session: RestoreSession) throws {
        let (task, pid, imagePid, parasite) = (process.image, process.pid, process.image.core.pid, process.parasite)
        if let server = session.lazy, !lazy.ranges.isEmpty, !lazy.pending.isEmpty {
            // A slot above every received descriptor: INSTALL_FDS closes the task's copy.
            var request = cryo_lazy_uffd()
            request.target_fd = slots.fd(slots.sent)
            let ranges = LazySplit.registrationRanges(lazy.ranges, occupied: task.memory.mappings.map { $0.start..<$0.end }
                                                          + [parasite.base..<(parasite.base + parasite.size)])
            request.range_count = UInt32(ranges.count)
            request.features = Userfaultfd.lazyFeatures
            try parasite.run(CRYO_CMD_LAZY_UFFD, payload: bytes(of: request) + bytes(of: ranges), replyBytes: 0)
            let uffd = try Pidfd.copy(of: request.target_fd, from: pid)
            let source = PageSource(reader: try PageReader(path: image.paths.pages(imagePid), index: task.pageIndex),
                                    remote: options.remotePages.map { ($0, imagePid) })
            let pending = PendingPages(lazy.pending)
            logger.debug("pid \(pid): \(lazy.ranges.count) lazy mappings, \(pending.bytes / 4096) pages to load lazily")
            try server.add(LazyProcess(uffd: Userfaultfd(fd: uffd, pid: pid), source: source, pending: pending, pid: pid, label: "pid \(pid)"))
        }
    }

    /// Threads join the rebuilt address space with their own tids.
    func cloneThreads(_ process: RestoringProcess) throws {
        let threadFlags: UInt64 = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000 | 0x200000 // VM FS FILES SIGHAND THREAD SYSVSEM CHILD_CLEARTID
        for record in process.image.threads.dropFirst() {
            let thread = try clone(into: process, pid: record.tid, flags: threadFlags, childTid: record.clearChildTid)
            process.threads.append(thread)
        }
    }

    /// Signals, mm fields, cwd, root, exe, every thread's own state and the POSIX timers.
    /// A single-threaded process with no timers to set gets its RESTORE_STATE back, to run in
    /// one stop with its first INSTALL_FDS; otherwise it runs here, and none is returned.
    /// `after`: commands to run in its stop, before it (the last RECV_FDS, which brings its cwd).
    func restoreTaskState(_ process: RestoringProcess, slots: TaskSlots, after pending: [ParasiteCommand] = []) throws -> [ParasiteCommand] {
        let (task, parasite) = (process.image, process.parasite)
        let restoreState = taskStateCommand(process, slots: slots)
        if process.threads.count == 1 && (task.signals.posixTimers ?? []).isEmpty && !timerSlackNeedsSetting(process) {
            return pending + [restoreState]
        }
        try parasite.run(batch: pending + [restoreState])
        for (thread, record) in zip(process.threads, task.threads).dropFirst() {
            try parasite.run(CRYO_CMD_RESTORE_THREAD, payload: record.parasiteStateBytes, replyBytes: 0, on: thread)
        }
        try restoreTimerSlack(process)
        if let timers = task.signals.posixTimers, !timers.isEmpty {
            try parasite.run(CRYO_CMD_RESTORE_TIMERS, payload: PosixTimer.restorePayload(timers), replyBytes: 0)
        }
        return []
    }

    /// RESTORE_STATE with the leader's RESTORE_THREAD riding along.
    /// From this command on, cryo's int3s would change a SIGTRAP it leaves ignored or pending: none in the process then.
    func taskStateCommand(_ process: RestoringProcess, slots: TaskSlots) -> ParasiteCommand {
        let task = process.image
        if task.signals.trapNeedsNoBreakpoints(threads: task.threads) {
            let busy = task.signals.busySignals(threads: task.threads)
            for thread in process.threads { thread.avoidBreakpoints(pending: busy) }
        }
        var state = cryo_task_state()
        var extra = cryo_restore_extra()
        task.signals.fill(&state, &extra)
        fillState(&state, &extra, core: task.core, cwd: slots.fd(slots.cwd), root: slots.root.map(slots.fd), exe: slots.exe.map(slots.fd))
        state.lock_future = Int64(task.memory.lockFuture ?? 0)
        if process.discardChildSignals && !task.signals.pending.contains(where: { $0.signal == SIGCHLD }) {
            extra.discard_signals = 1 << UInt64(SIGCHLD - 1)
        }
        // The leader's RESTORE_THREAD rides along (after the state, as before); the other threads follow.
        extra.leader_follows = 1
        // The extra and the thread state each end in their queued signals, sent only as far as used.
        let extraBytes = trimmedSignals(of: extra, signalsAt: MemoryLayout<cryo_restore_extra>.offset(of: \.signals)!,
                                        count: Int(extra.signal_count))
        return ParasiteCommand(command: CRYO_CMD_RESTORE_STATE, payload: bytes(of: state) + extraBytes + task.threads[0].parasiteStateBytes)
    }

    /// Each descriptor to its number, then what its kind does in the task (epoll targets, locks).
    /// `after`: commands to run in the stop of the first INSTALL_FDS, before it; `then`: in the stop of the last, after it.
    func installDescriptors(_ process: RestoringProcess, image: Image, slots: TaskSlots, session: RestoreSession,
                            after pending: [ParasiteCommand] = [], then following: [ParasiteCommand] = []) throws {
        let (task, parasite) = (process.image, process.parasite)
        // Rounds of description slots: those sent already, then (more than RLIMIT_NOFILE allows at once)
        // the rest in turn, each received where the round before was, installed, and closed.
        var rounds = [slots.firstDescription..<slots.sent]
        let room = max(1, slots.capacity - slots.firstDescription)
        for start in stride(from: slots.sent, to: slots.toSend.count, by: room) { rounds.append(start..<min(start + room, slots.toSend.count)) }
        for (n, round) in rounds.enumerated() {
            var before = n == 0 ? pending : []
            if n > 0 {
                before = try send(slots.toSend[round], firstSlotFD: slots.fd(slots.firstDescription), controlFD: slots.controlFD,
                                  closeOthers: false, to: process, session: session)
            }
            let install = installCommand(process, slots: slots, round: round,
                                         closeFrom: n == rounds.count - 1 ? slots.controlFD : slots.fd(slots.firstDescription))
            try parasite.run(batch: before + [install] + (n == rounds.count - 1 ? following : []))
        }

        try DescriptorKinds.afterInstall(InstalledDescriptors(descriptors: task.descriptors.descriptors, files: image.fileTable.files,
                                                              finishedOnce: { session.finishOnce($0) }),
                                         parasite: parasite)
    }

    /// INSTALL_FDS of one round of description slots (received where the first one is): each descriptor
    /// from its slot to its number, then every fd from `closeFrom` up closed.
    func installCommand(_ process: RestoringProcess, slots: TaskSlots, round: Range<Int>, closeFrom: Int32) -> ParasiteCommand {
        let entries = process.image.descriptors.descriptors.compactMap { d -> cryo_fd_install? in
            guard let slot = slots.descriptions[d.file], round.contains(slot) else { return nil }
            return cryo_fd_install(from: slots.fd(slots.firstDescription + slot - round.lowerBound), to: d.fd, cloexec: d.closeOnExec ? 1 : 0, pad: 0)
        }
        var install = cryo_install_fds()
        install.count = UInt32(entries.count)
        install.close_from = closeFrom
        return ParasiteCommand(command: CRYO_CMD_INSTALL_FDS, payload: bytes(of: install) + bytes(of: entries))
    }

    /// Resource limits, then seccomp filters, then credentials.
    /// `limitsAndLeaderDone`: the limits and a single thread's credentials are in already (credentialsCanRide).
    func restoreCredentials(_ process: RestoringProcess, limitsAndLeaderDone: Bool = false) throws {
        let (task, parasite) = (process.image, process.parasite)
        if !limitsAndLeaderDone { try restoreLimits(process) }
        // Seccomp filters while the task still has cryo's credentials: one installed by a privileged task that
        // dropped them later, without no_new_privs, would be refused (EACCES) once they are dropped. Suspended
        // for us while traced, they do not act on the parasite's setresuid and capset. Oldest first: those all
        // threads share synced to every thread, then each thread's own.
        for (thread, state, synced) in task.seccompPlan {
            try parasite.run(CRYO_CMD_RESTORE_SECCOMP, payload: state.parasitePayload(synced: synced), replyBytes: 0, on: process.threads[thread])
        }
        // Credentials belong to each thread; the leader goes last.
        for thread in process.threads.reversed() where !limitsAndLeaderDone {
            try parasite.run(CRYO_CMD_RESTORE_CREDS, payload: task.core.parasiteCredentials, replyBytes: 0, on: thread)
        }
        try restoreParentDeathSignals(process)
    }

    /// Last for each process: the parasite goes, and every thread gets its registers (it runs only once released).
    func restoreRegisters(_ process: RestoringProcess) throws {
        process.tracee.syscallSite = process.image.threads[0].registers.rip
        try process.parasite.remove()
        for (thread, record) in zip(process.threads, process.image.threads) { try record.restore(pid: thread.pid) }
    }

    /// Resource limits and oom_score_adj, from outside, before the credentials (which may take cryo's right to).
    func restoreLimits(_ process: RestoringProcess) throws {
        try process.image.core.restoreResourceLimits(pid: process.pid, current: &process.inherited.limits)
        try process.image.core.restoreOOMScoreAdjust(pid: process.pid, current: &process.inherited.oomScoreAdjust)
    }

    /// Waits (at most 2 s) until a new task blocks in read() (syscall 0), where it parks.
    func waitUntil(parkedIn pid: pid_t) {
        for _ in 0..<20_000 {
            if let text = try? Files.readString("/proc/\(pid)/syscall"), text.hasPrefix("0 ") { return }
            usleep(100)
        }
    }

    /// A just-dumped process may linger as a zombie until its parent (often
    /// init, for the rest of a killed tree) reaps it: give that a moment.
    func waitUntilReaped(_ pid: pid_t) -> Bool {
        for _ in 0..<300 {
            guard let stat = try? ProcStat(pid: pid) else { return true }
            guard stat.state == "Z" || stat.state == "X" else { return false }
            usleep(10_000)
        }
        return !Files.exists("/proc/\(pid)")
    }

    func pidInUse(_ pid: pid_t) -> CryoError {
        let stat = try? ProcStat(pid: pid)
        let holder = stat?.comm ?? "another process"
        if stat?.state == "Z" {
            return CryoError("pid \(pid) is in use by `\(holder)` (pid \(pid)), a zombie its parent pid \(stat!.ppid) has not reaped yet; "
                + "reap it before restoring (clone3 set_tid: EEXIST)")
        }
        return CryoError("pid \(pid) is in use by `\(holder)` (pid \(pid)); stop it before restoring (clone3 set_tid: EEXIST)")
    }

    func openDirectory(_ path: String, what: String) throws -> FileDescriptor {
        try FileObjects.open(path, flags: O_RDONLY | O_DIRECTORY, object: what)
    }

    /// A cwd or root; one that was removed is the removed directory a description
    /// or another process already made again, else made again here.
    func openDirectory(_ path: String, removed: RemovedDirectory?, what: String, image: Image, descriptions: [FileDescriptor],
                       session: RestoreSession) throws -> FileDescriptor {
        guard let removed else { return try openDirectory(path, what: what) }
        let key = "\(removed.device):\(removed.inode)"
        let made = try session.removedDirectory(key) {
            let described = DirectoryState.entries(image.fileTable.files).first { $0.state.removed?.sameDirectory(removed) == true }
            return try described.map { try FileObjects.duplicate(descriptions[$0.file.id], object: what) }
                ?? removed.make(fallback: image.paths.directory, object: what)
        }
        return try openDirectory("/proc/self/fd/\(made.rawValue)", what: what)
    }

    /// Entries of cryo's descriptor table made up front (32 KiB of it): every description of a tree of
    /// some 3000 descriptors, cryo's own sockets and the pages files it holds open at once.
    static let descriptorsReservedFirst = 4096

    /// Grows cryo's descriptor table to `count` entries (when RLIMIT_NOFILE allows), so that opening
    /// that many never grows it again; a table that large already stays.
    static func reserveDescriptors(_ count: Int) {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
        let highest = Int32(clamping: Int64(clamping: min(UInt64(max(count, 1)), UInt64(limit.rlim_cur))) - 1)
        guard highest > 0, let probe = try? FileObjects.eventfd(count: 0, semaphore: false, nonBlocking: false, object: "descriptor table") else { return }
        defer { try? probe.close() }
        let far = fcntl(probe.rawValue, F_DUPFD_CLOEXEC, highest)
        if far >= 0 { close(far) }
    }

    /// The limit raised and the table grown to `descriptorsReservedFirst` entries.
    public static func prepareDescriptorTable() {
        raiseDescriptorLimit()
        reserveDescriptors(descriptorsReservedFirst)
    }

    /// Descriptor slots live above the task's highest fd; make room for them.
    static func raiseDescriptorLimit() {
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
    }

    func fillState(_ state: inout cryo_task_state, _ extra: inout cryo_restore_extra, core: TaskCore,
                   cwd: Int32, root: Int32?, exe: Int32?) {
        state.umask = core.umask
        state.dumpable = core.dumpable
        state.child_subreaper = core.childSubreaper ? 1 : 0
        extra.cwd_fd = cwd
        extra.root_fd = root ?? -1
        extra.personality = core.personality
        withUnsafeMutableBytes(of: &extra.comm) { raw in
            for (i, b) in core.comm.utf8.prefix(15).enumerated() { raw[i] = b }
        }
        extra.set_mm = 1
        let mm = core.mm
        extra.mm = cryo_mm_map(start_code: mm.startCode, end_code: mm.endCode, start_data: mm.startData, end_data: mm.endData,
                               start_brk: mm.startBrk, brk: mm.brk, start_stack: mm.startStack, arg_start: mm.argStart,
                               arg_end: mm.argEnd, env_start: mm.envStart, env_end: mm.envEnd, auxv: 0,
                               auxv_size: UInt32(min(core.auxv.count, Int(CRYO_AUXV_WORDS)) * 8),
                               exe_fd: exe.map { UInt32($0) } ?? UInt32.max)
        withUnsafeMutableBytes(of: &extra.auxv) { raw in
            for (i, word) in core.auxv.prefix(Int(CRYO_AUXV_WORDS)).enumerated() {
                raw.storeBytes(of: word, toByteOffset: i * 8, as: UInt64.self)
            }
        }
    }
}

/// Figures like CRIU's stats-restore, kept in the image folder.
public struct RestoreStatistics: Codable, Sendable {
    public var processes: Int = 0
    public var imageReadSeconds: Double = 0
    public var forkingSeconds: Double = 0
    public var restoreSeconds: Double = 0
    public var totalSeconds: Double = 0
    public var pagesRestored: UInt64 = 0
    /// --lazy-pages only, written once loading ends.
    public var lazy: LazyStatistics?
    /// `cryo receive`: how the image came.
    public var migration: ReceiveStatistics?
}

/// stats-restore of a `cryo receive`: the rounds as they arrived, and the frozen image.
public struct ReceiveStatistics: Codable, Sendable {
    /// Bytes received in each pre-copy round (the first is the full copy).
    public var roundBytes: [UInt64] = []
    /// Bytes of the image sent while the source was frozen, and from its first file to the commit.
    public var frozenImageBytes: UInt64 = 0
    public var frozenImageSeconds: Double = 0
    /// Post-copy: pages still to come when the tree started.
    public var postCopyMissingBytes: UInt64 = 0
    public init() {}
}

/// The descriptors a restored task receives, each at a slot above its own descriptors
/// (slot N arrives as controlFD + 1 + N); cryo closes those it opened for the task.
final class TaskSlots {
    let controlFD: Int32
    private(set) var toSend: [FileDescriptor] = []
    private var owned: [FileDescriptor] = []
    var pages: [Int] = []
    /// Without sharing: the page files of the ancestors whose pages a child left to them, by pid.
    var ancestorPages: [Int32: [Int]] = [:]
    var cwd = 0
    var root: Int?
    var exe: Int?
    /// By mapping key: shmem:ID, memfd(r|rw):FILE, (r|rw):PATH.
    var mappings: [String: Int] = [:]
    /// By file id.
    var descriptions: [Int: Int] = [:]
    /// The slot of the first description (the others follow it).
    var firstDescription = 0
    /// Slots the task can hold at once under RLIMIT_NOFILE, and how many the first send took.
    var capacity = 0
    var sent = 0

    init(controlFD: Int32) { self.controlFD = controlFD }

    func add(_ fd: FileDescriptor, owned isOwned: Bool = true) -> Int {
        toSend.append(fd)
        if isOwned { owned.append(fd) }
        return toSend.count - 1
    }

    func fd(_ slot: Int) -> Int32 { controlFD + 1 + Int32(slot) }

    func closeOwned() {
        for fd in owned { try? fd.close() }
        owned = []
    }
}

/// A file opened once for the tasks of a restore; `stat` taken when opened for a mapping (to check its inode).
typealias SharedFile = (fd: FileDescriptor, stat: Glibc.stat?)

/// What a restore has created so far, to be killed if it fails. Lanes (RestoreLanes.swift)
/// add to it from two threads at once.
final class RestoreSession: @unchecked Sendable {
    private let lock = Lock()
    /// By pid in the image.
    private var processTable: [Int32: RestoringProcess] = [:]
    var processes: [Int32: RestoringProcess] { lock.withLock { processTable } }
    func add(_ process: RestoringProcess, imagePid: Int32) { lock.withLock { processTable[imagePid] = process } }
    var namespaceInit: Tracee?
    /// Descriptions whose in-task work (epoll targets) one process has done for all.
    private var descriptionsFinished = Set<Int>()
    func finishOnce(_ file: Int) -> Bool { lock.withLock { descriptionsFinished.insert(file).inserted } }
    var lazy: LazyServer?
    /// The lazy server only loads eagerly restored memory (no --lazy-pages), in the background.
    var eagerThroughUffd = false
    /// Some task (or cryo) has PR_SET_THP_DISABLE, so a forked one may carry it wrongly.
    var thpDisableMayBeInherited = true
    private var controls: [Int: ControlListener] = [:]
    var lanes: RestoreLanes?

    /// One listening socket per lane for the whole restore; each parasite of the lane connects in turn.
    func listener(lane: Int) throws -> ControlListener {
        try lock.withLock {
            if let control = controls[lane] { return control }
            let made = try ControlListener(name: "cryo-restore-\(getpid())\(lane == 0 ? "" : "-\(lane)")")
            controls[lane] = made
            return made
        }
    }

    /// Control connections of tasks born connected (CLONE_CONNECTED), by pid in the image, until their first send.
    private var connections: [Int32: FileDescriptor] = [:]
    func keepConnection(_ fd: FileDescriptor, for pid: Int32) { lock.withLock { connections[pid] = fd } }
    func takeConnection(for pid: Int32) -> FileDescriptor? { lock.withLock { connections.removeValue(forKey: pid) } }
    func hasConnection(for pid: Int32) -> Bool { lock.withLock { connections[pid] != nil } }

    /// Files every task that needs them receives (a mapped library, the executable, a cwd), opened
    /// once by the first: by "map:(r|rw):PATH", "exe:PATH", "dir:PATH".
    private var memfdOwnDescriptions: [Int: Int]?
    /// MemfdState.ownDescriptions, worked out once.
    func memfdOwnDescription(of file: Int, in files: [FileTable.OpenFile]) -> Int? {
        lock.withLock {
            if memfdOwnDescriptions == nil { memfdOwnDescriptions = MemfdState.ownDescriptions(files) }
            return memfdOwnDescriptions![file]
        }
    }

    private var sharedFiles: [String: SharedFile] = [:]
    func sharedFile(_ key: String, open: () throws -> FileDescriptor) throws -> SharedFile {
        try sharedFile(key) { (try open(), nil) }
    }
    func sharedFile(_ key: String, open: () throws -> (FileDescriptor, Glibc.stat?)) throws -> SharedFile {
        try lock.withLock {
            if let known = sharedFiles[key] { return known }
            let (fd, st) = try open()
            let made = SharedFile(fd: fd, stat: st)
            sharedFiles[key] = made
            return made
        }
    }

    /// Removed directories made again for cwds and roots, by "device:inode" at dump.
    private var removedDirectories: [String: FileDescriptor] = [:]
    func removedDirectory(_ key: String, make: () throws -> FileDescriptor) throws -> FileDescriptor {
        try lock.withLock {
            if let made = removedDirectories[key] { return made }
            let made = try make()
            removedDirectories[key] = made
            return made
        }
    }

    deinit {
        for control in controls.values { control.close() }
        for fd in connections.values { try? fd.close() }
        for fd in removedDirectories.values { try? fd.close() }
        for file in sharedFiles.values { try? file.fd.close() }
    }
    private var createdPids: [pid_t] = []
    var created: [pid_t] { lock.withLock { createdPids } }
    func noteCreated(_ pid: pid_t) { lock.withLock { createdPids.append(pid) } }
    func forgetCreated(_ pid: pid_t) { lock.withLock { createdPids.removeAll { $0 == pid } } }
    var done = false

    func killAll() {
        guard !done else { return }
        let created = self.created
        for pid in created.reversed() { kill(pid, SIGKILL) }
        // A traced leader is reported dead only once its tracer has reaped its other threads.
        for process in processes.values { for thread in process.threads.dropFirst() { _ = try? waitFor(thread.pid) } }
        for pid in created.reversed() { _ = try? waitFor(pid) }
    }
}

func hex(_ value: UInt64) -> String { String(value, radix: 16) }


func waitForStop(_ pid: pid_t) throws -> WaitStatus {
    while true {
        let status = try waitFor(pid)
        switch status {
        case .stopped(_, let event) where event == 128: return status
        case .stopped(let signal, _): try Ptrace.cont(pid, signal: signal == SIGCHLD ? 0 : signal)
        case .exited, .signaled: throw CryoError("pid \(pid) died before it could be traced (\(status))")
        }
    }
}

/// A listening unix socket in the abstract namespace, for the parasite to connect to.
struct ControlListener {
    let socket: FileDescriptor
    let address: [UInt8]  // sun_path bytes, leading NUL included

    init(name: String) throws {
        address = [0] + Array(name.utf8)
        socket = try Sockets.listening(unix: address, type: Int32(SOCK_SEQPACKET.rawValue), backlog: 1, object: "control socket @\(name)")
    }

    func accept() throws -> FileDescriptor {
        try Sockets.acceptBlocking(socket, object: "control socket")
    }

    func close() { try? socket.close() }
}
