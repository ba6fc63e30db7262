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

    @Test("shared pages leave the child's image; pages only the parent holds are discards")
    func split() {
        let a: UInt64 = 0x10_0000, b: UInt64 = 0x20_0000
        let parent = MemoryRecord(mappings: [Self.anon(a, 16), Self.anon(b, 4)])
        let child = MemoryRecord(mappings: [Self.anon(a, 16), Self.anon(b, 4, protection: "r")])
        // Child holds pages 0..<8 and 10..<12 of a, all of b; parent 0..<12 of a and all of b.
        let childSaved = [Self.pages(a, 0, 8), Self.pages(a, 10, 12), Self.pages(b, 0, 4)]
        let parentSaved = [Self.pages(a, 0, 12), Self.pages(b, 0, 4)]
        // Pages 2 and 3 of a differ; every other page the child holds is the parent's.
        let result = CopyOnWrite.split(child: child, childSaved: childSaved, parent: parent, parentSaved: parentSaved) { range in
            (0..<(range.count / 4096)).map { i in
                let address = range.lowerBound + UInt64(i) * 4096
                return !(address == a + 2 * 4096 || address == a + 3 * 4096)
            }
        }
        #expect(result.inherited == [a])  // b's protection differs: not the parent's mapping
        #expect(result.stored == [Self.pages(a, 2, 4), Self.pages(b, 0, 4)])
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
    }

    @Test("range subtraction")
    func subtract() {
        #expect(CopyOnWrite.subtract([2..<4, 6..<7], from: [0..<10]) == [0..<2, 4..<6, 7..<10])
        #expect(CopyOnWrite.subtract([0..<10], from: [2..<4]) == [])
        #expect(CopyOnWrite.subtract([], from: [2..<4, 5..<6]) == [2..<4, 5..<6])
        #expect(CopyOnWrite.subtract([3..<5], from: [0..<4, 4..<8]) == [0..<3, 5..<8])
    }
}
