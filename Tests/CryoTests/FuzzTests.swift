// Hostile images: mutated record files must be refused with one clean error,
// never a crash, a hang or a half-restored process.
//
// Most variants are checked in-process through `Image(directory:)` (the
// reader and validators every command goes through); a few hundred go through
// the real `cryo show`, and the variants whose checksums are still valid
// through `cryo restore -d` as well. CRYO_FUZZ_SEED picks another seed
// (the mutations are reproducible per seed).

import Cryo
import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("hostile images")
    struct FuzzTests {
        @Test("mutated images are refused cleanly: in-process loads, cryo show and cryo restore")
        func fuzzImages() throws {
            let started = monotonicNow()
            let seed = UInt64(ProcessInfo.processInfo.environment["CRYO_FUZZ_SEED"] ?? "") ?? 0xC0FFEE
            var rng = SplitMix(seed: seed)
            let scratch = try Scratch("fuzz")
            defer { scratch.remove() }

            // 1. An image of a running counter (it runs on: show only).
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let images = scratch.file("img")
            let dump = try cryo(["dump", "--leave-running", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
            _ = try Image(directory: images)   // the unmutated image loads

            let recordFiles = try FileManager.default.contentsOfDirectory(atPath: images)
                .filter { $0 == "inventory.img" || $0 == "files.img" || $0.hasPrefix("task-") }.sorted()
            try #require(recordFiles.count >= 3, "record files: \(recordFiles)")
            var originals: [String: [UInt8]] = [:]
            for name in recordFiles { originals[name] = try readBytes(images + "/" + name) }
            let pagesName = try #require(try FileManager.default.contentsOfDirectory(atPath: images).first { $0.hasPrefix("pages-") })
            let pagesSize = fileSize(images + "/" + pagesName)

            // 2. In-process: every variant is written over its file, loaded, and the file put back.
            var loaded = 0, refused = 0, crcValid = 0
            let variantsWanted = 10_500
            var showInputs: [(file: String, bytes: [UInt8])] = []
            for i in 0..<variantsWanted {
                let file = recordFiles[rng.below(recordFiles.count)]
                let original = originals[file]!
                let (variant, keepsCRC) = mutate(original, &rng)
                let path = images + "/" + file
                try writeBytes(path, variant)
                do {
                    _ = try Image(directory: images)
                    loaded += 1
                } catch {
                    refused += 1
                    let text = "\(error)"
                    #expect(!text.isEmpty && !text.contains("\n"), "variant \(i) of \(file): error \"\(text)\" is empty or several lines")
                }
                if keepsCRC { crcValid += 1 }
                if i % 40 == 0 { showInputs.append((file, variant)) }
                try writeBytes(path, original)
            }
            // Pages files cut short: refused by the validator, never read past.
            for cut in [0, 1, 4095, 4096, pagesSize / 2, pagesSize - 1] where cut >= 0 && cut < pagesSize {
                try #require(truncate(images + "/" + pagesName, off_t(cut)) == 0)
                #expect(throws: (any Error).self, "pages file cut to \(cut) bytes loads") { _ = try Image(directory: images) }
                showInputs.append((pagesName, [UInt8](repeating: 0, count: cut)))
                try #require(truncate(images + "/" + pagesName, off_t(pagesSize)) == 0)
            }
            let inProcess = monotonicNow() - started
            print("fuzz: seed \(seed), \(variantsWanted) record-file variants (\(crcValid) with valid checksums): \(refused) refused, \(loaded) loaded, in \(String(format: "%.1f", inProcess)) s")
            #expect(refused > variantsWanted / 2, "most variants should be refused (\(refused) of \(variantsWanted))")

            // 3. The real `cryo show` on a few hundred of them.
            let pagesOriginal = try readBytes(images + "/" + pagesName)
            for (n, input) in showInputs.enumerated() {
                let path = images + "/" + input.file
                if input.file == pagesName { try #require(truncate(path, off_t(input.bytes.count)) == 0) }
                else { try writeBytes(path, input.bytes) }
                let show = try cryo(["show", images], in: scratch, timeout: 20)
                expectCleanOutcome(show, "show input \(n) (\(input.file))")
                if input.file == pagesName { try writeBytes(path, pagesOriginal) }
                else { try writeBytes(path, originals[input.file]!) }
            }
            let showTime = monotonicNow() - started - inProcess
            print("fuzz: \(showInputs.count) cryo show runs in \(String(format: "%.1f", showTime)) s")

            // 4. Restore: a dump without --leave-running, so the pid is free, then
            // checksum-valid variants fed to `cryo restore -d`.
            fixture.signal(SIGTERM)
            _ = fixture.reapOriginal(timeout: 30)
            let victim = try Fixture("counter", in: scratch)
            defer { victim.cleanUp() }
            try victim.waitReady()
            let killed = scratch.file("killed")
            let dump2 = try cryo(["dump", "-t", "\(victim.pid)", "-D", killed], in: scratch, reaping: victim)
            try #require(dump2.succeeded, "\(dump2)\n\(victim.report)")
            try #require(victim.reapOriginal(timeout: 20) != nil, "pid \(victim.pid) still runs after the dump")
            let pid = victim.pid
            let counterBinary = try FixtureBuilder.binary(for: "counter")
            let before = Set(processes(running: counterBinary))
            let killedFiles = try FileManager.default.contentsOfDirectory(atPath: killed)
                .filter { $0 == "inventory.img" || $0 == "files.img" || $0.hasPrefix("task-") }.sorted()
            // Orphans of restore -d come to us rather than to pid 1 (which may reap slowly), so the pid frees at once.
            let wasSubreaper = isChildSubreaper()
            setChildSubreaper(true)
            defer { if !wasSubreaper { setChildSubreaper(false) } }
            var restored = 0, restoreRefused = 0
            // Its own time: under load the in-process phase alone may take most of a minute.
            let restoreStarted = monotonicNow()
            let restoreSeconds = Double(ProcessInfo.processInfo.environment["CRYO_FUZZ_RESTORE_SECONDS"] ?? "") ?? 45
            for n in 0..<(restoreSeconds > 45 ? Int.max : 300) {
                guard monotonicNow() - restoreStarted < restoreSeconds else { break }
                let file = killedFiles[rng.below(killedFiles.count)]
                let path = killed + "/" + file
                let saved = try readBytes(path)
                guard let variant = editRecord(saved, &rng) else { continue }
                try writeBytes(path, variant)
                let restore = try cryo(["restore", "-D", killed, "-d"], in: scratch, timeout: 20)
                if !expectCleanOutcome(restore, "restore input \(n) (\(file))") { keepVariant(variant, named: "restore-\(n)-\(file)", image: killed) }
                if restore.succeeded { restored += 1 } else { restoreRefused += 1 }
                // Whatever a restore left (a success, or a bug) is killed and waited for.
                let left = processes(running: counterBinary).filter { !before.contains($0) }
                if restore.failed {
                    #expect(!pidExists(pid) && left.isEmpty,
                            "restore input \(n) (\(file)) failed but left \(describeProcess(pid)), others \(left)\n\(restore)")
                    if pidExists(pid) || !left.isEmpty { try? writeBytes(scratch.file("bad-restore-\(n)-\(file)"), variant) }
                }
                for other in Set(left + (pidExists(pid) ? [pid] : [])) { kill(other, SIGKILL) }
                waitUntil(timeout: 5, interval: 0.005) {
                    for other in Set(left + [pid]) { _ = tryReap(other) }
                    return !pidExists(pid) && processes(running: counterBinary).allSatisfy(before.contains)
                }
                try writeBytes(path, saved)
            }
            print("fuzz: \(restored + restoreRefused) cryo restore runs (\(restoreRefused) refused, \(restored) restored and killed); total \(String(format: "%.1f", monotonicNow() - started)) s")
            #expect(restored + restoreRefused >= 100, "too few restore runs in the time allowed")
        }
    }
}

/// Exit 0, or exit 1 with exactly one non-empty stderr line starting with "cryo:".
@discardableResult
private func expectCleanOutcome(_ result: CryoResult, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
    switch result.status {
    case .exited(0): return true
    case .exited(1):
        let lines = result.stderr.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.isEmpty }
        let clean = lines.count == 1 && lines[0].hasPrefix("cryo:") && lines[0].count > 6
        #expect(clean, "\(what): want one \"cryo:\" line on stderr\n\(result)", sourceLocation: sourceLocation)
        return clean
    default:
        Issue.record("\(what): crashed, hung or exited oddly\n\(result)", sourceLocation: sourceLocation)
        return false
    }
}

