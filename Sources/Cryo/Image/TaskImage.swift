import CryoSystem
import Dispatch
import FoundationEssentials
import Glibc
import SystemPackage

/// Everything one process's image holds: task-PID.img plus pages-PID.img.
public struct TaskImage: Codable, Sendable {
    public var core: TaskCore
    /// The thread group leader first.
    public var threads: [ThreadRecord]
    public var memory: MemoryRecord
    public var pageIndex: PageIndex
    public var signals: SignalsRecord
    public var descriptors: DescriptorsRecord

    func write(to path: String) throws {
        // Version 4: the runs are binary (a million of them as JSON took half a second to read back);
        // version 6: mappings and descriptors too (10,000 of either were most of a dump's and restore's work).
        // Version 6 covers 5's inherited mappings as well: an older cryo refuses both.
        // Version 7: ranges kept from the parent that are not whole mappings, which a version 6 cryo would keep whole.
        // Version 9: guard regions, which an older cryo would not install.
        // Version 10: AIO rings' head and unreaped events, which an older cryo would leave out without a word.
        // Version 11: seccomp strict mode, which an older cryo would not set again.
        let strictSeccomp = core.seccomp?.strict == true || threads.contains { $0.seccomp?.strict == true }
        var writer = RecordWriter(version: strictSeccomp ? ImageFormat.strictSeccompVersion
            : memory.aioRings != nil ? ImageFormat.aioRingsVersion
            : memory.guards != nil ? ImageFormat.guardRegionsVersion
            : memory.inheritedRanges == nil ? ImageFormat.binaryTablesVersion : ImageFormat.inheritedRangesVersion)
        try writer.append(.task, core)
        try writer.append(.threads, threads)
        var rest = memory
        rest.mappings = []
        try writer.append(.memory, rest)
        writer.append(.mappings, bytes: try MappingTable.encode(memory.mappings))
        try writer.append(.pageIndex, pageIndex.header)
        writer.append(.pageRuns, bytes: PageRunTable.encode(pageIndex.runs))
        try writer.append(.signals, signals)
        writer.append(.descriptorTable, bytes: try DescriptorTableCodec.encode(descriptors))
        try writer.write(to: path)
    }

    /// Gives a task file another page index, everything else kept (`cryo receive`: runs that point
    /// into the pages as they arrived). Written beside it and renamed over it.
    static func replacePageIndex(at path: String, with index: PageIndex) throws {
        let name = fileName(of: path)
        var image = try read(path)
        try checkReplacement(of: image.pageIndex, with: index, file: name)
        image.pageIndex = index
        let fresh = path + ".new"
        unlink(fresh)
        try image.write(to: fresh)
        guard rename(fresh, path) == 0 else {
            let problem = SyscallError("rename", errno: Errno(rawValue: Glibc.errno), object: "\(fresh) to \(path)")
            unlink(fresh)
            throw problem
        }
    }

    static func checkReplacement(of written: PageIndex, with index: PageIndex, file: String) throws {
        guard written.pageBytes == index.pageBytes else {
            throw ImageError(file: file, record: "pageIndex", "the received runs cover \(index.pageBytes) bytes, the file's \(written.pageBytes)")
        }
    }

    /// A task file as written, unchecked (for cryo's own freshly written files; restore uses `load`).
    static func read(_ path: String) throws -> TaskImage {
        let reader = try RecordReader(path: path)
        return TaskImage(core: try reader.one(.task, as: TaskCore.self),
                         threads: try reader.one(.threads, as: [ThreadRecord].self),
                         memory: try memory(reader, file: fileName(of: path)),
                         pageIndex: try pageIndex(reader, file: fileName(of: path)),
                         signals: try reader.one(.signals, as: SignalsRecord.self),
                         descriptors: try descriptors(reader, file: fileName(of: path)))
    }

