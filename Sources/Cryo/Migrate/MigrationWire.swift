import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import Logging
import SystemPackage

// The migration stream: one connection, frames in both directions. A frame is
// a 13-byte head (kind, header length u32, data length u64, little endian), a
// JSON header and raw data (pages or file contents). The transport below it is
// a plain socket or TLS (CryoNet); the frames are the same.

/// A reliable, ordered byte stream to the other end.
public protocol MigrationLink: AnyObject {
    /// Sends every byte or throws.
    func send(_ bytes: UnsafeRawBufferPointer) throws
    /// Sends a frame's head and its data; a link that can sends them as one write.
    func send(_ head: UnsafeRawBufferPointer, then data: UnsafeRawBufferPointer) throws
    /// Fills `buffer` completely; throws `MigrationLinkClosed` at a clean end of stream.
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws
    /// Receives the next `count` bytes and hands them to `body` in order, in as many pieces as the
    /// link holds them in: a link that already has them in memory (TLS: decrypted) spares the copy
    /// into one buffer. Others fill `scratch` (at least `count` bytes) and call `body` once.
    func receive(count: Int, scratch: UnsafeMutableRawBufferPointer, _ body: (UnsafeRawBufferPointer) throws -> Void) throws
    /// Sends `head` and then `count` bytes that `fill` writes straight into the link's own send buffer
    /// (TLS: the buffer handed to the encryption), sparing a copy; a link without one has `fill` write
    /// into `scratch` (at least `count` bytes). Nothing of the frame is sent when `fill` throws.
    func send(_ head: UnsafeRawBufferPointer, filling count: Int, scratch: UnsafeMutableRawBufferPointer,
              _ fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws
    /// Who is at the other end, for messages.
    var peer: String { get }
    /// Bytes (or the end of the stream) can be received without waiting.
    func readable() -> Bool
    func close()
}

extension MigrationLink {
    public func receive(count: Int, scratch: UnsafeMutableRawBufferPointer, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let data = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<count])
        try receive(into: data)
        try body(UnsafeRawBufferPointer(data))
    }

    public func send(_ head: UnsafeRawBufferPointer, filling count: Int, scratch: UnsafeMutableRawBufferPointer,
                     _ fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        let data = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<count])
        try fill(data)
        try send(head, then: UnsafeRawBufferPointer(data))
    }

    public func send(_ head: UnsafeRawBufferPointer, then data: UnsafeRawBufferPointer) throws {
        try send(head)
        if data.count > 0 { try send(data) }
    }
}

public struct MigrationLinkClosed: Error, CustomStringConvertible {
    public init() {}
    public var description: String { "connection closed" }
}

/// A connected TCP socket, blocking.
public final class SocketLink: MigrationLink {
    let fd: FileDescriptor
    public let peer: String
    public init(fd: FileDescriptor, peer: String) {
        self.fd = fd
        self.peer = peer
    }

    public func send(_ bytes: UnsafeRawBufferPointer) throws {
        try Sockets.sendAll(fd, bytes, object: "connection to \(peer)")
    }

    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            let n = try Sockets.receiveSome(fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]), object: "connection to \(peer)")
            if n == 0 { throw MigrationLinkClosed() }
            done += n
        }
    }

    public func readable() -> Bool {
        var entries = [pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)]
        return (try? Files.poll(&entries, milliseconds: 0, object: "connection to \(peer)")).map { $0 != 0 } ?? true
    }

    public func close() { try? fd.close() }
}

