import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// Private pages a child still shares with its parent since fork stay shared
/// after restore. At dump, a child's private mapping that is the parent's
/// mapping of the same range (same kind, protection, file, advice) keeps only
/// the pages whose physical page (PFN, /proc/PID/pagemap) differs from the
/// parent's; pages the parent holds there and the child does not are listed
/// as discards. At restore the parent's memory is rebuilt before its children
/// are cloned, so such a mapping arrives in the child shared copy-on-write:
/// it is kept, the discards are dropped (MADV_DONTNEED) and only the child's
/// own pages are written.
enum CopyOnWrite {
    /// What dump keeps of a child: the ranges to write into its pages file,
    /// the starts of its inherited mappings and the discards.
    struct Split: Equatable {
        var stored: [Range<UInt64>] = []
        var inherited: Set<UInt64> = []
        var discards: [Range<UInt64>] = []
    }

    /// Whether a child's mapping can be the parent's, inherited at fork and
    /// kept at restore: same range and attributes, private, and not one fork
    /// leaves out (MADV_DONTFORK) or empties (MADV_WIPEONFORK).
    static func inheritable(_ c: MemoryRecord.Mapping, from p: MemoryRecord.Mapping) -> Bool {
        let kinds: [MemoryRecord.Kind] = [.anonymous, .heap, .stack, .file]
        return c.start == p.start && c.end == p.end && !c.shared && !p.shared && c.kind == p.kind && kinds.contains(c.kind)
            && c.hugePageSize == nil && p.hugePageSize == nil
            && c.protection == p.protection && c.path == p.path && c.fileOffset == p.fileOffset && c.device == p.device
            && c.inode == p.inode && c.deleted == nil && p.deleted == nil && c.advice == p.advice
            && c.advice & (CRYO_MADV_DONTFORK | CRYO_MADV_WIPEONFORK) == 0
            && c.growsDown == p.growsDown && c.noReserve == p.noReserve
    }

    /// Splits a child's saved regions (each inside one mapping, in address order).
    /// `parentSaved`: every range the parent's restore puts pages in (not only its
    /// stored ones). `shared(range)`: per page of `range`, whether child and parent
    /// map the same physical page.
    static func split(child: MemoryRecord, childSaved: [Range<UInt64>], parent: MemoryRecord, parentSaved: [Range<UInt64>],
                      shared: (Range<UInt64>) throws -> [Bool]) rethrows -> Split {
        let parentByStart = Dictionary(parent.mappings.map { ($0.start, $0) }, uniquingKeysWith: { a, _ in a })
        var result = Split()
        var regionCursor = 0, parentCursor = 0
        for c in child.mappings {
            var regions: [Range<UInt64>] = []
            while regionCursor < childSaved.count && childSaved[regionCursor].lowerBound < c.end {
                regions.append(childSaved[regionCursor])
                regionCursor += 1
            }
            // Both lists are in address order: one pass over the parent's ranges for all mappings.
            while parentCursor < parentSaved.count && parentSaved[parentCursor].upperBound <= c.start { parentCursor += 1 }
            guard let p = parentByStart[c.start], inheritable(c, from: p), !regions.isEmpty else {
                result.stored += regions
                continue
            }
            var own: [Range<UInt64>] = []
            var anyShared = false
            for region in regions {
                let same = try shared(region)
                var page = 0
                while page < same.count {
                    if same[page] { anyShared = true; page += 1; continue }
                    let first = page
                    while page < same.count && !same[page] { page += 1 }
                    own.append((region.lowerBound + UInt64(first) * 4096)..<(region.lowerBound + UInt64(page) * 4096))
                }
            }
            guard anyShared else {
                result.stored += regions
                continue
            }
            result.stored += own
            result.inherited.insert(c.start)
            var parentHere: [Range<UInt64>] = []
            var k = parentCursor
            while k < parentSaved.count && parentSaved[k].lowerBound < c.end {
                parentHere.append(parentSaved[k].clamped(to: c.start..<c.end))
                k += 1
            }
            result.discards += subtract(regions, from: parentHere)
        }
        return result
    }

    /// `ranges` minus `holes`, both sorted and non-overlapping.
    static func subtract(_ holes: [Range<UInt64>], from ranges: [Range<UInt64>]) -> [Range<UInt64>] {
        var result: [Range<UInt64>] = []
        var h = 0
        for range in ranges {
            var start = range.lowerBound
            while h < holes.count && holes[h].upperBound <= start { h += 1 }
            var k = h
            while k < holes.count && holes[k].lowerBound < range.upperBound {
                if holes[k].lowerBound > start { result.append(start..<holes[k].lowerBound) }
                start = max(start, holes[k].upperBound)
                k += 1
            }
            if start < range.upperBound { result.append(start..<range.upperBound) }
        }
        return result
    }

    /// The page frame of each saved page of a parent, read from its pagemap before its pages are
    /// copied: reading another task's memory through process_vm_readv pins its pages, which makes
    /// the kernel give the reader's target its own copy of every page shared copy-on-write.
    /// A PFN the kernel hides (no CAP_SYS_ADMIN) reads 0: nothing counts as shared then.
    struct Frames {
        var regions: [Range<UInt64>] = []
        /// Index in `frames` of each region's first page.
        var firsts: [Int] = []
        var frames: [UInt64] = []

        static let present: UInt64 = 1 << 63
        static let frameMask: UInt64 = (1 << 55) - 1

        init() {}

        init(pid: pid_t, regions: [Range<UInt64>]) throws {
            let pagemap = try Files.open("/proc/\(pid)/pagemap", .readOnly)
            defer { try? pagemap.close() }
            self.regions = regions
            for region in regions {
                firsts.append(frames.count)
                frames += try Frames.read(pagemap, pid: pid, region)
            }
        }

