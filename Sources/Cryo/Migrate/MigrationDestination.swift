import CCryo
import CryoSystem
import Dispatch
import FoundationEssentials
import Glibc
import Logging
import SystemPackage

// `cryo receive`: takes one migration stream into a private folder (or -D),
// keeps each pre-copy round's pages in a pool per process, builds the image
// when the frozen dump arrives and restores it; then tells the source.

public struct ReceiveOptions: Sendable {
    /// Where the image goes; nil: a private temporary folder, removed afterwards.
    public var directory: String?
    public var newPidNamespace: Bool
    public var tcpEstablished: Bool
    /// Start the tree before its memory is loaded (also when the source asks for it).
    public var lazyPages: Bool
    /// CRIU's page server: keep what arrives in `directory`, restore nothing.
    public var storeOnly: Bool
    /// --address-interface: where a service address the source moves goes.
    public var addressInterface: String?
    public init(directory: String?, newPidNamespace: Bool = false, tcpEstablished: Bool = false, lazyPages: Bool = false,
                storeOnly: Bool = false) {
        self.lazyPages = lazyPages
        self.storeOnly = storeOnly
        self.directory = directory
        self.newPidNamespace = newPidNamespace
        self.tcpEstablished = tcpEstablished
    }
}

public struct ReceiveResult: Sendable {
    /// nil for a page server.
    public var tree: RestoredTree?
    public var rounds: Int
    public var bytesReceived: UInt64
    /// With lazy pages: the loading failed after the tree started (it was killed by the lazy guard).
    public var loadingFailure: String?
    /// Post-copy: bytes received after the start, and page requests made for faults.
    public var postCopyBytes: UInt64 = 0
    public var postCopyRequests = 0
}

/// An error that already names the source.
protocol SourceGaveUpMarker {}

/// Destination, post-copy: reads the stream on a thread of its own from the commit on, files arriving
/// pages into the pools and wakes whoever waits for them; fails `remote` when the source is lost.
final class PostCopyReader: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let lock = Lock()
    private var failure: Error?
    private var finished = false
    private(set) var bytes: UInt64 = 0
    let remote: RemotePages
    let pools: [Int32: PagePool]

    init(wire: MigrationWire, pools: [Int32: PagePool], remote: RemotePages, logger: Logger) throws {
        self.remote = remote
        self.pools = pools
        remote.request = { [wire] pid, address, length in try wire.requestPages(pid: pid, address: address, length: length) }
        startThread(name: "cryo-post-copy") { [self] in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: MigrationWire.maxData, alignment: 4096)
            defer { buffer.deallocate() }
            do {
                while true {
                    let (kind, header, data) = try wire.receiveFrame(into: buffer)
                    let length = data.count
                    switch kind {
                    case .pages:
                        guard let pid = header.pid, let pool = self.pools[pid], let address = header.address, address % 4096 == 0,
                              length % 4096 == 0, address <= UInt64.max - UInt64(length) else {
                            throw CryoError("migration stream from \(wire.link.peer): malformed pages frame")
                        }
                        try pool.write(address: address, UnsafeRawBufferPointer(data))
                        remote.arrived(pid: pid, address: address, length: UInt64(length))
                        bytes += UInt64(length)
                    case .release:
                        // The source confirmed the state read before its freeze: the restored tree may go.
                        guard length == 0 else { throw CryoError("migration stream from \(wire.link.peer): release frame with data") }
                        timelineMark(logger, "source confirmed: releasing")
                        self.lock.withLock { self.released = true }
                        self.releaseSignal.signal()
                    case .pagesDone:
                        let left = remote.missingBytes
                        guard left == 0 else { throw CryoError("the source said every page was sent, but \(left) bytes are missing") }
                        logger.debug("post-copy: \(bytes) bytes after the start, \(remote.requests) requests")
                        end(nil)
                        return
                    case .failed:
                        throw Receiver.SourceGaveUp(message: header.message ?? "no reason given")
                    default:
                        throw CryoError("migration stream from \(wire.link.peer): unexpected \(kind) frame during post-copy")
                    }
                }
            } catch {
                let lost = error is SourceGaveUpMarker ? error
                    : CryoError("lost the source \(wire.link.peer): \(error is MigrationLinkClosed ? "connection closed" : "\(error)")")
                remote.fail(CryoError("\(lost) with \(remote.missingBytes) bytes of memory still there"))
                end(lost)
            }
        }
    }

    private func end(_ error: Error?) {
        lock.withLock { failure = error; finished = true }
        done.signal()
        releaseSignal.signal()
    }

    private let releaseSignal = DispatchSemaphore(value: 0)
    private var released = false

    /// Waits for the source's `release` (it confirmed what it read before the freeze); throws if the
    /// stream ends or fails first.
    func waitRelease() throws {
        releaseSignal.wait()
        releaseSignal.signal()
        try lock.withLock {
            if released { return }
            throw failure ?? CryoError("the source ended the stream before it confirmed the frozen state")
        }
    }

    /// Waits for the last page, or the loss of the source; nil when every page is in.
    func waitDone() -> Error? {
        done.wait()
        done.signal()
        return lock.withLock { failure }
    }

    /// The receive ends (or failed): nothing waits for pages any more.
    func stop() {
        remote.fail(CryoError("the migration ended"))
        for pool in pools.values { pool.discard() }
    }
}

