// Files that have no path any more, or never had one, round-trip: each
// fixture sets up its objects, is dumped (killed) and restored, then checks
// its own state (sizes, holes, owners, times, contents, flags) and says PASS.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("files without a path")
    struct FileKindTests {
        @Test("ghost files keep size, holes, owner, mode and times; write-only, O_PATH and hard-linked ones come back")
        func ghosts() throws {
            try fileRoundTrip("ghost") { fixture, images in
                // 1 GiB + 123 bytes with 12 KiB of data: the image holds the data runs, not the holes.
                let runs = fixture.tagged("SPARSE")?.first ?? ""
                #expect(runs == "0+4096,268435456+8192,1073741824+123", "data runs of sparse.dat: \(runs)")
                let data = try FileManager.default.contentsOfDirectory(atPath: images).filter { $0.hasPrefix("filedata-") }
                let sizes = data.map { name -> (Int64, Int64) in
                    var st = stat()
                    _ = stat("\(images)/\(name)", &st)
                    return (Int64(st.st_size), Int64(st.st_blocks) * 512)
                }
                let sparse = sizes.first { $0.0 == (1 << 30) + 123 }
                try #require(sparse != nil, "no 1 GiB + 123 byte file data in the image: \(data) \(sizes)")
                #expect(sparse!.1 < 1 << 20, "sparse.dat's image uses \(sparse!.1) bytes on disk: its holes were filled")
                // other.dat still reaches linked.dat: nothing of it is copied.
                #expect(!sizes.contains { $0.0 == 2000 }, "linked.dat's contents went into the image: \(sizes)")
            }
        }

        @Test("a directory and a cwd removed while open, an unlinked FIFO with its bytes, symlinks opened O_PATH|O_NOFOLLOW")
        func removed() throws {
            try fileRoundTrip("removed")
        }

        @Test("leases an open was breaking (read to UNLCK, write to READ and to UNLCK) are breaking again, with no second SIGIO")
        func breakingLeases() throws {
            try fileRoundTrip("leases")
        }

        /// pipe() never sets O_LARGEFILE and open() always does, and F_SETFL cannot change it;
        /// open() refuses O_DIRECT on a pipe or FIFO, F_SETFL takes it.
        @Test("pipe and FIFO ends keep their exact F_GETFL (no O_LARGEFILE added), packet mode, O_ASYNC with its owner, size and bytes")
        func pipeEndFlags() throws {
            try fileRoundTrip("pipeends", extraArguments: ["flags"])
        }

        /// A read stops at the end of a packet (a write in O_DIRECT mode): the bytes buffered at
        /// dump must come back as the same packets, plain bytes as plain bytes.
        @Test("bytes buffered in packet-mode pipes and FIFOs come back as the same packets")
        func pipePackets() throws {
            try fileRoundTrip("pipeends", extraArguments: ["packets"])
        }

        @Test("two FIFOs with one inode number on two file systems keep their own bytes and ends")
        func fifosWithOneInodeNumber() throws {
            let scratch = try Scratch("fifo-devices")
            defer { scratch.remove() }
            let work = try scratch.folder("work")
            var mounted: [String] = []
            // Two fresh tmpfs number their first files alike.
            defer { for dir in mounted { umount2(dir, Int32(MNT_DETACH)) } }
            for name in ["a", "b"] {
                let dir = "\(work)/\(name)"
                guard Glibc.mkdir(dir, 0o755) == 0, mount("tmpfs", dir, "tmpfs", 0, "size=1m") == 0 else {
                    throw HarnessError("tmpfs at \(dir): \(String(cString: strerror(errno)))")
                }
                mounted.append(dir)
            }
            let fixture = try Fixture("pipeends", arguments: [work, "sameino"], in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            let restore = try CryoProcess(["restore", "-D", images], in: scratch)
            defer { restore.stop() }
            try expectRestoredAndPassing(fixture, by: restore)
        }

        /// A FIFO reader reports POLLHUP once a writer has come and gone since it was opened, not before.
        @Test("FIFO readers poll as before: no POLLHUP for one that never saw a writer, POLLHUP for one whose writers went")
        func fifoHangUp() throws {
            try fileRoundTrip("pipeends", extraArguments: ["hangup"])
        }

        @Test("F_SETOWN/F_SETOWN_EX owners (itself, its group, a child), F_SETSIG and O_ASYNC still signal after restore")
        func signalOwners() throws {
            try fileRoundTrip("sigio")
        }

        @Test("pidfds of a child, a grandchild, itself and a reaped child: pidfd_send_signal and waitid(P_PIDFD) work after restore")
        func pidfds() throws {
            try fileRoundTrip("pidfd")
        }

        @Test("pidfds of reaped processes keep their exit status (PIDFD_GET_INFO), and pidfds of one such process, in two processes, stay of one")
        func pidfdsOfReaped() throws {
            try fileRoundTrip("pidfddead")
        }

        @Test("a PIDFD_THREAD pidfd of its own thread still names that thread: PIDFD_SIGNAL_THREAD reaches it, its exit makes the pidfd readable")
        func pidfdOfThread() throws {
            try fileRoundTrip("pidfdthread")
        }

        @Test("/proc files of live processes outside the tree are opened again; those of a reaped child name a dead process, as before")
        func procFilesOutsideTree() throws {
            try fileRoundTrip("procdead") { fixture, images in
                let scratch = try Scratch("procdead-show")
                defer { scratch.remove() }
                let show = try cryo(["show", images], in: scratch)
                #expect(show.stdout.contains("stand-in"), "show: \(show)")
            }
        }

        @Test("a /proc file of a process outside the tree that is gone at restore fails the restore in one line naming its pid, leaving no task")
        func procFileOfGoneProcess() throws {
            let scratch = try Scratch("procdead-gone")
            defer { scratch.remove() }
            let fixture = try Fixture("procdead", arguments: [try scratch.folder("work")], in: scratch)
            var gone: pid_t = 0
            defer {
                fixture.cleanUp()
                if gone > 0 { kill(gone, SIGKILL) }
            }
            try fixture.waitReady()
            gone = try #require(pid_t(fixture.tagged("OUTSIDE")?.first ?? ""), "\(fixture.report)")
            let (images, _) = try dumpAndReap(fixture, in: scratch)
            kill(gone, SIGKILL)
            for _ in 0..<200 where pidExists(gone) { usleep(10_000) }
            try #require(!pidExists(gone), "pid \(gone) outlived SIGKILL")
            let restore = try cryo(["restore", "-D", images], in: scratch, timeout: 60)
            #expect(restore.failed && restore.stderrLines.count == 1 && containsToken(restore.stderr, "\(gone)"), "\(restore)")
            #expect(!pidExists(fixture.pid) || ProcStatus(pid: fixture.pid)?.name != "procdead", "a task of the failed restore is left")
        }

        @Test("a program in a memfd still runs by fexecve and execveat after restore (no writable descriptor left open)")
        func memfdExec() throws {
            try fileRoundTrip("memfdexec")
        }

        /// Only open() for writing makes a writer of the file; exec refuses a file with writers (ETXTBSY).
        @Test("a memfd runs by execveat through its own read-write descriptor after restore, also while mapped shared and writable",
              arguments: ["writable", "mapped"])
        func memfdExecThroughOwnDescriptor(_ mode: String) throws {
            try fileRoundTrip("memfdexec", extraArguments: [mode])
        }

        @Test("/proc/self and a child's /proc/PID files and directory, and namespace files, name the restored processes again")
        func procFiles() throws {
            try fileRoundTrip("procfiles")
        }

        /// The mount and file-system marks sit on a tmpfs of the test's own, where nothing else
        /// makes events. Group B holds one event at dump, which is dropped (and said so).
        @Test("fanotify groups with an inode mark (and ignore mask), a mount mark and a file-system mark report events after restore")
        func fanotifyMarks() throws {
            let mountScratch = try Scratch("fanotify-tmpfs")
            defer { mountScratch.remove() }
            let tmpfs = try mountScratch.folder("tmpfs")
            try #require(mount("cryo-test", tmpfs, "tmpfs", 0, "size=1m,mode=0700") == 0, "mount tmpfs on \(tmpfs): errno \(errno)")
            defer { umount2(tmpfs, Int32(MNT_DETACH)) }
            try fileRoundTrip("fanotify", extraArguments: [tmpfs]) { _, images in
                let show = try cryo(["show", images], in: mountScratch)
                #expect(show.stdout.contains("fanotify") && show.stdout.contains("mount \(tmpfs)"), "show: \(show)")
                #expect(show.stdout.contains("bytes of queued events dropped at dump"), "show: \(show)")
            }
        }

        /// epoll knows a target by (file, fd number): the number may have been closed since, or given to another file,
        /// and the file may live on only in another process of the tree ("child").
        @Test("an epoll watch added through a descriptor closed since (its number free, or holding another file, or the file held by a child) still reports",
              arguments: ["closed", "reused", "child"])
        func epollClosedTarget(_ variant: String) throws {
            try selfCheckingRoundTrip("epollclosed", arguments: [variant], scratch: "epoll-\(variant)")
        }

        @Test("shared and private mappings of a file deleted while mapped come back mapping one file")
        func deletedFileMappings() throws {
            try fileRoundTrip("delmap")
        }

        @Test("an AIO context (io_setup) comes back at its address: io_submit and io_getevents work through it")
        func aioRing() throws {
            try fileRoundTrip("aioring")
        }

        /// The kernel's own tail cannot be set: reads of nothing complete through the new context first.
        @Test("an AIO ring's completed events not reaped at dump (wrapping around its end) come back, in order, to io_getevents")
        func aioRingUnreaped() throws {
            try fileRoundTrip("aioring", extraArguments: ["unreaped"])
        }
    }
}

