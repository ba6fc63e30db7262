import CryoSystem
import Dispatch
import FoundationEssentials
import Glibc
import Logging
import SystemPackage

// CRIU's lazy migration, in CRIU's spelling:
//   source:       cryo dump -t PID -D DIR --lazy-pages --port P [--address A]
//   destination:  cryo lazy-pages --page-server --address A --port P -D DIR
//                 cryo restore --lazy-pages -D DIR
// The dump writes the image without the pages that lazy restore loads through
// a userfaultfd anyway: they are holes in pages-PID.img, listed in
// lazy-remote.img, so DIR travels small. The tree stays frozen and the dump
// serves those pages from it. The lazy-pages daemon holds the connection to the
// dump and waits on lazy-pages.socket in the work folder; restore's loader asks
// for pages through it. The frames are migrate's post-copy frames
// (PostCopy.swift), relayed one by one. The dump kills the tree once the
// destination has every page. If the connection is lost before the restored
// tree runs, the tree keeps running here.
//
// CRIU's remote lazy pages work the same way from a whole image:
// `page-server --lazy-pages -D DIR` serves the pages of the image in DIR, and
// a restore whose folder lacks pages files gets them through the daemon (the
// pages it needs at once before it starts, the rest lazily).

/// lazy-remote.img: per process, the runs of its pages file that are holes, to come from the dump.
struct RemotePagesRecord: Codable {
    struct Process: Codable {
        var pid: Int32
        /// [offset in the pages file, address, length], in address order.
        var runs: [[UInt64]]
    }
    var processes: [Process]
    static let file = "lazy-remote.img"

    static func read(directory: String) throws -> RemotePagesRecord? {
        let path = "\(directory)/\(file)"
        guard Files.exists(path) else { return nil }
        let record = try RecordReader(path: path).one(.lazyRemote, as: RemotePagesRecord.self)
        for process in record.processes {
            var previousEnd: UInt64 = 0
            for run in process.runs {
                guard run.count == 3, run.allSatisfy({ $0 % 4096 == 0 }), run[2] > 0, run[1] >= previousEnd,
                      run[1] <= UInt64.max - run[2], run[0] <= UInt64.max - run[2] else {
                    throw ImageError(file: path, record: "lazyRemote", "pid \(process.pid): malformed or unordered run \(run)")
                }
                previousEnd = run[1] + run[2]
            }
        }
        return record
    }

    /// For an image copied without its pages files (they stay with a `page-server --lazy-pages`): every
    /// page of those processes, with the files made again as holes of their sizes. nil when none is missing.
    /// `created` gets each file made, so a restore that fails afterwards can take them away again (left
    /// behind, holes would read as zeros to the next restore of this folder).
    static func missingPagesFiles(directory: String, created: inout [String]) throws -> RemotePagesRecord? {
        var processes: [Process] = []
        for (pid, index) in try processesMissingPagesFiles(directory: directory) {
            let pages = ImagePaths(directory).pages(pid)
            guard index.compression == nil else {
                throw CryoError("\(pages) is missing and its pages are compressed: a page server serves only uncompressed pages")
            }
            for (part, size) in index.fileSizes.enumerated() {
                let path = ImagePaths.part(part, of: pages)
                let fd = try Files.open(path, .writeOnly, options: [.create, .exclusiveCreate], permissions: [.ownerReadWrite])
                created.append(path)
                defer { try? fd.close() }
                try Files.truncate(fd, to: size, path: path)
            }
            processes.append(Process(pid: pid, runs: index.runs.map { [$0.offset, $0.address, $0.length] }))
        }
        return processes.isEmpty ? nil : RemotePagesRecord(processes: processes)
    }

    /// The processes with pages whose pages file is not in the folder (nothing is made).
    static func processesMissingPagesFiles(directory: String) throws -> [(pid: Int32, index: PageIndex)] {
        let paths = ImagePaths(directory)
        guard Files.exists(paths.inventory) else { return [] }
        let inventory = try RecordReader(path: paths.inventory).one(.inventory, as: Inventory.self)
        return try inventory.livePids.filter { !Files.exists(paths.pages($0)) }.compactMap { pid in
            let index = try TaskImage.read(paths.task(pid)).pageIndex
            return index.runs.isEmpty ? nil : (pid, index)
        }
    }

