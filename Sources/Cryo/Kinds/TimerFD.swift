import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// timerfd: clock, time left, interval and expirations not yet read. An
/// absolute timer comes back as a relative one with the same time left.
public struct TimerFDState: DescriptorKind {
    static let name = "timerfd"
    public var clock: Int32
    public var ticks: UInt64
    public var valueNanoseconds: Int64
    public var intervalNanoseconds: Int64
    public var absolute: Bool

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> TimerFDState? {
        guard p.link == "anon_inode:[timerfd]" else { return nil }
        func pair(_ key: String) -> Int64? {
            // "(seconds, nanoseconds)"
            guard let text = p.info.value(key) else { return nil }
            let numbers = text.split(whereSeparator: { !$0.isNumber }).compactMap { Int64($0) }
            return numbers.count == 2 ? numbers[0] * 1_000_000_000 + numbers[1] : nil
        }
        guard let clock = p.info.value("clockid").flatMap({ Int32($0) }), let value = pair("it_value"),
              let interval = pair("it_interval") else {
            throw CryoError("\(p.object): timerfd with unreadable fdinfo")
        }
        let settime = UInt32(p.info.value("settime flags") ?? "0", radix: 8) ?? 0
        return TimerFDState(clock: clock, ticks: UInt64(p.info.value("ticks") ?? "0") ?? 0, valueNanoseconds: value,
                            intervalNanoseconds: interval, absolute: settime & 1 != 0)
    }

    func summary(_ file: FileTable.OpenFile) -> String {
        "timerfd clock \(clock), next in \(valueNanoseconds) ns, interval \(intervalNanoseconds) ns"
    }

    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor {
        try FileObjects.timerfd(clock: clock, nonBlocking: Int32(bitPattern: file.flags) & O_NONBLOCK != 0, valueNanoseconds: valueNanoseconds,
                                intervalNanoseconds: intervalNanoseconds, ticks: ticks, object: object)
    }
}
