// The binary tables of format version 6: mappings, descriptors and the file
// table as fixed-size records plus a string table. No root, no processes:
// values in, the same values out; damaged bytes refused in one line.

@testable import Cryo
import CryoSystem
import Foundation
import Glibc
import Testing

/// JSON of a value with sorted keys: the records have no Equatable, their JSON is what `show --json` prints.
private func json<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}

private func mapping(_ i: Int, kind: MemoryRecord.Kind = .anonymous, path: String? = nil) -> MemoryRecord.Mapping {
    MemoryRecord.Mapping(start: 0x7f00_0000_0000 + UInt64(i) * 5 * 4096, end: 0x7f00_0000_0000 + UInt64(i) * 5 * 4096 + 4 * 4096,
                         protection: ["r", "rw", "rx", "", "rwx", "w"][i % 6], shared: i % 7 == 0, kind: kind, path: path,
                         fileOffset: UInt64(i) * 4096, device: nil, inode: nil, growsDown: false, noReserve: i % 2 == 0, advice: UInt32(i % 5))
}

private func refusal(_ body: () throws -> Any) -> String? {
    do {
        _ = try body()
        return nil
    } catch { return "\(error)" }
}

private func put<T: FixedWidthInteger>(_ value: T, at offset: Int, in bytes: inout [UInt8]) {
    withUnsafeBytes(of: value.littleEndian) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } }
}

/// Offset of record `i`'s field in a table payload.
private func at(_ i: Int, _ field: Int, size: Int) -> Int { 24 + i * size + field }

