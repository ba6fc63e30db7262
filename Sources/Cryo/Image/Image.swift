import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// The on-disk image: one folder of record files and raw page files.
/// Docs/IMAGE-FORMAT.md describes the layout; this is its only reader and writer.
public enum ImageFormat {
    public static let magic: [UInt8] = Array("CRYOIMG\0".utf8)
    /// The highest version this cryo reads.
    public static let version: UInt32 = 11
    /// What files are written as unless they need more: version 2 marks a task
    /// file whose pages are compressed, version 3 one whose pages continue in
    /// part files, so an older cryo refuses them instead of restoring zstd
    /// frames or missing pages as memory. Version 4 task files keep the page
    /// index's runs in a binary `pageRuns` record (and may be compressed or in parts).
    /// Version 5 marks a task file whose mappings keep pages shared with the parent
    /// (CopyOnWrite.swift): its own pages alone are not its memory.
    /// Version 6 task files keep their mappings and descriptors in binary `mappings`
    /// and `descriptorTable` records, and files.img its table in `fileRecords`.
    /// Version 7 marks a task file that keeps from its parent parts of mappings
    /// (`inheritedRanges`), not only whole ones. Version 8 marks an inventory with
    /// processes that share their table or fs context with a sibling (`sharesWith`). Version 9 marks a
    /// task file with guard regions (`guards`), which an older cryo would leave out without a word.
    /// Version 10 marks one with AIO rings' heads and completed events not reaped at dump (`aioRings`).
    /// Version 11 marks one with a thread in seccomp strict mode (`strict`), which an older cryo would let run free.
    public static let baseVersion: UInt32 = 1
    public static let compressedPagesVersion: UInt32 = 2
    public static let pagePartsVersion: UInt32 = 3
    public static let pageRunsVersion: UInt32 = 4
    public static let inheritedPagesVersion: UInt32 = 5
    public static let binaryTablesVersion: UInt32 = 6
    public static let inheritedRangesVersion: UInt32 = 7
    public static let siblingSharingVersion: UInt32 = 8
    public static let guardRegionsVersion: UInt32 = 9
    public static let aioRingsVersion: UInt32 = 10
    public static let strictSeccompVersion: UInt32 = 11
    public static let fileHeaderSize = 16
    public static let recordHeaderSize = 24
    /// No record is larger than this; a length beyond it is corruption, not a reason to allocate.
    public static let maxRecordLength: UInt64 = 256 << 20
}

/// The kinds of record. Numbers are part of the format: never reuse one.
public enum RecordKind: UInt32, Sendable, CaseIterable {
    case inventory = 1
    case task = 2
    case threads = 3
    case memory = 4
    case pageIndex = 5
    case signals = 6
    case files = 7
    case descriptors = 8
    /// Only in a pre-dump folder's predump.img.
    case preDump = 9
    /// shmem.img: the tree's shared memory objects (SharedMemoryTable).
    case sharedMemory = 10
    /// Binary, not JSON: the page index's runs (PageRunTable), task files of version 4 on.
    case pageRuns = 11
    /// Binary (MappingTable): a memory record's mappings, task files of version 6 on.
    case mappings = 12
    /// Binary (DescriptorTableCodec): the descriptor table, task files of version 6 on.
    case descriptorTable = 13
    /// Binary (FileTableCodec): the file table, files.img of version 6 on.
    case fileRecords = 14
    /// lazy-remote.img: pages a `dump --lazy-pages` left out, served by its page server (LazyMigration.swift).
    case lazyRemote = 15
}

public struct ImageError: Error, CustomStringConvertible {
    public let file: String
    public let record: String?
    public let problem: String
    public init(file: String, record: String? = nil, _ problem: String) {
        self.file = file
        self.record = record
        self.problem = problem
    }
    public var description: String {
        "image \(file)\(record.map { " record \($0)" } ?? ""): \(problem)"
    }
}

