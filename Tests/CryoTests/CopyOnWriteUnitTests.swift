// What a child's image keeps of pages shared with its parent (CopyOnWrite.swift).
// No root, no processes: layouts and page-sharing maps in, ranges out.

import CCryo
@testable import Cryo
import Foundation
import Glibc
import Testing

@Suite("copy-on-write split (no root)")
struct CopyOnWriteUnitTests {
    static let page: UInt64 = 4096
    static func anon(_ start: UInt64, _ pages: UInt64, protection: String = "rw", advice: UInt32 = 0) -> MemoryRecord.Mapping {
        MemoryRecord.Mapping(start: start, end: start + pages * page, protection: protection, shared: false, kind: .anonymous,
                             path: nil, fileOffset: 0, device: nil, inode: nil, growsDown: false, noReserve: false, advice: advice)
    }
    static func pages(_ start: UInt64, _ from: UInt64, _ to: UInt64) -> Range<UInt64> { (start + from * page)..<(start + to * page) }

    /// Every page of `range` shared but those in `own`.
    static func sharedBut(_ own: [UInt64]) -> (Range<UInt64>) -> [Bool] {
        { range in (0..<(range.count / 4096)).map { !own.contains(range.lowerBound + UInt64($0) * 4096) } }
    }

    @Test("shared pages leave the child's image; pages only the parent holds are discards")
    func split() {
        let a: UInt64 = 0x10_0000, b: UInt64 = 0x20_0000
        let parent = MemoryRecord(mappings: [Self.anon(a, 16), Self.anon(b, 4)])
        // The child made b read-only: the fork's pages are still its.
        let child = MemoryRecord(mappings: [Self.anon(a, 16), Self.anon(b, 4, protection: "r")])
        // Child holds pages 0..<8 and 10..<12 of a, all of b; parent 0..<12 of a and all of b.
        let childSaved = [Self.pages(a, 0, 8), Self.pages(a, 10, 12), Self.pages(b, 0, 4)]
        let parentSaved = [Self.pages(a, 0, 12), Self.pages(b, 0, 4)]
        // Pages 2 and 3 of a differ; every other page the child holds is the parent's.
        let result = CopyOnWrite.split(child: child, childSaved: childSaved, parent: parent, parentSaved: parentSaved,
                                       shared: Self.sharedBut([a + 2 * 4096, a + 3 * 4096]))
        #expect(result.inherited == [Self.pages(a, 0, 16), Self.pages(b, 0, 4)])
        #expect(result.stored == [Self.pages(a, 2, 4)])
        #expect(result.discards == [Self.pages(a, 8, 10)])
    }

    @Test("nothing shared, or a mapping fork does not pass on: the child keeps all its pages")
    func noSharing() {
        let a: UInt64 = 0x10_0000
        let saved = [Self.pages(a, 0, 4)]
        let none = CopyOnWrite.split(child: MemoryRecord(mappings: [Self.anon(a, 4)]), childSaved: saved,
                                     parent: MemoryRecord(mappings: [Self.anon(a, 4)]), parentSaved: saved) { Array(repeating: false, count: $0.count / 4096) }
        #expect(none == CopyOnWrite.Split(stored: saved, inherited: [], discards: []))
        let wiped = Self.anon(a, 4, advice: CRYO_MADV_WIPEONFORK)
        let all = CopyOnWrite.split(child: MemoryRecord(mappings: [wiped]), childSaved: saved,
                                    parent: MemoryRecord(mappings: [wiped]), parentSaved: saved) { Array(repeating: true, count: $0.count / 4096) }
        #expect(all.stored == saved && all.inherited.isEmpty)
        // Advice the parent has and the child has not cannot be taken back from what the fork left.
        let huge = CopyOnWrite.split(child: MemoryRecord(mappings: [Self.anon(a, 4)]), childSaved: saved,
                                     parent: MemoryRecord(mappings: [Self.anon(a, 4, advice: CRYO_MADV_HUGEPAGE)]), parentSaved: saved,
                                     shared: Self.sharedBut([]))
        #expect(huge.stored == saved && huge.inherited.isEmpty)
    }