    /// Where [address, address + length) of `pid`'s memory is in its pages file, piece by piece.
    func pieces(pid: Int32, address: UInt64, length: UInt64) -> [(offset: UInt64, address: UInt64, length: UInt64)]? {
        guard address <= UInt64.max - length, let runs = processes.first(where: { $0.pid == pid })?.runs else { return nil }
        var low = 0, high = runs.count
        while low < high {
            let mid = (low + high) / 2
            if runs[mid][1] + runs[mid][2] <= address { low = mid + 1 } else { high = mid }
        }
        var result: [(UInt64, UInt64, UInt64)] = []
        var cursor = address
        let end = address + length
        while cursor < end {
            guard low < runs.count, runs[low][1] <= cursor else { return nil }
            let take = min(end, runs[low][1] + runs[low][2]) - cursor
            result.append((runs[low][0] + (cursor - runs[low][1]), cursor, take))
            cursor += take
            low += 1
        }
        return result
    }
}

/// A pages file and its parts (PageIndex.parts), open for writing, addressed by stream offset.
final class PagesFiles: @unchecked Sendable {
    let index: PageIndex
    let paths: [String]
    let fds: [FileDescriptor]
    init(index: PageIndex, path: String) throws {
        self.index = index
        paths = index.fileSizes.indices.map { ImagePaths.part($0, of: path) }
        var opened: [FileDescriptor] = []
        do { for path in paths { opened.append(try Files.open(path, .readWrite)) } } catch {
            for fd in opened { try? fd.close() }
            throw error
        }
        fds = opened
    }
    /// `body(fd, path, offset in that file, length, offset within the range)` for each piece of the stream range.
    func each(offset: UInt64, length: UInt64, _ body: (FileDescriptor, String, UInt64, UInt64, UInt64) throws -> Void) throws {
        var done: UInt64 = 0
        for piece in index.pieces(offset: offset, length: length) {
            try body(fds[piece.part], paths[piece.part], piece.offset, piece.length, done)
            done += piece.length
        }
        guard done == length else { throw CryoError("\(paths[0]): stream range at \(offset) of \(length) bytes is beyond its end") }
    }
    func close() { for fd in fds { try? fd.close() } }
}

/// The source half: the hand-over of `dump --lazy-pages` (DumpOptions.handOver), run with the
/// image written and the tree frozen.
public final class LazyPagesServing: @unchecked Sendable {
    /// Waits for the lazy-pages daemon's connection (authenticated, where the transport does that).
    let accept: @Sendable () throws -> MigrationLink
    let logger: Logger
    public private(set) var bytesLeftOut: UInt64 = 0
    public private(set) var bytesPushed: UInt64 = 0
    public private(set) var requests = 0
    /// The connection was lost after the destination started the tree: the dump kills the tree here anyway.
    public private(set) var lostAfterStart: String?

    /// Called once the image is whole but for the pages served from here.
    let ready: @Sendable () -> Void

    public init(accept: @escaping @Sendable () throws -> MigrationLink, logger: Logger, ready: @escaping @Sendable () -> Void = {}) {
        self.accept = accept
        self.logger = logger
        self.ready = ready
    }

    public func handOver(_ image: FrozenImage) throws {
        let recordPath = "\(image.directory)/\(RemotePagesRecord.file)"
        do {
            let later = try leaveOut(image)
            // Whole but for the pages served from here: restore may read it now. (Should the dump
            // still fail, it removes the folder as it does for any failure.)
            IncompleteMark.remove(ImagePaths(image.directory))
            ready()
            let link = try accept()
            defer { link.close() }
            let wire = MigrationWire(link)
            let (kind, hello, _) = try wire.receive()
            guard kind == .hello, hello.version == MigrationWire.version, hello.lazyPages == true else {
                wire.fail("not a cryo lazy-pages restore of this version")
                throw CryoError("\(link.peer) is not a cryo lazy-pages restore of this version (first frame \(kind))")
            }
            try wire.send(.ready)
            let verdict = Migrator.Verdict()
            try Migrator.servePostCopy(later, wire: wire, verdict: verdict, logger: logger)
            requests = verdict.postCopyRequests
            bytesPushed = verdict.postCopyBytes
            if let lost = verdict.lostAfterStart {
                lostAfterStart = "lost the lazy-pages daemon \(link.peer) after the restored tree started, "
                    + "with \(verdict.postCopyLeft) bytes of memory not sent: \(lost)"
            }
        } catch {
            // The dump removes the image it wrote; this file is not on its list.
            unlink(recordPath)
            throw error
        }
    }

