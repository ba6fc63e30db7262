import CCryo
import Cryo
import CryoSystem
import Crypto
import FoundationEssentials
import Glibc
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import SwiftASN1
import SystemPackage
import X509

// The migration stream over TLS 1.3, authenticated by the shared key: both
// ends derive the same P-256 key pair from it (HKDF-SHA256), each presents a
// self-signed certificate for that key, the destination requires the
// source's, and each accepts the peer only if its certificate holds the
// derived public key; the handshake's signatures prove the peer holds the
// private key, which only a holder of the key file can derive. A peer without
// the key fails the handshake, and nothing of the stream is read before the
// handshake is done. Each connection gets fresh keys (ECDHE). TLS 1.3 rather
// than 1.2 with a pre-shared key: BoringSSL's PSK suites are ChaCha20 or
// AES-CBC only, and AES-GCM (AES-NI, VAES) costs a fraction of ChaCha20 on
// both ends, which share the CPUs with the tree. The cryptography is
// BoringSSL's (swift-nio-ssl) and swift-crypto's; cryo only bridges NIO's
// event loop to the blocking MigrationLink the pipeline uses.

/// A key file: a 256-bit random key, hex, made by `cryo receive --new-key`.
public enum MigrationKey {
    static let header = "cryo migration key v1"

    /// Creates `path` (0600, must not exist) holding a fresh key.
    public static func create(_ path: String) throws {
        // The standard library's system generator: getrandom(2), the kernel's CSPRNG.
        var generator = SystemRandomNumberGenerator()
        let key = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let text = "\(header)\n" + key.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined() + "\n"
        let fd = try Files.open(path, .writeOnly, options: [.create, .exclusiveCreate, .noFollow], permissions: [.ownerReadWrite])
        defer { try? fd.close() }
        _ = fchmod(fd.rawValue, 0o600)  // whatever the umask
        try Files.write(fd, Array(text.utf8), path: path)
    }

    /// Reads a key file; refuses one that others may read.
    public static func load(_ path: String) throws -> [UInt8] {
        let st = try Files.stat(path)
        guard st.st_mode & 0o077 == 0 else {
            throw CryoError("key file \(path) is readable or writable by others (mode \(String(st.st_mode & 0o777, radix: 8))); chmod 600 it")
        }
        let lines = try Files.readString(path).split(separator: "\n")
        guard lines.count == 2, lines[0] == header, lines[1].count == 64 else { throw CryoError("\(path) is not a cryo migration key file") }
        var key: [UInt8] = []
        var i = lines[1].startIndex
        while i < lines[1].endIndex {
            let j = lines[1].index(i, offsetBy: 2)
            guard let byte = UInt8(lines[1][i..<j], radix: 16) else { throw CryoError("\(path) is not a cryo migration key file") }
            key.append(byte)
            i = j
        }
        return key
    }
}

/// A blocking facade over one NIO channel with TLS.
public final class TLSLink: MigrationLink, @unchecked Sendable {
    public let peer: String
    private let group: MultiThreadedEventLoopGroup
    private let channel: Channel
    private let bridge: Bridge