/// A copy of the image with the offending variant in place, kept where CRYO_FUZZ_KEEP says
/// (the scratch folder is removed), so that the failure can be replayed by hand.
private func keepVariant(_ variant: [UInt8], named name: String, image: String) {
    guard let keep = ProcessInfo.processInfo.environment["CRYO_FUZZ_KEEP"] else { return }
    let target = keep + "/" + name
    try? FileManager.default.createDirectory(atPath: keep, withIntermediateDirectories: true)
    try? FileManager.default.copyItem(atPath: image, toPath: target)
    let file = String(name.split(separator: "-", maxSplits: 2).last ?? "")
    try? writeBytes(target + "/" + file, variant)
}

// MARK: - Mutations

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { n <= 0 ? 0 : Int(next() % UInt64(n)) }
}

/// One mutation of a record file; the flag says whether every record's checksum still matches.
private func mutate(_ original: [UInt8], _ rng: inout SplitMix) -> ([UInt8], Bool) {
    var bytes = original
    guard !bytes.isEmpty else { return (bytes, false) }
    switch rng.below(10) {
    case 0: // bit flips
        for _ in 0...rng.below(4) { bytes[rng.below(bytes.count)] ^= UInt8(1 << rng.below(8)) }
    case 1: // byte overwrites
        for _ in 0...rng.below(8) {
            let choice = rng.below(3)
            bytes[rng.below(bytes.count)] = choice == 0 ? 0 : choice == 1 ? 0xff : UInt8(truncatingIfNeeded: rng.next())
        }
    case 2: // truncation
        bytes = Array(bytes.prefix(rng.below(bytes.count)))
    case 3: // a range duplicated or deleted
        let start = rng.below(bytes.count)
        let end = min(bytes.count, start + 1 + rng.below(64))
        if rng.below(2) == 0 { bytes.insert(contentsOf: bytes[start..<end], at: start) }
        else { bytes.removeSubrange(start..<end) }
    case 4: // header fields set huge or odd
        let records = recordOffsets(bytes)
        let huge: [UInt64] = [UInt64.max, 1 << 63, 1 << 32, 256 << 20, (256 << 20) + 1, UInt64(UInt32.max), 0]
        if records.isEmpty || rng.below(4) == 0 {
            let field = [8, 12][rng.below(2)]   // version or count
            put(&bytes, UInt32(truncatingIfNeeded: huge[rng.below(huge.count)]), at: field)
        } else {
            let record = records[rng.below(records.count)].header
            switch rng.below(3) {
            case 0: put(&bytes, huge[rng.below(huge.count)], at: record + 8)
            case 1: put(&bytes, UInt32(truncatingIfNeeded: huge[rng.below(huge.count)]), at: record)     // kind
            default: put(&bytes, UInt64(rng.below(1 << 20)), at: record + 8)
            }
        }
    default: // JSON or binary-table edits with the checksum recomputed
        if let edited = editRecord(bytes, &rng) { return (edited, true) }
        bytes[rng.below(bytes.count)] ^= 1
    }
    return (bytes, false)
}