    /// Up to version 4 the mappings are JSON inside `memory`; from version 6 on the binary `mappings` record (`memory` lists none).
    static func memory(_ reader: RecordReader, file: String) throws -> MemoryRecord {
        var memory = try reader.one(.memory, as: MemoryRecord.self)
        guard reader.version >= ImageFormat.binaryTablesVersion else { return memory }
        guard memory.mappings.isEmpty else { throw ImageError(file: file, record: "memory", "lists mappings beside the mappings record") }
        memory.mappings = try MappingTable.decode(try reader.payload(.mappings), file: file)
        return memory
    }

    /// Up to version 4 the `descriptors` record is JSON; from version 6 on it is the binary `descriptorTable`.
    static func descriptors(_ reader: RecordReader, file: String) throws -> DescriptorsRecord {
        guard reader.version >= ImageFormat.binaryTablesVersion else { return try reader.one(.descriptors, as: DescriptorsRecord.self) }
        return try DescriptorTableCodec.decode(try reader.payload(.descriptorTable), file: file)
    }

    /// Up to version 3 the runs are JSON inside `pageIndex`; from version 4 on they are the binary `pageRuns` record.
    static func pageIndex(_ reader: RecordReader, file: String) throws -> PageIndex {
        guard reader.version >= ImageFormat.pageRunsVersion else { return try reader.one(.pageIndex, as: PageIndex.self) }
        return PageIndex(header: try reader.one(.pageIndex, as: PageIndex.Header.self),
                         runs: try PageRunTable.decode(try reader.payload(.pageRuns), file: file))
    }

    /// Reads and checks one task's records and its pages file's size. `received`: the runs `cryo receive`
    /// placed the pages at, which replace the file's own (they must cover as many bytes).
    static func load(_ paths: ImagePaths, pid: Int32, table: FileTable, received: PageIndex? = nil) throws -> TaskImage {
        let path = paths.task(pid)
        let name = fileName(of: path)
        let reader = try RecordReader(path: path)
        var written = try pageIndex(reader, file: name)
        if let received {
            try checkReplacement(of: written, with: received, file: name)
            written = received
        }
        let image = TaskImage(core: try reader.one(.task, as: TaskCore.self),
                              threads: try reader.one(.threads, as: [ThreadRecord].self),
                              memory: try memory(reader, file: name),
                              pageIndex: written,
                              signals: try reader.one(.signals, as: SignalsRecord.self),
                              descriptors: try descriptors(reader, file: name))
        guard image.core.pid == pid else { throw ImageError(file: name, record: "task", "describes pid \(image.core.pid)") }
        guard image.threads.first?.tid == pid, Set(image.threads.map(\.tid)).count == image.threads.count else {
            throw ImageError(file: name, record: "threads", "the first thread must be the leader \(pid), and tids unique")
        }
        for thread in image.threads { try thread.validate(file: name) }
        try image.core.validate(file: name)
        try image.core.seccomp?.validate(file: name)
        try image.signals.validate(file: name)
        try image.descriptors.validate(file: name, table: table)
        let sizes = try image.pageIndex.fileSizes.indices.map { part -> (name: String, size: UInt64) in
            let pagesName = fileName(of: paths.pages(pid, part: part))
            var st = Glibc.stat()
            guard fstatat(AT_FDCWD, paths.pages(pid, part: part), &st, 0) == 0 else { throw ImageError(file: pagesName, "is missing") }
            return (pagesName, UInt64(st.st_size))
        }
        try image.memory.validate(file: name, index: image.pageIndex, pagesFiles: sizes)
        return image
    }
}

/// The whole image folder, read and checked before anything is created.
public struct Image: Sendable {
    public let paths: ImagePaths
    public let inventory: Inventory
    public let fileTable: FileTable
    public let sharedMemory: SharedMemoryTable
    public let tasks: [TaskImage]