/// Writes one record file: header, then [kind, length, crc32, payload] per record.
/// Files are created 0600 with O_EXCL|O_NOFOLLOW: images hold secrets.
public struct RecordWriter {
    private var body: [UInt8] = []
    private var count: UInt32 = 0
    private let version: UInt32
    public init(version: UInt32 = ImageFormat.baseVersion) { self.version = version }

    public mutating func append<T: Encodable>(_ kind: RecordKind, _ value: T) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let payload = [UInt8](try encoder.encode(value))
        body += le(kind.rawValue) + le(UInt32(0)) + le(UInt64(payload.count)) + le(crc32(payload)) + le(UInt32(0))
        body += payload
        count += 1
    }

    /// A record whose payload is not JSON (`pageRuns`).
    public mutating func append(_ kind: RecordKind, bytes payload: [UInt8]) {
        body += le(kind.rawValue) + le(UInt32(0)) + le(UInt64(payload.count)) + le(crc32(payload)) + le(UInt32(0))
        body += payload
        count += 1
    }

    public func write(to path: String) throws {
        let fd = try Files.open(path, .writeOnly, options: [.create, .exclusiveCreate, .noFollow],
                                permissions: [.ownerReadWrite])
        defer { try? fd.close() }
        try write(to: fd, path: path)
    }

    public func write(to fd: FileDescriptor, path: String) throws {
        try Files.write(fd, ImageFormat.magic + le(version) + le(count) + body, path: path)
    }
}

/// Reads a record file, checking everything before it is believed.
public struct RecordReader {
    public let path: String
    public private(set) var records: [(kind: RecordKind, payload: [UInt8])] = []
    /// The file's format version (at most ImageFormat.version).
    public private(set) var version: UInt32 = 0

    public init(path: String) throws {
        self.path = path
        let name = fileName(of: path)
        let bytes: [UInt8]
        do { bytes = try Files.read(path) } catch let error as SyscallError {
            throw ImageError(file: name, "cannot be read: \(error.errno.name) (\(error.errno.description))")
        }
        guard bytes.count >= ImageFormat.fileHeaderSize else {
            throw ImageError(file: name, "truncated: \(bytes.count) bytes, shorter than the file header")
        }
        guard Array(bytes[0..<8]) == ImageFormat.magic else { throw ImageError(file: name, "not a cryo image file (bad magic)") }
        version = readLE(bytes, 8, UInt32.self)
        guard version <= ImageFormat.version else {
            throw ImageError(file: name, "written in format version \(version) by a newer cryo; this cryo reads up to \(ImageFormat.version)")
        }
        let count = readLE(bytes, 12, UInt32.self)
        var offset = ImageFormat.fileHeaderSize
        for index in 0..<Int(count) {
            guard offset + ImageFormat.recordHeaderSize <= bytes.count else {
                throw ImageError(file: name, record: "#\(index)", "truncated: header ends past the end of the file")
            }
            let rawKind = readLE(bytes, offset, UInt32.self)
            let length = readLE(bytes, offset + 8, UInt64.self)
            let checksum = readLE(bytes, offset + 16, UInt32.self)
            guard let kind = RecordKind(rawValue: rawKind) else {
                throw ImageError(file: name, record: "#\(index)", "unknown record kind \(rawKind)")
            }
            let label = "#\(index) (\(kind))"
            guard length <= ImageFormat.maxRecordLength,
                  offset + ImageFormat.recordHeaderSize + Int(length) <= bytes.count else {
                throw ImageError(file: name, record: label, "truncated: \(length) bytes of payload claimed, \(bytes.count - offset - ImageFormat.recordHeaderSize) present")
            }
            let start = offset + ImageFormat.recordHeaderSize
            let payload = Array(bytes[start..<(start + Int(length))])
            guard crc32(payload) == checksum else { throw ImageError(file: name, record: label, "checksum mismatch (corrupt)") }
            records.append((kind, payload))
            offset = start + Int(length)
        }
        guard offset == bytes.count else {
            throw ImageError(file: name, "\(bytes.count - offset) unexpected bytes after the last record")
        }
    }

