import CryoSystem
import FoundationEssentials
import Glibc
import Synchronization

/// Test hook: `CRYO_KILL_AT=<phase>` makes cryo kill itself with SIGKILL when it
/// reaches that phase, so tests can check that nothing it touched is harmed.
/// `<phase>#<n>` waits for the n-th time (a restore passes most phases once
/// per process).
/// `CRYO_STOP_AT=<phase>[#<n>]` stops cryo there instead (SIGSTOP), so a test can act
/// (kill the target, start another cryo) before it sends SIGCONT. It stops that one
/// time only: a phase met again in a loop (a page copy) must not stop cryo anew
/// with nobody left to continue it.
public func killPoint(_ phase: @autoclosure () -> String) {
    guard stopPhase != nil || killPhase != nil else { return }
    let name = phase()
    if let stop = stopPhase, stop.name == name, stopPhaseSeen.add(1, ordering: .relaxed).newValue == stop.count { raise(SIGSTOP) }
    if let wanted = killPhase, wanted.name == name, killPhaseSeen.add(1, ordering: .relaxed).newValue >= wanted.count {
        kill(getpid(), SIGKILL)
    }
}

/// `<phase>` or `<phase>#<n>`.
private func parsePhase(_ value: String?) -> (name: String, count: Int)? {
    guard let value else { return nil }
    if let hash = value.lastIndex(of: "#"), let count = Int(value[value.index(after: hash)...]), count > 0 {
        return (String(value[..<hash]), count)
    }
    return (value, 1)
}

private let stopPhase = parsePhase(TestHooks.current.stopAt)
private let killPhase = parsePhase(TestHooks.current.killAt)
private let stopPhaseSeen = Atomic<Int>(0)
private let killPhaseSeen = Atomic<Int>(0)