    /// `received` (`cryo receive`, into a folder it marked incomplete): per pid, the runs that point
    /// where the pages arrived, which the task files do not hold yet.
    public init(directory: String, received: [Int32: PageIndex]? = nil) throws {
        paths = ImagePaths(directory)
        guard Files.exists(directory) else { throw CryoError("image folder \(directory) does not exist") }
        if received == nil, let refusal = IncompleteMark.refusal(paths) { throw refusal }
        guard Files.exists(paths.inventory) else {
            throw CryoError("\(directory) holds no cryo image (no inventory.img)")
        }
        inventory = try RecordReader(path: paths.inventory).one(.inventory, as: Inventory.self)
        guard inventory.tool == "cryo" else { throw ImageError(file: "inventory.img", record: "inventory", "written by \(inventory.tool)") }
        try inventory.validate()
        try inventory.cgroups?.validate()
        fileTable = try FileTable.read(paths.files)
        try fileTable.validate(file: "files.img")
        try inventory.validateTerminals(fileTable)
        sharedMemory = try Image.loadSharedMemory(paths)
        for segment in inventory.sysvSharedMemory ?? [] {
            try segment.validate()
            let data = SysVSegment.dataPath(paths, id: segment.id)
            let bytes = segment.runs.last.map { $0[2] + $0[1] } ?? 0
            let size = bytes == 0 ? 0 : (try? Files.stat(data).st_size).map(UInt64.init) ?? UInt64.max
            guard size == bytes else {
                throw ImageError(file: "sysvshm-\(segment.id).img", "is missing or not the \(bytes) bytes its runs need (truncated or replaced)")
            }
        }
        try SysVObjects.validate(inventory.sysvSemaphores ?? [], inventory.sysvMessageQueues ?? [])
        let (paths, table) = (self.paths, fileTable)
        // Decoding JSON is most of the work for a big tree: both cores do it.
        let pids = inventory.livePids
        if let stray = received?.keys.first(where: { !pids.contains($0) }) {
            throw ImageError(file: "inventory.img", record: "inventory", "lists no live pid \(stray), whose pages were received")
        }
        var loaded = [Result<TaskImage, Error>?](repeating: nil, count: pids.count)
        loaded.withUnsafeMutableBufferPointer { slots in
            nonisolated(unsafe) let slots = slots
            DispatchQueue.concurrentPerform(iterations: pids.count) { i in
                slots[i] = Result { try TaskImage.load(paths, pid: pids[i], table: table, received: received?[pids[i]]) }
            }
        }
        tasks = try loaded.map { try $0!.get() }
        for task in tasks {
            for m in task.memory.mappings where (m.kind == .sharedAnonymous) != (m.shmem.map { sharedMemory.objects.indices.contains($0) } ?? false) {
                throw ImageError(file: fileName(of: paths.task(task.core.pid)), record: "memory",
                                 "mapping 0x\(hex(m.start)): shared anonymous memory without its object in shmem.img, or the reverse")
            }
        }
        // One cloned from a sibling does not start with its parent's memory: it keeps none of it.
        let parents = Dictionary(inventory.processes.filter { $0.zombieStatus == nil && $0.sharesWith == nil }.map { ($0.pid, $0.ppid) },
                                 uniquingKeysWith: { a, _ in a })
        try CopyOnWrite.validate(tasks, parents: parents)
    }

    /// shmem.img and the size of each object's pages file; no file, no shared memory.
    static func loadSharedMemory(_ paths: ImagePaths) throws -> SharedMemoryTable {
        guard Files.exists(paths.sharedMemoryTable) else { return SharedMemoryTable(objects: []) }
        let table = try RecordReader(path: paths.sharedMemoryTable).one(.sharedMemory, as: SharedMemoryTable.self)
        let sizes = try table.objects.indices.map { id -> UInt64 in
            var st = Glibc.stat()
            guard fstatat(AT_FDCWD, paths.sharedMemory(id), &st, 0) == 0 else { throw ImageError(file: "shmem-\(id).img", "is missing") }
            return UInt64(st.st_size)
        }
        try table.validate(file: "shmem.img", dataSizes: sizes)
        return table
    }