    /// The payload of the single record of `kind`.
    public func payload(_ kind: RecordKind) throws -> [UInt8] {
        let matches = records.filter { $0.kind == kind }
        guard matches.count == 1 else {
            throw ImageError(file: fileName(of: path), record: "\(kind)", "expected one such record, found \(matches.count)")
        }
        return matches[0].payload
    }

    /// The single record of `kind`, decoded.
    public func one<T: Decodable>(_ kind: RecordKind, as type: T.Type) throws -> T {
        let name = fileName(of: path)
        let payload = try payload(kind)
        do { return try JSONDecoder().decode(T.self, from: Data(payload)) } catch {
            throw ImageError(file: name, record: "\(kind)", "malformed: \(decodingProblem(error))")
        }
    }
}

func decodingProblem(_ error: Error) -> String {
    switch error {
    case DecodingError.keyNotFound(let key, _): return "missing field \(key.stringValue)"
    case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context),
         DecodingError.dataCorrupted(let context):
        return "bad value at \(context.codingPath.map(\.stringValue).joined(separator: ".")): \(context.debugDescription)"
    default: return "\(error)"
    }
}

func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value.littleEndian) { [UInt8]($0) } }
func readLE<T: FixedWidthInteger>(_ bytes: [UInt8], _ offset: Int, _: T.Type) -> T {
    bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
}

/// Eight tables of 256 for CRC-32 eight bytes at a time ("slicing-by-8"): table k
/// gives the CRC of a byte followed by k zero bytes. A task file of a million page
/// runs is 24 MB: byte at a time that cost about 0.1 s, this about a tenth of it.
private let crcTables: [UInt32] = {
    var tables = [UInt32](repeating: 0, count: 8 * 256)
    for n in 0..<256 {
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        tables[n] = c
    }
    for k in 1..<8 {
        for n in 0..<256 { tables[k * 256 + n] = (tables[(k - 1) * 256 + n] >> 8) ^ tables[Int(tables[(k - 1) * 256 + n] & 0xff)] }
    }
    return tables
}()

/// CRC-32 (IEEE), as zlib computes it.
public func crc32(_ bytes: [UInt8]) -> UInt32 {
    bytes.withUnsafeBytes { raw in
        crcTables.withUnsafeBufferPointer { t in
            var crc: UInt32 = 0xFFFF_FFFF
            var i = 0
            while i + 8 <= raw.count {
                let word = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)) ^ UInt64(crc)
                crc = t[7 * 256 + Int(word & 0xff)] ^ t[6 * 256 + Int((word >> 8) & 0xff)]
                    ^ t[5 * 256 + Int((word >> 16) & 0xff)] ^ t[4 * 256 + Int((word >> 24) & 0xff)]
                    ^ t[3 * 256 + Int((word >> 32) & 0xff)] ^ t[2 * 256 + Int((word >> 40) & 0xff)]
                    ^ t[1 * 256 + Int((word >> 48) & 0xff)] ^ t[Int(word >> 56)]
                i += 8
            }
            while i < raw.count {
                crc = t[Int((crc ^ UInt32(raw[i])) & 0xff)] ^ (crc >> 8)
                i += 1
            }
            return crc ^ 0xFFFF_FFFF
        }
    }
}

/// Names of the files inside an image folder.
public struct ImagePaths: Sendable {
    public let directory: String
    public init(_ directory: String) { self.directory = directory }
    public var inventory: String { "\(directory)/inventory.img" }
    public var files: String { "\(directory)/files.img" }
    public func task(_ pid: Int32) -> String { "\(directory)/task-\(pid).img" }
    /// Part 0 is pages-PID.img; a large dump continues the page stream in pages-PID.1.img, ...
    public func pages(_ pid: Int32, part: Int = 0) -> String { ImagePaths.part(part, of: "\(directory)/pages-\(pid).img") }
    /// The path of part `n` of the pages file `main`.
    static func part(_ n: Int, of main: String) -> String { n == 0 ? main : "\(main.dropLast(4)).\(n).img" }
    public func fileData(_ id: Int) -> String { "\(directory)/filedata-\(id).img" }
    public var sharedMemoryTable: String { "\(directory)/shmem.img" }
    /// The saved pages of shared memory object `id`.
    public func sharedMemory(_ id: Int) -> String { "\(directory)/shmem-\(id).img" }

