// dump --compress: the same round trips with zstd page images, and a
// damaged compressed image refused with one line naming the pages file.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("dump --compress")
    struct CompressionTests {
        /// bigmem checks every word itself; "text" compresses well, "random" not at all.
        @Test("round trip with --compress", arguments: [
            ["counter"], ["bigmem"], ["bigmem", "text"], ["bigmem", "random"], ["memfdmap"], ["signals"], ["threads"],
        ])
        func roundTrip(_ spec: [String]) throws {
            let name = spec[0]
            let scratch = try Scratch("\(name)-compress")
            defer { scratch.remove() }
            // The patterned variants are smaller: one full-size bigmem is enough.
            let arguments = spec.count > 1 ? ["256", spec[1]] : try Fixture.defaultArguments(for: name, in: scratch)
            let fixture = try Fixture(name, arguments: arguments, in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            let timeout = cryoTimeout(for: name)

            let images = scratch.file("img")
            let dump = try cryo(["dump", "--compress", "-t", "\(pid)", "-D", images], in: scratch, timeout: timeout, reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
            try #require(fixture.reapOriginal(timeout: 20) != nil, "pid \(pid) still runs after the dump")
            let pages = pagesFiles(images)
            let json = try cryo(["show", "--json", images], in: scratch, timeout: 60)
            #expect(json.stdout.contains("\"compression\""), "the page index does not say the pages are compressed\n\(json.stdout.prefix(3000))")
            if name == "bigmem" {
                let mapped = UInt64(spec.count > 1 ? 256 : Fixture.bigmemMiB) << 20
                let size = pages.reduce(UInt64(0)) { $0 + $1.1 }
                if spec.count > 1 && spec[1] == "text" {
                    #expect(size < mapped / 4, "pages of the compressible bigmem are \(size) bytes, not under a quarter of its \(mapped) bytes")
                } else if spec.count > 1 && spec[1] == "random" {
                    #expect(size >= mapped / 4 * 3 && size <= mapped / 100 * 80, "pages of the random bigmem are \(size) bytes of \(mapped)")
                }
            }
            if name == "bigmem" && spec.last != "random" {
                // Page reading from the compressed image: the first word of the mapping is page_seed(0).
                let address = try #require(fixture.tagged("MAP")?.first, "no MAP line\n\(fixture.report)")
                let show = try cryo(["show", images, "--pages", "0x\(address):8"], in: scratch, timeout: 60)
                let want = (0..<8).map { String(format: "%02x", (bigmemPageSeed(0) >> (8 * UInt64($0))) & 0xff) }.joined(separator: " ")
                #expect(show.succeeded && show.stdout.contains(want), "show --pages 0x\(address):8 should show \(want)\n\(show)")
            }

            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore, timeout: timeout)
        }

        @Test("a corrupt or truncated compressed pages file is refused, naming the file and offset, and leaves no process")
        func corrupt() throws {
            let scratch = try Scratch("compress-corrupt")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid
            let images = try dumpAndReap(fixture, in: scratch, options: ["--compress"]).images
            let (name, size) = try #require(pagesFiles(images).max { $0.1 < $1.1 })
            let path = images + "/" + name
            let original = try #require(FileManager.default.contents(atPath: path))

            // Bytes flipped in the middle of the last frame: its checksum or structure no longer holds.
            var damaged = original
            for i in (Int(size) - 64)..<(Int(size) - 48) { damaged[i] ^= 0x5a }
            try damaged.write(to: URL(fileURLWithPath: path))
            let restore = try cryo(["restore", "-D", images], in: scratch, timeout: 60)
            #expect(restore.failed, "restore from a corrupt \(name) should fail\n\(restore)")
            #expect(restore.stderr.contains(name) && restore.stderr.contains("offset"), "the error should name \(name) and an offset\n\(restore)")
            #expect(restore.stderr.split(separator: "\n").count == 1, "one line expected\n\(restore)")
            #expect(waitUntil(timeout: 2) { !pidExists(pid) }, "a process with pid \(pid) is left after the failed restore: \(describeProcess(pid))")

            try original.prefix(Int(size) / 2).write(to: URL(fileURLWithPath: path))
            let truncated = try cryo(["restore", "-D", images], in: scratch, timeout: 60)
            #expect(truncated.failed, "restore from a truncated \(name) should fail\n\(truncated)")
            #expect(truncated.stderr.contains(name), "the error should name \(name)\n\(truncated)")
            #expect(waitUntil(timeout: 2) { !pidExists(pid) }, "a process with pid \(pid) is left after the failed restore: \(describeProcess(pid))")
            #expect(!fixture.lines.contains("PASS") && !fixture.lines.contains(where: { $0.hasPrefix("FAIL") }),
                    "the half-restored process ran on:\n\(fixture.report)")
        }
    }
}

/// The pages-*.img files of an image with their sizes.
func pagesFiles(_ images: String) -> [(String, UInt64)] {
    let names = ((try? FileManager.default.contentsOfDirectory(atPath: images)) ?? []).filter { $0.hasPrefix("pages") }
    return names.map { name in
        var st = stat()
        return (name, stat(images + "/" + name, &st) == 0 ? UInt64(st.st_size) : 0)
    }
}

/// bigmem's page_seed: the first word of page `page` (every pattern but random).
func bigmemPageSeed(_ page: UInt64) -> UInt64 {
    var x = page &+ 0x9e37_79b9_7f4a_7c15
    x ^= x >> 30
    x = x &* 0xbf58_476d_1ce4_e5b9
    x ^= x >> 27
    x = x &* 0x94d0_49bb_1331_11eb
    x ^= x >> 31
    return x
}
