// Many small mappings (issue 16): what a restore registers with its
// userfaultfd, and how the way-home gadgets find a task's code without the
// text of /proc/PID/maps. No root: data, and this test process's own maps.

import CCryo
@testable import Cryo
@testable import CryoInjector
import CryoSystem
import Glibc
import Testing

@Suite("many mappings (no root)")
struct MappingQueryUnitTests {
    static func range(_ start: UInt64, _ end: UInt64) -> cryo_range { cryo_range(start: start, end: end) }
    static func pairs(_ ranges: [cryo_range]) -> [[UInt64]] { ranges.map { [$0.start, $0.end] } }

    @Test("neighbouring lazy mappings are registered as one range across holes, split where anything else is mapped")
    func registrationRangesMerge() {
        let lazy = [Self.range(0x1000, 0x2000), Self.range(0x3000, 0x4000), Self.range(0x6000, 0x7000),
                    Self.range(0x9000, 0xa000), Self.range(0xa000, 0xb000)]
        // A file mapping between the 2nd and 3rd, the parasite between the 3rd and 4th.
        let occupied: [Range<UInt64>] = lazy.map { $0.start..<$0.end } + [0x4000..<0x5000, 0x7000..<0x8000]
        let merged = LazySplit.registrationRanges(lazy, occupied: occupied.shuffled())
        #expect(Self.pairs(merged) == [[0x1000, 0x4000], [0x6000, 0x7000], [0x9000, 0xb000]])
        // Nothing else mapped: one range.
        #expect(Self.pairs(LazySplit.registrationRanges(lazy, occupied: [])) == [[0x1000, 0xb000]])
        // Something in the very hole: no merge there.
        #expect(Self.pairs(LazySplit.registrationRanges(lazy, occupied: [0x2000..<0x3000]))
                == [[0x1000, 0x2000], [0x3000, 0xb000]])
        #expect(LazySplit.registrationRanges([], occupied: [0x1000..<0x2000]).isEmpty)
    }

    @Test("a restore plan gives each mapping its protection, and the runs inside it")
    func planProtections() throws {
        let protections = ["", "r", "w", "x", "rw", "rx", "wx", "rwx"]
        let mappings = protections.enumerated().map { i, protection in
            MemoryRecord.Mapping(start: 0x10_0000 + UInt64(i) * 0x2000, end: 0x10_0000 + UInt64(i) * 0x2000 + 0x1000, protection: protection,
                                 shared: false, kind: .anonymous, path: nil, fileOffset: 0, device: nil, inode: nil, growsDown: false,
                                 noReserve: false, advice: 0)
        }
        // One saved page in every other mapping.
        let runs = stride(from: 0, to: mappings.count, by: 2).enumerated().map { k, i in
            PageRun(address: mappings[i].start, length: 0x1000, offset: UInt64(k) * 0x1000)
        }
        let plan = try MemoryRestorePlan(record: MemoryRecord(mappings: mappings), index: PageIndex(runs: runs, pagesFileSize: UInt64(runs.count) * 0x1000),
                                         current: [], parasite: 0x7000_0000..<0x7000_1000, temporary: 0x7000_2000, pagesFDs: [7],
                                         fileFD: { _ in -1 }, oldRseq: cryo_rseq_config())
        let header = plan.payload.withUnsafeBytes { $0.loadUnaligned(as: cryo_restore_memory.self) }
        try #require(header.vma_count == UInt64(mappings.count) && header.run_count == UInt64(runs.count))
        let vmaOffset = MemoryLayout<cryo_restore_memory>.size + Int(header.unmap_count) * MemoryLayout<cryo_range>.size
            + Int(header.remap_count) * MemoryLayout<cryo_remap>.size
        let wanted: [String: Int32] = ["": PROT_NONE, "r": PROT_READ, "w": PROT_WRITE, "x": PROT_EXEC, "rw": PROT_READ | PROT_WRITE,
                                       "rx": PROT_READ | PROT_EXEC, "wx": PROT_WRITE | PROT_EXEC, "rwx": PROT_READ | PROT_WRITE | PROT_EXEC]
        for (i, protection) in protections.enumerated() {
            let vma = plan.payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: vmaOffset + i * MemoryLayout<cryo_vma>.size, as: cryo_vma.self) }
            #expect(vma.start == mappings[i].start && vma.end == mappings[i].end, "mapping \(i)")
            #expect(vma.prot == UInt32(wanted[protection]!), "\"\(protection)\": prot \(vma.prot)")
            #expect(vma.run_count == (i % 2 == 0 ? 1 : 0) && vma.keep == 0 && vma.fd == -1, "mapping \(i)")
        }
    }

    @Test("droppable memory is mapped MAP_DROPPABLE without its saved pages; guard regions follow the runs; may-write marked")
    func planDroppableGuardsMayWrite() throws {
        func mapping(_ start: UInt64, shared: Bool = false, kind: MemoryRecord.Kind = .anonymous, protection: String = "rw") -> MemoryRecord.Mapping {
            MemoryRecord.Mapping(start: start, end: start + 0x4000, protection: protection, shared: shared, kind: kind, path: nil,
                                 fileOffset: 0, device: nil, inode: nil, growsDown: false, noReserve: false, advice: 0)
        }
        var droppable = mapping(0x10_0000)
        droppable.droppable = true
        var mayWrite = mapping(0x20_0000, shared: true, kind: .memfd, protection: "r")
        mayWrite.mayWrite = true
        mayWrite.file = 0
        var record = MemoryRecord(mappings: [droppable, mayWrite, mapping(0x30_0000)])
        record.guards = [[0x30_1000, 0x30_2000], [0x20_3000, 0x20_4000]].sorted { $0[0] < $1[0] }
        // A page saved in the droppable mapping (as a dump before this rule did) and two in the ordinary one.
        let runs = [PageRun(address: 0x10_0000, length: 0x1000, offset: 0), PageRun(address: 0x30_0000, length: 0x1000, offset: 0x1000),
                    PageRun(address: 0x30_2000, length: 0x1000, offset: 0x2000)]
        let index = PageIndex(runs: runs, pagesFileSize: 0x3000)
        try record.validate(file: "t", index: index, pagesFiles: [("p", 0x3000)])
        let plan = try MemoryRestorePlan(record: record, index: index, current: [], parasite: 0x7000_0000..<0x7000_1000,
                                         temporary: 0x7000_2000, pagesFDs: [7], fileFD: { _ in 9 }, oldRseq: cryo_rseq_config())
        let header = plan.payload.withUnsafeBytes { $0.loadUnaligned(as: cryo_restore_memory.self) }
        try #require(header.vma_count == 3 && header.run_count == 2 && header.guard_count == 2)
        let vmaOffset = MemoryLayout<cryo_restore_memory>.size + Int(header.unmap_count) * MemoryLayout<cryo_range>.size
            + Int(header.remap_count) * MemoryLayout<cryo_remap>.size
        let vmas = (0..<3).map { i in plan.payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: vmaOffset + i * MemoryLayout<cryo_vma>.size, as: cryo_vma.self) } }
        #expect(vmas[0].flags == UInt32(MemoryRestorePlan.mapDroppable | MAP_ANONYMOUS) && vmas[0].run_count == 0)
        #expect(vmas[2].flags == UInt32(MAP_PRIVATE | MAP_ANONYMOUS) && vmas[2].run_count == 2)
        #expect(vmas[1].flags == UInt32(MAP_SHARED) && vmas[1].fd == 9)
        #expect(vmas[1].madvise & CRYO_VMA_MAYWRITE != 0 && vmas[0].madvise & CRYO_VMA_MAYWRITE == 0 && vmas[2].madvise & CRYO_VMA_MAYWRITE == 0)
        #expect(record.mappings[1].needsWritableFile && !record.mappings[2].needsWritableFile)
        let guardOffset = plan.payload.count - 2 * MemoryLayout<cryo_range>.size
        let guards = (0..<2).map { i in plan.payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: guardOffset + i * MemoryLayout<cryo_range>.size, as: cryo_range.self) } }
        #expect(guards.map { [$0.start, $0.end] } == [[0x20_3000, 0x20_4000], [0x30_1000, 0x30_2000]])

        // A page saved inside a guard region, a guard outside every mapping, or out of order: refused.
        var bad = record
        bad.guards = [[0x30_0000, 0x30_1000]]
        #expect(throws: ImageError.self) { try bad.validate(file: "t", index: index, pagesFiles: [("p", 0x3000)]) }
        bad.guards = [[0x40_0000, 0x40_1000]]
        #expect(throws: ImageError.self) { try bad.validate(file: "t", index: index, pagesFiles: [("p", 0x3000)]) }
        bad.guards = [[0x30_1000, 0x30_2000], [0x20_3000, 0x20_4000]]
        #expect(throws: ImageError.self) { try bad.validate(file: "t", index: index, pagesFiles: [("p", 0x3000)]) }
        bad = record
        bad.mappings[0].shared = true
        #expect(throws: ImageError.self) { try bad.validate(file: "t", index: index, pagesFiles: [("p", 0x3000)]) }
    }

    @Test("10,000 mappings of the shapes fixture with every 4th one a file's: a quarter as many ranges, none over the files")
    func registrationRangesAtScale() {
        let page: UInt64 = 4096
        var lazy: [cryo_range] = [], files: [Range<UInt64>] = []
        for i in 0..<UInt64(10_000) {
            let start = 0x10_0000_0000 + i * 5 * page
            if i % 4 == 3 { files.append(start..<(start + 4 * page)) } else { lazy.append(Self.range(start, start + 4 * page)) }
        }
        let merged = LazySplit.registrationRanges(lazy, occupied: files + lazy.map { $0.start..<$0.end })
        #expect(merged.count == 2_500)
        for r in merged {
            #expect(!files.contains { $0.lowerBound < r.end && $0.upperBound > r.start })
        }
        // Every lazy mapping lies inside exactly one registered range.
        var k = 0
        for l in lazy {
            while k < merged.count && merged[k].end <= l.start { k += 1 }
            #expect(k < merged.count && merged[k].start <= l.start && l.end <= merged[k].end)
        }
    }

    @Test("PROCMAP_QUERY finds the same code mappings as the text of /proc/PID/maps")
    func codeMappingsAgree() throws {
        let required = CRYO_PROCMAP_QUERY_VMA_READABLE | CRYO_PROCMAP_QUERY_VMA_EXECUTABLE | CRYO_PROCMAP_QUERY_FILE_BACKED_VMA
        do { _ = try ProcmapQuery.mappings(pid: getpid(), required: required) } catch let error as SyscallError where error.errno == .inappropriateIOCTLForDevice {
            return  // before Linux 6.11 only the text is there
        }
        let queried = try #require(ReturnGadgets.codeMappings(pid: getpid()))
        let text = try #require(ReturnGadgets.codeMappingsFromText(pid: getpid()))
        #expect(!queried.isEmpty)
        #expect(queried.map { "\($0.start)-\($0.end) \($0.key) \($0.isLibc)" } == text.map { "\($0.start)-\($0.end) \($0.key) \($0.isLibc)" })
        #expect(queried.contains { $0.isLibc })
    }
}
