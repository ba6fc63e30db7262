// The image folder: private to root, never overwritten, and two dumps at once
// do not get in each other's way.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("image folders")
    struct ImageFolderTests {
        @Test("a new image folder is 0700 and every file in it 0600; a second dump into it is refused")
        func imageSecrets() throws {
            let scratch = try Scratch("secrets")
            defer { scratch.remove() }
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()

            let images = scratch.file("img")
            let dump = try cryo(["dump", "--leave-running", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")
            var st = stat()
            try #require(lstat(images, &st) == 0)
            #expect(st.st_mode & S_IFMT == S_IFDIR && st.st_mode & 0o7777 == 0o700,
                    "image folder mode is \(String(st.st_mode & 0o7777, radix: 8)), want 700")
            let names = try FileManager.default.contentsOfDirectory(atPath: images)
            #expect(names.contains("inventory.img") && names.contains("pages-\(fixture.pid).img"), "\(names)")
            for name in names {
                try #require(lstat(images + "/" + name, &st) == 0)
                #expect(st.st_mode & S_IFMT == S_IFREG && st.st_mode & 0o7777 == 0o600,
                        "\(name): mode \(String(st.st_mode & 0o7777, radix: 8)), want a regular file 600")
            }
            let before = try names.map { try readBytes(images + "/" + $0) }

            let again = try cryo(["dump", "--leave-running", "-t", "\(fixture.pid)", "-D", images], in: scratch, reaping: fixture)
            #expect(again.failed, "a dump into a folder holding an image should be refused\n\(again)")
            #expect(again.stderrLines.count == 1 && again.stderr.contains("already holds an image"), "\(again)")
            let after = try names.map { try readBytes(images + "/" + $0) }
            #expect(after == before, "the refused dump changed the image")
            #expect(try FileManager.default.contentsOfDirectory(atPath: images).sorted() == names.sorted())
            _ = try cryo(["show", images], in: scratch)

            expectRunsAndPasses(fixture, "\(again)")
        }

        @Test("two dumps of different processes at the same time both succeed, and both restore")
        func concurrentDumps() throws {
            let scratches = try [Scratch("concurrent-a"), Scratch("concurrent-b")]
            defer { scratches.forEach { $0.remove() } }
            let fixtures = try scratches.map { try Fixture("counter", in: $0) }
            defer { fixtures.forEach { $0.cleanUp() } }
            for fixture in fixtures { try fixture.waitReady() }

            let images = scratches.map { $0.file("img") }
            let dumps = try zip(fixtures, zip(images, scratches)).map { fixture, place in
                try CryoProcess(["dump", "-t", "\(fixture.pid)", "-D", place.0], in: place.1)
            }
            waitUntil(timeout: 120, interval: 0.01) {
                fixtures.forEach { $0.pollOriginal() }
                return dumps.allSatisfy { !$0.isRunning }
            }
            let results = dumps.map { $0.wait(timeout: 1) }
            for (result, fixture) in zip(results, fixtures) {
                try #require(result.succeeded, "\(result)\n\(fixture.report)")
                try #require(fixture.reapOriginal(timeout: 20) != nil, "pid \(fixture.pid) still runs after the dump")
            }

            for (index, fixture) in fixtures.enumerated() {
                let restore = try cryo(["restore", "-D", images[index], "-d"], in: scratches[index], timeout: 60)
                try #require(restore.succeeded, "\(restore)\n\(fixture.report)")
                try #require(fixture.waitRestored(timeout: 30), "pid \(fixture.pid) did not come back: \(describeProcess(fixture.pid))")
            }
            for fixture in fixtures {
                kill(fixture.pid, SIGTERM)
                #expect(waitUntil(timeout: 60) { !pidExists(fixture.pid) }, "\(describeProcess(fixture.pid))")
                expectPass(fixture)
            }
        }
    }
}