@Suite("binary mappings, descriptors and file table (no root)")
struct BinaryTableTests {
    @Test("mappings come back exactly: every kind, optional fields set and absent, odd values")
    func mappingsRoundTrip() throws {
        var mappings = (0..<13).map { mapping($0) }
        for (i, kind) in MappingTable.kinds.enumerated() { mappings[i].kind = kind }
        mappings[2].path = "/usr/lib/x86_64-linux-gnu/libc.so.6"
        mappings[2].device = 0xfe01
        mappings[2].inode = UInt64.max
        mappings[3].path = "/memfd:é∂😀 (deleted)"
        mappings[3].file = 7
        mappings[4].shmem = 0
        mappings[5].deleted = true
        mappings[5].file = 3
        mappings[6].deleted = false
        mappings[7].growsDown = true
        mappings[10].inherited = true
        mappings[11].aioEvents = 128
        mappings[0].hugePageSize = 2 << 20
        mappings[10].hugePageSize = 1 << 30
        mappings[1].inherited = false
        mappings[4].mayWrite = true
        mappings[0].droppable = true
        mappings[8].path = ""
        mappings[9].path = mappings[2].path   // stored once
        mappings[12].start = 0
        mappings[12].end = UInt64.max
        mappings[12].fileOffset = UInt64.max
        mappings[12].advice = UInt32.max
        let decoded = try MappingTable.decode(try MappingTable.encode(mappings), file: "task-42.img")
        #expect(try json(decoded) == json(mappings))
        #expect(try MappingTable.decode(try MappingTable.encode([]), file: "t").isEmpty)
        // Every field is in the table: a field added to Mapping but not to MappingTable would be lost at dump.
        #expect(Mirror(reflecting: mappings[0]).children.map { $0.label ?? "" }
            == ["start", "end", "protection", "shared", "kind", "path", "fileOffset", "device", "inode", "growsDown",
                "noReserve", "advice", "shmem", "file", "deleted", "inherited", "aioEvents", "hugePageSize", "mayWrite", "droppable"], "a new Mapping field: add it to MappingTable")
        // Every kind has its number: a new kind without one would fail every dump that meets it.
        #expect(Set(MappingTable.kinds.map(\.rawValue)) == Set(MemoryRecord.Kind.allCases.map(\.rawValue)))
        // "rwx" subsets come back in /proc's order whatever order they were written in.
        var odd = mapping(0)
        odd.protection = "xr"
        #expect(try MappingTable.decode(try MappingTable.encode([odd]), file: "t")[0].protection == "rx")
    }

    @Test("a million mappings: fixed-size records, one string each shared")
    func millionMappings() throws {
        let path = "/usr/lib/x86_64-linux-gnu/libm.so.6"
        let million = (0..<1_000_000).map { mapping($0, kind: $0 % 2 == 0 ? .file : .anonymous, path: $0 % 2 == 0 ? path : nil) }
        let encoded = try MappingTable.encode(million)
        #expect(encoded.count == 24 + 80 * 1_000_000 + path.utf8.count)
        let decoded = try MappingTable.decode(encoded, file: "t")
        #expect(decoded.count == million.count)
        for i in stride(from: 0, to: million.count, by: 9973) { #expect(try json(decoded[i]) == json(million[i])) }
        #expect(decoded.last?.start == million.last?.start && decoded.last?.path == million.last?.path)
    }

    @Test("damaged mappings are refused in one line naming file and record")
    func mappingsRefused() throws {
        var two = [mapping(0), mapping(1, kind: .file, path: "/bin/true")]
        two[0].deleted = true
        let good = try MappingTable.encode(two)
        func damaged(_ edit: (inout [UInt8]) -> Void) -> [UInt8] {
            var bytes = good
            edit(&bytes)
            return bytes
        }
        var notUTF8 = good
        notUTF8[notUTF8.count - 1] = 0xff
        let cases: [(String, [UInt8], String)] = [
            ("empty", [], "truncated"),
            ("header cut", Array(good.prefix(23)), "truncated"),
            ("bad magic", damaged { $0[0] = 0 }, "bad magic"),
            ("record size", damaged { put(UInt32(64), at: 4, in: &$0) }, "records of 64 bytes"),
            ("a byte too many", good + [0], "claimed"),
            ("a byte short", Array(good.dropLast()), "claimed"),
            ("huge count", damaged { put(UInt64.max, at: 8, in: &$0) }, "claimed"),
            ("huge strings", damaged { put(UInt64.max - 10, at: 16, in: &$0) }, "claimed"),
            ("unknown kind", damaged { $0[at(1, 68, size: MappingTable.recordSize)] = UInt8(MappingTable.kinds.count) },
             "unknown mapping kind \(MappingTable.kinds.count)"),
            ("protection bits", damaged { $0[at(0, 69, size: MappingTable.recordSize)] = 8 }, "unknown protection bits"),
            ("flags", damaged { put(UInt16(0x1000), at: at(0, 70, size: MappingTable.recordSize), in: &$0) }, "flags 0x1000"),
            ("deleted without its presence bit", damaged { put(UInt16(256), at: at(0, 70, size: MappingTable.recordSize), in: &$0) }, "flags 0x100"),
            ("inherited without its presence bit", damaged { put(UInt16(1024), at: at(0, 70, size: MappingTable.recordSize), in: &$0) }, "flags 0x400"),
            ("string past the table", damaged { put(UInt32(2), at: at(1, 56, size: MappingTable.recordSize), in: &$0) }, "points past"),
            ("string length huge", damaged { put(UInt32.max, at: at(1, 60, size: MappingTable.recordSize), in: &$0) }, "points past"),
            ("path not UTF-8", notUTF8, "not UTF-8"),
        ]
        for (what, payload, expected) in cases {
            let text = refusal { try MappingTable.decode(payload, file: "task-42.img") }
            #expect(text?.hasPrefix("image task-42.img record mappings: ") == true, "\(what): \(text ?? "accepted")")
            #expect(text?.contains(expected) == true && text?.contains("\n") == false, "\(what): \(text ?? "accepted")")
        }
    }

    static func table() -> FileTable {
        var files: [FileTable.OpenFile] = []
        for i in 0..<6 {
            let path = "/var/tmp/f\(i % 2)"
            files.append(FileTable.OpenFile(id: i, flags: UInt32(i % 3 == 0 ? O_RDONLY : O_RDWR), position: Int64(i) << 40, path: path,
                                            state: RegularFileState(path: path, size: 65536, mode: 0o600, device: 0xfe00, inode: UInt64(100 + i % 2),
                                                                    unlinked: false)))
        }
        // Kept as JSON: a ghost, a file with an owner, another kind, a plain file without a path of its own.
        var ghost = RegularFileState(path: "/tmp/gone", size: 10, mode: 0o644, device: 1, inode: 2, unlinked: true)
        (ghost.uid, ghost.gid, ghost.accessTime, ghost.modificationTime) = (1000, 1000, 5, 6)
        ghost.extents = [FileExtent(offset: 0, length: 10)]
        files.append(FileTable.OpenFile(id: 6, flags: UInt32(O_RDWR), position: 3, path: "/tmp/gone", state: ghost))
        var owned = files[1]
        owned.id = 7
        owned.owner = FileOwner(type: 1, pid: 42, signal: 29, async: true)
        files.append(owned)
        files.append(FileTable.OpenFile(id: 8, flags: UInt32(O_RDWR), position: 0, state: EventFDState(count: 3, semaphore: true)))
        files.append(FileTable.OpenFile(id: 9, flags: UInt32(O_WRONLY | O_APPEND), position: -1, path: nil,
                                        state: RegularFileState(path: "/é", size: 0, mode: 0o7777, device: UInt64.max, inode: 0, unlinked: false)))
        return FileTable(files: files)
    }

    @Test("the file table comes back exactly: packed plain files and JSON entries side by side")
    func fileTableRoundTrip() throws {
        let table = BinaryTableTests.table()
        let encoded = try FileTableCodec.encode(table)
        let decoded = try FileTableCodec.decode(encoded, file: "files.img")
        #expect(try json(decoded) == json(table))
        #expect(decoded.files.map(\.kind) == table.files.map(\.kind))
        // Plain files are packed (code 1), the rest JSON (code 0).
        let codes = (0..<table.files.count).map { i in UInt16(encoded[at(i, 52, size: 72)]) | UInt16(encoded[at(i, 53, size: 72)]) << 8 }
        #expect(codes == [1, 1, 1, 1, 1, 1, 0, 0, 0, 1])
        #expect(try FileTableCodec.decode(FileTableCodec.encode(FileTable(files: [])), file: "f").files.isEmpty)
    }

    @Test("a million plain files: fixed-size records, their paths stored once")
    func millionFiles() throws {
        let base = BinaryTableTests.table().files[0]
        var files: [FileTable.OpenFile] = []
        files.reserveCapacity(1_000_000)
        for i in 0..<1_000_000 {
            var f = base
            f.id = i
            f.position = Int64(i)
            files.append(f)
        }
        let encoded = try FileTableCodec.encode(FileTable(files: files))
        #expect(encoded.count == 24 + 72 * 1_000_000 + "/var/tmp/f0".utf8.count)
        let decoded = try FileTableCodec.decode(encoded, file: "files.img")
        #expect(decoded.files.count == 1_000_000 && decoded.files.last?.position == 999_999 && decoded.files.last?.path == "/var/tmp/f0")
        try decoded.validate(file: "files.img")
    }

    @Test("a damaged file table is refused in one line naming the entry")
    func fileTableRefused() throws {
        let good = try FileTableCodec.encode(BinaryTableTests.table())
        func damaged(_ edit: (inout [UInt8]) -> Void) -> [UInt8] {
            var bytes = good
            edit(&bytes)
            return bytes
        }
        // Entry 6 is JSON: its reference points at `{`; a byte of it changed makes it malformed.
        let jsonAt = Int(good[at(6, 64, size: 72)]) | Int(good[at(6, 65, size: 72)]) << 8
        let strings = 24 + 10 * 72
        let cases: [(String, [UInt8], String)] = [
            ("bad magic", damaged { $0[1] = 0 }, "bad magic"),
            ("cut", Array(good.dropLast(3)), "claimed"),
            ("unknown code", damaged { put(UInt16(999), at: at(0, 52, size: 72), in: &$0) }, "entry #0: unknown packed kind 999"),
            ("unknown bits", damaged { put(UInt16(6), at: at(1, 54, size: 72), in: &$0) }, "entry #1: unknown bits 0x6"),
            ("path bit without a path", damaged { put(UInt16(0), at: at(2, 54, size: 72), in: &$0) }, "entry #2: the path bit"),
            ("mode beyond 32 bits", damaged { put(UInt64(1) << 40, at: at(3, 24, size: 72), in: &$0) }, "entry #3: the packed regular state is malformed"),
            ("packed without its path", damaged { put(UInt32.max, at: at(4, 64, size: 72), in: &$0); put(UInt32(0), at: at(4, 68, size: 72), in: &$0) },
             "entry #4: the packed regular state is malformed"),
            ("JSON entry without JSON", damaged { put(UInt32.max, at: at(6, 64, size: 72), in: &$0); put(UInt32(0), at: at(6, 68, size: 72), in: &$0) },
             "entry #6: a JSON entry without its JSON"),
            ("JSON entry damaged", damaged { $0[strings + jsonAt] = UInt8(ascii: "[") }, "entry #6: malformed"),
            ("reference past the strings", damaged { put(UInt32(1 << 20), at: at(5, 56, size: 72), in: &$0) }, "entry #5: a string reference"),
        ]
        for (what, payload, expected) in cases {
            let text = refusal { try FileTableCodec.decode(payload, file: "files.img") }
            #expect(text?.hasPrefix("image files.img record fileRecords: ") == true, "\(what): \(text ?? "accepted")")
            #expect(text?.contains(expected) == true && text?.contains("\n") == false, "\(what): \(text ?? "accepted")")
        }
        // Ids out of order get past the codec and are refused by the table's validation.
        let swapped = damaged { put(Int64(1), at: at(0, 0, size: 72), in: &$0) }
        let table = try FileTableCodec.decode(swapped, file: "files.img")
        #expect(refusal { try table.validate(file: "files.img") }?.contains("file #0 carries id 1") == true)
    }

    @Test("descriptor tables come back exactly, locks included; damage is refused")
    func descriptors() throws {
        let record = DescriptorsRecord(descriptors: [
            .init(fd: 0, closeOnExec: false, file: 0, locks: nil),
            .init(fd: 1 << 19, closeOnExec: true, file: 9, locks: [FileLock(kind: .posix, write: true, start: 10, end: nil),
                                                                   FileLock(kind: .ofd, write: false, start: 0, end: 99)]),
            .init(fd: 7, closeOnExec: true, file: 1, locks: []),
            .init(fd: 9, closeOnExec: true, file: 2, locks: nil, borrowed: true),
        ])
        let encoded = try DescriptorTableCodec.encode(record)
        #expect(try json(DescriptorTableCodec.decode(encoded, file: "t")) == json(record))
        let million = DescriptorsRecord(descriptors: (0..<1_000_000).map { .init(fd: Int32($0), closeOnExec: $0 % 2 == 0, file: $0, locks: nil) })
        let big = try DescriptorTableCodec.encode(million)
        #expect(big.count == 24 + 24 * 1_000_000)
        #expect(try DescriptorTableCodec.decode(big, file: "t").descriptors.count == 1_000_000)

        func damaged(_ edit: (inout [UInt8]) -> Void) -> [UInt8] {
            var bytes = encoded
            edit(&bytes)
            return bytes
        }
        let cases: [(String, [UInt8], String)] = [
            ("bad magic", damaged { $0[0] = 0 }, "bad magic"),
            ("unknown bits", damaged { put(UInt32(8), at: at(0, 4, size: 24), in: &$0) }, "entry #0: unknown bits 0x8"),
            ("locks bit without locks", damaged { put(UInt32(2), at: at(0, 4, size: 24), in: &$0) }, "entry #0: the locks bit"),
            ("locks not JSON", damaged { $0[24 + 4 * 24] = UInt8(ascii: "{") }, "entry #1: malformed locks"),
        ]
        for (what, payload, expected) in cases {
            let text = refusal { try DescriptorTableCodec.decode(payload, file: "task-42.img") }
            #expect(text?.hasPrefix("image task-42.img record descriptorTable: ") == true, "\(what): \(text ?? "accepted")")
            #expect(text?.contains(expected) == true && text?.contains("\n") == false, "\(what): \(text ?? "accepted")")
        }
    }
}