/// start (with a fresh work folder) → READY → dump (kills) → `checkImage` →
/// restore in the foreground → SIGTERM → PASS.
func fileRoundTrip(_ name: String, extraArguments: [String] = [], dumpOptions: [String] = [], sourceLocation: SourceLocation = #_sourceLocation,
                   checkImage: (Fixture, String) throws -> Void = { _, _ in }) throws {
    let scratch = try Scratch("\(name)-files")
    defer { scratch.remove() }
    let fixture = try Fixture(name, arguments: [try scratch.folder("work")] + extraArguments, in: scratch)
    defer {
        fixture.cleanUp()
        // Children it lists on a PIDS line, should it fail before killing them itself.
        for pid in (fixture.tagged("PIDS") ?? []).dropFirst().compactMap({ pid_t($0) }) { kill(pid, SIGKILL) }
    }
    try fixture.waitReady()
    let (images, _) = try dumpAndReap(fixture, in: scratch, options: dumpOptions, sourceLocation: sourceLocation)
    #expect(!fixture.lines.contains { $0 == "PASS" || $0.hasPrefix("FAIL") }, "the fixture checked itself before restore:\n\(fixture.report)",
            sourceLocation: sourceLocation)
    try checkImage(fixture, images)
    let restore = try CryoProcess(["restore", "-D", images], in: scratch)
    defer { restore.stop() }
    try expectRestoredAndPassing(fixture, by: restore, sourceLocation: sourceLocation)
}
