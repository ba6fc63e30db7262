// Unit tests that need no root and start no process: the image container,
// its rejection of every kind of damage, and the record reader under random
// mutation. They run for any user (the end-to-end suites need root).

@testable import Cryo
import CryoSystem
import Foundation
import Glibc
import Testing

private struct Sample: Codable, Equatable {
    var name: String
    var count: Int
    var runs: [[UInt64]]
}

private let samples = [Sample(name: "first", count: 1, runs: [[0x1000, 4096]]),
                       Sample(name: "second with spaces", count: -7, runs: [])]

/// A fresh private folder for one test, removed by `remove()`.
private struct TempFolder {
    let path: String
    init() {
        var template = Array("/tmp/cryo-unit-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }
    func file(_ name: String) -> String { "\(path)/\(name)" }
    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// A valid record file: an inventory record and a task record of `samples`.
private func validImage(version: UInt32 = ImageFormat.baseVersion) throws -> [UInt8] {
    let folder = TempFolder()
    defer { folder.remove() }
    var writer = RecordWriter(version: version)
    try writer.append(.inventory, samples[0])
    try writer.append(.task, samples[1])
    try writer.write(to: folder.file("image.img"))
    return [UInt8](FileManager.default.contents(atPath: folder.file("image.img"))!)
}

/// Reads `bytes` as a record file named image.img.
private func read(_ bytes: [UInt8]) throws -> RecordReader {
    let folder = TempFolder()
    defer { folder.remove() }
    FileManager.default.createFile(atPath: folder.file("image.img"), contents: Data(bytes))
    return try RecordReader(path: folder.file("image.img"))
}

private func put<T: FixedWidthInteger>(_ value: T, at offset: Int, in bytes: inout [UInt8]) {
    withUnsafeBytes(of: value.littleEndian) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } }
}

/// The first record's header starts right after the file header.
private let firstRecord = ImageFormat.fileHeaderSize

@Suite("image container (no root)")
struct ImageContainerTests {
    @Test("records written are read back, in order, with their kinds and values")
    func roundTrip() throws {
        let reader = try read(try validImage())
        #expect(reader.records.map(\.kind) == [.inventory, .task])
        #expect(try reader.one(.inventory, as: Sample.self) == samples[0])
        #expect(try reader.one(.task, as: Sample.self) == samples[1])
    }

    @Test("a record of raw bytes comes back byte for byte")
    func rawBytes() throws {
        let folder = TempFolder()
        defer { folder.remove() }
        let payload: [UInt8] = (0..<300).map { UInt8($0 & 0xff) }
        var writer = RecordWriter(version: ImageFormat.version)
        writer.append(.pageRuns, bytes: payload)
        try writer.write(to: folder.file("raw.img"))
        #expect(try RecordReader(path: folder.file("raw.img")).payload(.pageRuns) == payload)
    }

    @Test("a record file is created 0600 and never over an existing file")
    func createdPrivately() throws {
        let folder = TempFolder()
        defer { folder.remove() }
        var writer = RecordWriter()
        try writer.append(.inventory, samples[0])
        try writer.write(to: folder.file("x.img"))
        var st = stat()
        #expect(stat(folder.file("x.img"), &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(throws: (any Error).self) { try writer.write(to: folder.file("x.img")) }
    }

    @Test("CRC-32 is zlib's (IEEE) checksum")
    func crc() {
        #expect(crc32(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(crc32([]) == 0)
    }

    /// One kind of damage: how to make it, and what the refusal must say.
    struct Damage: CustomTestStringConvertible, Sendable {
        let name: String
        let expected: String
        let apply: @Sendable (inout [UInt8]) -> Void
        var testDescription: String { name }
    }

