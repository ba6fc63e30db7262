/// One saved range of pages: `length` bytes at `address`, stored at `offset` of the page stream.
public struct PageRun: Codable, Equatable, Sendable {
    public var address: UInt64
    public var length: UInt64
    public var offset: UInt64
    var end: UInt64 { address + length }

    public init(address: UInt64, length: UInt64, offset: UInt64) {
        self.address = address
        self.length = length
        self.offset = offset
    }

    // In JSON (`show --json`, pre-dump records, task files before format version 4): [address, length, offset].
    public init(from decoder: Decoder) throws {
        var fields = try decoder.unkeyedContainer()
        address = try fields.decode(UInt64.self)
        length = try fields.decode(UInt64.self)
        offset = try fields.decode(UInt64.self)
        guard fields.isAtEnd else {
            throw DecodingError.dataCorruptedError(in: fields, debugDescription: "a page run is [address, length, offset]")
        }
    }

    public func encode(to encoder: Encoder) throws {
        var fields = encoder.unkeyedContainer()
        try fields.encode(address)
        try fields.encode(length)
        try fields.encode(offset)
    }
}

extension PageRun: CustomStringConvertible {
    public var description: String { "[0x\(String(address, radix: 16)), \(length), \(offset)]" }
}

/// The `pageRuns` record of a task file (format version 4): the page index's
/// runs as fixed-size binary records, so that a million runs are read with one
/// copy and decoded in milliseconds (as JSON they took most of a restore's
/// image reading). The record's CRC covers it like any other payload.
///
///     0  magic        4 bytes "RUNS"
///     4  record size  u32, 24
///     8  count        u64
///    16  count records: address u64, length u64, offset u64 (little-endian)
public enum PageRunTable {
    static let magic: [UInt8] = Array("RUNS".utf8)
    static let headerSize = 16
    static let recordSize = 24

    public static func encode(_ runs: [PageRun]) -> [UInt8] {
        let size = headerSize + runs.count * recordSize
        return [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            let raw = UnsafeMutableRawBufferPointer(buffer)
            raw.copyBytes(from: magic)
            raw.storeBytes(of: UInt32(recordSize).littleEndian, toByteOffset: 4, as: UInt32.self)
            raw.storeBytes(of: UInt64(runs.count).littleEndian, toByteOffset: 8, as: UInt64.self)
            for (i, run) in runs.enumerated() {
                let at = headerSize + i * recordSize
                raw.storeBytes(of: run.address.littleEndian, toByteOffset: at, as: UInt64.self)
                raw.storeBytes(of: run.length.littleEndian, toByteOffset: at + 8, as: UInt64.self)
                raw.storeBytes(of: run.offset.littleEndian, toByteOffset: at + 16, as: UInt64.self)
            }
            initialized = size
        }
    }

    /// The runs of a `pageRuns` payload of `file`; only its framing is checked here (MemoryRecord.validate checks the runs).
    public static func decode(_ payload: [UInt8], file: String) throws -> [PageRun] {
        func refuse(_ problem: String) -> ImageError { ImageError(file: file, record: "pageRuns", problem) }
        guard payload.count >= headerSize else { throw refuse("truncated: \(payload.count) bytes, shorter than its 16-byte header") }
        guard Array(payload[0..<4]) == magic else { throw refuse("bad magic (not a page run table)") }
        let recordSize = readLE(payload, 4, UInt32.self)
        guard recordSize == self.recordSize else { throw refuse("records of \(recordSize) bytes, this cryo reads \(self.recordSize)") }
        let count = readLE(payload, 8, UInt64.self)
        guard count <= UInt64(payload.count - headerSize) / UInt64(recordSize),
              headerSize + Int(count) * Int(recordSize) == payload.count else {
            throw refuse("\(count) runs claimed, \(payload.count - headerSize) bytes of records present")
        }
        return payload.withUnsafeBytes { raw in
            [PageRun](unsafeUninitializedCapacity: Int(count)) { buffer, initialized in
                for i in 0..<Int(count) {
                    let at = headerSize + i * Int(recordSize)
                    buffer[i] = PageRun(address: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: at, as: UInt64.self)),
                                        length: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: at + 8, as: UInt64.self)),
                                        offset: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: at + 16, as: UInt64.self)))
                }
                initialized = Int(count)
            }
        }
    }
}
