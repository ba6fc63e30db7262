import CryoInjector
import CryoSystem
import Glibc

/// Two threads restoring a tree side by side, each driving its own processes.
///
/// ptrace ties a task to the one thread that traces it, and a child cloned by an
/// injected clone3 is traced by its parent's tracer: so lane 1 takes whole subtrees.
/// Lane 0 (the calling thread) clones each subtree's top process into its parent,
/// parks it in pause() with PR_SET_PDEATHSIG(SIGKILL) and lets it go; lane 1
/// seizes it and builds the rest of that subtree itself. While parked it is traced
/// by no one: should cryo die then, its parent (traced, PTRACE_O_EXITKILL) dies
/// and takes it along.
final class RestoreLanes: @unchecked Sendable {
    /// Lane of every live process, by pid in the image (0 unless assigned to lane 1).
    private let lanes: [Int32: Int]
    /// Processes lane 0 clones and parks for lane 1 (lane 1's whose parent is lane 0's).
    let handedOver: Set<Int32>
    /// Handed-over processes and their ancestors: lane 0 clones these first, so that lane 1 can start
    /// at once instead of waiting for lane 0 to come to each of its subtrees in the image's order.
    private let clonedFirst: Set<Int32>
    private let worker: LaneWorker?
    /// With -v: each step's time in each lane (`run(step:)`), to see which lane the other waits for.
    var log: ((String) -> Void)?

    /// One lane for small trees, lazy or namespaced restores and single CPUs.
    init(inventory: Inventory, parallel: Bool) {
        let live = inventory.processes.filter { $0.zombieStatus == nil }
        let assigned = parallel && live.count >= RestoreLanes.minimumProcesses && sysconf(Int32(_SC_NPROCESSORS_ONLN)) >= 2
            ? RestoreLanes.split(live.map { ($0.pid, $0.ppid) }, root: inventory.rootPid) : [:]
        lanes = assigned
        let parents = Dictionary(live.map { ($0.pid, $0.ppid) }, uniquingKeysWith: { first, _ in first })
        handedOver = RestoreLanes.handedOver(assigned, parents: parents)
        clonedFirst = RestoreLanes.withAncestors(handedOver, parents: parents, root: inventory.rootPid)
        worker = assigned.isEmpty ? nil : LaneWorker()
    }

    /// Lane 1's processes whose parents are lane 0's: the tops of its subtrees.
    static func handedOver(_ assigned: [Int32: Int], parents: [Int32: Int32]) -> Set<Int32> {
        Set(assigned.keys.filter { assigned[parents[$0] ?? 0] == nil })
    }

    /// `pids` and every ancestor of theirs below `root`.
    static func withAncestors(_ pids: Set<Int32>, parents: [Int32: Int32], root: Int32) -> Set<Int32> {
        var result = pids
        for pid in pids {
            var up = parents[pid]
            while let p = up, p != root, result.insert(p).inserted { up = parents[p] }
        }
        return result
    }

    /// The order lane 0 clones in: what lane 1 waits for first (parents still before their children,
    /// as both parts keep the image's order), then the rest.
    func cloningOrder<Entry>(_ entries: [Entry], pid: (Entry) -> Int32) -> [Entry] {
        parallel ? RestoreLanes.cloningOrder(entries, first: clonedFirst, pid: pid) : entries
    }

    static func cloningOrder<Entry>(_ entries: [Entry], first: Set<Int32>, pid: (Entry) -> Int32) -> [Entry] {
        entries.filter { first.contains(pid($0)) } + entries.filter { !first.contains(pid($0)) }
    }

    /// Below this many processes a second thread is not worth its start.
    static let minimumProcesses = 8

    var parallel: Bool { worker != nil }

    func lane(of pid: Int32) -> Int { lanes[pid] ?? 0 }

