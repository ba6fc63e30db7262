import CCryo
import CryoSystem
import Foundation
import Glibc
import SystemPackage

/// eventfd: the counter and whether it is a semaphore (from fdinfo).
public struct EventFDState: Codable, Sendable {
    public var count: UInt64
    public var semaphore: Bool

    static func dump(_ p: DescriptorProbe) throws -> EventFDState {
        guard let count = p.info.value("eventfd-count").flatMap({ UInt64($0, radix: 16) }) else {
            throw CryoError("\(p.object): eventfd without a readable count in fdinfo")
        }
        return EventFDState(count: count, semaphore: p.info.value("eventfd-semaphore") == "1")
    }

    func open(flags: UInt32, object: String) throws -> FileDescriptor {
        FileDescriptor(rawValue: Int32(try check(cryo_eventfd(count, semaphore ? 1 : 0, Int32(bitPattern: flags) & O_NONBLOCK != 0 ? 1 : 0),
                                                 "eventfd", object: object)))
    }
}

/// signalfd: the mask of signals it reads.
public struct SignalFDState: Codable, Sendable {
    public var mask: UInt64

    static func dump(_ p: DescriptorProbe) throws -> SignalFDState {
        guard let mask = p.info.value("sigmask").flatMap({ UInt64($0, radix: 16) }) else {
            throw CryoError("\(p.object): signalfd without a readable sigmask in fdinfo")
        }
        return SignalFDState(mask: mask)
    }

    func open(flags: UInt32, object: String) throws -> FileDescriptor {
        FileDescriptor(rawValue: Int32(try check(cryo_signalfd(mask, Int32(bitPattern: flags) & O_NONBLOCK != 0 ? 1 : 0),
                                                 "signalfd", object: object)))
    }
}
