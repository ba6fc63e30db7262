import CCryo
import Glibc
import SystemPackage

/// A socket address as the kernel takes it: the bytes of a sockaddr of the right length.
public struct SocketAddress: Sendable, Equatable {
    public var bytes: [UInt8]

    public init(bytes: [UInt8]) { self.bytes = bytes }

    public var family: Int32 { bytes.count >= 2 ? Int32(UInt16(bytes[0]) | UInt16(bytes[1]) << 8) : Int32(AF_UNSPEC) }

    /// sun_path bytes as given (a leading NUL: abstract; a path without its terminating NUL).
    public static func unix(_ name: [UInt8]) -> SocketAddress {
        var bytes = [UInt8](repeating: 0, count: 2)
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: sa_family_t(AF_UNIX), as: sa_family_t.self) }
        return SocketAddress(bytes: bytes + name)
    }

    /// The name of an AF_UNIX address: a path up to its first NUL, an abstract name whole; nil when unnamed.
    public var unixName: [UInt8]? {
        guard family == AF_UNIX, bytes.count > 2 else { return nil }
        var name = Array(bytes[2...].prefix(108))
        if name.first != 0, let end = name.firstIndex(of: 0) { name = Array(name[..<end]) }
        return name.isEmpty ? nil : name
    }

    /// An AF_INET (4 address bytes) or AF_INET6 (16) address; port in host order.
    public static func inet(address: [UInt8], port: UInt16, scope: UInt32 = 0) -> SocketAddress {
        if address.count == 4 {
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &a.sin_addr) { for (i, b) in address.enumerated() { $0[i] = b } }
            return SocketAddress(bytes: withUnsafeBytes(of: a) { Array($0) })
        }
        var a = sockaddr_in6()
        a.sin6_family = sa_family_t(AF_INET6)
        a.sin6_port = port.bigEndian
        a.sin6_scope_id = scope
        withUnsafeMutableBytes(of: &a.sin6_addr) { for (i, b) in address.prefix(16).enumerated() { $0[i] = b } }
        return SocketAddress(bytes: withUnsafeBytes(of: a) { Array($0) })
    }

    /// Address bytes (4 or 16), port and scope of an inet address; nil for another family.
    public var inet: (address: [UInt8], port: UInt16, scope: UInt32)? {
        if family == AF_INET, bytes.count >= MemoryLayout<sockaddr_in>.size {
            let a = bytes.withUnsafeBytes { $0.loadUnaligned(as: sockaddr_in.self) }
            return (withUnsafeBytes(of: a.sin_addr) { Array($0) }, UInt16(bigEndian: a.sin_port), 0)
        }
        if family == AF_INET6, bytes.count >= MemoryLayout<sockaddr_in6>.size {
            let a = bytes.withUnsafeBytes { $0.loadUnaligned(as: sockaddr_in6.self) }
            return (withUnsafeBytes(of: a.sin6_addr) { Array($0) }, UInt16(bigEndian: a.sin6_port), a.sin6_scope_id)
        }
        return nil
    }

    func withSockaddr<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        var storage = sockaddr_storage()
        return withUnsafeMutableBytes(of: &storage) { raw in
            for (i, b) in bytes.prefix(raw.count).enumerated() { raw[i] = b }
            return body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(min(bytes.count, raw.count)))
        }
    }
}

/// One message peeked from a socket's receive queue.
public struct PeekedMessage {
    /// Bytes in the message (its whole length when asked to truncate), or in the stream part read.
    public var length: Int
    public var flags: Int32
    /// Descriptors that came along (SCM_RIGHTS); already closed.
    public var descriptors: Int
    public var source: SocketAddress?
}

/// Socket calls on descriptors. New sockets are close-on-exec and non-blocking
/// (the caller sets the final status flags).
public enum Sockets {
    public static func make(family: Int32, type: Int32, protocol: Int32 = 0, blocking: Bool = false, object: String) throws -> FileDescriptor {
        let flags = Int32(SOCK_CLOEXEC.rawValue) | (blocking ? 0 : Int32(SOCK_NONBLOCK.rawValue))
        return FileDescriptor(rawValue: try returnOrThrow(socket(family, type | flags, `protocol`), "socket", object: object))
    }