    /// Takes over a connected socket (the destination's accepted one, or the source's), does the
    /// handshake and returns once it is done; throws one line if the peer does not hold the key.
    public init(socket: SystemPackage.FileDescriptor, peer: String, key: [UInt8], server: Bool) throws {
        self.peer = peer
        let identity = try MigrationIdentity(key: key)
        var configuration = server
            ? TLSConfiguration.makeServerConfiguration(certificateChain: [.certificate(identity.certificate)],
                                                       privateKey: .privateKey(identity.privateKey))
            : TLSConfiguration.makeClientConfiguration()
        if !server {
            configuration.certificateChain = [.certificate(identity.certificate)]
            configuration.privateKey = .privateKey(identity.privateKey)
        }
        configuration.minimumTLSVersion = .tlsv13
        configuration.maximumTLSVersion = .tlsv13
        // Required of the client too; no CA and no name: `accept` below is the whole check.
        configuration.certificateVerification = .noHostnameVerification
        configuration.trustRoots = .certificates([identity.certificate])
        let context = try NIOSSLContext(configuration: configuration)
        Self.keepHeapTouched()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bridge = Bridge()
        self.group = group
        self.bridge = bridge
        // Reads of up to 1 MiB rather than NIO's default 64 KiB: the destination takes 2 GiB in a few
        // seconds, and each read is a syscall, a TLS flush of its plaintext as one chunk and a wake-up
        // of the reader, who writes each chunk to the pool with a pwrite of its own.
        let reads = AdaptiveRecvByteBufferAllocator(minimum: 64 << 10, initial: 256 << 10, maximum: 1 << 20)
        let bootstrap = ClientBootstrap(group: group).channelOption(ChannelOptions.recvAllocator, value: reads).channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                let accept = identity.verifier()
                let tls: ChannelHandler = server ? NIOSSLServerHandler(context: context, customVerificationCallback: accept)
                    : try NIOSSLClientHandler(context: context, serverHostname: nil, customVerificationCallback: accept)
                try channel.pipeline.syncOperations.addHandler(tls)
                try channel.pipeline.syncOperations.addHandler(bridge)
            }
        }
        // NIO owns the descriptor from here on.
        let raw = dup(socket.rawValue)
        guard raw >= 0 else { throw SyscallError("dup", errno: Errno(rawValue: Glibc.errno), object: "connection to \(peer)") }
        do {
            channel = try bootstrap.withConnectedSocket(raw).wait()
        } catch {
            Glibc.close(raw)
            try? group.syncShutdownGracefully()
            throw CryoError("connection to \(peer): \(error)")
        }
        do {
            try bridge.waitHandshake()
        } catch {
            channel.close(promise: nil)
            try? group.syncShutdownGracefully()
            throw CryoError("\(peer) did not authenticate with the migration key (TLS handshake: \(Self.reason(error)))")
        }
    }

    /// The stream allocates and frees buffers of 16 KiB to 16 MiB all the time (records, frames, the
    /// plaintext pieces queued for the reader). glibc gave the large ones back to the kernel (mmap
    /// threshold, heap trimming), so each new buffer was fresh memory: a page fault and a cleared page
    /// per 4 KiB, slow in a VM (10% of the destination's event-loop thread). Freed memory stays with
    /// the process instead; the stream holds at most some tens of MiB at a time.
    private static let heapKept: Void = {
        _ = cryo_keep_freed_memory(64 << 20, 256 << 20)
    }()
    static func keepHeapTouched() { _ = heapKept }

    /// BoringSSL's reason names (BAD_RECORD_MAC...) rather than its whole error stack.
    static func reason(_ error: Error) -> String {
        let text = "\(error)"
        let reasons = text.components(separatedBy: "OPENSSL_internal:").dropFirst().map { $0.prefix { $0 != " " && $0 != "," && $0 != "]" } }
        return reasons.isEmpty ? text : reasons.joined(separator: ", ")
    }

    public func send(_ bytes: UnsafeRawBufferPointer) throws {
        try send(bytes, then: UnsafeRawBufferPointer(start: nil, count: 0))
    }

    public func send(_ head: UnsafeRawBufferPointer, then data: UnsafeRawBufferPointer) throws {
        guard head.count + data.count > 0 else { return }
        var buffer = channel.allocator.buffer(capacity: head.count + data.count)
        buffer.writeBytes(head)
        buffer.writeBytes(data)
        try send(buffer)
    }

    private func send(_ buffer: ByteBuffer) throws {
        // Two writes in flight: the next chunk is read from the tree while the event loop encrypts this one.
        let write = channel.writeAndFlush(buffer)
        let oldest = flights.locked { () -> EventLoopFuture<Void>? in
            inFlight.append(write)
            return inFlight.count > 2 ? inFlight.removeFirst() : nil
        }
        if let oldest { try settle(oldest) }
    }

    /// `fill` writes into the buffer NIO encrypts from: no copy of the data into it.
    public func send(_ head: UnsafeRawBufferPointer, filling count: Int, scratch: UnsafeMutableRawBufferPointer,
                     _ fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        var buffer = channel.allocator.buffer(capacity: head.count + count)
        buffer.writeBytes(head)
        try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { free in
            try fill(UnsafeMutableRawBufferPointer(rebasing: free[0..<count]))
            return count
        }
        try send(buffer)
    }

    /// Sends may come from another thread than receives (post-copy page requests).
    private let flights = Condition()
    private var inFlight: [EventLoopFuture<Void>] = []

    public func readable() -> Bool { bridge.readable }

    private func settle(_ write: EventLoopFuture<Void>) throws {
        do { try write.wait() } catch {
            throw bridge.failure ?? CryoError("sending to \(peer): \(error)")
        }
    }

    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws {
        // Whatever we sent must be out before we wait for an answer to it.
        let pending = flights.locked { () -> [EventLoopFuture<Void>] in defer { inFlight = [] }; return inFlight }
        for write in pending { try settle(write) }
        try bridge.read(into: buffer, channel: channel)
    }

    /// The pieces are the decrypted chunks TLS delivered: no copy into one buffer (`scratch` is not used).
    public func receive(count: Int, scratch: UnsafeMutableRawBufferPointer, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let pending = flights.locked { () -> [EventLoopFuture<Void>] in defer { inFlight = [] }; return inFlight }
        for write in pending { try settle(write) }
        try bridge.read(count: count, channel: channel, body)
    }

    public func close() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}

