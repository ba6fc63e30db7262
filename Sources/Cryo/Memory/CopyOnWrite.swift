import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// Private pages a child still shares with its parent since fork stay shared
/// after restore. At dump, the part of a child's private mapping that lies in a
/// parent's mapping of the same backing (both anonymous, or the same file at the
/// same offset) keeps only the pages whose physical page (PFN, /proc/PID/pagemap)
/// differs from the parent's; pages the parent holds there and the child does not
/// are listed as discards. The mappings need not be equal: forking servers grow
/// (brk, malloc), mprotect, madvise or cut their heap after fork, in the child or
/// the parent. At restore the parent's memory is rebuilt before its children are
/// cloned, so such a range arrives in the child shared copy-on-write: it is kept
/// and reshaped (protection, advice; what lies outside it is unmapped or mapped
/// afresh), the discards are dropped (MADV_DONTNEED) and only the child's own
/// pages are written.
enum CopyOnWrite {
    /// What dump keeps of a child: the ranges to write into its pages file,
    /// the ranges it keeps from the parent and the discards, each in address order.
    struct Split: Equatable {
        var stored: [Range<UInt64>] = []
        var inherited: [Range<UInt64>] = []
        var discards: [Range<UInt64>] = []
    }

    /// The part of a child's mapping `c` that the fork may have left it from the parent's
    /// mapping `p` and that restore can keep: both private and of the same backing (anonymous,
    /// or the same file at the same offset for the same address), `p` of a kind fork passes on
    /// with its pages (no MADV_DONTFORK, MADV_WIPEONFORK), and nothing of `p` that the child
    /// could not take back or set again: reservation, growth direction (a stack only whole),
    /// advice the child lacks (an mlock is not: fork never passes it on; nor a seal: the restored parent seals
    /// only after its children are cloned). Protection and the child's own advice, locks and seals are set
    /// again at restore.
    static func keptRange(_ c: MemoryRecord.Mapping, from p: MemoryRecord.Mapping) -> Range<UInt64>? {
        let anonymous: [MemoryRecord.Kind] = [.anonymous, .heap, .stack]
        guard !c.shared, !p.shared, c.hugePageSize == nil, p.hugePageSize == nil, c.deleted != true, p.deleted != true,
              c.start < p.end, p.start < c.end else { return nil }
        let sameBacking = anonymous.contains(c.kind) && anonymous.contains(p.kind)
            || (c.kind == .file && p.kind == .file && c.path == p.path && c.device == p.device && c.inode == p.inode
                && c.fileOffset &- c.start == p.fileOffset &- p.start)
        let passedOn = p.advice & ~(CRYO_VMA_LOCKED | CRYO_VMA_LOCKONFAULT | CRYO_VMA_SEALED)
        guard sameBacking, p.advice & (CRYO_MADV_DONTFORK | CRYO_MADV_WIPEONFORK) == 0, passedOn & ~c.advice == 0,
              c.noReserve == p.noReserve, c.growsDown == p.growsDown,
              !c.growsDown || (c.start == p.start && c.end == p.end) else { return nil }
        return max(c.start, p.start)..<min(c.end, p.end)
    }