    /// Whole subtrees (never the root) for lane 1, about half the processes: the largest
    /// first, each one that still fits and is not inside one taken already.
    static func split(_ processes: [(pid: Int32, ppid: Int32)], root: Int32) -> [Int32: Int] {
        var children: [Int32: [Int32]] = [:]
        for p in processes where p.pid != root { children[p.ppid, default: []].append(p.pid) }
        var size: [Int32: Int] = [:]
        func count(_ pid: Int32) -> Int {
            if let known = size[pid] { return known }
            let total = 1 + (children[pid] ?? []).reduce(0) { $0 + count($1) }
            size[pid] = total
            return total
        }
        // Processes come parents first: sizes from the last one up (no deep recursion).
        for p in processes.reversed() { _ = count(p.pid) }
        var room = processes.count / 2
        var taken: [Int32: Int] = [:]
        func take(_ top: Int32) {
            var stack = [top]  // a chain of thousands would overflow a recursion
            while let pid = stack.popLast() {
                taken[pid] = 1
                stack += children[pid] ?? []
            }
        }
        for p in processes.filter({ $0.pid != root }).sorted(by: { size[$0.pid]! > size[$1.pid]! }) where room > 0 {
            guard taken[p.pid] == nil, size[p.pid]! <= room else { continue }
            take(p.pid)
            room -= size[p.pid]!
        }
        return taken
    }

    /// Runs `body(0)` here and `body(1)` on lane 1's thread at once; returns when both are
    /// done, throwing the first error (lane 0's when both failed).
    func run(step: String, _ body: (Int) throws -> Void) throws {
        guard let worker else { return try body(0) }
        try withoutActuallyEscaping(body) { body in
            var failure1: Error?
            var took1 = Duration.zero
            let clock = ContinuousClock()
            worker.start(UncheckedBox { took1 = clock.measure { do { try body(1) } catch { failure1 = error } } })
            var failure0: Error?
            let took0 = clock.measure { do { try body(0) } catch { failure0 = error } }
            worker.wait()
            if let log { log("lanes: \(step): lane 0 \(RestoreLanes.milliseconds(took0)) ms, lane 1 \(RestoreLanes.milliseconds(took1)) ms") }
            if let failure = failure0 ?? failure1 { throw failure }
        }
    }

    static func milliseconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        return String(Double(seconds) * 1000 + Double(attoseconds / 1_000_000_000_000) / 1000)
    }

    // MARK: Handing processes over

    private let handoff = HandoffBoard()

    /// Lane 0: `tracee` (a new process for lane 1) dies with its parent from now on, waits in
    /// pause(), and is let go.
    func park(_ tracee: Tracee, inject: (Tracee, Int, [UInt64], String) throws -> Void) throws {
        try inject(tracee, 157 /* prctl */, [1 /* PR_SET_PDEATHSIG */, UInt64(SIGKILL)], "prctl(PR_SET_PDEATHSIG, SIGKILL)")
        guard let gadget = tracee.gadgetAddress else { throw CryoError("pid \(tracee.pid): no parasite gadget to park it") }
        var regs = tracee.originalRegisters
        regs.rip = gadget       // `syscall; int3`: should pause() ever return, the int3 ends it
        regs.rax = 34           // pause
        regs.orig_rax = UInt64.max
        try Ptrace.setRegisters(tracee.pid, regs)
        try Ptrace.setSignalMask(tracee.pid, ~0)
        try tracee.detach()
        killPoint("parked")  // traced by no one: only its parent's death ends it now
        handoff.post(tracee.pid)
    }

    /// Lane 0, when its cloning is over (done or failed): lane 1 waits for no more.
    func closeHandoff() {
        handoff.close()
    }

    /// Lane 1: waits until lane 0 has parked `pid`, then traces it for good (EXITKILL). The
    /// caller takes its parent-death signal off again once it can inject.
    func take(_ pid: pid_t, seize: (pid_t) throws -> Void) throws -> Tracee {
        guard handoff.wait(for: pid) else { throw CryoError("pid \(pid): never handed over (the other lane stopped)") }
        try seize(pid)
        pinToLane1(pid)
        try Ptrace.interrupt(pid)
        _ = try waitForStop(pid)
        return try Tracee.adopt(pid)
    }

    /// Ends lane 1's thread; only once none of its tasks is traced any more (its exit would kill them).
    func stop() { worker?.stop() }

    // MARK: One CPU per lane

    /// The CPUs cryo may use, as it found them, and each lane's own, while pinned.
    private var pins: (original: [UInt64], lanes: [[UInt64]])?

    /// Each lane's thread and every task it traces on one CPU of their own. A stop then
    /// switches between tracer and tracee on that CPU; unpinned, the scheduler put the
    /// woken task on the other, idle CPU, and each stop waited for that CPU to wake up
    /// (in a VM, an interrupt to another virtual CPU), several per process. New tasks
    /// start on their creator's CPU, so the root and whatever it clones go to lane 0's;
    /// lane 1 moves the tops of its subtrees (`take`). Only when cryo may use every
    /// online CPU (then the original mask set again at the end is what the tasks would
    /// have inherited), and at least two. `unpinnable`: cryo can set every task's CPUs
    /// back once its credentials are restored (CAP_SYS_NICE, or cryo's own user).
    func pin(unpinnable: Bool) {
        guard parallel, unpinnable, let original = try? Processes.affinity(0) else { return }
        let cpus = (0..<original.count * 64).filter { original[$0 / 64] & (1 << UInt64($0 % 64)) != 0 }
        guard cpus.count >= 2, cpus.count == sysconf(Int32(_SC_NPROCESSORS_ONLN)) else { return }
        let masks = cpus.prefix(2).map { cpu in (0..<original.count).map { $0 == cpu / 64 ? UInt64(1) << UInt64(cpu % 64) : 0 } }
        pins = (original, masks)
        ThreadStartAffinity.mask = original
        try? run(step: "pin") { lane in _ = try? Processes.setAffinity(0, masks[lane]) }
    }

    /// A task lane 1 takes over goes to lane 1's CPU, and the tasks it clones with it.
    func pinToLane1(_ pid: pid_t) {
        guard let pins else { return }
        _ = try? Processes.setAffinity(pid, pins.lanes[1])
    }

    /// A restored task gets the CPUs it would have inherited from cryo unpinned, before it is let go.
    func unpin(_ tid: pid_t) throws {
        guard let pins else { return }
        try Processes.setAffinity(tid, pins.original)
    }

    /// The lanes' threads back on every CPU (once their tasks are unpinned).
    func unpinThreads() {
        guard let pins else { return }
        try? run(step: "unpin") { _ in _ = try? Processes.setAffinity(0, pins.original) }
        ThreadStartAffinity.mask = nil
        self.pins = nil
    }
}