public enum MigrationEndpoint {
    /// "ADDR:PORT" (IPv4) or "[ADDR]:PORT" (IPv6).
    public static func parse(_ text: String) throws -> SocketAddress {
        var host: Substring, port: Substring
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = text[text.index(after: text.startIndex)..<close]
            port = text[text.index(after: close)...].dropFirst()
        } else if let colon = text.lastIndex(of: ":") {
            host = text[..<colon]
            port = text[text.index(after: colon)...]
        } else {
            throw CryoError("\(text): expected ADDR:PORT")
        }
        guard let number = UInt16(port), number > 0 else { throw CryoError("\(text): bad port \(port)") }
        var v4 = in_addr()
        if inet_pton(AF_INET, String(host), &v4) == 1 {
            return .inet(address: withUnsafeBytes(of: v4) { Array($0) }, port: number)
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, String(host), &v6) == 1 {
            return .inet(address: withUnsafeBytes(of: v6) { Array($0) }, port: number)
        }
        throw CryoError("\(text): \(host) is not an IPv4 or IPv6 address")
    }

    static func family(_ address: SocketAddress) -> Int32 { address.family }

    /// A TCP socket in blocking mode (Sockets.make's are non-blocking, for the kinds' use).
    static func blockingSocket(_ family: Int32, object: String) throws -> FileDescriptor {
        FileDescriptor(rawValue: Int32(try Kernel.syscall(41 /* socket */, family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0,
                                                          name: "socket", object: object)))
    }

    /// Connects a blocking TCP socket (within `timeout` seconds).
    public static func connect(_ text: String, timeout: Int = 10) throws -> FileDescriptor {
        let address = try parse(text)
        let fd = try blockingSocket(family(address), object: "migration socket")
        do {
            var tv = timeval(tv_sec: timeout, tv_usec: 0)
            try Sockets.setOption(fd, SOL_SOCKET, SO_SNDTIMEO, tv, name: "SO_SNDTIMEO", object: "migration socket")
            try Sockets.connect(fd, to: address, object: "migration destination \(text)")
            tv = timeval(tv_sec: 0, tv_usec: 0)
            try Sockets.setOption(fd, SOL_SOCKET, SO_SNDTIMEO, tv, name: "SO_SNDTIMEO", object: "migration socket")
            try keepAlive(fd)
            return fd
        } catch {
            try? fd.close()
            throw error
        }
    }

    /// A listening TCP socket on ADDR:PORT.
    public static func listen(_ text: String) throws -> FileDescriptor {
        let address = try parse(text)
        let fd = try blockingSocket(family(address), object: "migration listener")
        do {
            try Sockets.setOption(fd, SOL_SOCKET, SO_REUSEADDR, Int32(1), name: "SO_REUSEADDR", object: "migration listener")
            try Sockets.bind(fd, to: address, object: "listen address \(text)")
            try Sockets.listen(fd, backlog: 1, object: "listen address \(text)")
            return fd
        } catch {
            try? fd.close()
            throw error
        }
    }

    /// Accepts one connection; returns it with the peer's address as text.
    public static func acceptOne(_ listener: FileDescriptor) throws -> (FileDescriptor, String) {
        let fd = try Sockets.acceptBlocking(listener, object: "migration listener")
        try keepAlive(fd)
        let peer = (try? Sockets.name(fd, peer: true, object: "migration connection")).map(describe) ?? "?"
        return (fd, peer)
    }

    /// A peer that vanishes (link down, host gone) is noticed within seconds, not TCP's minutes:
    /// the source must not stay frozen waiting for it.
    static func keepAlive(_ fd: FileDescriptor) throws {
        let tcp = Int32(IPPROTO_TCP)
        try Sockets.setOption(fd, tcp, TCP_NODELAY, Int32(1), name: "TCP_NODELAY", object: "migration connection")
        try Sockets.setOption(fd, SOL_SOCKET, SO_KEEPALIVE, Int32(1), name: "SO_KEEPALIVE", object: "migration connection")
        try Sockets.setOption(fd, tcp, TCP_KEEPIDLE, Int32(2), name: "TCP_KEEPIDLE", object: "migration connection")
        try Sockets.setOption(fd, tcp, TCP_KEEPINTVL, Int32(1), name: "TCP_KEEPINTVL", object: "migration connection")
        try Sockets.setOption(fd, tcp, TCP_KEEPCNT, Int32(3), name: "TCP_KEEPCNT", object: "migration connection")
        try Sockets.setOption(fd, tcp, 18 /* TCP_USER_TIMEOUT */, Int32(5000), name: "TCP_USER_TIMEOUT", object: "migration connection")
    }

    static func describe(_ address: SocketAddress) -> String {
        guard let (bytes, port, _) = address.inet else { return "?" }
        if bytes.count == 4 { return "\(bytes[0]).\(bytes[1]).\(bytes[2]).\(bytes[3]):\(port)" }
        var text = [CChar](repeating: 0, count: 64)
        bytes.withUnsafeBytes { _ = inet_ntop(AF_INET6, $0.baseAddress, &text, 64) }
        return "[\(String(cString: text))]:\(port)"
    }
}