private func put<T: FixedWidthInteger>(_ bytes: inout [UInt8], _ value: T, at offset: Int) {
    guard offset + MemoryLayout<T>.size <= bytes.count else { return }
    withUnsafeBytes(of: value.littleEndian) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } }
}

private func get<T: FixedWidthInteger>(_ bytes: [UInt8], _ offset: Int, _: T.Type) -> T {
    var value: T = 0
    for i in 0..<MemoryLayout<T>.size { value |= T(bytes[offset + i]) << (8 * i) }
    return value
}

/// Where each record's header and payload are, for a well-formed file.
private func recordOffsets(_ bytes: [UInt8]) -> [(header: Int, payload: Range<Int>)] {
    guard bytes.count >= 16 else { return [] }
    var result: [(Int, Range<Int>)] = []
    var offset = 16
    for _ in 0..<min(Int(get(bytes, 12, UInt32.self)), 64) {
        guard offset + 24 <= bytes.count else { break }
        let length = get(bytes, offset + 8, UInt64.self)
        guard length <= UInt64(bytes.count - offset - 24) else { break }
        result.append((offset, (offset + 24)..<(offset + 24 + Int(length))))
        offset += 24 + Int(length)
    }
    return result
}

/// Edits one record, JSON or binary (format 5's tables), with length and checksum rewritten.
private func editRecord(_ bytes: [UInt8], _ rng: inout SplitMix) -> [UInt8]? {
    let records = recordOffsets(bytes)
    guard !records.isEmpty else { return nil }
    let pick = records[rng.below(records.count)]
    if bytes[pick.payload].first == UInt8(ascii: "{") || bytes[pick.payload].first == UInt8(ascii: "[") { return editJSON(bytes, pick, &rng) }
    return editBinary(bytes, pick, &rng)
}