    /// Makes the folder (0700) if need be and creates `name` in it, exclusively: the claim
    /// that the folder is this command's. A folder where `name` exists already "holds `what`".
    func claim(_ name: String, holding what: String) throws -> FileDescriptor {
        if !Files.exists(directory) { try Files.makeDirectory(directory, mode: 0o700, object: "image folder \(directory)") }
        do {
            return try Files.open("\(directory)/\(name)", .writeOnly, options: [.create, .exclusiveCreate, .noFollow],
                                  permissions: [.ownerReadWrite])
        } catch let error as SyscallError where error.errno == .fileExists {
            throw CryoError("image folder \(directory) already holds \(what) (\(name) exists); use an empty folder")
        } catch {
            throw CryoError("cannot write into image folder \(directory): \(error)")
        }
    }
}

/// What the folder holds: the format, who wrote it, the process tree.
public struct Inventory: Codable, Sendable {
    public var tool: String = "cryo"
    public var formatVersion: UInt32 = ImageFormat.baseVersion
    public var rootPid: Int32
    /// Every process of the tree, parents before their children.
    public var processes: [ProcessEntry]
    public var kernel: String
    public var shellJob: Bool
    public var pageSize: Int = 4096
    /// Namespaces of its own the tree is restored into (absent: cryo's).
    public var namespaces: NamespaceRecord?
    /// System V shared memory segments the tree has attached or owns (their contents in sysvshm-ID.img).
    public var sysvSharedMemory: [SysVSegment]?
    /// System V semaphore sets and message queues the dump took (SysVObjects.swift).
    public var sysvSemaphores: [SysVSemaphoreSet]? = nil
    public var sysvMessageQueues: [SysVMessageQueue]? = nil
    /// The tree's cgroups (Cgroups.swift); absent when dumped with --manage-cgroups ignore.
    public var cgroups: CgroupRecord? = nil
    /// Sessions of the tree whose controlling terminal is a pty of the tree (ControllingTerminals.swift).
    public var terminals: [SessionTerminal]? = nil
    /// Time namespaces of the tree other than cryo's, with their clocks at dump (TimeNamespace.swift).
    public var timeNamespaces: [TimeNamespaceRecord]? = nil

    public struct ProcessEntry: Codable, Sendable {
        public var pid: Int32
        public var ppid: Int32
        public var pgid: Int32
        public var sid: Int32
        public var comm: String
        /// For a zombie: its wait status (as waitpid reports it); it has no task file.
        public var zombieStatus: Int32?
        /// Stopped by a signal at dump; restored stopped.
        public var stopped: Bool?
        /// The signal it was stopped by (absent in older images: SIGSTOP).
        public var stopSignal: Int32? = nil
        /// The /dev/pts index of its controlling terminal, one of `terminals`; absent for none (or a shell job's).
        public var terminal: Int32? = nil
        /// It shares its parent's descriptor table (CLONE_FILES) / cwd, root and umask (CLONE_FS): cloned so
        /// again at restore; its task file lists no descriptors of its own (SharedContexts.swift).
        public var sharesFiles: Bool? = nil
        public var sharesFS: Bool? = nil
        /// The sibling it shares them with instead of its parent (format version 8): cloned from that
        /// sibling with CLONE_PARENT, listed before it.
        public var sharesWith: Int32? = nil
        /// Its time namespace and its children's (ids of `timeNamespaces`); absent: cryo's (TimeNamespace.swift).
        public var timeNamespace: UInt64? = nil
        public var timeForChildren: UInt64? = nil
    }

    /// Processes that run, and so have task and pages files.
    public var livePids: [Int32] { processes.filter { $0.zombieStatus == nil }.map(\.pid) }
}

extension Data {
    /// Byte arrays travel as base64 in records.
    var bytes: [UInt8] { [UInt8](self) }
}
