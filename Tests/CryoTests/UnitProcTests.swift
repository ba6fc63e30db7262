// The /proc parsers on recorded samples (Tests/Samples, taken from a
// `sleep` on Linux 6.x) and on hand-made lines for the awkward cases. No root.

@testable import Cryo
import CCryo
import CryoSystem
import Foundation
import Glibc
import Testing

private func sample(_ name: String) throws -> [UInt8] {
    let path = Locations.packageRoot + "/Tests/Samples/" + name
    return try #require(FileManager.default.contents(atPath: path).map { [UInt8]($0) }, "missing sample \(path)")
}

@Suite("/proc parsers on recorded samples (no root)")
struct ProcParserTests {
    @Test("maps: every line, with range, permissions, offset, device, inode and path")
    func maps() throws {
        let maps = parseMappings(try sample("sleep.maps"))
        #expect(maps.count == 37)
        let first = try #require(maps.first)
        #expect(first.start == 0x5624_1aa4_c000 && first.end == 0x5624_1aa4_e000)
        #expect(first.permissions == "r--p" && first.offset == 0 && first.device == "fe:00" && first.inode == 254651)
        #expect(first.path == "/usr/bin/sleep")
        #expect(maps[1].offset == 0x2000 && maps[1].permissions == "r-xp")
        #expect(maps.filter { $0.path.isEmpty }.count == 3, "anonymous mappings have no path")
        #expect(maps.contains { $0.path == "[vvar_vclock]" } && maps.last?.path == "[vsyscall]")
        #expect(maps.last?.end == 0xffff_ffff_ff60_1000)
        #expect(maps.allSatisfy { $0.vmFlags.isEmpty }, "maps has no VmFlags")
        #expect(zip(maps, maps.dropFirst()).allSatisfy { $0.end <= $1.start }, "in address order")
    }

    @Test("smaps: the same mappings as maps, each with its VmFlags")
    func smaps() throws {
        let maps = parseMappings(try sample("sleep.maps"))
        let smaps = parseMappings(try sample("sleep.smaps"))
        #expect(smaps.map(\.start) == maps.map(\.start) && smaps.map(\.path) == maps.map(\.path))
        #expect(smaps.allSatisfy { !$0.vmFlags.isEmpty })
        #expect(smaps.first { $0.path == "[stack]" }?.vmFlags.isSuperset(of: ["rd", "wr", "gd"]) == true)
        #expect(smaps.first { $0.path == "[heap]" }?.vmFlags.contains("ac") == true)
    }

    @Test("maps and smaps read piece by piece give what one read of all of it gives", arguments: ["sleep.maps", "sleep.smaps"])
    func readInPieces(name: String) throws {
        let path = Locations.packageRoot + "/Tests/Samples/" + name
        let whole = parseMappings(try sample(name))
        // 7 bytes: every line is cut, most several times, and the buffer must grow for each line longer than it.
        for size in [7, 64, 1000, 128 << 10] {
            let fd = try CryoSystem.Files.open(path, .readOnly)
            defer { try? fd.close() }
            let pieces = try readMappings(fd, path: path, bufferSize: size)
            #expect(pieces.count == whole.count, "buffer \(size)")
            #expect(pieces.map(\.start) == whole.map(\.start) && pieces.map(\.end) == whole.map(\.end), "buffer \(size)")
            #expect(pieces.map(\.path) == whole.map(\.path) && pieces.map(\.permissions) == whole.map(\.permissions), "buffer \(size)")
            #expect(pieces.map(\.device) == whole.map(\.device) && pieces.map(\.inode) == whole.map(\.inode), "buffer \(size)")
            #expect(pieces.map(\.vmFlags) == whole.map(\.vmFlags), "buffer \(size)")
        }
    }

    @Test("a last line without its newline still counts")
    func lastLineWithoutNewline() throws {
        let path = FileManager.default.temporaryDirectory.path + "/cryo-maps-\(getpid())"
        try Data("1000-2000 r--p 00000000 fe:01 12 /a\n3000-4000 rw-p 00000000 00:00 0 /b c".utf8).write(to: URL(fileURLWithPath: path))
        defer { unlink(path) }
        let fd = try CryoSystem.Files.open(path, .readOnly)
        defer { try? fd.close() }
        let maps = try readMappings(fd, path: path, bufferSize: 16)
        #expect(maps.map(\.path) == ["/a", "/b c"])
        #expect(parseDevice(maps[0].device) == (0xfe, 0x01))
    }