enum FrameKind: UInt8 {
    case hello = 1  // source → destination: what is coming
    case pages = 2  // a pre-copy round's pages: header pid, address
    case fileBegin = 3  // name, size; sparse: pages the destination holds from earlier rounds fill the gaps
    case fileData = 4  // offset
    case fileEnd = 5
    case commit = 6  // the image is complete, the source tree is frozen: restore it
    case restored = 7  // destination → source: the restored tree runs
    case failed = 8  // either way: one line why, then the connection ends
    case roundEnd = 9  // the end of one pre-copy round
    case ready = 10  // destination → source: hello accepted
    case pageRequest = 11  // destination → source (post-copy): pid, address, size: a fault waits for these pages
    case pagesDone = 12  // source → destination (post-copy): every page left out of the image has been sent
    case loaded = 13  // destination → source (post-copy): it has them all; the source tree may go
    case roundHeld = 14  // destination → source: every page of that pre-copy round is in its pool
    case release = 15  // source → destination, after a commit with `confirm`: the frozen state is confirmed, let the tree go
}

struct FrameHeader: Codable {
    var version: Int?
    var rootPid: Int32?
    var pid: Int32?
    var address: UInt64?
    var name: String?
    var size: UInt64?
    var offset: UInt64?
    var sparse: Bool?
    var runs: [PageRun]?
    var round: Int?
    var message: String?
    var lazyPages: Bool?
    /// Post-copy: [offset, length] ranges of a pages file left out, to come after the start.
    var omitted: [[UInt64]]?
    /// hello: the service address the source takes off its host, for the destination to add.
    var movedAddress: ServiceAddress?
    /// commit: the restored tree waits before its release for `release` (or `failed`): the source confirms
    /// meanwhile what it read before the freeze.
    var confirm: Bool?
    init() {}
}

/// Frame reading and writing over a link.
final class MigrationWire: @unchecked Sendable {
    /// 2: the destination answers each round's end with `roundHeld`.
    static let version = 3
    static let maxHeader = 64 << 20
    static let maxData = 16 << 20
    let link: MigrationLink
    /// Post-copy sends from two threads (page requests from the lazy loader, answers from the main one).
    private let sending = Lock()
    private(set) var bytesSent: UInt64 = 0
    private(set) var bytesReceived: UInt64 = 0
    init(_ link: MigrationLink) { self.link = link }

    /// For links that cannot fill their own buffer (`send(_:_:filling:)`); allocated on first use.
    private var scratch: UnsafeMutableRawBufferPointer?
    deinit { scratch?.deallocate() }

    private func message(_ kind: FrameKind, _ header: FrameHeader, dataCount: Int) throws -> [UInt8] {
        let json = try JSONEncoder().encode(header)
        var head = [UInt8](repeating: 0, count: 13)
        head[0] = kind.rawValue
        withUnsafeBytes(of: UInt32(json.count).littleEndian) { for i in 0..<4 { head[1 + i] = $0[i] } }
        withUnsafeBytes(of: UInt64(dataCount).littleEndian) { for i in 0..<8 { head[5 + i] = $0[i] } }
        return head + [UInt8](json)
    }

    /// A frame whose `count` bytes of data `fill` writes into the link's send buffer (the pages read
    /// out of the tree land where they are encrypted from). When `fill` throws, nothing is sent.
    func send(_ kind: FrameKind, _ header: FrameHeader, filling count: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        precondition(count <= Self.maxData)
        let message = try message(kind, header, dataCount: count)
        try sending.withLock {
            if scratch == nil { scratch = .allocate(byteCount: Self.maxData, alignment: 4096) }
            try message.withUnsafeBytes { try link.send($0, filling: count, scratch: scratch!, fill) }
            bytesSent += UInt64(message.count + count)
        }
    }