public struct Receiver {
    let options: ReceiveOptions
    let logger: Logger
    public init(options: ReceiveOptions, logger: Logger) {
        self.options = options
        self.logger = logger
    }

    public func run(over link: MigrationLink) throws -> ReceiveResult {
        let wire = MigrationWire(link)
        let directory: String
        let temporary = options.directory == nil
        if let given = options.directory {
            if !Files.exists(given) { try Files.makeDirectory(given, mode: 0o700, object: "image folder \(given)") }
            guard options.storeOnly || !Files.exists("\(given)/inventory.img") else { throw CryoError("\(given) already holds an image") }
            directory = given
        } else {
            directory = try Files.makeTemporaryDirectory(prefix: Migrator.scratchRoot() + "/cryo-receive-\(getpid())-")
        }
        var pools: [Int32: PagePool] = [:]
        defer {
            for pool in pools.values { pool.discard() }
            if temporary { Scratch.remove(directory) }
        }
        do {
            return try receive(wire: wire, directory: directory, pools: &pools)
        } catch let error as MigrationLinkClosed {
            _ = error
            let failure = CryoError("connection from \(link.peer) closed before the migration was complete")
            Self.markFailed(directory, temporary: temporary, failure)
            throw failure
        } catch {
            wire.fail("\(error)")
            Self.markFailed(directory, temporary: temporary, error)
            throw error
        }
    }