/// The key pair both ends derive from the shared key, with a self-signed certificate for it.
struct MigrationIdentity {
    let certificate: NIOSSLCertificate
    let privateKey: NIOSSLPrivateKey
    /// The derived public key (SubjectPublicKeyInfo, DER): the only one a peer may present.
    let publicKey: [UInt8]

    init(key: [UInt8]) throws {
        let secret = SymmetricKey(data: key)
        // A P-256 scalar from HKDF-SHA256; the next counter in the rare case (about 2^-32) that the
        // 32 bytes are not below the group order.
        var derived: P256.Signing.PrivateKey?
        for counter in 0..<8 where derived == nil {
            let bytes = HKDF<SHA256>.deriveKey(inputKeyMaterial: secret, salt: Array("cryo migration".utf8),
                                               info: Array("cryo migration identity v1 \(counter)".utf8), outputByteCount: 32)
            derived = bytes.withUnsafeBytes { try? P256.Signing.PrivateKey(rawRepresentation: $0) }
        }
        guard let signing = derived else { throw CryoError("the migration key gives no P-256 key") }
        let name = try DistinguishedName { CommonName("cryo migration") }
        let owner = Certificate.PrivateKey(signing)
        // Validity is not checked (`accept` compares keys only); these dates only make it a well-formed certificate.
        let made = try Certificate(version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: owner.publicKey,
                                   notValidBefore: Date(timeIntervalSince1970: 0), notValidAfter: Date(timeIntervalSince1970: 4_102_444_800),
                                   issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
                                   extensions: Certificate.Extensions {}, issuerPrivateKey: owner)
        var serializer = DER.Serializer()
        try serializer.serialize(made)
        certificate = try NIOSSLCertificate(bytes: serializer.serializedBytes, format: .der)
        privateKey = try NIOSSLPrivateKey(bytes: Array(signing.derRepresentation), format: .der)
        publicKey = try certificate.extractPublicKey().toSPKIBytes()
    }

    /// Whether a peer's chain (leaf first) proves it holds the key: its leaf holds the derived public key.
    /// The handshake has checked that the peer signed with the leaf's private key.
    func accepts(_ chain: [NIOSSLCertificate]) -> Bool {
        chain.first.flatMap { try? $0.extractPublicKey().toSPKIBytes() } == publicKey
    }

    /// `accepts` as BoringSSL's whole verification of the peer: no CA, no names, no dates.
    func verifier() -> NIOSSLCustomVerificationCallback {
        let identity = self
        return { chain, promise in promise.succeed(identity.accepts(chain) ? .certificateVerified : .failed) }
    }
}