    /// `page-server --lazy-pages -D DIR`: serves the pages of the image in DIR to one lazy-pages daemon
    /// (its restore asks first for what it needs at once, then faults; the rest is pushed).
    /// A connection that ends before its first frame asked for nothing: the restore had every page.
    public static func serveImage(directory: String, link: MigrationLink, logger: Logger) throws {
        let image = try Image(directory: directory)
        var later = PostCopySource()
        var readers: [Int32: (PageReader, [PageRun])] = [:]
        for task in image.tasks where !task.pageIndex.runs.isEmpty {
            let pid = task.core.pid
            readers[pid] = (try PageReader(path: image.paths.pages(pid), index: task.pageIndex), task.pageIndex.runs)
            for run in task.pageIndex.runs {
                if let last = later.ranges.last, last.pid == pid, last.address + last.length == run.address {
                    later.ranges[later.ranges.count - 1].length += run.length
                } else {
                    later.ranges.append((pid, run.address, run.length))
                }
            }
        }
        later.ranges.sort { ($0.pid, $0.address) < ($1.pid, $1.address) }
        let wire = MigrationWire(link)
        let kind: FrameKind, hello: FrameHeader
        do { (kind, hello, _) = try wire.receive() } catch is MigrationLinkClosed {
            logger.debug("page server: the restore needed no page from here")
            return
        }
        guard kind == .hello, hello.version == MigrationWire.version, hello.lazyPages == true else {
            wire.fail("not a cryo lazy-pages restore of this version")
            throw CryoError("\(link.peer) is not a cryo lazy-pages restore of this version (first frame \(kind))")
        }
        try wire.send(.ready)
        let verdict = Migrator.Verdict()
        try Migrator.servePostCopy(later, wire: wire, verdict: verdict, logger: logger) { pid, address, buffer in
            guard let (reader, runs) = readers[pid] else { throw CryoError("pid \(pid) has no pages in \(directory)") }
            var low = 0, high = runs.count
            while low < high {
                let mid = (low + high) / 2
                if runs[mid].address + runs[mid].length <= address { low = mid + 1 } else { high = mid }
            }
            var done = 0
            while done < buffer.count {
                let at = address + UInt64(done)
                guard low < runs.count, runs[low].address <= at else {
                    throw CryoError("pid \(pid): no page at 0x\(String(at, radix: 16)) in \(directory)")
                }
                let take = Int(min(UInt64(buffer.count - done), runs[low].address + runs[low].length - at))
                try reader.readStream(offset: runs[low].offset + (at - runs[low].address),
                                      into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + take)]))
                done += take
                low += 1
            }
        }
        if let lost = verdict.lostAfterStart {
            throw CryoError("lost the lazy-pages daemon \(link.peer) after the restored tree started: \(lost)")
        }
    }

    /// Punches the lazily loaded pages out of each pages file and lists them in lazy-remote.img.
    func leaveOut(_ image: FrozenImage) throws -> PostCopySource {
        var later = PostCopySource()
        var record = RemotePagesRecord(processes: [])
        for name in image.files {
            guard let pid = Migrator.pagesFilePid(name) else { continue }
            let task = try TaskImage.read("\(image.directory)/task-\(pid).img")
            guard task.pageIndex.compression == nil else { throw CryoError("pid \(pid): dump --lazy-pages needs uncompressed pages") }
            let pending = LazySplit(task: task).pending
            guard !pending.isEmpty else { continue }
            let files = try PagesFiles(index: task.pageIndex, path: "\(image.directory)/\(name)")
            defer { files.close() }
            var runs: [[UInt64]] = []
            for run in pending {
                let length = run.end - run.start
                try files.each(offset: run.offset, length: length) { fd, path, offset, length, _ in
                    try Files.punchHole(fd, offset: offset, length: length, path: path)
                }
                runs.append([run.offset, run.start, length])
                if let last = later.ranges.last, last.pid == pid, last.address + last.length == run.start {
                    later.ranges[later.ranges.count - 1].length += length
                } else {
                    later.ranges.append((pid, run.start, length))
                }
                bytesLeftOut += length
            }
            record.processes.append(.init(pid: pid, runs: runs))
        }
        // PostCopySource.covers searches by pid, then address.
        later.ranges.sort { ($0.pid, $0.address) < ($1.pid, $1.address) }
        var writer = RecordWriter()
        try writer.append(.lazyRemote, record)
        try writer.write(to: "\(image.directory)/\(RemotePagesRecord.file)")
        logger.debug("dump --lazy-pages: \(bytesLeftOut) bytes left out of the image, served from the frozen tree")
        return later
    }
}