    static let damages: [Damage] = [
        Damage(name: "empty file", expected: "shorter than the file header") { $0 = [] },
        Damage(name: "cut inside the file header", expected: "shorter than the file header") { $0 = Array($0.prefix(10)) },
        Damage(name: "bad magic", expected: "bad magic") { $0[0] ^= 0xff },
        Damage(name: "version from a newer cryo", expected: "by a newer cryo") { put(ImageFormat.version + 1, at: 8, in: &$0) },
        Damage(name: "one more record counted than present", expected: "header ends past the end of the file") {
            put(UInt32(3), at: 12, in: &$0)
        },
        Damage(name: "cut inside a record header", expected: "header ends past the end of the file") {
            $0 = Array($0.prefix(firstRecord + 10))
        },
        Damage(name: "cut inside a payload", expected: "truncated") { $0 = Array($0.dropLast(5)) },
        Damage(name: "payload length beyond the file", expected: "truncated") {
            put(UInt64(1 << 20), at: firstRecord + 8, in: &$0)
        },
        Damage(name: "payload length beyond any record", expected: "truncated") {
            put(ImageFormat.maxRecordLength + 1, at: firstRecord + 8, in: &$0)
        },
        Damage(name: "unknown record kind", expected: "unknown record kind 999") { put(UInt32(999), at: firstRecord, in: &$0) },
        Damage(name: "a payload byte changed", expected: "checksum mismatch") {
            $0[firstRecord + ImageFormat.recordHeaderSize + 2] ^= 0x20
        },
        Damage(name: "checksum changed", expected: "checksum mismatch") { $0[firstRecord + 16] ^= 1 },
        Damage(name: "trailing bytes", expected: "3 unexpected bytes after the last record") { $0 += [1, 2, 3] },
        Damage(name: "fewer records counted than present", expected: "unexpected bytes after the last record") {
            put(UInt32(1), at: 12, in: &$0)
        },
    ]

    @Test("a damaged record file is refused, naming the file and the damage", arguments: damages)
    func refused(_ damage: Damage) throws {
        var bytes = try validImage()
        damage.apply(&bytes)
        let error = #expect(throws: ImageError.self) { try read(bytes) }
        #expect(error?.file == "image.img")
        #expect(error?.description.contains(damage.expected) == true, "\(error.map { "\($0)" } ?? "no error")")
    }

