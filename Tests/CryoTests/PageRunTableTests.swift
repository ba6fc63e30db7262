// The binary page index (`pageRuns` record, task files of format version 4).
// No root, no processes: bytes in, runs or one-line refusals out.

@testable import Cryo
import Foundation
import Glibc
import SystemPackage
import Testing

@Suite("binary page index (no root)")
struct PageRunTableTests {
    static func runs(_ count: Int) -> [PageRun] {
        (0..<count).map { PageRun(address: 0x7f00_0000_0000 + UInt64($0) * 4 * 4096, length: 3 * 4096, offset: UInt64($0) * 3 * 4096) }
    }

    static func refusal(_ payload: [UInt8]) -> String? {
        do {
            _ = try PageRunTable.decode(payload, file: "task-42.img")
            return nil
        } catch { return "\(error)" }
    }

    @Test("runs come back exactly, a million of them included")
    func roundTrip() throws {
        #expect(try PageRunTable.decode(PageRunTable.encode([]), file: "t") == [])
        let odd = [PageRun(address: 0, length: 4096, offset: 0), PageRun(address: UInt64.max - 4095, length: 4096, offset: 1 << 63)]
        #expect(try PageRunTable.decode(PageRunTable.encode(odd), file: "t") == odd)
        let million = PageRunTableTests.runs(1_000_000)
        let encoded = PageRunTable.encode(million)
        #expect(encoded.count == 16 + 24 * 1_000_000)
        #expect(try PageRunTable.decode(encoded, file: "t") == million)
    }

    @Test("a damaged table is refused in one line naming the file and the record")
    func rejections() {
        let good = PageRunTable.encode(PageRunTableTests.runs(3))
        var badMagic = good
        badMagic[0] = UInt8(ascii: "X")
        var badSize = good
        badSize[4] = 32
        var moreClaimed = good
        moreClaimed[8] = 4
        var hugeCount = good
        for i in 8..<16 { hugeCount[i] = 0xff }
        let cases: [(String, [UInt8], String)] = [
            ("empty", [], "truncated"),
            ("header cut", Array(good.prefix(15)), "truncated"),
            ("bad magic", badMagic, "bad magic"),
            ("record size", badSize, "records of 32 bytes"),
            ("a record cut", Array(good.dropLast(1)), "3 runs claimed"),
            ("a byte too many", good + [0], "3 runs claimed"),
            ("more runs claimed", moreClaimed, "4 runs claimed"),
            ("huge count", hugeCount, "runs claimed"),
        ]
        for (what, payload, expected) in cases {
            let text = PageRunTableTests.refusal(payload)
            #expect(text?.hasPrefix("image task-42.img record pageRuns: ") == true, "\(what): \(text ?? "accepted")")
            #expect(text?.contains(expected) == true && text?.contains("\n") == false, "\(what): \(text ?? "accepted")")
        }
    }

    /// A version 4 record file with a page index header and its runs, as TaskImage writes them.
    static func writeIndexFile(_ path: String, runs: [PageRun], withRuns: Bool = true) throws {
        var writer = RecordWriter(version: ImageFormat.pageRunsVersion)
        let index = PageIndex(runs: runs, pagesFileSize: runs.reduce(0) { $0 + $1.length })
        try writer.append(.pageIndex, index.header)
        if withRuns { writer.append(.pageRuns, bytes: PageRunTable.encode(runs)) }
        unlink(path)
        try writer.write(to: path)
    }