    /// A blocking AF_UNIX socket of `type` listening on `name` (abstract when it starts with a NUL).
    public static func listening(unix name: [UInt8], type: Int32, backlog: Int32, object: String) throws -> FileDescriptor {
        let fd = try make(family: AF_UNIX, type: type, blocking: true, object: object)
        do {
            try bind(fd, to: .unix(name), object: object)
            try listen(fd, backlog: backlog, object: object)
        } catch {
            try? fd.close()
            throw error
        }
        return fd
    }

    /// A blocking AF_UNIX socket of `type` connected to `name`.
    public static func connected(unix name: [UInt8], type: Int32, object: String) throws -> FileDescriptor {
        let fd = try make(family: AF_UNIX, type: type, blocking: true, object: object)
        do { try connect(fd, to: .unix(name), object: object) } catch {
            try? fd.close()
            throw error
        }
        return fd
    }

    /// SO_RCVTIMEO: a blocking receive gives up (EAGAIN) after `seconds`.
    public static func setReceiveTimeout(_ fd: FileDescriptor, seconds: Int, object: String) throws {
        try setOption(fd, SOL_SOCKET, SO_RCVTIMEO, timeval(tv_sec: seconds, tv_usec: 0), name: "SO_RCVTIMEO", object: object)
    }

    /// One blocking send of the whole message (a seqpacket record), without SIGPIPE.
    public static func sendMessage(_ fd: FileDescriptor, _ bytes: [UInt8], object: String) throws {
        let sent = try bytes.withUnsafeBytes { b in
            try retryingEINTR("send", object: object) { Glibc.send(fd.rawValue, b.baseAddress, b.count, Int32(MSG_NOSIGNAL)) }
        }
        guard sent == bytes.count else { throw SyscallError("send", errno: .messageTooLong, object: object) }
    }

