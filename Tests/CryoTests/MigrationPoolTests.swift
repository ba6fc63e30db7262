// cryo receive's page pool: pages of every pre-copy round and of the frozen
// dump land in one file per process, and that file becomes the pages file as
// it is. No root, no processes, no network: frames in, a page index out.

@testable import Cryo
import Foundation
import Glibc
import Testing

@Suite("migration page pool (no root)")
struct MigrationPoolTests {
    static func page(_ tag: UInt8, count: Int = 1) -> [UInt8] { [UInt8](repeating: tag, count: 4096 * count) }

    @Test("the frozen dump's pages go into the pool; the pool file becomes the pages file, runs pointing into it")
    func poolBecomesPagesFile() throws {
        var template = Array("/tmp/cryo-unit-pool-XXXXXX".utf8CString)
        let folder = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let base: UInt64 = 0x7f00_0000_0000
        let pool = try PagePool(path: "\(folder)/.pool-7", pid: 7)
        defer { pool.discard() }
        // Round 1: four pages at base (tags 1..4); round 2: page 2 again, and a new page at base + 8 pages.
        for i in 0..<4 { try Self.page(UInt8(1 + i)).withUnsafeBytes { try pool.write(address: base + UInt64(i) * 4096, $0) } }
        try Self.page(22).withUnsafeBytes { try pool.write(address: base + 2 * 4096, $0) }
        try Self.page(9).withUnsafeBytes { try pool.write(address: base + 8 * 4096, $0) }
        let poolInode = try FileManager.default.attributesOfItem(atPath: pool.path)[.systemFileNumber] as! UInt64

        // The frozen dump: page 0 was unmapped, pages 1-3 stay, page 8 stays, page 12 is new and page 3 was written
        // again; its file holds runs [1-3], [8], [12] one after another, of which only pages 3 and 12 arrive.
        let runs = [PageRun(address: base + 4096, length: 3 * 4096, offset: 0),
                    PageRun(address: base + 8 * 4096, length: 4096, offset: 3 * 4096),
                    PageRun(address: base + 12 * 4096, length: 4096, offset: 4 * 4096)]
        let incoming = try IncomingPages(path: "\(folder)/pages-7.img", size: 5 * 4096, pid: 7, runs: runs, pool: pool)
        try Self.page(33).withUnsafeBytes { try incoming.write($0, at: 2 * 4096) }
        try Self.page(12).withUnsafeBytes { try incoming.write($0, at: 4 * 4096) }
        let index = try incoming.finish()

        // No copy: the pool file itself (same inode), its size the pool's.
        let pagesPath = "\(folder)/pages-7.img"
        #expect(!FileManager.default.fileExists(atPath: pool.path))
        #expect(try FileManager.default.attributesOfItem(atPath: pagesPath)[.systemFileNumber] as! UInt64 == poolInode)
        #expect(index.pagesFileSize == 6 * 4096)
        #expect(index.pageBytes == 5 * 4096)
        // Every address reads what it last held, through the new runs.
        let memory = MemoryRecord(mappings: [MemoryRecord.Mapping(start: base, end: base + 16 * 4096, protection: "rw", shared: false,
                                                                  kind: .anonymous, path: nil, fileOffset: 0, device: nil, inode: nil,
                                                                  growsDown: false, noReserve: false, advice: 0)])
        try memory.validate(file: "task-7.img", index: index, pagesFiles: [("pages-7.img", 6 * 4096)])
        let reader = try PageReader(path: pagesPath, index: index)
        for (page, tag) in [(1, 2), (2, 22), (3, 33), (8, 9), (12, 12)] as [(UInt64, UInt8)] {
            var bytes = [UInt8](repeating: 0, count: 4096)
            try bytes.withUnsafeMutableBytes { try reader.read(address: base + page * 4096, into: $0) }
            #expect(bytes == Self.page(tag), "page \(page)")
        }
        // Runs stay inside the dump's runs even where the pool has neighbours one after another.
        #expect(index.runs.allSatisfy { run in runs.contains { $0.address <= run.address && run.end <= $0.end } })
    }

