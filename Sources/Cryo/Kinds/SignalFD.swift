import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// signalfd: the mask of signals it reads.
public struct SignalFDState: DescriptorKind {
    static let name = "signalfd"
    public var mask: UInt64

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> SignalFDState? {
        guard p.link == "anon_inode:[signalfd]" else { return nil }
        guard let mask = p.info.value("sigmask").flatMap({ UInt64($0, radix: 16) }) else {
            throw CryoError("\(p.object): signalfd without a readable sigmask in fdinfo")
        }
        return SignalFDState(mask: mask)
    }

    func summary(_ file: FileTable.OpenFile) -> String { "signalfd mask 0x\(hex(mask))" }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        try FileObjects.signalfd(mask: mask, nonBlocking: Int32(bitPattern: file.flags) & O_NONBLOCK != 0, object: object)
    }
}