        /// The frame of the page at `address`, 0 when it is not present or not among the regions.
        func frame(at address: UInt64) -> UInt64 {
            var low = 0, high = regions.count
            while low < high {
                let mid = (low + high) / 2
                if regions[mid].upperBound <= address { low = mid + 1 } else { high = mid }
            }
            guard low < regions.count, regions[low].contains(address) else { return 0 }
            return frames[firsts[low] + Int((address - regions[low].lowerBound) / 4096)]
        }

        /// Present pages' frames of `range` (0 for the others).
        static func read(_ pagemap: FileDescriptor, pid: pid_t, _ range: Range<UInt64>) throws -> [UInt64] {
            let pages = Int(range.count / 4096)
            var entries = [UInt64](repeating: 0, count: pages)
            let offset = Int64(range.lowerBound / 4096 * 8)
            let got = try entries.withUnsafeMutableBytes { try pagemap.read(fromAbsoluteOffset: offset, into: $0) }
            if got != pages * 8 {
                throw CryoError("pid \(pid): /proc/\(pid)/pagemap: read \(got) of \(pages * 8) bytes at offset \(offset)")
            }
            return entries.map { $0 & present != 0 ? $0 & frameMask : 0 }
        }

        /// Per page of `range` in `child`: the same physical page as the parent's.
        func shared(with child: FileDescriptor, pid: pid_t, _ range: Range<UInt64>) throws -> [Bool] {
            let own = try Frames.read(child, pid: pid, range)
            return own.enumerated().map { i, frame in frame != 0 && frame == self.frame(at: range.lowerBound + UInt64(i) * 4096) }
        }
    }

    /// Where a task's pages that its image leaves to its parent are, when they are not shared at
    /// restore (--lazy-pages): by pid, runs of that process's page stream, in address order.
    /// A parent's page that itself comes from the grandparent is found there, and so on.
    static func ancestorRuns(of task: TaskImage, in image: Image) -> [Int32: [PageRun]] {
        var result: [Int32: [PageRun]] = [:]
        let inherited = task.memory.mappings.filter { $0.inherited == true }.map { $0.start..<$0.end }
        guard !inherited.isEmpty, let ppid = image.inventory.processes.first(where: { $0.pid == task.core.pid })?.ppid,
              let parent = image.task(ppid) else { return result }
        // What the task has of its own there, or must not take from the parent.
        let holes = (task.pageIndex.runs.map { $0.address..<$0.end } + (task.memory.discards ?? []).map { $0[0]..<$0[1] })
            .sorted { $0.lowerBound < $1.lowerBound }
        // Runs, inherited ranges and holes are all in address order: merged in one pass each,
        // so a million runs cost a million steps, not runs times mappings.
        func take(_ runs: [PageRun], from pid: Int32) {
            var pieces: [(range: Range<UInt64>, run: PageRun)] = []
            var i = 0
            for run in runs {
                while i < inherited.count && inherited[i].upperBound <= run.address { i += 1 }
                var k = i
                while k < inherited.count && inherited[k].lowerBound < run.end {
                    pieces.append(((run.address..<run.end).clamped(to: inherited[k]), run))
                    k += 1
                }
            }
            var p = 0
            for kept in subtract(holes, from: pieces.map(\.range)) {
                while !pieces[p].range.contains(kept.lowerBound) { p += 1 }
                let run = pieces[p].run
                result[pid, default: []].append(PageRun(address: kept.lowerBound, length: UInt64(kept.count),
                                                        offset: run.offset + (kept.lowerBound - run.address)))
            }
        }
        take(parent.pageIndex.runs, from: ppid)
        for (pid, runs) in ancestorRuns(of: parent, in: image) { take(runs, from: pid) }
        return result
    }

    /// Checks, before anything is created, that every inherited mapping of a task
    /// is its parent's, which the parent restores before the child is cloned.
    static func validate(_ tasks: [TaskImage], parents: [Int32: Int32]) throws {
        let byPid = Dictionary(tasks.map { ($0.core.pid, $0) }, uniquingKeysWith: { a, _ in a })
        for task in tasks {
            let pid = task.core.pid
            // In address order (the memory record's validation checks that).
            let inherited = task.memory.mappings.filter { $0.inherited == true }
            let discards = task.memory.discards ?? []
            if inherited.isEmpty && discards.isEmpty { continue }
            guard let ppid = parents[pid], let parent = byPid[ppid] else {
                throw ImageError(file: "task-\(pid).img", record: "memory", "mappings inherited from a parent that is not a live process of the image")
            }
            let parentByStart = Dictionary(parent.memory.mappings.map { ($0.start, $0) }, uniquingKeysWith: { a, _ in a })
            for m in inherited {
                guard let p = parentByStart[m.start], inheritable(m, from: p) else {
                    throw ImageError(file: "task-\(pid).img", record: "memory", "mapping 0x\(hex(m.start)) is marked inherited but parent \(ppid) has no such mapping")
                }
            }
            func insideInherited(_ d: [UInt64]) -> Bool {
                // The last inherited mapping starting at or below the discard's start.
                var low = 0, high = inherited.count
                while low < high {
                    let mid = (low + high) / 2
                    if inherited[mid].start <= d[0] { low = mid + 1 } else { high = mid }
                }
                return low > 0 && d[1] <= inherited[low - 1].end
            }
            for d in discards {
                guard d.count == 2, d[0] < d[1], d[0] % 4096 == 0, d[1] % 4096 == 0, insideInherited(d) else {
                    throw ImageError(file: "task-\(pid).img", record: "memory", "discard range \(d) is malformed or outside every inherited mapping")
                }
            }
        }
    }
}