/// The restore half: `restore --lazy-pages` talks to the lazy-pages daemon when one waits on its
/// socket. With lazy-remote.img, pages come through it (RestoreOptions.remotePages); without, the
/// daemon only learns when the restore is done (the image holds every page).
public final class LazyPagesClient: @unchecked Sendable {
    public static let socketName = "lazy-pages.socket"
    let wire: MigrationWire
    /// nil: every page is in the image.
    public let remote: RemotePages?
    let record: RemotePagesRecord?
    let directory: String
    private let lock = Lock()
    private var lost: Error?
    private var onLost: ((Error) -> Void)?
    /// Signalled when the reader ends: `loaded` sent, or the page server lost.
    private let readerDone = DispatchSemaphore(value: 0)

    init(wire: MigrationWire, remote: RemotePages?, record: RemotePagesRecord?, directory: String) {
        self.wire = wire
        self.remote = remote
        self.record = record
        self.directory = directory
    }

    /// nil when the image needs no page server and no daemon waits on `socketPath`.
    public static func attach(imageDirectory: String, socketPath: String, logger: Logger) throws -> LazyPagesClient? {
        var record = try RemotePagesRecord.read(directory: imageDirectory)
        // No lazy-remote.img, but pages files missing: every page of those processes comes from the page
        // server, the ones restore needs at once before it starts. The daemon may not listen yet.
        let wholeFiles = try record == nil
            && !RemotePagesRecord.processesMissingPagesFiles(directory: imageDirectory).isEmpty
        if record == nil && !wholeFiles && !Files.exists(socketPath) { return nil }
        let fd = try connect(socketPath, waiting: record != nil || wholeFiles)
        let link = SocketLink(fd: fd, peer: "the lazy-pages daemon on \(socketPath)")
        var created: [String] = []
        do {
            if wholeFiles { record = try RemotePagesRecord.missingPagesFiles(directory: imageDirectory, created: &created) }
        } catch {
            link.close()
            removeMadeFiles(created)
            throw error
        }
        let wire = MigrationWire(link)
        guard let record else { return LazyPagesClient(wire: wire, remote: nil, record: nil, directory: imageDirectory) }
        do {
            let (remote, indices, eager) = try missingPages(record, imageDirectory: imageDirectory, fetchEager: wholeFiles)
            try wire.hello(lazyPages: true, other: "the page server through \(link.peer)")
            let client = LazyPagesClient(wire: wire, remote: remote, record: record, directory: imageDirectory)
            client.madeFiles = created
            try client.startReading(indices: indices, logger: logger)
            for run in eager { try remote.require(pid: run.pid, offset: run.offset, count: Int(run.length)) }
            return client
        } catch {
            link.close()
            removeMadeFiles(created)
            if error is MigrationLinkClosed { throw CryoError("\(link.peer) closed the connection (is its page server running?)") }
            throw error
        }
    }

