import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc

/// Signal dispositions, interval timers and the process-wide signal queue.
public struct SignalsRecord: Codable, Sendable {
    public struct Action: Codable, Sendable {
        public var signal: Int32
        public var handler: UInt64
        public var flags: UInt64
        public var restorer: UInt64
        public var mask: UInt64
    }
    public struct Pending: Codable, Sendable {
        public var shared: Bool
        public var signal: Int32
        public var siginfo: Data
    }
    public struct IntervalTimer: Codable, Sendable {
        public var which: Int32
        public var intervalMicroseconds: Int64
        public var valueMicroseconds: Int64
    }
    public var actions: [Action]
    public var timers: [IntervalTimer]
    /// timer_create timers; nil when the process has none.
    public var posixTimers: [PosixTimer]?
    /// The process-wide queue; each thread's own queue is in its ThreadRecord.
    public var pending: [Pending]
}

extension SignalsRecord {
    static func dump(pid: pid_t, state: cryo_task_state) throws -> SignalsRecord {
        var actions: [Action] = []
        withUnsafeBytes(of: state.actions) { raw in
            for i in 0..<64 {
                let a = raw.loadUnaligned(fromByteOffset: i * MemoryLayout<cryo_sigaction>.stride, as: cryo_sigaction.self)
                // Default disposition with nothing else set need not be recorded.
                if a.handler == 0 && a.flags == 0 && a.mask == 0 { continue }
                actions.append(Action(signal: Int32(i + 1), handler: a.handler, flags: a.flags, restorer: a.restorer, mask: a.mask))
            }
        }
        let timers = withUnsafeBytes(of: state.itimers) { raw in
            (0..<3).map { i -> IntervalTimer in
                let t = raw.loadUnaligned(fromByteOffset: i * MemoryLayout<cryo_itimer>.stride, as: cryo_itimer.self)
                return IntervalTimer(which: Int32(i), intervalMicroseconds: t.interval.sec * 1_000_000 + t.interval.usec,
                                     valueMicroseconds: t.value.sec * 1_000_000 + t.value.usec)
            }
        }
        return SignalsRecord(actions: actions, timers: timers, posixTimers: nil, pending: try pending(pid, shared: true))
    }

    /// Signals the restored process has pending in any queue, or raises by itself (its POSIX timers'),
    /// as a mask: none of them may end a parasite command.
    func busySignals(threads: [ThreadRecord]) -> UInt64 {
        let queued = (pending + threads.flatMap(\.pending)).map(\.signal) + (posixTimers ?? []).map(\.signal)
        return queued.filter { (1...64).contains($0) }.reduce(UInt64(0)) { $0 | UInt64(1) << UInt64($1 - 1) }
    }

    /// An int3 would change its SIGTRAP: ignored (the kernel makes it SIG_DFL) or pending (merged with the trap's).
    func trapNeedsNoBreakpoints(threads: [ThreadRecord]) -> Bool {
        actions.contains { $0.signal == SIGTRAP && $0.handler == 1 /* SIG_IGN */ }
            || (pending + threads.flatMap(\.pending)).contains { $0.signal == SIGTRAP }
    }

    /// Every queued siginfo of one queue, read without dequeuing.
    static func pending(_ tid: pid_t, shared: Bool) throws -> [Pending] {
        try Ptrace.pendingSignals(tid, shared: shared).map { info in
            Pending(shared: shared, signal: info.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }, siginfo: Data(info))
        }
    }

    static func validate(_ pending: [Pending], file: String, record: String) throws {
        for p in pending where p.siginfo.count != 128 || p.signal < 1 || p.signal > 64 {
            throw ImageError(file: file, record: record, "pending signal \(p.signal) with \(p.siginfo.count)-byte siginfo")
        }
        guard pending.count <= Int(CRYO_MAX_QUEUED_SIGNALS) else {
            throw ImageError(file: file, record: record, "\(pending.count) queued signals, at most \(CRYO_MAX_QUEUED_SIGNALS) supported")
        }
    }

    /// Lays siginfos out as the parasite reads them.
    static func fill<T>(_ slots: inout T, with pending: [Pending]) {
        withUnsafeMutableBytes(of: &slots) { raw in
            for (i, p) in pending.prefix(Int(CRYO_MAX_QUEUED_SIGNALS)).enumerated() {
                let base = i * MemoryLayout<cryo_queued_signal>.stride
                raw.storeBytes(of: UInt32(p.shared ? 1 : 0), toByteOffset: base, as: UInt32.self)
                p.siginfo.withUnsafeBytes { info in
                    raw.baseAddress!.advanced(by: base + 8).copyMemory(from: info.baseAddress!, byteCount: 128)
                }
            }
        }
    }

    func validate(file: String) throws {
        for a in actions where a.signal < 1 || a.signal > 64 {
            throw ImageError(file: file, record: "signals", "signal number \(a.signal) out of range")
        }
        try SignalsRecord.validate(pending, file: file, record: "signals")
        guard timers.count <= 3 else { throw ImageError(file: file, record: "signals", "\(timers.count) interval timers") }
        for t in timers where !(0...2).contains(t.which) || t.intervalMicroseconds < 0 || t.valueMicroseconds < 0 {
            throw ImageError(file: file, record: "signals", "interval timer \(t.which) is malformed")
        }
    }

    /// Fills the parasite's view: every disposition (default where not recorded), timers, queue.
    func fill(_ state: inout cryo_task_state, _ extra: inout cryo_restore_extra) {
        withUnsafeMutableBytes(of: &state.actions) { raw in
            for a in actions {
                let action = cryo_sigaction(handler: a.handler, flags: a.flags, restorer: a.restorer, mask: a.mask)
                raw.storeBytes(of: action, toByteOffset: Int(a.signal - 1) * MemoryLayout<cryo_sigaction>.stride, as: cryo_sigaction.self)
            }
        }
        withUnsafeMutableBytes(of: &state.itimers) { raw in
            for t in timers {
                // An interval timer that expired while the task was frozen shows no time left (it
                // rearms when its signal is taken); setitimer would read 0 as "disarm".
                let value = t.valueMicroseconds == 0 && t.intervalMicroseconds != 0 ? 1 : t.valueMicroseconds
                let timer = cryo_itimer(
                    interval: cryo_timeval(sec: t.intervalMicroseconds / 1_000_000, usec: t.intervalMicroseconds % 1_000_000),
                    value: cryo_timeval(sec: value / 1_000_000, usec: value % 1_000_000))
                raw.storeBytes(of: timer, toByteOffset: Int(t.which) * MemoryLayout<cryo_itimer>.stride, as: cryo_itimer.self)
            }
        }
        extra.signal_count = UInt32(pending.count)
        SignalsRecord.fill(&extra.signals, with: pending)
    }
}
