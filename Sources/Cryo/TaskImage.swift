import CryoSystem
import Foundation
import Glibc

/// Everything one task's image holds: task-PID.img plus pages-PID.img.
public struct TaskImage: Codable, Sendable {
    public var core: TaskCore
    public var registers: RegistersRecord
    public var memory: MemoryRecord
    public var pageIndex: PageIndex
    public var signals: SignalsRecord
    public var files: FilesRecord

    func write(to path: String) throws {
        var writer = RecordWriter()
        try writer.append(.task, core)
        try writer.append(.registers, registers)
        try writer.append(.memory, memory)
        try writer.append(.pageIndex, pageIndex)
        try writer.append(.signals, signals)
        try writer.append(.files, files)
        try writer.write(to: path)
    }

    /// Reads and checks one task's records and its pages file's size.
    static func load(_ paths: ImagePaths, pid: Int32) throws -> TaskImage {
        let path = paths.task(pid)
        let name = (path as NSString).lastPathComponent
        let reader = try RecordReader(path: path)
        let image = TaskImage(core: try reader.one(.task, as: TaskCore.self),
                              registers: try reader.one(.registers, as: RegistersRecord.self),
                              memory: try reader.one(.memory, as: MemoryRecord.self),
                              pageIndex: try reader.one(.pageIndex, as: PageIndex.self),
                              signals: try reader.one(.signals, as: SignalsRecord.self),
                              files: try reader.one(.files, as: FilesRecord.self))
        guard image.core.pid == pid else { throw ImageError(file: name, record: "task", "describes pid \(image.core.pid)") }
        try image.registers.validate(file: name)
        try image.signals.validate(file: name)
        try image.files.validate(file: name)
        let pagesName = (paths.pages(pid) as NSString).lastPathComponent
        var st = Glibc.stat()
        guard fstatat(AT_FDCWD, paths.pages(pid), &st, 0) == 0 else { throw ImageError(file: pagesName, "is missing") }
        try image.memory.validate(file: name, index: image.pageIndex, pagesFileSize: UInt64(st.st_size), pagesFile: pagesName)
        return image
    }
}

/// The whole image folder, read and checked before anything is created.
public struct Image: Sendable {
    public let paths: ImagePaths
    public let inventory: Inventory
    public let tasks: [TaskImage]

    public init(directory: String) throws {
        paths = ImagePaths(directory)
        guard Files.exists(directory) else { throw CryoError("image folder \(directory) does not exist") }
        guard Files.exists(paths.inventory) else {
            throw CryoError("\(directory) holds no cryo image (no inventory.img)")
        }
        inventory = try RecordReader(path: paths.inventory).one(.inventory, as: Inventory.self)
        guard inventory.tool == "cryo" else { throw ImageError(file: "inventory.img", record: "inventory", "written by \(inventory.tool)") }
        guard !inventory.pids.isEmpty, inventory.pids.allSatisfy({ $0 > 0 }) else {
            throw ImageError(file: "inventory.img", record: "inventory", "lists no valid pid")
        }
        let paths = self.paths
        tasks = try inventory.pids.map { try TaskImage.load(paths, pid: $0) }
    }
}