/// Overwrites fields of a binary table record (`mappings`, `fileRecords`, `descriptorTable`, `pageRuns`):
/// a header field, a whole 2, 4 or 8-byte field of a record, or a string byte; the checksum is recomputed.
private func editBinary(_ bytes: [UInt8], _ pick: (header: Int, payload: Range<Int>), _ rng: inout SplitMix) -> [UInt8]? {
    var payload = Array(bytes[pick.payload])
    guard payload.count >= 16 else { return nil }
    let values: [UInt64] = [0, 1, 2, 0xff, 0xffff, UInt64(UInt32.max), UInt64.max, 1 << 40, 4096, UInt64(rng.next())]
    for _ in 0...rng.below(3) {
        let width = [1, 2, 4, 8][rng.below(4)]
        let offset = rng.below(max(1, payload.count - width + 1)) & ~(width - 1)
        guard offset + width <= payload.count else { continue }
        let value = values[rng.below(values.count)]
        for i in 0..<width { payload[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
    }
    var header = Array(bytes[pick.header..<(pick.header + 24)])
    put(&header, Cryo.crc32(payload), at: 16)
    return Array(bytes[..<pick.header]) + header + payload + Array(bytes[pick.payload.upperBound...])
}

/// Edits one value somewhere in one record's JSON and rewrites length and checksum.
private func editJSON(_ bytes: [UInt8], _ pick: (header: Int, payload: Range<Int>), _ rng: inout SplitMix) -> [UInt8]? {
    guard var root = try? JSONSerialization.jsonObject(with: Data(bytes[pick.payload]), options: [.fragmentsAllowed]) else { return nil }
    var paths: [[JSONStep]] = []
    collectPaths(root, [], &paths)
    guard !paths.isEmpty else { return nil }
    // Several edits now and then, so that validators see odd combinations.
    for _ in 0...(rng.below(5) == 0 ? 2 : 0) {
        root = edit(root, paths[rng.below(paths.count)][...], &rng)
    }
    guard let payload = try? JSONSerialization.data(withJSONObject: root, options: [.fragmentsAllowed]) else { return nil }
    let newPayload = [UInt8](payload)
    var header = Array(bytes[pick.header..<(pick.header + 24)])
    put(&header, UInt64(newPayload.count), at: 8)
    put(&header, Cryo.crc32(newPayload), at: 16)
    return Array(bytes[..<pick.header]) + header + newPayload + Array(bytes[pick.payload.upperBound...])
}

private enum JSONStep { case key(String), index(Int) }

private func collectPaths(_ node: Any, _ path: [JSONStep], _ out: inout [[JSONStep]]) {
    out.append(path)
    if let object = node as? [String: Any] {
        for (key, value) in object.sorted(by: { $0.key < $1.key }) { collectPaths(value, path + [.key(key)], &out) }
    } else if let array = node as? [Any] {
        for (i, value) in array.enumerated().prefix(32) { collectPaths(value, path + [.index(i)], &out) }
    }
}

/// The node at `path` replaced by a hostile version of itself (or removed, from its parent).
private func edit(_ node: Any, _ path: ArraySlice<JSONStep>, _ rng: inout SplitMix) -> Any {
    guard let step = path.first else { return hostile(node, &rng) }
    let rest = path.dropFirst()
    switch step {
    case .key(let key):
        guard var object = node as? [String: Any], let child = object[key] else { return node }
        if rest.isEmpty, rng.below(6) == 0 { object.removeValue(forKey: key) } else { object[key] = edit(child, rest, &rng) }
        return object
    case .index(let i):
        guard var array = node as? [Any], i < array.count else { return node }
        if rest.isEmpty, rng.below(6) == 0 { array.remove(at: i) } else { array[i] = edit(array[i], rest, &rng) }
        return array
    }
}

private func hostile(_ node: Any, _ rng: inout SplitMix) -> Any {
    if let array = node as? [Any] {
        switch rng.below(3) {
        case 0: return [Any]()
        case 1: return array + array
        default: return array.isEmpty ? [NSNull()] as [Any] : Array(array.reversed()) as [Any]
        }
    }
    if node is [String: Any] { return rng.below(2) == 0 ? [String: Any]() : NSNull() }
    if node is String {
        let strings: [Any] = ["", "x", String(repeating: "A", count: 5000), "../../../../../../", "/proc/self/mem",
                              "\u{0}", "é∂😀", "AAAA====", NSNumber(value: 7), NSNull()]
        return strings[rng.below(strings.count)]
    }
    if node is NSNumber {
        let numbers: [Any] = [NSNumber(value: Int64.max), NSNumber(value: Int64.min), NSNumber(value: UInt64.max),
                              NSNumber(value: -1), NSNumber(value: 0), NSNumber(value: Int32.max), NSNumber(value: UInt32.max),
                              NSNumber(value: 1 << 40), NSNumber(value: 4095), NSNumber(value: 1e300), NSNumber(value: -0.5),
                              "12", NSNull(), [Any]()]
        return numbers[rng.below(numbers.count)]
    }
    return NSNumber(value: rng.below(2) == 0 ? -1 : 1)
}

// MARK: - Files and processes

private typealias PrctlFunction = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32
/// prctl is variadic in glibc, so Swift cannot call it directly.
private let prctlFunction: PrctlFunction? = dlsym(dlopen(nil, RTLD_NOW), "prctl").map { unsafeBitCast($0, to: PrctlFunction.self) }

func isChildSubreaper() -> Bool {
    var flag: Int32 = 0
    let rc = withUnsafeMutablePointer(to: &flag) { prctlFunction?(37 /* PR_GET_CHILD_SUBREAPER */, UInt(bitPattern: $0), 0, 0, 0) }
    return rc == 0 && flag != 0
}

func setChildSubreaper(_ on: Bool) {
    _ = prctlFunction?(36 /* PR_SET_CHILD_SUBREAPER */, on ? 1 : 0, 0, 0, 0)
}

func readBytes(_ path: String) throws -> [UInt8] {
    guard let data = FileManager.default.contents(atPath: path) else { throw HarnessError("cannot read \(path)") }
    return [UInt8](data)
}

func writeBytes(_ path: String, _ bytes: [UInt8]) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    guard fd >= 0 else { throw HarnessError("open \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
        guard n > 0 else { throw HarnessError("write \(path): \(String(cString: strerror(errno)))") }
        done += n
    }
}

func fileSize(_ path: String) -> Int {
    var st = stat()
    return stat(path, &st) == 0 ? Int(st.st_size) : -1
}

/// Pids of the processes whose executable is `binary`.
func processes(running binary: String) -> [pid_t] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { Int32($0) }.filter {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\($0)/exe")) == binary
    }
}
