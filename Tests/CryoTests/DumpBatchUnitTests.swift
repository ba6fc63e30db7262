// Issue #16: the dump's batched work on many small objects (no root, no other process):
// one PAGEMAP_SCAN over many mappings, the page stream with pages the task cannot
// read, and descriptions found again by kcmp among many of one key.

import CCryo
@testable import Cryo
import CryoSystem
import Foundation
import Glibc
import Testing

@Suite("dump batches (no root)")
struct DumpBatchUnitTests {
    static let page = 4096

    @Test("one scan over adjacent mappings still gives a run per mapping")
    func scanSplitsAtMappings() throws {
        // Three adjacent mappings (rw, r, rw) and one more after a gap, every page written:
        // the kernel reports the first three as one region.
        let size = 10 * Self.page
        let raw = try #require(mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        #expect(raw != MAP_FAILED)
        defer { munmap(raw, size) }
        let base = UInt64(UInt(bitPattern: raw))
        memset(raw, 0x5a, size)
        #expect(mprotect(raw + 2 * Self.page, 2 * Self.page, PROT_READ) == 0)
        #expect(munmap(raw + 6 * Self.page, Self.page) == 0)  // pages 7..<10: a mapping of their own
        let memory = try MemoryRecord.dump(pid: getpid(), flags: false)
        let pagemap = try Files.open("/proc/self/pagemap", .readOnly)
        defer { try? pagemap.close() }
        var statistics = DumpStatistics()
        let regions = try memory.scanPages(pid: getpid(), pagemap: pagemap, statistics: &statistics)
            .filter { $0.end > base && $0.start < base + UInt64(size) }  // a neighbour may have joined the last mapping
            .map { (max($0.start, base) - base) / UInt64(Self.page)..<(min($0.end, base + UInt64(size)) - base) / UInt64(Self.page) }
        #expect(regions == [0..<2, 2..<4, 4..<6, 7..<10])
        // Every region lies inside one mapping of the layout.
        for r in try memory.scanPages(pid: getpid(), pagemap: pagemap, statistics: &statistics) {
            #expect(memory.mappings.contains { $0.start <= r.start && r.end <= $0.end })
        }
    }

    @Test("pages the task cannot read keep their place: the task reads them through /proc/PID/mem")
    func forcedPlaces() {
        let p = UInt64(Self.page)
        let regions = [0x10000..<(0x10000 + 2 * p), 0x20000..<(0x20000 + 3 * p), 0x30000..<(0x30000 + 2 * p)]
        let segments = InTaskPageCopy.segments(regions, unreadable: [(0x20000 + p)..<(0x20000 + 2 * p), 0x30000..<(0x30000 + p)])
        #expect(segments.map(\.forced) == [false, false, true, false, true, false])
        // Cut after 3 pages of the 7: the first forced page starts the tail.
        let (head, tail) = InTaskPageCopy.cut(segments, at: 3 * p)
        #expect(head.map(\.range) == [0x10000..<(0x10000 + 2 * p), 0x20000..<(0x20000 + p)])
        #expect(InTaskPageCopy.taskIovecs(head).allSatisfy { $0.base & CRYO_IOVEC_FROM_MEM == 0 })
        let iovecs = InTaskPageCopy.taskIovecs(tail)
        // Forced: the address with the flag bit (never CRYO_IOVEC_SKIP, which the task would step over).
        #expect(iovecs.map(\.base) == [(0x20000 + p) | CRYO_IOVEC_FROM_MEM, 0x20000 + 2 * p, 0x30000 | CRYO_IOVEC_FROM_MEM, 0x30000 + p])
        #expect(iovecs.allSatisfy { $0.base != CRYO_IOVEC_SKIP })
        #expect(iovecs.reduce(0) { $0 + $1.length } == 4 * p)
    }

    @Test("descriptions of one key are found again among many (kcmp, in a treap)")
    func kcmpTree() throws {
        var tree = KcmpTree()
        var opened: [Int32] = []
        defer { for fd in opened { close(fd) } }
        let me = getpid()
        for id in 0..<200 {
            let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
            try #require(fd >= 0)
            opened.append(fd)
            #expect(try tree.find(pid: me, fd: fd) == nil)
            try tree.insert(pid: me, fd: fd, id: id)
        }
        for (id, fd) in opened.enumerated() where id % 7 == 0 {
            let copy = dup(fd)
            try #require(copy >= 0)
            defer { close(copy) }
            #expect(try tree.find(pid: me, fd: copy) == id)
        }
        let other = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(other) }
        #expect(try tree.find(pid: me, fd: other) == nil)
    }
}