    func send(_ kind: FrameKind, _ header: FrameHeader = FrameHeader(), data: UnsafeRawBufferPointer? = nil) throws {
        let message = try message(kind, header, dataCount: data?.count ?? 0)
        try sending.withLock {
            // One write (one TLS hand-off) per frame rather than one for the head and one for the pages.
            try message.withUnsafeBytes { try link.send($0, then: data ?? UnsafeRawBufferPointer(start: nil, count: 0)) }
            bytesSent += UInt64(message.count + (data?.count ?? 0))
        }
    }

    /// Reads one frame's head and header; the data (its length returned) must be read next with `readData`.
    func receive() throws -> (FrameKind, FrameHeader, Int) {
        var head = [UInt8](repeating: 0, count: 13)
        try head.withUnsafeMutableBytes { try link.receive(into: $0) }
        guard let kind = FrameKind(rawValue: head[0]) else { throw CryoError("migration stream from \(link.peer): unknown frame kind \(head[0])") }
        let headerLength = Int(head[1..<5].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }.littleEndian)
        let dataLength = head[5..<13].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }.littleEndian
        guard headerLength <= Self.maxHeader, dataLength <= UInt64(Self.maxData) else {
            throw CryoError("migration stream from \(link.peer): frame of \(headerLength)+\(dataLength) bytes is too large")
        }
        var json = [UInt8](repeating: 0, count: headerLength)
        try json.withUnsafeMutableBytes { try link.receive(into: $0) }
        let header: FrameHeader
        do { header = try JSONDecoder().decode(FrameHeader.self, from: Data(json)) } catch {
            throw CryoError("migration stream from \(link.peer): malformed \(kind) frame header")
        }
        bytesReceived += UInt64(13 + headerLength) + dataLength
        return (kind, header, Int(dataLength))
    }

    func readData(into buffer: UnsafeMutableRawBufferPointer) throws {
        try link.receive(into: buffer)
    }

    /// A frame's data (`length` bytes) in the link's pieces, in order; `scratch` as for `MigrationLink.receive(count:)`.
    func readData(length: Int, scratch: UnsafeMutableRawBufferPointer, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        try link.receive(count: length, scratch: scratch, body)
    }

    /// One whole frame, its data read into the start of `buffer` (at least `maxData` bytes).
    func receiveFrame(into buffer: UnsafeMutableRawBufferPointer) throws -> (FrameKind, FrameHeader, UnsafeMutableRawBufferPointer) {
        let (kind, header, length) = try receive()
        let data = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length])
        try readData(into: data)
        return (kind, header, data)
    }

    /// Opens the stream: hello, then the other end's `ready`; its refusal or anything else throws,
    /// naming it as `other` ("destination 10.0.0.2:7460").
    func hello(rootPid: Int32? = nil, lazyPages: Bool? = nil, movedAddress: ServiceAddress? = nil, other: String) throws {
        var hello = FrameHeader()
        hello.version = Self.version
        hello.rootPid = rootPid
        hello.lazyPages = lazyPages
        hello.movedAddress = movedAddress
        try send(.hello, hello)
        let (kind, answer, _) = try receive()
        if kind == .failed { throw CryoError("\(other) refused: \(answer.message ?? "no reason given")") }
        guard kind == .ready else { throw CryoError("\(other) answered \(kind) to hello") }
    }

    /// Post-copy: a fault waits for these pages of `pid`.
    func requestPages(pid: Int32, address: UInt64, length: UInt64) throws {
        var header = FrameHeader()
        header.pid = pid
        header.address = address
        header.size = length
        try send(.pageRequest, header)
    }

    /// Best effort: tells the other end why this end gives up.
    func fail(_ message: String) {
        var header = FrameHeader()
        header.message = message
        try? send(.failed, header)
    }
}

/// `-v`: a debug line stamped with CLOCK_REALTIME in ms, so the two ends' steps line up in one timeline.
func timelineMark(_ logger: Logger, _ what: @autoclosure () -> String) {
    guard logger.logLevel <= .debug else { return }
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    let ms = Double(ts.tv_sec % 100_000) * 1000 + Double(ts.tv_nsec) / 1e6
    logger.debug("\(String(printf: "[%.1f ms]", ms)) \(what())")
}