    /// A record whose JSON does not fit the type it is read as.
    static let malformed: [(json: String, expected: String)] = [
        (#"{"name": 5, "count": 1, "runs": []}"#, "bad value at name"),
        (#"{"name": "x", "count": "one", "runs": []}"#, "bad value at count"),
        (#"{"name": "x", "count": 1, "runs": [["a"]]}"#, "bad value at runs"),
        (#"{"name": "x", "runs": []}"#, "missing field count"),
        (#"{"name": "x", "count": 1, "runs": []"#, "malformed"),
        (#"[]"#, "malformed"),
    ]

    @Test("a record with wrong field types or missing fields is refused as malformed", arguments: malformed)
    func wrongFields(_ json: String, _ expected: String) throws {
        let folder = TempFolder()
        defer { folder.remove() }
        var writer = RecordWriter()
        writer.append(.task, bytes: Array(json.utf8))
        try writer.write(to: folder.file("task-1.img"))
        let reader = try RecordReader(path: folder.file("task-1.img"))
        let error = #expect(throws: ImageError.self) { try reader.one(.task, as: Sample.self) }
        #expect(error?.record == "task")
        #expect(error?.description.contains(expected) == true, "\(error.map { "\($0)" } ?? "no error")")
    }

    @Test("a missing or repeated record is refused with the count found")
    func missingOrRepeated() throws {
        let reader = try read(try validImage())
        #expect((#expect(throws: ImageError.self) { try reader.one(.memory, as: Sample.self) })?
            .description.contains("found 0") == true)
        let folder = TempFolder()
        defer { folder.remove() }
        var writer = RecordWriter()
        try writer.append(.task, samples[0])
        try writer.append(.task, samples[1])
        try writer.write(to: folder.file("twice.img"))
        let twice = try RecordReader(path: folder.file("twice.img"))
        #expect((#expect(throws: ImageError.self) { try twice.one(.task, as: Sample.self) })?
            .description.contains("found 2") == true)
    }

    @Test("a missing file is refused naming it")
    func missingFile() {
        let error = #expect(throws: ImageError.self) { try RecordReader(path: "/nonexistent-cryo/task-1.img") }
        #expect(error?.file == "task-1.img")
    }

    /// Seeded, so a failure can be replayed: xorshift64*.
    struct Random {
        var state: UInt64
        mutating func next() -> UInt64 {
            state ^= state >> 12; state ^= state << 25; state ^= state >> 27
            return state &* 0x2545_F491_4F6C_DD1D
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    }

    @Test("under random damage the reader refuses, or reads back exactly what was written",
          arguments: [UInt64(1), 0x5eed, 0xc0ffee, 20261205])
    func mutation(seed: UInt64) throws {
        let valid = try validImage()
        var random = Random(state: seed)
        for round in 0..<150 {
            var bytes = valid
            switch random.below(4) {
            case 0:  // a few bytes changed anywhere
                for _ in 0...random.below(3) { bytes[random.below(bytes.count)] ^= UInt8(1 + random.below(255)) }
            case 1:  // cut
                bytes = Array(bytes.prefix(random.below(bytes.count)))
            case 2:  // garbage appended
                bytes += (0...random.below(32)).map { _ in UInt8(random.below(256)) }
            default:  // a random header word
                put(UInt32(truncatingIfNeeded: random.next()), at: 4 * random.below(bytes.count / 4), in: &bytes)
            }
            do {
                let reader = try read(bytes)
                // Accepted: only reserved header bytes can differ, and the records must be the originals.
                #expect(try reader.one(.inventory, as: Sample.self) == samples[0], "seed \(seed) round \(round)")
                #expect(try reader.one(.task, as: Sample.self) == samples[1], "seed \(seed) round \(round)")
            } catch is ImageError {
                // Refused in one line: what must happen to damage.
            }
        }
    }
}

@Suite("text helpers that replace Foundation's (no root)")
struct TextHelperTests {
    @Test("trimmed() drops spaces, tabs and newlines at both ends only",
          arguments: [("  a b \n", "a b"), ("\t42\n", "42"), ("", ""), (" \n\t ", ""), ("x", "x")])
    func trimmed(_ input: String, _ expected: String) {
        #expect(input.trimmed() == expected)
    }

    @Test("padded(to:) pads with spaces or cuts, as NSString's padding(toLength:) does",
          arguments: [("ab", 4, "ab  "), ("abcdef", 3, "abc"), ("abc", 3, "abc"), ("", 2, "  ")])
    func padded(_ input: String, _ width: Int, _ expected: String) {
        #expect(input.padded(to: width) == expected)
    }

    @Test("String(printf:) formats numbers as printf does")
    func printf() {
        #expect(String(printf: "%.3f", 1.23456) == "1.235")
        #expect(String(printf: "%02x", UInt8(7)) == "07")
        #expect(String(printf: "pid %d: %llu pages", Int32(42), UInt64(1) << 40) == "pid 42: 1099511627776 pages")
        #expect(String(printf: "%.0f µs", 51.4) == "51 µs")
    }

    @Test("fileName(of:) and folder(of:) split paths as NSString does",
          arguments: [("/a/b/c.img", "c.img", "/a/b"), ("/a/b/", "b", "/a"), ("c.img", "c.img", ""),
                      ("/c", "c", "/"), ("/", "/", "/"), ("a//b", "b", "a")])
    func paths(_ path: String, _ name: String, _ folder: String) {
        #expect(fileName(of: path) == name)
        #expect(CryoSystem.folder(of: path) == folder)
    }

    @Test("no source file of cryo imports all of Foundation (its ICU tables would triple the binary)")
    func noFoundation() throws {
        let sources = Locations.packageRoot + "/Sources"
        let enumerator = FileManager.default.enumerator(atPath: sources)
        var offenders: [String] = []
        var scanned = 0
        while let relative = enumerator?.nextObject() as? String {
            // ParasiteEmbed is a host build tool, not part of the cryo binary.
            guard relative.hasSuffix(".swift"), !relative.hasPrefix("ParasiteEmbed") else { continue }
            scanned += 1
            let text = readText("\(sources)/\(relative)")
            if text.split(separator: "\n").contains(where: { $0.trimmed() == "import Foundation" }) { offenders.append(relative) }
        }
        #expect(scanned > 20, "found only \(scanned) Swift files under \(sources)")
        #expect(offenders.isEmpty, "import FoundationEssentials instead in \(offenders)")
    }
}

@Suite("test hooks from the environment (no root)")
struct TestHookTests {
    static let environment = ["CRYO_KILL_AT": "restore-memory#2", "CRYO_STOP_AT": "before-clone",
                              "CRYO_TEST_PARASITE_FAULT": "dead0", "CRYO_PAGE_COPY": "pipe", "CRYO_LAZY_NO_PUSH": "1"]

    @Test("an ordinary start reads every hook")
    func ordinary() {
        let hooks = TestHooks(secure: false) { Self.environment[$0] }
        #expect(hooks.killAt == "restore-memory#2")
        #expect(hooks.stopAt == "before-clone")
        #expect(hooks.parasiteFault == 0xdead0)
        #expect(hooks.pageCopy == "pipe")
        #expect(hooks.lazyNoPush)
    }

    @Test("with AT_SECURE (file capabilities, setuid) every hook is ignored and none is even read")
    func secure() {
        var asked: [String] = []
        let hooks = TestHooks(secure: true) { asked.append($0); return Self.environment[$0] }
        #expect(hooks.killAt == nil && hooks.stopAt == nil && hooks.parasiteFault == nil && hooks.pageCopy == nil)
        #expect(!hooks.lazyNoPush)
        #expect(asked.isEmpty, "read \(asked) though secure")
    }

    @Test("nothing set: no hook")
    func unset() {
        let hooks = TestHooks(secure: false) { _ in nil }
        #expect(hooks.killAt == nil && hooks.stopAt == nil && hooks.parasiteFault == nil && hooks.pageCopy == nil)
        #expect(!hooks.lazyNoPush)
    }

    static func auxv(_ pairs: [(UInt64, UInt64)]) -> [UInt8] {
        pairs.flatMap { pair in [pair.0, pair.1].flatMap { word in withUnsafeBytes(of: word.littleEndian) { Array($0) } } }
    }

    @Test("AT_SECURE is read from the auxiliary vector: set, clear, absent, after AT_NULL")
    func atSecure() throws {
        #expect(TestHooks.isSecure(auxv: Self.auxv([(6, 4096), (23, 1), (0, 0)])))
        #expect(!TestHooks.isSecure(auxv: Self.auxv([(6, 4096), (23, 0), (0, 0)])))
        #expect(!TestHooks.isSecure(auxv: Self.auxv([(6, 4096), (0, 0)])))
        #expect(!TestHooks.isSecure(auxv: Self.auxv([(0, 0), (23, 1)])))
        // This runner starts without it, so the hooks it sets reach the cryo it runs.
        let own = try #require(FileManager.default.contents(atPath: "/proc/self/auxv"))
        #expect(!TestHooks.isSecure(auxv: [UInt8](own)))
    }

    @Test("no source file reads the environment but CryoSystem/TestHooks.swift")
    func onePlace() {
        let sources = Locations.packageRoot + "/Sources"
        let enumerator = FileManager.default.enumerator(atPath: sources)
        var readers: [String] = []
        while let relative = enumerator?.nextObject() as? String {
            guard relative.hasSuffix(".swift"), !relative.hasPrefix("ParasiteEmbed"), relative != "CryoSystem/TestHooks.swift" else { continue }
            let text = readText("\(sources)/\(relative)")
            if text.contains("getenv(") || text.contains("processInfo.environment") { readers.append(relative) }
        }
        #expect(readers.isEmpty, "read the environment through TestHooks instead: \(readers)")
    }
}