    @Test("fdinfo read as one record: all of it, short or longer than the first read")
    func fdinfoOneRecord() throws {
        let epoll = epoll_create1(0o2000000 /* EPOLL_CLOEXEC */)
        try #require(epoll >= 0)
        defer { close(epoll) }
        let folder = try CryoSystem.Files.open("/proc/self/fdinfo", .readOnly, options: [.directory])
        defer { try? folder.close() }
        var watched: [Int32] = []
        defer { for fd in watched { close(fd) } }
        // 0 watches: a few lines; 200: about 16 KiB, several reads of growing size.
        for count in [0, 1, 60, 200] {
            while watched.count < count {
                let fd = eventfd(0, 0o2000000 /* EFD_CLOEXEC */)
                try #require(fd >= 0)
                var event = epoll_event(events: 1 /* EPOLLIN */, data: epoll_data_t(fd: fd))
                try #require(epoll_ctl(epoll, 1 /* EPOLL_CTL_ADD */, fd, &event) == 0)
                watched.append(fd)
            }
            let one = try CryoSystem.Files.readString(in: folder, String(epoll), singleRecord: true, object: "fdinfo")
            let all = try CryoSystem.Files.readString(in: folder, String(epoll), object: "fdinfo")
            #expect(one == all, "\(count) watches")
            #expect(one.split(separator: "\n").filter { $0.hasPrefix("tfd:") }.count == count)
        }
    }

    @Test("device numbers as maps prints them")
    func devices() {
        #expect(parseDevice("fe:00") == (0xfe, 0))
        #expect(parseDevice("103:0a") == (0x103, 0x0a))
        #expect(parseDevice("00:00") == (0, 0))
        #expect(parseDevice("") == (0, 0) && parseDevice("1:2:3") == (0, 0) && parseDevice("zz:01") == (0, 0))
    }

    @Test("VmFlags codes as numbers match the two letters")
    func knownCodes() {
        let flags = VmFlags(arrayLiteral: "rd", "gd", "nr", "dd", "hg")
        #expect(flags.contains(VmFlags.Known.gd) && flags.contains(VmFlags.Known.nr) && flags.contains(VmFlags.Known.dd))
        #expect(flags.contains(VmFlags.Known.hg) && !flags.contains(VmFlags.Known.nh) && !flags.contains(VmFlags.Known.io))
    }

    @Test("VmFlags read before a freeze: taken only for the same ranges, confirmed only if the advice is the same")
    func flagsBeforeFreeze() throws {
        let a: UInt64 = 0x10_0000, b: UInt64 = 0x20_0000
        func anon(_ start: UInt64) -> MemoryRecord.Mapping {
            MemoryRecord.Mapping(start: start, end: start + 0x4000, protection: "rw", shared: false, kind: .anonymous,
                                 path: nil, fileOffset: 0, device: nil, inode: nil, growsDown: false, noReserve: false, advice: 0)
        }
        func smaps(_ start: UInt64, end: UInt64? = nil, _ flags: VmFlags) -> ProcMapping {
            ProcMapping(start: start, end: end ?? start + 0x4000, permissions: "rw-p", offset: 0, device: "00:00", inode: 0, path: "",
                        vmFlags: flags)
        }
        var memory = MemoryRecord(mappings: [anon(a), anon(b)])
        let before = [smaps(a, ["rd", "wr", "hg"]), smaps(b, ["rd", "wr"])]
        #expect(memory.sameRanges(as: before))
        // A mapping split or moved since: the flags read before do not describe it.
        #expect(!memory.sameRanges(as: [smaps(a, ["rd", "wr"]), smaps(b, end: b + 0x2000, ["rd", "wr"])]))
        try memory.applyFlags(before, pid: 1)
        // Flags the dump ignores may differ (accounting, soft-dirty); those it keeps may not.
        try memory.confirmFlags([smaps(a, ["rd", "wr", "hg", "sd", "ac"]), smaps(b, ["rd", "wr"])], pid: 1)
        #expect(throws: CryoError.self) { try memory.confirmFlags([smaps(a, ["rd", "wr"]), smaps(b, ["rd", "wr"])], pid: 1) }
        #expect(throws: CryoError.self) { try memory.confirmFlags([smaps(a, ["rd", "wr", "hg"]), smaps(b, ["rd", "wr", "dc"])], pid: 1) }
        #expect(throws: CryoError.self) { try memory.confirmFlags([smaps(a, ["rd", "wr", "hg", "nr"]), smaps(b, ["rd", "wr"])], pid: 1) }
    }