    @Test("a lock is not passed on by fork: a parent's locked mapping is kept in its unlocked child")
    func lockedParent() {
        let a: UInt64 = 0x10_0000
        for lock in [CRYO_VMA_LOCKED, CRYO_VMA_LOCKED | CRYO_VMA_LOCKONFAULT] {
            #expect(CopyOnWrite.keptRange(Self.anon(a, 4), from: Self.anon(a, 4, advice: lock)) == Self.pages(a, 0, 4))
            #expect(CopyOnWrite.keptRange(Self.anon(a, 4, advice: lock), from: Self.anon(a, 4)) == Self.pages(a, 0, 4))
        }
        // Mergeable (KSM) is passed on: a parent's cannot be taken back in a child without it.
        #expect(CopyOnWrite.keptRange(Self.anon(a, 4), from: Self.anon(a, 4, advice: CRYO_MADV_MERGEABLE)) == nil)
    }

    @Test("a child that grew, cut or split its mapping after fork keeps the part that overlaps the parent's")
    func reshaped() {
        let a: UInt64 = 0x10_0000
        // The parent grew its heap to 20 pages after fork; the child to 24, writing pages 16..<24.
        let grown = CopyOnWrite.split(child: MemoryRecord(mappings: [Self.anon(a, 24)]), childSaved: [Self.pages(a, 0, 24)],
                                      parent: MemoryRecord(mappings: [Self.anon(a, 20)]), parentSaved: [Self.pages(a, 0, 20)],
                                      shared: Self.sharedBut((16..<24).map { a + $0 * 4096 }))
        #expect(grown.inherited == [Self.pages(a, 0, 20)])
        #expect(grown.stored == [Self.pages(a, 16, 24)])
        #expect(grown.discards == [])
        // The child unmapped pages 4..<8 and made 8..<12 read-only; it dropped page 14.
        let child = MemoryRecord(mappings: [Self.anon(a, 4), Self.anon(a + 8 * 4096, 4, protection: "r"), Self.anon(a + 12 * 4096, 4)])
        let cut = CopyOnWrite.split(child: child, childSaved: [Self.pages(a, 0, 4), Self.pages(a, 8, 12), Self.pages(a, 12, 14), Self.pages(a, 15, 16)],
                                    parent: MemoryRecord(mappings: [Self.anon(a, 16)]), parentSaved: [Self.pages(a, 0, 16)],
                                    shared: Self.sharedBut([a + 1 * 4096]))
        #expect(cut.inherited == [Self.pages(a, 0, 4), Self.pages(a, 8, 12), Self.pages(a, 12, 16)])
        #expect(cut.stored == [Self.pages(a, 1, 2)])
        #expect(cut.discards == [Self.pages(a, 14, 15)])
        // Where the parent has another mapping (a file), the child's pages are its own, and so are those
        // of a part that shares nothing.
        var file = Self.anon(a + 8 * 4096, 8)
        file.kind = .file
        file.path = "/lib/x"
        let mixed = CopyOnWrite.split(child: MemoryRecord(mappings: [Self.anon(a, 16)]), childSaved: [Self.pages(a, 0, 16)],
                                      parent: MemoryRecord(mappings: [Self.anon(a, 4), Self.anon(a + 4 * 4096, 4, protection: "r"), file]),
                                      parentSaved: [Self.pages(a, 0, 8)], shared: Self.sharedBut((4..<8).map { a + $0 * 4096 }))
        #expect(mixed.inherited == [Self.pages(a, 0, 4)])
        #expect(mixed.stored == [Self.pages(a, 4, 16)])
    }

    @Test("a private file mapping is kept only where the same file is at the same offset")
    func fileOffsets() {
        let a: UInt64 = 0x10_0000
        func file(_ start: UInt64, _ pages: UInt64, offset: UInt64) -> MemoryRecord.Mapping {
            var m = Self.anon(start, pages)
            m.kind = .file
            m.path = "/lib/x"
            m.device = 1
            m.inode = 2
            m.fileOffset = offset
            return m
        }
        #expect(CopyOnWrite.keptRange(file(a + 4096, 2, offset: 4096), from: file(a, 4, offset: 0)) == Self.pages(a, 1, 3))
        #expect(CopyOnWrite.keptRange(file(a, 2, offset: 4096), from: file(a, 4, offset: 0)) == nil)
        #expect(CopyOnWrite.keptRange(Self.anon(a, 2), from: file(a, 4, offset: 0)) == nil)
    }

    @Test("range subtraction")
    func subtract() {
        #expect(CopyOnWrite.subtract([2..<4, 6..<7], from: [0..<10]) == [0..<2, 4..<6, 7..<10])
        #expect(CopyOnWrite.subtract([0..<10], from: [2..<4]) == [])
        #expect(CopyOnWrite.subtract([], from: [2..<4, 5..<6]) == [2..<4, 5..<6])
        #expect(CopyOnWrite.subtract([3..<5], from: [0..<4, 4..<8]) == [0..<3, 5..<8])
    }
}