    /// The daemon may still be starting when restore starts: for an image that needs it, wait a little.
    static func connect(_ path: String, waiting: Bool) throws -> FileDescriptor {
        let deadline = ContinuousClock.now + .seconds(waiting ? 10 : 0)
        while true {
            do {
                return try Sockets.connected(unix: Array(path.utf8), type: 1 /* SOCK_STREAM */, object: "lazy-pages socket \(path)")
            } catch let error as SyscallError where (error.errno == .noSuchFileOrDirectory || error.errno == .connectionRefused)
                && ContinuousClock.now < deadline {
                usleep(10_000)
            } catch let error as SyscallError where error.errno == .noSuchFileOrDirectory {
                throw CryoError("the image's memory is partly elsewhere (lazy-remote.img, or pages files missing) and no lazy-pages daemon listens on \(path): "
                    + "start `cryo lazy-pages --page-server --address A --port P` first")
            }
        }
    }

    /// Every page left out, as RemotePages wants it, and each process's page index; refused when restore
    /// would need one of them at once (they must all be pages it loads lazily, or the tree would start
    /// with zeros there).
    /// `fetchEager`: pages restore needs at once are returned, to fetch before it starts, instead of refused.
    static func missingPages(_ record: RemotePagesRecord, imageDirectory: String, fetchEager: Bool)
        throws -> (RemotePages, [Int32: PageIndex], [(pid: Int32, offset: UInt64, length: UInt64)]) {
        let remote = RemotePages()
        var indices: [Int32: PageIndex] = [:]
        var eager: [(pid: Int32, offset: UInt64, length: UInt64)] = []
        for process in record.processes {
            let path = "\(imageDirectory)/task-\(process.pid).img"
            let task = try TaskImage.read(path)
            indices[process.pid] = task.pageIndex
            let inherited = Set(task.memory.mappings.filter { $0.inherited == true }.map(\.start))
            let lazy = LazySplit(task: task, eagerMappings: inherited).pending
            var j = 0
            for run in process.runs {
                let (offset, address, length) = (run[0], run[1], run[2])
                remote.add(pid: process.pid, offset: offset, address: address, length: length)
                // The parts of the run restore loads lazily; the rest it needs at once.
                var cursor = address
                while cursor < address + length {
                    while j < lazy.count && lazy[j].end <= cursor { j += 1 }
                    let lazyHere = j < lazy.count && lazy[j].start <= cursor
                    let pieceEnd = lazyHere ? min(address + length, lazy[j].end) : min(address + length, j < lazy.count ? lazy[j].start : .max)
                    if lazyHere && lazy[j].offset + (cursor - lazy[j].start) != offset + (cursor - address) {
                        throw ImageError(file: "\(imageDirectory)/\(RemotePagesRecord.file)",
                                         "pid \(process.pid): pages at 0x\(String(cursor, radix: 16)) are not where the page index has them")
                    }
                    if !lazyHere {
                        guard fetchEager else {
                            throw ImageError(file: "\(imageDirectory)/\(RemotePagesRecord.file)",
                                             "pid \(process.pid): pages at 0x\(String(cursor, radix: 16)) are left out but restore needs them at once")
                        }
                        eager.append((process.pid, offset + (cursor - address), pieceEnd - cursor))
                    }
                    cursor = pieceEnd
                }
            }
        }
        return (remote, indices, eager)
    }