    func receive(wire: MigrationWire, directory: String, pools: inout [Int32: PagePool]) throws -> ReceiveResult {
        let peer = wire.link.peer
        let (kind, hello, _) = try wire.receive()
        guard kind == .hello, hello.version == MigrationWire.version else {
            throw CryoError("\(peer) is not a cryo migrate of this version (first frame \(kind), version \(hello.version ?? 0))")
        }
        let lazy = options.lazyPages || hello.lazyPages == true
        // Eager too, the tree starts as soon as the image commits: every page is in the pool by then, so it
        // runs at once and its memory is filled from here (userfaultfd) without the source. Loading 2 GiB
        // first kept the service down for seconds. Without userfaultfd the restore loads before the start.
        let startBeforeLoaded = !options.storeOnly && (lazy || (try? LazyServer.check()) != nil)
        // Refused now, while the source tree still runs: nowhere to put the address, or it is here already.
        let movedAddress = try hello.movedAddress.map { try DestinationAddress($0, device: options.addressInterface) }
        // A kept folder (-D) is refused as an image until it is whole and its task files point where the pages
        // arrived, which they do only after the restore (rewriting them in the downtime cost it 3-20 ms).
        let keptImage = options.directory != nil && !options.storeOnly
        if keptImage { try IncompleteMark.write(ImagePaths(directory), "cryo receive (pid \(getpid())) from \(peer) did not finish") }
        // Growing the descriptor table with threads about (TLS, the post-copy reader) waits for an RCU grace
        // period, 6-14 ms here: now, while the tree still runs at the source, not in the restore.
        Restorer.prepareDescriptorTable()
        // Spawning the guard costs milliseconds: here, while the tree still runs at the source.
        let guardian = startBeforeLoaded ? try LazyGuard() : nil
        try wire.send(.ready)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: MigrationWire.maxData, alignment: 4096)
        defer { buffer.deallocate() }
        var rounds = 0
        var figures = ReceiveStatistics()
        var roundStartBytes: UInt64 = 0
        var frozenStartBytes: UInt64 = 0
        var file: IncomingFile?
        var pages: IncomingPages?
        /// Per pid, the page index pointing into the pool file that became its pages file.
        var indices: [Int32: PageIndex] = [:]
        var frozenImageStart: ContinuousClock.Instant?
        // Post-copy: pages left out of the image, which come after the start.
        let remote = lazy ? RemotePages() : nil
        while true {
            let (kind, header, length) = try wire.receive()
            if kind == .pages {
                // A round's pages (nearly all the bytes): into the pool straight from the link's pieces
                // (TLS: the decrypted records), not copied into `buffer` first. The pool takes pieces of
                // any length; the frame is whole pages once its last piece is in.
                guard let pid = header.pid, pid > 0, let address = header.address, address % 4096 == 0, length % 4096 == 0,
                      address <= UInt64.max - UInt64(length) else {
                    throw CryoError("migration stream from \(peer): malformed pages frame")
                }
                if pools[pid] == nil { pools[pid] = try PagePool(path: "\(directory)/.pool-\(pid)", pid: pid) }
                let pool = pools[pid]!
                var at = address
                try wire.readData(length: length, scratch: buffer) { piece in
                    try pool.write(address: at, piece)
                    at += UInt64(piece.count)
                }
                continue
            }
            let data = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length])
            try wire.readData(into: data)
            switch kind {
            case .roundEnd:
                rounds += 1
                figures.roundBytes.append(wire.bytesReceived - roundStartBytes)
                roundStartBytes = wire.bytesReceived
                // The round's buffers (TLS records, frames: 60 MB of free heap after 2 GiB) go back to the kernel
                // now, while the tree still runs: the restore's first tasks start as copies of this process, whose
                // page tables each clone copies in the downtime (--pidns: the init, then the root).
                _ = cryo_malloc_trim()
                // Its pages are in the pool: the source may freeze without leaving us a backlog.
                var held = FrameHeader()
                held.round = header.round
                try wire.send(.roundHeld, held)
            case .fileBegin:
                if frozenImageStart == nil {
                    frozenImageStart = .now
                    frozenStartBytes = wire.bytesReceived - UInt64(length)
                    timelineMark(logger, "first file of the frozen image")
                }
                guard file == nil, pages == nil, let name = header.name, Self.safeName(name), let size = header.size else {
                    throw CryoError("migration stream from \(peer): malformed file frame")
                }
                if header.sparse == true {
                    guard let pid = header.pid, name == "pages-\(pid).img", let runs = header.runs, indices[pid] == nil else {
                        throw CryoError("migration stream from \(peer): malformed pages file frame for \(name)")
                    }
                    if pools[pid] == nil { pools[pid] = try PagePool(path: "\(directory)/.pool-\(pid)", pid: pid) }
                    pages = try IncomingPages(path: "\(directory)/\(name)", size: size, pid: pid, runs: runs, pool: pools[pid]!,
                                              omitted: header.omitted ?? [])
                } else {
                    // A page server takes the pages files of a dump whose other files stay on its host.
                    if options.storeOnly { unlink("\(directory)/\(name)") }
                    file = try IncomingFile(plain: "\(directory)/\(name)", size: size)
                }
            case .fileData:
                guard let offset = header.offset else { throw CryoError("migration stream from \(peer): file data without an offset") }
                if let pages {
                    try pages.write(UnsafeRawBufferPointer(data), at: offset)
                } else if let current = file {
                    try current.write(UnsafeRawBufferPointer(data), at: offset)
                } else {
                    throw CryoError("migration stream from \(peer): file data outside a file")
                }
            case .fileEnd:
                if let current = pages {
                    indices[current.pid] = try current.finish(remote: remote)
                    pages = nil
                } else if let current = file {
                    try current.finish()
                    file = nil
                } else {
                    throw CryoError("migration stream from \(peer): file end outside a file")
                }
            case .commit:
                guard file == nil, pages == nil else { throw CryoError("migration stream from \(peer): commit inside a file") }
                timelineMark(logger, "commit received")
                logger.debug("image complete \(String(printf: "%.3f", seconds(since: frozenImageStart ?? .now))) s after its first file")
                let postCopy = remote.flatMap { $0.missingBytes > 0 ? $0 : nil }
                // Post-copy: from here on a thread of its own reads the stream (the restore itself may wait on a page).
                let reader = try postCopy.map { try PostCopyReader(wire: wire, pools: pools, remote: $0, logger: logger) }
                defer { reader?.stop() }
                if reader == nil {
                    for pool in pools.values { pool.discard() }
                    pools = [:]
                }
                if options.storeOnly {
                    for (pid, index) in indices { try TaskImage.replacePageIndex(at: "\(directory)/task-\(pid).img", with: index) }
                    try wire.send(.restored)
                    return ReceiveResult(tree: nil, rounds: rounds, bytesReceived: wire.bytesReceived)
                }
                var restoreOptions = RestoreOptions(directory: directory, detached: true, newPidNamespace: options.newPidNamespace,
                                                    tcpEstablished: options.tcpEstablished, lazyPages: startBeforeLoaded)
                restoreOptions.remotePages = postCopy
                // The runs that point into the pools (no page is copied) go to the restore as they are; the task
                // files still hold the source's, and get these only once the tree runs (a kept folder) or never.
                restoreOptions.receivedPageIndexes = indices
                // Whole once every file is in, post-copy once the last page is.
                var imageWhole = postCopy == nil
                restoreOptions.lazyGuard = guardian
                figures.frozenImageBytes = wire.bytesReceived - frozenStartBytes
                figures.frozenImageSeconds = seconds(since: frozenImageStart ?? .now)
                figures.postCopyMissingBytes = postCopy?.missingBytes ?? 0
                restoreOptions.migration = figures
                if header.confirm == true, let reader {
                    // Post-copy: its reader thread owns the connection from the commit on and takes the release.
                    restoreOptions.beforeRelease = { try reader.waitRelease() }
                } else if header.confirm == true {
                    restoreOptions.beforeRelease = { [wire, logger] in
                        let (kind, answer, length) = try wire.receive()
                        guard length == 0 else { throw CryoError("migration stream from \(peer): \(kind) frame with data before the release") }
                        switch kind {
                        case .release: timelineMark(logger, "source confirmed: releasing")
                        case .failed: throw SourceGaveUp(message: answer.message ?? "no reason given")
                        default: throw CryoError("migration stream from \(peer): unexpected \(kind) frame before the release")
                        }
                    }
                }
                if let movedAddress {
                    // The moved connections' packets are dropped here too (restore removes the rules once the tree
                    // runs) before the address comes: none meets a host without their socket and draws an RST.
                    let lock = try NetworkLock.saved(in: directory)
                    try lock?.placeHere()
                    do { try movedAddress.add() } catch {
                        movedAddress.remove()
                        lock?.removeAll()
                        throw error
                    }
                    timelineMark(logger, "moved address \(movedAddress.address) added on \(movedAddress.device)")
                }
                let tree: RestoredTree
                do { tree = try Restorer(options: restoreOptions, logger: logger).run() } catch {
                    movedAddress?.remove()
                    throw error
                }
                timelineMark(logger, "restored pid \(tree.rootPid); answering the source")
                var answer = FrameHeader()
                answer.pid = tree.rootPid
                do { try wire.send(.restored, answer) } catch {
                    // The source cannot learn that the tree runs here, so it will release its own: this one must go.
                    kill(tree.childPid, SIGKILL)
                    movedAddress?.remove()
                    throw CryoError("restored pid \(tree.rootPid) but could not tell the source (\(error)); killed it again")
                }
                var result = ReceiveResult(tree: tree, rounds: rounds, bytesReceived: wire.bytesReceived)
                if let reader {
                    // Every page left out arrives (or the source is lost, and loading kills the tree); then the source may let go.
                    if let lost = reader.waitDone() {
                        tree.lazy?.abort(lost)
                    } else {
                        imageWhole = true
                        try? wire.send(.loaded)
                    }
                    result.postCopyBytes = reader.bytes
                    result.postCopyRequests = postCopy?.requests ?? 0
                }
                if let loader = tree.lazy {
                    // Every page is here already: the tree runs while they are filled in from the local image
                    // (which stays until then). The root is our child until it exits: reap it if it ends first.
                    var reaped = false
                    while !loader.waitLoaded(for: 0.05) {
                        if !reaped { var status: Int32 = 0; reaped = waitpid(tree.childPid, &status, WNOHANG) == tree.childPid }
                    }
                    result.loadingFailure = loader.failed.map { "\($0)" }
                }
                if keptImage { completeKeptImage(directory, indices: indices, whole: imageWhole) }
                return result
            case .failed:
                throw SourceGaveUp(message: header.message ?? "no reason given")
            default:
                throw CryoError("migration stream from \(peer): unexpected \(kind) frame")
            }
        }
    }

    /// A kept folder marked incomplete (from the hello on) says why: not restored, or not confirmed by the source.
    static func markFailed(_ directory: String, temporary: Bool, _ error: Error) {
        let paths = ImagePaths(directory)
        if !temporary && Files.exists(IncompleteMark.path(paths)) { try? IncompleteMark.write(paths, "cryo receive failed: \(error)") }
    }

    /// The kept folder becomes a restorable image: its task files get the runs as the pages arrived.
    /// Not while pages the source never sent are missing (post-copy cut short): it stays refused, saying so.
    func completeKeptImage(_ directory: String, indices: [Int32: PageIndex], whole: Bool) {
        let paths = ImagePaths(directory)
        guard whole else {
            try? IncompleteMark.write(paths, "post-copy: the source was lost before every page arrived")
            return
        }
        do {
            for (pid, index) in indices { try TaskImage.replacePageIndex(at: paths.task(pid), with: index) }
            IncompleteMark.remove(paths)
        } catch {
            try? IncompleteMark.write(paths, "its page runs were not written: \(error)")
            logger.warning("the tree runs, but \(directory) is no restorable image: its page runs were not written: \(error)")
        }
    }

    struct SourceGaveUp: Error, CustomStringConvertible, SourceGaveUpMarker {
        let message: String
        var description: String { "the source ended the migration: \(message)" }
    }

    /// Image file names only: no folders, no hidden files (the pools are hidden).
    static func safeName(_ name: String) -> Bool {
        !name.isEmpty && name.count < 200 && !name.hasPrefix(".")
            && name.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x2d || $0 == 0x2e || $0 == 0x5f }
    }
}