    public func task(_ pid: Int32) -> TaskImage? { tasks.first { $0.core.pid == pid } }
}

extension Inventory {
    /// A tree: unique positive pids, the root first, every other parent listed before its child.
    func validate() throws {
        var seen = Set<Int32>()
        for (i, p) in processes.enumerated() {
            guard p.pid > 0, seen.insert(p.pid).inserted else {
                throw ImageError(file: "inventory.img", record: "inventory", "pid \(p.pid) is invalid or listed twice")
            }
            if i == 0 {
                guard p.pid == rootPid, p.zombieStatus == nil else {
                    throw ImageError(file: "inventory.img", record: "inventory", "the first process must be the live root \(rootPid)")
                }
            } else if !seen.contains(p.ppid) {
                throw ImageError(file: "inventory.img", record: "inventory", "pid \(p.pid) is listed before its parent \(p.ppid)")
            }
            if p.sharesFiles == true || p.sharesFS == true {
                // Shared with its parent: only a live child of a live parent is cloned so.
                guard i > 0, p.zombieStatus == nil, processes.contains(where: { $0.pid == p.ppid && $0.zombieStatus == nil }) else {
                    throw ImageError(file: "inventory.img", record: "inventory", "pid \(p.pid) shares its table or fs with a parent that is not a live process of the image")
                }
            }
            if let sibling = p.sharesWith {
                // Cloned from that sibling (CLONE_PARENT), which must exist by then.
                guard p.sharesFiles == true || p.sharesFS == true,
                      processes[..<i].contains(where: { $0.pid == sibling && $0.ppid == p.ppid && $0.zombieStatus == nil }) else {
                    throw ImageError(file: "inventory.img", record: "inventory", "pid \(p.pid) shares with pid \(sibling), which is not a live sibling listed before it")
                }
            }
        }
        guard !processes.isEmpty else { throw ImageError(file: "inventory.img", record: "inventory", "lists no process") }
    }
}

extension Image {
    /// Memory of a process as the image would restore it: saved pages, else the
    /// mapped file's bytes, else zeros. Addresses outside every mapping are refused.
    public func bytes(of task: TaskImage, at start: UInt64, count: Int) throws -> [UInt8] {
        var result: [UInt8] = []
        var address = start
        let end = start + UInt64(count)
        let pages = try PageReader(path: paths.pages(task.core.pid), index: task.pageIndex)
        while address < end {
            guard let m = task.memory.mappings.first(where: { $0.start <= address && address < $0.end }) else {
                throw CryoError("pid \(task.core.pid): address 0x\(String(address, radix: 16)) is in no mapping of the image")
            }
            let pageEnd = min((address & ~0xfff) + 4096, end)
            let want = Int(pageEnd - address)
            var chunk = [UInt8](repeating: 0, count: want)
            if let id = m.shmem {
                try chunk.withUnsafeMutableBytes { try sharedMemory.read(id, offset: m.fileOffset + (address - m.start), into: $0, paths: paths) }
            } else if pages.run(containing: address) != nil {
                try chunk.withUnsafeMutableBytes { try pages.read(address: address, into: $0) }
            } else if m.inherited == true, task.memory.keptFromParent.contains(where: { $0.contains(address) }),
                      !(task.memory.discards ?? []).contains(where: { $0[0] <= address && address < $0[1] }),
                      let ppid = inventory.processes.first(where: { $0.pid == task.core.pid })?.ppid, let parent = self.task(ppid) {
                // A page still shared with the parent since fork: the parent's, as restore leaves it.
                chunk = try bytes(of: parent, at: address, count: want)
            } else if m.kind == .file, let path = m.path, let file = try? Files.open(path, .readOnly) {
                _ = try? chunk.withUnsafeMutableBytes { try file.read(fromAbsoluteOffset: Int64(m.fileOffset + (address - m.start)), into: $0) }
                try? file.close()
            }
            result += chunk
            address = pageEnd
        }
        return result
    }
}
