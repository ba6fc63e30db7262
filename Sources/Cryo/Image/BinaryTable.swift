import FoundationEssentials

/// The framing shared by the binary tables of records that come by the
/// thousand (mappings, descriptors, the file table): fixed-size records, then
/// a string table they point into. The record's CRC covers it like any other
/// payload; the reader checks every count, offset and length before use.
///
///     0  magic         4 bytes
///     4  record size   u32
///     8  count         u64
///    16  string bytes  u64
///    24  count records of `record size` bytes (little-endian fields)
///     .  string bytes: UTF-8, referred to as (offset u32, length u32); offset 0xffffffff is nil
struct BinaryTableWriter {
    static let headerSize = 24
    private(set) var records: [UInt8]
    private var strings: [UInt8] = []
    /// Equal strings are stored once (a path held open a thousand times, kind names).
    private var interned: [String: UInt32] = [:]
    private let magic: [UInt8]
    let recordSize: Int
    private var count = 0

    init(magic: String, recordSize: Int, capacity: Int) {
        self.magic = Array(magic.utf8)
        self.recordSize = recordSize
        records = []
        records.reserveCapacity(capacity * recordSize)
    }

    /// Appends one zeroed record; its fields are set with `put(_:_:at:)` and the base returned.
    mutating func newRecord() -> Int {
        let base = records.count
        records.append(contentsOf: repeatElement(0, count: recordSize))
        count += 1
        return base
    }

    mutating func put<T: FixedWidthInteger>(_ value: T, _ record: Int, at offset: Int) {
        records.withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: record + offset, as: T.self) }
    }

    mutating func put(_ ref: (UInt32, UInt32), _ record: Int, at offset: Int) {
        put(ref.0, record, at: offset)
        put(ref.1, record, at: offset + 4)
    }

    /// Where `text` sits in the string table; nil is (0xffffffff, 0).
    mutating func string(_ text: String?) -> (UInt32, UInt32) {
        guard let text else { return (UInt32.max, 0) }
        if let at = interned[text] { return (at, UInt32(text.utf8.count)) }
        let at = UInt32(strings.count)
        strings += text.utf8
        interned[text] = at
        return (at, UInt32(text.utf8.count))
    }

    /// Bytes stored in the string table as they are (JSON of a rare case).
    mutating func blob(_ bytes: [UInt8]) -> (UInt32, UInt32) {
        let at = UInt32(strings.count)
        strings += bytes
        return (at, UInt32(bytes.count))
    }

    func encoded() -> [UInt8] {
        var out = magic
        out.reserveCapacity(Self.headerSize + records.count + strings.count)
        out += le(UInt32(recordSize)) + le(UInt64(count)) + le(UInt64(strings.count))
        return out + records + strings
    }
}

/// Reads a table written by BinaryTableWriter; valid only inside `BinaryTableReader.read`.
struct BinaryTableReader {
    let raw: UnsafeRawBufferPointer
    let count: Int
    let recordSize: Int
    private let stringsStart: Int
    private let stringsCount: Int
    let file: String
    let record: String

    /// Checks the framing of `payload` and hands a reader to `body`.
    static func read<T>(_ payload: [UInt8], magic: String, recordSize: Int, file: String, record: String,
                        _ body: (BinaryTableReader) throws -> T) throws -> T {
        func refuse(_ problem: String) -> ImageError { ImageError(file: file, record: record, problem) }
        let headerSize = BinaryTableWriter.headerSize
        guard payload.count >= headerSize else { throw refuse("truncated: \(payload.count) bytes, shorter than its \(headerSize)-byte header") }
        guard Array(payload[0..<4]) == Array(magic.utf8) else { throw refuse("bad magic (not a \(record) table)") }
        let size = readLE(payload, 4, UInt32.self)
        guard size == recordSize else { throw refuse("records of \(size) bytes, this cryo reads \(recordSize)") }
        let count = readLE(payload, 8, UInt64.self)
        let stringBytes = readLE(payload, 16, UInt64.self)
        let room = UInt64(payload.count - headerSize)
        guard count <= room / UInt64(recordSize), stringBytes <= room,
              UInt64(headerSize) + count * UInt64(recordSize) + stringBytes == UInt64(payload.count) else {
            throw refuse("\(count) records and \(stringBytes) string bytes claimed, \(room) bytes present")
        }
        return try payload.withUnsafeBytes { raw in
            try body(BinaryTableReader(raw: raw, count: Int(count), recordSize: recordSize,
                                       stringsStart: headerSize + Int(count) * recordSize, stringsCount: Int(stringBytes),
                                       file: file, record: record))
        }
    }

    func refuse(_ index: Int, _ problem: String) -> ImageError {
        ImageError(file: file, record: record, "entry #\(index): \(problem)")
    }

    /// Field at `offset` of record `index`.
    @inline(__always)
    func field<T: FixedWidthInteger>(_ index: Int, _ offset: Int, _: T.Type) -> T {
        T(littleEndian: raw.loadUnaligned(fromByteOffset: BinaryTableWriter.headerSize + index * recordSize + offset, as: T.self))
    }

    /// The bytes a (offset, length) reference at `offset` of record `index` names; nil for the nil reference.
    func bytes(_ index: Int, _ offset: Int) throws -> UnsafeRawBufferPointer? {
        let at = field(index, offset, UInt32.self), length = field(index, offset + 4, UInt32.self)
        if at == UInt32.max && length == 0 { return nil }
        guard UInt64(at) + UInt64(length) <= UInt64(stringsCount) else {
            throw refuse(index, "a string reference (\(at), \(length)) points past the \(stringsCount)-byte string table")
        }
        return UnsafeRawBufferPointer(rebasing: raw[(stringsStart + Int(at))..<(stringsStart + Int(at) + Int(length))])
    }

    /// The string a reference names, refused unless it is UTF-8.
    func string(_ index: Int, _ offset: Int) throws -> String? {
        guard let bytes = try bytes(index, offset) else { return nil }
        guard let text = String(validating: bytes.assumingMemoryBound(to: UInt8.self), as: UTF8.self) else {
            throw refuse(index, "a string is not UTF-8")
        }
        return text
    }
}