/// Hands what TLS delivers to a blocking reader on another thread. While the reader waits for data
/// (`read(count:)`), the event loop passes each decrypted buffer straight to the reader's `body`, on
/// its own thread, and keeps no reference to it: NIOSSLHandler then decrypts the next records into the
/// same, already touched buffer. A held buffer made it copy into a fresh allocation every time (page
/// faults, cleared pages and the copy: over a quarter of the destination's samples while 2 GiB came in)
/// before the reader copied the bytes once more into the pool. Only what arrives while the reader is
/// busy elsewhere is queued.
final class Bridge: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private let condition = Condition()
    private var chunks: [ByteBuffer] = []
    private var buffered = 0
    private var handshaken = false
    private var ended = false
    private(set) var failure: Error?
    private var paused = false
    private static let high = 32 << 20, low = 8 << 20

    /// The waiting reader's `body` and how many bytes it still takes; `running` while the event loop is in it.
    private struct Consumer {
        var body: (UnsafeRawBufferPointer) throws -> Void
        var left: Int
        var running = false
        var error: Error?
    }
    private var consumer: Consumer?

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent { condition.locked { handshaken = true } }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        // The reader waits with nothing queued before it: its body takes these bytes here.
        var handed: ((UnsafeRawBufferPointer) throws -> Void)?
        var count = 0
        condition.locked {
            guard chunks.isEmpty, consumer != nil, consumer!.error == nil, consumer!.left > 0 else { return }
            consumer!.running = true
            handed = consumer!.body
            count = min(consumer!.left, bytes.readableBytes)
        }
        var failed: Error?
        let gave = handed != nil
        if gave {
            do { try bytes.readSlice(length: count)!.withUnsafeReadableBytes { try handed!($0) } } catch { failed = error }
            // Let go of the body before the reader may return: it must not outlive its call (withoutActuallyEscaping).
            handed = nil
        }
        let pause = condition.locked { () -> Bool in
            if gave {
                consumer!.running = false
                consumer!.left -= count
                consumer!.error = failed
            }
            // What the reader did not take queues, in the same step: a reader that saw its body done must find it.
            guard failed == nil, bytes.readableBytes > 0 else { return false }
            chunks.append(bytes)
            buffered += bytes.readableBytes
            if buffered > Self.high && !paused { paused = true; return true }
            return false
        }
        // The reader is slower than the network: stop reading the socket until it catches up.
        if pause { _ = context.channel.setOption(ChannelOptions.autoRead, value: false) }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        condition.locked { if failure == nil { failure = error } }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        condition.locked { ended = true }
        context.fireChannelInactive()
    }

    var readable: Bool { condition.locked { !chunks.isEmpty || failure != nil || ended } }

    func waitHandshake() throws {
        try condition.wait {
            if handshaken { return true }
            if let failure { throw failure }
            if ended { throw MigrationLinkClosed() }
            return false
        }
    }

    /// The next `count` bytes as the chunks hold them, handed to `body` in order: queued ones on this
    /// thread outside the lock, those that arrive while it waits on the event loop's thread.
    func read(count: Int, channel: Channel, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        var left = count
        var taken: [ByteBuffer] = []
        while left > 0 {
            var resume = false
            taken.removeAll(keepingCapacity: true)
            try withoutActuallyEscaping(body) { body in
                try condition.wait {
                    if let waiting = consumer {
                        if waiting.running { return false }
                        guard waiting.error != nil || waiting.left == 0 || failure != nil || ended || !chunks.isEmpty else { return false }
                        consumer = nil
                        left = waiting.left
                        if let error = waiting.error { throw error }
                        if left == 0 { return true }
                    }
                    if !chunks.isEmpty {
                        var first = 0
                        while left > 0, first < chunks.count {
                            let n = min(left, chunks[first].readableBytes)
                            taken.append(chunks[first].readSlice(length: n)!)
                            if chunks[first].readableBytes == 0 { first += 1 }
                            buffered -= n
                            left -= n
                        }
                        chunks.removeFirst(first)
                        if paused && buffered < Self.low { paused = false; resume = true }
                        return true
                    }
                    if let failure { throw failure }
                    if ended { throw MigrationLinkClosed() }
                    consumer = Consumer(body: body, left: left)
                    return false
                }
            }
            if resume { _ = channel.setOption(ChannelOptions.autoRead, value: true) }
            for piece in taken { try piece.withUnsafeReadableBytes { try body($0) } }
        }
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, channel: Channel) throws {
        var done = 0
        try read(count: buffer.count, channel: channel) { piece in
            UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + piece.count)]).copyMemory(from: piece)
            done += piece.count
        }
    }
}

/// A mutex with a condition variable (pthread), for the bridge.
final class Condition: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(cond, nil)
    }
    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    /// Runs `body` under the lock and wakes waiters.
    func locked<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer {
            pthread_cond_broadcast(cond)
            pthread_mutex_unlock(mutex)
        }
        return try body()
    }

    /// Waits under the lock until `ready` returns true (or throws).
    func wait(_ ready: () throws -> Bool) throws {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while try !ready() { pthread_cond_wait(cond, mutex) }
    }
}