    @Test("a round's frame written in the link's odd-sized pieces leaves the pool as one whole write does")
    func framesInPieces() throws {
        var template = Array("/tmp/cryo-unit-pool-XXXXXX".utf8CString)
        let folder = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let base: UInt64 = 0x7f00_0000_0000
        // Round 1 held pages 2-3; round 2's frame covers pages 0-5 (new, held, new) with bytes that differ per offset.
        let frame = (0..<(6 * 4096)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 12) }
        func run(pieces: [Int]) throws -> (PagePool, [UInt8]) {
            let pool = try PagePool(path: "\(folder)/.pool-\(pieces.count)", pid: 7)
            try Self.page(1, count: 2).withUnsafeBytes { try pool.write(address: base + 2 * 4096, $0) }
            var at = 0
            try frame.withUnsafeBytes { all in
                for length in pieces + [frame.count - pieces.reduce(0, +)] {
                    try pool.write(address: base + UInt64(at), UnsafeRawBufferPointer(rebasing: all[at..<(at + length)]))
                    at += length
                }
            }
            var bytes = [UInt8](repeating: 0, count: frame.count)
            try pool.locate(base, UInt64(frame.count)) { address, offset, length in
                let start = Int(address - base)
                let n = try bytes.withUnsafeMutableBytes {
                    pread(pool.fd.rawValue, $0.baseAddress! + start, Int(length), off_t(offset))
                }
                #expect(n == Int(length))
            }
            return (pool, bytes)
        }
        let (whole, wholeBytes) = try run(pieces: [])
        defer { whole.discard() }
        // Pieces that end inside pages, on a page boundary, and across the held pages.
        let (pieces, piecesBytes) = try run(pieces: [1, 4095, 5000, 3000, 100, 7000])
        defer { pieces.discard() }
        #expect(wholeBytes == frame)
        #expect(piecesBytes == frame)
        #expect(pieces.size == whole.size)
        #expect(pieces.runs.map { [$0.address, $0.length, $0.offset] } == whole.runs.map { [$0.address, $0.length, $0.offset] })
        #expect(pieces.runs.allSatisfy { $0.address % 4096 == 0 && $0.length % 4096 == 0 && $0.offset % 4096 == 0 })
    }

    @Test("received runs in place of a task file's must cover as many bytes; otherwise refused, naming the file")
    func receivedRunsCoverTheSameBytes() throws {
        let written = PageIndex(runs: [PageRun(address: 0x1000, length: 2 * 4096, offset: 0)], pagesFileSize: 2 * 4096)
        // The same two pages where the pool has them: in another order, in a larger file.
        let pooled = PageIndex(runs: [PageRun(address: 0x1000, length: 4096, offset: 2 * 4096),
                                      PageRun(address: 0x2000, length: 4096, offset: 0)], pagesFileSize: 3 * 4096)
        try TaskImage.checkReplacement(of: written, with: pooled, file: "task-7.img")
        let short = PageIndex(runs: [PageRun(address: 0x1000, length: 4096, offset: 0)], pagesFileSize: 4096)
        #expect(throws: (any Error).self) { try TaskImage.checkReplacement(of: written, with: short, file: "task-7.img") }
        do { try TaskImage.checkReplacement(of: written, with: short, file: "task-7.img") } catch {
            #expect("\(error)".contains("task-7.img") && "\(error)".contains("cover 4096 bytes, the file's 8192"), "\(error)")
        }
    }

    @Test("a frozen dump page that neither arrived nor came in a round is refused in one line")
    func missingPageRefused() throws {
        var template = Array("/tmp/cryo-unit-pool-XXXXXX".utf8CString)
        let folder = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let base: UInt64 = 0x7f00_0000_0000
        let pool = try PagePool(path: "\(folder)/.pool-7", pid: 7)
        defer { pool.discard() }
        try Self.page(1).withUnsafeBytes { try pool.write(address: base, $0) }
        let incoming = try IncomingPages(path: "\(folder)/pages-7.img", size: 2 * 4096, pid: 7,
                                         runs: [PageRun(address: base, length: 2 * 4096, offset: 0)], pool: pool)
        #expect(throws: (any Error).self) { _ = try incoming.finish() }
        do { _ = try incoming.finish() } catch {
            #expect("\(error)".contains("page 0x7f0000001000 is in neither the frozen dump nor an earlier round"), "\(error)")
        }
    }
}
