import Foundation
import Glibc

/// Test hook, hidden from users: `CRYO_KILL_AT=<phase>` makes cryo SIGKILL
/// itself when it reaches that named phase, so tests can check what a dying
/// cryo leaves behind; `CRYO_STOP_AT=<phase>` stops it there (SIGSTOP) so a
/// test can change the world (take a pid, remove a file) before SIGCONT.
/// Several phases may be given, separated by commas. Read here only.
func faultHook(_ phase: String) {
    let environment = ProcessInfo.processInfo.environment
    if let kill = environment["CRYO_KILL_AT"], kill.split(separator: ",").contains(Substring(phase)) {
        raise(SIGKILL)
    }
    if let stop = environment["CRYO_STOP_AT"], stop.split(separator: ",").contains(Substring(phase)) {
        raise(SIGSTOP)
    }
}
