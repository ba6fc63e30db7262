import CryoSystem
import FoundationEssentials

/// files.img's `fileRecords` record (format version 6 on): the file table as
/// fixed-size binary records (BinaryTable.swift). A kind with a `packCode`
/// keeps its common case in the record's four words and one string; every
/// other entry (rare kinds, ghosts, an owner set) keeps its JSON object in the
/// string table, decoded as before. A thousand plain files are then a
/// thousand records, not a thousand JSON objects.
///
/// Record, 72 bytes:
///
///     0  id i64        8  position i64     16  four words of the packed state (u64 each)
///    48  flags u32    52  code u16 (0: JSON entry)    54  bits u16 (1: has path)
///    56  path (ref)   64  packed state's string, or the JSON entry (ref)
enum FileTableCodec {
    static let magic = "FILE"
    static let recordSize = 72
    private static let jsonEntry: UInt16 = 0

    /// Kinds by their packCode.
    private static let packed: [UInt16: any DescriptorKind.Type] = {
        var byCode: [UInt16: any DescriptorKind.Type] = [:]
        for kind in DescriptorKinds.all { if let code = kind.packCode { byCode[code] = kind } }
        return byCode
    }()

    static func encode(_ table: FileTable) throws -> [UInt8] {
        var w = BinaryTableWriter(magic: magic, recordSize: recordSize, capacity: table.files.count)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        for f in table.files {
            let r = w.newRecord()
            w.put(Int64(f.id), r, at: 0)
            w.put(f.position, r, at: 8)
            w.put(f.flags, r, at: 48)
            if f.owner == nil, let code = type(of: f.state).packCode, let p = f.state.pack() {
                for (i, word) in [p.w0, p.w1, p.w2, p.w3].enumerated() { w.put(word, r, at: 16 + 8 * i) }
                w.put(code, r, at: 52)
                w.put(UInt16(f.path == nil ? 0 : 1), r, at: 54)
                let path = w.string(f.path), text = w.string(p.text)
                w.put(path, r, at: 56)
                w.put(text, r, at: 64)
            } else {
                w.put(jsonEntry, r, at: 52)
                let json = w.blob([UInt8](try encoder.encode(f)))
                w.put((UInt32.max, UInt32(0)), r, at: 56)
                w.put(json, r, at: 64)
            }
        }
        return w.encoded()
    }

    static func decode(_ payload: [UInt8], file: String) throws -> FileTable {
        try BinaryTableReader.read(payload, magic: magic, recordSize: recordSize, file: file, record: "fileRecords") { t in
            var files: [FileTable.OpenFile] = []
            files.reserveCapacity(t.count)
            let decoder = JSONDecoder()
            for i in 0..<t.count {
                let code = t.field(i, 52, UInt16.self)
                if code == jsonEntry {
                    guard let json = try t.bytes(i, 64) else { throw t.refuse(i, "a JSON entry without its JSON") }
                    do { files.append(try decoder.decode(FileTable.OpenFile.self, from: Data(json))) } catch {
                        throw t.refuse(i, "malformed: \(decodingProblem(error))")
                    }
                    continue
                }
                guard let kind = packed[code] else { throw t.refuse(i, "unknown packed kind \(code)") }
                let bits = t.field(i, 54, UInt16.self)
                guard bits & ~1 == 0 else { throw t.refuse(i, "unknown bits 0x\(String(bits, radix: 16))") }
                let path = try t.string(i, 56)
                guard (path != nil) == (bits & 1 != 0) else { throw t.refuse(i, "the path bit disagrees with the path") }
                let p = PackedState(w0: t.field(i, 16, UInt64.self), w1: t.field(i, 24, UInt64.self),
                                    w2: t.field(i, 32, UInt64.self), w3: t.field(i, 40, UInt64.self), text: try t.string(i, 64))
                guard let state = kind.unpack(p) else { throw t.refuse(i, "the packed \(kind.name) state is malformed") }
                files.append(FileTable.OpenFile(id: Int(t.field(i, 0, Int64.self)), flags: t.field(i, 48, UInt32.self),
                                                position: t.field(i, 8, Int64.self), path: path, state: state))
            }
            return FileTable(files: files)
        }
    }
}

extension FileTable {
    /// files.img, version 6: the table in one binary `fileRecords` record.
    func write(to path: String) throws {
        var writer = RecordWriter(version: ImageFormat.binaryTablesVersion)
        writer.append(.fileRecords, bytes: try FileTableCodec.encode(self))
        try writer.write(to: path)
    }

    /// files.img of any version: JSON `files` before version 6, binary `fileRecords` from 6 on.
    static func read(_ path: String) throws -> FileTable {
        let reader = try RecordReader(path: path)
        guard reader.version >= ImageFormat.binaryTablesVersion else { return try reader.one(.files, as: FileTable.self) }
        return try FileTableCodec.decode(try reader.payload(.fileRecords), file: fileName(of: path))
    }
}

/// A task file's `descriptorTable` record (format version 6 on): the descriptor
/// table as 24-byte records; locks, rare, as JSON in the string table.
///
///     0  fd i32    4  bits u32 (close-on-exec 1, locks 2, borrowed 4: an older cryo refuses it)    8  file i64    16  locks (ref)
enum DescriptorTableCodec {
    static let magic = "FDS\0"
    static let recordSize = 24

    static func encode(_ record: DescriptorsRecord) throws -> [UInt8] {
        var w = BinaryTableWriter(magic: magic, recordSize: recordSize, capacity: record.descriptors.count)
        for d in record.descriptors {
            let r = w.newRecord()
            w.put(d.fd, r, at: 0)
            w.put(UInt32((d.closeOnExec ? 1 : 0) | (d.locks != nil ? 2 : 0) | (d.borrowed == true ? 4 : 0)), r, at: 4)
            w.put(Int64(d.file), r, at: 8)
            let locks = try d.locks.map { [UInt8](try JSONEncoder().encode($0)) }
            let ref = locks.map { w.blob($0) } ?? w.string(nil)
            w.put(ref, r, at: 16)
        }
        return w.encoded()
    }

    static func decode(_ payload: [UInt8], file: String) throws -> DescriptorsRecord {
        try BinaryTableReader.read(payload, magic: magic, recordSize: recordSize, file: file, record: "descriptorTable") { t in
            var descriptors: [DescriptorsRecord.Descriptor] = []
            descriptors.reserveCapacity(t.count)
            for i in 0..<t.count {
                let bits = t.field(i, 4, UInt32.self)
                guard bits & ~7 == 0 else { throw t.refuse(i, "unknown bits 0x\(String(bits, radix: 16))") }
                let json = try t.bytes(i, 16)
                guard (json != nil) == (bits & 2 != 0) else { throw t.refuse(i, "the locks bit disagrees with the locks") }
                var locks: [FileLock]?
                if let json {
                    do { locks = try JSONDecoder().decode([FileLock].self, from: Data(json)) } catch {
                        throw t.refuse(i, "malformed locks: \(decodingProblem(error))")
                    }
                }
                descriptors.append(DescriptorsRecord.Descriptor(fd: t.field(i, 0, Int32.self), closeOnExec: bits & 1 != 0,
                                                                file: Int(t.field(i, 8, Int64.self)), locks: locks,
                                                                borrowed: bits & 4 != 0 ? true : nil))
            }
            return DescriptorsRecord(descriptors: descriptors)
        }
    }
}