    /// Splits a child's saved regions (each inside one mapping, in address order).
    /// `parentSaved`: every range the parent's restore puts pages in (not only its
    /// stored ones). `shared(range)`: per page of `range`, whether child and parent
    /// map the same physical page. A range is kept from the parent only where it
    /// shares at least one page.
    static func split(child: MemoryRecord, childSaved: [Range<UInt64>], parent: MemoryRecord, parentSaved: [Range<UInt64>],
                      shared: (Range<UInt64>) throws -> [Bool]) rethrows -> Split {
        let parentMappings = parent.mappings
        var result = Split()
        var regionCursor = 0, parentCursor = 0, mappingCursor = 0
        for c in child.mappings {
            var regions: [Range<UInt64>] = []
            while regionCursor < childSaved.count && childSaved[regionCursor].lowerBound < c.end {
                regions.append(childSaved[regionCursor])
                regionCursor += 1
            }
            // All lists are in address order: one pass over the parent's ranges and mappings for all mappings.
            while parentCursor < parentSaved.count && parentSaved[parentCursor].upperBound <= c.start { parentCursor += 1 }
            while mappingCursor < parentMappings.count && parentMappings[mappingCursor].end <= c.start { mappingCursor += 1 }
            guard !regions.isEmpty else { continue }
            var kept: [Range<UInt64>] = []
            var own: [Range<UInt64>] = []
            var m = mappingCursor
            while m < parentMappings.count && parentMappings[m].start < c.end {
                defer { m += 1 }
                guard let piece = keptRange(c, from: parentMappings[m]) else { continue }
                var pieceOwn: [Range<UInt64>] = []
                var anyShared = false
                for region in regions where region.overlaps(piece) {
                    let part = region.clamped(to: piece)
                    let same = try shared(part)
                    var page = 0
                    while page < same.count {
                        if same[page] { anyShared = true; page += 1; continue }
                        let first = page
                        while page < same.count && !same[page] { page += 1 }
                        pieceOwn.append((part.lowerBound + UInt64(first) * 4096)..<(part.lowerBound + UInt64(page) * 4096))
                    }
                }
                if anyShared {
                    kept.append(piece)
                    own += pieceOwn
                }
            }
            guard !kept.isEmpty else {
                result.stored += regions
                continue
            }
            // Adjacent pieces (own pages at the end of a kept range, then pages beyond it) are one run.
            for range in (subtract(kept, from: regions) + own).sorted(by: { $0.lowerBound < $1.lowerBound }) {
                if let last = result.stored.last, last.upperBound == range.lowerBound, last.lowerBound >= c.start {
                    result.stored[result.stored.count - 1] = last.lowerBound..<range.upperBound
                } else {
                    result.stored.append(range)
                }
            }
            result.inherited += kept
            var parentHere: [Range<UInt64>] = []
            var k = parentCursor
            while k < parentSaved.count && parentSaved[k].lowerBound < c.end {
                for piece in kept where parentSaved[k].overlaps(piece) { parentHere.append(parentSaved[k].clamped(to: piece)) }
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
        let inherited = task.memory.keptFromParent
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

    /// Checks, before anything is created, that every range a task keeps from its parent
    /// lies in one of its mappings marked inherited (each has one) and in a mapping of
    /// the parent it can keep (`keptRange`), which the parent restores before the child
    /// is cloned; and that every discard lies in such a range.
    static func validate(_ tasks: [TaskImage], parents: [Int32: Int32]) throws {
        let byPid = Dictionary(tasks.map { ($0.core.pid, $0) }, uniquingKeysWith: { a, _ in a })
        for task in tasks {
            let pid = task.core.pid
            let file = "task-\(pid).img"
            // In address order (the memory record's validation checks that).
            let inherited = task.memory.mappings.filter { $0.inherited == true }
            let discards = task.memory.discards ?? []
            let ranges = task.memory.inheritedRanges ?? []
            if inherited.isEmpty && discards.isEmpty && ranges.isEmpty { continue }
            guard let ppid = parents[pid], let parent = byPid[ppid] else {
                throw ImageError(file: file, record: "memory", "mappings inherited from a parent that is not a live process of the image")
            }
            for r in ranges {
                guard r.count == 2, r[0] < r[1], r[0] % 4096 == 0, r[1] % 4096 == 0 else {
                    throw ImageError(file: file, record: "memory", "inherited range \(r) is malformed")
                }
            }
            let kept = task.memory.keptFromParent
            for (a, b) in zip(kept, kept.dropFirst()) where a.upperBound > b.lowerBound {
                throw ImageError(file: file, record: "memory", "inherited ranges 0x\(hex(a.lowerBound)) and 0x\(hex(b.lowerBound)) overlap or are out of order")
            }
            // The last of `items` (in address order) starting at or below `address`.
            func last<T>(_ items: [T], atOrBelow address: UInt64, start: (T) -> UInt64) -> T? {
                var low = 0, high = items.count
                while low < high {
                    let mid = (low + high) / 2
                    if start(items[mid]) <= address { low = mid + 1 } else { high = mid }
                }
                return low > 0 ? items[low - 1] : nil
            }
            var covered = Set<UInt64>()
            for r in kept {
                let label = "inherited range 0x\(hex(r.lowerBound))-0x\(hex(r.upperBound))"
                guard let m = last(inherited, atOrBelow: r.lowerBound, start: \.start), r.upperBound <= m.end else {
                    throw ImageError(file: file, record: "memory", "\(label) is outside every mapping marked inherited")
                }
                guard let p = last(parent.memory.mappings, atOrBelow: r.lowerBound, start: \.start),
                      let keep = keptRange(m, from: p), keep.lowerBound <= r.lowerBound, r.upperBound <= keep.upperBound else {
                    throw ImageError(file: file, record: "memory", "\(label) is marked inherited but parent \(ppid) has no such mapping there")
                }
                covered.insert(m.start)
            }
            if let m = inherited.first(where: { !covered.contains($0.start) }) {
                throw ImageError(file: file, record: "memory", "mapping 0x\(hex(m.start)) is marked inherited but keeps no range of parent \(ppid)")
            }
            for d in discards {
                guard d.count == 2, d[0] < d[1], d[0] % 4096 == 0, d[1] % 4096 == 0,
                      let r = last(kept, atOrBelow: d[0], start: \.lowerBound), d[1] <= r.upperBound else {
                    throw ImageError(file: file, record: "memory", "discard range \(d) is malformed or outside every inherited range")
                }
            }
        }
    }
}