    /// Arriving pages go into the pages files (holes until then) and wake whoever waits for them.
    func startReading(indices: [Int32: PageIndex], logger: Logger) throws {
        guard let remote, let record else { return }
        var opened: [Int32: PagesFiles] = [:]
        do {
            for (pid, index) in indices { opened[pid] = try PagesFiles(index: index, path: "\(directory)/pages-\(pid).img") }
        } catch {
            for files in opened.values { files.close() }
            throw error
        }
        let files = opened
        remote.request = { [wire] pid, address, length in try wire.requestPages(pid: pid, address: address, length: length) }
        startThread(name: "cryo-lazy-pages") { [self, wire] in
            defer {
                for pages in files.values { pages.close() }
                readerDone.signal()
            }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: MigrationWire.maxData, alignment: 4096)
            defer { buffer.deallocate() }
            var bytes: UInt64 = 0
            do {
                while true {
                    let (kind, header, data) = try wire.receiveFrame(into: buffer)
                    let length = data.count
                    switch kind {
                    case .pages:
                        guard let pid = header.pid, let address = header.address, let pages = files[pid],
                              let pieces = record.pieces(pid: pid, address: address, length: UInt64(length)) else {
                            throw CryoError("\(wire.link.peer) sent pages that were not left out of the image")
                        }
                        var at = 0
                        for piece in pieces {
                            try pages.each(offset: piece.offset, length: piece.length) { fd, path, offset, length, within in
                                let from = at + Int(within)
                                try Files.write(fd, UnsafeRawBufferPointer(rebasing: data[from..<(from + Int(length))]), at: Int64(offset), path: path)
                            }
                            at += Int(piece.length)
                        }
                        remote.arrived(pid: pid, address: address, length: UInt64(length))
                        bytes += UInt64(length)
                    case .pagesDone:
                        let left = remote.missingBytes
                        guard left == 0 else { throw CryoError("the page server said every page was sent, but \(left) bytes are missing") }
                        logger.debug("lazy pages: \(bytes) bytes from the page server, \(remote.requests) requests")
                        try wire.send(.loaded)
                        return
                    case .failed:
                        throw CryoError("the page server gave up: \(header.message ?? "no reason given")")
                    default:
                        throw CryoError("\(wire.link.peer) sent an unexpected \(kind) frame")
                    }
                }
            } catch {
                let reason = CryoError("lost the page server through \(wire.link.peer): "
                    + "\(error is MigrationLinkClosed ? "connection closed" : "\(error)"), with \(remote.missingBytes) bytes of memory still there")
                remote.fail(reason)
                let notify: ((Error) -> Void)? = lock.withLock {
                    lost = reason
                    return onLost
                }
                notify?(reason)
            }
        }
    }

    /// The restored tree runs: the page server may push the rest. `lost` is called (at once, if it
    /// happened already) when the page server is lost before every page is here.
    public func started(onLost handler: @escaping (Error) -> Void) {
        let already: Error? = lock.withLock {
            onLost = handler
            return lost
        }
        if let already { handler(already) }
        if remote != nil {
            started = true
            try? wire.send(.restored)
        }
    }

    /// The restore failed or is done: the daemon (and through it the page server) sees the end. With
    /// pages from a page server, the loader may be done with the last page before the reader has passed
    /// `loaded` on: that comes first (the page server would take the end for a failure).
    public func close() {
        if remote != nil, started, readerDone.wait(timeout: .now() + 30) == .success { readerDone.signal() }
        wire.link.close()
    }

    /// The restore failed before the start: also the pages files made as holes go, so the folder is as
    /// it came (another restore then waits for the page server again instead of reading zeros).
    public func abandon() {
        close()
        Self.removeMadeFiles(madeFiles)
    }

    static func removeMadeFiles(_ paths: [String]) {
        for path in paths { try? FileObjects.remove(path, object: "pages file made for the page server's pages") }
    }
    private var started = false
    private var madeFiles: [String] = []
}

