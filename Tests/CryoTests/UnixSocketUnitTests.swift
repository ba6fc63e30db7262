// Unix socket records without root: what validation refuses in the fields that
// carry descriptors in flight, senders and connections not yet accepted.

@testable import Cryo
import Foundation
import Testing

@Suite("unix socket records")
struct UnixSocketUnitTests {
    static func socket(_ state: UnixSocketState.State, queued: [Data] = []) -> UnixSocketState {
        UnixSocketState(inode: 7, type: .stream, state: state, name: nil, file: nil, peer: state == .connected ? 8 : nil,
                        peerClosed: false, peerName: nil, backlog: state == .listening ? 4 : nil, queued: queued, shutdown: 0,
                        passCredentials: false, sendBuffer: 4096, receiveBuffer: 4096, peekOffset: -1)
    }

    static func table(_ states: [any DescriptorKind]) -> [FileTable.OpenFile] {
        states.enumerated().map { FileTable.OpenFile(id: $0.offset, flags: 2, position: 0, state: $0.element) }
    }

    @Test("a good record passes, one list of rights or senders per queued message")
    func good() {
        var s = Self.socket(.connected, queued: [Data("a".utf8), Data("b".utf8)])
        s.rights = [[], [0]]
        s.senders = [nil, .init(pid: 42, uid: 1000, gid: 1000)]
        #expect(s.validate() == nil)
        #expect(UnixSocketState.validate(Self.table([s])) == nil)
        #expect(s.summary.contains("1 descriptor in flight") && s.summary.contains("from pid 42"), "\(s.summary)")
    }

    @Test("rights or senders that do not match the queue, or name no file, are refused")
    func mismatched() {
        var s = Self.socket(.connected, queued: [Data("a".utf8)])
        s.rights = [[], []]
        #expect(s.validate()?.contains("descriptors in flight") == true)
        s.rights = nil
        s.senders = []
        #expect(s.validate()?.contains("senders") == true)
        s.senders = nil
        s.rights = [[5]]
        #expect(UnixSocketState.validate(Self.table([s]))?.contains("names file #5") == true)
    }

    @Test("connections not yet accepted only on a named listener, each connected")
    func pending() {
        var listener = Self.socket(.listening)
        listener.name = Data("@x".utf8)
        listener.pending = [Self.socket(.connected, queued: [Data("hi".utf8)])]
        #expect(UnixSocketState.validate(Self.table([listener])) == nil)
        #expect(listener.summary.contains("1 connection not yet accepted, 2 bytes"), "\(listener.summary)")
        listener.pending = [Self.socket(.unconnected)]
        #expect(UnixSocketState.validate(Self.table([listener]))?.contains("not connected") == true)
        var unnamed = Self.socket(.listening)
        unnamed.pending = []
        #expect(UnixSocketState.validate(Self.table([unnamed]))?.contains("not listening on a name") == true)
    }
}