    static func scratchFile(_ name: String) -> String {
        var template = Array("/tmp/cryo-runs-XXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        return "\(dir)/\(name)"
    }

    @Test("in a task file: read back through the record reader; a flipped bit, a missing record refused")
    func inRecordFile() throws {
        let path = PageRunTableTests.scratchFile("task-42.img")
        defer { unlink(path); rmdir((path as NSString).deletingLastPathComponent) }
        let runs = PageRunTableTests.runs(1000)
        try PageRunTableTests.writeIndexFile(path, runs: runs)
        let index = try TaskImage.pageIndex(RecordReader(path: path), file: "task-42.img")
        #expect(index.runs == runs && index.pagesFileSize == 1000 * 3 * 4096 && index.pageBytes == 1000 * 3 * 4096)

        // A flipped bit in the middle of the runs: the record's CRC catches it.
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[bytes.count - 5000] ^= 0x10
        unlink(path)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(throws: (any Error).self) { _ = try RecordReader(path: path) }
        do { _ = try RecordReader(path: path) } catch {
            #expect("\(error)" == "image task-42.img record #1 (pageRuns): checksum mismatch (corrupt)")
        }

        try PageRunTableTests.writeIndexFile(path, runs: runs, withRuns: false)
        do {
            _ = try TaskImage.pageIndex(RecordReader(path: path), file: "task-42.img")
            Issue.record("a version 4 file without pageRuns was accepted")
        } catch {
            #expect("\(error)" == "image task-42.img record pageRuns: expected one such record, found 0")
        }
    }

    static func memory(_ start: UInt64, _ end: UInt64) -> MemoryRecord {
        MemoryRecord(mappings: [MemoryRecord.Mapping(start: start, end: end, protection: "rw", shared: false, kind: .anonymous, path: nil,
                                                     fileOffset: 0, device: nil, inode: nil, growsDown: false, noReserve: false, advice: 0)])
    }

    @Test("runs out of order, overlapping or outside the mappings are refused; a million in order pass")
    func validation() throws {
        let base: UInt64 = 0x7f00_0000_0000
        let runs = PageRunTableTests.runs(1_000_000)
        let memory = PageRunTableTests.memory(base, base + 1_000_000 * 4 * 4096)
        let size = UInt64(1_000_000 * 3 * 4096)
        try memory.validate(file: "t", index: PageIndex(runs: runs, pagesFileSize: size), pagesFiles: [("p", size)])

        func refused(_ runs: [PageRun]) -> Bool {
            let size = runs.reduce(0) { $0 + $1.length }
            return (try? memory.validate(file: "t", index: PageIndex(runs: runs, pagesFileSize: size), pagesFiles: [("p", size)])) == nil
        }
        let a = PageRun(address: base, length: 8192, offset: 0)
        #expect(!refused([a, PageRun(address: base + 8192, length: 4096, offset: 8192)]))
        #expect(refused([PageRun(address: base + 8192, length: 4096, offset: 0), PageRun(address: base, length: 8192, offset: 4096)]), "out of order")
        #expect(refused([a, PageRun(address: base + 4096, length: 4096, offset: 8192)]), "overlapping")
        #expect(refused([PageRun(address: base - 4096, length: 8192, offset: 0)]), "outside the mapping")
        #expect(refused([PageRun(address: UInt64.max - 4095, length: 8192, offset: 0)]), "wrapping around")
        #expect(refused([PageRun(address: base, length: 4096, offset: 4096)]), "beyond the pages file")
        // A raw stream's runs may point anywhere inside it (cryo receive keeps pages where they arrived).
        func refused(_ runs: [PageRun], fileSize: UInt64) -> Bool {
            (try? memory.validate(file: "t", index: PageIndex(runs: runs, pagesFileSize: fileSize), pagesFiles: [("p", fileSize)])) == nil
        }
        #expect(!refused([PageRun(address: base, length: 4096, offset: 8192), PageRun(address: base + 4096, length: 4096, offset: 0)], fileSize: 12288))
        #expect(refused([PageRun(address: base, length: 4096, offset: 100)], fileSize: 12288), "unaligned offset")
        #expect(refused([PageRun(address: base, length: 8192, offset: 8192)], fileSize: 12288), "reaching past the file")
    }

    /// predump.img as `cryo pre-dump` writes it, and as a cryo before binary pre-dump runs wrote it.
    static func preDumpRecord(_ runs: [[PageRun]]) -> PreDumpRecord {
        PreDumpRecord(rootPid: 42, holderSocket: "cryo-predump-42-0", processes: runs.enumerated().map { i, r in
            .init(pid: Int32(42 + i), startTime: 1000 + UInt64(i), pageIndex: PageIndex(runs: r, pagesFileSize: r.reduce(0) { $0 + $1.length }))
        })
    }

    @Test("predump.img: binary runs read back, a JSON one of version 1 still read, mismatched tables refused")
    func preDumpRecord() throws {
        let path = PageRunTableTests.scratchFile("predump.img")
        defer { unlink(path); rmdir((path as NSString).deletingLastPathComponent) }
        let runs = [PageRunTableTests.runs(1_000_000), PageRunTableTests.runs(3), []]
        let record = PageRunTableTests.preDumpRecord(runs)
        func write(_ body: (FileDescriptor) throws -> Void) throws {
            unlink(path)
            let fd = try FileDescriptor.open(path, .writeOnly, options: [.create, .exclusiveCreate], permissions: [.ownerReadWrite])
            defer { try? fd.close() }
            try body(fd)
        }
        try write { try record.write(to: $0, path: path) }
        let back = try PreDumpRecord.read(path)
        #expect(back.processes.map(\.pageIndex.runs) == runs && back.processes.map(\.pid) == [42, 43, 44])
        #expect(back.processes.map(\.pageIndex.pagesFileSize) == runs.map { $0.reduce(0) { $0 + $1.length } })
        // The runs are not JSON any more: a million of them are 24 MB of records, not 70 MB of text.
        #expect(try RecordReader(path: path).version == ImageFormat.pageRunsVersion)
        #expect(try RecordReader(path: path).payload(.preDump).count < 1000)

        // Version 1 (before): the runs inside the JSON record.
        try write { fd in
            var writer = RecordWriter()
            try writer.append(.preDump, PageRunTableTests.preDumpRecord([PageRunTableTests.runs(5)]))
            try writer.write(to: fd, path: path)
        }
        #expect(try PreDumpRecord.read(path).processes.map(\.pageIndex.runs) == [PageRunTableTests.runs(5)])

        // Version 4 with a run table missing, or runs both in JSON and in a table.
        let refusals: [(RecordWriter, String)] = try [
            { () throws -> (RecordWriter, String) in
                var writer = RecordWriter(version: ImageFormat.pageRunsVersion)
                var header = PageRunTableTests.preDumpRecord([[], []])
                header.processes[0].pageIndex.pagesFileSize = 0
                try writer.append(.preDump, header)
                writer.append(.pageRuns, bytes: PageRunTable.encode([]))
                return (writer, "image predump.img record pageRuns: 1 run tables for 2 processes")
            }(),
            { () throws -> (RecordWriter, String) in
                var writer = RecordWriter(version: ImageFormat.pageRunsVersion)
                try writer.append(.preDump, PageRunTableTests.preDumpRecord([PageRunTableTests.runs(2)]))
                writer.append(.pageRuns, bytes: PageRunTable.encode(PageRunTableTests.runs(2)))
                return (writer, "image predump.img record preDump: pid 42 lists runs beside its pageRuns record")
            }(),
        ]
        for (writer, expected) in refusals {
            try write { try writer.write(to: $0, path: path) }
            do {
                _ = try PreDumpRecord.read(path)
                Issue.record("accepted: \(expected)")
            } catch {
                #expect("\(error)" == expected)
            }
        }
    }
}
