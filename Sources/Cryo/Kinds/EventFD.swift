import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// eventfd: the counter and whether it is a semaphore (from fdinfo).
public struct EventFDState: DescriptorKind {
    static let name = "eventfd"
    public var count: UInt64
    public var semaphore: Bool

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> EventFDState? {
        guard p.link == "anon_inode:[eventfd]" else { return nil }
        guard let count = p.info.value("eventfd-count").flatMap({ UInt64($0, radix: 16) }) else {
            throw CryoError("\(p.object): eventfd without a readable count in fdinfo")
        }
        return EventFDState(count: count, semaphore: p.info.value("eventfd-semaphore") == "1")
    }

    func summary(_ file: FileTable.OpenFile) -> String { "eventfd count \(count)\(semaphore ? ", semaphore" : "")" }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        try FileObjects.eventfd(count: count, semaphore: semaphore, nonBlocking: Int32(bitPattern: file.flags) & O_NONBLOCK != 0, object: object)
    }
}
