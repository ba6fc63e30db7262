// The file status flags F_SETFL sets (one definition, in CryoSystem), checked
// against the kernel: each is taken by a pipe and shown back by F_GETFL. No root.

import CryoSystem
import Glibc
import SystemPackage
import Testing

@Suite("file status flags (unit)")
struct StatusFlagsUnitTests {
    @Test("O_APPEND, O_NONBLOCK, O_DIRECT and O_NOATIME: F_SETFL takes each, F_GETFL shows it, and nothing else")
    func settable() throws {
        let ends = try FileObjects.pipe(object: "test pipe")
        defer { try? ends.read.close(); try? ends.write.close() }
        let flags: [Int32] = [O_APPEND, O_NONBLOCK, FileObjects.directFlag, FileObjects.noAccessTimeFlag]
        #expect(flags.reduce(0, |) == FileObjects.settableStatusFlags)
        for flag in flags {
            try FileObjects.setStatusFlags(ends.write, flag, object: "test pipe")
            let shown = try FileObjects.statusFlags(ends.write, object: "test pipe") & FileObjects.settableStatusFlags
            #expect(shown == flag, "F_SETFL \(String(flag, radix: 8)) shows \(String(shown, radix: 8))")
        }
    }
}