/// `cryo lazy-pages`: the destination's daemon between `restore --lazy-pages` and a `dump --lazy-pages`.
public enum LazyPagesDaemon {
    /// Serves one restore on `socketPath`. `ready` runs once the socket listens (CRIU's --daemon and
    /// --status-fd go there); `connectSource` (nil without --page-server) is called once restore asks for pages.
    public static func run(socketPath: String, connectSource: (() throws -> MigrationLink)?, ready: () throws -> Void,
                           logger: Logger) throws {
        unlink(socketPath)  // one left by a daemon that was killed
        let listener = try Sockets.listening(unix: Array(socketPath.utf8), type: 1 /* SOCK_STREAM */, backlog: 1,
                                             object: "lazy-pages socket \(socketPath)")
        defer {
            try? listener.close()
            unlink(socketPath)
        }
        try ready()
        let connection = try Sockets.acceptBlocking(listener, object: "lazy-pages socket \(socketPath)")
        let restore = SocketLink(fd: connection, peer: "restore")
        defer { restore.close() }
        let fromRestore = MigrationWire(restore)
        let first: (FrameKind, FrameHeader, Int)
        do { first = try fromRestore.receive() } catch is MigrationLinkClosed {
            logger.debug("lazy-pages: the restore loaded every page from its image")
            // A page server waits for one connection: this one, closed at once, tells it that nothing is needed.
            (try? connectSource?())?.close()
            return
        }
        guard let connectSource else {
            fromRestore.fail("this lazy-pages daemon has no page server")
            throw CryoError("restore asked for pages from a page server: its image needs `cryo lazy-pages --page-server --address A --port P`")
        }
        let source = try connectSource()
        defer { source.close() }
        let toSource = MigrationWire(source)
        let sourcePeer = source.peer
        // Frames go on as they come, each way on a thread of its own; the first one to end decides.
        let outcome = Outcome()
        startThread(name: "cryo-lazy-relay") {
            do {
                try relay(first: first, from: fromRestore, to: toSource, outcome: outcome)
                outcome.end(.restore, nil)
            } catch { outcome.end(.restore, outcome.loaded ? nil : CryoError("restore ended early: \(error)")) }
        }
        startThread(name: "cryo-lazy-relay") {
            do {
                try relay(first: nil, from: toSource, to: fromRestore, outcome: outcome)
                outcome.end(.source, nil)
            } catch {
                // Once restore has every page, a late answer to one of its requests may meet its closed end;
                // its `loaded` may still wait, unread, in the other relay's socket.
                outcome.end(.source, outcome.loaded(within: .seconds(5)) ? nil : CryoError("lost the page server \(sourcePeer): \(error)"))
            }
        }
        if let error = outcome.wait() { throw error }
        logger.debug("lazy-pages: every page passed on")
    }

    /// How the relay ends. After `loaded`, the source may still be sending (answers to requests the
    /// pushed pages had made needless): the daemon waits for the source to close first, since closing
    /// with bytes unread would reset the connection before the source has read `loaded`.
    final class Outcome: @unchecked Sendable {
        enum Side { case restore, source }
        private let lock = Lock()
        private let ended = DispatchSemaphore(value: 0)
        private var results: [(Side, Error?)] = []
        private var sawLoaded = false
        private let loadedSignal = DispatchSemaphore(value: 0)
        var loaded: Bool { lock.withLock { sawLoaded } }
        func markLoaded() {
            let first = lock.withLock { () -> Bool in defer { sawLoaded = true }; return !sawLoaded }
            if first { loadedSignal.signal() }
        }
        /// Whether restore's `loaded` went by, or does within `wait` (its relay may not have read it yet).
        func loaded(within wait: DispatchTimeInterval) -> Bool {
            if loaded { return true }
            guard loadedSignal.wait(timeout: .now() + wait) == .success else { return false }
            loadedSignal.signal()
            return true
        }
        func end(_ side: Side, _ failure: Error?) {
            lock.withLock { results.append((side, failure)) }
            ended.signal()
        }
        func wait() -> Error? {
            ended.wait()
            let (side, failure) = lock.withLock { results[0] }
            guard side == .restore, failure == nil else { return failure }
            if ended.wait(timeout: .now() + 30) == .timedOut { return nil }
            return lock.withLock { results[1].1 }
        }
    }

    /// Passes frames on until `from` ends; returns at a clean end after `loaded` went by.
    static func relay(first: (FrameKind, FrameHeader, Int)?, from: MigrationWire, to: MigrationWire, outcome: Outcome) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: MigrationWire.maxData, alignment: 4096)
        defer { buffer.deallocate() }
        var next = first
        while true {
            let (kind, header, length) = try next ?? from.receive()
            next = nil
            let data = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length])
            try from.readData(into: data)
            if kind == .loaded { outcome.markLoaded() }
            try to.send(kind, header, data: length > 0 ? UnsafeRawBufferPointer(data) : nil)
            if kind == .failed { throw CryoError(header.message ?? "no reason given") }
        }
    }
}
