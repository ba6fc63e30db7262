import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc

/// POSIX timers (timer_create): ids, clocks and notification from
/// /proc/PID/timers, time left and interval from inside the task. Restore
/// creates them with the same ids (PR_TIMER_CREATE_RESTORE_IDS) and arms them last.
public struct PosixTimer: Codable, Sendable {
    public var id: Int32
    public var clock: Int32
    public enum Notify: String, Codable, Sendable { case signal, thread, none }
    public var notify: Notify
    public var signal: Int32
    public var thread: Int32
    public var value: UInt64
    public var remainingNanoseconds: Int64
    public var intervalNanoseconds: Int64
    public var overrun: Int32

    /// The timers of `pid`, listed from /proc and timed by the parasite.
    static func dump(pid: pid_t, parasite: Parasite) throws -> [PosixTimer] {
        let text = (try? Files.readString("/proc/\(pid)/timers")) ?? ""
        var timers: [cryo_posix_timer] = []
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmed() }
            guard parts.count == 2 else { continue }
            if parts[0] == "ID" {
                var t = cryo_posix_timer()
                guard let id = Int32(parts[1]) else { throw CryoError("pid \(pid): unreadable timer id in /proc/\(pid)/timers: \(line)") }
                t.id = id
                timers.append(t)
                continue
            }
            guard !timers.isEmpty else { continue }
            switch parts[0] {
            case "signal":
                let sv = parts[1].split(separator: "/")
                timers[timers.count - 1].signal = Int32(sv.first ?? "") ?? 0
                timers[timers.count - 1].value = sv.count > 1 ? UInt64(sv[1], radix: 16) ?? 0 : 0
            case "notify":
                // "signal/pid.N", "none/pid.N", or ".../tid.N" for SIGEV_THREAD_ID
                let kind = parts[1].split(separator: "/").first ?? ""
                timers[timers.count - 1].notify = parts[1].contains("/tid.") ? 4 : kind == "none" ? 1 : 0
                timers[timers.count - 1].thread = Int32(parts[1].split(separator: ".").last ?? "") ?? 0
            case "ClockID": timers[timers.count - 1].clock = Int32(parts[1]) ?? 0
            default: break
            }
        }
        if timers.isEmpty { return [] }
        // A timer aimed at a thread that has exited since delivers nothing any more; timer_create would
        // refuse that thread at restore (EINVAL), so it comes back as the inert timer it is (SIGEV_NONE).
        for i in timers.indices where timers[i].notify == 4 && !Files.exists("/proc/\(pid)/task/\(timers[i].thread)") {
            timers[i].notify = 1
        }
        var header = cryo_timers()
        header.count = UInt32(timers.count)
        let reply = try parasite.run(CRYO_CMD_DUMP_TIMERS, payload: bytes(of: header) + bytes(of: timers),
                                     replyBytes: MemoryLayout<cryo_timers>.size + timers.count * MemoryLayout<cryo_posix_timer>.stride)
        let timed = reply.payload.dropFirst(MemoryLayout<cryo_timers>.size).withUnsafeBytes { raw in
            (0..<timers.count).map { raw.loadUnaligned(fromByteOffset: $0 * MemoryLayout<cryo_posix_timer>.stride, as: cryo_posix_timer.self) }
        }
        return timed.map { t in
            PosixTimer(id: t.id, clock: t.clock, notify: t.notify == 4 ? .thread : t.notify == 1 ? .none : .signal, signal: t.signal,
                       thread: t.thread, value: t.value, remainingNanoseconds: t.remaining_ns, intervalNanoseconds: t.interval_ns,
                       overrun: t.overrun)
        }
    }

    static func restorePayload(_ timers: [PosixTimer]) -> [UInt8] {
        var header = cryo_timers()
        header.count = UInt32(timers.count)
        return bytes(of: header) + bytes(of: timers.map { t in
            cryo_posix_timer(id: t.id, clock: t.clock, notify: t.notify == .thread ? 4 : t.notify == .none ? 1 : 0, signal: t.signal,
                             thread: t.thread, overrun: t.overrun, value: t.value, remaining_ns: t.remainingNanoseconds,
                             interval_ns: t.intervalNanoseconds)
        })
    }
}
