import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc

/// Restore's test hooks, hidden from users. `CRYO_KILL_AT=<phase>` (read by
/// `killPoint`, shared with dump) makes cryo SIGKILL itself at that named
/// phase, so tests can check what a dying cryo leaves behind;
/// `CRYO_STOP_AT=<phase>` stops it there (SIGSTOP) so a test can change the
/// world (take a pid, remove a file) before it sends SIGCONT.
func faultHook(_ phase: String) {
    killPoint(phase)
}