/// A value handed to another thread that the caller keeps from racing (lanes hand work back and forth).
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// A pthread mutex with its condition variable: what the lanes' hand-overs wait on.
final class PthreadCondition: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }
    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }
    /// `body` under the mutex; it may `wait()`.
    func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }
    /// Only under `locked`: releases the mutex until signalled.
    func wait() { pthread_cond_wait(condition, mutex) }
    func signal() { pthread_cond_signal(condition) }
    func broadcast() { pthread_cond_broadcast(condition) }
}

/// Pids lane 0 has parked, for lane 1 to wait on without polling (a sleep loop cost lane 1
/// hundreds of wakeups per tree).
final class HandoffBoard: @unchecked Sendable {
    private let condition = PthreadCondition()
    private var parked = Set<pid_t>()
    private var closed = false
    func post(_ pid: pid_t) {
        condition.locked { parked.insert(pid); condition.broadcast() }
    }
    func close() {
        condition.locked { closed = true; condition.broadcast() }
    }
    /// True once `pid` is parked (taken off the board), false if the board closed without it.
    func wait(for pid: pid_t) -> Bool {
        condition.locked {
            while true {
                if parked.remove(pid) != nil { return true }
                if closed { return false }
                condition.wait()
            }
        }
    }
}

/// A counting semaphore over a pthread mutex and condition.
final class DispatchLikeSemaphore: @unchecked Sendable {
    private let condition = PthreadCondition()
    private var count = 0
    func signal() {
        condition.locked { count += 1; condition.signal() }
    }
    func wait() {
        condition.locked {
            while count == 0 { condition.wait() }
            count -= 1
        }
    }
}

/// Lane 1's thread: the same thread for every piece of work, since its tracees answer only to it.
final class LaneWorker: @unchecked Sendable {
    private let jobReady = DispatchLikeSemaphore()
    private let jobDone = DispatchLikeSemaphore()
    private var job: UncheckedBox<() -> Void>?
    private var stopping = false

    init() {
        startThread(name: "cryo-lane-1") { [self] in
            while true {
                jobReady.wait()
                if stopping { return }
                job?.value()
                job = nil
                jobDone.signal()
            }
        }
    }

    func start(_ work: UncheckedBox<() -> Void>) {
        job = work
        jobReady.signal()
    }

    func wait() { jobDone.wait() }

    func stop() {
        stopping = true
        jobReady.signal()
    }
}