    @Test("maps: a path with spaces is the rest of the line; a broken line is skipped")
    func awkwardMaps() {
        let text = "7f00-8000 rw-s 00001000 00:05 1234    /dev/shm/a file (deleted)\n" +
            "not a mapping line\n" + "zz-yy r--p 0 00:00 0\n" + "1000-2000 r--p\n"
        let maps = parseMappings(Array(text.utf8))
        #expect(maps.count == 1)
        #expect(maps.first?.path == "/dev/shm/a file (deleted)" && maps.first?.offset == 0x1000 && maps.first?.inode == 1234)
    }

    @Test("stat: the name in parentheses and the fields after it")
    func stat() throws {
        let stat = try ProcStat(text: String(decoding: try sample("sleep.stat"), as: UTF8.self), pid: 29803)
        #expect(stat.comm == "sleep" && stat.state == "S")
        #expect(stat.ppid == 29800 && stat.pgid == 29803 && stat.sid == 29803)
        #expect(stat.flags == 4_194_304 && stat.threads == 1)
    }

    @Test("stat: a name holding spaces and parentheses; no parentheses is refused")
    func awkwardStat() throws {
        let stat = try ProcStat(text: "7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 3 0\n", pid: 7)
        #expect(stat.comm == "a (b) c" && stat.state == "R" && stat.ppid == 1 && stat.threads == 3)
        #expect(throws: CryoError.self) { try ProcStat(text: "7 sleep R 1", pid: 7) }
    }

    @Test("status: credentials, tracer and capabilities")
    func status() throws {
        let status = Cryo.ProcStatus(text: String(decoding: try sample("sleep.status"), as: UTF8.self))
        #expect(status.values["Name"] == "sleep" && status.values["State"] == "S (sleeping)")
        #expect(status.tracerPid == 0)
        #expect(status.numbers("Uid") == [0, 0, 0, 0] && status.numbers("Gid") == [0, 0, 0, 0])
        #expect(status.numbers("Groups") == [])
        #expect(status.hex("CapEff") == 0x1ff_feff_ffff)
    }

    @Test("fdinfo: position, octal flags and a kind's own lines")
    func fdinfo() throws {
        let text = "pos:\t4096\nflags:\t02004002\nmnt_id:\t25\nino:\t1057\ntfd:        5 events:       19 data:                5  pos:0 ino:1f mnt_id:15\n"
        let info = try parseFDInfo(text)
        #expect(info.position == 4096 && info.flags == 0o2004002)
        #expect(info.value("mnt_id") == "25" && info.value("ino") == "1057" && info.value("missing") == nil)
        #expect(info.value("tfd") == "5 events:       19 data:                5  pos:0 ino:1f mnt_id:15")
        #expect(!info.hasLockLines)
        let locked = try parseFDInfo("pos:\t-1\nflags:\t0100002\nmnt_id:\t25\nlock:\t1: POSIX  ADVISORY  WRITE 23799 fe:00:16228933 10 29\n")
        #expect(locked.position == -1 && locked.flags == 0o100002 && locked.hasLockLines)
        #expect(try FileLock.parse(locked, object: "fd 3").count == 1)
        // Unreadable numbers read as 0, as they always did.
        let odd = try parseFDInfo("pos:\tx\nflags:\t9\n")
        #expect(odd.position == 0 && odd.flags == 0)
    }

    /// fs/notify/fdinfo.c prints the watch descriptor with %x, like every other number there.
    @Test("inotify fdinfo: watch descriptors are hex (wd:10 is 16, wd:3f is 63)")
    func inotifyWatchNumbers() throws {
        let text = "pos:\t0\nflags:\t02004000\nmnt_id:\t16\nino:\t1057\n"
            + "inotify wd:3 ino:7d9 sdev:fe00000 mask:2 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:d907000026b8bd3c\n"
            + "inotify wd:10 ino:1a2b sdev:2d mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:2b1a000000000000\n"
            + "inotify wd:3f ino:ff sdev:2d mask:8000100 ignored_mask:0\n"
        let lines = fdinfoFields(try parseFDInfo(text), prefix: "inotify ")
        let watches = lines.compactMap { InotifyState.watchNumbers($0.fields) }
        try #require(watches.count == 3, "\(lines)")
        #expect(watches.map(\.wd) == [3, 16, 63])
        #expect(watches[1].inode == 0x1a2b && watches[1].kernelDevice == 0x2d && watches[1].mask == 0x300)
        #expect(watches[2].mask == 0x800_0100)
        #expect(InotifyState.watchNumbers(["wd": "zz", "ino": "1", "sdev": "1", "mask": "1"]) == nil)
    }
}
