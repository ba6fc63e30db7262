// inotify instances whose watches are awkward to find again: many of them
// (watch descriptors that fdinfo prints with letters), and watches of files
// unlinked since. Each fixture checks its own events after restore.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("inotify watches")
    struct InotifyTests {
        @Test("43 watches come back under their own descriptors (fdinfo prints them in hex: wd:10 is 16, wd:2b is 43)")
        func manyWatches() throws {
            try inotifyRoundTrip("many")
        }

        /// The file comes back as a ghost from the image, named for a moment in the watched folder:
        /// the folder's watch (IN_CREATE) must not see that, so the watches go on after the files.
        @Test("a watch of a file unlinked while open follows the restored file: its writes and close report under the old descriptor")
        func unlinkedWatchedFile() throws {
            try inotifyRoundTrip("unlinked") { images, scratch in
                let show = try cryo(["show", images], in: scratch)
                #expect(show.stdout.contains("doomed (unlinked, file #"), "show: \(show)")
            }
        }

        /// No call queues an event again: they are dropped at dump, as CRIU does, and the image says so.
        @Test("events queued and not read at dump are dropped, said in the image; the watches still report")
        func queuedEvents() throws {
            try inotifyRoundTrip("queued") { images, scratch in
                let show = try cryo(["show", images], in: scratch)
                #expect(show.stdout.contains("bytes of queued events dropped at dump"), "show: \(show)")
            }
        }

        /// The mask does not keep IN_DONT_FOLLOW: the path found is the symlink's, which must not be followed.
        @Test("a watch of a symlink itself (IN_DONT_FOLLOW) watches the symlink again, not its target")
        func symlinkWatch() throws {
            try inotifyRoundTrip("symlink")
        }

        private func inotifyRoundTrip(_ mode: String, checkImage: (String, Scratch) throws -> Void = { _, _ in }) throws {
            let scratch = try Scratch("inotify-\(mode)")
            defer { scratch.remove() }
            let fixture = try Fixture("inotify", arguments: [try scratch.folder("inotify-work"), mode], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            try checkImage(images, scratch)
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore)
        }
    }
}
