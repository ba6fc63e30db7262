import CCryo
import Glibc
import SystemPackage

/// SCM_CREDENTIALS of an AF_UNIX message: pid as the receiver's namespace sees it, uid, gid.
public struct UnixCredentials: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }
}

/// One message peeked from an AF_UNIX receive queue with what came along with it.
public struct PeekedUnixMessage {
    /// Bytes in the message (its whole length when asked to truncate), or in the stream part read.
    public var length: Int
    public var flags: Int32
    /// Descriptors passed with it (SCM_RIGHTS), now open in cryo (close-on-exec); the caller closes them.
    public var descriptors: [FileDescriptor]
    /// SCM_CREDENTIALS, when the socket passes credentials.
    public var credentials: UnixCredentials?
    /// The sender's name (sun_path bytes) when it had one.
    public var source: [UInt8]?
}

/// SCM_CREDENTIALS (glibc declares it only under _GNU_SOURCE).
private let scmCredentials: Int32 = 2

private func controlHeader(_ payload: Int, type: Int32) -> cmsghdr {
    var h = cmsghdr()
    h.cmsg_len = MemoryLayout<cmsghdr>.size + payload
    h.cmsg_level = SOL_SOCKET
    h.cmsg_type = type
    return h
}

extension Sockets {
    /// recvmsg(MSG_PEEK | MSG_DONTWAIT [| MSG_TRUNC]) keeping the descriptors passed along; nil when nothing waits.
    public static func peekUnix(_ fd: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer, truncate: Bool,
                                object: String) throws -> PeekedUnixMessage? {
        // Room for the most descriptors one message carries (253) and credentials.
        var control = [UInt8](repeating: 0, count: 4096)
        var flags = Int32(MSG_PEEK) | Int32(MSG_DONTWAIT) | Int32(MSG_CMSG_CLOEXEC)
        if truncate { flags |= Int32(MSG_TRUNC) }
        var message = msghdr()
        var vector = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        var result = 0
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { name in
        control.withUnsafeMutableBytes { control in
            withUnsafeMutablePointer(to: &vector) { vector in
                message.msg_name = name.baseAddress
                message.msg_namelen = socklen_t(name.count)
                message.msg_iov = vector
                message.msg_iovlen = 1
                message.msg_control = control.baseAddress
                message.msg_controllen = control.count
                repeat {
                    result = withUnsafeMutablePointer(to: &message) { Kernel.rawSyscall(SYS_recvmsg, [fd, $0, flags]) }
                } while result == -Int(EINTR)
            }
        }
        }
        if result == -Int(EAGAIN) { return nil }
        if let e = Kernel.errno(of: result) { throw SyscallError("recvmsg(MSG_PEEK)", errno: e, object: object) }
        let source = message.msg_namelen > 2
            ? SocketAddress(bytes: withUnsafeBytes(of: storage) { Array($0.prefix(Int(message.msg_namelen))) }).unixName : nil
        var peeked = PeekedUnixMessage(length: result, flags: message.msg_flags, descriptors: [], credentials: nil, source: source)
        let header = MemoryLayout<cmsghdr>.size
        let length = Int(message.msg_controllen)
        var offset = 0
        while offset + header <= length {
            let c = control.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: cmsghdr.self) }
            guard c.cmsg_len >= header, offset + Int(c.cmsg_len) <= length else { break }
            let payload = offset + header
            if c.cmsg_level == SOL_SOCKET && c.cmsg_type == Int32(SCM_RIGHTS) {
                for i in 0..<(Int(c.cmsg_len) - header) / 4 {
                    let passed = control.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: payload + 4 * i, as: Int32.self) }
                    peeked.descriptors.append(FileDescriptor(rawValue: passed))
                }
            } else if c.cmsg_level == SOL_SOCKET && c.cmsg_type == scmCredentials, Int(c.cmsg_len) - header >= 12 {
                // struct ucred: pid, uid, gid
                peeked.credentials = control.withUnsafeBytes {
                    UnixCredentials(pid: $0.loadUnaligned(fromByteOffset: payload, as: Int32.self),
                                    uid: $0.loadUnaligned(fromByteOffset: payload + 4, as: UInt32.self),
                                    gid: $0.loadUnaligned(fromByteOffset: payload + 8, as: UInt32.self))
                }
            } else if c.cmsg_level == SOL_SOCKET && c.cmsg_type == 4 /* SCM_PIDFD */ {
                let passed = control.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: payload, as: Int32.self) }
                try? FileDescriptor(rawValue: passed).close()
            }
            offset += (Int(c.cmsg_len) + 7) & ~7
        }
        return peeked
    }

    /// sendmsg without blocking or SIGPIPE, with SCM_RIGHTS and SCM_CREDENTIALS when given: the bytes taken.
    public static func sendUnix(_ fd: FileDescriptor, _ bytes: UnsafeRawBufferPointer, rights: [Int32],
                                credentials: UnixCredentials?, to target: SocketAddress? = nil, object: String) throws -> Int {
        let header = MemoryLayout<cmsghdr>.size
        func space(_ n: Int) -> Int { (header + n + 7) & ~7 }
        var control = [UInt8](repeating: 0, count: (rights.isEmpty ? 0 : space(4 * rights.count))
                                                    + (credentials == nil ? 0 : space(12)))
        var offset = 0
        control.withUnsafeMutableBytes { raw in
            if !rights.isEmpty {
                raw.storeBytes(of: controlHeader(4 * rights.count, type: Int32(SCM_RIGHTS)), toByteOffset: 0, as: cmsghdr.self)
                for (i, r) in rights.enumerated() { raw.storeBytes(of: r, toByteOffset: header + 4 * i, as: Int32.self) }
                offset = space(4 * rights.count)
            }
            if let credentials {
                raw.storeBytes(of: controlHeader(12, type: scmCredentials), toByteOffset: offset, as: cmsghdr.self)
                // struct ucred: pid, uid, gid
                raw.storeBytes(of: credentials.pid, toByteOffset: offset + header, as: Int32.self)
                raw.storeBytes(of: credentials.uid, toByteOffset: offset + header + 4, as: UInt32.self)
                raw.storeBytes(of: credentials.gid, toByteOffset: offset + header + 8, as: UInt32.self)
            }
        }
        var message = msghdr()
        var vector = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
        let flags = Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL)
        var destination = sockaddr_storage()
        let destinationLength = target.map { t in
            withUnsafeMutableBytes(of: &destination) { raw in
                for (i, b) in t.bytes.prefix(raw.count).enumerated() { raw[i] = b }
                return min(t.bytes.count, raw.count)
            }
        } ?? 0
        let result: Int = withUnsafeMutableBytes(of: &destination) { name in
        control.withUnsafeMutableBytes { control in
            withUnsafeMutablePointer(to: &vector) { vector in
                message.msg_name = destinationLength > 0 ? name.baseAddress : nil
                message.msg_namelen = socklen_t(destinationLength)
                message.msg_iov = vector
                message.msg_iovlen = 1
                message.msg_control = control.isEmpty ? nil : control.baseAddress
                message.msg_controllen = control.count
                var result: Int
                repeat {
                    result = withUnsafeMutablePointer(to: &message) { Kernel.rawSyscall(SYS_sendmsg, [fd, $0, flags]) }
                } while result == -Int(EINTR)
                return result
            }
        }
        }
        if let e = Kernel.errno(of: result) {
            let what = (rights.isEmpty ? "" : " SCM_RIGHTS") + (credentials.map { " SCM_CREDENTIALS pid \($0.pid) uid \($0.uid) gid \($0.gid)" } ?? "")
            throw SyscallError("sendmsg\(what)", errno: e, object: object)
        }
        return result
    }
}
