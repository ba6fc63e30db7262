// Pure parts of pipe handling, without root: what an image may say of a
// pipe's packets before anything is restored.

@testable import Cryo
import FoundationEssentials
import Testing

@Suite("pipe records (unit)")
struct PipeUnitTests {
    @Test("packet lengths must be positive and fit the buffered bytes; plain bytes may follow them")
    func packetsValidated() {
        func end(_ bytes: Int?, _ packets: [Int]?) -> PipeEndState {
            PipeEndState(inode: 7, isReadEnd: true, capacity: 65536, buffered: bytes.map { Data(repeating: 1, count: $0) }, packets: packets)
        }
        #expect(end(5, [2, 3]).validate() == nil)
        #expect(end(9, [2, 3]).validate() == nil)
        #expect(end(5, nil).validate() == nil)
        #expect(end(5, [2, 4]).validate() != nil)
        #expect(end(5, [0, 2]).validate() != nil)
        #expect(end(nil, [1]).validate() != nil)
        #expect(FifoState(end: end(3, [4])).validate() != nil)
    }
}