/// One process's pages from the pre-copy rounds: a file, and where each address is in it.
final class PagePool {
    struct Run { var address: UInt64; var length: UInt64; var offset: UInt64; var end: UInt64 { address + length } }
    let path: String
    let pid: Int32
    let fd: FileDescriptor
    /// Sorted by address, not overlapping.
    var runs: [Run] = []
    var size: UInt64 = 0
    private var handedOver = false

    init(path: String, pid: Int32) throws {
        self.path = path
        self.pid = pid
        fd = try Files.open(path, .readWrite, options: [.create, .exclusiveCreate, .noFollow], permissions: [.ownerReadWrite])
    }

    /// Index of the first run ending after `address`.
    func firstRun(endingAfter address: UInt64) -> Int {
        var low = 0, high = runs.count
        while low < high {
            let mid = (low + high) / 2
            if runs[mid].end <= address { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// Newer contents of pages already held are written in place; new pages are appended.
    func write(address: UInt64, _ data: UnsafeRawBufferPointer) throws {
        try place(address: address, length: UInt64(data.count), data)
    }

    /// Post-copy: room for pages still to come (a hole at the end where none is held yet).
    func reserve(address: UInt64, length: UInt64) throws {
        try place(address: address, length: length, nil)
        try Files.truncate(fd, to: size, path: path)
    }

    private func place(address: UInt64, length: UInt64, _ data: UnsafeRawBufferPointer?) throws {
        let end = address + length
        var cursor = address
        var i = firstRun(endingAfter: address)
        var inserts: [Run] = []
        while cursor < end {
            if i < runs.count && runs[i].address <= cursor {
                let stop = min(end, runs[i].end)
                let at = runs[i].offset + (cursor - runs[i].address)
                if let data {
                    try Files.write(fd, UnsafeRawBufferPointer(rebasing: data[Int(cursor - address)..<Int(stop - address)]), at: Int64(at), path: path)
                }
                cursor = stop
                i += 1
            } else {
                let stop = min(end, i < runs.count ? runs[i].address : end)
                if let data {
                    try Files.write(fd, UnsafeRawBufferPointer(rebasing: data[Int(cursor - address)..<Int(stop - address)]), at: Int64(size), path: path)
                }
                inserts.append(Run(address: cursor, length: stop - cursor, offset: size))
                size += stop - cursor
                cursor = stop
            }
        }
        for run in inserts {
            let at = firstRun(endingAfter: run.address)
            // Appending right after the run before it, in memory and in the file: one run.
            if at > 0, runs[at - 1].end == run.address, runs[at - 1].offset + runs[at - 1].length == run.offset {
                runs[at - 1].length += run.length
            } else {
                runs.insert(run, at: at)
            }
        }
    }

    /// Calls `body(poolOffset, length)` for [address, address+length), or throws naming the first page not held.
    func locate(_ address: UInt64, _ length: UInt64, _ body: (UInt64, UInt64, UInt64) throws -> Void) throws {
        var cursor = address
        var i = firstRun(endingAfter: address)
        let end = address + length
        while cursor < end {
            guard i < runs.count, runs[i].address <= cursor else {
                throw CryoError("pid \(pid): page 0x\(String(cursor, radix: 16)) is in neither the frozen dump nor an earlier round")
            }
            let stop = min(end, runs[i].end)
            try body(cursor, runs[i].offset + (cursor - runs[i].address), stop - cursor)
            cursor = stop
            i += 1
        }
    }

    /// The pool file became the pages file.
    func consumed() { handedOver = true }

    private var discarded = false

    func discard() {
        guard !discarded else { return }
        discarded = true
        try? fd.close()
        if !handedOver { unlink(path) }
    }
}

/// A file of the image as it arrives (not a pages file of the frozen dump: `IncomingPages`).
final class IncomingFile {
    let path: String
    let size: UInt64
    let fd: FileDescriptor
    var received: UInt64 = 0

    init(plain path: String, size: UInt64) throws {
        self.path = path
        self.size = size
        fd = try Files.open(path, .writeOnly, options: [.create, .exclusiveCreate, .noFollow], permissions: [.ownerReadWrite])
    }

    func write(_ data: UnsafeRawBufferPointer, at offset: UInt64) throws {
        guard offset <= size, UInt64(data.count) <= size - offset else {
            throw CryoError("migration stream: \(path): data at \(offset)+\(data.count) is beyond its \(size) bytes")
        }
        try Files.write(fd, data, at: Int64(offset), path: path)
        received += UInt64(data.count)
    }

    func finish() throws {
        defer { try? fd.close() }
        guard received == size else { throw CryoError("migration stream: \(path) arrived incomplete") }
    }
}

/// A pages file of the frozen dump, which carries only the pages written since the last round: they go
/// into the pool like a round's (in place, or appended), and at the end the pool file itself becomes the
/// pages file, its runs pointing wherever each page arrived. Nothing that came in an earlier round is
/// copied or moved while the source is frozen.
final class IncomingPages {
    let path: String
    let pid: Int32
    let size: UInt64
    /// The dump's runs: offsets consecutive from 0 in the file as the source wrote it.
    let runs: [PageRun]
    let pool: PagePool
    /// Post-copy: [offset, length] of the dump's file that come after the start.
    let omitted: [[UInt64]]

    init(path: String, size: UInt64, pid: Int32, runs: [PageRun], pool: PagePool, omitted: [[UInt64]] = []) throws {
        self.path = path
        self.size = size
        self.pid = pid
        self.runs = runs
        self.pool = pool
        self.omitted = omitted
        var previous: UInt64 = 0
        for range in omitted {
            guard range.count == 2, range[0] >= previous, range[0] % 4096 == 0, range[1] % 4096 == 0, range[1] > 0,
                  range[0] <= size, range[1] <= size - range[0] else {
                throw CryoError("migration stream: pages-\(pid).img: malformed post-copy ranges")
            }
            previous = range[0] + range[1]
        }
        var expected: UInt64 = 0, previousEnd: UInt64 = 0
        for run in runs {
            guard run.offset == expected, run.length > 0, run.length % 4096 == 0, run.address % 4096 == 0,
                  run.length <= UInt64.max - run.address, run.address >= previousEnd else {
                throw CryoError("migration stream: pages-\(pid).img: malformed page runs")
            }
            expected += run.length
            previousEnd = run.end
        }
        guard expected == size else { throw CryoError("migration stream: pages-\(pid).img: runs cover \(expected) bytes, not \(size)") }
    }

    /// Bytes at `offset` of the dump's file: into the pool by their addresses.
    func write(_ data: UnsafeRawBufferPointer, at offset: UInt64) throws {
        guard offset <= size, UInt64(data.count) <= size - offset, offset % 4096 == 0, data.count % 4096 == 0 else {
            throw CryoError("migration stream: \(path): data at \(offset)+\(data.count) is misaligned or beyond its \(size) bytes")
        }
        try forEachAddress(offset, UInt64(data.count)) { address, done, take in
            try pool.write(address: address, UnsafeRawBufferPointer(rebasing: data[Int(done)..<Int(done + take)]))
        }
    }

    /// [offset, offset + length) of the dump's file as (address, bytes before it, length) pieces.
    func forEachAddress(_ offset: UInt64, _ length: UInt64, _ body: (UInt64, UInt64, UInt64) throws -> Void) throws {
        var low = 0, high = runs.count
        while low < high {
            let mid = (low + high) / 2
            if runs[mid].offset + runs[mid].length <= offset { low = mid + 1 } else { high = mid }
        }
        var done: UInt64 = 0
        var r = low
        while done < length {
            let at = offset + done
            let run = runs[r]
            let take = min(length - done, run.offset + run.length - at)
            try body(run.address + (at - run.offset), done, take)
            done += take
            r += 1
        }
    }

    /// Every page of the dump must be in the pool now (post-copy: or have room there, noted in `remote`);
    /// the pool file becomes pages-PID.img.
    func finish(remote: RemotePages? = nil) throws -> PageIndex {
        var later: [(UInt64, UInt64)] = []
        for range in omitted {
            try forEachAddress(range[0], range[1]) { address, _, length in
                try pool.reserve(address: address, length: length)
                later.append((address, length))
            }
        }
        guard later.isEmpty || remote != nil else { throw CryoError("migration stream: pages-\(pid).img leaves pages out, but this is no post-copy") }
        for (address, length) in later {
            try pool.locate(address, length) { at, poolOffset, n in remote?.add(pid: pid, offset: poolOffset, address: at, length: n) }
        }
        var index: [PageRun] = []
        for run in runs {
            // Merged only inside one of the dump's runs: a run must not cross from one mapping into the next.
            let first = index.count
            try pool.locate(run.address, run.length) { address, poolOffset, length in
                if index.count > first, let last = index.last, last.end == address, last.offset + last.length == poolOffset {
                    index[index.count - 1].length += length
                } else {
                    index.append(PageRun(address: address, length: length, offset: poolOffset))
                }
            }
        }
        guard rename(pool.path, path) == 0 else {
            throw SyscallError("rename", errno: Errno(rawValue: Glibc.errno), object: "\(pool.path) to \(path)")
        }
        pool.consumed()
        return PageIndex(runs: index, pagesFileSize: pool.size)
    }
}
