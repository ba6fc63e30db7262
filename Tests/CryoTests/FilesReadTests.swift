// Files.read: a whole file, whatever its size and kind. No root.

import CryoSystem
import Foundation
import Glibc
import Testing

@Suite("Files.read (no root)")
struct FilesReadTests {
    /// Bytes that differ at every offset, so a chunk lost, doubled or moved shows.
    static func pattern(_ count: Int) -> [UInt8] {
        (0..<count).map { i in UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 7) }
    }

    @Test("regular files below, at and above the 64 KiB chunk, and one of 3 MB, read exactly",
          arguments: [0, 1, 65535, 65536, 65537, 3 * 65536, 3_154_528])
    func regular(size: Int) throws {
        let path = NSTemporaryDirectory() + "cryo-files-read-\(getpid())-\(size)"
        defer { unlink(path) }
        let bytes = Self.pattern(size)
        #expect(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        let read = try Files.read(path)
        #expect(read.count == size)
        // The first byte that differs, not two arrays of megabytes in the failure.
        let differs = (0..<min(read.count, size)).first { read[$0] != bytes[$0] }
        #expect(differs == nil, "byte \(differs ?? 0) differs")
    }

    @Test("a /proc file (size 0 in fstat) longer than one chunk is read to its end")
    func procFile() throws {
        // /proc/self/maps of this test process: tens of KiB; its last line ends the file.
        let maps = try Files.read("/proc/self/maps")
        #expect(!maps.isEmpty)
        #expect(maps.last == UInt8(ascii: "\n"))
    }
}
