import CryoSystem
import FoundationEssentials
import Glibc
import Synchronization

/// Test hook: `CRYO_KILL_AT=<phase>` makes cryo kill itself with SIGKILL when it
/// reaches that phase, so tests can check that nothing it touched is harmed.
/// `<phase>#<n>` waits for the n-th time (a restore passes most phases once
/// per process).
/// `CRYO_STOP_AT=<phase>` stops cryo there instead (SIGSTOP), so a test can act
/// (kill the target, start another cryo) before it sends SIGCONT.
public func killPoint(_ phase: @autoclosure () -> String) {
    if let stop = stopPhase, stop == phase() { raise(SIGSTOP) }
    guard let wanted = killPhase else { return }
    if wanted.name == phase() && killPhaseSeen.add(1, ordering: .relaxed).newValue >= wanted.count { kill(getpid(), SIGKILL) }
}

private let stopPhase: String? = TestHooks.current.stopAt

private let killPhase: (name: String, count: Int)? = {
    guard let value = TestHooks.current.killAt else { return nil }
    if let hash = value.lastIndex(of: "#"), let count = Int(value[value.index(after: hash)...]), count > 0 {
        return (String(value[..<hash]), count)
    }
    return (value, 1)
}()
private let killPhaseSeen = Atomic<Int>(0)
