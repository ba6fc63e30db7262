// The TLS link over a socketpair (no root, no network): what one end sends
// arrives whole and in order at the other, whether the reader waits for the
// bytes (the event loop hands them to it on its own thread) or they queue while
// it is busy; a reader's failure on the event loop's thread reaches the reader.

@testable import CryoNet
import CryoSystem
import Dispatch
import Glibc
import SystemPackage
import Testing

@Suite("TLS link (no root)")
struct TLSLinkTests {
    static let key = [UInt8](repeating: 0x3c, count: 32)

    /// Both ends of a TLS link over a socketpair; the handshake needs both, so the server comes up on a thread.
    static func pair() throws -> (source: TLSLink, destination: TLSLink) {
        var fds: [Int32] = [0, 0]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
        let server = Box<Result<TLSLink, Error>>()
        let serverFd = fds[1]
        let done = DispatchSemaphore(value: 0)
        startThread {
            server.value = Result { try TLSLink(socket: FileDescriptor(rawValue: serverFd), peer: "source", key: key, server: true) }
            close(serverFd)
            done.signal()
        }
        defer { close(fds[0]) }
        let client = try TLSLink(socket: FileDescriptor(rawValue: fds[0]), peer: "destination", key: key, server: false)
        done.wait()
        return (client, try server.value!.get())
    }

    /// Bytes that tell their own offset apart (not a repeating pattern a lost or doubled chunk would hide in).
    static func byte(at offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: (offset &* 2_654_435_761) >> 13) }

    @Test("64 MiB in frames of odd sizes arrive whole and in order, read slowly or waiting")
    func carriesEveryByteInOrder() throws {
        let (source, destination) = try Self.pair()
        defer { source.close(); destination.close() }
        let total = 64 << 20
        let sizes = [1, 4096, 13, 1 << 20, 65_537, 4 << 20, 7, 300_000]
        let sender = DispatchSemaphore(value: 0)
        let failure = Box<Error>()
        startThread {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 4096)
            defer { buffer.deallocate() }
            var offset = 0, i = 0
            do {
                while offset < total {
                    let n = min(sizes[i % sizes.count], total - offset)
                    for k in 0..<n { buffer[k] = Self.byte(at: offset + k) }
                    try source.send(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                    offset += n
                    i += 1
                }
            } catch { failure.value = error }
            sender.signal()
        }
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 4096)
        defer { scratch.deallocate() }
        var offset = 0, i = 0, wrong: Int?
        while offset < total {
            let n = min(sizes[(i + 3) % sizes.count], total - offset)
            // Every other read dawdles first, so the next bytes queue up instead of going to a waiting reader.
            if i % 2 == 1 { usleep(2000) }
            try destination.receive(count: n, scratch: scratch) { piece in
                for k in 0..<piece.count where wrong == nil && piece[k] != Self.byte(at: offset + k) { wrong = offset + k }
                offset += piece.count
            }
            i += 1
        }
        sender.wait()
        #expect(failure.value == nil, "sending failed: \(failure.value.map { "\($0)" } ?? "")")
        #expect(wrong == nil, "byte \(wrong ?? 0) differs from what was sent")
        #expect(offset == total)
    }

    @Test("a reader that fails on bytes the event loop hands over gets its own error back")
    func readerFailureComesBack() throws {
        struct Refused: Error {}
        let (source, destination) = try Self.pair()
        defer { source.close(); destination.close() }
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { scratch.deallocate() }
        startThread {
            usleep(50_000)  // the reader waits by then: the bytes go to it on the event loop's thread
            let bytes = [UInt8](repeating: 1, count: 1 << 20)
            try? bytes.withUnsafeBytes { try source.send($0) }
        }
        var seen = 0
        #expect(throws: Refused.self) {
            try destination.receive(count: 1 << 20, scratch: scratch) { piece in
                seen += piece.count
                throw Refused()
            }
        }
        #expect(seen > 0)
    }
}

private final class Box<T>: @unchecked Sendable {
    var value: T?
}
