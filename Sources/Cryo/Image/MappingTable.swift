/// The `mappings` record of a task file (format version 6 on): the memory
/// record's mappings as fixed-size binary records with their paths in the
/// string table (BinaryTable.swift), so 10,000 mappings are not 10,000 JSON
/// objects to encode while the tree is frozen and to decode before a restore.
///
/// Record, 80 bytes:
///
///     0  start u64        8  end u64         16  fileOffset u64
///    24  device u64      32  inode u64       40  shmem i64
///    48  file i64        56  path (ref)      64  advice u32
///    68  kind u8 (index in `kinds`)         69  protection u8 (r 1, w 2, x 4)
///    70  flags u16: shared 1, growsDown 2, noReserve 4, device 8, inode 16, shmem 32, file 64, deleted given 128, deleted 256,
///        inherited given 512, inherited 1024, aioEvents 2048, hugetlb 4096, mayWrite 8192, droppable 16384
///    72  aioEvents u32   76  log2 of the huge page size u32 (hugetlb; else 0)
enum MappingTable {
    static let magic = "MAPS"
    static let recordSize = 80
    /// Kind numbers are part of the format: append, never reorder.
    static let kinds: [MemoryRecord.Kind] = [.anonymous, .sharedAnonymous, .file, .memfd, .heap, .stack, .vdso, .vvar,
                                             .vvarClock, .vsyscall, .sysvShm, .aioRing, .packetRing]

    static func encode(_ mappings: [MemoryRecord.Mapping]) throws -> [UInt8] {
        var w = BinaryTableWriter(magic: magic, recordSize: recordSize, capacity: mappings.count)
        for m in mappings {
            let r = w.newRecord()
            w.put(m.start, r, at: 0)
            w.put(m.end, r, at: 8)
            w.put(m.fileOffset, r, at: 16)
            w.put(m.device ?? 0, r, at: 24)
            w.put(m.inode ?? 0, r, at: 32)
            w.put(Int64(m.shmem ?? 0), r, at: 40)
            w.put(Int64(m.file ?? 0), r, at: 48)
            let path = w.string(m.path)
            w.put(path, r, at: 56)
            w.put(m.advice, r, at: 64)
            guard let kind = kinds.firstIndex(of: m.kind) else { throw CryoError("mapping kind \(m.kind) has no number in the mappings table") }
            w.put(UInt8(kind), r, at: 68)
            let p = m.protection
            w.put(UInt8((p.contains("r") ? 1 : 0) | (p.contains("w") ? 2 : 0) | (p.contains("x") ? 4 : 0)), r, at: 69)
            var flags: UInt16 = m.shared ? 1 : 0
            if m.growsDown { flags |= 2 }
            if m.noReserve { flags |= 4 }
            if m.device != nil { flags |= 8 }
            if m.inode != nil { flags |= 16 }
            if m.shmem != nil { flags |= 32 }
            if m.file != nil { flags |= 64 }
            if let deleted = m.deleted { flags |= 128 | (deleted ? 256 : 0) }
            if let inherited = m.inherited { flags |= 512 | (inherited ? 1024 : 0) }
            if let events = m.aioEvents {
                flags |= 2048
                w.put(events, r, at: 72)
            }
            if let size = m.hugePageSize {
                flags |= 4096
                w.put(UInt32(size.trailingZeroBitCount), r, at: 76)
            }
            if m.mayWrite == true { flags |= 8192 }
            if m.droppable == true { flags |= 16384 }
            w.put(flags, r, at: 70)
        }
        return w.encoded()
    }

    /// The mappings of a `mappings` payload of `file`; only the encoding is checked here (MemoryRecord.validate checks the layout).
    /// "r", "w", "x" as the bits 1, 2, 4 say: one string per mapping built without concatenating.
    private static let protections = (0..<8).map { (prot: Int) in
        (prot & 1 != 0 ? "r" : "") + (prot & 2 != 0 ? "w" : "") + (prot & 4 != 0 ? "x" : "")
    }

    static func decode(_ payload: [UInt8], file: String) throws -> [MemoryRecord.Mapping] {
        try BinaryTableReader.read(payload, magic: magic, recordSize: recordSize, file: file, record: "mappings") { t in
            var mappings: [MemoryRecord.Mapping] = []
            mappings.reserveCapacity(t.count)
            for i in 0..<t.count {
                let kind = Int(t.field(i, 68, UInt8.self)), prot = t.field(i, 69, UInt8.self), flags = t.field(i, 70, UInt16.self)
                guard kind < kinds.count else { throw t.refuse(i, "unknown mapping kind \(kind)") }
                let hugeShift = t.field(i, 76, UInt32.self)
                guard prot & ~7 == 0, flags & ~0x7fff == 0, flags & 4096 == 0 ? hugeShift == 0 : (16...34).contains(hugeShift),
                      flags & 256 == 0 || flags & 128 != 0,
                      flags & 1024 == 0 || flags & 512 != 0 else {
                    throw t.refuse(i, "unknown protection bits 0x\(String(prot, radix: 16)) or flags 0x\(String(flags, radix: 16))")
                }
                let shmem = t.field(i, 40, Int64.self), fileID = t.field(i, 48, Int64.self)
                mappings.append(MemoryRecord.Mapping(
                    start: t.field(i, 0, UInt64.self), end: t.field(i, 8, UInt64.self),
                    protection: protections[Int(prot)],
                    shared: flags & 1 != 0, kind: kinds[kind], path: try t.string(i, 56),
                    fileOffset: t.field(i, 16, UInt64.self),
                    device: flags & 8 != 0 ? t.field(i, 24, UInt64.self) : nil,
                    inode: flags & 16 != 0 ? t.field(i, 32, UInt64.self) : nil,
                    growsDown: flags & 2 != 0, noReserve: flags & 4 != 0, advice: t.field(i, 64, UInt32.self),
                    shmem: flags & 32 != 0 ? Int(shmem) : nil, file: flags & 64 != 0 ? Int(fileID) : nil,
                    deleted: flags & 128 != 0 ? flags & 256 != 0 : nil,
                    inherited: flags & 512 != 0 ? flags & 1024 != 0 : nil,
                    aioEvents: flags & 2048 != 0 ? t.field(i, 72, UInt32.self) : nil,
                    hugePageSize: flags & 4096 != 0 ? UInt64(1) << UInt64(hugeShift) : nil,
                    mayWrite: flags & 8192 != 0 ? true : nil, droppable: flags & 16384 != 0 ? true : nil))
            }
            return mappings
        }
    }
}
