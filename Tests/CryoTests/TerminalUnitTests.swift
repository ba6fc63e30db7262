// Unit tests of the session terminal records: tty_nr decoding and what
// restore accepts of an image's terminals. No root, no process.

@testable import Cryo
import Testing

@Suite("terminal records")
struct TerminalUnitTests {
    @Test("tty_nr (new_encode_dev) to a /dev/pts index; other terminals have none")
    func ptyIndex() {
        func encode(_ major: UInt64, _ minor: UInt64) -> UInt64 { (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12) }
        #expect(ControllingTerminals.ptyIndex(ttyNr: encode(136, 0)) == 0)
        #expect(ControllingTerminals.ptyIndex(ttyNr: encode(136, 5)) == 5)
        #expect(ControllingTerminals.ptyIndex(ttyNr: encode(136, 300)) == 300)
        #expect(ControllingTerminals.ptyIndex(ttyNr: encode(137, 3)) == 259)
        #expect(ControllingTerminals.ptyIndex(ttyNr: encode(4, 1)) == nil)      // /dev/tty1
        #expect(ControllingTerminals.ptyIndex(ttyNr: encode(5, 1)) == nil)      // /dev/console
        #expect(ControllingTerminals.ptyIndex(ttyNr: 0) == nil)
        #expect(ControllingTerminals.deviceName(ttyNr: encode(4, 1)) == "tty 4:1")
    }

    private func inventory(leaderTerminal: Int32?, memberTerminal: Int32?, session: Int32 = 20) -> Inventory {
        var inventory = Inventory(rootPid: 10, processes: [
            .init(pid: 10, ppid: 1, pgid: 10, sid: 10, comm: "root"),
            .init(pid: 20, ppid: 10, pgid: 20, sid: 20, comm: "leader"),
            .init(pid: 21, ppid: 20, pgid: 21, sid: 20, comm: "job"),
        ], kernel: "6.18", shellJob: false)
        inventory.processes[1].terminal = leaderTerminal
        inventory.processes[2].terminal = memberTerminal
        inventory.terminals = [SessionTerminal(session: session, index: 4, foregroundGroup: 21)]
        return inventory
    }

    private let files = FileTable(files: [
        FileTable.OpenFile(id: 0, flags: 2, position: 0, path: "/dev/ptmx", state: TerminalState(role: .ptyMaster, index: 4)),
        FileTable.OpenFile(id: 1, flags: 2, position: 0, path: "/dev/tty", state: TerminalState(role: .currentTerminal, index: 4)),
    ])

    @Test("an image's session terminals: leader, master and members must agree")
    func validation() {
        #expect((try? inventory(leaderTerminal: 4, memberTerminal: 4).validateTerminals(files)) != nil)
        #expect((try? inventory(leaderTerminal: 4, memberTerminal: nil).validateTerminals(files)) != nil)
        // A leader without the terminal, a member with another, a session that is no process's.
        #expect((try? inventory(leaderTerminal: nil, memberTerminal: 4).validateTerminals(files)) == nil)
        #expect((try? inventory(leaderTerminal: 4, memberTerminal: 5).validateTerminals(files)) == nil)
        #expect((try? inventory(leaderTerminal: 4, memberTerminal: 4, session: 10).validateTerminals(files)) == nil)
        // No master for the pty.
        #expect((try? inventory(leaderTerminal: 4, memberTerminal: 4).validateTerminals(FileTable(files: [files.files[1]]))) == nil)
    }
}