    /// One blocking receive of up to `limit` bytes (a seqpacket record; empty at end of stream).
    public static func receiveMessage(_ fd: FileDescriptor, limit: Int, object: String) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: limit)
        let got = try buffer.withUnsafeMutableBytes { b in
            try retryingEINTR("recv", object: object) { Glibc.recv(fd.rawValue, b.baseAddress, b.count, 0) }
        }
        return Array(buffer[0..<got])
    }

    public static func unixPair(type: Int32, blocking: Bool = false, object: String) throws -> (FileDescriptor, FileDescriptor) {
        var fds: [Int32] = [-1, -1]
        let flags = Int32(SOCK_CLOEXEC.rawValue) | (blocking ? 0 : Int32(SOCK_NONBLOCK.rawValue))
        _ = try returnOrThrow(socketpair(AF_UNIX, type | flags, 0, &fds), "socketpair(AF_UNIX)", object: object)
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }

    public static func accept(_ fd: FileDescriptor, object: String) throws -> FileDescriptor {
        let flags = Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
        return FileDescriptor(rawValue: try retryingEINTR("accept4", object: object) { accept4(fd.rawValue, nil, nil, flags) })
    }

    public static func listen(_ fd: FileDescriptor, backlog: Int32, object: String) throws {
        _ = try returnOrThrow(Glibc.listen(fd.rawValue, backlog), "listen", object: object)
    }

    /// SHUT_RD 0, SHUT_WR 1, SHUT_RDWR 2.
    public static func shutdown(_ fd: FileDescriptor, how: Int32, object: String) throws {
        _ = try returnOrThrow(Glibc.shutdown(fd.rawValue, how), "shutdown", object: object)
    }

    public static func bind(_ fd: FileDescriptor, to address: SocketAddress, object: String) throws {
        _ = try returnOrThrow(address.withSockaddr { Glibc.bind(fd.rawValue, $0, $1) }, "bind", object: object)
    }

    public static func connect(_ fd: FileDescriptor, to address: SocketAddress, object: String) throws {
        _ = try retryingEINTR("connect", object: object) { address.withSockaddr { Glibc.connect(fd.rawValue, $0, $1) } }
    }

    /// connect on a non-blocking socket that may not finish at once (EINPROGRESS is no error).
    public static func startConnect(_ fd: FileDescriptor, to address: SocketAddress, object: String) throws {
        let result = address.withSockaddr { Glibc.connect(fd.rawValue, $0, $1) }
        if result < 0 && (Glibc.errno == EINPROGRESS || Glibc.errno == EINTR) { return }
        _ = try returnOrThrow(result, "connect", object: object)
    }

    /// getsockname, or getpeername for `peer`.
    public static func name(_ fd: FileDescriptor, peer: Bool, object: String) throws -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutableBytes(of: &storage) { raw in
            let address = raw.baseAddress!.assumingMemoryBound(to: sockaddr.self)
            return peer ? getpeername(fd.rawValue, address, &length) : getsockname(fd.rawValue, address, &length)
        }
        _ = try returnOrThrow(result, peer ? "getpeername" : "getsockname", object: object)
        return SocketAddress(bytes: withUnsafeBytes(of: storage) { Array($0.prefix(Int(length))) })
    }

    /// An option of any C type (`getsockopt`).
    public static func option<T>(_ fd: FileDescriptor, _ level: Int32, _ option: Int32, as type: T.Type, name: String,
                                 object: String, initial: T) throws -> T {
        var value = initial
        var length = socklen_t(MemoryLayout<T>.size)
        _ = try returnOrThrow(getsockopt(fd.rawValue, level, option, &value, &length), "getsockopt(\(name))", object: object)
        return value
    }

    public static func option(_ fd: FileDescriptor, _ level: Int32, _ option: Int32, name: String, object: String) throws -> Int32 {
        try Self.option(fd, level, option, as: Int32.self, name: name, object: object, initial: 0)
    }

    public static func setOption<T>(_ fd: FileDescriptor, _ level: Int32, _ option: Int32, _ value: T, name: String, object: String) throws {
        var value = value
        _ = try returnOrThrow(setsockopt(fd.rawValue, level, option, &value, socklen_t(MemoryLayout<T>.size)),
                              "setsockopt(\(name))", object: object)
    }

    /// getsockopt into `buffer`, whose bytes also go in (MCAST_MSFILTER reads its question there): the length reported.
    public static func option(_ fd: FileDescriptor, _ level: Int32, _ option: Int32, into buffer: inout [UInt8], name: String,
                              object: String) throws -> Int {
        var length = socklen_t(buffer.count)
        _ = try returnOrThrow(buffer.withUnsafeMutableBytes { getsockopt(fd.rawValue, level, option, $0.baseAddress, &length) },
                              "getsockopt(\(name))", object: object)
        return Int(length)
    }

    /// The classic BPF program attached with SO_ATTACH_FILTER, 8 bytes an instruction; empty when none.
    /// EACCES for an eBPF program (it has no classic form to give back).
    public static func socketFilter(_ fd: FileDescriptor, object: String) throws -> [UInt8] {
        // SO_GET_FILTER counts in instructions, not bytes: 0 asks for the count.
        var count = socklen_t(0)
        _ = try returnOrThrow(getsockopt(fd.rawValue, CRYO_SOL_SOCKET, CRYO_SO_ATTACH_FILTER, nil, &count),
                              "getsockopt(SO_GET_FILTER)", object: object)
        guard count > 0 else { return [] }
        let size = MemoryLayout<sock_filter>.size
        var program = [UInt8](repeating: 0, count: Int(count) * size)
        var got = count
        _ = try returnOrThrow(program.withUnsafeMutableBytes { getsockopt(fd.rawValue, CRYO_SOL_SOCKET, CRYO_SO_ATTACH_FILTER, $0.baseAddress, &got) },
                              "getsockopt(SO_GET_FILTER)", object: object)
        return Array(program.prefix(Int(got) * size))
    }

    /// SO_ATTACH_FILTER of a classic BPF program as `socketFilter` returns it.
    public static func attachFilter(_ fd: FileDescriptor, program: [UInt8], object: String) throws {
        let size = MemoryLayout<sock_filter>.size
        let count = program.count / size
        var instructions = [sock_filter](repeating: sock_filter(), count: count)
        instructions.withUnsafeMutableBytes { $0.copyBytes(from: program.prefix(count * size)) }
        _ = try instructions.withUnsafeMutableBufferPointer { buffer in
            var fprog = sock_fprog(len: UInt16(buffer.count), filter: buffer.baseAddress)
            return try returnOrThrow(setsockopt(fd.rawValue, CRYO_SOL_SOCKET, CRYO_SO_ATTACH_FILTER, &fprog, socklen_t(MemoryLayout<sock_fprog>.size)),
                                     "setsockopt(SO_ATTACH_FILTER)", object: object)
        }
    }

    /// The index of a network interface of cryo's network namespace by name, or nil when there is none.
    public static func interfaceIndex(_ name: String) -> Int32? {
        let index = if_nametoindex(name)
        return index == 0 ? nil : Int32(bitPattern: index)
    }

    /// The name of a network interface of cryo's network namespace by index, or nil when there is none.
    public static func interfaceName(_ index: Int32) -> String? {
        var name = [CChar](repeating: 0, count: 64)
        guard if_indextoname(UInt32(bitPattern: index), &name) != nil else { return nil }
        return String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// poll() events of `fd` right now (POLLRDHUP asked for too).
    public static func pollEvents(_ fd: FileDescriptor, object: String) throws -> Int16 {
        var p = pollfd(fd: fd.rawValue, events: Int16(POLLIN | POLLOUT | 0x2000), revents: 0)
        _ = try retryingEINTR("poll", object: object) { poll(&p, 1, 0) }
        return p.revents
    }

    /// Option bytes of a variable length (TCP_REPAIR_OPTIONS).
    public static func setOption(_ fd: FileDescriptor, _ level: Int32, _ option: Int32, bytes: [UInt8], name: String, object: String) throws {
        _ = try returnOrThrow(bytes.withUnsafeBytes { setsockopt(fd.rawValue, level, option, $0.baseAddress, socklen_t($0.count)) },
                              "setsockopt(\(name))", object: object)
    }

    /// Blocking send of every byte, without SIGPIPE.
    public static func sendAll(_ fd: FileDescriptor, _ bytes: UnsafeRawBufferPointer, object: @autoclosure () -> String) throws {
        var done = 0
        while done < bytes.count {
            done += try retryingEINTR("send", object: object()) {
                Glibc.send(fd.rawValue, bytes.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL))
            }
        }
    }

    /// Blocking recv of up to `buffer.count` bytes: how many came, 0 at the end of the stream.
    public static func receiveSome(_ fd: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer,
                                   object: @autoclosure () -> String) throws -> Int {
        try retryingEINTR("recv", object: object()) { Glibc.recv(fd.rawValue, buffer.baseAddress, buffer.count, 0) }
    }

    /// send (or sendto `target`) without blocking or SIGPIPE: the bytes taken.
    public static func send(_ fd: FileDescriptor, _ bytes: UnsafeRawBufferPointer, to target: SocketAddress? = nil, object: String) throws -> Int {
        let flags = Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL)
        return try retryingEINTR(target == nil ? "send" : "sendto", object: object) {
            if let target { return target.withSockaddr { sendto(fd.rawValue, bytes.baseAddress, bytes.count, flags, $0, $1) } }
            return Glibc.send(fd.rawValue, bytes.baseAddress, bytes.count, flags)
        }
    }

    /// recvmsg(MSG_PEEK | MSG_DONTWAIT [| MSG_TRUNC]) into `buffer`, with the source address;
    /// nil when nothing waits. Descriptors passed along are closed at once and counted.
    public static func peek(_ fd: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer, truncate: Bool,
                            object: String) throws -> PeekedMessage? {
        var storage = sockaddr_storage()
        // Room for the most descriptors one message carries (253), credentials and a pidfd.
        var control = [UInt8](repeating: 0, count: 2048)
        var flags = Int32(MSG_PEEK) | Int32(MSG_DONTWAIT) | Int32(MSG_CMSG_CLOEXEC)
        if truncate { flags |= Int32(MSG_TRUNC) }
        var message = msghdr()
        var vector = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        let result: Int = withUnsafeMutableBytes(of: &storage) { name in
            control.withUnsafeMutableBytes { control in
                withUnsafeMutablePointer(to: &vector) { vector in
                    message.msg_name = name.baseAddress
                    message.msg_namelen = socklen_t(name.count)
                    message.msg_iov = vector
                    message.msg_iovlen = 1
                    message.msg_control = control.baseAddress
                    message.msg_controllen = control.count
                    while true {
                        let n = recvmsg(fd.rawValue, &message, flags)
                        if n < 0 && Glibc.errno == EINTR { continue }
                        return n
                    }
                }
            }
        }
        if result < 0 && Glibc.errno == EAGAIN { return nil }
        let length = try returnOrThrow(result, "recvmsg(MSG_PEEK)", object: object)
        let descriptors = closePassedDescriptors(control, length: Int(message.msg_controllen))
        let source = message.msg_namelen > 0
            ? SocketAddress(bytes: withUnsafeBytes(of: storage) { Array($0.prefix(Int(message.msg_namelen))) }) : nil
        return PeekedMessage(length: length, flags: message.msg_flags, descriptors: descriptors, source: source)
    }

    /// Closes every descriptor in SCM_RIGHTS or SCM_PIDFD (4) control messages; the count of SCM_RIGHTS ones.
    private static func closePassedDescriptors(_ control: [UInt8], length: Int) -> Int {
        let header = MemoryLayout<cmsghdr>.size
        var offset = 0, rights = 0
        while offset + header <= length {
            let c = control.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: cmsghdr.self) }
            guard c.cmsg_len >= header, offset + Int(c.cmsg_len) <= length else { break }
            if c.cmsg_level == SOL_SOCKET && (c.cmsg_type == Int32(SCM_RIGHTS) || c.cmsg_type == 4) {
                let count = (Int(c.cmsg_len) - header) / 4
                for i in 0..<count {
                    let passed = control.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + header + 4 * i, as: Int32.self) }
                    Glibc.close(passed)
                }
                if c.cmsg_type == Int32(SCM_RIGHTS) { rights += count }
            }
            offset += (Int(c.cmsg_len) + 7) & ~7
        }
        return rights
    }

    /// A socket queue length by ioctl (SIOCINQ, SIOCOUTQ, SIOCOUTQNSD).
    public static func queueLength(_ fd: FileDescriptor, request: UInt, name: String, object: String) throws -> Int32 {
        var value: Int32 = 0
        _ = try returnOrThrow(ioctl(fd.rawValue, request, &value), "ioctl(\(name))", object: object)
        return value
    }
}

extension Sockets {
    /// The hardware (MAC) address of interface `name` in the network namespace of `fd`'s socket (SIOCGIFHWADDR).
    public static func hardwareAddress(_ fd: FileDescriptor, interface name: String, object: String) throws -> [UInt8] {
        // struct ifreq: the name (16 bytes), then a sockaddr whose data holds the address.
        var request = [UInt8](repeating: 0, count: 40)
        let nameBytes = Array(name.utf8.prefix(15))
        for (i, byte) in nameBytes.enumerated() { request[i] = byte }
        _ = try request.withUnsafeMutableBytes {
            try returnOrThrow(ioctl(fd.rawValue, UInt(0x8927) /* SIOCGIFHWADDR */, $0.baseAddress!), "ioctl(SIOCGIFHWADDR)", object: object)
        }
        return Array(request[18..<24])
    }
}
